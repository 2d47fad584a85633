"""Variation operators on :class:`~certevo.population.genome.Genome`: prune-and-regrow, density
mutation, crossover and activation mutation.

Every operator is pure: it takes the parent genome(s) and a ``numpy.random.Generator``,
draws only from that generator, and returns a new genome (the parents are immutable).
The same generator state and arguments always give the same child, hence the same child
id. Each docstring lists the draws it makes, in order, so a change of draw order is a
visible change of behaviour.

Invariants kept by every operator: masks stay boolean, layer names, order and shapes are
unchanged, and no layer is ever left without a kept weight.

Hidden layer ``i`` (``genome.activations[i]``) is the output of the ``i``-th mask layer, as
in the evaluators' model templates, so its neuron count is ``masks[i].shape[0]`` (output
features, or output channels for a convolution).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from certevo.population.errors import ConfigError, GenomeError
from certevo.population.allocation import layer_kept_counts
from certevo.population.genome import KNOWN_ACTIVATIONS, Genome

DROP_CRITERIA: tuple[str, ...] = ("random", "magnitude", "gradient")
GROW_CRITERIA: tuple[str, ...] = ("random", "gradient")

__all__ = [
    "DROP_CRITERIA",
    "GROW_CRITERIA",
    "crossover_layerwise",
    "crossover_uniform",
    "mutate_activation",
    "mutate_density",
    "prune_regrow",
]


# --------------------------------------------------------------------------- helpers


def _flat_masks(genome: Genome) -> dict[str, np.ndarray]:
    """Writable flat copies of the genome's masks, in layer order."""
    return {name: mask.reshape(-1).copy() for name, mask in genome.masks.items()}


def _rebuild(
    genome: Genome,
    flat: Mapping[str, np.ndarray],
    activations: Sequence[str] | None = None,
    neuron_activations: Sequence[tuple[str, ...] | None] | None = None,
    *,
    keep_neuron: bool = True,
) -> Genome:
    """A genome with ``genome``'s shapes, the given flat masks and activation genes."""
    masks = {name: flat[name].reshape(genome.masks[name].shape) for name in genome.masks}
    if activations is None:
        activations = genome.activations
    if neuron_activations is None and keep_neuron:
        neuron_activations = genome.neuron_activations
    return Genome(
        masks=masks,
        activations=tuple(activations),
        neuron_activations=None if neuron_activations is None else tuple(neuron_activations),
    )


def _repair(flat: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Drop random kept or grow random pruned positions of ``flat`` (in place) until it
    keeps exactly ``target`` weights. Draws one ``rng.choice`` without replacement, only
    when a change is needed."""
    kept = int(flat.sum())
    if kept > target:
        flat[rng.choice(np.flatnonzero(flat), size=kept - target, replace=False)] = False
    elif kept < target:
        flat[rng.choice(np.flatnonzero(~flat), size=target - kept, replace=False)] = True
    return flat


def _extreme(
    candidates: np.ndarray, scores: np.ndarray, k: int, rng: np.random.Generator, *, lowest: bool
) -> np.ndarray:
    """The ``k`` candidates with the lowest (or highest) scores; ties broken at random
    through one ``rng.permutation`` of the candidates."""
    shuffled = candidates[rng.permutation(candidates.size)]
    values = scores[shuffled]
    order = np.argsort(values if lowest else -values, kind="stable")
    return shuffled[order[:k]]


def _layer_scores(
    scores: Mapping[str, np.ndarray] | None, name: str, shape: tuple[int, ...], what: str, why: str
) -> np.ndarray:
    if scores is None:
        raise GenomeError(
            f"prune_regrow with {why} needs `{what}` (a dict layer name -> array shaped like "
            f"the layer's weight); got None; pass the trained weights as magnitudes for "
            "SET-style magnitude pruning and the dense weight gradients as gradients for "
            'RigL-style regrowth, or use drop="random"/grow="random"'
        )
    if name not in scores:
        raise GenomeError(
            f"`{what}` has no entry for layer {name!r} (it has {sorted(scores)}); give one "
            "array per prunable layer of the genome"
        )
    array = np.abs(np.asarray(scores[name], dtype=np.float64))
    if array.shape != shape:
        raise GenomeError(
            f"`{what}[{name!r}]` has shape {list(array.shape)} but the layer's mask has "
            f"shape {list(shape)}; pass the full (dense) weight-shaped array"
        )
    if not np.isfinite(array).all():
        raise GenomeError(
            f"`{what}[{name!r}]` contains NaN or infinite values; the training run diverged "
            "or the array is wrong; use finite values or the random criterion"
        )
    return array.reshape(-1)


def _check_compatible(a: Genome, b: Genome) -> None:
    shapes_a = [(name, m.shape) for name, m in a.masks.items()]
    shapes_b = [(name, m.shape) for name, m in b.masks.items()]
    if shapes_a != shapes_b:
        raise GenomeError(
            f"crossover parents have different layers: {shapes_a} vs {shapes_b}; only "
            "cross genomes made from the same model template"
        )
    if len(a.activations) != len(b.activations):
        raise GenomeError(
            f"crossover parents have {len(a.activations)} and {len(b.activations)} hidden "
            "layers; only cross genomes made from the same model template"
        )


def _inherit_activations(
    a: Genome, b: Genome, from_a: np.ndarray
) -> tuple[list[str], list[tuple[str, ...] | None]]:
    """Activation genes per hidden layer from ``a`` where ``from_a`` else from ``b``
    (a layer's per-neuron choices travel with its layer choice)."""
    neuron_a = a.neuron_activations or (None,) * len(a.activations)
    neuron_b = b.neuron_activations or (None,) * len(b.activations)
    activations, neuron = [], []
    for i, take_a in enumerate(from_a):
        activations.append(a.activations[i] if take_a else b.activations[i])
        neuron.append(neuron_a[i] if take_a else neuron_b[i])
    return activations, neuron


def _check_probability(name: str, value: float, *, zero_ok: bool) -> float:
    value = float(value)
    low_ok = value >= 0.0 if zero_ok else value > 0.0
    if not (low_ok and value <= 1.0):
        interval = "[0, 1]" if zero_ok else "(0, 1]"
        raise ConfigError(f"{name} must be in {interval}; got {value}; e.g. 0.1")
    return value


# --------------------------------------------------------------------------- operators


def prune_regrow(
    genome: Genome,
    rng: np.random.Generator,
    fraction: float = 0.1,
    drop: str = "random",
    grow: str = "random",
    magnitudes: Mapping[str, np.ndarray] | None = None,
    gradients: Mapping[str, np.ndarray] | None = None,
) -> Genome:
    """Move ``fraction`` of each layer's kept weights to pruned positions (SET / RigL).

    Per layer, ``k = min(round(fraction * kept), pruned)`` kept weights are dropped and
    ``k`` positions that were pruned *before* the call are grown, so each layer's kept
    count is exactly unchanged (a dense layer is left alone).

    Drop criteria: ``"random"`` (uniform), ``"magnitude"`` (lowest ``|magnitudes[layer]|``
    among kept positions), ``"gradient"`` (lowest ``|gradients[layer]|``). Grow criteria:
    ``"random"`` (uniform) or ``"gradient"`` (highest ``|gradients[layer]|`` among pruned
    positions, RigL). ``magnitudes``/``gradients`` map layer names to weight-shaped arrays.

    Draws, per layer in order, only when ``k > 0``: for the drop, one ``rng.choice``
    (random) or one ``rng.permutation`` of the kept positions (score criteria, to break
    ties at random); then the same for the grow over the pruned positions.
    """
    fraction = _check_probability("prune_regrow fraction", fraction, zero_ok=True)
    if drop not in DROP_CRITERIA:
        raise ConfigError(f"prune_regrow drop must be one of {DROP_CRITERIA}; got {drop!r}")
    if grow not in GROW_CRITERIA:
        raise ConfigError(f"prune_regrow grow must be one of {GROW_CRITERIA}; got {grow!r}")
    flat = _flat_masks(genome)
    for name, mask in flat.items():
        shape = genome.masks[name].shape
        # Validate score arrays for every layer, even one left unchanged, so a wrong dict
        # fails at once rather than in some later generation.
        drop_scores = (
            _layer_scores(magnitudes, name, shape, "magnitudes", 'drop="magnitude"')
            if drop == "magnitude"
            else _layer_scores(gradients, name, shape, "gradients", 'drop="gradient"')
            if drop == "gradient"
            else None
        )
        grow_scores = (
            _layer_scores(gradients, name, shape, "gradients", 'grow="gradient"')
            if grow == "gradient"
            else None
        )
        kept_idx = np.flatnonzero(mask)
        pruned_idx = np.flatnonzero(~mask)
        k = min(int(round(fraction * kept_idx.size)), pruned_idx.size)
        if k == 0:
            continue
        if drop_scores is None:
            dropped = rng.choice(kept_idx, size=k, replace=False)
        else:
            dropped = _extreme(kept_idx, drop_scores, k, rng, lowest=True)
        if grow_scores is None:
            grown = rng.choice(pruned_idx, size=k, replace=False)
        else:
            grown = _extreme(pruned_idx, grow_scores, k, rng, lowest=False)
        mask[dropped] = False
        mask[grown] = True
    return _rebuild(genome, flat)


def mutate_density(
    genome: Genome,
    rng: np.random.Generator,
    step: float = 0.05,
    min_sparsity: float = 0.0,
    max_sparsity: float = 0.99,
) -> Genome:
    """Make one layer sparser or denser by ``step`` of its size.

    The layer's kept count moves by ``max(1, round(step * size))`` weights, then is clipped
    so the layer's sparsity stays in ``[min_sparsity, max_sparsity]`` and at least one
    weight stays kept (this wins over ``min_sparsity`` for a tiny layer). If the clipped
    count equals the current one, the child equals the parent (same id).

    Draws, in order: one ``rng.integers`` (the layer, uniform), one ``rng.random`` (< 0.5:
    sparser, else denser), then one ``rng.choice`` of the random kept positions to prune or
    pruned positions to grow, when the count changes.
    """
    step = _check_probability("mutate_density step", step, zero_ok=False)
    if not 0.0 <= min_sparsity <= max_sparsity < 1.0:
        raise ConfigError(
            f"mutate_density needs 0 <= min_sparsity <= max_sparsity < 1; got "
            f"min_sparsity={min_sparsity}, max_sparsity={max_sparsity}; e.g. 0.0 and 0.99"
        )
    flat = _flat_masks(genome)
    names = list(flat)
    name = names[int(rng.integers(len(names)))]
    sparser = bool(rng.random() < 0.5)
    mask = flat[name]
    size, kept = mask.size, int(mask.sum())
    delta = max(1, int(round(step * size)))
    low = max(1, int(np.ceil(size * (1.0 - max_sparsity) - 1e-9)))
    high = max(low, int(np.floor(size * (1.0 - min_sparsity) + 1e-9)))
    target = int(np.clip(kept - delta if sparser else kept + delta, low, high))
    _repair(mask, target, rng)
    return _rebuild(genome, flat)


def crossover_layerwise(a: Genome, b: Genome, rng: np.random.Generator) -> Genome:
    """Child whose layer masks and activations each come whole from ``a`` or ``b``.

    Each layer's mask is taken from ``a`` or ``b`` with probability 0.5, then repaired to
    the kept count of ``a``'s layer (so the child has ``a``'s per-layer sparsity and ``b``
    contributes topology). Each hidden layer's activation (with its per-neuron choices, if
    any) comes from ``a`` or ``b`` with probability 0.5, independently of the masks.

    Draws, in order: ``rng.random(n_layers)`` (mask source, < 0.5 means ``a``),
    ``rng.random(n_hidden)`` (activation source), then per layer taken from ``b`` whose
    kept count differs from ``a``'s, one ``rng.choice`` of random positions to drop/grow.
    """
    _check_compatible(a, b)
    flat_a, flat_b = _flat_masks(a), _flat_masks(b)
    mask_from_a = rng.random(len(flat_a)) < 0.5
    act_from_a = rng.random(len(a.activations)) < 0.5
    child = {}
    for take_a, name in zip(mask_from_a, flat_a):
        mask = flat_a[name] if take_a else flat_b[name]
        child[name] = _repair(mask, int(flat_a[name].sum()), rng)
    activations, neuron = _inherit_activations(a, b, act_from_a)
    return _rebuild(a, child, activations, neuron, keep_neuron=False)


def crossover_uniform(
    a: Genome, b: Genome, rng: np.random.Generator, target_sparsity: float | None = None
) -> Genome:
    """Child whose every mask entry comes from ``a`` or ``b`` with probability 0.5.

    Each layer is then repaired to its target kept count by dropping random kept or
    growing random pruned positions: ``round(mean(kept_a, kept_b))`` per layer, or, when
    ``target_sparsity`` is given, the layer's uniform share of the most weights that still
    meet it (certevo.population.allocation.layer_kept_counts). Each
    hidden layer's activation (with its per-neuron choices) comes from ``a`` or ``b`` with
    probability 0.5.

    Draws, in order: per layer ``rng.random(layer.size)`` (< 0.5 takes ``a``'s entry),
    then ``rng.random(n_hidden)`` (activation source), then per layer whose kept count
    differs from its target, one ``rng.choice`` of positions to drop/grow.
    """
    _check_compatible(a, b)
    if target_sparsity is not None and not 0.0 <= float(target_sparsity) < 1.0:
        raise ConfigError(
            f"crossover_uniform target_sparsity must be in [0, 1) or None; got "
            f"{target_sparsity}; e.g. 0.9 keeps 10 % of each layer"
        )
    flat_a, flat_b = _flat_masks(a), _flat_masks(b)
    targets = None if target_sparsity is None else \
        layer_kept_counts({n: m.shape for n, m in a.masks.items()}, float(target_sparsity), "uniform")
    choices = {name: rng.random(mask.size) < 0.5 for name, mask in flat_a.items()}
    act_from_a = rng.random(len(a.activations)) < 0.5
    child = {}
    for name, take_a in choices.items():
        mask = np.where(take_a, flat_a[name], flat_b[name])
        if target_sparsity is None:
            target = max(1, int(round((int(flat_a[name].sum()) + int(flat_b[name].sum())) / 2)))
        else:
            target = targets[name]
        child[name] = _repair(mask, target, rng)
    activations, neuron = _inherit_activations(a, b, act_from_a)
    return _rebuild(a, child, activations, neuron, keep_neuron=False)


def _allowed_activations(allowed: Sequence[str]) -> list[str]:
    if isinstance(allowed, str):
        raise ConfigError(
            f"mutate_activation allowed must be a sequence of activation names, got the "
            f"string {allowed!r}; e.g. ['relu', 'tanh']"
        )
    unique = list(dict.fromkeys(allowed))
    unknown = [name for name in unique if name not in KNOWN_ACTIVATIONS]
    if unknown:
        raise ConfigError(
            f"mutate_activation allowed has unknown activations {unknown}; use names from "
            f"{', '.join(KNOWN_ACTIVATIONS)}"
        )
    if len(unique) < 2:
        raise ConfigError(
            f"mutate_activation needs at least two allowed activations to change between; "
            f"got {unique}; e.g. ['relu', 'tanh', 'linear']"
        )
    return unique


def _different(current: str, allowed: list[str], rng: np.random.Generator) -> str:
    """One uniform ``rng.integers`` draw among ``allowed`` minus ``current``."""
    choices = [name for name in allowed if name != current]
    return choices[int(rng.integers(len(choices)))]


def mutate_activation(
    genome: Genome,
    rng: np.random.Generator,
    allowed: Sequence[str],
    per_neuron: bool = False,
    rate: float = 0.1,
) -> Genome:
    """Change activation genes of one hidden layer to other ``allowed`` activations.

    Layer mode (``per_neuron=False``): one hidden layer (uniform) gets a different allowed
    activation (uniform among ``allowed`` minus its current one); per-neuron choices that
    layer had are cleared, so the whole layer uses the new activation.

    Neuron mode (``per_neuron=True``): in one hidden layer (uniform),
    ``max(1, round(rate * neurons))`` distinct neurons (uniform) each get a different
    allowed activation (uniform among ``allowed`` minus its current one). A layer without
    per-neuron choices first gets one per neuron, equal to its layer activation.

    Values this operator writes are always in ``allowed``; genes it does not touch are
    kept as they are. Draws, in order: one ``rng.integers`` (layer); layer mode: one
    ``rng.integers`` (new activation); neuron mode: one ``rng.choice`` (the neurons, without
    replacement) then one ``rng.integers`` per chosen neuron, in increasing neuron order.
    """
    names = _allowed_activations(allowed)
    n_hidden = len(genome.activations)
    if n_hidden == 0:
        raise GenomeError(
            "mutate_activation needs a genome with at least one hidden layer; this genome "
            "has no activation genes; do not use this operator for such a template"
        )
    layer = int(rng.integers(n_hidden))
    activations = list(genome.activations)
    neuron = list(genome.neuron_activations or (None,) * n_hidden)
    if not per_neuron:
        activations[layer] = _different(activations[layer], names, rng)
        neuron[layer] = None
        return _rebuild(genome, _flat_masks(genome), activations, neuron, keep_neuron=False)

    rate = _check_probability("mutate_activation rate", rate, zero_ok=False)
    current = neuron[layer]
    if current is None:
        mask_shapes = [m.shape for m in genome.masks.values()]
        if layer >= len(mask_shapes):
            raise GenomeError(
                f"hidden layer {layer} has no matching mask layer (the genome has "
                f"{len(mask_shapes)} mask layers); hidden layer i must be the output of "
                "mask layer i, as in the model templates"
            )
        current = (activations[layer],) * int(mask_shapes[layer][0])
    genes = list(current)
    count = min(len(genes), max(1, int(round(rate * len(genes)))))
    for position in np.sort(rng.choice(len(genes), size=count, replace=False)):
        genes[int(position)] = _different(genes[int(position)], names, rng)
    neuron[layer] = tuple(genes)
    return _rebuild(genome, _flat_masks(genome), activations, neuron, keep_neuron=False)
