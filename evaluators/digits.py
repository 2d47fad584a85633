"""scikit-learn's embedded 8x8 digits (1,797 images), read without importing scikit-learn:
the import alone takes ~1.8 s, paid by the driver and by every evaluator actor at start-up."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np


def load_digits() -> tuple[np.ndarray, np.ndarray, str]:
    """Images (float32 [N, 1, 8, 8] in [0, 1]), labels (int64 [N]) and the source's name."""
    flat = _digits_table()
    x = (flat[:, :-1].reshape(-1, 8, 8).astype(np.float32) / 16.0)[:, None, :, :]
    y = flat[:, -1].astype(np.int64)
    return x, y, "scikit-learn digits"


def _digits_table() -> np.ndarray:
    """The digits table (64 pixels and the label per row) from the file scikit-learn ships."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as handle:
                return np.loadtxt(handle, delimiter=",")
    from sklearn.datasets import load_digits as sklearn_digits  # an unusual installation: let it find the file

    bunch = sklearn_digits()
    return np.column_stack([bunch.data, bunch.target])
