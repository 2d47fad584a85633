"""Exporting one candidate from a run directory: choosing it (--id, --min-sparsity,
--knee), the export format (round trip, damage, foreign files), and using the exported
mask (a fresh certevo model, or a user's own model through torch pruning).

Run directories are made without Ray: candidates are evaluated with a real
CandidateEvaluator (tiny MLP, digits subset, 2 epochs) and saved the way
``certevo.search.loop.Search._end_generation`` saves them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.nn.utils import prune

from certevo.evaluators.exported_model import apply_mask_to_model, build_exported_model, make_mask_permanent
from certevo.evaluators.bounds import bound_module, margin_lower_bounds
from certevo.evaluators.models import NeuronActivations
from certevo.population.checkpoint import CheckpointStore
from certevo.population.errors import CheckpointError, ConfigError, GenomeError
from certevo.population.export import EXPORT_FORMAT, read_export, write_export
from certevo.population.genome import Genome, random_genome
from certevo.population.lineage import LineageRecord
from certevo.search.config import SearchConfig
from certevo.search.candidate_export import choose_candidate, export_candidate, knee_point
from certevo.search.state import Candidate, SearchState, objectives
from conftest import EXPORT_CONFIG

CONFIG = EXPORT_CONFIG


def save_run(run_dir: Path, config: SearchConfig, state: SearchState) -> Path:
    """config.yaml + checkpoint/, as certevo.search.loop.Search writes them."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = replace(config, run_dir=str(run_dir))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    data, arrays = state.to_checkpoint()
    data["config"] = config.to_dict()
    CheckpointStore(run_dir / "checkpoint").save(data, arrays, max(state.generation, 0))
    return run_dir


def add(state: SearchState, genome: Genome, record, parents=(), operator="seed", generation=0) -> None:
    state.add(Candidate(genome, record))
    state.lineage.add(LineageRecord(genome.id, tuple(parents), operator, generation, objectives(record), record.to_dict()))


@pytest.fixture(scope="module")
def template(digits_small):
    return CONFIG.model.template(digits_small.input_shape, digits_small.num_classes)


@pytest.fixture(scope="module")
def genomes(template):
    shapes = template.layer_shapes()
    rng = np.random.default_rng(7)
    a = random_genome(shapes, ["relu", "relu"], 0.5, rng)
    b = random_genome(shapes, ["relu", "tanh"], 0.8, rng)
    per_neuron = tuple("relu" if i % 3 else "linear" for i in range(16))
    c = Genome(masks=random_genome(shapes, ["relu", "relu"], 0.9, rng).masks, activations=("relu", "relu"),
               neuron_activations=(per_neuron, None))
    return a, b, c


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, digits_small, genomes):
    """Three real evaluations; the third is a child of the first two."""
    evaluator = CONFIG.evaluation_spec().build(data=digits_small)
    state = SearchState(rng=np.random.default_rng(0))
    records = [evaluator.evaluate(g).record for g in genomes]
    assert all(r.ok for r in records), [r.failure for r in records]
    add(state, genomes[0], records[0])
    add(state, genomes[1], records[1])
    add(state, genomes[2], records[2], parents=(genomes[0].id, genomes[1].id), operator="crossover_uniform", generation=1)
    state.population = [g.id for g in genomes]
    state.generation = 1
    return save_run(tmp_path_factory.mktemp("real") / "run", CONFIG, state), state


# Designed front (sparsity target -> certified accuracy): the knee is the 0.8 member,
# --min-sparsity 0.75 also picks it, 0.85 picks the 0.9 member, 0 picks the 0.5 member.
DESIGN = {0.5: 0.60, 0.7: 0.58, 0.8: 0.50, 0.9: 0.30, 0.95: 0.10}


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory, real_run, template):
    """Records with designed accuracies (real record fields otherwise), a dominated
    candidate, a failed one at 99 % sparsity, and enough dominated extras that two ids
    share a first character (to test ambiguous prefixes)."""
    _, real_state = real_run
    base = next(iter(real_state.archive.values())).record
    shapes = template.layer_shapes()
    rng = np.random.default_rng(11)
    state = SearchState(rng=np.random.default_rng(0))

    def record(genome, certified, failure=None):
        return replace(base, candidate_id=genome.id, sparsity=genome.sparsity, certified_accuracy=certified,
                       clean_accuracy=min(1.0, certified + 0.2), layer_sparsity=genome.layer_sparsity(), failure=failure)

    by_target = {}
    for target, certified in DESIGN.items():
        genome = random_genome(shapes, ["relu", "relu"], target, rng)
        add(state, genome, record(genome, certified))
        by_target[target] = genome.id
    dominated = random_genome(shapes, ["relu", "relu"], 0.6, rng)
    add(state, dominated, record(dominated, 0.2))
    failed = random_genome(shapes, ["relu", "relu"], 0.99, rng)
    add(state, failed, record(failed, 0.0, failure="training diverged: loss became nan"))
    while len({cid[0] for cid in state.archive}) == len(state.archive):  # pigeonhole: ends within 17
        extra = random_genome(shapes, ["relu", "relu"], 0.6, rng)
        add(state, extra, record(extra, 0.05))
    state.population = list(state.archive)
    state.generation = 0
    run = save_run(tmp_path_factory.mktemp("synthetic") / "run", CONFIG, state)
    return run, by_target, failed.id, state


# --------------------------------------------------------------------------- choosing


def test_min_sparsity_picks_best_certified_at_or_above_the_level(synthetic_run):
    run, ids, _, _ = synthetic_run
    assert choose_candidate(run, min_sparsity=0.75)[0].id == ids[0.8]
    assert choose_candidate(run, min_sparsity=0.85)[0].id == ids[0.9]
    assert choose_candidate(run, min_sparsity=0.0)[0].id == ids[0.5]


def test_min_sparsity_above_the_front_names_the_sparsest_member(synthetic_run):
    run, ids, _, state = synthetic_run
    top = state.archive[ids[0.95]].record.sparsity
    with pytest.raises(ConfigError, match="sparsest on the front has") as info:
        choose_candidate(run, min_sparsity=0.99)  # the failed 0.99 candidate does not count
    assert f"{top:.6g}" in str(info.value)


def test_knee_is_farthest_above_the_line_between_the_extremes(synthetic_run):
    run, ids, _, _ = synthetic_run
    candidate, state, config = choose_candidate(run, knee=True)
    assert candidate.id == ids[0.8]
    assert config.digest() == CONFIG.digest()
    assert len(state.archive) >= 7
    assert len(state.front()) == len(DESIGN)  # the dominated and the failed ones are off it


def test_knee_point_edge_cases():
    assert knee_point([(0.5, 0.4)]) == 0
    assert knee_point([(0.9, 0.2), (0.5, 0.6)]) == 1  # no interior point: best certified
    # a member below the chord (concave front) loses to one on it
    assert knee_point([(0.5, 0.6), (0.7, 0.2), (0.9, 0.1)]) == 0


def test_choose_by_id_and_unique_prefix(synthetic_run):
    run, ids, _, _ = synthetic_run
    full = ids[0.9]
    assert choose_candidate(run, candidate_id=full)[0].id == full
    assert choose_candidate(run, candidate_id=full[:8])[0].id == full


def test_unknown_ambiguous_and_failed_ids_are_refused(synthetic_run):
    run, ids, failed, state = synthetic_run
    with pytest.raises(ConfigError, match="no candidate id starts with") as info:
        choose_candidate(run, candidate_id=ids[0.9][:6] + "zz")
    assert ids[0.9] in str(info.value)  # listed as a close id
    first = {}
    for cid in state.archive:
        first.setdefault(cid[0], []).append(cid)
    shared = next(group for group in first.values() if len(group) > 1)
    with pytest.raises(ConfigError, match="give more characters"):
        choose_candidate(run, candidate_id=shared[0][0])
    with pytest.raises(ConfigError, match="failed its evaluation"):
        choose_candidate(run, candidate_id=failed)


def test_exactly_one_rule_is_required(synthetic_run):
    run = synthetic_run[0]
    with pytest.raises(ConfigError, match="exactly one"):
        choose_candidate(run)
    with pytest.raises(ConfigError, match="--min-sparsity, --knee"):
        choose_candidate(run, min_sparsity=0.5, knee=True)


def test_bad_run_directories_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        choose_candidate(tmp_path / "nope", knee=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        choose_candidate(tmp_path / "file", knee=True)
    with pytest.raises(CheckpointError, match="not a certevo run directory"):
        choose_candidate(tmp_path, knee=True)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG.to_dict()))
    with pytest.raises(CheckpointError, match="certevo resume"):
        choose_candidate(tmp_path, knee=True)


# --------------------------------------------------------------------------- the format


def test_export_round_trips_genome_and_manifest(real_run, genomes, tmp_path):
    run, state = real_run
    child = genomes[2]
    json_path, st_path = export_candidate(run, tmp_path / "best", candidate_id=child.id[:10])
    assert (json_path.name, st_path.name) == ("best.json", "best.safetensors")
    for path in (json_path, st_path, tmp_path / "best"):
        export = read_export(path)
        assert export.genome == child and export.genome.id == child.id
        assert export.genome.masks.keys() == child.masks.keys()
        for name, mask in child.masks.items():
            assert np.array_equal(export.genome.masks[name], mask)
        assert export.genome.activations == child.activations
        assert export.genome.neuron_activations == child.neuron_activations
    manifest = export.manifest
    assert manifest["format"] == EXPORT_FORMAT and manifest["format_version"] == 1
    assert manifest["candidate_id"] == child.id
    assert manifest["model"] == {"kind": "mlp", "input_shape": [1, 8, 8], "num_classes": 10, "widths": [16, 16],
                                 "channels": None}
    assert manifest["activations"] == {"layers": ["relu", "relu"], "per_neuron": [list(child.neuron_activations[0]), None]}
    assert manifest["sparsity"] == child.sparsity and manifest["layer_sparsity"] == child.layer_sparsity()
    assert manifest["fitness"] == state.archive[child.id].record.to_dict()
    assert manifest["eps"] == {"certification": 0.05, "training": 0.05}
    assert manifest["data"] == {"name": "digits", "path": None, "seed": 0, "subset": 400,
                                "val_fraction": 0.2, "test_fraction": 0.2}
    assert manifest["config_digest"] == CONFIG.digest()
    assert manifest["lineage"] == {"candidate_id": child.id, "parents": [genomes[0].id, genomes[1].id],
                                   "operator": "crossover_uniform", "generation": 1}
    assert manifest["certevo_version"] not in ("", None)
    assert manifest["masks_sha256"] == hashlib.sha256(st_path.read_bytes()).hexdigest()
    from safetensors.numpy import load_file

    stored = load_file(str(st_path))
    assert {k: v.dtype for k, v in stored.items()} == {k: np.dtype(np.uint8) for k in child.masks}


def test_export_into_a_directory_names_files_by_candidate(real_run, tmp_path):
    run, _ = real_run
    json_path, st_path = export_candidate(run, tmp_path, knee=True)
    assert json_path.parent == tmp_path and json_path.stem == read_export(json_path).candidate_id
    assert st_path == json_path.with_suffix(".safetensors")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".certevo-tmp")]


@pytest.fixture
def exported(real_run, genomes, tmp_path):
    return export_candidate(real_run[0], tmp_path / "cand", candidate_id=genomes[1].id)


def test_damaged_masks_are_refused(exported):
    json_path, st_path = exported
    blob = bytearray(st_path.read_bytes())
    blob[-1] ^= 0x01
    st_path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="sha256") as info:
        read_export(json_path)
    assert str(st_path) in str(info.value) and "export the candidate again" in str(info.value)


def test_foreign_and_incomplete_files_are_refused(exported, real_run, tmp_path):
    json_path, st_path = exported
    with pytest.raises(CheckpointError, match="not a certevo export"):
        read_export(real_run[0] / "checkpoint" / "state.json")
    manifest = json.loads(json_path.read_text())
    json_path.write_text(json.dumps({**manifest, "format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a certevo export"):
        read_export(st_path)
    json_path.write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format version 99"):
        read_export(json_path)
    edited = json.loads(json.dumps(manifest))
    edited["genome"]["activations"] = ["tanh", "tanh"]
    json_path.write_text(json.dumps(edited))
    with pytest.raises(CheckpointError, match="does not describe its masks"):
        read_export(json_path)
    json_path.write_text(json.dumps(manifest)[:50])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_export(json_path)
    json_path.write_text(json.dumps(manifest))
    st_path.unlink()
    with pytest.raises(CheckpointError, match="do not exist"):
        read_export(json_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_export(tmp_path / "missing.json")


def test_write_export_checks_its_fields(genomes, tmp_path):
    genome = genomes[0]
    with pytest.raises(ConfigError, match="lacks"):
        write_export(tmp_path / "x", genome, {"model": {"kind": "mlp"}})
    with pytest.raises(ConfigError, match="computes"):
        write_export(tmp_path / "x", genome, {"sparsity": 0.5})
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- using the mask


def test_built_model_has_exact_zeros_where_masked(exported, genomes):
    export = read_export(exported[0])
    model = build_exported_model(export, seed=5)
    for name, mask in export.genome.masks.items():
        weight = model.get_submodule(name).weight.detach()
        assert torch.all(weight[torch.from_numpy(~mask)] == 0)
        assert torch.count_nonzero(weight[torch.from_numpy(mask.copy())]) == mask.sum()
    assert isinstance(model.act1, nn.Tanh)
    again = build_exported_model(export, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_built_model_keeps_per_neuron_activations(real_run, genomes, tmp_path):
    json_path, _ = export_candidate(real_run[0], tmp_path / "c", candidate_id=genomes[2].id)
    model = build_exported_model(read_export(json_path))
    assert isinstance(model.act0, NeuronActivations) and set(model.act0.kinds) == {"relu", "linear"}


class UserNet(nn.Module):
    """A user's own architecture for 8x8 digits, with its own layer names."""

    def __init__(self, first: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, first), nn.ReLU())
        self.hidden = nn.Linear(first, 16)
        self.act = nn.ReLU()
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.act(self.hidden(self.encoder(x))))


LAYER_MAP = {"fc0": "encoder.1", "fc1": "hidden", "fc2": "head"}


def _pruned_are_zero(model: nn.Module, export) -> bool:
    return all(
        torch.all(model.get_submodule(LAYER_MAP[name]).weight[torch.from_numpy(~mask)] == 0)
        for name, mask in export.genome.masks.items()
    )


def test_apply_mask_to_a_users_model_survives_training_and_prune_remove(exported, digits_small):
    export = read_export(exported[0])
    torch.manual_seed(0)
    model = apply_mask_to_model(UserNet(), export, LAYER_MAP)
    x, y = digits_small.train.x[:32], digits_small.train.y[:32]
    assert _pruned_are_zero(model, export)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model(x)
    assert _pruned_are_zero(model, export)
    make_mask_permanent(model)
    assert not any(prune.is_pruned(m) for m in (model.hidden, model.head))
    assert isinstance(model.hidden.weight, nn.Parameter) and not hasattr(model.hidden, "weight_orig")
    model(x)
    assert _pruned_are_zero(model, export)
    # after prune.remove, auto_LiRPA can bound the user's model
    lower = margin_lower_bounds(bound_module(model.eval(), (1, 8, 8)), x[:4], y[:4], 0.01, "crown", 10)
    assert lower.shape == (4, 9) and torch.isfinite(lower).all()


def test_shape_mismatch_and_missing_modules_name_the_layer(exported):
    export = read_export(exported[0])
    model = UserNet(first=20)
    with pytest.raises(GenomeError, match=r"'fc0'.*\[16, 64\].*'encoder.1'.*\[20, 64\]"):
        apply_mask_to_model(model, export, LAYER_MAP)
    assert not any(hasattr(m, "weight_orig") for m in model.modules())  # nothing half-applied
    with pytest.raises(GenomeError, match="'fc1'.*does not have"):
        apply_mask_to_model(UserNet(), export, {"fc0": "encoder.1", "fc2": "head"})
    with pytest.raises(GenomeError, match="not layers of export"):
        apply_mask_to_model(UserNet(), export, {**LAYER_MAP, "fc9": "head"})
