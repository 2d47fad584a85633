"""How a search stops when the world intervenes, as a user meets it: SIGTERM (kill,
Kubernetes, `ray job stop`) stops like Ctrl-C; a full disk stops with a message and loses
nothing journaled, and the tracking store still works once space is freed; a launch that
fails before doing any work leaves nothing behind that blocks running it again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config
from test_cli import ROOT, certevo_exe, run

from certevo.evaluators.device import cuda_available


def _launch(config_file: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", COLUMNS="200")
    return subprocess.Popen([certevo_exe(), "launch", str(config_file), "--run-dir", str(run_dir), *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not (run_dir / "checkpoint" / "state.json").is_file():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.1)


def _no_crash(err: str) -> None:
    for sign in ("Traceback", "Fatal Python error", "SIGABRT", "*** SIG", "Aborted"):
        assert sign not in err, err[-3000:]


def _parent_runs(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments])
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config("search.generations=2")))
    return path


def test_sigterm_stops_like_ctrl_c_and_the_search_resumes(config_file, tmp_path):
    run_dir = tmp_path / "terminated"
    proc = _launch(config_file, run_dir, "--set", "search.generations=6")
    _wait_for_checkpoint(proc, run_dir)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    _no_crash(err)
    assert "terminated (SIGTERM)" in err and f"certevo resume {run_dir}" in err
    assert not (run_dir / "front.json").exists()  # it stopped before the end
    parents = _parent_runs(f"sqlite:///{run_dir / 'mlflow.db'}")
    assert [r.info.status for r in parents] == ["KILLED"]  # stopped on purpose, not FAILED
    out = run("resume", str(run_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run_dir / "front.json").read_text())["generations"] == 6
    assert [r.info.status for r in _parent_runs(f"sqlite:///{run_dir / 'mlflow.db'}")] == ["FINISHED"]


@pytest.mark.parametrize("failure", ["unreadable data file", "a GPU this machine lacks", "no Ray at the address"])
def test_a_launch_that_did_no_work_leaves_nothing_that_blocks_the_retry(config_file, tmp_path, failure):
    run_dir = tmp_path / "first-try"
    if failure == "unreadable data file":
        bad = tmp_path / "digits.npz"
        bad.write_bytes(b"this is not an npz archive")
        args = ["--set", "data.name=npz", "--set", f"data.path={bad}"]
    elif failure == "no Ray at the address":  # Ray itself would retry it for many minutes
        args = ["--address", "127.0.0.1:1"]
    else:  # found once Ray is up, after the run directory was created
        if cuda_available():
            pytest.skip("this machine has a GPU: cluster.device=cuda does not fail here")
        args = ["--set", "cluster.device=cuda"]
    out = run("launch", str(config_file), "--run-dir", str(run_dir), *args, timeout=180)
    assert out.returncode == 2, out.stderr[-3000:]
    _no_crash(out.stderr)
    assert "run the same launch again" in out.stderr
    assert not run_dir.exists()
    out = run("launch", str(config_file), "--run-dir", str(run_dir), "--set", "search.generations=1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run_dir / "front.json").is_file()


# --------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A real file system of its own (tmpfs), so the disk can fill up and be grown again."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"a full disk needs a file system of its own: cannot mount a tmpfs here ({exc}); run as root")

    def resize(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True, capture_output=True)

    yield mount, resize
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(directory: Path) -> Path:
    """Write a file until the disk is full; returns it (delete it to free the space)."""
    filler = directory / f"filler-{uuid.uuid4().hex}"
    block = b"\0" * (1 << 16)
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(block)
                handle.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_stops_the_search_with_a_message_and_loses_nothing(config_file, small_disk):
    mount, _ = small_disk
    run_dir = mount / "run"
    proc = _launch(config_file, run_dir, "--set", "search.generations=6")
    _wait_for_checkpoint(proc, run_dir)
    filler = _fill(mount)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]
    _no_crash(err)
    assert "no space left on the device" in err and "MiB free" in err and f"certevo resume {run_dir}" in err
    journal = (run_dir / "evaluations.jsonl").read_bytes()
    kept = [json.loads(line)["id"] for line in journal.splitlines() if line.endswith(b"}")]
    filler.unlink()
    out = run("resume", str(run_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run_dir / "front.json").read_text())["generations"] == 6
    # Nothing journaled before the disk filled was lost or evaluated again.
    after = [json.loads(line)["id"] for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    assert after[: len(kept)] == kept and len(set(after)) == len(after)
    assert [r.info.status for r in _parent_runs(f"sqlite:///{run_dir / 'mlflow.db'}")] == ["FINISHED"]


def test_a_tracking_store_created_on_a_full_disk_works_once_space_is_freed(config_file, small_disk, tmp_path):
    mount, resize = small_disk
    resize("160k")  # too small for MLflow's tables: creating the store fails half-way
    uri = f"sqlite:///{mount / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    out = run("launch", str(config_file), "--run-dir", str(run_dir), "--tracking-uri", uri,
              "--set", "search.generations=1")
    assert out.returncode == 0, out.stderr[-3000:]  # tracking failures do not stop a search
    _no_crash(out.stderr)
    assert "could not" in out.stderr  # ...but the user is told what was not logged
    resize("64m")
    out = run("resume", str(run_dir), "--generations", "2", "--tracking-uri", uri)
    assert out.returncode == 0, out.stderr[-3000:]
    assert [r.info.status for r in _parent_runs(uri)] == ["FINISHED"]
