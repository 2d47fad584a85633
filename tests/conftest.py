"""Shared fixtures: real auto_LiRPA (through the compatibility layer) and the embedded
scikit-learn digits data set, loaded once per session; the tiny search most tests run
(``TINY``, ``tiny()``, ``tiny_config()``) and views of a search's results to compare
(``archive_view``, ``front_view``), importable with ``from conftest import ...``."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch

from certevo.evaluators.data import DatasetSplits, load_dataset
from certevo.evaluators.settings import CertificationSettings, TrainingSettings
from certevo.evaluators.spec import DataSpec, ModelSpec
from certevo.search.config import SearchConfig, SearchSettings, apply_overrides, load_config

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


# -- the tiny search -------------------------------------------------------------------------
#: The tiny search the search, CLI and tracking tests run, as ``--set`` overrides: 300 digits,
#: a 16-16 MLP trained 2 epochs (1 per child) at eps 0.05, 2 K-starts at each of 2 sparsities,
#: then 3 generations of 4 offspring on 2 actors. A test that needs a variant appends
#: overrides (the later one wins): ``tiny("search.generations=2")``.
TINY: list[str] = [
    "data.subset=300",
    "model.widths=[16,16]",
    "training.epochs=2",
    "training.batch_size=32",
    "certification.eps=0.05",
    "training.eps=0.05",
    "search.population_size=4",
    "search.generations=3",
    "search.kstarts=2",
    "search.inherit_epochs=1",
    "genome.sparsities=[0.5,0.9]",
    "cluster.actors=2",
]


#: The search a run directory is built from by hand in the export and final-training tests.
EXPORT_CONFIG = SearchConfig(
    data=DataSpec(name="digits", subset=400, seed=0),
    model=ModelSpec(kind="mlp", widths=(16, 16)),
    training=TrainingSettings(method="ibp", epochs=2, lr=5e-3, eps=0.05),
    certification=CertificationSettings(method="crown", eps=0.05),
    search=SearchSettings(seed=3),
)


def tiny(*extra: str) -> SearchConfig:
    """The tiny search's config, with ``extra`` overrides applied after ``TINY``."""
    return load_config(None, [*TINY, *extra])


def tiny_config(*extra: str) -> dict[str, Any]:
    """The same settings as :func:`tiny`, as the mapping of a YAML config file (for tests
    that write one for the command line)."""
    return apply_overrides({}, [*TINY, *extra])


def archive_view(search_or_state: Any) -> list[tuple[str, float, float]]:
    """Every evaluated candidate, in archive order: (id, sparsity, certified accuracy)."""
    state = getattr(search_or_state, "state", search_or_state)
    return [(cid, c.record.sparsity, c.record.certified_accuracy) for cid, c in state.archive.items()]


def front_view(state: Any) -> list[tuple[str, float, float]]:
    """The Pareto front, sorted: (id, sparsity, certified accuracy)."""
    return sorted((c.id, c.record.sparsity, c.record.certified_accuracy) for c in state.front())
