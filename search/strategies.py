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

With weight inheritance (``search.weight_inheritance``, the default) a child starts from
its parent's trained weights, so variation follows what the parent learned: one guided
mask operator (certevo.population.guided_operators: sparsify, reallocate or regrow, equally
likely) replaces the crossover and random mask operators, and ``search.init:
kstarts+prune`` adds to generation 0 the best least-sparse K-start pruned by magnitude to
every other target sparsity (ERK and global allocation).

Credit assignment (co-evolution): a mask is scored by (its sparsity, the best certified
accuracy of any evaluated pair it took part in); masks survive by NSGA-II on that. An
activation pattern is scored by the hypervolume (reference (0, 0)) of the
(sparsity, certified accuracy) points of all the pairs it took part in; the
best-credited patterns survive (ties: earlier first).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from certevo.population.genome import Genome
from certevo.population.guided_operators import magnitude_prune, reallocate, regrow, sparsify
from certevo.population.kstarts import kstart_candidates, kstart_winners
from certevo.population.operators import crossover_layerwise, crossover_uniform, mutate_activation, mutate_density, prune_regrow
from certevo.population.selection import hypervolume_2d, nondominated_ranks, pareto_front, select_nsga2
from certevo.search.config import SearchConfig
from certevo.search.state import SearchState, objectives, split_trained

MAX_REDRAWS = 5
PRUNED_START_ALLOCATIONS = ("erk", "global")


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

    def pruned_proposals(self, state: SearchState, kstarts: list[Proposal]) -> list[Proposal]:
        """``search.init: kstarts+prune``: the K-start of the lowest target sparsity with the
        best certified accuracy (ties: the earlier start), pruned by magnitude to every
        other target sparsity, with ERK and with global allocation; each child starts from
        the start's trained weights."""
        if self.config.search.init != "kstarts+prune":
            return []
        lowest = min(self.config.genome.sparsities)
        targets = {g.id: sparsity for sparsity, g in self._starts}
        starts = [p.genome.id for p in kstarts if targets.get(p.genome.id) == lowest]
        scored = [(state.archive[i].record.certified_accuracy, -k, i) for k, i in enumerate(starts)
                  if state.archive[i].record.ok and i in state.weights]
        if not scored:
            return []
        best = max(scored)[2]
        magnitudes, _ = self._trained(state, best)
        parent = state.archive[best].genome
        out, seen = [], set(state.archive)
        for sparsity in sorted(set(self.config.genome.sparsities)):
            if sparsity <= lowest:
                continue
            for allocation in PRUNED_START_ALLOCATIONS:
                child = magnitude_prune(parent, sparsity, allocation, state.rng, magnitudes)
                if child.id not in seen:
                    seen.add(child.id)
                    out.append(Proposal(child, (best,), f"prune_{allocation}", inherit_from=best))
        return out

    def kstart_population(self, state: SearchState, proposals: list[Proposal], pruned: list[Proposal] = ()) -> list[str]:
        """The winning starts, by the configured K-starts score; with pruned starts, the
        population is NSGA-II's choice among the winners and the pruned starts."""
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
        winners = [g.id for g in kstart_winners(starts, scores, self.config.search.population_size)]
        if not pruned:
            return winners
        pool = list(dict.fromkeys(winners + [p.genome.id for p in pruned]))
        return select_nsga2(pool, self._objectives(state, pool), min(self.config.search.population_size, len(pool)))

    # -- variation ------------------------------------------------------------------
    def _objectives(self, state: SearchState, ids: list[str]) -> list[tuple[float, ...]]:
        return [objectives(state.archive[i].record, self.config.search.extra_objectives) for i in ids]

    def _tournament(self, ids: list[str], ranks: list[int], rng: np.random.Generator) -> str:
        a, b = rng.integers(len(ids), size=2)
        if ranks[a] != ranks[b]:
            return ids[a] if ranks[a] < ranks[b] else ids[b]
        return ids[a] if rng.random() < 0.5 else ids[b]

    def _trained(self, state: SearchState, cid: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        """Magnitudes (the trained weights) and dense gradients of a candidate's layers."""
        weights, gradients = split_trained(state.weights[cid])
        magnitudes = {name: weights[f"{name}.weight"] for name in self.layer_shapes}
        return magnitudes, (gradients if all(name in gradients for name in self.layer_shapes) else None)

    def _guided(self, state: SearchState, parent: str) -> bool:
        """True if a child of ``parent`` varies by its trained weights."""
        return self.config.search.weight_inheritance and parent in state.weights

    def _mutate_masks(self, genome: Genome, state: SearchState, parent: str, rng: np.random.Generator) -> tuple[Genome, list[str]]:
        rates, space = self.config.search.rates, self.config.genome
        if self._guided(state, parent):
            magnitudes, gradients = self._trained(state, parent)
            choice = int(rng.integers(3))
            if choice == 0:
                child, op = sparsify(genome, rng, magnitudes, max_sparsity=space.max_sparsity)
                return child, [op]
            if choice == 1:
                child = reallocate(genome, rng, magnitudes, gradients)
                if child is not None:
                    return child, ["reallocate"]
            return regrow(genome, rng, magnitudes, gradients, fraction=rates.regrow_fraction), ["regrow"]
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

    def _champions(self, state: SearchState, ids: list[str]) -> list[str]:
        """``search.level_champions``: per band between consecutive target sparsities
        (genome.sparsities; the last band reaches 1), the member of ``ids`` with the best
        certified accuracy (ties: the sparser, then the earlier)."""
        if not self.config.search.level_champions:
            return []
        levels = sorted(set(self.config.genome.sparsities))
        best: dict[int, tuple[float, float, int, str]] = {}
        for order, cid in enumerate(ids):
            record = state.archive[cid].record
            band = sum(1 for level in levels if record.sparsity >= level - 1e-12) - 1
            if record.ok and band >= 0:
                key = (record.certified_accuracy, record.sparsity, -order, cid)
                if band not in best or key > best[band]:
                    best[band] = key
        return [best[band][3] for band in sorted(best)]

    def offspring(self, state: SearchState, count: int, pending: Collection[str] = ()) -> list[Proposal]:
        """``count`` children of the current population (distinct, and new where possible:
        not in the archive nor ``pending``, children proposed earlier and still being
        evaluated); level champions take part in tournaments as if on the front."""
        rng, rates = state.rng, self.config.search.rates
        ids = state.population
        ranks = nondominated_ranks(self._objectives(state, ids))
        champions = set(self._champions(state, ids))
        ranks = [0 if cid in champions else rank for cid, rank in zip(ids, ranks)]
        out: list[Proposal] = []
        taken = set(state.archive) | set(pending)
        for _ in range(count):
            for attempt in range(MAX_REDRAWS):
                first = self._tournament(ids, ranks, rng)
                parents = (first,)
                genome = state.archive[first].genome
                ops = []
                if not self._guided(state, first) and rng.random() < rates.crossover:
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
        """NSGA-II survival over parents + offspring (level champions first, if kept)."""
        pool = list(dict.fromkeys(state.population + [p.genome.id for p in proposals]))
        size = min(self.config.search.population_size, len(pool))
        champions = self._champions(state, pool)[:size]
        rest = [cid for cid in pool if cid not in champions]
        chosen = select_nsga2(rest, self._objectives(state, rest), size - len(champions)) if size > len(champions) else []
        state.population = champions + chosen


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

    def offspring(self, state: SearchState, count: int, pending: Collection[str] = ()) -> list[Proposal]:
        """Half mask children (with the best collaborator pattern), half pattern children
        (with a collaborator mask from the mask front); new where possible, as in
        :meth:`Nsga2Strategy.offspring`."""
        rng, rates = state.rng, self.config.search.rates
        credit = self._pattern_credit(state)
        patterns = sorted(state.activation_population, key=lambda p: -credit.get(repr(p), 0.0))
        ids = state.population
        ranks = nondominated_ranks(self._objectives(state, ids))
        front_ids = [c.id for c in state.front(ids)] or ids
        n_masks = math.ceil(count / 2) if self._can_mutate_activations() else count
        out: list[Proposal] = []
        taken = set(state.archive) | set(pending)
        for i in range(count):
            for attempt in range(MAX_REDRAWS):
                if i < n_masks:
                    first = self._tournament(ids, ranks, rng)
                    genome, parents, ops = state.archive[first].genome, (first,), []
                    if not self._guided(state, first) and rng.random() < rates.crossover:
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
