"""Variation guided by a parent's trained weights (Lamarckian search).

A child made here starts from its parent's trained weights, so the mask change must keep
what the parent learned: pruning removes the kept weights of smallest magnitude (the ones
the trained network relies on least), growing adds the pruned positions whose loss
gradient, measured on the parent with every weight present, is largest (RigL, Evci et al.
2020); a grown weight starts at zero, so the child computes exactly what its parent
computed minus what was pruned.

``magnitudes`` and ``gradients`` map each layer name to a weight-shaped array (the trained
weights, and the absolute dense gradient). Every operator keeps masks boolean, layer names
and shapes unchanged, leaves at least one kept weight per layer, and sets exactly the kept
count per layer that its docstring gives. Ties between equal scores are broken at random,
through one ``rng.permutation`` of the positions concerned. Each docstring lists its draws
in order, so the same generator state always gives the same child.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from certevo.population.allocation import allocate_kept, kept_for_sparsity
from certevo.population.errors import GenomeError
from certevo.population.genome import Genome

#: How a target sparsity is split across layers when pruning by magnitude: ``erk`` and
#: ``uniform`` as in certevo.population.allocation, ``global`` by one magnitude threshold over
#: every layer (layers whose weights are small lose most).
PRUNE_ALLOCATIONS: tuple[str, ...] = ("erk", "uniform", "global")

__all__ = [
    "PRUNE_ALLOCATIONS",
    "kept_counts",
    "magnitude_prune",
    "reallocate",
    "regrow",
    "remask",
    "sparsify",
]


def kept_counts(genome: Genome) -> dict[str, int]:
    """Kept weights per layer."""
    return {name: int(mask.sum()) for name, mask in genome.masks.items()}


def _scores(scores: Mapping[str, np.ndarray] | None, name: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    if scores is None or name not in scores:
        have = "None" if scores is None else sorted(scores)
        raise GenomeError(
            f"guided variation needs `{what}` for layer {name!r} (a weight-shaped array per layer); got {have}; "
            "pass the parent's trained weights and dense gradients (the search keeps them when "
            "search.weight_inheritance is true)"
        )
    array = np.abs(np.asarray(scores[name], dtype=np.float64))
    if array.shape != tuple(shape):
        raise GenomeError(f"`{what}[{name!r}]` has shape {list(array.shape)}, the layer's mask {list(shape)}")
    if not np.isfinite(array).all():
        raise GenomeError(f"`{what}[{name!r}]` holds NaN or infinite values; the parent's training diverged")
    return array.reshape(-1)


def _top(positions: np.ndarray, scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """The ``k`` positions of highest score (ties at random: one ``rng.permutation``)."""
    shuffled = positions[rng.permutation(positions.size)]
    return shuffled[np.argsort(-scores[shuffled], kind="stable")[:k]]


def remask(
    genome: Genome,
    counts: Mapping[str, int],
    rng: np.random.Generator,
    magnitudes: Mapping[str, np.ndarray],
    gradients: Mapping[str, np.ndarray] | None = None,
    activations: Sequence[str] | None = None,
) -> Genome:
    """``genome`` with exactly ``counts[layer]`` kept weights per layer: a layer that must
    shrink keeps its largest-magnitude weights, one that must grow adds the pruned
    positions of largest gradient (random ones when ``gradients`` is None).

    Draws, per layer in order, only when its count changes: one ``rng.permutation`` of its
    kept positions (shrinking) or of its pruned positions (growing, by gradient), or one
    ``rng.choice`` of pruned positions (growing at random)."""
    masks = {}
    for name, mask in genome.masks.items():
        flat = mask.reshape(-1).copy()
        target, kept = int(counts[name]), int(flat.sum())
        if not 1 <= target <= flat.size:
            raise GenomeError(f"layer {name!r} cannot keep {target} of its {flat.size} weights; keep 1 to {flat.size}")
        if target < kept:
            positions = np.flatnonzero(flat)
            weights = _scores(magnitudes, name, mask.shape, "magnitudes")
            flat[:] = False
            flat[_top(positions, weights, target, rng)] = True
        elif target > kept:
            positions = np.flatnonzero(~flat)
            if gradients is None:
                flat[rng.choice(positions, size=target - kept, replace=False)] = True
            else:
                flat[_top(positions, _scores(gradients, name, mask.shape, "gradients"), target - kept, rng)] = True
        masks[name] = flat.reshape(mask.shape)
    acts = tuple(activations) if activations is not None else genome.activations
    neuron = genome.neuron_activations if activations is None else None
    return Genome(masks, acts, neuron)


def _fraction(rng: np.random.Generator, low: float, high: float) -> float:
    """Log-uniform in [low, high]: one ``rng.uniform``."""
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def sparsify(
    genome: Genome,
    rng: np.random.Generator,
    magnitudes: Mapping[str, np.ndarray],
    *,
    fraction: tuple[float, float] = (0.15, 0.45),
    max_sparsity: float = 0.995,
) -> tuple[Genome, str]:
    """Prune a share ``f`` (log-uniform in ``fraction``) of the kept weights, smallest
    magnitude first, either in proportion (every layer loses ``f`` of its kept weights:
    the parent's allocation is kept) or globally (one magnitude threshold over all kept
    weights: layers of small weights lose most, so the allocation shifts). The global
    kept count never falls below ``(1 - max_sparsity)`` of all weights.

    Draws, in order: one ``rng.random`` (< 0.5: proportional), one ``rng.uniform`` (the
    share), then :func:`remask`'s. Returns the child and ``"sparsify_proportional"`` or
    ``"sparsify_global"``."""
    proportional = bool(rng.random() < 0.5)
    share = _fraction(rng, *fraction)
    counts = kept_counts(genome)
    total = sum(m.size for m in genome.masks.values())
    keep = max(int(math.ceil((1.0 - max_sparsity) * total)), len(counts), int(round(sum(counts.values()) * (1 - share))))
    keep = min(keep, sum(counts.values()))
    if proportional:
        scale = keep / sum(counts.values())
        new = {name: max(1, int(round(kept * scale))) for name, kept in counts.items()}
    else:
        new = _global_counts(genome, magnitudes, keep)
    return remask(genome, new, rng, magnitudes), "sparsify_proportional" if proportional else "sparsify_global"


def _global_counts(genome: Genome, magnitudes: Mapping[str, np.ndarray], keep: int) -> dict[str, int]:
    """Per-layer kept counts when the ``keep`` largest kept weights over all layers stay
    (at least one per layer); ties are counted in layer order."""
    names, values = [], []
    for name, mask in genome.masks.items():
        weights = _scores(magnitudes, name, mask.shape, "magnitudes")
        kept = weights[mask.reshape(-1)]
        names.extend([name] * kept.size)
        values.append(kept)
    order = np.argsort(-np.concatenate(values), kind="stable")[:keep]
    chosen = np.asarray(names)[order]
    counts = {name: max(1, int((chosen == name).sum())) for name in genome.masks}
    while sum(counts.values()) > keep:  # the at-least-one rule added weights: take them back
        largest = max(counts, key=lambda n: counts[n])
        counts[largest] -= 1
    return counts


def reallocate(
    genome: Genome,
    rng: np.random.Generator,
    magnitudes: Mapping[str, np.ndarray],
    gradients: Mapping[str, np.ndarray] | None,
    *,
    fraction: tuple[float, float] = (0.1, 0.4),
) -> Genome | None:
    """Move weights between two layers at the same global sparsity: layer A (uniform)
    loses a share (log-uniform in ``fraction``) of its kept weights, smallest magnitude
    first, and layer B (uniform among the others) grows as many, largest gradient first.
    Returns None when nothing can move (A keeps one weight, or B is dense).

    Draws, in order: one ``rng.choice`` of the two layers, one ``rng.uniform`` (the
    share), then :func:`remask`'s."""
    names = list(genome.masks)
    if len(names) < 2:
        return None
    a, b = (names[int(i)] for i in rng.choice(len(names), size=2, replace=False))
    share = _fraction(rng, *fraction)
    counts = kept_counts(genome)
    room = genome.masks[b].size - counts[b]
    moved = min(max(1, int(round(counts[a] * share))), counts[a] - 1, room)
    if moved <= 0:
        return None
    counts[a] -= moved
    counts[b] += moved
    return remask(genome, counts, rng, magnitudes, gradients)


def regrow(
    genome: Genome,
    rng: np.random.Generator,
    magnitudes: Mapping[str, np.ndarray],
    gradients: Mapping[str, np.ndarray] | None,
    *,
    fraction: float = 0.1,
) -> Genome:
    """In every layer, swap ``round(fraction * kept)`` kept weights of smallest magnitude
    for as many pruned positions of largest gradient (random ones without gradients):
    connectivity changes, every layer's kept count stays exactly the same.

    Draws, per layer in order, when it swaps anything: one ``rng.permutation`` of the kept
    positions, then one ``rng.permutation`` (by gradient) or ``rng.choice`` (random) of the
    pruned positions."""
    masks = {}
    for name, mask in genome.masks.items():
        flat = mask.reshape(-1).copy()
        kept, pruned = np.flatnonzero(flat), np.flatnonzero(~flat)
        k = min(int(round(fraction * kept.size)), pruned.size, kept.size - 1)
        if k > 0:
            weights = _scores(magnitudes, name, mask.shape, "magnitudes")
            dropped = _top(kept, -weights, k, rng)
            if gradients is None:
                grown = rng.choice(pruned, size=k, replace=False)
            else:
                grown = _top(pruned, _scores(gradients, name, mask.shape, "gradients"), k, rng)
            flat[dropped] = False
            flat[grown] = True
        masks[name] = flat.reshape(mask.shape)
    return Genome(masks, genome.activations, genome.neuron_activations)


def magnitude_prune(
    genome: Genome,
    sparsity: float,
    allocation: str,
    rng: np.random.Generator,
    magnitudes: Mapping[str, np.ndarray],
) -> Genome:
    """``genome`` pruned by magnitude to global ``sparsity``: it keeps the most weights
    that still meet it (see certevo.population.allocation.kept_for_sparsity; a genome already that
    sparse is returned unchanged). ``erk``/``uniform``: each layer gets its kept count from
    certevo.population.allocation and keeps its largest weights; ``global``: the largest kept
    weights over all layers stay. Only kept weights can stay: a layer allotted more than it
    keeps is capped, and the surplus goes to the other layers, largest weights first.

    Draws: :func:`remask`'s."""
    if allocation not in PRUNE_ALLOCATIONS:
        raise GenomeError(f"allocation must be one of {', '.join(PRUNE_ALLOCATIONS)}; got {allocation!r}")
    current = kept_counts(genome)
    total = sum(m.size for m in genome.masks.values())
    keep = min(sum(current.values()), kept_for_sparsity(total, sparsity, len(current)))
    if allocation == "global":
        return remask(genome, _global_counts(genome, magnitudes, keep), rng, magnitudes)
    shapes = {name: mask.shape for name, mask in genome.masks.items()}
    wanted = allocate_kept(shapes, keep, allocation)
    counts = {name: min(wanted[name], current[name]) for name in shapes}
    surplus = keep - sum(counts.values())
    if surplus > 0:  # layers capped by what they keep: the rest goes where the weights are largest
        spare = {name: current[name] - counts[name] for name in shapes}
        extra = _global_counts(genome, magnitudes, sum(counts.values()) + surplus)
        for name in shapes:
            add = min(spare[name], max(0, extra[name] - counts[name]), surplus)
            counts[name] += add
            surplus -= add
        for name in shapes:  # whatever is left, in layer order
            add = min(current[name] - counts[name], surplus)
            counts[name] += add
            surplus -= add
    return remask(genome, counts, rng, magnitudes)
