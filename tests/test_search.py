"""The search on a real local Ray session: completion, resume, fault handling, strategies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from certevo.population.errors import CheckpointError, ConfigError
from certevo.population.selection import hypervolume_2d
from certevo.search.loop import Search
from certevo.search.observer import SearchObserver
from conftest import TINY, archive_view, front_view, tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reference_run(ray_session, tmp_path_factory):
    """An uninterrupted tiny search, the baseline for the resume tests."""
    search = Search.create(tiny(), tmp_path_factory.mktemp("reference") / "run")
    search.run()
    return search


def test_small_search_completes_and_improves_on_its_first_generation(reference_run):
    history = reference_run.state.history
    assert [h["generation"] for h in history] == [0, 1, 2, 3]
    first = [(s, a) for _, s, a in history[0]["front"]]
    final = [(s, a) for _, s, a in history[-1]["front"]]
    assert hypervolume_2d(final) >= hypervolume_2d(first) > 0
    for s0, a0 in first:  # every point of the first front is weakly dominated by the final front
        assert any(s >= s0 and a >= a0 for s, a in final)
    assert (reference_run.run_dir / "front.json").is_file()
    # The archive's size follows from the config: generation 0 evaluates the K-starts and one
    # pruned start at each target sparsity (2 x (2 + 1) = 6), every generation after it the
    # population size of offspring (4), so 6, 10, 14, 18. A genome proposed a second time is
    # not evaluated again and would make the archive smaller; the tiny search (seed 0) proposes
    # none, so a lost, skipped or repeated evaluation shows here as a different count.
    settings, sparsities = reference_run.config.search, len(reference_run.config.genome.sparsities)
    start = sparsities * (settings.kstarts + 1)
    expected = [start + settings.population_size * g for g in range(settings.generations + 1)]
    assert expected == [6, 10, 14, 18]
    assert [h["evaluations"] for h in history] == expected
    assert len(reference_run.state.archive) == expected[-1]


def test_every_candidate_is_evaluated_once_and_recorded_in_lineage(reference_run):
    lines = (reference_run.run_dir / "evaluations.jsonl").read_text().splitlines()
    ids = [json.loads(line)["id"] for line in lines]
    assert len(ids) == len(set(ids)) == len(reference_run.state.archive)
    lineage = reference_run.state.lineage
    for cid in reference_run.state.archive:
        record = lineage.get(cid)
        assert record.operator == "kstart" or record.parent_ids
        for parent in record.parent_ids:
            assert parent in reference_run.state.archive


def _trained(run_dir: Path, cid: str) -> tuple[dict, dict]:
    from certevo.search.journal import EvaluationJournal
    from certevo.search.state import split_trained

    weights, gradients = split_trained(EvaluationJournal(run_dir).weights(cid))
    return {name: weights[f"{name}.weight"] for name in gradients}, gradients


def test_children_start_from_their_parents_trained_weights(reference_run):
    """Lamarckian inheritance: training adds up along a lineage, and each record says how
    much training its weights carry."""
    state = reference_run.state
    for cid, candidate in state.archive.items():
        record, lineage = candidate.record, state.lineage.get(cid)
        if lineage.operator == "kstart":
            assert (record.inherited_from, record.epochs, record.total_epochs) == (None, 2, 2)
            continue
        assert record.inherited_from == lineage.parent_ids[0]
        parent = state.archive[record.inherited_from].record
        assert (record.epochs, record.total_epochs) == (1, parent.total_epochs + 1)


def test_pruned_starts_are_the_best_least_sparse_start_pruned_by_magnitude(reference_run):
    from certevo.population.allocation import layer_kept_counts

    state, run_dir = reference_run.state, reference_run.run_dir
    starts = [cid for cid in state.archive if state.lineage.get(cid).operator == "kstart"
              and abs(state.archive[cid].record.sparsity - 0.5) < 0.01]
    best = max(starts, key=lambda cid: (state.archive[cid].record.certified_accuracy, -starts.index(cid)))
    pruned = {state.lineage.get(cid).operator: cid for cid in state.archive
              if state.lineage.get(cid).operator.startswith("prune_")}
    assert sorted(pruned) == ["prune_erk", "prune_global"]
    magnitudes, _ = _trained(run_dir, best)
    parent = state.archive[best].genome
    for operator, cid in pruned.items():
        assert state.lineage.get(cid).parent_ids == (best,)
        child = state.archive[cid].genome
        assert child.kept_weights == child.total_weights - round(0.9 * child.total_weights)
        if operator == "prune_erk":
            assert {n: int(m.sum()) for n, m in child.masks.items()} == layer_kept_counts(
                {n: m.shape for n, m in child.masks.items()}, 0.9, "erk")
        for name, mask in child.masks.items():
            assert (mask <= parent.masks[name]).all()
            kept, dropped = np.abs(magnitudes[name][mask]), np.abs(magnitudes[name][parent.masks[name] & ~mask])
            assert dropped.size == 0 or kept.min() >= dropped.max(), (operator, name)


def test_guided_children_prune_small_weights_and_grow_large_gradients(reference_run):
    """The search hands the parent's real trained weights and gradients to the guided
    operators: a regrown child dropped its parent's smallest weights and grew the pruned
    positions of largest gradient."""
    state, run_dir = reference_run.state, reference_run.run_dir
    regrown = [cid for cid in state.archive if state.lineage.get(cid).operator.startswith("regrow")]
    assert regrown, "no regrow child in the reference run"
    for cid in regrown:
        parent_id = state.lineage.get(cid).parent_ids[0]
        parent, child = state.archive[parent_id].genome, state.archive[cid].genome
        magnitudes, gradients = _trained(run_dir, parent_id)
        for name, mask in parent.masks.items():
            new = child.masks[name]
            assert int(new.sum()) == int(mask.sum())
            dropped = np.abs(magnitudes[name][mask & ~new])
            stayed = np.abs(magnitudes[name][mask & new])
            grown, passed = gradients[name][~mask & new], gradients[name][~mask & ~new]
            if dropped.size:
                assert stayed.min() >= dropped.max() and grown.min() >= passed.max(), name


def test_same_seed_same_archive(ray_session, reference_run, tmp_path):
    again = Search.create(tiny(), tmp_path / "again")
    again.run()
    assert archive_view(again) == archive_view(reference_run)


def test_resume_after_completion_with_more_generations_continues(ray_session, reference_run, tmp_path):
    search = Search.create(tiny("search.generations=1"), tmp_path / "short")
    search.run()
    resumed = Search.resume(tmp_path / "short", generations=3)
    resumed.run()
    assert archive_view(resumed) == archive_view(reference_run)
    assert front_view(resumed.state) == front_view(reference_run.state)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_driver_resumes_to_the_uninterrupted_result(ray_session, reference_run, tmp_path, sig):
    run_dir = tmp_path / "killed"
    address = ray.get_runtime_context().gcs_address
    script = (
        "import sys; sys.path.insert(0, %r)\n"
        "from certevo.search.config import load_config\n"
        "from certevo.search.loop import Search\n"
        "Search.create(load_config(None, %r), %r).run()\n"
    ) % (str(ROOT), TINY + [f"cluster.address={address}"], str(run_dir))
    # SIGINT restored for the child: a shell without job control starts it ignored.
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    journal = run_dir / "evaluations.jsonl"
    deadline = time.time() + 240
    # Stop it in the middle of generation 2: after checkpoint 1, with some of 2 done.
    while time.time() < deadline:
        if (run_dir / "checkpoint" / "state.json").is_file() and journal.is_file():
            state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
            if state["generation"] >= 1 and len(journal.read_text().splitlines()) > len(state["state"]["archive"]):
                break
        if proc.poll() is not None:
            pytest.fail("the search ended before it could be interrupted")
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the search did not reach generation 1 in time")
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    done_before = len(journal.read_text().splitlines())

    resumed = Search.resume(run_dir)
    resumed.run()
    assert archive_view(resumed) == archive_view(reference_run)
    assert front_view(resumed.state) == front_view(reference_run.state)
    # Nothing finished before the interruption was evaluated again.
    assert resumed.evaluated_this_session == len(reference_run.state.archive) - done_before


class KillOneActor(SearchObserver):
    """Kills a busy evaluator actor once, at the first result that arrives while another
    actor runs a batch of two or more; remembers the candidates of that batch."""

    def __init__(self) -> None:
        self.killed = None
        self.batch: list[str] = []

    def on_start(self, search) -> None: ...
    def on_generation(self, search, summary) -> None: ...
    def on_end(self, search, summary) -> None: ...

    def on_evaluation(self, search, result) -> None:
        if self.killed is not None:
            return
        batches: dict = {}
        for actor, task in search.pool.running():
            batches.setdefault(actor, []).append(task.key)
        for actor, keys in batches.items():
            if len(keys) >= 2:
                self.batch = keys
                ray.kill(actor, no_restart=True)
                self.killed = keys[0]
                return


def test_actor_killed_mid_search_loses_and_duplicates_nothing(ray_session, reference_run, tmp_path):
    killer = KillOneActor()
    search = Search.create(tiny(), tmp_path / "faulty", [killer])
    search.run()
    assert killer.killed is not None
    assert search.pool.replacements >= 1
    assert killer.killed in search.state.archive and search.state.archive[killer.killed].record.ok
    assert len(killer.batch) >= 2, "the actor should have died in the middle of a batch"
    assert all(search.state.archive[key].record.ok for key in killer.batch)
    assert archive_view(search) == archive_view(reference_run)
    ids = [json.loads(line)["id"] for line in (search.run_dir / "evaluations.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids))


def test_damaged_checkpoint_gives_a_clear_error(ray_session, reference_run, tmp_path):
    import shutil

    run_dir = tmp_path / "damaged"
    shutil.copytree(reference_run.run_dir, run_dir)
    arrays = next((run_dir / "checkpoint").glob("arrays-*.safetensors"))
    arrays.write_bytes(arrays.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="arrays"):
        Search.resume(run_dir)
    (run_dir / "checkpoint" / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="state.json"):
        Search.resume(run_dir)


def test_resume_with_a_changed_config_refuses(reference_run, tmp_path):
    import shutil

    run_dir = tmp_path / "changed"
    shutil.copytree(reference_run.run_dir, run_dir)
    text = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(text.replace("lr: 0.005", "lr: 0.01"))
    with pytest.raises(CheckpointError, match="training.lr"):
        Search.resume(run_dir)


def test_search_without_inheritance_is_deterministic_and_trains_every_child_afresh(ray_session, tmp_path):
    settings = ("search.weight_inheritance=false", "search.init=kstarts", "search.generations=2")
    first = Search.create(tiny(*settings), tmp_path / "a")
    first.run()
    second = Search.create(tiny(*settings), tmp_path / "b")
    second.run()
    assert archive_view(first) == archive_view(second)
    records = [c.record for c in first.state.archive.values()]
    assert all(r.inherited_from is None and r.epochs == r.total_epochs == 2 for r in records)
    assert not (first.run_dir / "weights").exists()


def test_resume_of_something_else_refuses(tmp_path):
    with pytest.raises(CheckpointError, match="not a certevo run directory"):
        Search.resume(tmp_path)


def test_second_launch_into_the_same_directory_refuses(reference_run):
    with pytest.raises(ConfigError, match="already holds a search"):
        Search.create(tiny(), reference_run.run_dir)


def test_coevolution_completes_with_a_front(ray_session, tmp_path):
    search = Search.create(tiny("search.strategy=coevolution", "genome.activations=[relu,tanh,sigmoid]"), tmp_path / "coev")
    result = search.run()
    assert result.front and all(c.record.ok for c in result.front)
    patterns = {tuple(map(str, c.genome.activation_pattern())) for c in search.state.archive.values()}
    assert len(patterns) > 1  # the activation population really varied
    assert len(search.state.activation_population) >= 2


@pytest.mark.parametrize("score", ["magnitude", "certified"])
def test_kstarts_picks_the_winners_its_score_says(ray_session, tmp_path, score):
    search = Search.create(
        tiny("search.generations=0", "search.kstarts=3", "search.population_size=2", f"search.kstarts_score={score}",
             "search.init=kstarts"),
        tmp_path / score,
    )
    search.run()
    records = {cid: c.record for cid, c in search.state.archive.items()}
    assert len(records) == 6
    value = (lambda r: r.certified_accuracy) if score == "certified" else (lambda r: r.kstarts["magnitude"])
    expected = []
    for sparsity in (0.5, 0.9):
        group = [cid for cid, r in records.items() if abs(r.sparsity - sparsity) < 0.01]
        expected.append(max(group, key=lambda cid: (value(records[cid]), -list(records).index(cid))))
    assert search.state.population == expected


def test_budget_smaller_than_kstarts_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="search.evaluation_budget"):
        Search.create(tiny("search.evaluation_budget=3"), tmp_path / "budget")


def test_evaluation_budget_stops_the_search(ray_session, tmp_path):
    search = Search.create(tiny("search.evaluation_budget=7", "search.generations=10"), tmp_path / "budget")
    search.run()
    assert len(search.state.archive) == 7


def test_cuda_on_a_cluster_without_gpus_stops_with_the_fix(ray_session, tmp_path):
    import ray as ray_module

    if ray_module.cluster_resources().get("GPU", 0) > 0:
        pytest.skip("this Ray session has GPUs")
    search = Search.create(tiny("cluster.device=cuda"), tmp_path / "cuda")
    with pytest.raises(ConfigError, match="cluster.device: cpu"):
        search.run()
