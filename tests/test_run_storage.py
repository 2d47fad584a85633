"""Run directories on shared storage (search/run_storage.py): URIs, staging, the mirror,
and real tiny searches launched into and resumed from a remote (fsspec ``memory://``) URI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
import yaml

from certevo.population.errors import CheckpointError, ConfigError
from certevo.search.run_storage import RunStorage, is_remote, staging_dir
from conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]
# The tiny search, 2 generations, children trained 5 epochs (the default), certified with IBP:
# the cheapest real certification, as these tests are about storage.
RUN = ("search.generations=2", "search.inherit_epochs=5", "certification.method=ibp")


@pytest.fixture
def memory_uri(request):
    """A fresh directory on fsspec's in-process memory filesystem, removed afterwards."""
    uri = f"memory://certevo-tests/{request.node.name}"
    fs = fsspec.filesystem("memory")
    yield uri
    if fs.exists(uri):
        fs.rm(uri, recursive=True)


def _remote_tree(uri: str) -> dict[str, bytes]:
    fs, root = fsspec.core.url_to_fs(uri)
    return {p[len(root.rstrip("/")) + 1:]: fs.cat_file(p) for p in fs.find(root)}


def _local_tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


# -- URIs and staging ----------------------------------------------------------------


def test_local_paths_and_file_uris_are_used_in_place(tmp_path):
    assert not is_remote("runs/x") and not is_remote(str(tmp_path)) and not is_remote(tmp_path.as_uri())
    assert is_remote("s3://bucket/run") and is_remote("memory://run") and is_remote("simplecache::s3://bucket/run")
    with RunStorage(tmp_path / "a") as local, RunStorage((tmp_path / "b").as_uri()) as by_uri:
        assert not local.remote and local.local_dir == tmp_path / "a" and local.observers() == []
        assert not by_uri.remote and by_uri.local_dir == tmp_path / "b"


def test_staging_is_deterministic_per_uri(tmp_path, monkeypatch):
    a, b = staging_dir("s3://bucket/runs/exp-1", tmp_path), staging_dir("s3://bucket/runs/exp-1/", tmp_path)
    assert a == b and a.parent == tmp_path and a.name.startswith("exp-1-")
    assert staging_dir("s3://bucket/runs/exp-2", tmp_path) != a
    monkeypatch.delenv("CERTEVO_STAGING_DIR", raising=False)
    default = staging_dir("s3://bucket/runs/exp-1")  # not under $HOME: the same path on every machine
    assert default.parent.name == "runs" and default.parent.parent.name.startswith("certevo-")
    monkeypatch.setenv("CERTEVO_STAGING_DIR", str(tmp_path / "root"))
    assert staging_dir("s3://bucket/runs/exp-1").parent == tmp_path / "root"


def test_unknown_scheme_names_the_uri_and_the_fix():
    with pytest.raises(ConfigError) as info:
        RunStorage("nosuchfs://bucket/run")
    message = str(info.value)
    assert "nosuchfs://bucket/run" in message and "memory://" in message and "s3://" in message


def test_resume_from_an_empty_uri_refuses(memory_uri, tmp_path):
    with RunStorage(memory_uri, staging_root=tmp_path) as storage, pytest.raises(CheckpointError) as info:
        storage.prepare_resume()
    assert memory_uri in str(info.value) and "not a certevo run directory" in str(info.value)


def test_one_process_per_staging_directory(memory_uri, tmp_path):
    with RunStorage(memory_uri, staging_root=tmp_path):
        with pytest.raises(ConfigError, match="another certevo process"):
            RunStorage(memory_uri, staging_root=tmp_path)
    RunStorage(memory_uri, staging_root=tmp_path).close()  # released on close


# -- the mirror ------------------------------------------------------------------------


def test_sync_uploads_changes_only_and_deletes_only_what_it_synced(memory_uri, tmp_path):
    fs, root = fsspec.core.url_to_fs(memory_uri)
    fs.pipe(f"{root}/NOTES.txt", b"a file the user put there")
    with RunStorage(memory_uri, staging_root=tmp_path) as storage:
        storage.prepare_launch()
        run = storage.local_dir
        (run / "checkpoint").mkdir()
        (run / "config.yaml").write_text("search: {}\n")
        (run / "checkpoint" / "arrays-0000000000000000.safetensors").write_bytes(b"old")
        (run / "checkpoint" / "state.json").write_text("{}")
        (run / "checkpoint" / ".certevo-tmp-x-state.json").write_text("being written")
        assert storage.sync() == 3
        assert storage.sync() == 0  # nothing changed
        (run / "checkpoint" / "arrays-0000000000000000.safetensors").unlink()
        (run / "checkpoint" / "arrays-1111111111111111.safetensors").write_bytes(b"new")
        (run / "checkpoint" / "state.json").write_text('{"generation": 1}')
        assert storage.sync() == 2
        remote = _remote_tree(memory_uri)
        assert json.loads(remote.pop(".certevo-lock.json"))["pid"] == os.getpid()  # this driver's lock, held
        assert remote == {"NOTES.txt": b"a file the user put there", "config.yaml": b"search: {}\n",
                          "checkpoint/arrays-1111111111111111.safetensors": b"new",
                          "checkpoint/state.json": b'{"generation": 1}'}
        with pytest.raises(ConfigError, match="already holds a search") as info:
            storage.prepare_launch()
        assert f"certevo resume {memory_uri}" in str(info.value)
    with RunStorage(memory_uri, staging_root=tmp_path / "other-machine") as elsewhere:
        elsewhere.prepare_resume()
        assert _local_tree(elsewhere.local_dir) == remote
        assert elsewhere.sync() == 0  # a fresh download is in sync


# -- real searches -------------------------------------------------------------------


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(*RUN)))
    return path


@pytest.fixture(scope="module")
def uninterrupted(config_file, tmp_path_factory, ray_session) -> tuple[list, Path]:
    """The front of the tiny search (K-starts + one generation) run in one go in a local
    directory, and that directory."""
    from certevo.search.config import load_config
    from certevo.search.loop import Search

    config = load_config(str(config_file), ["search.generations=1"])
    result = Search.create(config, tmp_path_factory.mktemp("plain") / "run").run()
    return sorted([c.id, c.record.sparsity, c.record.certified_accuracy] for c in result.front), result.run_dir


def test_cli_refuses_a_second_launch_into_a_file_uri(config_file, uninterrupted, capsys):
    from certevo.search.cli import main

    uri = uninterrupted[1].resolve().as_uri()
    assert main(["launch", str(config_file), "--run-dir", uri]) == 2
    err = capsys.readouterr().err
    assert "already holds a search" in err and "certevo resume" in err


def test_cli_names_a_bad_uri_and_the_fix(config_file, capsys):
    from certevo.search.cli import main

    assert main(["launch", str(config_file), "--run-dir", "nosuchfs://bucket/run"]) == 2
    assert main(["resume", "nosuchfs://bucket/run"]) == 2
    err = capsys.readouterr().err
    assert err.count("run directory 'nosuchfs://bucket/run'") == 2 and "s3://" in err and "Traceback" not in err


CLI_SCRIPT = r"""
import json, os, sys
import fsspec
from certevo.search.cli import main
from certevo.search.run_storage import RunStorage

config, uri, address, second_machine = sys.argv[1:5]
fs, root = fsspec.core.url_to_fs(uri)
remote = lambda: sorted(p[len(root) + 1:] for p in fs.find(root))
staged = lambda: sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
stage = RunStorage(uri).local_dir  # only to know where the CLI stages (takes and frees the lock)
out = {"launch": main(["launch", config, "--run-dir", uri, "--set", "search.generations=0", "--address", address])}
out["staged after launch"], out["remote after launch"] = staged(), remote()
out["run after launch"] = json.loads(fs.cat_file(f"{root}/mlflow_run.json"))
out["second launch"] = main(["launch", config, "--run-dir", uri])
os.environ["CERTEVO_STAGING_DIR"] = second_machine  # resume as if on another machine: nothing staged there
stage = RunStorage(uri).local_dir
out["resume"] = main(["resume", uri, "--generations", "1"])
out["staged after resume"], out["remote after resume"] = staged(), remote()
out["files"] = {p: fs.cat_file(f"{root}/{p}").decode("utf-8", "replace") for p in remote() if not p.endswith(".db")}
print("RESULT " + json.dumps(out))
"""


def test_cli_launch_into_a_uri_then_resume_from_it_elsewhere(config_file, uninterrupted, tmp_path):
    import ray

    uri = "memory://bucket/certevo/run-1"
    address = ray.get_runtime_context().gcs_address  # join the session's Ray: starting one costs seconds
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", COLUMNS="200", CERTEVO_STAGING_DIR=str(tmp_path / "first"))
    out = subprocess.run([sys.executable, "-c", CLI_SCRIPT, str(config_file), uri, address, str(tmp_path / "second")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert [result["launch"], result["second launch"], result["resume"]] == [0, 2, 0], out.stderr[-3000:]
    assert f"run directory {uri} already holds a search" in out.stderr and f"certevo resume {uri}" in out.stderr
    assert f"certevo resume {uri} --generations" in out.stderr  # the hint names the URI, not the staging
    for when in ("after launch", "after resume"):  # every file the search wrote landed remotely
        assert result[f"staged {when}"] == result[f"remote {when}"]
        for name in ("config.yaml", "front.json", "evaluations.jsonl", "checkpoint/state.json", "mlflow.db",
                     "mlflow_run.json"):
            assert name in result[f"remote {when}"], (when, name)
    files = result["files"]
    front = json.loads(files["front.json"])
    assert front["generations"] == 1
    resumed = sorted([r["id"], r["sparsity"], r["certified_accuracy"]] for r in front["front"])
    assert resumed == uninterrupted[0]
    state = json.loads(files["checkpoint/state.json"])
    arrays = [p for p in files if p.startswith("checkpoint/arrays-")]
    assert arrays == [f"checkpoint/{state['arrays_file']}"]  # the old checkpoint's arrays were removed remotely
    assert len({json.loads(line)["id"] for line in files["evaluations.jsonl"].splitlines()}) == front["evaluations"]
    # MLflow: the resume reopened the launch's parent run from the downloaded SQLite store
    run = json.loads(files["mlflow_run.json"])
    assert run["run_id"] == result["run after launch"]["run_id"]
    assert run["tracking_uri"].startswith(f"sqlite:///{tmp_path / 'second'}")
    assert "could not be logged" not in out.stderr, out.stderr[-3000:]
