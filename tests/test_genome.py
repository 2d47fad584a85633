"""The genome: exact sparsity, stable content ids, lossless JSON + safetensors files,
and loud errors for damaged files and invalid genes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from certevo.population.errors import CheckpointError, GenomeError
from certevo.population.genome import GENOME_FORMAT, Genome, dense_genome, random_genome

SHAPES = {"fc0": (6, 5), "fc1": (4, 6), "fc2": (3, 4)}


def _genome(rng, sparsity=0.5, activations=("relu", "tanh"), neuron=None) -> Genome:
    g = random_genome(SHAPES, activations, sparsity, rng)
    return Genome(g.masks, g.activations, neuron) if neuron is not None else g


def _mixed_neurons():
    return (("relu", "linear", "sigmoid", "tanh", "leaky_relu", "linear"), None)


# --------------------------------------------------------------------------- sparsity


def test_sparsity_is_the_exact_pruned_share():
    masks = {
        "fc0": np.array([[1, 0, 0], [0, 0, 1]], dtype=bool),  # 2 of 6 kept
        "fc1": np.array([[1, 1], [1, 0]], dtype=np.uint8),  # 3 of 4 kept (0/1 ints are fine)
    }
    g = Genome(masks, ("relu",))
    assert g.total_weights == 10
    assert g.kept_weights == 5
    assert g.sparsity == 1.0 - 5 / 10
    assert g.layer_sparsity() == {"fc0": 1 - 2 / 6, "fc1": 1 - 3 / 4}
    assert g.masks["fc1"].dtype == np.bool_


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9])
def test_random_genome_prunes_each_layer_to_the_exact_count(rng, sparsity):
    g = random_genome(SHAPES, ("relu", "relu"), sparsity, rng)
    for name, shape in SHAPES.items():
        size = int(np.prod(shape))
        assert int(g.masks[name].sum()) == max(1, size - int(round(sparsity * size)))
    assert g.sparsity == 1 - g.kept_weights / g.total_weights


def test_dense_genome_keeps_everything():
    g = dense_genome(SHAPES, ("relu", "relu"))
    assert g.sparsity == 0.0 and g.empty_layers() == []


def test_empty_layers_are_reported(rng):
    g = _genome(rng)
    masks = dict(g.masks)
    masks["fc1"] = np.zeros(SHAPES["fc1"], dtype=bool)
    assert Genome(masks, g.activations).empty_layers() == ["fc1"]


def test_masks_are_frozen_copies(rng):
    source = np.ones((3, 3), dtype=bool)
    g = Genome({"fc0": source}, ())
    source[0, 0] = False
    assert g.masks["fc0"].all(), "the genome must not alias the caller's array"
    with pytest.raises(ValueError):
        g.masks["fc0"][0, 0] = False


# --------------------------------------------------------------------------- identity


def test_same_content_gives_the_same_id(rng):
    g = _genome(rng, neuron=_mixed_neurons())
    copy = Genome({k: v.copy() for k, v in g.masks.items()}, tuple(g.activations), g.neuron_activations)
    assert copy.id == g.id and copy == g and hash(copy) == hash(g)
    assert len(g.id) == 20 and all(c in "0123456789abcdef" for c in g.id)


def test_id_is_pinned_across_processes_and_versions():
    # Checkpoints store ids and Genome.load checks them: a fixed genome must keep its id
    # on any machine and in any process (no salted hash(), no pickle).
    assert Genome({"fc0": np.eye(3, dtype=bool)}, ()).id == "6a2388f6c3c9145ce6f9"
    assert Genome({"fc0": np.eye(4, dtype=bool)[:3]}, ("relu",)).id == "84c3aa2fbfe214748767"


def test_flipping_one_mask_bit_changes_the_id(rng):
    g = _genome(rng)
    for name in SHAPES:
        mask = g.masks[name].copy()
        mask.flat[0] = not mask.flat[0]
        flipped = Genome({**g.masks, name: mask}, g.activations)
        assert flipped.id != g.id and flipped != g


def test_activations_are_part_of_the_id(rng):
    g = _genome(rng, activations=("relu", "tanh"))
    other_layer = Genome(g.masks, ("relu", "sigmoid"))
    swapped = Genome(g.masks, ("tanh", "relu"))
    per_neuron = Genome(g.masks, g.activations, _mixed_neurons())
    one_neuron_changed = Genome(
        g.masks, g.activations, (("relu", "linear", "sigmoid", "tanh", "leaky_relu", "relu"), None)
    )
    ids = {g.id, other_layer.id, swapped.id, per_neuron.id, one_neuron_changed.id}
    assert len(ids) == 5


def test_all_none_neuron_activations_mean_layer_activations(rng):
    g = _genome(rng)
    assert Genome(g.masks, g.activations, (None, None)).id == g.id


def test_id_does_not_depend_on_mask_insertion_order(rng):
    g = _genome(rng)
    reordered = Genome(dict(reversed(list(g.masks.items()))), g.activations)
    assert reordered.id == g.id


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("bad", [np.array([[0.0, 0.5]]), np.array([[0, 2]]), np.array([[-1, 1]])])
def test_non_binary_mask_is_rejected(bad):
    with pytest.raises(GenomeError, match="binary") as info:
        Genome({"fc0": bad}, ())
    assert "'fc0'" in str(info.value)


def test_unknown_activation_is_named(rng):
    with pytest.raises(GenomeError, match="'swish'") as info:
        _genome(rng, activations=("relu", "swish"))
    assert "hidden layer 1" in str(info.value) and "relu" in str(info.value)


def test_unknown_per_neuron_activation_is_named(rng):
    with pytest.raises(GenomeError, match="'mish'") as info:
        _genome(rng, neuron=(("relu",) * 5 + ("mish",), None))
    assert "neuron 5" in str(info.value)


def test_neuron_activations_length_must_match_layers(rng):
    with pytest.raises(GenomeError, match="neuron_activations has 1 entries but there are 2"):
        _genome(rng, neuron=(("relu",) * 6,))


def test_genome_needs_a_mask():
    with pytest.raises(GenomeError):
        Genome({}, ())


# --------------------------------------------------------------------------- files


def _assert_same(a: Genome, b: Genome) -> None:
    assert a.id == b.id
    assert list(a.masks) == list(b.masks)
    for name in a.masks:
        assert a.masks[name].dtype == b.masks[name].dtype == np.bool_
        assert np.array_equal(a.masks[name], b.masks[name])
    assert a.activations == b.activations
    assert a.neuron_activations == b.neuron_activations


@pytest.mark.parametrize("neuron", [None, _mixed_neurons()], ids=["layer-activations", "per-neuron"])
def test_save_load_roundtrip_is_lossless(tmp_path, rng, neuron):
    g = _genome(rng, sparsity=0.7, neuron=neuron)
    json_path, tensor_path = g.save(tmp_path / "cand")
    assert json_path == tmp_path / "cand.json" and tensor_path == tmp_path / "cand.safetensors"
    manifest = json.loads(json_path.read_text())
    assert manifest["format"] == GENOME_FORMAT and manifest["id"] == g.id
    assert manifest["sparsity"] == g.sparsity
    # No pickle: the mask file is plain safetensors.
    from safetensors.numpy import load_file

    assert set(load_file(str(tensor_path))) == set(SHAPES)
    _assert_same(Genome.load(tmp_path / "cand"), g)


def test_load_refuses_a_missing_file(tmp_path, rng):
    g = _genome(rng)
    json_path, tensor_path = g.save(tmp_path / "cand")
    tensor_path.unlink()
    with pytest.raises(CheckpointError, match="does not exist") as info:
        Genome.load(tmp_path / "cand")
    assert "cand.safetensors" in str(info.value)
    with pytest.raises(CheckpointError, match="nothing.json"):
        Genome.load(tmp_path / "nothing")


def test_load_refuses_a_truncated_mask_file(tmp_path, rng):
    g = _genome(rng)
    _, tensor_path = g.save(tmp_path / "cand")
    data = tensor_path.read_bytes()
    tensor_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged") as info:
        Genome.load(tmp_path / "cand")
    assert "cand.safetensors" in str(info.value)


def test_load_refuses_a_truncated_manifest(tmp_path, rng):
    json_path, _ = _genome(rng).save(tmp_path / "cand")
    json_path.write_text(json_path.read_text()[:25])
    with pytest.raises(CheckpointError, match="not valid JSON") as info:
        Genome.load(tmp_path / "cand")
    assert "cand.json" in str(info.value)


def test_load_refuses_an_edited_id(tmp_path, rng):
    g = _genome(rng)
    json_path, _ = g.save(tmp_path / "cand")
    manifest = json.loads(json_path.read_text())
    manifest["id"] = "0" * 20
    json_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="manifest says 0{20}") as info:
        Genome.load(tmp_path / "cand")
    assert g.id in str(info.value)


def test_load_refuses_masks_that_do_not_match_the_manifest_id(tmp_path, rng):
    g = _genome(rng)
    other = _genome(np.random.default_rng(99))
    g.save(tmp_path / "cand")
    other.save(tmp_path / "other")
    (tmp_path / "other.safetensors").replace(tmp_path / "cand.safetensors")
    with pytest.raises(CheckpointError, match="changed or damaged"):
        Genome.load(tmp_path / "cand")


def test_load_refuses_a_wrong_format(tmp_path, rng):
    json_path, _ = _genome(rng).save(tmp_path / "cand")
    manifest = json.loads(json_path.read_text())
    manifest["format"] = "someone-else/7"
    json_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="'someone-else/7'") as info:
        Genome.load(tmp_path / "cand")
    assert GENOME_FORMAT in str(info.value)


def test_load_refuses_a_mask_of_the_wrong_shape(tmp_path, rng):
    json_path, _ = _genome(rng).save(tmp_path / "cand")
    manifest = json.loads(json_path.read_text())
    manifest["layers"]["fc1"] = [6, 4]
    json_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="'fc1'"):
        Genome.load(tmp_path / "cand")


@pytest.mark.parametrize("damage", ["drop-layers", "not-an-object"])
def test_load_refuses_a_manifest_missing_keys(tmp_path, rng, damage):
    json_path, _ = _genome(rng).save(tmp_path / "cand")
    manifest = json.loads(json_path.read_text())
    if damage == "drop-layers":
        del manifest["layers"]
    else:
        manifest = [manifest]
    json_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError):
        Genome.load(tmp_path / "cand")
