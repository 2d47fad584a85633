"""Evaluator actors and the pool that keeps them busy.

Each actor reserves ``cpus_per_actor`` CPUs and pins torch to that many threads. The pool
hands a task to an actor as soon as it is free (no fixed assignment), so a slow candidate
never holds others up. If an actor dies (process killed, node lost), its in-flight task
goes back to the queue and runs on another actor, and a replacement actor is started.
Every task yields exactly one result.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import ray
import torch
from ray.exceptions import RayActorError, RayTaskError

from evaluators.evaluator import Evaluation
from evaluators.fitness import FitnessRecord
from evaluators.lirpa_compat import AutoLirpaMissing
from evaluators.spec import EvaluationSpec
from population.errors import CertevoError
from population.genome import Genome


class ClusterError(CertevoError):
    """The pool cannot go on (e.g. actors keep dying)."""


@dataclass(frozen=True)
class EvaluationTask:
    """One candidate to evaluate; ``key`` names it in results (the genome id).

    ``initial_weights`` (a parent's trained weights) replace the seeded init;
    ``prior_epochs`` is the training they carry and ``inherited_from`` their candidate."""

    genome: Genome
    initial_weights: Mapping[str, torch.Tensor] | None = None
    epochs: int | None = None
    keep_weights: bool = False
    prior_epochs: int = 0
    inherited_from: str | None = None

    @property
    def key(self) -> str:
        """The candidate id."""
        return self.genome.id


@dataclass(frozen=True)
class TaskResult:
    """An evaluation plus where and how long it ran."""

    task: EvaluationTask
    evaluation: Evaluation
    worker: str
    busy_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


class EvaluatorActor:
    """A Ray actor holding one CandidateEvaluator (data loaded once, traced modules reused)."""

    def __init__(self, spec: EvaluationSpec, threads: int) -> None:
        torch.set_num_threads(threads)
        self.evaluator = spec.build(num_threads=threads)
        self.name = f"{ray.util.get_node_ip_address()}:{os.getpid()}"

    def ready(self) -> str:
        """The actor's name, once it can take work."""
        return self.name

    def evaluate(self, task: EvaluationTask) -> tuple[Evaluation, str, float]:
        """Evaluate one task; returns (evaluation, worker name, seconds spent)."""
        start = time.perf_counter()
        evaluation = self.evaluator.evaluate(
            task.genome, initial_weights=task.initial_weights, epochs=task.epochs, keep_weights=task.keep_weights,
            prior_epochs=task.prior_epochs, inherited_from=task.inherited_from,
        )
        return evaluation, self.name, time.perf_counter() - start


def _failed(task: EvaluationTask, reason: str) -> Evaluation:
    genome = task.genome
    record = FitnessRecord(
        candidate_id=genome.id, sparsity=genome.sparsity, certified_accuracy=0.0, clean_accuracy=0.0,
        pgd_accuracy=None, train_method="", certify_method="", eps=0.0, train_eps=0.0, epochs=0, samples=0,
        layer_sparsity=genome.layer_sparsity(), timings={}, failure=reason,
    )
    return Evaluation(record)


class EvaluationPool:
    """Feeds tasks to ``num_actors`` evaluator actors; the driver owns it.

    ``max_replacements`` bounds how many dead actors are replaced over the pool's life
    before it gives up with a ClusterError. ``actor_class`` defaults to
    :class:`EvaluatorActor` (benchmarks pass a stub with the same methods).
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
    ) -> None:
        self.spec = spec
        self.cpus_per_actor = cpus_per_actor
        self.max_replacements = max_replacements if max_replacements is not None else 4 * num_actors + 4
        self.replacements = 0
        self._actor_class = ray.remote(actor_class)
        self._actor_options = dict(actor_options or {})
        self._starting: dict[ray.ObjectRef, Any] = {}
        self._idle: deque[Any] = deque()
        self._busy: dict[ray.ObjectRef, tuple[Any, EvaluationTask]] = {}
        for _ in range(num_actors):
            self._start_actor()

    def _start_actor(self) -> None:
        actor = self._actor_class.options(num_cpus=self.cpus_per_actor, **self._actor_options).remote(
            self.spec, self.cpus_per_actor
        )
        self._starting[actor.ready.remote()] = actor

    @property
    def actors(self) -> list[Any]:
        """Handles of the pool's actors: idle, starting and busy."""
        return list(self._idle) + list(self._starting.values()) + [a for a, _ in self._busy.values()]

    def in_flight(self) -> list[tuple[Any, EvaluationTask]]:
        """(actor, task) for every evaluation running now."""
        return list(self._busy.values())

    def run(self, tasks: list[EvaluationTask], on_dispatch: Callable[[EvaluationTask, Any], None] | None = None) -> Iterator[TaskResult]:
        """Evaluate every task, yielding results as they finish (in completion order)."""
        queue: deque[EvaluationTask] = deque(tasks)
        busy = self._busy
        while queue or busy:
            while queue and self._idle:
                actor = self._idle.popleft()
                task = queue.popleft()
                busy[actor.evaluate.remote(task)] = (actor, task)
                if on_dispatch is not None:
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
            actor, task = busy.pop(ref)
            try:
                evaluation, worker, seconds = ray.get(ref)
            except RayActorError:
                # The actor (or its node) died: run the task again elsewhere.
                queue.appendleft(task)
                self._replace()
                continue
            except RayTaskError as exc:
                if isinstance(exc.cause, AutoLirpaMissing):
                    raise AutoLirpaMissing(str(exc.cause)) from None
                self._idle.append(actor)
                yield TaskResult(task, _failed(task, f"evaluation raised {exc.cause!r}"), "", 0.0)
                continue
            self._idle.append(actor)
            yield TaskResult(task, evaluation, worker, seconds)

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
