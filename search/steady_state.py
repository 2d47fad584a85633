"""Asynchronous (steady-state) evolution: ``search.mode: asynchronous``.

The generational loop (certevo.search.loop) hands a whole generation to the pool and waits
for its slowest candidate before selecting; at most ``population_size x islands`` workers
are ever busy. Here the driver instead feeds the pool on demand
(:meth:`certevo.cluster.pool.EvaluationPool.run` with ``refill``): whenever workers free up
it asks the islands for new children, round-robin, and absorbs every result the moment it
arrives: journal, archive, lineage, the proposing island's survival (``accept`` of that one
child: NSGA-II on its population plus the newcomer) and ``on_evaluation``.

How many children are in flight: the driver keeps ``max(population_size, actors)`` of them
proposed and not yet absorbed, so 64 actors each get one, while 2 actors still get batches
of about half a population each (the stacked evaluator, certevo.evaluators.stacked, trains
a batch much faster per candidate than one at a time). A child's parents are therefore
chosen from a population that is missing the results of at most that many candidates.

Generations: every ``population_size x islands`` absorbed children count as one generation
for the history, the checkpoint, the observers (MLflow, the progress display) and ring
migration (every ``search.migration_interval`` of them). The search proposes exactly
``generations x population_size x islands`` children, as the generational mode does (a
child whose genome was already evaluated is looked up, not evaluated again, and counts
too), and never more than the evaluation budget allows; the last generation waits for its
last results, so nothing in flight is dropped and nothing extra is evaluated.

Resume after a stop re-proposes from the last checkpoint (children in flight then are
not recorded yet).

Determinism: children are drawn from the islands' RNGs as in the generational mode, but
results arrive in the order workers finish, which decides the populations later children
are drawn from. Asynchronous runs (and resumed ones) are therefore not bit-reproducible;
use ``search.mode: generational`` for that.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from certevo.cluster.pool import EvaluationTask, TaskResult
from certevo.population.lineage import LineageRecord
from certevo.search.state import Candidate, objectives, trained_arrays
from certevo.search.strategies import Proposal

if TYPE_CHECKING:
    from certevo.search.loop import Search

__all__ = ["SteadyState", "in_flight_target"]


def in_flight_target(population_size: int, actors: int) -> int:
    """How many children the driver keeps proposed and not yet absorbed: one per actor,
    and at least a population's worth, so that few actors still get batches."""
    return max(population_size, actors)


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
            self._end_step()

    def _resume(self) -> list[EvaluationTask]:
        """Nothing to rebuild yet: children in flight at a stop are not checkpointed."""
        return []

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
            self.pending.extend((i, p) for p in proposals)

    def _take_pending(self) -> list[EvaluationTask]:
        """Route the drawn children: a genome already evaluated is absorbed now, one being
        evaluated gets another waiter, a new one becomes a flight (its result
        taken from the journal, or a task)."""
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
        search = self.search
        evaluation = result.evaluation
        arrays = trained_arrays(evaluation.weights, evaluation.gradients)
        search.journal.append(evaluation.record, arrays)
        search.evaluated_this_session += 1
        for observer in search.observers:
            observer.on_evaluation(search, result)
        self._absorb(result.task.key, evaluation.record, arrays)

    def _absorb(self, cid: str, record: Any, arrays: Any) -> None:
        """A finished evaluation into archive and lineage, then into every waiting island."""
        flight = self.flights.pop(cid)
        proposal = flight.proposal
        candidate = Candidate(proposal.genome, record)
        self.state.add(candidate)
        if arrays is not None:
            self.state.weights[cid] = arrays
        if cid not in self.state.lineage:
            extra = self.search.config.search.extra_objectives
            self.state.lineage.add(LineageRecord(cid, proposal.parents, proposal.operator, self.state.generation + 1,
                                                 objectives(record, extra), record.to_dict()))
        for island, waiting in flight.waiters:
            self._accept(island, waiting, candidate)

    def _accept(self, island: int, proposal: Proposal, candidate: Candidate) -> None:
        """One child into its island's survival; a full generation's worth ends it."""
        host = self.search.islands[island]
        weights = {candidate.id: self.state.weights[candidate.id]} if candidate.id in self.state.weights else {}
        host.result(host.submit("accept", [proposal], [candidate], weights))
        self.state.absorbed += 1
        if self.state.absorbed >= self.step:
            self._end_step()

    def _end_step(self) -> None:
        """A generation's worth of children absorbed: snapshots, migration when due, the
        history entry, the checkpoint and the observers."""
        search, settings = self.search, self.search.config.search
        offspring = min(self.state.absorbed, self.step)
        self.state.absorbed -= offspring
        self.state.generation += 1
        pending = [island.submit("snapshot") for island in search.islands]
        snapshots = [island.result(p) for island, p in zip(search.islands, pending)]
        if len(search.islands) > 1 and self.state.generation % settings.migration_interval == 0:
            snapshots = search._migrate()
        self.state.islands = snapshots
        self.state.population = list(dict.fromkeys(i for s in snapshots for i in s["population"]))
        patterns = [p for s in snapshots for p in s["activation_population"]]
        self.state.activation_population = [p for k, p in enumerate(patterns) if p not in patterns[:k]]
        waiting = [w for flight in self.flights.values() for w in flight.waiters] + list(self.pending)
        parents = [p.inherit_from for _, p in waiting if p.inherit_from is not None]
        search._end_generation(offspring, keep_weights=parents)
        for island, snapshot in zip(search.islands, snapshots):
            island.checkpointed(search._island_args(snapshot))
