"""Guided (Lamarckian) variation: masks learned from a parent's trained weights keep exact
per-layer counts, prune the smallest magnitudes and grow the largest gradients."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certevo.population.allocation import layer_kept_counts
from certevo.population.errors import GenomeError
from certevo.population.genome import Genome, dense_genome, random_genome
from certevo.population.guided_operators import kept_counts, magnitude_prune, reallocate, regrow, remask, sparsify

FAST = settings(max_examples=40, deadline=None)
SHAPES = {"fc0": (12, 20), "fc1": (8, 12), "fc2": (3, 8)}


def trained(genome: Genome, seed: int) -> tuple[dict, dict]:
    """Distinct magnitudes (zero where pruned, like trained masked weights) and dense gradients."""
    rng = np.random.default_rng(seed)
    values = rng.permutation(genome.total_weights).astype(float) + 1.0  # distinct over all layers
    magnitudes, gradients, start = {}, {}, 0
    for name, mask in genome.masks.items():
        layer = values[start : start + mask.size].reshape(mask.shape)
        start += mask.size
        magnitudes[name] = np.where(mask, layer * rng.choice([-1, 1], size=mask.shape), 0.0)
        gradients[name] = rng.permutation(mask.size).reshape(mask.shape).astype(float)
    return magnitudes, gradients


def parent_at(sparsity: float, seed: int) -> Genome:
    return random_genome(SHAPES, ("relu", "tanh"), sparsity, np.random.default_rng(seed), "erk")


def dropped_were_smallest(parent: Genome, child: Genome, magnitudes: dict) -> None:
    """In every layer, each weight the child keeps of the parent's is at least as large as
    every parent weight it dropped."""
    for name, mask in parent.masks.items():
        kept = np.abs(magnitudes[name][mask & child.masks[name]])
        dropped = np.abs(magnitudes[name][mask & ~child.masks[name]])
        if kept.size and dropped.size:
            assert kept.min() > dropped.max(), name


def grown_were_largest(parent: Genome, child: Genome, gradients: dict) -> None:
    for name, mask in parent.masks.items():
        grown = gradients[name][~mask & child.masks[name]]
        passed = gradients[name][~mask & ~child.masks[name]]
        if grown.size and passed.size:
            assert grown.min() > passed.max(), name


@FAST
@given(sparsity=st.floats(0.3, 0.9), seed=st.integers(0, 10_000))
def test_sparsify_prunes_the_smallest_kept_weights_to_an_exact_count(sparsity, seed):
    parent = parent_at(sparsity, seed)
    magnitudes, _ = trained(parent, seed)
    child, op = sparsify(parent, np.random.default_rng(seed), magnitudes, fraction=(0.2, 0.4))
    before, after = kept_counts(parent), kept_counts(child)
    assert all(1 <= after[n] <= before[n] for n in before)
    slack = (len(before) + 1) / sum(before.values())  # per-layer rounding and the one-weight floor
    removed = 1 - sum(after.values()) / sum(before.values())
    assert 0.2 - slack <= removed <= 0.4 + slack
    assert all((child.masks[n] <= parent.masks[n]).all() for n in before)  # only kept weights stay
    if op == "sparsify_global":  # one threshold over all layers, apart from the one-weight floor
        kept = np.concatenate([np.abs(magnitudes[n][child.masks[n]]) for n in before])
        gone = np.concatenate([np.abs(magnitudes[n][parent.masks[n] & ~child.masks[n]]) for n in before])
        assert (kept > gone.max()).sum() >= kept.size - len(before)
    else:
        dropped_were_smallest(parent, child, magnitudes)
        scale = sum(after.values()) / sum(before.values())
        assert all(abs(after[n] - before[n] * scale) <= 1 + 1e-9 for n in before)
    assert child.activations == parent.activations


def test_sparsify_respects_the_largest_sparsity():
    parent = parent_at(0.98, 1)
    magnitudes, _ = trained(parent, 1)
    for seed in range(20):
        child, _ = sparsify(parent, np.random.default_rng(seed), magnitudes, fraction=(0.4, 0.45), max_sparsity=0.985)
        assert child.sparsity <= 0.985 + 1e-12


@FAST
@given(sparsity=st.floats(0.3, 0.95), seed=st.integers(0, 10_000))
def test_reallocate_moves_weights_between_two_layers_at_equal_global_count(sparsity, seed):
    parent = parent_at(sparsity, seed)
    magnitudes, gradients = trained(parent, seed)
    child = reallocate(parent, np.random.default_rng(seed), magnitudes, gradients)
    if child is None:
        return
    before, after = kept_counts(parent), kept_counts(child)
    assert sum(after.values()) == sum(before.values())
    changed = [n for n in before if after[n] != before[n]]
    assert len(changed) == 2 and sorted(after[n] - before[n] for n in changed)[0] == -sorted(
        after[n] - before[n] for n in changed)[1]
    dropped_were_smallest(parent, child, magnitudes)
    grown_were_largest(parent, child, gradients)


@FAST
@given(sparsity=st.floats(0.3, 0.95), seed=st.integers(0, 10_000), fraction=st.floats(0.05, 0.5))
def test_regrow_swaps_smallest_weights_for_largest_gradients_keeping_every_count(sparsity, seed, fraction):
    parent = parent_at(sparsity, seed)
    magnitudes, gradients = trained(parent, seed)
    child = regrow(parent, np.random.default_rng(seed), magnitudes, gradients, fraction=fraction)
    assert kept_counts(child) == kept_counts(parent)
    dropped_were_smallest(parent, child, magnitudes)
    grown_were_largest(parent, child, gradients)
    for name, mask in parent.masks.items():
        swapped = int((mask & ~child.masks[name]).sum())
        assert swapped == min(round(fraction * mask.sum()), (~mask).sum(), mask.sum() - 1)


@pytest.mark.parametrize("allocation", ["erk", "uniform"])
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_magnitude_prune_of_a_dense_parent_matches_the_allocation_exactly(allocation, sparsity):
    parent = dense_genome(SHAPES, ("relu", "relu"))
    magnitudes, _ = trained(parent, 3)
    child = magnitude_prune(parent, sparsity, allocation, np.random.default_rng(0), magnitudes)
    assert kept_counts(child) == layer_kept_counts(SHAPES, sparsity, allocation)
    dropped_were_smallest(parent, child, magnitudes)


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_global_magnitude_prune_keeps_the_largest_weights_over_all_layers(sparsity):
    parent = dense_genome(SHAPES, ("relu", "relu"))
    magnitudes, _ = trained(parent, 4)
    child = magnitude_prune(parent, sparsity, "global", np.random.default_rng(0), magnitudes)
    total = parent.total_weights
    assert child.kept_weights == total - round(sparsity * total)
    kept = np.concatenate([np.abs(magnitudes[n][child.masks[n]]) for n in SHAPES])
    gone = np.concatenate([np.abs(magnitudes[n][~child.masks[n]]) for n in SHAPES])
    # Every layer keeps at least one weight; apart from those, the threshold is global.
    assert (kept > gone.max()).sum() >= kept.size - len(SHAPES)


def test_magnitude_prune_of_a_sparse_parent_only_keeps_kept_weights():
    parent = parent_at(0.6, 5)
    magnitudes, _ = trained(parent, 5)
    for allocation in ("erk", "global", "uniform"):
        child = magnitude_prune(parent, 0.9, allocation, np.random.default_rng(0), magnitudes)
        assert child.kept_weights == parent.total_weights - round(0.9 * parent.total_weights)
        assert all((child.masks[n] <= parent.masks[n]).all() for n in SHAPES)


def test_guided_operators_are_deterministic_in_the_generator():
    parent = parent_at(0.8, 9)
    magnitudes, gradients = trained(parent, 9)
    for make in (
        lambda rng: sparsify(parent, rng, magnitudes)[0],
        lambda rng: reallocate(parent, rng, magnitudes, gradients),
        lambda rng: regrow(parent, rng, magnitudes, gradients),
        lambda rng: remask(parent, {"fc0": 5, "fc1": 30, "fc2": 2}, rng, magnitudes, None),
    ):
        assert make(np.random.default_rng(7)).id == make(np.random.default_rng(7)).id


def test_remask_grows_at_random_without_gradients_and_names_missing_scores():
    parent = parent_at(0.9, 2)
    magnitudes, _ = trained(parent, 2)
    counts = {n: min(m.size, int(m.sum()) + 2) for n, m in parent.masks.items()}
    child = remask(parent, counts, np.random.default_rng(0), magnitudes)
    assert kept_counts(child) == counts
    with pytest.raises(GenomeError, match="magnitudes.*fc0"):
        remask(parent, {n: 1 for n in SHAPES}, np.random.default_rng(0), {})
    with pytest.raises(GenomeError, match="cannot keep 0"):
        remask(parent, {**kept_counts(parent), "fc1": 0}, np.random.default_rng(0), magnitudes)
