"""Splitting a global sparsity across layers (uniform, ERK)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certevo.population.allocation import layer_kept_counts
from certevo.population.errors import GenomeError
from certevo.population.genome import random_genome

MLP = {"fc0": (64, 64), "fc1": (64, 64), "fc2": (10, 64)}
CNN = {"conv0": (8, 1, 4, 4), "conv1": (16, 8, 4, 4), "fc": (10, 400)}


@settings(max_examples=60, deadline=None)
@given(shapes=st.sampled_from([MLP, CNN]), sparsity=st.floats(0.0, 0.995))
def test_erk_keeps_exactly_the_global_count_and_at_least_one_per_layer(shapes, sparsity):
    counts = layer_kept_counts(shapes, sparsity, "erk")
    total = sum(math.prod(s) for s in shapes.values())
    kept = sum(counts.values())
    # the most weights that still meet the target: one more would fall below it
    assert kept == len(shapes) or (1 - kept / total >= sparsity and 1 - (kept + 1) / total < sparsity)
    assert all(1 <= counts[n] <= math.prod(shapes[n]) for n in shapes)


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_erk_keeps_the_small_output_layer_denser_than_the_large_ones(sparsity):
    counts = layer_kept_counts(MLP, sparsity, "erk")
    density = {n: counts[n] / math.prod(s) for n, s in MLP.items()}
    assert density["fc2"] > density["fc0"] and density["fc2"] > density["fc1"]
    assert abs(density["fc0"] - density["fc1"]) < 1e-3  # equal shapes, equal share


def test_uniform_prunes_every_layer_alike_and_matches_random_genome():
    counts = layer_kept_counts(MLP, 0.9, "uniform")
    # 8832 weights at 0.9: prune 7949 (7948.8 rounded up), keep 883, split 409.5 : 409.5 : 64.0;
    # fc0/fc1 each keeping 410 (884 in all) would be 89.99 % sparse, below the target
    assert counts == {"fc0": 410, "fc1": 409, "fc2": 64}
    genome = random_genome(MLP, ("relu", "relu"), 0.9, np.random.default_rng(0))
    assert {n: int(m.sum()) for n, m in genome.masks.items()} == counts
    erk = random_genome(MLP, ("relu", "relu"), 0.9, np.random.default_rng(0), "erk")
    assert {n: int(m.sum()) for n, m in erk.masks.items()} == layer_kept_counts(MLP, 0.9, "erk")


def test_bad_allocation_and_sparsity_are_named():
    with pytest.raises(GenomeError, match="allocation must be one of uniform, erk; got 'dense'"):
        layer_kept_counts(MLP, 0.5, "dense")
    with pytest.raises(GenomeError, match=r"sparsity must be in \[0, 1\); got 1.0"):
        layer_kept_counts(MLP, 1.0, "erk")
