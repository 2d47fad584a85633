"""Final training of an exported mask: report.json + weights.safetensors, sparsity counted
from the trained weights, soundness ordering of the reported accuracies, reloadable
weights. Real torch + auto_LiRPA on a digits subset, a tiny MLP and a few epochs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from certevo.evaluators.exported_model import build_exported_model
from certevo.evaluators.final_training import EpochProgress, load_final_model, train_final
from certevo.evaluators.settings import CertificationSettings
from certevo.population.checkpoint import CheckpointStore
from certevo.population.errors import ConfigError
from certevo.population.export import read_export
from certevo.population.genome import random_genome
from certevo.population.lineage import LineageRecord
from certevo.search.candidate_export import default_final_dir, export_candidate, train_exported
from certevo.search.state import Candidate, SearchState, objectives
from conftest import EXPORT_CONFIG

CONFIG = EXPORT_CONFIG


def _exported_run(root, digits_small, sparsity: float, seed: int, *, keep_weights: bool, **evaluate):
    """A run directory holding one evaluated candidate (with its trained weights when
    ``keep_weights``, as a search with weight inheritance keeps them), exported by id."""
    from certevo.search.state import trained_arrays

    template = CONFIG.model.template(digits_small.input_shape, digits_small.num_classes)
    genome = random_genome(template.layer_shapes(), ["relu", "relu"], sparsity, np.random.default_rng(seed))
    evaluation = CONFIG.evaluation_spec().build(data=digits_small).evaluate(genome, keep_weights=keep_weights, **evaluate)
    record = evaluation.record
    assert record.ok, record.failure
    state = SearchState(rng=np.random.default_rng(0), generation=0, population=[genome.id])
    state.add(Candidate(genome, record))
    if keep_weights:
        state.weights[genome.id] = trained_arrays(evaluation.weights, evaluation.gradients)
    state.lineage.add(LineageRecord(genome.id, (), "seed", 0, objectives(record), record.to_dict()))
    run = root / "run"
    run.mkdir()
    config = replace(CONFIG, run_dir=str(run))
    (run / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    data, arrays = state.to_checkpoint()
    data["config"] = config.to_dict()
    CheckpointStore(run / "checkpoint").save(data, arrays, 0)
    json_path, _ = export_candidate(run, root / "exports" / "best", candidate_id=genome.id)
    return json_path, evaluation


@pytest.fixture(scope="module")
def export_path(tmp_path_factory, digits_small):
    """A run directory with one evaluated 80 %-sparse candidate, exported by id."""
    return _exported_run(tmp_path_factory.mktemp("final"), digits_small, 0.8, 2, keep_weights=False)[0]


@pytest.fixture(scope="module")
def trained(export_path):
    progress: list[EpochProgress] = []
    report, out_dir = train_exported(
        export_path, epochs=60, pgd_steps=5, pgd_restarts=1, callback=progress.append
    )
    return report, out_dir, progress


def test_report_and_weights_are_written(trained, export_path):
    report, out_dir, _ = trained
    assert out_dir == default_final_dir(export_path) == export_path.parent / "best-final"
    document = json.loads((out_dir / "report.json").read_text())
    assert document["format"] == "certevo-final-report"
    assert document["weights_sha256"] == hashlib.sha256((out_dir / "weights.safetensors").read_bytes()).hexdigest()
    for key in ("clean_accuracy", "certified_accuracy_ibp", "certified_accuracy_crown", "pgd_accuracy", "eps",
                "epochs", "method", "sparsity", "layer_sparsity", "samples", "seconds", "candidate_id"):
        assert key in document, key
        assert document[key] == report.to_dict()[key]
    export = read_export(export_path)
    assert document["candidate_id"] == export.candidate_id
    assert (report.method, report.epochs, report.eps) == ("ibp", 60, 0.05)  # defaults from the export
    assert report.samples == 80 and report.train_samples == 320  # test split; trained on train + val
    assert not list(out_dir.glob(".certevo-tmp*"))


def test_sparsity_comes_from_the_trained_weights_and_equals_the_exports(trained, export_path):
    report, _, _ = trained
    export = read_export(export_path)
    assert report.sparsity == export.genome.sparsity == export.manifest["sparsity"]
    assert report.layer_sparsity == export.genome.layer_sparsity() == export.manifest["layer_sparsity"]


def test_accuracies_are_ordered_as_soundness_requires(trained):
    report, _, _ = trained
    assert 0.0 <= report.certified_accuracy_ibp <= report.pgd_accuracy <= report.clean_accuracy <= 1.0
    assert report.certified_accuracy_crown is not None
    assert report.certified_accuracy_crown <= report.pgd_accuracy
    assert max(report.certified_accuracy_ibp, report.certified_accuracy_crown) <= report.certified_accuracy
    assert report.certified_accuracy <= report.pgd_accuracy
    assert report.clean_accuracy > 0.5  # it did learn something


def test_epoch_callback_sees_warmup_then_the_eps_ramp(trained):
    _, _, progress = trained
    assert [p.epoch for p in progress] == list(range(1, 61))
    assert [p.phase for p in progress] == ["warm-up"] * 3 + ["ibp"] * 57  # default warm-up: epochs // 20
    eps = [p.eps for p in progress]
    assert eps[2] == 0.0 and 0.0 < eps[3] < 0.05 and eps == sorted(eps) and eps[-1] == 0.05


def test_weights_load_back_into_the_built_model(trained, export_path, digits_small):
    report, out_dir, _ = trained
    export = read_export(export_path)
    model = build_exported_model(export)
    model.load_state_dict(load_file(str(out_dir / "weights.safetensors")))
    for name, mask in export.genome.masks.items():
        assert torch.all(model.get_submodule(name).weight[torch.from_numpy(~mask)] == 0)
    x = digits_small.test.x[:16]
    with torch.no_grad():
        assert torch.equal(model.eval()(x), report.model(x))
        assert torch.equal(load_final_model(out_dir, export)(x), report.model(x))


def test_existing_report_and_unknown_settings_are_refused_before_training(trained, export_path):
    _, out_dir, _ = trained
    with pytest.raises(ConfigError, match="already exists"):
        train_exported(export_path, out_dir)
    with pytest.raises(ConfigError, match="no setting 'epoch'"):
        train_exported(export_path, out_dir, epoch=3)
    with pytest.raises(ConfigError, match="warmup_epochs"):
        train_final(read_export(export_path), epochs=2, warmup_epochs=2)


# --------------------------------------------------------------------------- from trained weights


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory, digits_small):
    """A 70 %-sparse candidate that kept its trained weights: the export carries them."""
    return _exported_run(tmp_path_factory.mktemp("trained"), digits_small, 0.7, 4, keep_weights=True, epochs=6)


def test_export_carries_the_trained_weights(trained_export):
    json_path, evaluation = trained_export
    export = read_export(json_path)
    assert export.manifest["trained_weights"] == sorted(evaluation.weights)
    for name, value in evaluation.weights.items():
        np.testing.assert_array_equal(export.trained_weights[name], value.numpy())
    model = build_exported_model(export, trained=True)
    for name, value in model.state_dict().items():
        assert torch.equal(value, evaluation.weights[name])


def test_fine_tuning_starts_from_the_trained_weights(trained_export, digits_small):
    """With a vanishing learning rate the fine-tuned network is the exported one: its test
    certificate equals certifying the exported weights directly."""
    from certevo.evaluators.bounds import bound_module
    from certevo.evaluators.certification import certify

    json_path, _ = trained_export
    export = read_export(json_path)
    report = train_final(export, epochs=1, lr=1e-12, pgd_steps=5, pgd_restarts=1)
    assert report.start == "trained" and report.warmup_epochs == 0 and report.settings["ramp_fraction"] == 0.0
    model = build_exported_model(export, trained=True)
    settings = CertificationSettings(method="ibp", eps=0.05, ibp_first=False)
    direct = certify(model, bound_module(model, digits_small.input_shape), digits_small.test, settings,
                     num_classes=digits_small.num_classes, seed=0)
    assert report.certified_accuracy_ibp == direct.certified_accuracy
    fresh = build_exported_model(export, seed=1)
    untrained = certify(fresh, bound_module(fresh, digits_small.input_shape), digits_small.test, settings,
                        num_classes=digits_small.num_classes, seed=0)
    assert report.certified_accuracy_ibp > untrained.certified_accuracy + 0.05  # it did start from trained weights


def test_fine_tuned_accuracies_are_ordered_as_soundness_requires(trained_export):
    json_path, _ = trained_export
    report = train_final(read_export(json_path), epochs=4, pgd_steps=10, pgd_restarts=2)
    assert report.start == "trained"
    assert report.certified_accuracy <= report.pgd_accuracy <= report.clean_accuracy
    assert max(report.certified_accuracy_ibp, report.certified_accuracy_crown or 0.0) <= report.certified_accuracy
    sparsity, _ = report.sparsity, report.layer_sparsity
    assert sparsity == read_export(json_path).genome.sparsity


def test_start_is_chosen_and_refused_clearly(trained_export, export_path):
    json_path, _ = trained_export
    assert train_final(read_export(json_path), epochs=1, from_trained=False, pgd_steps=2).start == "scratch"
    with pytest.raises(ConfigError, match="--from-scratch"):
        train_final(read_export(export_path), epochs=1, from_trained=True)
    assert train_final(read_export(export_path), epochs=1, pgd_steps=2).start == "scratch"


def test_weights_that_leak_through_the_mask_are_refused(trained_export, tmp_path):
    from certevo.population.errors import CheckpointError
    from certevo.population.export import write_export

    json_path, evaluation = trained_export
    export = read_export(json_path)
    leaky = {k: v.numpy().copy() for k, v in evaluation.weights.items()}
    leaky["fc0.weight"][~export.genome.masks["fc0"]] = 0.5
    fields = {k: export.manifest[k] for k in ("model", "fitness", "eps", "data", "config_digest", "lineage")}
    with pytest.raises(CheckpointError, match="non-zero where the mask prunes"):
        write_export(tmp_path / "leaky", export.genome, fields, trained_weights=leaky)
