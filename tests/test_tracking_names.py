"""What a user sees in the MLflow UI of a search (real search, real SQLite MLflow store):
child runs named by what the candidate is, and the data set as a dataset input."""

from __future__ import annotations

import json
import re

import pytest
from mlflow.tracking import MlflowClient

from certevo.evaluators.data import load_dataset
from certevo.evaluators.spec import DataSpec
from certevo.search.loop import Search
from certevo.search.tracking import MlflowTracker
from conftest import tiny

#: The tiny search cut to one generation, children trained 5 epochs (the default).
RUN = ("search.generations=1", "search.inherit_epochs=5")


@pytest.fixture(scope="module")
def tracked(ray_session, tmp_path_factory):
    tracker = MlflowTracker()
    search = Search.create(tiny(*RUN), tmp_path_factory.mktemp("names") / "run", [tracker])
    search.run()
    assert tracker.unlogged == []
    return search, tracker, MlflowClient(tracker.tracking_uri)


def test_child_runs_are_named_by_sparsity_certified_accuracy_and_id(tracked):
    search, tracker, client = tracked
    children = client.search_runs([tracker.experiment_id], f"tags.mlflow.parentRunId = '{tracker.run_id}'")
    assert children
    for child in children:
        cid = child.data.tags["certevo.candidate_id"]
        record = search.state.archive[cid].record
        match = re.fullmatch(r"s(\d\.\d{3})-cert(\d\.\d{3})-([0-9a-f]{8})", child.info.run_name)
        assert match, child.info.run_name
        assert float(match[1]) == pytest.approx(record.sparsity, abs=1e-3)
        assert float(match[1]) <= record.sparsity + 1e-12  # cut, never rounded up past a threshold
        assert float(match[2]) == pytest.approx(record.certified_accuracy, abs=5e-4)
        assert cid.startswith(match[3])
    assert len({c.info.run_name for c in children}) == len(children)


def test_parent_run_has_the_data_set_as_a_dataset_input(tracked):
    search, tracker, client = tracked
    inputs = client.get_run(tracker.run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    (logged,) = inputs
    dataset = logged.dataset
    assert dataset.name == "digits-subset300"
    assert dataset.source_type == "local"
    assert json.loads(dataset.source)["uri"].endswith("digits.csv.gz")
    assert re.fullmatch(r"[0-9a-f]{16}", dataset.digest)
    splits = load_dataset("digits", seed=0, subset=300)
    profile = json.loads(dataset.profile)
    assert profile == {"num_samples": 300, "train": len(splits.train), "validation": len(splits.val),
                       "test": len(splits.test), "input_shape": [1, 8, 8], "num_classes": 10}
    assert json.loads(dataset.schema)["mlflow_tensorspec"]["features"]
    assert {t.key: t.value for t in logged.tags}["mlflow.data.context"] == "training"
    # logging it again (a resumed search does) keeps one input; other data has another digest
    from certevo.search.tracking.names import dataset_input, log_dataset_input

    log_dataset_input(lambda: client, lambda: tracker.run_id, search.config.data)
    assert len(client.get_run(tracker.run_id).inputs.dataset_inputs) == 1
    assert dataset_input(DataSpec(subset=200)).dataset.digest != dataset.digest
    assert dataset_input(DataSpec(subset=300, seed=1)).dataset.digest != dataset.digest


def test_a_child_run_name_never_rounds_a_sparsity_up_across_a_threshold():
    from types import SimpleNamespace

    from certevo.search.tracking.names import child_run_name

    def named(sparsity: float) -> str:
        record = SimpleNamespace(sparsity=sparsity, certified_accuracy=0.6134)
        return child_run_name(SimpleNamespace(record=record, id="1a2b3c4d5e6f"))

    assert named(0.9496) == "s0.949-cert0.613-1a2b3c4d"
    assert named(0.95) == "s0.950-cert0.613-1a2b3c4d"
    assert named(1 - 441 / 8810).startswith("s0.949")  # 0.94994..., just below 95 %
