"""The checks every certevo JSON manifest shares (certevo.population.manifest), as the
readers of checkpoints, lineage data and exports apply them: a ``format_version`` that is
JSON ``true`` is not version 1, for any of them (``True == 1`` in Python, so a reader
comparing with ``!=`` took it for one)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from certevo.population.checkpoint import CheckpointStore
from certevo.population.errors import CheckpointError
from certevo.population.export import read_export, write_export
from certevo.population.genome import random_genome
from certevo.population.lineage import Lineage
from certevo.population.manifest import check_format, check_sha256, check_version, read_json

SHAPES = {"fc0": (8, 64), "fc1": (10, 8)}


def _set_version(path, version) -> None:
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "format_version": version}))


def test_the_lineage_reader_refuses_a_boolean_version():
    data = {**Lineage().to_json(), "format_version": True}
    with pytest.raises(CheckpointError, match="lineage data has format version True; this certevo reads version 1"):
        Lineage.from_json(data)


def test_the_export_reader_refuses_a_boolean_version(tmp_path):
    genome = random_genome(SHAPES, ["relu"], 0.5, np.random.default_rng(0))
    json_path, _ = write_export(tmp_path / "cand", genome, {
        "model": {"kind": "mlp", "input_shape": [1, 8, 8], "num_classes": 10, "widths": [8], "channels": None},
        "fitness": {"candidate_id": genome.id},
        "eps": {"certification": 0.05, "training": 0.05},
        "data": {"name": "digits", "path": None, "seed": 0, "subset": None},
        "config_digest": "0" * 16,
        "lineage": {"candidate_id": genome.id},
    })
    assert read_export(json_path).candidate_id == genome.id  # a sound export is read
    _set_version(json_path, True)
    with pytest.raises(CheckpointError, match=r"has export format version True; this certevo reads version 1"):
        read_export(json_path)


def test_the_checkpoint_reader_refuses_a_boolean_version(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoint")
    store.save({"x": 1}, {}, 0)
    _set_version(store.manifest_path, True)
    with pytest.raises(CheckpointError, match=r"has checkpoint format version True; this certevo reads versions 1, 2"):
        store.read_manifest()


def test_the_checks_hand_the_caller_what_they_found(tmp_path):
    found: list = []

    def wrong(value) -> str:
        found.append(value)
        return f"message for {value!r}"

    with pytest.raises(CheckpointError, match="message for 'other'"):
        check_format({"format": "other"}, "mine", wrong)
    with pytest.raises(CheckpointError, match="message for 'list'"):
        check_format([], "mine", wrong)  # not an object: its type is what was found
    check_format({"format": "mine"}, "mine", wrong)
    with pytest.raises(CheckpointError, match="message for 3"):
        check_version({"format_version": 3}, (1, 2), wrong)
    assert check_version({"format_version": 2}, (1, 2), wrong) == 2
    sha_of_abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2 test vector
    check_sha256(b"abc", sha_of_abc, wrong)
    with pytest.raises(CheckpointError, match=f"message for '{sha_of_abc}'"):
        check_sha256(b"abc", "0" * 64, wrong)
    assert found == ["other", "list", 3, sha_of_abc]
    path = tmp_path / "m.json"
    path.write_text('{"format": ')
    with pytest.raises(CheckpointError, match="bad JSON: Expecting value"):
        read_json(path, lambda exc: f"bad JSON: {exc}")
