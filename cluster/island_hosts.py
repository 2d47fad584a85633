"""Island hosts: where each island population of a search lives.

An island is any object built by ``factory(*args)`` whose methods the driver calls (the
search layer supplies the factory; this module knows nothing about strategies). It lives
either in the driver (:class:`LocalIsland`) or in a Ray actor (:class:`ActorIsland`) that
reserves no CPU, so islands never take evaluators' CPUs, and that prefers the driver's
node (soft affinity), so losing a worker node rarely costs an island.

Restoring: the driver keeps, per island, the arguments that rebuild it from its last
checkpointed state and the calls made since. If the actor dies (process killed, node
lost), :class:`ActorIsland` starts a new actor from those arguments, replays the calls
(islands are deterministic, so the replay ends in the same state) and retries the call
that failed. ``restarts`` counts how often that happened.

What an island *is* (a population evolving with ring migration): certevo.search.island_model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from certevo.population.errors import CertevoError

MAX_RESTARTS = 8


class IslandLost(CertevoError):
    """An island actor kept dying; the search stops (its last checkpoint is intact)."""


class IslandActor:
    """A Ray actor hosting one island object."""

    def __init__(self, factory: Callable[..., Any], args: tuple) -> None:
        self.island = factory(*args)

    def where(self) -> str:
        """Node address and process id of this actor."""
        return f"{ray.util.get_node_ip_address()}:{os.getpid()}"

    def call(self, method: str, args: tuple) -> Any:
        """``island.method(*args)``."""
        return getattr(self.island, method)(*args)


class LocalIsland:
    """An island object in the driver process (one island needs no actor)."""

    restarts = 0

    def __init__(self, factory: Callable[..., Any], args: tuple) -> None:
        self.island = factory(*args)

    def submit(self, method: str, *args: Any) -> Any:
        """Call now; :meth:`result` returns the value."""
        return getattr(self.island, method)(*args)

    def result(self, pending: Any) -> Any:
        """The value of a :meth:`submit`."""
        return pending

    def checkpointed(self, args: tuple) -> None:
        """Nothing to remember: a local island dies only with the driver."""

    def shutdown(self) -> None:
        """Nothing to stop."""


class ActorIsland:
    """An island object in a Ray actor, restored from its last checkpoint if it dies."""

    def __init__(self, factory: Callable[..., Any], args: tuple, *, name: str = "island") -> None:
        self._factory = factory
        self._args = args
        self._since: list[tuple[str, tuple]] = []
        self._remote = ray.remote(IslandActor)
        self.name = name
        self.restarts = 0
        self.actor = self._new_actor()

    def submit(self, method: str, *args: Any) -> tuple[str, tuple, ray.ObjectRef]:
        """Start ``island.method(*args)`` in the actor; :meth:`result` waits for it."""
        return method, args, self.actor.call.remote(method, args)

    def result(self, pending: tuple[str, tuple, ray.ObjectRef]) -> Any:
        """The value of a :meth:`submit`, restarting the actor as often as needed."""
        method, args, ref = pending
        while True:
            try:
                value = ray.get(ref)
            except RayActorError:
                self._restart()
                ref = self.actor.call.remote(method, args)
                continue
            self._since.append((method, args))
            return value

    def checkpointed(self, args: tuple) -> None:
        """The island's state was just checkpointed: ``args`` rebuild it from now on."""
        self._args = args
        self._since = []

    def _restart(self) -> None:
        """A new actor from the last checkpoint, with the calls since replayed; tried
        again if the new actor dies too (e.g. placed on a node that is going down)."""
        while True:
            self.restarts += 1
            if self.restarts > MAX_RESTARTS:
                raise IslandLost(
                    f"{self.name} died {self.restarts} times (limit {MAX_RESTARTS}); look at the Ray logs "
                    "(`ray logs`) for out-of-memory kills; the last checkpoint is intact: `certevo resume` "
                    "continues from it"
                )
            self.actor = self._new_actor()
            try:
                for method, args in self._since:
                    ray.get(self.actor.call.remote(method, args))
                return
            except RayActorError:
                continue

    def _new_actor(self) -> Any:
        # Prefer the driver's node: an island there is lost only with the driver itself.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        return self._remote.options(num_cpus=0, max_restarts=0, scheduling_strategy=here).remote(self._factory, self._args)

    def shutdown(self) -> None:
        """Stop the actor."""
        try:
            ray.kill(self.actor)
        except Exception:  # already dead
            pass


def host_islands(factory: Callable[..., Any], args: Sequence[tuple], *, actors: bool) -> list[LocalIsland | ActorIsland]:
    """One host per island, built from ``factory(*args[i])``, in actors or in the driver."""
    if actors:
        return [ActorIsland(factory, a, name=f"island {i}") for i, a in enumerate(args)]
    return [LocalIsland(factory, a) for a in args]


__all__ = ["ActorIsland", "IslandActor", "IslandLost", "LocalIsland", "host_islands"]
