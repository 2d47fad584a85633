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


def test_asynchronous_search_loses_and_duplicates_nothing_when_a_worker_node_is_lost(tmp_path):
    """search.mode: asynchronous, two islands of 4, 2 generations, 2 evaluators: while
    generation 1's children are evaluated, the worker node of a busy evaluator is removed;
    in generation 2, island 1's actor is killed. The candidate lost with the node runs again
    on another evaluator, no result is lost or journaled twice, and every generation is
    complete."""
    proc = subprocess.run([sys.executable, str(SCENARIOS), "node-loss-async", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    # The node really went while an evaluation on it was running, and the pool replaced the
    # evaluator it took with it; the killed island was rebuilt.
    assert found["removed_node"] and found["running_at_removal"] >= 1
    assert found["replacements"] >= 1
    assert found["island_killed"] and found["island_restarts"][1] >= 1
    # The candidate in flight on the lost node was a steady-state child (not a K-start); it
    # was evaluated again by another process, delivered once, and archived with an ok record.
    lost = found["lost_task"]
    assert found["lost_task_ok"] is True, f"{lost} (in flight on the lost node) is not in the archive"
    assert len(found["lost_task_workers"]) == 1
    assert not found["lost_task_workers"][0].endswith(f":{found['lost_pid']}")
    generation, operator, parents = found["lineage"][lost]
    assert generation >= 1 and operator != "kstart" and parents
    # Nothing duplicated: the journal holds every candidate once (the lost one included);
    # nothing lost: the archive is exactly what was journaled, and each of it has a lineage
    # record whose parents are archived too.
    ids = found["journal_ids"]
    assert len(ids) == len(set(ids)) and ids.count(lost) == 1
    assert set(found["archive_ids"]) == set(ids) and len(found["archive_ids"]) == len(ids)
    assert set(found["lineage"]) == set(ids)
    assert all(parent in found["lineage"] for _, _, parents in found["lineage"].values() for parent in parents)
    # The search completed: both generations, each of population_size x islands = 8 children
    # taken into the islands (a child dropped with the node would leave one short).
    assert [g for g, _ in found["history"]] == [0, 1, 2]
    assert [n for _, n in found["history"][1:]] == [8, 8]
    assert found["front_generations"] == 2


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
    # Generational: its resume equals an uninterrupted run exactly (on a cluster the
    # default is asynchronous, which is not bit-reproducible).
    args = [str(CERTEVO), "launch", "--address", address, "--run-dir", str(run_dir), "--set", "search.mode=generational"]
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
