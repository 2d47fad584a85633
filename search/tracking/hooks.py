"""The :class:`MlflowTracker`: the observer hooks the loop calls, which only queue work for
the tracker's two threads (see the package docstring for what is logged, where and when)."""

from __future__ import annotations

import atexit
import functools
import json
import math
import os
import queue
import shutil
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from certevo.search import plots
from certevo.search.certified_caption import search_caption
from certevo.search.observer import SearchObserver
from certevo.search.run_directory import (ARTIFACTS_DIR, FRONT_FILE, FRONT_HTML, FRONT_PNG, FRONTS_DIR, HISTORY_PNG,
                                          LINEAGE_CSV, LINEAGE_PNG, MASKS_DIR, MLFLOW_ARTIFACT_ROOT, MLFLOW_DATABASE)
from certevo.search.tracking.failures import TrackingWarning, _describe
from certevo.search.tracking.http_env import (DEFAULT_HTTP_RETRIES, DEFAULT_HTTP_TIMEOUT, ENV_MAX_RETRIES, ENV_NO_URL,
                                              ENV_TIMEOUT, _EnvOverride, _is_http)
from certevo.search.tracking.local_artifacts import LocalArtifacts
from certevo.search.tracking.mlflow_calls import MlflowCalls
from certevo.search.tracking.names import log_dataset_input
from certevo.search.tracking.op_queue import OpQueue, _Op
from certevo.search.tracking.plot_worker import PLOT_TIMEOUT, _PlotWorker
from certevo.search.tracking.provenance import _version, git_commit
from certevo.search.tracking.values import MAX_TAG_VALUE, _cut, _key, flatten_config

__all__ = ["MlflowTracker"]

DEFAULT_EXPERIMENT = "certevo"


def _hook(fn: Callable[..., None]) -> Callable[..., None]:
    """Time a hook into ``seconds_spent`` and never let it raise into the search."""

    @functools.wraps(fn)
    def wrapper(self: MlflowTracker, *args: Any) -> None:
        start = time.perf_counter()
        try:
            fn(self, *args)
        except Exception as exc:  # tracking must never stop a search
            self._say(f"MLflow tracking: {fn.__name__} failed ({_describe(exc)}); the search goes on")
        finally:
            spent = time.perf_counter() - start
            self.seconds_spent += spent
            self.seconds_by_hook[fn.__name__] = self.seconds_by_hook.get(fn.__name__, 0.0) + spent

    return wrapper


class MlflowTracker(LocalArtifacts, OpQueue, MlflowCalls, SearchObserver):
    """Logs a search to MLflow (see the package docstring, certevo.search.tracking, for what,
    where and when).

    Args:
        tracking_uri: where to log; default ``sqlite:///<run_dir>/mlflow.db`` (no server).
        experiment_name: the experiment (created if missing), default ``"certevo"``.
        run_name: name of a new parent run (default: the run directory's name).
        artifact_location: artifact root of the experiment if the tracker creates it;
            default ``mlruns/`` next to a SQLite file (``<run_dir>/mlruns`` for the default
            store), else the server's or store's default.
        http_timeout, http_retries: per-request timeout (s) and retries for an HTTP
            tracking server while the search runs (defaults 5 and 0; see the package doc).
        end_timeout: how long ``on_end`` keeps retrying calls that failed (seconds).
        tags: extra tags for the parent run.
        plot_processes: helper processes that draw the pictures (default 2; 0 draws in
            the search's process, on the tracker's threads).

    After ``on_end``: ``run_id``, ``tracking_uri``, ``experiment_id``, ``seconds_spent``,
    ``background_seconds``, ``unlogged`` (what could not be logged, with the reason),
    ``unwritten`` (local files that could not be written), ``messages`` (what it said).
    """

    def __init__(self, tracking_uri: str | None = None, experiment_name: str = DEFAULT_EXPERIMENT, *,
                 run_name: str | None = None, artifact_location: str | None = None,
                 http_timeout: int | None = None, http_retries: int | None = None,
                 end_timeout: float = 20.0, tags: Mapping[str, str] | None = None, plot_processes: int = 2) -> None:
        if not experiment_name:
            raise ValueError("experiment_name must be a non-empty string; got an empty one; e.g. 'certevo'")
        if end_timeout < 0:
            raise ValueError(f"end_timeout must be >= 0 seconds; got {end_timeout!r}; e.g. 20")
        if not isinstance(plot_processes, int) or plot_processes < 0:
            raise ValueError(f"plot_processes must be an integer >= 0; got {plot_processes!r}; e.g. 2, or 0 to "
                             "draw in the search's process")
        self.plot_processes = plot_processes
        self.requested_uri = tracking_uri
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.artifact_location = artifact_location
        self.http_timeout = http_timeout
        self.http_retries = http_retries
        self.end_timeout = float(end_timeout)
        self.extra_tags = dict(tags or {})
        self._reset()

    def _reset(self) -> None:
        self.tracking_uri: str | None = self.requested_uri
        self.run_id: str | None = None
        self.run_url: str | None = None
        self.experiment_id: str | None = None
        self.run_dir: Path | None = None
        self.artifacts_dir: Path | None = None
        self.resumed = False
        self.seconds_spent = 0.0
        self.seconds_by_hook: dict[str, float] = {}
        self.background_seconds = 0.0
        self.evaluations_seen = 0
        self.unlogged: list[str] = []
        self.unwritten: list[str] = []
        self.messages: list[str] = []
        self.child_run_ids: dict[str, str] = {}
        self._child_pending: dict[str, str] = {}
        self._queued_children: set[str] = set()  # driver: members whose child run is queued (this session)
        self._on_front_tag: dict[str, str] = {}  # background: certevo.on_front as last written, per candidate
        self._earlier_children: set[str] = set()  # background: child runs found from an earlier session
        self._mask_paths: dict[str, list[Path]] = {}  # background: mask files written, per candidate
        self._failed_local: set[Path] = set()
        self._workers: list[_PlotWorker] = []
        self._idle_workers: queue.SimpleQueue[_PlotWorker] = queue.SimpleQueue()
        self._client: Any = None
        self._existing_params: dict[str, str] = {}
        self._start_error: str | None = None
        self._params: dict[str, str] = {}
        self._artifact_root: str | None = self.artifact_location
        self._tags: dict[str, str] = {}
        self._ops: deque[_Op] = deque()
        self._local_jobs: deque[tuple[str, Callable[[Path], Any]]] = deque()
        self._local_running = 0
        self._local_pending: dict[str, int] = {}  # names queued or being written
        self._cv = threading.Condition()
        self._wake = False
        self._closing = False
        self._abandoned = False
        self._session = object()
        self._deadline = 0.0
        self._thread: threading.Thread | None = None
        self._files_thread: threading.Thread | None = None
        self._env = _EnvOverride({})
        self._open = False

    # -- reporting --------------------------------------------------------------------
    def _say(self, message: str, warn: bool = True) -> None:
        self.messages.append(message)
        if warn:
            warnings.warn(message, TrackingWarning, stacklevel=3)

    def report(self) -> dict[str, Any]:
        """What the tracker did, as plain data (for a CLI or a log)."""
        return {"tracking_uri": self.tracking_uri, "experiment_id": self.experiment_id, "run_id": self.run_id,
                "run_url": self.run_url, "resumed": self.resumed, "seconds_spent": self.seconds_spent,
                "seconds_by_hook": dict(self.seconds_by_hook), "background_seconds": self.background_seconds,
                "unlogged": list(self.unlogged), "unwritten": list(self.unwritten), "messages": list(self.messages)}

    # -- observer hooks ---------------------------------------------------------------
    @_hook
    def on_start(self, search: Any) -> None:
        """Resolve the store, queue creating (or reopening) the parent run and its params."""
        if self._open:  # the same tracker started again without on_end: close the old session
            self.close(status="KILLED", timeout=2.0)
        self._reset()
        self._open = True
        self.run_dir = Path(search.run_dir).resolve()
        self.artifacts_dir = self.run_dir / ARTIFACTS_DIR
        self.tracking_uri = self.requested_uri or f"sqlite:///{self.run_dir / MLFLOW_DATABASE}"
        self._artifact_root = self.artifact_location or self._default_artifact_root(self.tracking_uri)
        self._env = _EnvOverride(self._http_env() if _is_http(self.tracking_uri) else {})
        self._env.apply()
        config = search.config
        self._params = flatten_config(config.to_dict())
        commit = git_commit()
        tags = {
            "seed": str(config.search.seed),
            "certevo.version": _version(),
            "config_digest": config.digest(),
            "run_dir": str(self.run_dir),
            "strategy": config.search.strategy,
        }
        if commit:
            tags["git_commit"] = commit
            tags["mlflow.source.git.commit"] = commit
        tags.update({str(k): str(v) for k, v in self.extra_tags.items()})
        self._tags = {_key(k): _cut(v, MAX_TAG_VALUE) for k, v in tags.items()}
        history = [dict(h) for h in search.state.history]
        self._thread = threading.Thread(target=self._work, args=(self._session,), name="certevo-mlflow-tracker",
                                        daemon=True)
        self._thread.start()
        self._files_thread = threading.Thread(target=self._files_work, args=(self._session,),
                                              name="certevo-mlflow-files", daemon=True)
        self._files_thread.start()
        for entry in history:  # a resumed search: pictures a crash may have left unwritten
            if not self._front_png(entry).is_file():
                self._queue_front_png(entry, [h for h in history if int(h["generation"]) < int(entry["generation"])],
                                      search_caption(search))
        self._submit("start or reopen the parent run", self._op_start_run)
        self._submit("parameters and tags of the parent run", self._op_params)
        self._submit("data set input", functools.partial(log_dataset_input, self._get_client, self._run, config.data))
        self._submit("child runs of earlier sessions", self._op_find_children)
        if history:
            self._submit("metrics and fronts of the generations before this session",
                         functools.partial(self._op_backfill, history))
        atexit.register(self._at_exit)

    @_hook
    def on_evaluation(self, search: Any, result: Any) -> None:
        """Counted only: nothing is logged per evaluation."""
        self.evaluations_seen += 1

    @_hook
    def on_generation(self, search: Any, summary: Mapping[str, Any]) -> None:
        """Queue the generation's front picture (drawn by the background thread into
        ``artifacts/fronts/``), its metrics (one batch; for a generation replayed on resume,
        only if the parent run has none for it), the picture's upload, and the child
        runs (with masks) of the members new to the front, plus ``certevo.on_front`` of
        the child runs whose membership changed."""
        if not self._open:
            return
        generation = int(summary["generation"])
        earlier = [dict(h) for h in search.state.history if int(h["generation"]) < generation]
        png = self._queue_front_png(dict(summary), earlier, search_caption(search))
        if summary.get("replayed"):  # ended again by an asynchronous resume: logged unless the stop lost it
            self._submit(f"metrics and front of generation {generation}, if not logged before the stop",
                         functools.partial(self._op_backfill, [dict(summary)]))
        else:
            stamp = int(time.time() * 1000)
            self._submit(f"metrics of generation {generation}",
                         functools.partial(self._op_metrics, generation, self._generation_metrics(summary), stamp))
            self._submit(f"artifact {FRONTS_DIR}/{png.name}", functools.partial(self._op_artifact, png, FRONTS_DIR),
                         needs=f"{FRONTS_DIR}/{png.name}")
        self._sync_front(search, [str(p[0]) for p in summary.get("front", [])], generation)

    def _sync_front(self, search: Any, ids: list[str], step: int) -> None:
        """Queue, for every member of the front ``ids`` whose child run this session has not
        queued yet, writing its mask files, uploading them and creating its child run; then
        one call that sets ``certevo.on_front`` where it changed."""
        archive = search.state.archive
        lineage = search.state.lineage
        for cid in ids:
            candidate = archive.get(cid)
            if cid in self._queued_children or candidate is None:
                continue
            self._queued_children.add(cid)
            generation = lineage.get(cid).generation if cid in lineage else None
            self._queue_local(f"{MASKS_DIR}/{cid}",
                              lambda p, c=candidate: self._mask_paths.__setitem__(c.id, list(c.genome.save(p))))
            self._submit(f"artifacts {MASKS_DIR}/{cid}", functools.partial(self._op_masks, cid),
                         needs=f"{MASKS_DIR}/{cid}")
            self._submit(f"child run of {cid}", functools.partial(self._op_child, candidate, generation, step))
        self._submit("front membership of the child runs", functools.partial(self._op_membership, frozenset(ids)))

    @_hook
    def on_end(self, search: Any, summary: Mapping[str, Any]) -> None:
        """Queue the final artifacts and their upload, the child runs of members not logged
        yet and the end of the parent run, then wait (see ``end_timeout``) until all of it
        is written and logged."""
        if not self._open:
            return
        try:
            self._final_artifacts(search, summary)
        finally:
            self._finish(self.end_timeout)

    def _final_artifacts(self, search: Any, summary: Mapping[str, Any]) -> None:
        """Queue the final files (written by the background thread, or by ``_finish``) and
        their uploads. ``front.png`` is a copy of the last generation's front picture when
        the final front is that generation's (it always is at the end of a search)."""
        rows = [dict(r) for r in summary.get("front", [])]
        ids = [str(r["id"]) for r in rows]
        history = [dict(h) for h in summary.get("history", search.state.history)]
        lineage = search.state.lineage
        final_step, caption = int(summary.get("generations", search.state.generation)), search_caption(search)
        self._sync_front(search, ids, final_step)  # normally nothing new: on_generation queued them

        def write_and_upload(name: str, write: Callable[[Path], Any]) -> None:
            self._queue_local(name, write)
            self._submit(f"artifact {name}", functools.partial(self._op_artifact, self.artifacts_dir / name, None),
                         needs=name)

        last = history[-1] if history else None
        reuse = None
        if last is not None and int(last["generation"]) == final_step and \
                sorted(str(p[0]) for p in last.get("front", [])) == sorted(ids):
            reuse = self._front_png(last)

        def front_png(path: Path) -> None:
            if reuse is not None:
                # queued before this job (FIFO), so done or being written by the other thread
                name = reuse.relative_to(self.artifacts_dir).as_posix()
                with self._cv:
                    self._cv.wait_for(lambda: name not in self._local_pending, timeout=PLOT_TIMEOUT)
                if reuse.is_file():
                    shutil.copyfile(reuse, path)
                    return
            self._draw("plot_front", rows, path, history=history[:-1], title=f"final Pareto front\n{caption}")

        # the longest drawing first; front.png last, as it waits for the last generation's picture
        write_and_upload(FRONT_FILE, lambda p: p.write_text(json.dumps(dict(summary), indent=2)))
        write_and_upload(FRONT_HTML, lambda p: plots.front_html(rows, p))
        write_and_upload(LINEAGE_CSV, lambda p: self._write_lineage_csv(lineage, ids, p))
        write_and_upload(LINEAGE_PNG, lambda p: self._draw("plot_lineage", lineage, ids, p,
                                                             title=f"ancestry of the final front\n{caption}"))
        write_and_upload(HISTORY_PNG, lambda p: self._draw("plot_history", history, p, title=f"search progress\n{caption}"))
        write_and_upload(FRONT_PNG, front_png)
        self._submit("end of the parent run (FINISHED)", functools.partial(self._op_terminate, "FINISHED"))

    def on_error(self, search: Any, error: BaseException) -> None:
        """The search stopped early: the parent run ends KILLED when it was stopped on
        purpose (Ctrl-C, SIGTERM), FAILED otherwise."""
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        self.close(status=status, timeout=min(self.end_timeout, 5.0))

    def close(self, status: str = "KILLED", timeout: float = 5.0) -> None:
        """End an open session without the final artifacts (the search stopped early):
        the parent run gets ``status``; idempotent."""
        if not self._open:
            return
        start = time.perf_counter()
        try:
            self._submit(f"end of the parent run ({status})", functools.partial(self._op_terminate, status))
            self._finish(timeout, progress_wait=timeout)
        finally:
            self.seconds_spent += time.perf_counter() - start

    def _at_exit(self) -> None:
        self.close(status="KILLED", timeout=3.0)

    # -- settings of the session ------------------------------------------------------
    def _http_env(self) -> dict[str, str]:
        values = {}
        for name, given, default in ((ENV_MAX_RETRIES, self.http_retries, DEFAULT_HTTP_RETRIES),
                                     (ENV_TIMEOUT, self.http_timeout, DEFAULT_HTTP_TIMEOUT)):
            if given is not None:
                values[name] = str(int(given))
            elif name not in os.environ:
                values[name] = str(default)
        if ENV_NO_URL not in os.environ:  # MLflow prints two lines (and asks the server) per ended run
            values[ENV_NO_URL] = "true"
        return values

    @staticmethod
    def _default_artifact_root(uri: str) -> str | None:
        """``mlruns/`` next to a SQLite file (MLflow's own default is ./mlruns in the
        current directory); None (the server's or store's choice) otherwise."""
        if uri.startswith("sqlite:///") and ":memory:" not in uri:
            database = Path(uri[len("sqlite:///"):].split("?", 1)[0])  # sqlite:////abs or sqlite:///relative
            return (database.resolve().parent / MLFLOW_ARTIFACT_ROOT).as_uri()
        return None

    @staticmethod
    def _generation_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
        metrics = {name: float(summary[name]) for name in
                   ("hypervolume", "front_size", "evaluations", "evaluations_per_minute", "failures")
                   if name in summary}
        for level, value in (summary.get("best_certified") or {}).items():
            metrics[_key(f"best_certified_at_{level}")] = float(value)
        return {k: v for k, v in metrics.items() if math.isfinite(v)}
