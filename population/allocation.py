"""How a global sparsity is split across layers.

``uniform``: every layer is pruned to the same sparsity.
``erk`` (Erdős–Rényi-Kernel, as in RigL, Evci et al. 2020): a layer's density is
proportional to ``sum(shape) / prod(shape)``, so small layers (the output layer, a first
convolution) stay denser and large ones carry most of the pruning; layers the formula
would make denser than 1 are kept dense and the rest rescaled. The total kept count equals
that of the global sparsity exactly; every layer keeps at least one weight.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from population.errors import GenomeError

ALLOCATIONS: tuple[str, ...] = ("uniform", "erk")


def uniform_kept(size: int, sparsity: float) -> int:
    """Kept count of a layer of ``size`` weights pruned to ``sparsity``."""
    return max(1, size - int(round(sparsity * size)))


def layer_kept_counts(
    layer_shapes: Mapping[str, Sequence[int]], sparsity: float, allocation: str = "uniform"
) -> dict[str, int]:
    """Weights to keep per layer for a genome of global ``sparsity`` under ``allocation``."""
    if allocation not in ALLOCATIONS:
        raise GenomeError(f"allocation must be one of {', '.join(ALLOCATIONS)}; got {allocation!r}; e.g. 'erk'")
    if not 0.0 <= sparsity < 1.0:
        raise GenomeError(f"sparsity must be in [0, 1); got {sparsity}; e.g. 0.9 prunes 90 % of weights")
    sizes = {name: math.prod(shape) for name, shape in layer_shapes.items()}
    if allocation == "uniform":
        return {name: uniform_kept(size, sparsity) for name, size in sizes.items()}
    return _erk_counts(layer_shapes, sizes, sparsity)


def _erk_counts(layer_shapes: Mapping[str, Sequence[int]], sizes: dict[str, int], sparsity: float) -> dict[str, int]:
    total = sum(sizes.values())
    target = total - int(round(sparsity * total))
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
    exact = {n: float(sizes[n]) if n in dense else raw[n] * scale * sizes[n] for n in sizes}
    counts = {n: min(sizes[n], max(1, math.floor(v))) for n, v in exact.items()}
    # Hand out the rounding remainder by largest fractional part (ties: layer order).
    order = sorted(sizes, key=lambda n: -(exact[n] - math.floor(exact[n])))
    i = 0
    while sum(counts.values()) < target and i < 10 * len(order):
        n = order[i % len(order)]
        if counts[n] < sizes[n]:
            counts[n] += 1
        i += 1
    while sum(counts.values()) > target:
        n = max((n for n in counts if counts[n] > 1), key=lambda n: counts[n] - exact[n])
        counts[n] -= 1
    return counts


__all__ = ["ALLOCATIONS", "layer_kept_counts", "uniform_kept"]
