"""Tests of certevo.population.checkpoint: lossless round trips, loud refusals, atomic saves."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from certevo.population.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointStore,
    manifest_sha256,
    pack_genomes,
    restore_rng,
    rng_state,
    unpack_genomes,
)
from certevo.population.errors import CheckpointError, ConfigError
from certevo.population.genome import Genome, random_genome

SHAPES = {"fc0": (6, 5), "fc1": (4, 6), "fc2": (3, 4)}


def population(seed: int = 0) -> list[Genome]:
    rng = np.random.default_rng(seed)
    genomes = [random_genome(SHAPES, ["relu", "tanh"], s, rng) for s in (0.0, 0.5, 0.9)]
    per_neuron = Genome(
        masks=genomes[1].masks,
        activations=("relu", "tanh"),
        neuron_activations=(("relu", "linear", "relu", "tanh", "relu", "relu"), None),
    )
    return [*genomes, per_neuron, genomes[0]]  # duplicate on purpose


def arrays_file(store: CheckpointStore) -> Path:
    return store.directory / store.read_manifest()["arrays_file"]


@pytest.fixture
def saved(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoint")
    manifests, arrays = pack_genomes(population())
    state = {"population": manifests, "seed": 7, "front": ["a", "b"], "nested": {"x": [1, 2.5, None, True]}}
    store.save(state, {**arrays, "weights": np.arange(12, dtype=np.float32).reshape(3, 4)}, generation=3)
    return store, state


# --------------------------------------------------------------------------- round trips


def test_roundtrip_is_lossless(saved):
    store, state = saved
    assert store.exists() and store.generation() == 3
    loaded_state, arrays = store.load()
    assert loaded_state == state
    weights = arrays.pop("weights")
    assert weights.dtype == np.float32 and weights.tolist() == np.arange(12).reshape(3, 4).tolist()
    genomes = unpack_genomes(loaded_state["population"], arrays)
    assert [g.id for g in genomes] == [g.id for g in population()]
    assert genomes[3].neuron_activations == population()[3].neuron_activations
    manifest = json.loads(store.manifest_path.read_text())
    assert manifest["format"] == CHECKPOINT_FORMAT and manifest["format_version"] == 2
    assert manifest["generation"] == 3 and len(manifest["arrays_sha256"]) == 64


@settings(max_examples=25, deadline=None)
@given(
    st.dictionaries(
        st.text("abcdef/_.", min_size=1, max_size=8),
        hnp.arrays(
            st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_]),
            hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
        ),
        max_size=4,
    ),
    st.integers(0, 10_000),
)
def test_arrays_roundtrip_property(arrays, generation):
    with tempfile.TemporaryDirectory() as tmp:
        store = CheckpointStore(tmp)
        store.save({"k": generation}, arrays, generation)
        state, loaded = store.load()
        assert state == {"k": generation} and store.generation() == generation
        assert set(loaded) == set(arrays)
        for key, value in arrays.items():
            assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape
            np.testing.assert_array_equal(loaded[key], value)


@pytest.mark.parametrize("bit_generator", [np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937, np.random.Philox, np.random.SFC64])
def test_rng_state_continues_identically(tmp_path, bit_generator):
    rng = np.random.Generator(bit_generator(1234))
    rng.random(17)  # advance
    rng.integers(0, 10)  # leaves a buffered uint32 for some generators
    store = CheckpointStore(tmp_path)
    store.save({"rng": rng_state(rng)}, {}, generation=1)
    expected = (rng.random(5).tolist(), rng.integers(0, 1000, 5).tolist(), rng.permutation(9).tolist())
    state, _ = store.load()
    resumed = restore_rng(state["rng"])
    assert (resumed.random(5).tolist(), resumed.integers(0, 1000, 5).tolist(), resumed.permutation(9).tolist()) == expected


def test_restore_rng_refuses_unknown_generator():
    with pytest.raises(CheckpointError, match="'NotAGenerator'"):
        restore_rng({"bit_generator": "NotAGenerator", "state": {}})


def test_save_replaces_and_cleans_up(saved):
    store, _ = saved
    store.save({"g": 4}, {"a": np.ones(3)}, generation=4)
    assert store.load()[0] == {"g": 4} and store.generation() == 4
    names = sorted(p.name for p in store.directory.iterdir())
    assert names == sorted(["state.json", arrays_file(store).name])


def test_snapshot_is_not_mutated_by_caller(tmp_path):
    store = CheckpointStore(tmp_path)
    state, array = {"xs": [1, 2]}, np.zeros(3)
    store.save(state, {"a": array}, generation=0)
    state["xs"].append(3)
    array[:] = 9
    loaded_state, loaded = store.load()
    assert loaded_state == {"xs": [1, 2]} and loaded["a"].tolist() == [0, 0, 0]


def test_unjsonable_state_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="JSON data"):
        CheckpointStore(tmp_path).save({"x": np.int64(3)}, {}, generation=0)
    with pytest.raises(ConfigError, match="numpy array"):
        CheckpointStore(tmp_path).save({}, {"x": [1, 2]}, generation=0)


# --------------------------------------------------------------------------- refusals


def test_missing_checkpoint(tmp_path):
    store = CheckpointStore(tmp_path / "nothing")
    assert not store.exists()
    with pytest.raises(CheckpointError, match=r"state\.json.*does not exist"):
        store.load()


def test_damaged_arrays_sha_mismatch(saved):
    store, _ = saved
    path = arrays_file(store)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{path.name}.*sha256.*damaged") as info:
        store.load()
    assert str(path) in str(info.value)


def test_truncated_arrays(saved):
    store, _ = saved
    path = arrays_file(store)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match=rf"{path.name}.*truncated"):
        store.load()
    # Even with a manifest updated to match the truncated bytes, reading fails loudly.
    import hashlib

    manifest = json.loads(store.manifest_path.read_text())
    manifest["arrays_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest["manifest_sha256"] = manifest_sha256(manifest)
    store.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=rf"{path.name}.*cannot be read as safetensors"):
        store.load()


def test_missing_arrays_file(saved):
    store, _ = saved
    arrays_file(store).unlink()
    with pytest.raises(CheckpointError, match="do not exist"):
        store.load()


def test_truncated_manifest(saved):
    store, _ = saved
    text = store.manifest_path.read_text()
    store.manifest_path.write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match=r"state\.json is not valid JSON.*truncated"):
        store.load()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "optuna-journal"}, "not a certevo checkpoint"),
        ({"format_version": 3}, "format version 3"),
        ({"arrays_file": "../../etc/passwd"}, "damaged: arrays_file"),
        ({"generation": "three"}, "damaged: generation"),
    ],
)
def test_foreign_or_edited_manifest(saved, change, message):
    store, _ = saved
    manifest = json.loads(store.manifest_path.read_text())
    manifest.update(change)
    store.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=message) as info:
        store.load()
    assert "state.json" in str(info.value)


def test_unpack_refuses_changed_masks(saved):
    store, _ = saved
    state, arrays = store.load()
    first = state["population"][1]["id"]
    key = next(k for k in arrays if k.startswith(first + "/"))
    arrays[key] = 1 - arrays[key]
    with pytest.raises(CheckpointError, match="content hash"):
        unpack_genomes(state["population"], arrays)
    del arrays[key]
    with pytest.raises(CheckpointError, match="missing"):
        unpack_genomes(state["population"], arrays)


# --------------------------------------------------------------------------- atomicity


def test_leftover_temp_file_does_not_break_load(saved):
    store, state = saved
    leftover = store.directory / ".certevo-tmp-abc123-state.json"
    leftover.write_text('{"format": "certevo-check')  # an interrupted write
    stray_arrays = store.directory / ".certevo-tmp-def456-arrays-0123456789abcdef.safetensors"
    stray_arrays.write_bytes(b"\x00" * 10)
    assert store.load()[0] == state
    store.save({"g": 4}, {}, generation=4)
    assert not leftover.exists() and not stray_arrays.exists()


def test_crash_before_commit_keeps_previous_checkpoint(saved, monkeypatch):
    store, state = saved
    real_replace = os.replace

    def crash_on_manifest(src, dst):
        if Path(dst).name == "state.json":
            raise KeyboardInterrupt("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        store.save({"g": 4}, {"new": np.ones(2)}, generation=4)
    monkeypatch.setattr(os, "replace", real_replace)
    loaded_state, arrays = store.load()
    assert loaded_state == state and store.generation() == 3 and "new" not in arrays
    assert not any(p.name.startswith(".certevo-tmp-") for p in store.directory.iterdir())
