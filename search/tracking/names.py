"""What MLflow shows of a search besides numbers: child-run names that say what a candidate
is, and the data set as a dataset input of the parent run.

Both are used by :class:`certevo.search.tracking.MlflowTracker` (on its MLflow thread, through its
op queue). The data set is logged with ``MlflowClient.log_inputs`` — the client form of
``mlflow.log_input``, which needs a fluent active run the tracker does not use — as a
metadata-only dataset: name, source (where the data was read), a digest of the exact splits
the search used, their sizes (profile) and tensor schema. No data is uploaded.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from certevo.population.sparsity_text import LEVEL_TOLERANCE

__all__ = ["child_run_name", "dataset_input", "log_dataset_input"]

#: Input tag MLflow reads as the role of a dataset (``mlflow.log_input(..., context=...)``).
CONTEXT_TAG = "mlflow.data.context"


def child_run_name(candidate: Any) -> str:
    """``s<sparsity>-cert<certified accuracy>-<id prefix>`` of an evaluated candidate, e.g.
    ``s0.950-cert0.613-1a2b3c4d``: sortable in the MLflow run list, and still unique."""
    record = candidate.record
    # The sparsity is cut, not rounded (as certevo.population.sparsity_text does): 0.9496 is s0.949,
    # never s0.950, which would put it on the wrong side of a 95 % threshold.
    sparsity = math.floor((record.sparsity + LEVEL_TOLERANCE) * 1000) / 1000
    return f"s{sparsity:.3f}-cert{record.certified_accuracy:.3f}-{candidate.id[:8]}"


def _source_uri(data: Any) -> str:
    """Where the data set was read: its file or directory, for digits the file scikit-learn
    ships (what certevo.evaluators.digits reads)."""
    if data.path is not None:
        return str(Path(os.path.expanduser(data.path)).resolve())
    spec = importlib.util.find_spec("sklearn") if data.name == "digits" else None
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return str(path)
    return f"sklearn.datasets.load_{data.name}"


@functools.lru_cache(maxsize=8)
def _described(data: Any) -> tuple[str, str, str, str, str, dict[str, str]]:
    """(name, digest, source JSON, schema JSON, profile JSON, input tags) of ``data`` (a
    frozen, hashable certevo.evaluators.spec.DataSpec); loads the splits once per process."""
    import numpy as np
    from mlflow.data.schema import TensorDatasetSchema
    from mlflow.types.schema import Schema, TensorSpec

    splits = data.load()
    digest = hashlib.sha256()
    for part in (splits.train, splits.val, splits.test):
        for tensor in (part.x, part.y):
            array = np.ascontiguousarray(tensor.numpy())
            digest.update(str((array.dtype.str, array.shape)).encode())
            digest.update(array.tobytes())
    sizes = {"train": len(splits.train), "validation": len(splits.val), "test": len(splits.test)}
    profile = {"num_samples": sum(sizes.values()), **sizes, "input_shape": list(splits.input_shape),
               "num_classes": splits.num_classes}
    schema = TensorDatasetSchema(features=Schema([TensorSpec(np.dtype("float32"), (-1, *splits.input_shape))]),
                                 targets=Schema([TensorSpec(np.dtype("int64"), (-1,))]))
    name = data.name if data.subset is None else f"{data.name}-subset{data.subset}"
    tags = {CONTEXT_TAG: "training",
            "certevo.split": f"seed={data.seed} val_fraction={data.val_fraction} test_fraction={data.test_fraction}"}
    return (name, digest.hexdigest()[:16], json.dumps({"uri": _source_uri(data)}), json.dumps(schema.to_dict()),
            json.dumps(profile), tags)


def dataset_input(data: Any) -> Any:
    """The ``mlflow.entities.DatasetInput`` of the data set ``data`` (an
    certevo.evaluators.spec.DataSpec): source type ``local``, context ``training``."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    name, digest, source, schema, profile, tags = _described(data)
    dataset = Dataset(name=name, digest=digest, source_type="local", source=source, schema=schema, profile=profile)
    return DatasetInput(dataset=dataset, tags=[InputTag(key=k, value=v) for k, v in tags.items()])


def log_dataset_input(client: Callable[[], Any], run_id: Callable[[], str], data: Any) -> None:
    """Log ``data`` as a dataset input of the run ``run_id()`` through the MlflowClient
    ``client()`` (MLflow keeps one input per dataset and run: a resumed search logging it
    again adds nothing)."""
    run = run_id()  # before loading the data: raises while the parent run is not created yet
    client().log_inputs(run, datasets=[dataset_input(data)])
