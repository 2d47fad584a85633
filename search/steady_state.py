"""Asynchronous (steady-state) evolution: ``search.mode: asynchronous``.

The generational loop (certevo.search.loop) hands a whole generation to the pool and waits
for its slowest candidate before selecting; at most ``population_size x islands`` workers
are ever busy. Here the driver instead feeds the pool on demand
(:meth:`certevo.cluster.pool.EvaluationPool.run` with ``refill``): whenever workers free up
it asks the islands for new children, round-robin, and absorbs every result the moment it
arrives: journal, archive, lineage, the proposing island's survival (``take`` of that one
child: NSGA-II on its population plus the newcomer) and ``on_evaluation``.

How many children are in flight: the driver keeps ``max(population_size, actors)`` of them
proposed and not yet absorbed, so 64 actors each get one, while 2 actors still get batches
of about half a population each (the stacked evaluator, certevo.evaluators.stacked, trains
a batch much faster per candidate than one at a time). A child's parents are therefore
chosen from a population that is missing the results of at most that many candidates.

Generations: every ``population_size x islands`` absorbed children count as one generation
for the history, the observers (MLflow, the progress display) and ring migration (every
``search.migration_interval`` of them).

Checkpoints: at a generation end, but not at every one: a checkpoint writes the whole state,
so its cost grows with the archive, while a busy cluster ends generations many times a
second. One is written once ``search.checkpoint_every`` children were absorbed since the
last, or (the default, null) once the driver has worked :data:`CHECKPOINT_SPACING` times as
long as the last checkpoint took; and always at the end. The search proposes exactly
``generations x population_size x islands`` children, as the generational mode does (a
child whose genome was already evaluated is looked up, not evaluated again, and counts
too), and never more than the evaluation budget allows; the last generation waits for its
last results, so nothing in flight is dropped and nothing extra is evaluated.

Resume: checkpoints record the children in flight (genome, parents, operator, the parent
whose weights they inherit, the proposing island) and the weights of those parents, and
``since_checkpoint.jsonl`` (certevo.search.run_directory) lists what happened after the
checkpoint: the children each island proposed (their ids) and the order results were
absorbed in. A resumed search proposes the checkpoint's children in flight again first, then
replays that list (the islands are deterministic, so they propose the same children again),
taking the results from the journal (``Search._cached``). Generations that end during the
replay get their history entry and migration again, and reach the observers with
``"replayed": true`` in the summary (the MLflow tracker then logs only what it has not).
Nothing journaled is evaluated again or left out of the archive; what was still running
when the driver stopped is evaluated again. The list is flushed, not fsync'd: a killed driver loses none of it, a
machine that loses power may lose its tail (those results then stay in the journal only,
and are looked up, not evaluated again, if proposed again).

Determinism: children are drawn from the islands' RNGs as in the generational mode, but
results arrive in the order workers finish, which decides the populations later children
are drawn from. Asynchronous runs (and resumed ones) are therefore not bit-reproducible;
use ``search.mode: generational`` for that.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certevo.cluster.pool import EvaluationTask, TaskResult
from certevo.population.files import atomic_write
from certevo.search.run_directory import RunDirectory
from certevo.search.state import Candidate
from certevo.search.strategies import Proposal

if TYPE_CHECKING:
    from certevo.search.loop import Search

__all__ = ["CHECKPOINT_SPACING", "SinceCheckpoint", "SteadyState", "in_flight_target"]

#: With ``search.checkpoint_every: null``, the driver works at least this many times as long
#: as its last checkpoint took before it writes the next one (checkpoints then take at most
#: about 1/20 of its time).
CHECKPOINT_SPACING = 20.0


def in_flight_target(population_size: int, actors: int) -> int:
    """How many children the driver keeps proposed and not yet absorbed: one per actor,
    and at least a population's worth, so that few actors still get batches."""
    return max(population_size, actors)


class SinceCheckpoint:
    """``since_checkpoint.jsonl``: one JSON event a line, each tagged with the generation
    of the checkpoint it follows (``after``), so a line left from before a checkpoint (the
    driver stopped between saving it and emptying this file) is never replayed.

    Events: ``{"offspring": island, "count", "ids", "turn"}`` (an island proposed
    children) and ``{"absorb": id}`` (a result was taken in)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def events(self, after: int) -> list[dict[str, Any]]:
        """The events that follow checkpoint ``after``, in order (a torn last line ends them)."""
        try:
            lines = self.path.read_bytes().split(b"\n")
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                break
            if isinstance(event, dict) and event.get("after") == after:
                out.append(event)
        return out

    def write(self, events: list[dict[str, Any]]) -> None:
        """Replace the file by ``events`` (empty after a checkpoint)."""
        atomic_write(self.path, b"".join(json.dumps(e).encode() + b"\n" for e in events))

    def append(self, event: dict[str, Any]) -> None:
        """One event, flushed to the operating system (a killed driver keeps it)."""
        with open(self.path, "ab") as handle:
            handle.write(json.dumps(event).encode() + b"\n")


@dataclass
class _Flight:
    """One genome being evaluated, and the islands (with their proposals) waiting for it."""

    proposal: Proposal
    waiters: list[tuple[int, Proposal]] = field(default_factory=list)


class SteadyState:
    """Drives one session of an asynchronous search over ``search``'s pool and islands
    (started by :meth:`certevo.search.loop.Search.run` after the K-starts)."""

    def __init__(self, search: Search) -> None:
        self.search = search
        self.state = search.state
        self.step = search.config.search.population_size * len(search.islands)
        self.flights: dict[str, _Flight] = {}
        self.pending: deque[tuple[int, Proposal]] = deque()  # drawn, not yet routed by _take
        self.turn = 0  # the island that proposes next
        self.since = SinceCheckpoint(RunDirectory(search.run_dir).since_checkpoint)
        self.replaying = False
        self.checkpointed = self.state.generation  # the generation of the checkpoint the events follow
        self.since_saved = 0  # children absorbed since that checkpoint

    # -- limits ---------------------------------------------------------------------
    def _proposals_left(self) -> int:
        """Children still to propose before the last generation is full."""
        waiting = sum(len(f.waiters) for f in self.flights.values()) + len(self.pending)
        return (self.search.config.search.generations - self.state.generation) * self.step \
            - self.state.absorbed - waiting

    def _budget_room(self) -> int:
        """Evaluations that may still start without passing the budget."""
        return self.search._budget_left() - len(self.flights)

    # -- running --------------------------------------------------------------------
    def run(self) -> None:
        """Evaluate until the generation count or the budget is reached, then absorb
        what is still in flight; the last (possibly partial) generation is checkpointed."""
        search = self.search
        if not search.islands:
            return
        self.target = in_flight_target(search.config.search.population_size, len(search.pool.actors))
        first = self._resume()
        for result in search.pool.run(first, refill=self._refill):
            self._arrived(result)
        if self.state.absorbed > 0:
            self._end_step(final=True)
        elif self.checkpointed != self.state.generation:  # the last generation end was not checkpointed
            search._save_checkpoint()
            self._checkpointed()

    def _resume(self) -> list[EvaluationTask]:
        """Rebuild what happened since the checkpoint: its children in flight, then the
        replayed events; returns the tasks of the children whose results are not journaled."""
        self.pending.extend(
            (int(p["island"]), Proposal(p["genome"], tuple(p["parents"]), p["operator"], p["inherit_from"]))
            for p in self.state.in_flight)
        self.state.in_flight = []
        self.replaying = True
        self._take_pending()  # the checkpoint's children in flight first: the events below follow them
        replayed = []
        for event in self.since.events(self.checkpointed):
            redone = self._replay(event)
            if redone is None:
                break
            replayed.append(redone)
            if redone != event:
                break
        self.replaying = False
        self.since.write(replayed)  # what was not redone must not be replayed by a later resume
        tasks = []
        for cid, flight in list(self.flights.items()):  # finished before the stop: absorbed now
            if cid in self.search._cached:
                self._absorb(cid, self.search._cached[cid], self.search.journal.weights(cid))
            else:
                tasks.append(self._task(flight.proposal))
        return tasks

    def _replay(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """Redo one event; returns it as it happened this time (a proposal whose children
        differ stops the replay after it), or None if it cannot be redone (stop before it)."""
        if "offspring" in event:
            island, count = int(event["offspring"]), int(event["count"])
            host = self.search.islands[island]
            proposals = host.result(host.submit("offspring", count))
            self.turn = int(event["turn"])
            self.pending.extend((island, p) for p in proposals)
            self._take_pending()
            return {**event, "ids": [p.genome.id for p in proposals]}
        cid = event.get("absorb")
        if cid not in self.flights or cid not in self.search._cached:
            return None
        self._absorb(cid, self.search._cached[cid], self.search.journal.weights(cid))
        return event

    def _refill(self, idle: int) -> list[EvaluationTask]:
        """New tasks for the pool (``idle`` actors are free): up to the in-flight target,
        within the proposal count and the budget; ``[]`` once nothing more may start."""
        tasks: list[EvaluationTask] = []
        while True:
            # Each proposal starts a flight, waits on one or is absorbed now: every round
            # lowers one of these three, so the loop ends.
            want = min(self.target - len(self.flights), self._proposals_left(), self._budget_room())
            if want <= 0:
                return tasks
            self._propose(want)
            tasks.extend(self._take_pending())

    def _propose(self, count: int) -> None:
        """``count`` children, drawn from the islands in turn, into ``pending``."""
        islands = self.search.islands
        counts = [0] * len(islands)
        for k in range(count):
            counts[(self.turn + k) % len(islands)] += 1
        order = [(self.turn + k) % len(islands) for k in range(len(islands)) if counts[(self.turn + k) % len(islands)]]
        self.turn = (self.turn + count) % len(islands)
        pending = {i: islands[i].submit("offspring", counts[i]) for i in order}
        for i in order:
            proposals = islands[i].result(pending[i])
            self.since.append({"after": self.checkpointed, "offspring": i, "count": counts[i],
                               "ids": [p.genome.id for p in proposals], "turn": self.turn})
            self.pending.extend((i, p) for p in proposals)

    def _take_pending(self) -> list[EvaluationTask]:
        """Route the drawn children: a genome already evaluated is absorbed now, one being
        evaluated gets another waiter, a new one becomes a flight (and, unless replaying,
        its result is taken from the journal or it becomes a task)."""
        tasks = []
        while self.pending:
            island, proposal = self.pending.popleft()
            cid = proposal.genome.id
            if cid in self.flights:
                self.flights[cid].waiters.append((island, proposal))
            elif cid in self.state.archive:
                self._accept(island, proposal, self.state.archive[cid])
            else:
                self.flights[cid] = _Flight(proposal, [(island, proposal)])
                if self.replaying:
                    continue
                if cid in self.search._cached:  # finished before an interruption
                    self._absorb(cid, self.search._cached[cid], self.search.journal.weights(cid))
                else:
                    tasks.append(self._task(proposal))
        return tasks

    def _task(self, proposal: Proposal) -> EvaluationTask:
        parent = proposal.inherit_from
        if self.search.config.search.weight_inheritance and parent is not None and parent not in self.state.weights:
            saved = self.search.journal.weights(parent)  # every journaled candidate's weights stay on disk
            if saved is not None:
                self.state.weights[parent] = saved
        return self.search._task(proposal)

    def _arrived(self, result: TaskResult) -> None:
        arrays = self.search._journal_result(result)
        self._absorb(result.task.key, result.evaluation.record, arrays)

    def _absorb(self, cid: str, record: Any, arrays: Any) -> None:
        """A finished evaluation into archive and lineage, then into every waiting island."""
        if not self.replaying:  # before the islands change: a generation may end (and empty the file) below
            self.since.append({"after": self.checkpointed, "absorb": cid})
        flight = self.flights.pop(cid)
        candidate = self.search._add_candidate(flight.proposal, record, arrays, self.state.generation + 1)
        for island, waiting in flight.waiters:
            self._accept(island, waiting, candidate)

    def _accept(self, island: int, proposal: Proposal, candidate: Candidate) -> None:
        """One child into its island's survival; a full generation's worth ends it."""
        host = self.search.islands[island]
        weights = {candidate.id: self.state.weights[candidate.id]} if candidate.id in self.state.weights else {}
        host.result(host.submit("take", [proposal], [candidate], weights))
        self.state.absorbed += 1
        self.since_saved += 1
        if self.state.absorbed >= self.step:
            self._end_step()

    def _checkpoint_due(self) -> bool:
        """Whether the generation that just ended is checkpointed (see the module docstring)."""
        every = self.search.config.search.checkpoint_every
        if every is not None:
            return self.since_saved >= every
        last = self.search.checkpointed_at
        return last is None or time.perf_counter() - last >= CHECKPOINT_SPACING * self.search.checkpoint_seconds

    def _end_step(self, final: bool = False) -> None:
        """A generation's worth of children absorbed (or, ``final``, the last of them):
        snapshots, migration when due, the history entry, the checkpoint (with what is in
        flight) when due, and the observers."""
        search = self.search
        offspring = min(self.state.absorbed, self.step)
        self.state.absorbed -= offspring
        self.state.generation += 1
        pending = [island.submit("snapshot") for island in search.islands]
        snapshots = search._adopt_islands([island.result(p) for island, p in zip(search.islands, pending)])
        waiting = [w for flight in self.flights.values() for w in flight.waiters] + list(self.pending)
        save = not self.replaying and (final or self._checkpoint_due())
        if save:
            self.state.in_flight = [
                {"island": island, "genome": p.genome, "parents": p.parents, "operator": p.operator,
                 "inherit_from": p.inherit_from}
                for island, p in waiting
            ]
        parents = [p.inherit_from for _, p in waiting if p.inherit_from is not None]
        search._end_generation(offspring, keep_weights=parents, save=save, replayed=self.replaying)
        self.state.in_flight = []
        if save:
            self._checkpointed()
        for island, snapshot in zip(search.islands, snapshots):
            island.checkpointed(search._island_args(snapshot))

    def _checkpointed(self) -> None:
        """A checkpoint of the current generation was just written: the events start over."""
        self.since.write([])
        self.checkpointed = self.state.generation
        self.since_saved = 0
