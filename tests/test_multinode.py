"""Fault tolerance on a multi-node local Ray cluster (ray.cluster_utils.Cluster, a head
without CPUs and three one-CPU worker nodes). Each scenario runs in processes of its own,
apart from the tests' shared Ray session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "tests" / "multinode_scenarios.py"
CERTEVO = Path(sys.executable).parent / "certevo"


def test_worker_node_lost_and_island_killed_mid_search(tmp_path):
    """A worker node with a busy evaluator is removed in generation 1 and island 1's actor is
    killed in generation 2: the search completes with exactly the archive and front of an
    undisturbed run, and the journal holds every candidate once."""
    proc = subprocess.run([sys.executable, str(SCENARIOS), "node-loss", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["removed_node"] and found["island_killed"]
    assert found["replacements"] >= 1
    assert found["island_restarts"][1] >= 1
    assert found["lost_task_ok"] is True  # the candidate in flight on the lost node ran again elsewhere
    assert found["journal_ids"] and len(found["journal_ids"]) == len(set(found["journal_ids"]))
    assert found["archive"] == found["reference_archive"]
    assert found["front"] == found["reference_front"]


@pytest.fixture(scope="module")
def cluster_address():
    proc = subprocess.Popen([sys.executable, str(SCENARIOS), "serve"], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        address = proc.stdout.readline().strip()
        if not address:
            pytest.fail("the multi-node cluster did not start")
        yield address
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _launch(address: str, run_dir: Path, **kwargs) -> subprocess.Popen:
    args = [str(CERTEVO), "launch", "--address", address, "--run-dir", str(run_dir)]
    for item in TINY:
        args += ["--set", item]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)


def _state(run_dir: Path) -> dict:
    return json.loads((run_dir / "checkpoint" / "state.json").read_text())["state"]


def test_driver_killed_on_a_cluster_resumes_with_certevo_resume(cluster_address, tmp_path):
    reference = _launch(cluster_address, tmp_path / "reference")
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-3000:]

    run_dir = tmp_path / "killed"
    driver = _launch(cluster_address, run_dir)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill it during generation 2, after checkpoint 1
        state_file = run_dir / "checkpoint" / "state.json"
        if state_file.is_file() and json.loads(state_file.read_text())["generation"] >= 1:
            break
        if driver.poll() is not None:
            pytest.fail("the search ended before it could be killed")
        time.sleep(0.05)
    else:
        driver.kill()
        pytest.fail("the search did not reach generation 1 in time")
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=60)

    resumed = subprocess.run([str(CERTEVO), "resume", str(run_dir)], cwd=ROOT, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ours, theirs = _state(run_dir), _state(tmp_path / "reference")
    assert [e["record"]["candidate_id"] for e in ours["archive"]] == [e["record"]["candidate_id"] for e in theirs["archive"]]
    front = json.loads((run_dir / "front.json").read_text())["front"]
    assert front == json.loads((tmp_path / "reference" / "front.json").read_text())["front"]
