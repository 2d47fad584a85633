"""How a global sparsity is split across layers.

A target sparsity is met exactly: a genome built for sparsity ``s`` keeps the most weights
it can while ``1 - kept / total >= s`` (as :attr:`certevo.population.genome.Genome.sparsity`
measures it), so it is never below the target and never more than one weight above it
(unless keeping one weight per layer already prunes less; every layer keeps at least one).

``uniform``: every layer is pruned to the same sparsity, to within one weight (the global
kept count is split in proportion to layer size, the remainder by largest fractional part).
``erk`` (Erdős–Rényi-Kernel, as in RigL, Evci et al. 2020): a layer's density is
proportional to ``sum(shape) / prod(shape)``, so small layers (the output layer, a first
convolution) stay denser and large ones carry most of the pruning; layers the formula
would make denser than 1 are kept dense and the rest rescaled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from certevo.population.errors import GenomeError

ALLOCATIONS: tuple[str, ...] = ("uniform", "erk")


def kept_for_sparsity(total: int, sparsity: float, layers: int = 1) -> int:
    """The most of ``total`` weights a genome may keep and still be at least ``sparsity``
    sparse, measured as ``1 - kept / total``; never fewer than ``layers`` (one per layer)."""
    kept = total - math.ceil(sparsity * total)
    # sparsity * total is rounded in floating point: step to the exact boundary of the
    # measured value, so a sparsity shown as >= s is >= s.
    while kept > 0 and 1.0 - kept / total < sparsity:
        kept -= 1
    while kept < total and 1.0 - (kept + 1) / total >= sparsity:
        kept += 1
    return min(total, max(kept, layers))


def uniform_kept(size: int, sparsity: float) -> int:
    """Kept count of a single layer of ``size`` weights pruned to ``sparsity``."""
    return kept_for_sparsity(size, sparsity)


def _check(sparsity: float, allocation: str) -> None:
    if allocation not in ALLOCATIONS:
        raise GenomeError(f"allocation must be one of {', '.join(ALLOCATIONS)}; got {allocation!r}; e.g. 'erk'")
    if not 0.0 <= sparsity < 1.0:
        raise GenomeError(f"sparsity must be in [0, 1); got {sparsity}; e.g. 0.9 prunes 90 % of weights")


def layer_kept_counts(
    layer_shapes: Mapping[str, Sequence[int]], sparsity: float, allocation: str = "uniform"
) -> dict[str, int]:
    """Weights to keep per layer for a genome of global ``sparsity`` under ``allocation``:
    in all, the most that still meets ``sparsity`` (see :func:`kept_for_sparsity`)."""
    _check(sparsity, allocation)
    total = sum(math.prod(shape) for shape in layer_shapes.values())
    return allocate_kept(layer_shapes, kept_for_sparsity(total, sparsity, len(layer_shapes)), allocation)


def allocate_kept(layer_shapes: Mapping[str, Sequence[int]], kept: int, allocation: str = "uniform") -> dict[str, int]:
    """Split exactly ``kept`` weights (one per layer to all of them) across the layers
    under ``allocation``."""
    _check(0.0, allocation)
    sizes = {name: math.prod(shape) for name, shape in layer_shapes.items()}
    total = sum(sizes.values())
    if not len(sizes) <= kept <= total:
        raise GenomeError(f"cannot keep {kept} of {total} weights in {len(sizes)} layers; keep {len(sizes)} to {total}")
    if allocation == "uniform":
        exact = {n: kept * size / total for n, size in sizes.items()}
    else:
        exact = _erk_exact(layer_shapes, sizes, kept)
    return _round_to_total(exact, sizes, kept)


def _erk_exact(layer_shapes: Mapping[str, Sequence[int]], sizes: dict[str, int], target: int) -> dict[str, float]:
    raw = {name: sum(layer_shapes[name]) / size for name, size in sizes.items()}
    dense: set[str] = set()
    while True:
        rest = [n for n in sizes if n not in dense]
        budget = target - sum(sizes[n] for n in dense)
        scale = budget / sum(raw[n] * sizes[n] for n in rest) if rest else 0.0
        saturated = [n for n in rest if raw[n] * scale >= 1.0]
        if not saturated:
            break
        dense.update(saturated)
    return {n: float(sizes[n]) if n in dense else raw[n] * scale * sizes[n] for n in sizes}


def _round_to_total(exact: dict[str, float], sizes: dict[str, int], target: int) -> dict[str, int]:
    """Integer counts near ``exact`` (each in [1, size]) summing to ``target``."""
    counts = {n: min(sizes[n], max(1, math.floor(v))) for n, v in exact.items()}
    # Hand out the rounding remainder to the layers furthest below their exact share, i.e.
    # by largest fractional part where the one-per-layer floor did not apply (ties: layer order).
    order = sorted(sizes, key=lambda n: -(exact[n] - counts[n]))
    while sum(counts.values()) < target:
        for n in order:
            if counts[n] < sizes[n] and sum(counts.values()) < target:
                counts[n] += 1
    while sum(counts.values()) > target:  # the one-per-layer floor added weights: take them back
        n = max((n for n in counts if counts[n] > 1), key=lambda n: counts[n] - exact[n])
        counts[n] -= 1
    return counts


__all__ = ["ALLOCATIONS", "allocate_kept", "kept_for_sparsity", "layer_kept_counts", "uniform_kept"]
