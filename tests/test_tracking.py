"""certevo.search.tracking.MlflowTracker against real MLflow (no mocks): the default SQLite store in
the run directory, a real `mlflow server`, resume, and a server that goes away mid-search."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from certevo.population.genome import Genome
from certevo.search.loop import Search
from certevo.search.observer import SearchObserver
from certevo.search.tracking import MlflowTracker, TrackingWarning, flatten_config, git_commit
from certevo.search.run_directory import MLFLOW_RUN_FILE as RUN_FILE
from conftest import tiny

GENERATIONS = 2
#: The tiny search, GENERATIONS long, children trained 5 epochs (the default).
TRACKED = (f"search.generations={GENERATIONS}", "search.inherit_epochs=5")
MLFLOW = Path(sys.executable).with_name("mlflow")
FINAL_FILES = {"front.png", "front.html", "front.json", "lineage.csv", "lineage.png", "history.png"}


@dataclass
class Tracked:
    search: Search
    tracker: MlflowTracker
    wall: float


def run_tracked(search: Search, tracker: MlflowTracker) -> Tracked:
    start = time.perf_counter()
    search.run()
    wall = time.perf_counter() - start
    print(f"\n[tracking] {search.run_dir.name}: search wall {wall:.1f} s, tracker blocked the search "
          f"{tracker.seconds_spent:.2f} s ({100 * tracker.seconds_spent / wall:.1f} %; by hook "
          f"{ {k: round(v, 3) for k, v in tracker.seconds_by_hook.items()} }), background thread "
          f"{tracker.background_seconds:.2f} s")
    return Tracked(search, tracker, wall)


# -- a real MLflow server ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a SQLite backend and proxied artifacts; can be
    killed and restarted on the same port and store."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        if self.alive():
            return
        env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        log = (self.root / f"server-{self.starts}.log").open("w")
        self.proc = subprocess.Popen(
            [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
             "--artifacts-destination", str(self.root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.alive():
                log = (self.root / f"server-{self.starts - 1}.log").read_text()[-2000:]
                raise RuntimeError(f"mlflow server exited:\n{log}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"mlflow server on port {self.port} did not answer /health in {timeout} s")

    def ensure_up(self) -> None:
        self.start()
        self.wait()

    def kill(self) -> None:
        """Stop the server abruptly (its whole process group: uvicorn and its worker)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module", autouse=True)
def mlflow_server(tmp_path_factory):
    """Started at the first test of this module (it takes ~15 s), waited for only by the
    tests that use it, killed at the end."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.kill()


class Outage(SearchObserver):
    """Kills the server right after generation ``after`` (before the tracker's hook when
    listed first); optionally starts it again at the end, before the tracker's on_end."""

    def __init__(self, server: MlflowServer, after: int, restart_at_end: bool = False) -> None:
        self.server, self.after, self.restart_at_end = server, after, restart_at_end
        self.killed_at: int | None = None

    def on_start(self, search) -> None: ...
    def on_evaluation(self, search, result) -> None: ...

    def on_generation(self, search, summary) -> None:
        if summary["generation"] == self.after:
            self.server.kill()
            self.killed_at = summary["generation"]

    def on_end(self, search, summary) -> None:
        if self.restart_at_end:
            self.server.ensure_up()


class EnvProbe(SearchObserver):
    """Records the MLflow HTTP settings in force while the search runs."""

    def __init__(self) -> None:
        self.seen: dict[str, str | None] = {}

    def on_start(self, search) -> None: ...
    def on_evaluation(self, search, result) -> None: ...
    def on_end(self, search, summary) -> None: ...

    def on_generation(self, search, summary) -> None:
        for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT",
                     "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"):
            self.seen[name] = os.environ.get(name)


# -- what every tracked search must have logged --------------------------------------------
def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out.add(item.path)
        if item.is_dir:
            out |= artifact_paths(client, run_id, item.path)
    return out


def check_logged(client: MlflowClient, tracked: Tracked, tmp_path: Path) -> None:
    search, tracker = tracked.search, tracked.tracker
    history = search.state.history
    front = json.loads((search.run_dir / "front.json").read_text())["front"]
    front_ids = {row["id"] for row in front}
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"

    params = run.data.params
    assert params["search.population_size"] == "4"
    assert params["training.lr"] == str(search.config.training.lr)
    assert params["genome.sparsities"] == "[0.5, 0.9]"
    assert params["search.rates.crossover"] == str(search.config.search.rates.crossover)
    tags = run.data.tags
    assert tags["seed"] == str(search.config.search.seed)
    try:
        version = importlib.metadata.version("certevo")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    assert tags["certevo.version"] == version
    assert tags["config_digest"] == search.config.digest()
    assert tags["run_dir"] == str(search.run_dir.resolve())
    if git_commit() is not None:
        assert tags["git_commit"] == git_commit()

    hv = client.get_metric_history(tracker.run_id, "hypervolume")
    assert sorted(m.step for m in hv) == list(range(GENERATIONS + 1))
    assert {m.step: m.value for m in hv} == pytest.approx({h["generation"]: h["hypervolume"] for h in history})
    for name in ("front_size", "evaluations", "evaluations_per_minute", "failures"):
        assert len(client.get_metric_history(tracker.run_id, name)) == GENERATIONS + 1, name
    best = client.get_metric_history(tracker.run_id, "best_certified_at_0.9")
    assert {m.step: m.value for m in best} == pytest.approx(
        {h["generation"]: h["best_certified"]["0.9"] for h in history})

    paths = artifact_paths(client, tracker.run_id)
    assert FINAL_FILES <= paths
    assert {f"fronts/front_gen_{g:03d}.png" for g in range(GENERATIONS + 1)} <= paths

    download = tmp_path / "download"
    html = Path(client.download_artifacts(tracker.run_id, "front.html", str(download))).read_text()
    assert all(cid in html for cid in front_ids)
    masks = Path(client.download_artifacts(tracker.run_id, "masks", str(download)))
    some = sorted(front_ids)[0]
    assert Genome.load(masks / some) == search.state.archive[some].genome

    # the rule: child runs tagged on_front=true == the final front; the others were on the
    # front of an earlier generation and left it
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{tracker.run_id}'")
    names = [c.data.tags["certevo.candidate_id"] for c in children]
    assert len(names) == len(set(names))
    assert {cid for c, cid in zip(children, names) if c.data.tags["certevo.on_front"] == "true"} == front_ids
    ever_on_front = {str(p[0]) for h in history for p in h["front"]}
    assert set(names) == ever_on_front
    for child in children:
        assert child.data.tags["certevo.on_front"] in ("true", "false")
        cid = child.data.tags["certevo.candidate_id"]
        assert {f"masks/{cid}.json", f"masks/{cid}.safetensors"} <= paths  # every child run's mask_artifact exists
        record = search.state.archive[cid].record
        assert child.info.status == "FINISHED"
        # sparsity cut to 3 decimals, never rounded up (0.9496 -> s0.949)
        cut = math.floor((record.sparsity + 1e-12) * 1000) / 1000
        assert child.info.run_name == f"s{cut:.3f}-cert{record.certified_accuracy:.3f}-{cid[:8]}"
        assert child.data.metrics["certified_accuracy"] == pytest.approx(record.certified_accuracy)
        assert child.data.metrics["clean_accuracy"] == pytest.approx(record.clean_accuracy)
        assert child.data.metrics["sparsity"] == pytest.approx(record.sparsity)
        for layer, value in record.layer_sparsity.items():
            assert float(child.data.params[f"layer_sparsity.{layer}"]) == pytest.approx(value, rel=1e-5)
        genome = search.state.archive[cid].genome
        assert json.loads(child.data.params["activations"]) == genome.activation_pattern()
        assert child.data.tags["mask_artifact"] == f"masks/{cid}"


def check_local_artifacts(run_dir: Path, generations: int = GENERATIONS) -> None:
    art = run_dir / "artifacts"
    for name in FINAL_FILES:
        assert (art / name).is_file() and (art / name).stat().st_size > 0, name
    for g in range(generations + 1):
        assert (art / "fronts" / f"front_gen_{g:03d}.png").read_bytes()[:4] == b"\x89PNG"
    front = json.loads((run_dir / "front.json").read_text())["front"]
    for row in front:
        assert (art / "masks" / f"{row['id']}.safetensors").is_file()


# -- default store: SQLite in the run directory ---------------------------------------------
@pytest.fixture(scope="module")
def sqlite_run(ray_session, tmp_path_factory) -> Tracked:
    tracker = MlflowTracker()
    search = Search.create(tiny(*TRACKED), tmp_path_factory.mktemp("sqlite") / "run", [tracker])
    return run_tracked(search, tracker)


def test_default_store_is_sqlite_in_the_run_directory(sqlite_run):
    run_dir = sqlite_run.search.run_dir.resolve()
    assert sqlite_run.tracker.tracking_uri == f"sqlite:///{run_dir / 'mlflow.db'}"
    assert (run_dir / "mlflow.db").is_file()
    saved = json.loads((run_dir / RUN_FILE).read_text())
    assert saved["run_id"] == sqlite_run.tracker.run_id
    assert saved["tracking_uri"] == sqlite_run.tracker.tracking_uri
    # the experiment's artifacts stay inside the run directory too, not in ./mlruns
    client = MlflowClient(sqlite_run.tracker.tracking_uri)
    assert client.get_experiment_by_name("certevo").artifact_location == (run_dir / "mlruns").as_uri()


def test_sqlite_run_logs_params_tags_metrics_artifacts_and_child_runs(sqlite_run, tmp_path):
    check_logged(MlflowClient(sqlite_run.tracker.tracking_uri), sqlite_run, tmp_path)


def test_run_directory_has_every_artifact_file(sqlite_run):
    check_local_artifacts(sqlite_run.search.run_dir)
    run_dir = sqlite_run.search.run_dir
    with (run_dir / "artifacts" / "lineage.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["id"] for r in rows} == set(sqlite_run.search.state.archive)
    assert {"id", "parents", "operator", "generation", "objective_0", "objective_1", "on_front"} <= set(rows[0])
    for row in rows:
        record = sqlite_run.search.state.lineage.get(row["id"])
        assert row["parents"] == " ".join(record.parent_ids) and row["operator"] == record.operator


def test_tracker_reports_its_cost_and_nothing_unlogged(sqlite_run):
    tracker = sqlite_run.tracker
    assert tracker.seconds_spent > 0 and tracker.background_seconds > 0
    assert tracker.seconds_spent < sqlite_run.wall
    assert set(tracker.seconds_by_hook) == {"on_start", "on_evaluation", "on_generation", "on_end"}
    assert tracker.evaluations_seen == len(sqlite_run.search.state.archive)
    assert tracker.unlogged == [] and tracker.unwritten == []
    assert tracker.report()["run_id"] == tracker.run_id


class ChildRunProbe(SearchObserver):
    """Listed before the tracker: at the end of the search, before the tracker's on_end,
    waits (up to ``timeout`` s) until the members of the last generation's front have
    child runs tagged on_front=true, and records what it saw."""

    def __init__(self, tracker: MlflowTracker, timeout: float = 60.0) -> None:
        self.tracker, self.timeout = tracker, timeout
        self.expected: set[str] = set()
        self.seen: set[str] = set()
        self.tracker_ended_before = True

    def on_start(self, search) -> None: ...
    def on_evaluation(self, search, result) -> None: ...
    def on_generation(self, search, summary) -> None: ...

    def on_end(self, search, summary) -> None:
        self.tracker_ended_before = "on_end" in self.tracker.seconds_by_hook
        self.expected = {str(p[0]) for p in search.state.history[-1]["front"]}
        client = MlflowClient(self.tracker.tracking_uri)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.tracker.run_id is not None and self.tracker.experiment_id is not None:
                children = client.search_runs([self.tracker.experiment_id],
                                              f"tags.mlflow.parentRunId = '{self.tracker.run_id}'")
                self.seen = {c.data.tags["certevo.candidate_id"] for c in children
                             if c.data.tags.get("certevo.on_front") == "true" and c.info.status == "FINISHED"}
                if self.seen == self.expected:
                    return
            time.sleep(0.2)


def test_child_runs_are_created_during_the_search_not_at_the_end(ray_session, tmp_path):
    """The front members' child runs are logged as the search goes (the background thread,
    generation by generation), so on_end only waits for the last generation's work."""
    tracker = MlflowTracker()
    probe = ChildRunProbe(tracker)
    tracked = run_tracked(Search.create(tiny(*TRACKED, "search.generations=1"), tmp_path / "run", [probe, tracker]), tracker)
    assert not probe.tracker_ended_before
    assert probe.expected and probe.seen == probe.expected  # before the tracker's on_end ran
    assert probe.expected == {c.id for c in tracked.search.state.front()}
    assert tracker.unlogged == []


def test_resume_reopens_the_same_parent_run(ray_session, tmp_path):
    run_dir = tmp_path / "resumed"
    first = MlflowTracker()
    run_tracked(Search.create(tiny(*TRACKED, "search.generations=1"), run_dir, [first]), first)
    second = MlflowTracker()
    resumed = Search.resume(run_dir, generations=GENERATIONS, observers=[second])
    run_tracked(resumed, second)
    assert second.run_id == first.run_id and second.resumed
    assert first.unlogged == [] and second.unlogged == []
    client = MlflowClient(second.tracking_uri)
    run = client.get_run(second.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["search.generations"] == "1"  # params are immutable ...
    assert run.data.tags["resume.search.generations"] == str(GENERATIONS)  # ... the change is a tag
    hv = client.get_metric_history(second.run_id, "hypervolume")
    assert sorted(m.step for m in hv) == list(range(GENERATIONS + 1))
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{second.run_id}'")
    names = [c.data.tags["certevo.candidate_id"] for c in children]
    assert len(names) == len(set(names))  # a member of both fronts has one child run
    front_ids = {c.id for c in resumed.state.front()}
    on_front = {c.data.tags["certevo.candidate_id"] for c in children if c.data.tags["certevo.on_front"] == "true"}
    assert on_front == front_ids
    assert len(client.search_runs([run.info.experiment_id], "tags.mlflow.parentRunId = ''")) == 0
    check_local_artifacts(run_dir)


def test_resume_whose_run_is_gone_starts_a_new_run_and_says_so(ray_session, sqlite_run, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(sqlite_run.search.run_dir, run_dir)
    (run_dir / RUN_FILE).write_text(json.dumps({"run_id": "0123456789abcdef0123456789abcdef"}))
    tracker = MlflowTracker()
    with pytest.warns(TrackingWarning, match="could not find the parent run"):
        Search.resume(run_dir, observers=[tracker]).run()  # no generation left: start and end only
    assert any("could not find the parent run 0123456789abcdef" in m for m in tracker.messages)
    assert tracker.run_id not in (None, "0123456789abcdef0123456789abcdef", sqlite_run.tracker.run_id)
    client = MlflowClient(tracker.tracking_uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["certevo.previous_run_id"] == "0123456789abcdef0123456789abcdef"
    # the new run gets the generations of the search's history
    assert sorted(m.step for m in client.get_metric_history(tracker.run_id, "hypervolume")) == list(
        range(GENERATIONS + 1))
    assert json.loads((run_dir / RUN_FILE).read_text())["run_id"] == tracker.run_id


# -- a real tracking server -----------------------------------------------------------------
def test_tracked_search_logs_to_a_real_server(ray_session, mlflow_server, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")  # the user's setting wins over the default 5
    mlflow_server.ensure_up()
    tracker = MlflowTracker(mlflow_server.uri, experiment_name="certevo-server")
    probe = EnvProbe()
    tracked = run_tracked(Search.create(tiny(*TRACKED), tmp_path / "run", [tracker, probe]), tracker)
    assert tracker.unlogged == []
    check_logged(MlflowClient(mlflow_server.uri), tracked, tmp_path)
    # fast failure settings applied while the search ran, and only then
    assert probe.seen == {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                          "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT" not in os.environ
    assert tracker.run_url == f"{mlflow_server.uri}/#/experiments/{tracker.experiment_id}/runs/{tracker.run_id}"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"
    # the server stored the artifacts (proxied), not the client's file system
    stored = {p.name for p in (mlflow_server.root / "artifacts").rglob("*") if p.is_file()}
    assert FINAL_FILES <= stored


def test_server_restarted_before_the_end_receives_the_backlog(ray_session, mlflow_server, tmp_path):
    mlflow_server.ensure_up()
    outage = Outage(mlflow_server, after=1, restart_at_end=True)
    tracker = MlflowTracker(mlflow_server.uri, experiment_name="certevo-outage", end_timeout=30)
    tracked = run_tracked(Search.create(tiny(*TRACKED), tmp_path / "run", [outage, tracker]), tracker)
    assert outage.killed_at == 1
    assert tracker.unlogged == []
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(tracker.run_id, "hypervolume"))
    assert steps == list(range(GENERATIONS + 1))
    paths = artifact_paths(client, tracker.run_id)
    assert {"fronts/front_gen_001.png", "fronts/front_gen_002.png"} | FINAL_FILES <= paths
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{tracker.run_id}'")
    on_front = {c.data.tags["certevo.candidate_id"] for c in children if c.data.tags["certevo.on_front"] == "true"}
    assert on_front == {c.id for c in tracked.search.state.front()}


def test_server_stopped_mid_search_does_not_stop_the_search(ray_session, mlflow_server, tmp_path):
    mlflow_server.ensure_up()
    tracker = MlflowTracker(mlflow_server.uri, experiment_name="certevo-down", end_timeout=2)
    outage = Outage(mlflow_server, after=1)
    search = Search.create(tiny(*TRACKED), tmp_path / "run", [tracker, outage])
    with pytest.warns(TrackingWarning, match="could not be logged"):
        tracked = run_tracked(search, tracker)  # returns normally
    assert outage.killed_at == 1 and not mlflow_server.alive()
    run_dir = search.run_dir
    assert (run_dir / "front.json").is_file()
    assert (run_dir / "checkpoint" / "state.json").is_file()
    check_local_artifacts(run_dir)
    assert tracker.unlogged, "the tracker must report what it could not log"
    assert any(item.startswith(f"metrics of generation {GENERATIONS}") for item in tracker.unlogged)
    assert any(item.startswith("end of the parent run") for item in tracker.unlogged)
    # failing fast: connection refused, no retries; the end waits at most end_timeout (+ one request)
    assert tracker.seconds_spent < 2 + 5 + 5
    assert tracked.search.state.generation == GENERATIONS


# -- helpers ---------------------------------------------------------------------------------
def test_flatten_config_joins_with_dots_and_cuts_long_values():
    flat = flatten_config({"search": {"rates": {"crossover": 0.5}, "sizes": [1, 2]}, "run_dir": "x",
                           "long": "a" * 7000, "none": None})
    assert flat["search.rates.crossover"] == "0.5"
    assert flat["search.sizes"] == "[1, 2]"
    assert flat["run_dir"] == "x" and flat["none"] == "None"
    assert len(flat["long"]) == 6000 and flat["long"].endswith("...[cut]")


def test_tracker_hooks_never_raise():
    tracker = MlflowTracker()
    with pytest.warns(TrackingWarning, match="the search goes on"):
        tracker.on_start(object())  # not a Search: reported, not raised
        tracker.on_generation(object(), {"generation": 0})
        tracker.on_end(object(), {})
    assert "on_start failed" in tracker.messages[0]


def test_close_ends_a_search_that_stopped_early(sqlite_run, tmp_path):
    """What the CLI (or a loop hook) calls when a search dies: the run is marked, the
    pictures queued so far are in the run directory."""
    search = SimpleNamespace(run_dir=tmp_path / "stopped", config=tiny(*TRACKED),
                             state=SimpleNamespace(history=sqlite_run.search.state.history[:1]))
    search.run_dir.mkdir()
    tracker = MlflowTracker(sqlite_run.tracker.tracking_uri, experiment_name="certevo-stopped")  # store exists: fast
    tracker.on_start(search)
    tracker.on_error(search, RuntimeError("boom"))
    assert tracker.unlogged == []
    client = MlflowClient(tracker.tracking_uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(tracker.run_id, "hypervolume")] == [0]  # from the history
    assert (search.run_dir / "artifacts" / "fronts" / "front_gen_000.png").is_file()
    # a given SQLite store keeps its artifacts next to the database, not in ./mlruns
    store_dir = sqlite_run.search.run_dir.resolve()
    assert client.get_experiment(run.info.experiment_id).artifact_location == (store_dir / "mlruns").as_uri()
    assert "front_gen_000.png" in {a.path.split("/")[-1] for a in client.list_artifacts(tracker.run_id, "fronts")}
    tracker.close()  # idempotent
    assert client.get_run(tracker.run_id).info.status == "FAILED"


def test_git_commit_is_read_without_running_git(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".git" / "refs" / "heads").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / ".git" / "refs" / "heads" / "main").write_text("a" * 40 + "\n")
    assert git_commit(repo) == "a" * 40
    (repo / ".git" / "refs" / "heads" / "main").unlink()
    (repo / ".git" / "packed-refs").write_text("# pack-refs\n" + "b" * 40 + " refs/heads/main\n")
    assert git_commit(repo) == "b" * 40
    (repo / ".git" / "HEAD").write_text("c" * 40 + "\n")  # detached
    assert git_commit(repo) == "c" * 40
    assert git_commit(tmp_path / "not-a-repo") is None


def test_failures_are_classified_transient_or_permanent():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST

    from certevo.search.tracking.failures import _is_transient

    assert _is_transient(MlflowException("API request failed: connection refused", error_code=INTERNAL_ERROR))
    assert _is_transient(ConnectionRefusedError())
    assert not _is_transient(MlflowException("bad param", error_code=INVALID_PARAMETER_VALUE))
    assert not _is_transient(MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST))
    assert not _is_transient(FileNotFoundError("no such picture"))


def test_default_artifact_root_sits_next_to_a_sqlite_store(tmp_path):
    assert MlflowTracker._default_artifact_root(f"sqlite:///{tmp_path}/x.db") == (tmp_path / "mlruns").as_uri()
    assert MlflowTracker._default_artifact_root("http://127.0.0.1:5000") is None


def test_pictures_survive_a_dead_plot_process(sqlite_run, tmp_path):
    """Pictures are drawn by helper processes; if one dies, the tracker draws in-process."""
    history = sqlite_run.search.state.history
    search = SimpleNamespace(run_dir=tmp_path / "dead", config=tiny(*TRACKED), state=SimpleNamespace(history=history[:1]))
    search.run_dir.mkdir()
    tracker = MlflowTracker(sqlite_run.tracker.tracking_uri, experiment_name="certevo-dead-plotter")
    tracker.on_start(search)
    deadline = time.monotonic() + 60
    while len(tracker._workers) < tracker.plot_processes and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = list(tracker._workers)
    assert len(workers) == 2
    for worker in workers:
        worker.proc.kill()
        worker.proc.wait()
    tracker._queue_front_png(history[1], history[:1])  # what on_generation queues
    tracker.close()
    for g in (0, 1):
        assert (search.run_dir / "artifacts" / "fronts" / f"front_gen_{g:03d}.png").read_bytes()[:4] == b"\x89PNG"
    assert tracker.unwritten == [] and tracker.unlogged == []
    assert any("plot process failed" in m for m in tracker.messages)


def test_plot_process_draws_a_lineage(sqlite_run, tmp_path):
    from certevo.search.tracking.plot_worker import _PlotWorker

    worker = _PlotWorker()
    try:
        state = sqlite_run.search.state
        ids = [c.id for c in state.front()]
        worker.call("plot_lineage", (state.lineage, ids, tmp_path / "lineage.png"), {})
        worker.call("plot_history", (state.history, tmp_path / "history.png"), {})
        with pytest.raises(RuntimeError, match="drawing failed in the plot process"):
            worker.call("plot_history", ([{"generation": 0}], tmp_path / "bad.png"), {})
    finally:
        worker.close()
    assert worker.proc.returncode == 0
    assert (tmp_path / "lineage.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "history.png").read_bytes()[:4] == b"\x89PNG"


def test_a_generation_replayed_on_resume_is_logged_only_if_the_stop_lost_it(sqlite_run, tmp_path):
    """An asynchronous resume ends the generations after its checkpoint again and hands
    them to the observers with ``"replayed": true``: generation 1 was logged before the
    stop, generation 2 was lost with the driver; afterwards each is logged once."""
    history = sqlite_run.search.state.history  # generations 0, 1, 2
    state = SimpleNamespace(history=history[:1], archive={}, lineage={})
    search = SimpleNamespace(run_dir=tmp_path / "replayed", config=tiny(*TRACKED), state=state)
    search.run_dir.mkdir()
    before = MlflowTracker()
    before.on_start(search)
    state.history = history[:2]
    before.on_generation(search, history[1])
    before.close()  # the driver stopped here; generation 2 ended, unlogged

    state.history = history[:1]  # the checkpoint's
    after = MlflowTracker()
    after.on_start(search)
    for entry in history[1:]:
        state.history.append(entry)
        after.on_generation(search, {**entry, "replayed": True})
    after.close(status="FINISHED")
    assert after.run_id == before.run_id and after.unlogged == []
    client = MlflowClient(after.tracking_uri)
    assert sorted(m.step for m in client.get_metric_history(after.run_id, "hypervolume")) == [0, 1, 2]
    pictures = {p.path for p in client.list_artifacts(after.run_id, "fronts")}
    assert pictures == {f"fronts/front_gen_{g:03d}.png" for g in (0, 1, 2)}
