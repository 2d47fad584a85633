"""Islands: N populations of one search evolving in parallel, with migration.

Every island runs the configured strategy on its own population with its own RNG and its
own view of the archive (the candidates it proposed or received). The driver evaluates the
offspring of all islands together on the one evaluator pool (a genome any island already
had evaluated is looked up), then hands each island its results for selection.

Seeds: after the K-starts phase (run once, in the driver), island 0 continues the search
RNG, so one island is exactly the single-population search; island ``i > 0`` draws from
``derive_seed(seed, "island", i)``. Every island starts from the K-starts winners.

Migration: after every ``search.migration_interval``-th generation each island picks its
``search.migrants`` best members (NSGA-II order) and island ``i`` sends them to island
``(i + 1) % N`` (a ring); all emigrants are chosen before anyone receives, and a receiver
re-selects its population (the strategy's survival rule) over its members plus the
newcomers.

Where an island lives (in the driver or in a Ray actor that is restored when it dies):
certevo.cluster.island_hosts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from certevo.population.checkpoint import restore_rng, rng_state
from certevo.population.selection import select_nsga2
from certevo.search.config import config_from_dict
from certevo.search.state import Candidate, SearchState
from certevo.search.strategies import Proposal, make_strategy

Weights = dict[str, dict[str, np.ndarray]]


class Island:
    """One island population; built from a snapshot plus the candidates it has seen."""

    def __init__(
        self,
        config: Mapping[str, Any],
        layer_shapes: Mapping[str, tuple[int, ...]],
        hidden_layers: int,
        snapshot: Mapping[str, Any],
        candidates: Sequence[Candidate],
        weights: Weights,
    ) -> None:
        self.config = config_from_dict(dict(config))
        self.index = int(snapshot["index"])
        self.strategy = make_strategy(self.config, dict(layer_shapes), hidden_layers)
        self.state = SearchState(
            rng=restore_rng(snapshot["rng"]),
            generation=int(snapshot["generation"]),
            population=list(snapshot["population"]),
            activation_population=[list(p) for p in snapshot["activation_population"]],
        )
        for candidate in candidates:
            self.state.add(candidate)
        self.state.weights = {k: v for k, v in weights.items() if k in set(self.state.population)}
        #: Children proposed and not yet accepted back (asynchronous mode: still being
        #: evaluated); new children avoid them as they avoid the archive.
        self.pending: set[str] = set(snapshot.get("pending", ()))

    def snapshot(self) -> dict[str, Any]:
        """JSON form of the island (the archive by ids, in the order it was seen)."""
        out = {
            "index": self.index,
            "generation": self.state.generation,
            "rng": rng_state(self.state.rng),
            "population": list(self.state.population),
            "activation_population": self.state.activation_population,
            "seen": list(self.state.archive),
        }
        if self.pending:  # (never between generations of the generational mode)
            out["pending"] = sorted(self.pending)
        return out

    def offspring(self, count: int) -> list[Proposal]:
        """``count`` children of the island's population, new where possible (see
        :attr:`pending`)."""
        proposals = self.strategy.offspring(self.state, count, self.pending)
        self.pending.update(p.genome.id for p in proposals)
        return proposals

    def accept(self, proposals: Sequence[Proposal], evaluated: Sequence[Candidate], weights: Weights) -> dict[str, Any]:
        """Take the evaluated offspring, select survivors; returns the new snapshot."""
        self.take(proposals, evaluated, weights)
        return self.snapshot()

    def take(self, proposals: Sequence[Proposal], evaluated: Sequence[Candidate], weights: Weights) -> None:
        """:meth:`accept` without the snapshot: the asynchronous driver takes children in
        one at a time and asks for a snapshot only when a generation ends (a snapshot lists
        everything the island has seen, so building one per result grew with the archive)."""
        self.pending.difference_update(p.genome.id for p in proposals)
        self._receive(evaluated, weights)
        self.strategy.select(self.state, list(proposals))
        self.state.generation += 1
        self._keep_population_weights()

    def emigrants(self, count: int) -> list[str]:
        """Ids of the island's ``count`` best members (NSGA-II order)."""
        ids = self.state.population
        objectives = [self.state.archive[i].record.objectives for i in ids]
        return select_nsga2(list(ids), objectives, min(count, len(ids)))

    def immigrate(self, newcomers: Sequence[Candidate], weights: Weights) -> dict[str, Any]:
        """Receive migrants and re-select; returns the new snapshot."""
        self._receive(newcomers, weights)
        arrivals = [Proposal(c.genome, (), "migration") for c in newcomers if c.id not in self.state.population]
        if arrivals:
            self.strategy.select(self.state, arrivals)
        self._keep_population_weights()
        return self.snapshot()

    def _receive(self, candidates: Sequence[Candidate], weights: Weights) -> None:
        for candidate in candidates:
            if candidate.id not in self.state.archive:
                self.state.add(candidate)
                if weights.get(candidate.id) is not None:
                    self.state.weights[candidate.id] = weights[candidate.id]

    def _keep_population_weights(self) -> None:
        keep = set(self.state.population)
        self.state.weights = {k: v for k, v in self.state.weights.items() if k in keep}


def initial_snapshots(state: SearchState, islands: int, seed: int) -> list[dict[str, Any]]:
    """Snapshots of ``islands`` islands right after the K-starts phase of ``state``."""
    from certevo.population.seeds import derive_seed

    out = []
    for index in range(islands):
        rng = state.rng if index == 0 else np.random.default_rng(derive_seed(seed, "island", index))
        out.append({
            "index": index,
            "generation": state.generation,
            "rng": rng_state(rng),
            "population": list(state.population),
            "activation_population": state.activation_population,
            "seen": list(state.archive),
        })
    return out


def offspring_counts(islands: int, population_size: int, budget_left: int) -> list[int]:
    """Offspring per island this generation: ``population_size`` each while the budget
    lasts; a short budget is split evenly (earlier islands get the remainder)."""
    total = min(islands * population_size, budget_left)
    base, extra = divmod(total, islands)
    return [base + (1 if i < extra else 0) for i in range(islands)]


__all__ = ["Island", "initial_snapshots", "offspring_counts"]
