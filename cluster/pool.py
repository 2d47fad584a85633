"""Evaluator actors and the pool that keeps them busy.

Each actor reserves ``cpus_per_actor`` CPUs (and GPUs on a GPU device) and pins torch to
that many threads. The pool hands a batch of tasks to an actor as soon as it is free (no
fixed assignment), so a slow batch never holds others up. If an actor dies (process
killed, node lost), its in-flight batch goes back to the queue and runs on another actor,
and a replacement actor is started. Every task yields exactly one result.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import ray
import torch
from ray.exceptions import RayActorError, RayTaskError

from certevo.evaluators.device import DEFAULT_STACK_SIZE
from certevo.evaluators.evaluator import Evaluation, EvaluationRequest
from certevo.evaluators.fitness import FitnessRecord
from certevo.evaluators.lirpa_compat import AutoLirpaMissing
from certevo.evaluators.spec import EvaluationSpec
from certevo.population.errors import CertevoError


class ClusterError(CertevoError):
    """The pool cannot go on (e.g. actors keep dying)."""


#: One candidate to evaluate (the evaluators' request: genome, inherited weights, epochs...).
EvaluationTask = EvaluationRequest


@dataclass(frozen=True)
class TaskResult:
    """An evaluation plus where and how long it ran."""

    task: EvaluationTask
    evaluation: Evaluation
    worker: str
    busy_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


class EvaluatorActor:
    """A Ray actor holding one CandidateEvaluator (data loaded once, traced modules reused)
    on ``device`` ("cpu" or "cuda")."""

    def __init__(self, spec: EvaluationSpec, threads: int, device: str = "cpu", stack_size: int | None = None) -> None:
        torch.set_num_threads(threads)
        self.evaluator = spec.build(num_threads=threads, device=device, stack_size=stack_size)
        self.name = f"{ray.util.get_node_ip_address()}:{os.getpid()}"

    def ready(self) -> str:
        """The actor's name, once it can take work."""
        return self.name

    def evaluate_batch(self, tasks: list[EvaluationTask]) -> tuple[list[Evaluation], str, float]:
        """Evaluate a batch of tasks (trained together where they can be); returns
        (evaluations in task order, worker name, seconds spent on the whole batch)."""
        start = time.perf_counter()
        evaluations = self.evaluator.evaluate_batch(tasks)
        return evaluations, self.name, time.perf_counter() - start


class EvaluationPool:
    """Feeds tasks to ``num_actors`` evaluator actors, in batches; the driver owns it.

    A free actor gets up to ``batch_size`` tasks of one epoch count at once: its fair share
    of the queue (queue length / free actors, rounded up), so a short queue still keeps
    every actor busy. If an actor dies mid-batch, the whole batch goes back to the front of the
    queue. ``max_replacements`` bounds how many dead actors are replaced over the pool's
    life before it gives up with a ClusterError. Actors run on ``device``, each
    reserving ``gpus_per_actor`` GPUs (fractions share one) when it is "cuda".
    ``actor_class`` defaults to :class:`EvaluatorActor` (benchmarks pass a stub with the
    same methods).
    """

    def __init__(
        self,
        spec: EvaluationSpec,
        num_actors: int,
        *,
        cpus_per_actor: int = 1,
        max_replacements: int | None = None,
        actor_options: Mapping[str, Any] | None = None,
        actor_class: type = EvaluatorActor,
        device: str = "cpu",
        gpus_per_actor: float = 0.0,
        batch_size: int | None = None,
    ) -> None:
        self.spec = spec
        self.cpus_per_actor = cpus_per_actor
        self.device = device
        self.gpus_per_actor = gpus_per_actor
        self.batch_size = batch_size or DEFAULT_STACK_SIZE[device]
        self.max_replacements = max_replacements if max_replacements is not None else 4 * num_actors + 4
        self.replacements = 0
        self._actor_class = ray.remote(actor_class)
        self._actor_options = dict(actor_options or {})
        self._starting: dict[ray.ObjectRef, Any] = {}
        self._idle: deque[Any] = deque()
        self._busy: dict[ray.ObjectRef, tuple[Any, list[EvaluationTask]]] = {}
        for _ in range(num_actors):
            self._start_actor()

    def _start_actor(self) -> None:
        options: dict[str, Any] = {"num_cpus": self.cpus_per_actor}
        if self.device == "cuda":
            options["num_gpus"] = self.gpus_per_actor
        actor = self._actor_class.options(**options, **self._actor_options).remote(
            self.spec, self.cpus_per_actor, self.device, self.batch_size
        )
        self._starting[actor.ready.remote()] = actor

    @property
    def actors(self) -> list[Any]:
        """Handles of the pool's actors: idle, starting and busy."""
        return list(self._idle) + list(self._starting.values()) + [a for a, _ in self._busy.values()]

    def in_flight(self) -> list[tuple[Any, EvaluationTask]]:
        """(actor, task) for every evaluation running now."""
        return [(actor, task) for actor, batch in self._busy.values() for task in batch]

    def running(self) -> list[tuple[Any, EvaluationTask]]:
        """(actor, task) for every evaluation whose batch has not finished yet (in flight
        and not merely waiting to be collected)."""
        refs = list(self._busy)
        if not refs:
            return []
        finished, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        done = set(finished)
        return [(actor, task) for ref, (actor, batch) in self._busy.items() if ref not in done for task in batch]

    def _next_batch(self, queue: deque[EvaluationTask]) -> list[EvaluationTask]:
        """Take a free actor's share of the queue: tasks with the first one's epoch count,
        split evenly between this actor and the others that are free or starting (busy
        ones already hold their share). Called with this actor already out of the idle
        ones, hence the 1."""
        free = 1 + len(self._idle) + len(self._starting)
        share = min(self.batch_size, max(1, math.ceil(len(queue) / free)))
        epochs = queue[0].epochs
        batch = [t for t in queue if t.epochs == epochs][:share]
        taken = {id(t) for t in batch}
        kept = [t for t in queue if id(t) not in taken]
        queue.clear()
        queue.extend(kept)
        return batch

    def run(
        self,
        tasks: list[EvaluationTask],
        on_dispatch: Callable[[EvaluationTask, Any], None] | None = None,
        refill: Callable[[int], list[EvaluationTask]] | None = None,
    ) -> Iterator[TaskResult]:
        """Evaluate every task, yielding results as they finish (in completion order).

        ``refill`` feeds the pool on demand: whenever the queue is empty and ``n >= 1``
        actors are idle, the pool calls ``refill(n)`` and queues the tasks it returns; ``[]``
        means "nothing more for now" (it is asked again when an actor next frees up). It
        runs in the consumer's thread, between yields, so it sees every result the consumer
        has absorbed so far. With ``refill`` the generator ends when the queue is empty,
        nothing is busy and ``refill`` has just returned ``[]``; without it, when every task
        has yielded its result.
        """
        queue: deque[EvaluationTask] = deque(tasks)
        busy = self._busy
        while True:
            if refill is not None and not queue and self._idle:
                queue.extend(refill(len(self._idle)))
                if not queue and not busy:
                    return
            if refill is None and not queue and not busy:
                return
            while queue and self._idle:
                actor = self._idle.popleft()
                batch = self._next_batch(queue)
                busy[actor.evaluate_batch.remote(batch)] = (actor, batch)
                if on_dispatch is not None:
                    for task in batch:
                        on_dispatch(task, actor)
            waiting = list(busy) + list(self._starting)
            if not waiting:
                raise ClusterError("no evaluator actor is alive or starting; check the cluster (`ray status`)")
            done, _ = ray.wait(waiting, num_returns=1)
            ref = done[0]
            if ref in self._starting:
                actor = self._starting.pop(ref)
                try:
                    ray.get(ref)
                    self._idle.append(actor)
                except RayActorError:
                    self._replace()
                continue
            actor, batch = busy.pop(ref)
            try:
                evaluations, worker, seconds = ray.get(ref)
            except RayActorError:
                # The actor (or its node) died: run its whole batch again elsewhere.
                queue.extendleft(reversed(batch))
                self._replace()
                continue
            except RayTaskError as exc:
                if isinstance(exc.cause, AutoLirpaMissing):
                    raise AutoLirpaMissing(str(exc.cause)) from None
                self._idle.append(actor)
                for task in batch:
                    record = FitnessRecord.failed(task.genome, f"evaluation raised {exc.cause!r}")
                    yield TaskResult(task, Evaluation(record), "", 0.0)
                continue
            self._idle.append(actor)
            for task, evaluation in zip(batch, evaluations):
                yield TaskResult(task, evaluation, worker, seconds / len(batch), {"batch_size": len(batch)})

    def _replace(self) -> None:
        self.replacements += 1
        if self.replacements > self.max_replacements:
            raise ClusterError(
                f"{self.replacements} evaluator actors died, more than the limit of {self.max_replacements}; "
                "look at the Ray logs (`ray logs`) for out-of-memory kills or crashes"
            )
        self._start_actor()

    def shutdown(self) -> None:
        """Kill every actor of the pool."""
        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # already dead
                pass
        self._idle.clear()
        self._starting.clear()
        self._busy.clear()


__all__ = ["ClusterError", "EvaluationPool", "EvaluationTask", "EvaluatorActor", "TaskResult"]
