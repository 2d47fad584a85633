"""Every input a user can give (YAML value, CLI argument, data file, run-directory file,
export file) either works or fails with a CertevoError naming the field, the value and the
fix: never a traceback, never silently accepted. Walks the classes of issue 11."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certevo.evaluators.data import load_dataset
from certevo.population.errors import CheckpointError, ConfigError, DataError
from certevo.population.export import read_export
from certevo.search.cli import main
from certevo.search.config import _SECTIONS, SearchConfig, config_from_dict, load_config
from certevo.search.loop import Search
from certevo.search.run_directory import open_run

from conftest import tiny
from tests.test_data import write_pair

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


# --------------------------------------------------------------------------- helpers


def cli_error(capsys, *argv: str) -> str:
    """Run ``certevo argv`` in-process; it must fail with exit code 2 and one clean
    ``certevo: error:`` message (an exception escaping main would be a traceback)."""
    capsys.readouterr()
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("certevo: error: ") and "Traceback" not in err, err
    return err


def scalars():
    return st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                     st.text(max_size=6), st.binary(max_size=3),
                     st.sampled_from(["relu", "digits", "npz", "mlp", "cnn", "nsga2", "cpu", "erk", "ibp", "crown",
                                      "~/x", "kstarts"]))


def values():
    return st.recursive(scalars(), lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), inner, max_size=3)),
        max_leaves=6)


def section(cls):
    keys = [f.name for f in dataclasses.fields(cls)] + ["bogus"]
    return st.dictionaries(st.sampled_from(keys), values(), max_size=4)


CONFIGS = st.one_of(
    st.fixed_dictionaries({}, optional={**{name: st.one_of(section(cls), values()) for name, cls in _SECTIONS.items()},
                                        "run_dir": values()}),
    values(),
)


def assert_usable(config: SearchConfig) -> None:
    """A config the loader accepted round-trips, hashes and builds its model (for 8x8
    digits); the only later refusal allowed is a model too deep for the data's size."""
    assert isinstance(config, SearchConfig)
    assert config_from_dict(config.to_dict()) == config and len(config.digest()) == 12
    try:
        config.model.template((1, 8, 8), 10).layer_shapes()
    except ConfigError as exc:
        assert "model.channels" in str(exc), str(exc)


def assert_names_a_field(exc: ConfigError, given) -> None:
    message = str(exc)
    assert "got" in message, message  # the value received
    if isinstance(given, dict) and given:
        assert any(str(key) in message for key in given), message
    else:
        assert "configuration" in message, message


# --------------------------------------------------------------------------- the config loader, fuzzed


@FUZZ
@given(CONFIGS)
def test_fuzzed_config_mappings_load_or_name_the_field(given_values):
    try:
        config = config_from_dict(given_values)
    except ConfigError as exc:
        assert_names_a_field(exc, given_values)
        return
    assert_usable(config)


@FUZZ
@given(st.sampled_from(sorted(f"{name}.{f.name}" for name, cls in _SECTIONS.items() for f in dataclasses.fields(cls))),
       values())
def test_fuzzed_set_overrides_load_or_name_the_key(key, value):
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip().removesuffix("...").strip()
    try:
        config = load_config(None, [f"{key}={text}"])
    except ConfigError as exc:
        assert key.split(".")[0] in str(exc), str(exc)
        return
    assert_usable(config)


@FUZZ
@given(st.one_of(st.binary(max_size=40), st.text(max_size=40).map(str.encode)))
def test_fuzzed_config_files_load_or_fail_cleanly(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_bytes(blob)
    try:
        config = load_config(path)
    except ConfigError as exc:
        assert str(path) in str(exc) or "got" in str(exc), str(exc)
        return
    assert_usable(config)


@pytest.mark.parametrize("values, field, value_text, fix_text", [
    ({"model": {"widths": 64}}, "model.widths", "64", "[64, 64]"),
    ({"model": {"kind": "transformer"}}, "model.kind", "'transformer'", "mlp, cnn"),
    ({"model": {"channels": [8]}}, "model.channels", "(8,)", "kind: cnn"),
    ({"search": {"seed": True}}, "search.seed", "True", "e.g. 0"),
    ({"search": {"population_size": True}}, "search.population_size", "True", "e.g. 4"),
    ({"search": {"evaluation_budget": True}}, "search.evaluation_budget", "True", "e.g. 100"),
    ({"search": {"extra_objectives": "clean_accuracy"}}, "search.extra_objectives", "'clean_accuracy'", "[clean_accuracy]"),
    ({"genome": {"sparsities": 0.5}}, "genome.sparsities", "0.5", "[0.5, 0.9, 0.98]"),
    ({"genome": {"min_sparsity": "low"}}, "genome.min_sparsity", "'low'", "0.3"),
    ({"genome": {"per_neuron": "yes"}}, "genome.per_neuron", "'yes'", "true"),
    ({"data": {"seed": True}}, "data.seed", "True", "e.g. 0"),
    ({"data": {"name": "mnist"}}, "data.path", "None", "directory of IDX files"),
    ({"data": {"path": "/data"}}, "data.path", "'/data'", "remove data.path"),
    ({"data": {"subset": 0}}, "data.subset", "0", "1000"),
    ({"data": {"val_fraction": 0.6, "test_fraction": 0.5}}, "data.val_fraction + data.test_fraction", "1.1", "0.2"),
    ({"training": {"lr": True}}, "training.lr", "True", "0.005"),
    ({"certification": {"pgd": "no"}}, "certification.pgd", "'no'", "true"),
    ({"cluster": {"actors": True}}, "cluster.actors", "True", "null uses every CPU"),
    ({"cluster": {"address": 6379}}, "cluster.address", "6379", "HOST:PORT"),
    ({1: {}}, "1", "{}", "the sections are"),
    (["search"], "configuration", "['search']", "section: {key: value}"),
])
def test_wrong_types_name_field_value_and_fix(values, field, value_text, fix_text):
    with pytest.raises(ConfigError) as info:
        config_from_dict(values)
    message = str(info.value)
    assert field in message and value_text in message and fix_text in message, message


@pytest.mark.parametrize("content, problem", [
    (b"- data\n- model\n", "got a list"),
    (b"just a string\n", "got a str"),
    (b"42\n", "got a int"),
    (b"\x00\xff\xfe\x81 binary", "not UTF-8 text"),
    (b"search: [1, 2\n", "not valid YAML"),
])
def test_config_file_that_is_not_a_mapping(tmp_path, content, problem):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=problem) as info:
        load_config(path)
    assert str(path) in str(info.value) and "pass a YAML file" in str(info.value)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


# --------------------------------------------------------------------------- data files


def _npz(tmp_path: Path, labels, name: str = "d.npz") -> Path:
    labels = np.asarray(labels)
    file = tmp_path / name
    np.savez(file, x=np.random.default_rng(0).random((len(labels), 4, 4), dtype=np.float32), y=labels)
    return file


def test_npy_csv_and_directory_given_as_npz(tmp_path):
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((9, 4)))
    with pytest.raises(DataError, match=r"x\.npy.*is a \.npy file.*numpy\.savez\(path, x=images, y=labels\)"):
        load_dataset("npz", npy)
    csv = tmp_path / "d.csv"
    csv.write_text("label,p0\n0,0.5\n")
    with pytest.raises(DataError, match=r"d\.csv.*not a zip header.*numpy\.savez"):
        load_dataset("npz", csv)
    with pytest.raises(DataError, match=r"is a directory.*data\.name: mnist"):
        load_dataset("npz", tmp_path)


def test_one_class_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"every sample has label 3, so there is one class.*at least two"):
        load_dataset("npz", _npz(tmp_path, [3] * 9))
    images = np.zeros((9, 4, 4), np.uint8)
    write_pair(tmp_path / "idx", "train", images, np.zeros(9, np.uint8), gz=False)
    with pytest.raises(DataError, match="one class"):
        load_dataset("mnist", tmp_path / "idx")


def test_an_outlier_label_does_not_make_a_bigger_model(tmp_path):
    labels = np.concatenate([np.repeat(np.arange(10), 3), [1000, 1000, 1000]])
    with pytest.raises(DataError, match=r"1001-class model.*classes 10, 11, .* have no samples.*return_inverse") as info:
        load_dataset("npz", _npz(tmp_path, labels))
    assert "and 982 more" in str(info.value)
    write_pair(tmp_path / "idx", "train", np.zeros(12, np.uint8).reshape(12, 1, 1).repeat(4, 1).repeat(4, 2),
               np.array([0, 1, 2, 200] * 3, np.uint8), gz=True)
    with pytest.raises(DataError, match="201-class model"):
        load_dataset("mnist", tmp_path / "idx")


def test_tilde_in_data_paths_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _npz(tmp_path, np.arange(12) % 3)
    assert load_dataset("npz", "~/d.npz").num_classes == 3
    write_pair(tmp_path / "data" / "mnist", "t10k", np.zeros((12, 4, 4), np.uint8), np.arange(12) % 2, gz=True)
    assert load_dataset("mnist", "~/data/mnist").num_classes == 2
    config = load_config(None, ["data.name=npz", "data.path=~/d.npz"])
    assert config.data.load().num_classes == 3


# --------------------------------------------------------------------------- the CLI: refused before anything starts


def test_launch_into_a_file_or_under_one(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    err = cli_error(capsys, "launch", "--run-dir", str(afile))
    assert f"run directory {afile} is an existing file" in err and "runs/my-search" in err
    err = cli_error(capsys, "launch", "--run-dir", str(afile / "sub"))
    assert f"{afile} is a file, not a directory" in err
    assert afile.read_text() == "not a directory"


def test_tilde_in_cli_paths_is_expanded(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "afile").write_text("x")
    err = cli_error(capsys, "launch", "--run-dir=~/afile")
    assert f"run directory {tmp_path / 'afile'} is an existing file" in err
    (tmp_path / "c.yaml").write_text("search: {seed: true}\n")
    err = cli_error(capsys, "launch", "~/c.yaml", "--run-dir", str(tmp_path / "r"))
    assert "search.seed must be a non-negative integer; got True" in err


@pytest.mark.parametrize("overrides, expected", [
    (["model.widths=64"], "model.widths must be a list of positive integers (one per layer); got 64; e.g. [64, 64]"),
    (["search.seed=true"], "search.seed must be a non-negative integer; got True; e.g. 0"),
    (["data.name=npz", "data.path=DIR/x.npy"], "x.npy' is a .npy file (one array), not a .npz archive"),
    (["data.name=npz", "data.path=DIR/one.npz"], "so there is one class"),
])
def test_launch_refuses_bad_settings_and_leaves_nothing(capsys, tmp_path, overrides, expected):
    np.save(tmp_path / "x.npy", np.zeros((9, 4)))
    _npz(tmp_path, [1] * 9, "one.npz")
    run_dir = tmp_path / "run"
    args = [a for o in overrides for a in ("--set", o.replace("DIR", str(tmp_path)))]
    err = cli_error(capsys, "launch", *args, "--run-dir", str(run_dir))
    assert expected in err
    assert not run_dir.exists()  # the retry is a plain launch again


@pytest.mark.parametrize("uri, expected", [
    ("foo://bar", "scheme 'foo', for which MLflow has no tracking store"),
    ("s3://bucket/mlflow", "scheme 's3'"),
    ("sqlite:///AFILE/mlflow.db", "the SQLite database AFILE/mlflow.db cannot be written: AFILE is a file"),
    ("sqlite:///DIR", "is a directory"),
])
def test_unusable_tracking_uri_fails_fast_before_the_run_directory(capsys, tmp_path, uri, expected):
    afile = tmp_path / "afile"
    afile.write_text("x")
    uri = uri.replace("AFILE", str(afile)).replace("DIR", str(tmp_path))
    started = time.monotonic()
    err = cli_error(capsys, "launch", "--run-dir", str(tmp_path / "run"), "--tracking-uri", uri)
    assert expected.replace("AFILE", str(afile)) in err and "--tracking-uri" in err
    assert "sqlite://" in err or "pass a" in err  # the fix
    assert time.monotonic() - started < 30  # not minutes of MLflow retries
    assert not (tmp_path / "run").exists()


def test_supported_tracking_uris_pass_with_tilde_expanded(tmp_path, monkeypatch):
    from certevo.search.input_checks import check_tracking_uri

    monkeypatch.setenv("HOME", str(tmp_path))
    assert check_tracking_uri("sqlite:///~/m.db") == f"sqlite:///{tmp_path}/m.db"
    assert check_tracking_uri("~/mlruns") == f"{tmp_path}/mlruns"
    for uri in ("http://127.0.0.1:5000", "https://mlflow.example", "databricks", "postgresql+psycopg2://u@h/db",
                "mysql://u@h/db", f"file://{tmp_path}/store"):
        assert check_tracking_uri(uri) == uri


def test_tune_refuses_a_zero_budget_and_a_file_as_run_dir(capsys, tmp_path):
    err = cli_error(capsys, "tune", "--trials", "1", "--budget", "0", "--run-dir", str(tmp_path / "t"))
    assert "--budget must be a positive number of evaluations per trial; got 0; e.g. 40" in err
    assert not (tmp_path / "t").exists()
    (tmp_path / "afile").write_text("x")
    err = cli_error(capsys, "tune", "--trials", "1", "--run-dir", str(tmp_path / "afile"))
    assert "is an existing file, not a directory" in err


def test_evaluate_refuses_zero_threads(capsys):
    err = cli_error(capsys, "evaluate", "--threads", "0")
    assert "--threads must be a positive integer; got 0" in err


# --------------------------------------------------------------------------- run-directory files


@pytest.mark.parametrize("content, problem", [
    (b"- a\n- b\n", "got a list"),
    (b"a string\n", "got a str"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8 text"),
    (b"search: {seed: [\n", "not valid YAML"),
    (b"search: {seed: -3}\n", "search.seed must be a non-negative integer; got -3"),
])
def test_damaged_run_config_yaml(capsys, tmp_path, content, problem):
    (tmp_path / "config.yaml").write_bytes(content)
    for read in (open_run, Search.resume):
        with pytest.raises(CheckpointError, match=problem) as info:
            read(tmp_path)
        assert "config.yaml" in str(info.value) and "restore config.yaml" in str(info.value)
    for command in (["inspect", str(tmp_path)], ["resume", str(tmp_path)],
                    ["export", str(tmp_path), "--knee", "-o", str(tmp_path / "e")]):
        assert problem.split(";")[0] in cli_error(capsys, *command)
    assert (tmp_path / "config.yaml").read_bytes() == content


@pytest.fixture(scope="module")
def finished(ray_session, tmp_path_factory) -> Path:
    """A tiny search that ran to generation 1."""
    run_dir = tmp_path_factory.mktemp("inputs") / "run"
    Search.create(tiny("training.epochs=1", "search.generations=1", "search.kstarts=1"), run_dir).run()
    return run_dir


def test_resume_to_a_target_already_reached_is_refused_and_changes_nothing(capsys, finished):
    before = (finished / "config.yaml").read_bytes()
    evaluations = json.loads((finished / "front.json").read_text())["evaluations"]
    err = cli_error(capsys, "resume", str(finished), "--generations", "1")
    assert "reached generation 1" in err and "pass --generations 2 or more" in err
    err = cli_error(capsys, "resume", str(finished), "--generations", "0")
    assert "pass --generations 2 or more" in err
    err = cli_error(capsys, "resume", str(finished), "--evaluation-budget", str(evaluations))
    assert f"{evaluations} evaluations" in err and f"--evaluation-budget {evaluations + 1} or more" in err
    assert (finished / "config.yaml").read_bytes() == before


def test_output_paths_that_cannot_be_written(capsys, finished, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    err = cli_error(capsys, "inspect", str(finished), "--plot", str(afile / "front.png"))
    assert f"--plot {afile / 'front.png'} cannot be written: {afile} is a file" in err
    err = cli_error(capsys, "inspect", str(finished), "--plot", str(tmp_path))
    assert "is a directory; pass a file name" in err
    err = cli_error(capsys, "export", str(finished), "--knee", "-o", str(afile / "best"))
    assert f"--output {afile / 'best'} cannot be written: {afile} is a file" in err


def test_export_and_inspect_expand_tilde_and_make_missing_directories(capsys, finished, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["export", str(finished), "--knee", "-o", "~/new/dir/best"]) == 0
    assert (tmp_path / "new" / "dir" / "best.json").is_file()
    assert read_export("~/new/dir/best").candidate_id
    assert main(["inspect", str(finished), "--plot", "~/plots/front.png"]) == 0
    assert (tmp_path / "plots" / "front.png").is_file()


# --------------------------------------------------------------------------- export files


@pytest.fixture(scope="module")
def exported(finished) -> Path:
    from certevo.search.candidate_export import export_candidate

    json_path, _ = export_candidate(finished, finished.parent / "export" / "best", knee=True)
    return json_path


@pytest.mark.parametrize("damage, expected", [
    (lambda m: m.update(model=[1, 2]), "model is [1, 2]"),
    (lambda m: m["model"].update(input_shape="28x28"), "model.input_shape is '28x28'"),
    (lambda m: m["model"].update(num_classes=True), "model.num_classes is True"),
    (lambda m: m.update(eps={"certification": "0.1", "training": 0.1}), "eps is"),
    (lambda m: m.update(data=None), "data is None"),
    (lambda m: m.update(genome=["not", "a", "mapping"]), "genome manifest must be a JSON object"),
    (lambda m: m["genome"].update(layers=["fc0"]), "does not describe its masks"),
    (lambda m: m.update(trained_weights=0), "lists trained weights 0"),
])
def test_damaged_export_manifest(capsys, exported, tmp_path, damage, expected):
    manifest = json.loads(exported.read_text())
    damage(manifest)
    copy = tmp_path / "best.json"
    copy.write_text(json.dumps(manifest))
    (tmp_path / "best.safetensors").write_bytes(exported.with_suffix(".safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="export") as info:
        read_export(copy)
    assert expected in str(info.value) and "export the candidate again" in str(info.value)
    assert expected in cli_error(capsys, "train", str(copy), "--epochs", "1")


@pytest.mark.parametrize("content", [b"\xff\xfe binary", b"[1, 2]", b'"text"', b"{"])
def test_export_manifest_that_is_not_an_export(capsys, exported, tmp_path, content):
    copy = tmp_path / "best.json"
    copy.write_bytes(content)
    with pytest.raises(CheckpointError):
        read_export(copy)
    assert str(copy) in cli_error(capsys, "train", str(copy))


def test_train_refuses_a_negative_seed(capsys, exported, tmp_path):
    err = cli_error(capsys, "train", str(exported), "--seed", "-1", "-o", str(tmp_path / "t"))
    assert "seed must be a non-negative integer; got -1" in err
    assert not (tmp_path / "t").exists()



def test_scientific_notation_is_a_number_in_files_and_in_set(tmp_path):
    """`lr: 1e-3` is what people write; PyYAML alone (YAML 1.1) reads it as a string."""
    path = tmp_path / "config.yaml"
    path.write_text("training:\n  lr: 1e-3\ncertification:\n  eps: 5E-2\n")
    config = load_config(path, ["training.eps=2e-2"])
    assert config.training.lr == pytest.approx(1e-3)
    assert config.certification.eps == pytest.approx(5e-2)
    assert config.training.eps == pytest.approx(2e-2)
    assert load_config(None, ["data.name=digits"]).data.name == "digits"  # words stay words
