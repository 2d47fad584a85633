"""Search strategies: how a generation's offspring are made and who survives.

``nsga2``: one population of full genomes (masks + activations). Parents are picked by
binary tournament on non-domination rank (ties: a fair coin); a child is a crossover of
two parents (probability ``rates.crossover``; layer-wise or uniform, a fair coin) or a copy
of one, then, each with its own probability, prune-and-regrow, density mutation and
activation mutation. Survivors: NSGA-II over parents + offspring.

``coevolution``: a mask population and an activation population evolve cooperatively.
Half of each generation's offspring vary masks and are evaluated with the activation
pattern of the current best collaborator (one of the two best-credited patterns, a fair
coin); the other half vary activation patterns and are evaluated with a mask drawn
uniformly from the mask population's Pareto front.

Credit assignment (co-evolution): a mask is scored by (its sparsity, the best certified
accuracy of any evaluated pair it took part in); masks survive by NSGA-II on that. An
activation pattern is scored by the hypervolume (reference (0, 0)) of the
(sparsity, certified accuracy) points of all the pairs it took part in; the
best-credited patterns survive (ties: earlier first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from population.genome import Genome
from population.kstarts import kstart_candidates, kstart_winners
from population.operators import crossover_layerwise, crossover_uniform, mutate_activation, mutate_density, prune_regrow
from population.selection import hypervolume_2d, nondominated_ranks, pareto_front, select_nsga2
from search.config import SearchConfig
from search.state import SearchState, objectives

MAX_REDRAWS = 5


@dataclass(frozen=True)
class Proposal:
    """A genome to evaluate and how it was made."""

    genome: Genome
    parents: tuple[str, ...]
    operator: str
    inherit_from: str | None = None


class Strategy:
    """Shared parts: K-starts seeding and mask/activation variation."""

    def __init__(self, config: SearchConfig, layer_shapes: dict[str, tuple[int, ...]], hidden_layers: int) -> None:
        self.config = config
        self.layer_shapes = layer_shapes
        self.hidden_layers = hidden_layers
        self.base_activations = (config.genome.activations[0],) * hidden_layers

    # -- K-starts -------------------------------------------------------------------
    def kstart_proposals(self, state: SearchState) -> list[Proposal]:
        """K random masks per target sparsity (activations: the first allowed one)."""
        starts = kstart_candidates(
            self.layer_shapes, self.config.genome.sparsities, self.config.search.kstarts, state.rng,
            lambda rng: self.base_activations, self.config.genome.allocation,
        )
        self._starts = starts
        return [Proposal(genome, (), "kstart") for _, genome in starts]

    def kstart_population(self, state: SearchState, proposals: list[Proposal]) -> list[str]:
        """The winning starts, by the configured K-starts score."""
        starts = [(p.genome.sparsity, p.genome) for p in proposals]
        scores = {}
        for _, genome in starts:
            record = state.archive[genome.id].record
            if not record.ok:
                scores[genome.id] = float("-inf")
            elif self.config.search.kstarts_score == "certified":
                scores[genome.id] = record.certified_accuracy
            else:
                scores[genome.id] = (record.kstarts or {}).get(self.config.search.kstarts_score, float("-inf"))
        return [g.id for g in kstart_winners(starts, scores, self.config.search.population_size)]

    # -- variation ------------------------------------------------------------------
    def _objectives(self, state: SearchState, ids: list[str]) -> list[tuple[float, ...]]:
        return [objectives(state.archive[i].record, self.config.search.extra_objectives) for i in ids]

    def _tournament(self, ids: list[str], ranks: list[int], rng: np.random.Generator) -> str:
        a, b = rng.integers(len(ids), size=2)
        if ranks[a] != ranks[b]:
            return ids[a] if ranks[a] < ranks[b] else ids[b]
        return ids[a] if rng.random() < 0.5 else ids[b]

    def _mutate_masks(self, genome: Genome, state: SearchState, parent: str, rng: np.random.Generator) -> tuple[Genome, list[str]]:
        rates, space = self.config.search.rates, self.config.genome
        ops = []
        if rng.random() < rates.prune_regrow:
            weights = state.weights.get(parent)
            if weights is not None:
                magnitudes = {name: weights[f"{name}.weight"] for name in genome.masks}
                genome = prune_regrow(genome, rng, rates.regrow_fraction, drop="magnitude", magnitudes=magnitudes)
            else:
                genome = prune_regrow(genome, rng, rates.regrow_fraction)
            ops.append("prune_regrow")
        if rng.random() < rates.density:
            genome = mutate_density(genome, rng, rates.density_step, space.min_sparsity, space.max_sparsity)
            ops.append("density")
        return genome, ops

    def _mutate_activations(self, genome: Genome, rng: np.random.Generator) -> Genome:
        return mutate_activation(genome, rng, self.config.genome.activations, per_neuron=self.config.genome.per_neuron)

    def _can_mutate_activations(self) -> bool:
        return len(self.config.genome.activations) > 1


class Nsga2Strategy(Strategy):
    """One population of full genomes, NSGA-II survival."""

    def offspring(self, state: SearchState, count: int) -> list[Proposal]:
        """``count`` children of the current population (distinct, and new where possible)."""
        rng, rates = state.rng, self.config.search.rates
        ids = state.population
        ranks = nondominated_ranks(self._objectives(state, ids))
        out: list[Proposal] = []
        taken = set(state.archive)
        for _ in range(count):
            for attempt in range(MAX_REDRAWS):
                first = self._tournament(ids, ranks, rng)
                parents = (first,)
                genome = state.archive[first].genome
                ops = []
                if rng.random() < rates.crossover:
                    second = self._tournament(ids, ranks, rng)
                    other = state.archive[second].genome
                    if rng.random() < 0.5:
                        genome, op = crossover_layerwise(genome, other, rng), "crossover_layerwise"
                    else:
                        genome, op = crossover_uniform(genome, other, rng), "crossover_uniform"
                    parents, ops = (first, second), [op]
                genome, mask_ops = self._mutate_masks(genome, state, first, rng)
                ops += mask_ops
                if self._can_mutate_activations() and rng.random() < rates.activation:
                    genome = self._mutate_activations(genome, rng)
                    ops.append("activation")
                if genome.id not in taken or attempt == MAX_REDRAWS - 1:
                    break
            taken.add(genome.id)
            out.append(Proposal(genome, parents, "+".join(ops) or "copy", inherit_from=first))
        return out

    def select(self, state: SearchState, proposals: list[Proposal]) -> None:
        """NSGA-II survival over parents + offspring."""
        pool = list(dict.fromkeys(state.population + [p.genome.id for p in proposals]))
        size = min(self.config.search.population_size, len(pool))
        state.population = select_nsga2(pool, self._objectives(state, pool), size)


class CoevolutionStrategy(Strategy):
    """A mask population and an activation population, evaluated as pairs."""

    def _mask_key(self, genome: Genome) -> str:
        return Genome(genome.masks, self.base_activations).id

    def _pattern(self, genome: Genome) -> list:
        return genome.activation_pattern()

    def _with_pattern(self, genome: Genome, pattern: list) -> Genome:
        layers = tuple(p if isinstance(p, str) else p[0] for p in pattern)
        neuron = tuple(tuple(p) if isinstance(p, list) else None for p in pattern)
        return Genome(genome.masks, layers, neuron if any(n is not None for n in neuron) else None)

    def seed_activations(self, state: SearchState) -> None:
        """The initial activation population: the base pattern plus random layer-wise ones."""
        size = max(2, self.config.search.population_size // 2)
        allowed = self.config.genome.activations
        patterns = [list(self.base_activations)]
        for _ in range(size * 4):
            if len(patterns) >= size:
                break
            candidate = [allowed[int(i)] for i in state.rng.integers(len(allowed), size=self.hidden_layers)]
            if candidate not in patterns:
                patterns.append(candidate)
        state.activation_population = patterns

    def _mask_credit(self, state: SearchState) -> dict[str, tuple[float, float, str]]:
        best: dict[str, tuple[float, float, str]] = {}
        for cid, cand in state.archive.items():
            if not cand.record.ok:
                continue
            key = self._mask_key(cand.genome)
            value = (cand.record.sparsity, cand.record.certified_accuracy, cid)
            if key not in best or value[1] > best[key][1]:
                best[key] = value
        return best

    def _pattern_credit(self, state: SearchState) -> dict[str, float]:
        points: dict[str, list[tuple[float, float]]] = {}
        for cand in state.archive.values():
            if cand.record.ok:
                points.setdefault(repr(self._pattern(cand.genome)), []).append(cand.record.objectives)
        return {key: hypervolume_2d(p) for key, p in points.items()}

    def offspring(self, state: SearchState, count: int) -> list[Proposal]:
        """Half mask children (with the best collaborator pattern), half pattern children
        (with a collaborator mask from the mask front)."""
        rng, rates = state.rng, self.config.search.rates
        credit = self._pattern_credit(state)
        patterns = sorted(state.activation_population, key=lambda p: -credit.get(repr(p), 0.0))
        ids = state.population
        ranks = nondominated_ranks(self._objectives(state, ids))
        front_ids = [c.id for c in state.front(ids)] or ids
        n_masks = math.ceil(count / 2) if self._can_mutate_activations() else count
        out: list[Proposal] = []
        taken = set(state.archive)
        for i in range(count):
            for attempt in range(MAX_REDRAWS):
                if i < n_masks:
                    first = self._tournament(ids, ranks, rng)
                    genome, parents, ops = state.archive[first].genome, (first,), []
                    if rng.random() < rates.crossover:
                        second = self._tournament(ids, ranks, rng)
                        genome = crossover_layerwise(genome, state.archive[second].genome, rng)
                        parents, ops = (first, second), ["crossover_layerwise"]
                    genome, mask_ops = self._mutate_masks(genome, state, first, rng)
                    ops += mask_ops
                    collaborator = patterns[0] if len(patterns) < 2 or rng.random() < 0.5 else patterns[1]
                    genome = self._with_pattern(genome, collaborator)
                    operator = "+".join(ops) or "copy"
                else:
                    pattern = patterns[int(rng.integers(len(patterns)))]
                    first = front_ids[int(rng.integers(len(front_ids)))]
                    genome = self._mutate_activations(self._with_pattern(state.archive[first].genome, pattern), rng)
                    parents, operator = (first,), "activation"
                if genome.id not in taken or attempt == MAX_REDRAWS - 1:
                    break
            taken.add(genome.id)
            out.append(Proposal(genome, parents, operator, inherit_from=first))
        return out

    def select(self, state: SearchState, proposals: list[Proposal]) -> None:
        """Masks: NSGA-II on credit; patterns: the best by hypervolume credit."""
        best = self._mask_credit(state)
        current = {self._mask_key(state.archive[i].genome) for i in state.population}
        current |= {self._mask_key(p.genome) for p in proposals}
        keys = [k for k in dict.fromkeys(self._mask_key(state.archive[i].genome) for i in
                                          state.population + [p.genome.id for p in proposals]) if k in best]
        reps = [best[k][2] for k in keys]
        objs = [(best[k][0], best[k][1]) for k in keys]
        size = min(self.config.search.population_size, len(reps))
        if reps:
            state.population = select_nsga2(reps, objs, size)
        credit = self._pattern_credit(state)
        candidates = list(state.activation_population)
        for p in proposals:
            pattern = self._pattern(p.genome)
            if pattern not in candidates:
                candidates.append(pattern)
        size = max(2, self.config.search.population_size // 2)
        order = sorted(range(len(candidates)), key=lambda i: (-credit.get(repr(candidates[i]), 0.0), i))
        state.activation_population = [candidates[i] for i in order[:size]]


def make_strategy(config: SearchConfig, layer_shapes: dict[str, tuple[int, ...]], hidden_layers: int) -> Strategy:
    """The strategy named by ``config.search.strategy``."""
    cls = {"nsga2": Nsga2Strategy, "coevolution": CoevolutionStrategy}[config.search.strategy]
    return cls(config, layer_shapes, hidden_layers)


__all__ = ["CoevolutionStrategy", "Nsga2Strategy", "Proposal", "Strategy", "make_strategy", "pareto_front"]
