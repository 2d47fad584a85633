"""Shared fixtures: real auto_LiRPA (through the compatibility layer) and the embedded
scikit-learn digits data set, loaded once per session."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from certevo.evaluators.data import DatasetSplits, load_dataset

# torch 2.x warns about torch.jit.script, which auto_LiRPA 0.3 uses while tracing.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=DeprecationWarning)

# One intra-op thread: these models are tiny, and on a shared 2-core machine two threads
# contending with other processes made the suite several times slower (measured).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def lirpa():
    """The auto_LiRPA module, patched for this torch and numpy."""
    from certevo.evaluators.lirpa_compat import auto_lirpa

    return auto_lirpa()


@pytest.fixture(scope="session")
def digits(lirpa) -> DatasetSplits:
    """All 1,797 digits images (1,079 train / 359 val / 359 test), split with seed 0."""
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="session")
def digits_small(lirpa) -> DatasetSplits:
    """A stratified 400-image subset of digits (240 train / 80 val / 80 test): for tests
    that need real data but not accuracy."""
    return load_dataset("digits", seed=0, subset=400)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray session shared by every test that needs Ray (start-up costs seconds)."""
    import ray

    from certevo.cluster.connect import connect

    connect(num_cpus=2)
    yield
    ray.shutdown()
