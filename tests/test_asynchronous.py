"""Asynchronous (steady-state) evolution on a real local Ray session: the pool that feeds
on demand, and searches in ``search.mode: asynchronous``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from certevo.cluster.pool import EvaluationPool, EvaluationTask
from certevo.population.genome import random_genome
from certevo.population.selection import hypervolume_2d
from certevo.population.seeds import derive_seed
from certevo.search.loop import Search
from conftest import tiny, tiny_config
from test_cli import ROOT, certevo_exe, run


def _genomes(count: int) -> list:
    config = tiny()
    data = config.data.load()
    shapes = config.model.template(data.input_shape, data.num_classes).layer_shapes()
    return [random_genome(shapes, ["relu", "relu"], 0.9, np.random.default_rng(derive_seed(0, "async-pool", i)))
            for i in range(count)]


def test_the_pool_asks_for_work_when_actors_free_up_and_ends_when_told_nothing_more(ray_session):
    genomes = _genomes(7)
    offered: list[str] = []
    absorbed: list[str] = []
    calls: list[tuple[int, int]] = []  # (idle actors, results absorbed when asked)

    def refill(idle: int) -> list[EvaluationTask]:
        calls.append((idle, len(absorbed)))
        # Everything offered so far has been absorbed or is still running: the refill runs
        # between the consumer's steps, never while a result is half taken in.
        assert set(absorbed) <= set(offered)
        if len(offered) == len(genomes):
            return []
        batch = genomes[len(offered):len(offered) + idle]
        offered.extend(g.id for g in batch)
        return [EvaluationTask(g) for g in batch]

    pool = EvaluationPool(tiny().evaluation_spec(), 2)
    try:
        for result in pool.run([], refill=refill):
            absorbed.append(result.task.key)
    finally:
        pool.shutdown()
    # Every task offered yields exactly one result, and the run ended only once refill
    # said "nothing more" with nothing left running.
    assert sorted(absorbed) == sorted(offered) == sorted(g.id for g in genomes)
    assert all(idle >= 1 for idle, _ in calls)
    assert calls[-1] == (calls[-1][0], len(genomes))
    # It asked again as results came in (7 tasks, at most 2 per call): on demand, not once.
    assert len(calls) >= 5
    assert [seen for _, seen in calls] == sorted(seen for _, seen in calls)


def test_the_pool_without_refill_runs_exactly_its_tasks(ray_session):
    genomes = _genomes(3)
    pool = EvaluationPool(tiny().evaluation_spec(), 2)
    try:
        keys = [result.task.key for result in pool.run([EvaluationTask(g) for g in genomes])]
    finally:
        pool.shutdown()
    assert sorted(keys) == sorted(g.id for g in genomes)


def _journal_ids(run_dir) -> list[str]:
    return [json.loads(line)["id"] for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def asynchronous_run(ray_session, tmp_path_factory):
    """A tiny asynchronous search run to its end."""
    search = Search.create(tiny("search.mode=asynchronous"), tmp_path_factory.mktemp("async") / "run")
    search.run()
    return search


def test_an_asynchronous_search_completes_with_every_generation_recorded(asynchronous_run):
    search = asynchronous_run
    settings = search.config.search
    history = search.state.history
    assert [h["generation"] for h in history] == list(range(settings.generations + 1))
    # Every generation after the K-starts is a population's worth of absorbed children;
    # nothing in flight was dropped at the end and nothing beyond the last one proposed.
    assert [h["offspring"] for h in history[1:]] == [settings.population_size] * settings.generations
    assert json.loads((search.run_dir / "front.json").read_text())["generations"] == settings.generations
    assert not search.pool.in_flight()
    # The evaluations (6 at generation 0, then 4 children a generation; a child whose genome
    # was already evaluated is looked up, not evaluated again) are all in the archive.
    assert 6 < len(search.state.archive) <= 6 + settings.generations * settings.population_size
    assert history[-1]["evaluations"] == len(search.state.archive)


def test_its_journal_holds_each_candidate_once_and_its_lineage_every_child(asynchronous_run):
    search = asynchronous_run
    ids = _journal_ids(search.run_dir)
    assert len(ids) == len(set(ids)) == len(search.state.archive)
    assert set(ids) == set(search.state.archive)
    for cid in search.state.archive:
        record = search.state.lineage.get(cid)
        assert record.operator == "kstart" or record.parent_ids  # children have parents
        assert all(parent in search.state.archive for parent in record.parent_ids)
    # Children that inherit weights record which candidate they started from.
    children = [c for c in search.state.archive.values() if search.state.lineage.get(c.id).generation > 0]
    assert children and all(c.record.inherited_from in search.state.archive for c in children if c.record.ok)


def test_its_final_front_dominates_generation_0(asynchronous_run):
    history = asynchronous_run.state.history
    first = [(s, a) for _, s, a in history[0]["front"]]
    final = [(s, a) for _, s, a in history[-1]["front"]]
    assert hypervolume_2d(final) >= hypervolume_2d(first) > 0
    for s0, a0 in first:  # every point of generation 0's front is weakly dominated
        assert any(s >= s0 and a >= a0 for s, a in final)


def test_an_unknown_search_mode_is_refused_naming_the_field_the_value_and_the_fix(tmp_path):
    config = tmp_path / "sideways.yaml"
    config.write_text(yaml.safe_dump(tiny_config("search.mode=sideways")))
    out = run("launch", str(config), "--run-dir", str(tmp_path / "run"))
    assert out.returncode == 2, out.stderr[-3000:]
    assert "search.mode" in out.stderr and "'sideways'" in out.stderr
    assert "use one of generational, asynchronous" in out.stderr
    assert not (tmp_path / "run").exists()


def test_an_asynchronous_search_with_two_islands_completes(ray_session, tmp_path):
    search = Search.create(tiny("search.mode=asynchronous", "search.islands=2", "search.generations=2",
                                "search.migration_interval=1", "search.migrants=1"), tmp_path / "islands")
    search.run()
    history = search.state.history
    assert [h["generation"] for h in history] == [0, 1, 2]
    # A generation is population_size x islands absorbed children, and ring migration ran.
    assert [h["offspring"] for h in history[1:]] == [8, 8]
    assert all("migrants" in h for h in history[1:])
    assert len(search.state.islands) == 2
    ids = _journal_ids(search.run_dir)
    assert len(ids) == len(set(ids)) == len(search.state.archive)


def _launch_killable(tmp_path, *settings: str) -> tuple[subprocess.Popen, Path]:
    """``certevo launch`` of a tiny asynchronous search (4 generations unless ``settings``
    say otherwise) on the tests' Ray session, in a session of its own so it can be SIGKILLed."""
    import ray

    config = tmp_path / "tiny.yaml"
    # One candidate per batch: results arrive one at a time, so there is time to kill the
    # driver between two of them.
    config.write_text(yaml.safe_dump(tiny_config("search.generations=4", "cluster.batch_size=1", *settings)))
    run_dir = tmp_path / "killed"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen([certevo_exe(), "launch", str(config), "--set", "search.mode=asynchronous",
                             "--address", ray.get_runtime_context().gcs_address, "--run-dir", str(run_dir)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    return proc, run_dir


def _kill_when(proc: subprocess.Popen, ready, what: str) -> None:
    deadline = time.time() + 300
    while not ready():
        assert proc.poll() is None, "the search ended before it could be killed: " + proc.stderr.read()[-3000:]
        assert time.time() < deadline, f"no {what} in time"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _checkpoint_state(run_dir):
    return json.loads((run_dir / "checkpoint" / "state.json").read_text())["state"]


def test_a_killed_asynchronous_driver_resumes_losing_and_repeating_nothing(ray_session, tmp_path):
    proc, run_dir = _launch_killable(tmp_path)
    checkpoint, journal = run_dir / "checkpoint" / "state.json", run_dir / "evaluations.jsonl"

    def ready() -> bool:
        # Mid-search, when a checkpoint lists children in flight, one of them has finished
        # since, and so has a child proposed after the checkpoint (journaled, not yet
        # checkpointed).
        if not (checkpoint.is_file() and journal.is_file()):
            return False
        state = _checkpoint_state(run_dir)
        flying = {p["genome"]["id"] for p in state.get("in_flight", [])}
        later = set(_journal_ids(run_dir)) - {e["genome"]["id"] for e in state["archive"]}
        return state["generation"] >= 1 and bool(flying & later) and bool(later - flying)

    _kill_when(proc, ready, "checkpoint with children in flight")
    before = _journal_ids(run_dir)
    state = _checkpoint_state(run_dir)
    checkpointed = [entry["genome"]["id"] for entry in state["archive"]]
    flying = [p["genome"]["id"] for p in state["in_flight"]]
    assert flying and state["generation"] < 4

    out = run("resume", str(run_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    after = _journal_ids(run_dir)
    archive = {entry["genome"]["id"] for entry in _checkpoint_state(run_dir)["archive"]}
    assert json.loads((run_dir / "front.json").read_text())["generations"] == 4
    # Nothing journaled was evaluated again (an evaluation appends its id), nothing is lost:
    # the journal still holds every record from before the kill, and the archive holds what
    # the checkpoint had, the children that were in flight, and everything journaled.
    assert len(after) == len(set(after))
    assert after[:len(before)] == before
    assert set(checkpointed) | set(flying) | set(before) <= archive
    assert set(after) == archive


def test_a_driver_killed_generations_after_its_checkpoint_replays_them_and_logs_each_once(ray_session, tmp_path):
    """Checkpoints are spaced out in asynchronous mode (here only the K-starts' and the
    last): generations that ended after the checkpoint are rebuilt from the journal and
    since_checkpoint.jsonl, and MLflow gets each generation's metrics exactly once."""
    from mlflow.tracking import MlflowClient

    proc, run_dir = _launch_killable(tmp_path, "search.checkpoint_every=1000", "search.generations=10")
    progress = run_dir / "since_checkpoint.jsonl"
    tracker = run_dir / "mlflow_run.json"
    population = tiny().search.population_size

    def ready() -> bool:  # two generations ended after the checkpoint of generation 0, and a child more
        lines = progress.read_text().splitlines() if progress.is_file() else []
        return sum('"absorb"' in line for line in lines) > 2 * population

    _kill_when(proc, ready, "second generation after the checkpoint")
    before = _journal_ids(run_dir)
    state = _checkpoint_state(run_dir)
    assert state["generation"] == 0 and len(state["archive"]) < len(before)

    out = run("resume", str(run_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    # The two generations (at least) that ended after the checkpoint were rebuilt from the
    # journal, and the progress lines say so.
    assert (out.stdout + out.stderr).count("(replayed from the journal)") >= 2, out.stderr[-3000:]
    after = _journal_ids(run_dir)
    final = _checkpoint_state(run_dir)
    assert len(after) == len(set(after)) and after[:len(before)] == before
    assert set(before) <= {entry["genome"]["id"] for entry in final["archive"]} == set(after)
    # Every generation is in the history once (the tracker's part: test_tracking.py,
    # test_a_generation_replayed_on_resume_is_logged_only_if_the_stop_lost_it), with a generation's worth of children.
    assert [h["generation"] for h in final["history"]] == list(range(11))
    assert [h["offspring"] for h in final["history"][1:]] == [final["config"]["search"]["population_size"]] * 10
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    steps = [m.step for m in client.get_metric_history(json.loads(tracker.read_text())["run_id"], "hypervolume")]
    assert sorted(steps) == list(range(11))
