"""The state a run directory keeps, hardened (issue 11, items 1-5): journal records tied to
their configuration, one driver per run directory, a journal that survives torn and
invalid lines, checkpoints whose every file is hashed, and MLflow found in a moved run
directory. Real searches on the shared Ray session, real CLI subprocesses, real MLflow.

New APIs are imported inside the tests, so that each test fails on the code before these
changes for its own reason."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from certevo.population.errors import CheckpointError
from certevo.search.loop import Search
from conftest import tiny

ROOT = Path(__file__).resolve().parents[1]
# The search tests' tiny search, certified by IBP alone and one generation long.
RUN = ("certification.method=ibp", "search.generations=1")


def certevo(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("certevo")
    if not exe.exists():
        pytest.skip(f"the certevo console script is not installed next to {sys.executable}")
    env = dict(os.environ, COLUMNS="200", RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def base_run(ray_session, tmp_path_factory) -> Path:
    """A finished tiny search (K-starts + one generation) logged to its default MLflow
    store, whose config joins the test session's Ray (so CLI subprocesses do too)."""
    import ray

    from certevo.search.tracking import MlflowTracker

    address = ray.get_runtime_context().gcs_address
    run_dir = tmp_path_factory.mktemp("base") / "run"
    Search.create(tiny(*RUN, f"cluster.address={address}"), run_dir, [MlflowTracker()]).run()
    return run_dir


def copy_run(base: Path, to: Path) -> Path:
    shutil.copytree(base, to)
    return to


def journal_lines(run_dir: Path) -> list[bytes]:
    return (run_dir / "evaluations.jsonl").read_bytes().splitlines()


def journal_ids(run_dir: Path) -> list[str]:
    return [json.loads(line)["id"] for line in journal_lines(run_dir)]


# -- 1. journal records are tied to their configuration ------------------------------


def test_resume_after_a_config_edit_reuses_no_record_of_the_old_settings(base_run, tmp_path, capfd):
    run_dir = copy_run(base_run, tmp_path / "edited")
    old_records = len(journal_lines(run_dir))
    # Stopped before its first checkpoint: the journal has results, nothing else does.
    shutil.rmtree(run_dir / "checkpoint")
    (run_dir / "front.json").unlink()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["training"]["eps"] = config["certification"]["eps"] = 0.02
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    capfd.readouterr()

    search = Search.resume(run_dir)
    search.run()
    eps = {(c.record.eps, c.record.train_eps) for c in search.state.archive.values()}
    assert eps == {(0.02, 0.02)}, "the archive mixes records made under two configurations"
    assert search.evaluated_this_session == len(search.state.archive)
    err = capfd.readouterr().err
    assert f"{old_records} record(s)" in err and "another configuration" in err and "evaluated again" in err
    assert len(journal_lines(run_dir)) == old_records + len(search.state.archive)  # the old ones are kept


def test_records_without_a_digest_are_reused_only_under_a_matching_checkpoint(base_run, tmp_path, capfd):
    from certevo.search.journal import EvaluationJournal

    run_dir = copy_run(base_run, tmp_path / "legacy")
    lines = [json.loads(line) for line in journal_lines(run_dir)]
    for entry in lines:  # as an older certevo wrote them
        entry.pop("config", None)
    (run_dir / "evaluations.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    journal = EvaluationJournal(run_dir, "0123456789ab")
    assert journal.recover(accept_unstamped=False) == {}
    assert f"{len(lines)} record(s)" in capfd.readouterr().err
    assert sorted(journal.recover(accept_unstamped=True)) == sorted({e["id"] for e in lines})
    # With the checkpoint in place (and config.yaml matching it), a resume reuses them.
    search = Search.resume(run_dir)
    assert set(search._cached) == {e["id"] for e in lines}


# -- 2. one driver per run directory --------------------------------------------------


def _processes_holding(path: Path) -> set[int]:
    target, holders = os.path.realpath(path), set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == target for fd in fd_dir.iterdir()):
                holders.add(int(fd_dir.parent.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return holders


def test_a_second_driver_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_lock(base_run, tmp_path):
    run_dir = copy_run(base_run, tmp_path / "shared")
    lock = run_dir / ".certevo.lock"
    before = len(journal_lines(run_dir))
    exe = Path(sys.executable).with_name("certevo")
    env = dict(os.environ, COLUMNS="200", RAY_USAGE_STATS_ENABLED="0")
    with open(tmp_path / "holder.err", "w") as err:
        holder = subprocess.Popen([str(exe), "resume", str(run_dir), "--generations", "40"], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:  # until it holds the lock and evaluates (actors, plot workers started)
            assert holder.poll() is None, (tmp_path / "holder.err").read_text()[-3000:]
            if lock.is_file() and len(journal_lines(run_dir)) > before:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the first resume did not start evaluating in time")
        assert json.loads(lock.read_text())["pid"] == holder.pid
        if Path("/proc/self/fd").is_dir():  # no process the driver started holds the lock
            assert _processes_holding(lock) == {holder.pid}

        second = certevo("resume", str(run_dir))
        assert second.returncode == 2, second.stderr[-3000:]
        message = " ".join(second.stderr.split())
        assert "in use by another certevo driver" in message
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message and "since" in message
        assert f"kill {holder.pid}" in message and "releases the lock by itself" in message
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=60)
    assert lock.is_file()  # a SIGKILLed driver cannot clean up ...

    done = json.loads((run_dir / "checkpoint" / "state.json").read_text())["generation"]
    third = certevo("resume", str(run_dir), "--generations", str(done + 1))  # ... and is not stuck on it
    assert third.returncode == 0, third.stderr[-3000:]
    assert "in use" not in third.stderr
    assert not lock.exists()  # released (and removed) at the end


def test_a_remote_run_directory_takes_one_driver_across_machines(tmp_path, capfd):
    import fsspec

    from certevo.search.run_lock import REMOTE_LOCK_FILE, RunDirectoryLocked
    from certevo.search.run_storage import RunStorage

    uri = f"memory://certevo-tests/{tmp_path.name}/run"
    fs, root = fsspec.core.url_to_fs(uri)
    lock_object = f"{root}/{REMOTE_LOCK_FILE}"
    try:
        with RunStorage(uri, staging_root=tmp_path / "machine-a") as first:
            first.prepare_launch()
            second = RunStorage(uri, staging_root=tmp_path / "machine-b")  # another machine's staging
            with pytest.raises(RunDirectoryLocked) as info:
                second.prepare_resume()
            second.close()
            message = str(info.value)
            assert f"pid {os.getpid()} on host {socket.gethostname()}" in message and REMOTE_LOCK_FILE in message
        assert not fs.exists(lock_object)  # released on close
        with RunStorage(uri, staging_root=tmp_path / "machine-b") as second:
            second.prepare_launch()  # free again

        def holder(**fields):
            fs.pipe(lock_object, json.dumps({"since": "2026-01-01T00:00:00+00:00", "token": "t", **fields}).encode())

        holder(host="node-7", pid=4242, heartbeat=time.time())  # alive elsewhere
        with RunStorage(uri, staging_root=tmp_path / "machine-b") as third:
            with pytest.raises(RunDirectoryLocked, match="pid 4242 on host node-7"):
                third.prepare_launch()
        holder(host="node-7", pid=4242, heartbeat=time.time() - 3600)  # killed an hour ago: stale
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        for stale in ({"host": "node-7", "pid": 4242, "heartbeat": time.time() - 3600},
                      {"host": socket.gethostname(), "pid": int(gone.stdout), "heartbeat": time.time()}):
            holder(**stale)
            capfd.readouterr()
            with RunStorage(uri, staging_root=tmp_path / "machine-b") as fourth:
                fourth.prepare_launch()
                assert json.loads(fs.cat_file(lock_object))["pid"] == os.getpid()
            assert "taking over the lock" in capfd.readouterr().err
    finally:
        if fs.exists(root):
            fs.rm(root, recursive=True)


# -- 3. a damaged journal loses nothing valid ------------------------------------------


def test_a_torn_last_line_is_set_aside_and_the_next_record_survives(base_run, tmp_path, capfd):
    from certevo.evaluators.fitness import FitnessRecord
    from certevo.search.journal import EvaluationJournal

    lines = journal_lines(base_run)
    run_dir = tmp_path / "torn"
    run_dir.mkdir()
    torn = lines[1][: len(lines[1]) // 2]  # the disk filled in the middle of this write
    (run_dir / "evaluations.jsonl").write_bytes(lines[0] + b"\n" + torn)
    third = json.loads(lines[2])
    EvaluationJournal(run_dir).append(FitnessRecord.from_dict(third["record"]))

    assert set(EvaluationJournal(run_dir).records()) == {json.loads(lines[0])["id"], third["id"]}
    assert (run_dir / "evaluations.damaged.jsonl").read_bytes() == torn + b"\n"
    assert "cut off" in capfd.readouterr().err


def test_invalid_utf8_and_joined_lines_are_set_aside_and_resume_goes_on(base_run, tmp_path, capfd):
    run_dir = copy_run(base_run, tmp_path / "damaged")
    lines = journal_lines(run_dir)
    garbage, torn, tail = b"\xff\xfe\x00 not UTF-8", lines[1][:40], lines[3][:25]
    # lines[2] was appended onto a torn line (older certevo); the file ends in a torn write.
    damaged = [lines[0], garbage, torn + lines[2], *lines[3:]]
    (run_dir / "evaluations.jsonl").write_bytes(b"\n".join(damaged) + b"\n" + tail)
    capfd.readouterr()

    search = Search.resume(run_dir)  # once stopped every resume with UnicodeDecodeError
    kept = [lines[0], lines[2], *lines[3:]]
    assert journal_lines(run_dir) == kept  # every valid record kept, byte for byte
    assert set(search._cached) == {json.loads(line)["id"] for line in kept}
    assert (run_dir / "evaluations.damaged.jsonl").read_bytes().splitlines() == [garbage, torn, tail]
    err = capfd.readouterr().err
    assert "3 damaged line(s)" in err and "evaluations.damaged.jsonl" in err
    Search.resume(run_dir)  # the journal is clean now: nothing more is set aside
    assert "damaged" not in capfd.readouterr().err


# -- 4. every checkpoint file is hashed -----------------------------------------------


def test_an_edited_checkpoint_state_is_refused_naming_the_file_and_the_fix(base_run, tmp_path):
    run_dir = copy_run(base_run, tmp_path / "edited-state")
    manifest_path = run_dir / "checkpoint" / "state.json"
    original = manifest_path.read_text()
    manifest = json.loads(original)
    manifest["state"]["archive"][0]["record"]["certified_accuracy"] = 0.99
    manifest_path.write_text(json.dumps(manifest, indent=1))
    with pytest.raises(CheckpointError) as info:
        Search.resume(run_dir)
    message = str(info.value)
    assert str(manifest_path) in message and "sha256" in message
    assert "edited" in message and "restore the file from a backup" in message
    manifest_path.write_text(original)  # undone: resumes again
    Search.resume(run_dir)


def test_a_checkpoint_written_before_manifests_were_hashed_still_loads(base_run, tmp_path):
    run_dir = copy_run(base_run, tmp_path / "version-1")
    manifest_path = run_dir / "checkpoint" / "state.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["format_version"] == 2 and len(manifest.pop("manifest_sha256")) == 64
    manifest["format_version"] = 1
    manifest_path.write_text(json.dumps(manifest, indent=1))
    assert Search.resume(run_dir).state.generation == 1


# -- 5. MLflow follows a moved run directory -------------------------------------------


def test_a_moved_run_directory_logs_into_its_own_mlflow_store(base_run, tmp_path):
    from mlflow.tracking import MlflowClient

    launched = copy_run(base_run, tmp_path / "original")
    run_id = json.loads((launched / "mlflow_run.json").read_text())["run_id"]
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(str(launched), str(moved))

    out = certevo("resume", str(moved), "--generations", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    assert not launched.exists(), "the resume recreated the run directory's old location"
    saved = json.loads((moved / "mlflow_run.json").read_text())
    assert saved["run_id"] == run_id and saved["tracking_uri"] == f"sqlite:///{moved.resolve() / 'mlflow.db'}"
    client = MlflowClient(f"sqlite:///{moved / 'mlflow.db'}")
    steps = [m.step for m in client.get_metric_history(run_id, "hypervolume")]
    assert 2 in steps  # the resumed generation was logged into the moved store
    run = client.get_run(run_id)
    assert run.info.artifact_uri.startswith((moved.resolve() / "mlruns").as_uri() + "/")
    pictures = moved / "mlruns" / run_id / "artifacts" / "fronts"
    assert (pictures / "front_gen_002.png").is_file()
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location == (moved.resolve() / "mlruns").as_uri()
    # The store it was copied from got nothing of the resumed generation.
    source = MlflowClient(f"sqlite:///{base_run / 'mlflow.db'}")
    assert 2 not in [m.step for m in source.get_metric_history(run_id, "hypervolume")]
    assert not (base_run / "mlruns" / run_id / "artifacts" / "fronts" / "front_gen_002.png").exists()
