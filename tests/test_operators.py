"""Property tests of certevo.population.operators: invariants every variation operator keeps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certevo.population.errors import ConfigError, GenomeError
from certevo.population.genome import Genome, dense_genome
from certevo.population.operators import (
    crossover_layerwise,
    crossover_uniform,
    mutate_activation,
    mutate_density,
    prune_regrow,
)

FAST = settings(max_examples=60, deadline=None)
ALLOWED = ("relu", "tanh", "linear")


# --------------------------------------------------------------------------- strategies


@st.composite
def architectures(draw):
    """Layer shapes (MLP-like chain, optionally a conv first layer) and hidden count."""
    n_layers = draw(st.integers(1, 3))
    sizes = [draw(st.integers(1, 9)) for _ in range(n_layers + 1)]
    shapes = {f"fc{i}": (sizes[i + 1], sizes[i]) for i in range(n_layers)}
    if draw(st.booleans()):
        shapes = {"conv0": (sizes[0], draw(st.integers(1, 3)), 2, 2), **shapes}
    return shapes


@st.composite
def genomes(draw, shapes=None):
    shapes = shapes if shapes is not None else draw(architectures())
    n_hidden = len(shapes) - 1
    activations = [draw(st.sampled_from(ALLOWED)) for _ in range(n_hidden)]
    masks = {}
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        bits = draw(st.lists(st.booleans(), min_size=size, max_size=size))
        flat = np.array(bits, dtype=bool)
        if not flat.any():
            flat[draw(st.integers(0, size - 1))] = True
        masks[name] = flat.reshape(shape)
    neuron = None
    if n_hidden and draw(st.booleans()):
        neuron = tuple(
            tuple(draw(st.sampled_from(ALLOWED)) for _ in range(shapes[name][0])) if draw(st.booleans()) else None
            for name in list(shapes)[:n_hidden]
        )
    return Genome(masks=masks, activations=tuple(activations), neuron_activations=neuron)


@st.composite
def genome_pairs(draw):
    shapes = draw(architectures())
    return draw(genomes(shapes)), draw(genomes(shapes))


seeds = st.integers(0, 2**32 - 1)


def kept(genome: Genome) -> dict[str, int]:
    return {name: int(m.sum()) for name, m in genome.masks.items()}


def assert_meets_target(genome: Genome, sparsity: float) -> None:
    """At least ``sparsity`` sparse, and one more kept weight would fall below it (unless
    one weight per layer is all that is left)."""
    total, kept_all, layers = genome.total_weights, genome.kept_weights, len(genome.masks)
    assert kept_all == layers or genome.sparsity >= sparsity
    assert kept_all == layers or 1 - (kept_all + 1) / total < sparsity


def uniform_share(genome: Genome, sparsity: float) -> dict[str, float]:
    """Each layer's share, in proportion to its size, of the genome's kept weights."""
    return {name: genome.kept_weights * m.size / genome.total_weights for name, m in genome.masks.items()}


def check_structure(child: Genome, parent: Genome) -> None:
    """Binary masks, same layers and shapes, no empty layer."""
    assert list(child.masks) == list(parent.masks)
    for name, mask in child.masks.items():
        assert mask.dtype == np.bool_
        assert mask.shape == parent.masks[name].shape
    assert child.empty_layers() == []
    assert len(child.activations) == len(parent.activations)


def activation_values(genome: Genome) -> set[str]:
    return set(genome.all_activation_names())


# --------------------------------------------------------------------------- prune_regrow


@FAST
@given(genomes(), seeds, st.floats(0.0, 1.0), st.sampled_from(["random", "magnitude", "gradient"]),
       st.sampled_from(["random", "gradient"]))
def test_prune_regrow_keeps_exact_kept_count(genome, seed, fraction, drop, grow):
    rng = np.random.default_rng(seed)
    scores = {name: rng.normal(size=m.shape) for name, m in genome.masks.items()}
    child = prune_regrow(genome, np.random.default_rng(seed), fraction, drop, grow, scores, scores)
    check_structure(child, genome)
    assert kept(child) == kept(genome)
    assert child.activation_pattern() == genome.activation_pattern()
    for name, mask in genome.masks.items():
        moved = int((mask & ~child.masks[name]).sum())
        expected = min(round(fraction * int(mask.sum())), mask.size - int(mask.sum()))
        assert moved == expected  # drops only kept, grows only previously pruned


@FAST
@given(genomes(), seeds)
def test_prune_regrow_is_deterministic(genome, seed):
    one = prune_regrow(genome, np.random.default_rng(seed), 0.5)
    two = prune_regrow(genome, np.random.default_rng(seed), 0.5)
    assert one.id == two.id


def test_prune_regrow_magnitude_drops_smallest_and_gradient_grows_largest():
    mask = np.array([[1, 1, 1, 1, 0, 0, 0, 0]], dtype=bool)
    genome = Genome(masks={"fc0": mask}, activations=())
    magnitudes = {"fc0": np.array([[0.9, -0.01, 0.5, 0.7, 0, 0, 0, 0]])}
    gradients = {"fc0": np.array([[0, 0, 0, 0, 0.1, -3.0, 0.2, 0.0]])}
    child = prune_regrow(genome, np.random.default_rng(0), 0.25, "magnitude", "gradient", magnitudes, gradients)
    assert child.masks["fc0"].tolist() == [[True, False, True, True, False, True, False, False]]


def test_prune_regrow_without_scores_names_the_fix():
    genome = dense_genome({"fc0": (3, 3)}, [])
    with pytest.raises(GenomeError, match="magnitudes.*RigL"):
        prune_regrow(genome, np.random.default_rng(0), drop="magnitude")
    with pytest.raises(GenomeError, match="gradients"):
        prune_regrow(genome, np.random.default_rng(0), grow="gradient")
    with pytest.raises(GenomeError, match="shape"):
        prune_regrow(genome, np.random.default_rng(0), drop="magnitude", magnitudes={"fc0": np.ones((2, 2))})
    with pytest.raises(ConfigError, match="fraction"):
        prune_regrow(genome, np.random.default_rng(0), fraction=1.5)


# --------------------------------------------------------------------------- mutate_density


@FAST
@given(genomes(), seeds, st.floats(0.01, 0.5))
def test_mutate_density_changes_one_layer_within_bounds(genome, seed, step):
    child = mutate_density(genome, np.random.default_rng(seed), step, min_sparsity=0.0, max_sparsity=0.9)
    check_structure(child, genome)
    changed = [name for name in genome.masks if kept(child)[name] != kept(genome)[name]]
    assert len(changed) <= 1
    for name in changed:
        size, before = genome.masks[name].size, kept(genome)[name]
        delta = max(1, round(step * size))
        low = max(1, int(np.ceil(size * 0.1 - 1e-9)))
        assert kept(child)[name] in {int(np.clip(before - delta, low, size)), int(np.clip(before + delta, low, size))}
        assert low <= kept(child)[name] <= size
    assert mutate_density(genome, np.random.default_rng(seed), step, 0.0, 0.9).id == child.id


def test_mutate_density_never_empties_a_layer():
    genome = Genome(masks={"fc0": np.eye(1, 4, dtype=bool)}, activations=())
    for seed in range(20):
        child = mutate_density(genome, np.random.default_rng(seed), step=0.5, max_sparsity=0.99)
        assert int(child.masks["fc0"].sum()) in (1, 3)


def test_mutate_density_rejects_bad_bounds():
    genome = dense_genome({"fc0": (2, 2)}, [])
    with pytest.raises(ConfigError, match="min_sparsity"):
        mutate_density(genome, np.random.default_rng(0), min_sparsity=0.5, max_sparsity=0.2)


# --------------------------------------------------------------------------- crossover


@FAST
@given(genome_pairs(), seeds)
def test_crossover_layerwise_repairs_to_parent_a_counts(pair, seed):
    a, b = pair
    child = crossover_layerwise(a, b, np.random.default_rng(seed))
    check_structure(child, a)
    assert kept(child) == kept(a)
    for i, pattern in enumerate(child.activation_pattern()):
        assert pattern in (a.activation_pattern()[i], b.activation_pattern()[i])
    assert activation_values(child) <= activation_values(a) | activation_values(b)
    assert crossover_layerwise(a, b, np.random.default_rng(seed)).id == child.id


@FAST
@given(genome_pairs(), seeds, st.one_of(st.none(), st.floats(0.0, 0.99)))
def test_crossover_uniform_repairs_to_target(pair, seed, target_sparsity):
    a, b = pair
    child = crossover_uniform(a, b, np.random.default_rng(seed), target_sparsity)
    check_structure(child, a)
    for name, mask in child.masks.items():
        size = mask.size
        if target_sparsity is None:
            expected = max(1, round((kept(a)[name] + kept(b)[name]) / 2))
            assert int(mask.sum()) == expected
        else:  # the layer's uniform share of the most weights that meet the target
            assert abs(int(mask.sum()) - uniform_share(child, target_sparsity)[name]) < 1 or int(mask.sum()) == 1
        agree = a.masks[name] == b.masks[name]
        if int(mask.sum()) == kept(a)[name] == kept(b)[name] and agree.all():
            assert (mask == a.masks[name]).all()
    if target_sparsity is not None:
        assert_meets_target(child, target_sparsity)
    assert activation_values(child) <= activation_values(a) | activation_values(b)
    assert crossover_uniform(a, b, np.random.default_rng(seed), target_sparsity).id == child.id


def test_crossover_rejects_parents_of_different_templates():
    a = dense_genome({"fc0": (2, 3)}, [])
    b = dense_genome({"fc0": (3, 3)}, [])
    with pytest.raises(GenomeError, match="same model template"):
        crossover_uniform(a, b, np.random.default_rng(0))


# --------------------------------------------------------------------------- activations


@FAST
@given(genomes(), seeds, st.booleans(), st.floats(0.01, 1.0))
def test_mutate_activation_stays_within_allowed(genome, seed, per_neuron, rate):
    if not genome.activations:
        with pytest.raises(GenomeError, match="hidden layer"):
            mutate_activation(genome, np.random.default_rng(seed), ALLOWED)
        return
    child = mutate_activation(genome, np.random.default_rng(seed), ALLOWED, per_neuron, rate)
    check_structure(child, genome)
    assert all((child.masks[n] == genome.masks[n]).all() for n in genome.masks)
    assert activation_values(child) <= set(ALLOWED)
    assert child.id != genome.id  # something always changes
    before, after = genome.activation_pattern(), child.activation_pattern()
    assert sum(x != y for x, y in zip(before, after)) == 1  # exactly one layer touched
    assert mutate_activation(genome, np.random.default_rng(seed), ALLOWED, per_neuron, rate).id == child.id


def test_mutate_activation_per_neuron_creates_neuron_genes():
    genome = dense_genome({"fc0": (10, 4), "fc1": (2, 10)}, ["relu"])
    child = mutate_activation(genome, np.random.default_rng(1), ["relu", "tanh"], per_neuron=True, rate=0.3)
    genes = child.neuron_activations[0]
    assert len(genes) == 10 and genes.count("tanh") == 3 and child.activations == ("relu",)


def test_mutate_activation_needs_two_allowed():
    genome = dense_genome({"fc0": (2, 2), "fc1": (1, 2)}, ["relu"])
    with pytest.raises(ConfigError, match="at least two"):
        mutate_activation(genome, np.random.default_rng(0), ["relu"])
    with pytest.raises(ConfigError, match="unknown"):
        mutate_activation(genome, np.random.default_rng(0), ["relu", "swish"])
