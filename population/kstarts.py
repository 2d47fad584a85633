"""K-starts initialisation (Haroon, arXiv 2209.02201): for each target sparsity, K random
p-sparse masks are trained briefly and the best-scoring ones seed the population."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from certevo.population.errors import ConfigError
from certevo.population.genome import Genome, random_genome


def kstart_candidates(
    layer_shapes: Mapping[str, Sequence[int]],
    sparsities: Sequence[float],
    k: int,
    rng: np.random.Generator,
    activations: Callable[[np.random.Generator], Sequence[str]],
    allocation: str = "uniform",
) -> list[tuple[float, Genome]]:
    """``k`` random genomes per target sparsity, as (sparsity, genome) in a fixed order.

    Draws, per sparsity in order and per start: ``activations(rng)`` (the activation
    genes), then the masks (see :func:`certevo.population.genome.random_genome`), split across
    layers by ``allocation`` (see :mod:`certevo.population.allocation`).
    """
    if k < 1:
        raise ConfigError(f"search.kstarts must be >= 1; got {k}; e.g. 2")
    out = []
    for sparsity in sparsities:
        for _ in range(k):
            genes = tuple(activations(rng))
            out.append((float(sparsity), random_genome(layer_shapes, genes, float(sparsity), rng, allocation)))
    return out


def kstart_winners(
    candidates: Sequence[tuple[float, Genome]],
    scores: Mapping[str, float],
    population_size: int,
) -> list[Genome]:
    """Per target sparsity, the ``ceil(population_size / #sparsities)`` best-scoring starts
    (higher score wins; ties keep the earlier start), in sparsity order, then the overall
    list cut to ``population_size`` by taking winners round-robin across sparsities."""
    groups: dict[float, list[tuple[int, Genome]]] = {}
    for index, (sparsity, genome) in enumerate(candidates):
        groups.setdefault(sparsity, []).append((index, genome))
    per_group = math.ceil(population_size / max(1, len(groups)))
    ranked = []
    for sparsity in groups:
        members = sorted(groups[sparsity], key=lambda item: (-_finite(scores.get(item[1].id)), item[0]))
        ranked.append([g for _, g in members[:per_group]])
    winners: list[Genome] = []
    seen: set[str] = set()
    for depth in range(per_group):
        for group in ranked:
            if depth < len(group) and group[depth].id not in seen and len(winners) < population_size:
                winners.append(group[depth])
                seen.add(group[depth].id)
    return winners


def _finite(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) else float("-inf")
