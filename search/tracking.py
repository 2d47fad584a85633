"""MLflow tracking of a search, as an observer of the loop (see ``certevo.search.loop.SearchObserver``).

The algorithm never imports mlflow: :class:`MlflowTracker` is handed to ``Search.create`` /
``Search.resume`` as an observer, and only the driver process (where the loop and its
observers run) talks to MLflow; evaluator actors never log.

Contract
--------
* One MLflow **parent run** per run directory. Its id is kept in
  ``<run_dir>/mlflow_run.json``; a resumed search reopens that same run (status back to
  RUNNING). If the run cannot be found (deleted, another tracking URI) a new run is started
  and the tracker says so (``tracker.messages`` and a :class:`TrackingWarning`); generations
  the run lacks are then logged from the search's history.
* Parent run: params = the configuration flattened with dots (``search.population_size``,
  ``training.lr``, lists as JSON text, values cut to MLflow's 6000-character limit); a
  resumed search whose budget changed logs the new value as tag ``resume.<param>`` (params
  are immutable in MLflow). Tags: ``seed``, ``certevo.version``, ``git_commit`` (and
  ``mlflow.source.git.commit``) when known, ``config_digest``, ``run_dir``, ``strategy``.
  Metrics per generation (``step`` = generation), all in one ``log_batch`` call:
  ``hypervolume``, ``front_size``, ``evaluations``, ``evaluations_per_minute``,
  ``failures``, ``best_certified_at_<level>``. The data set is a dataset input (certevo.search.tracking_names).
* Artifacts (written to ``<run_dir>/artifacts/`` first, then uploaded with the same
  relative paths): ``fronts/front_gen_<ggg>.png`` per generation; ``masks/<id>.json`` +
  ``masks/<id>.safetensors`` (``Genome.save``) of every candidate that has a child run
  (below), uploaded when it enters the front; at the end ``front.png`` (the final front
  with earlier fronts faded: a copy of the last generation's ``fronts/`` picture, which
  shows exactly that), ``history.png``, ``front.html`` (self-contained, interactive),
  ``front.json``, ``lineage.csv`` and ``lineage.png``.
* **Child runs** (tag ``mlflow.parentRunId``; named ``s<sparsity>-cert<certified>-<id>``), one per candidate
  that was on the front at the end of some generation, created (by the background thread)
  at the generation it entered the front, so the end of the search only creates those of
  the last generation. Rule: **the child runs tagged ``certevo.on_front=true`` are exactly
  the current front** (the final front once the search has ended); a member that later
  leaves the front keeps its child run, tagged ``certevo.on_front=false`` (its mask stays
  in ``masks/`` too). Params ``layer_sparsity.<layer>`` and ``activations``; metrics
  ``sparsity``, ``certified_accuracy``, ``clean_accuracy`` (and ``pgd_accuracy`` when
  measured), at the step of the generation it entered the front; tags ``generation`` (the
  one it was made in) and ``mask_artifact``, which names its mask in the parent run
  (``masks/<id>``). A resumed search reuses the child runs of candidates already logged.
* The parent run ends with status FINISHED.

Cost and resilience
-------------------
Hooks only queue work, for two threads of the tracker: the *files* thread writes the queued
files (pictures, masks, final files) into ``<run_dir>/artifacts/``; the *MLflow* thread
performs the MLflow calls in order, an upload waiting until its file is written. So creating
a new SQLite store (several seconds), drawing (a few hundred ms), child runs (~60 ms each on
SQLite) or a slow server never block the search while it runs. Pictures are drawn by
``plot_processes`` helper processes (default 2, started with the session, ended with it;
JSON over a pipe, no pickle): drawing is CPU-bound Python, and in the search's process it
would take turns with the driver and the MLflow thread for the GIL. A helper that dies or
hangs (``PLOT_TIMEOUT``) is replaced by drawing in-process. ``on_end`` queues the final
files and waits until everything queued is written and logged (or recorded as unlogged);
what is left then is only what the last generation made: its front picture (which
``front.png`` copies), its new child runs, ``history.png`` and ``lineage.png``, drawn side by
side in the two helpers (the driver thread writes files too while it waits).
``tracker.seconds_spent`` is the time the search spent inside the tracker's hooks
(``seconds_by_hook`` per hook; the final wait included); ``tracker.background_seconds`` the
time the tracker's threads worked. Files queued but not yet written when ``on_end``/``close``
runs are written there, so the run directory is complete when the search returns.
``benchmarks/tracking_overhead.py`` measures the cost on the default search.

A failing call never raises into the search. A transient failure (server unreachable,
timeout, HTTP 5xx) stops the queue at that call; it is retried when the next hook queues
work, and at ``on_end`` again with short backoff until ``end_timeout`` seconds (default 20)
have passed (calls that keep succeeding, e.g. a backlog being delivered or a new SQLite
store being created, are waited for up to ``PROGRESS_WAIT`` = 60 s more). A permanent
failure (MLflow rejects the call) drops that one call. Whatever could not be logged is
listed in ``tracker.unlogged`` and announced by one :class:`TrackingWarning`; the run
directory holds all of it regardless.

Fast failure against a tracking server: MLflow's HTTP client retries a failed request 7
times with exponential backoff (minutes) and waits 120 s for a response by default. For an
``http(s)://`` tracking URI the tracker sets ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` and
``MLFLOW_HTTP_REQUEST_TIMEOUT=5`` (constructor ``http_retries`` / ``http_timeout``) from
``on_start`` until ``on_end`` and then restores the previous values. MLflow reads these
variables from the process environment at every request, so there is no per-client way to
set them; while a search runs they apply to every MLflow client in the process. A variable
the user already set is left alone unless the matching constructor argument is given. It
also sets ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=true`` (unless set): otherwise MLflow
prints two lines, and asks the server once more, for every run it ends (one per front
member); the parent run's address is in ``tracker.run_url`` and ``tracker.messages``
instead. Local stores (the default SQLite file) need none of these and get none.
"""

from __future__ import annotations

import atexit
import csv
import select
import sys
import functools
import json
import math
import os
import re
import shutil
import subprocess
import queue
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certevo.search import plots
from certevo.search.certified_caption import search_caption
from certevo.search.tracking_names import child_run_name, log_dataset_input

__all__ = ["MlflowTracker", "TrackingWarning", "flatten_config", "git_commit"]

RUN_FILE = "mlflow_run.json"
ARTIFACTS_DIR = "artifacts"
DEFAULT_EXPERIMENT = "certevo"
PROJECT_ROOT = Path(__file__).resolve().parents[1]  # a source checkout's root (it holds certevo/ and search/)

# MLflow's limits (mlflow.utils.validation), repeated here so this module imports no mlflow
# until it needs it.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
MAX_PARAMS_TAGS_PER_BATCH = 100

ENV_MAX_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
ENV_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
DEFAULT_HTTP_RETRIES = 0
DEFAULT_HTTP_TIMEOUT = 5
ENV_NO_URL = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
PROGRESS_WAIT = 60.0
PLOT_FUNCTIONS = ("plot_front", "plot_history", "plot_lineage")
PLOT_TIMEOUT = 120.0

_TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED",
                    "ABORTED", "UNAVAILABLE"}


class TrackingWarning(UserWarning):
    """Something about MLflow tracking the user should know; the search itself is fine."""


class _NotReady(Exception):
    """The parent run does not exist yet (its creation is still queued)."""


class _NoRun(Exception):
    """The parent run could not be created, so nothing else can be logged to it."""


@dataclass
class _Op:
    what: str
    fn: Callable[[], None]
    needs: str | None = None  # a local file (artifacts/<needs>) written before the call
    attempts: int = 0
    last_error: str = ""


# -- small helpers -------------------------------------------------------------------------
def _key(name: str) -> str:
    """An MLflow-valid param/metric/tag key (alphanumerics, _ - . / : space; <= 250 chars)."""
    return re.sub(r"[^/\w.\- :]", "_", str(name))[:MAX_KEY]


def _cut(value: str, limit: int) -> str:
    if len(value) <= limit:
        return value
    marker = "...[cut]"
    return value[: limit - len(marker)] + marker


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return "None" if value is None else str(value)


def flatten_config(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"search": {"population_size": 12}}`` -> ``{"search.population_size": "12"}``:
    nested mappings joined with dots, lists as JSON text, values cut to MLflow's limit."""
    out: dict[str, str] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            out.update(flatten_config(value, key + "."))
        else:
            out[_key(key)] = _cut(_text(value), MAX_PARAM_VALUE)
    return out


def git_commit(root: str | Path = PROJECT_ROOT) -> str | None:
    """The commit checked out in ``root`` (read from ``.git``; ``git rev-parse HEAD`` only if
    that fails), or None when unknown."""
    root = Path(root)
    dot_git = root / ".git"
    if not dot_git.exists():
        return None
    try:
        git_dir = dot_git
        if dot_git.is_file():  # worktree or submodule: "gitdir: <path>"
            text = dot_git.read_text().strip()
            if text.startswith("gitdir:"):
                git_dir = (root / text[len("gitdir:"):].strip()).resolve()
        common = git_dir
        if (git_dir / "commondir").is_file():
            common = (git_dir / (git_dir / "commondir").read_text().strip()).resolve()
        head = (git_dir / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head if re.fullmatch(r"[0-9a-f]{40,64}", head) else None
        ref = head[len("ref:"):].strip()
        for base in (git_dir, common):
            if (base / ref).is_file():
                sha = (base / ref).read_text().strip()
                if re.fullmatch(r"[0-9a-f]{40,64}", sha):
                    return sha
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref:
                    return parts[0]
        return None  # a branch without commits
    except OSError:
        pass
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        sha = done.stdout.strip()
        return sha if done.returncode == 0 and sha else None
    except (OSError, subprocess.SubprocessError):
        return None


def _version() -> str:
    from certevo import __version__

    return __version__


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}"


def _is_transient(exc: BaseException) -> bool:
    """True for failures that may go away (server down or overloaded), False for calls
    MLflow rejected (retrying them would fail the same way)."""
    if isinstance(exc, _NotReady):
        return True
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    try:
        import requests

        if isinstance(exc, requests.exceptions.HTTPError):
            status = exc.response.status_code if exc.response is not None else 500
            return status >= 500 or status == 429
        if isinstance(exc, requests.exceptions.RequestException):
            return True
    except ImportError:  # pragma: no cover - mlflow depends on requests
        pass
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, MlflowException):
        return exc.error_code in _TRANSIENT_CODES
    return False


def _is_missing(exc: BaseException) -> bool:
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


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


class _EnvOverride:
    """Set some environment variables now, put the previous values back later."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)
        self.saved: dict[str, str | None] | None = None

    def apply(self) -> None:
        if self.saved is None and self.values:
            self.saved = {name: os.environ.get(name) for name in self.values}
            os.environ.update(self.values)

    def restore(self) -> None:
        if self.saved is None:
            return
        for name, old in self.saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
        self.saved = None


class _WorkerGone(Exception):
    """A plot worker process died, hung or could not start (the caller draws in-process)."""


def _encode_arg(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "to_json") and hasattr(value, "ancestors"):  # a certevo.population.lineage.Lineage
        return {"__lineage__": value.to_json()}
    return value


class _PlotWorker:
    """A child process (``python -c``, so nothing of the parent's ``__main__`` is imported)
    that draws with :mod:`certevo.search.plots`. Protocol: one JSON line in (``fn``, ``args``,
    ``kwargs``; a lineage as ``{"__lineage__": Lineage.to_json()}``), one JSON line out
    (``{"ok": true}`` or ``{"error": ...}``); closing its stdin ends it. Drawing is
    CPU-bound Python: in a process of its own it runs beside the search's threads instead of
    taking turns with them for the GIL. Only the thread holding it (from the tracker's idle
    queue) talks to it."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from certevo.search.tracking import _plot_worker_main; _plot_worker_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)

    def call(self, fn: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], timeout: float = PLOT_TIMEOUT) -> None:
        job = {"fn": fn, "args": [_encode_arg(a) for a in args],
               "kwargs": {k: _encode_arg(v) for k, v in kwargs.items()}}
        line = (json.dumps(job, default=str) + "\n").encode()
        try:
            self.proc.stdin.write(line)
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            answer = self.proc.stdout.readline() if ready else b""
        except (OSError, ValueError) as exc:
            raise _WorkerGone(_describe(exc)) from exc
        if not answer:
            raise _WorkerGone("no answer" if self.proc.poll() is None else f"exited with {self.proc.returncode}")
        reply = json.loads(answer)
        if not reply.get("ok"):
            raise RuntimeError(f"drawing failed in the plot process: {reply.get('error')}")

    def close_input(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def close(self, timeout: float = 5.0) -> None:
        self.close_input()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _plot_worker_main() -> None:
    """The loop of a :class:`_PlotWorker` process."""
    from certevo.population.lineage import Lineage

    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the drawing code prints goes to stderr, never into the protocol
    for line in sys.stdin:
        try:
            job = json.loads(line)
            if job.get("fn") not in PLOT_FUNCTIONS:
                raise ValueError(f"fn must be one of {PLOT_FUNCTIONS}; got {job.get('fn')!r}")
            args = [Lineage.from_json(a["__lineage__"]) if isinstance(a, dict) and "__lineage__" in a else a
                    for a in job["args"]]
            getattr(plots, job["fn"])(*args, **job["kwargs"])
            reply: dict[str, Any] = {"ok": True}
        except Exception as exc:
            reply = {"ok": False, "error": _describe(exc)}
        out.write(json.dumps(reply) + "\n")
        out.flush()


# -- the tracker ---------------------------------------------------------------------------
class MlflowTracker:
    """Logs a search to MLflow (see the module docstring for what, where and when).

    Args:
        tracking_uri: where to log; default ``sqlite:///<run_dir>/mlflow.db`` (no server).
        experiment_name: the experiment (created if missing), default ``"certevo"``.
        run_name: name of a new parent run (default: the run directory's name).
        artifact_location: artifact root of the experiment if the tracker creates it;
            default ``mlruns/`` next to a SQLite file (``<run_dir>/mlruns`` for the default
            store), else the server's or store's default.
        http_timeout, http_retries: per-request timeout (s) and retries for an HTTP
            tracking server while the search runs (defaults 5 and 0; see the module doc).
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
        self.tracking_uri = self.requested_uri or f"sqlite:///{self.run_dir / 'mlflow.db'}"
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
        ``artifacts/fronts/``), its metrics (one batch), the picture's upload, and the child
        runs (with masks) of the members new to the front, plus ``certevo.on_front`` of
        the child runs whose membership changed."""
        if not self._open:
            return
        generation = int(summary["generation"])
        earlier = [dict(h) for h in search.state.history if int(h["generation"]) < generation]
        png = self._queue_front_png(dict(summary), earlier, search_caption(search))
        stamp = int(time.time() * 1000)
        self._submit(f"metrics of generation {generation}",
                     functools.partial(self._op_metrics, generation, self._generation_metrics(summary), stamp))
        self._submit(f"artifact fronts/{png.name}", functools.partial(self._op_artifact, png, "fronts"),
                     needs=f"fronts/{png.name}")
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
            self._queue_local(f"masks/{cid}",
                              lambda p, c=candidate: self._mask_paths.__setitem__(c.id, list(c.genome.save(p))))
            self._submit(f"artifacts masks/{cid}", functools.partial(self._op_masks, cid), needs=f"masks/{cid}")
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
        write_and_upload("front.json", lambda p: p.write_text(json.dumps(dict(summary), indent=2)))
        write_and_upload("front.html", lambda p: plots.front_html(rows, p))
        write_and_upload("lineage.csv", lambda p: self._write_lineage_csv(lineage, ids, p))
        write_and_upload("lineage.png", lambda p: self._draw("plot_lineage", lineage, ids, p,
                                                             title=f"ancestry of the final front\n{caption}"))
        write_and_upload("history.png", lambda p: self._draw("plot_history", history, p, title=f"search progress\n{caption}"))
        write_and_upload("front.png", front_png)
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

    # -- local files ------------------------------------------------------------------
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
            return (database.resolve().parent / "mlruns").as_uri()
        return None

    def _front_png(self, summary: Mapping[str, Any]) -> Path:
        return self.artifacts_dir / "fronts" / f"front_gen_{int(summary['generation']):03d}.png"

    def _queue_front_png(self, summary: Mapping[str, Any], earlier: list[Mapping[str, Any]], caption: str = "") -> Path:
        """Queue drawing ``fronts/front_gen_<ggg>.png`` (captioned); return its path."""
        generation = int(summary["generation"])
        name = f"fronts/front_gen_{generation:03d}.png"
        self._queue_local(name, lambda p: self._draw(
            "plot_front", summary.get("front", []), p, history=earlier, title=f"Pareto front after generation {generation}\n{caption}"))
        return self.artifacts_dir / name

    def _queue_local(self, name: str, write: Callable[[Path], Any]) -> None:
        """Queue writing ``artifacts/<name>`` (by the background thread, or ``_finish``)."""
        with self._cv:
            self._local_jobs.append((name, write))
            self._local_pending[name] = self._local_pending.get(name, 0) + 1
            self._cv.notify_all()

    def _start_workers(self, session: object) -> None:
        """Start the plot processes (background thread; they import matplotlib meanwhile)."""
        for _ in range(self.plot_processes):
            if self._gone(session):
                return
            try:
                worker = _PlotWorker()
            except OSError as exc:
                self._say(f"MLflow tracking: could not start a plot process ({_describe(exc)}); drawing in-process",
                          warn=False)
                return
            with self._cv:
                if self._gone(session):  # closed meanwhile: _stop_workers has run
                    worker.close()
                    return
                self._workers.append(worker)
            self._idle_workers.put(worker)

    def _stop_workers(self) -> None:
        """End the plot processes without waiting for them (each exits when its stdin
        closes; a daemon thread reaps them)."""
        with self._cv:
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.close_input()
        if workers:
            threading.Thread(target=lambda: [w.close() for w in workers], name="certevo-plot-reaper",
                             daemon=True).start()

    def _draw(self, fn: str, *args: Any, **kwargs: Any) -> None:
        """``plots.<fn>(*args, **kwargs)`` in an idle plot process, else in this thread (no
        process idle, none started, or the one used died)."""
        try:
            worker = self._idle_workers.get_nowait()
        except queue.Empty:
            worker = None
        if worker is not None:
            try:
                worker.call(fn, args, kwargs)
                self._idle_workers.put(worker)
                return
            except _WorkerGone as exc:
                self._say(f"MLflow tracking: a plot process failed ({exc}); drawing in-process", warn=False)
                worker.close(timeout=1.0)
            except Exception:
                self._idle_workers.put(worker)
                raise
        getattr(plots, fn)(*args, **kwargs)

    def _run_local_jobs(self) -> None:
        """Write the queued local files (either thread may call this; each job runs once)."""
        while True:
            with self._cv:
                if not self._local_jobs:
                    return
                name, write = self._local_jobs.popleft()
                self._local_running += 1
            start = time.perf_counter()
            try:
                self._local(name, write)
            finally:
                if threading.current_thread() is self._files_thread:
                    self.background_seconds += time.perf_counter() - start
                with self._cv:
                    self._local_running -= 1
                    left = self._local_pending.get(name, 1) - 1
                    if left > 0:
                        self._local_pending[name] = left
                    else:
                        self._local_pending.pop(name, None)
                    self._cv.notify_all()

    def _local(self, name: str, write: Callable[[Path], Any]) -> Path | None:
        """Write ``artifacts/<name>``; a failure is reported, never raised."""
        path = self.artifacts_dir / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path)
            return path
        except Exception as exc:
            self._failed_local.add(path)
            self.unwritten.append(f"{name}: {_describe(exc)}")
            self._say(f"MLflow tracking: could not write {path} ({_describe(exc)})")
            return None

    @staticmethod
    def _write_lineage_csv(lineage: Any, front_ids: list[str], path: Path) -> None:
        front = set(front_ids)
        rows = []
        for row in lineage.rows():
            out = {"id": row["candidate_id"], "generation": row["generation"], "operator": row["operator"],
                   "parents": row["parents"], "on_front": row["candidate_id"] in front}
            out.update({k: v for k, v in row.items()
                        if k not in ("candidate_id", "generation", "operator", "parents", "fitness.candidate_id")})
            rows.append(out)
        columns: list[str] = ["id", "generation", "operator", "parents", "on_front"]
        for row in rows:
            columns.extend(k for k in row if k not in columns)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    @staticmethod
    def _generation_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
        metrics = {name: float(summary[name]) for name in
                   ("hypervolume", "front_size", "evaluations", "evaluations_per_minute", "failures")
                   if name in summary}
        for level, value in (summary.get("best_certified") or {}).items():
            metrics[_key(f"best_certified_at_{level}")] = float(value)
        return {k: v for k, v in metrics.items() if math.isfinite(v)}

    # -- the queue --------------------------------------------------------------------
    def _submit(self, what: str, fn: Callable[[], None], needs: str | None = None) -> None:
        with self._cv:
            self._ops.append(_Op(what, fn, needs))
            self._wake = True
            self._cv.notify_all()

    def _files_work(self, session: object) -> None:
        """The files thread: write queued local files (pictures through the plot processes,
        masks, the final files) as they are queued, beside the MLflow calls."""
        cv = self._cv
        while True:
            with cv:
                while not self._local_jobs and not self._closing and not self._gone(session):
                    cv.wait()
                if self._gone(session) or (self._closing and not self._local_jobs):
                    return
            self._run_local_jobs()

    def _gone(self, session: object) -> bool:
        """True once the session a background thread serves is over (given up, or the
        tracker was started again)."""
        return self._session is not session or self._abandoned

    def _work(self, session: object) -> None:
        """The background thread: run queued calls whenever a hook queues work. When
        closing: go on while calls succeed; after a failed call retry with backoff until
        the deadline, then stop."""
        self._start_workers(session)
        backoff = 0.25
        cv = self._cv
        while True:
            with cv:
                while not self._wake and not self._closing and not self._gone(session):
                    cv.wait()
                self._wake = False
                closing, deadline = self._closing, self._deadline
            if self._gone(session):
                return
            drained = self._flush(session)
            if closing:
                left = deadline - time.monotonic()
                if drained or left <= 0 or self._gone(session):
                    return
                time.sleep(min(backoff, left))
                backoff = min(backoff * 2, 4.0)

    def _flush(self, session: object) -> bool:
        """Run queued calls in order until one fails transiently; True if the queue is empty."""
        while True:
            with self._cv:
                if self._gone(session):
                    return False
                if not self._ops:
                    return True
                op = self._ops[0]
                if op.needs is not None:  # the file it uploads is written first (by the files thread)
                    self._cv.wait_for(lambda: op.needs not in self._local_pending or self._gone(session),
                                      timeout=PLOT_TIMEOUT)
                    if self._gone(session):
                        return False
            start = time.perf_counter()
            try:
                op.fn()
                failure = None
            except Exception as exc:  # classified below; never propagates
                failure = exc
            finally:
                self.background_seconds += time.perf_counter() - start
            if failure is not None:
                op.attempts += 1
                op.last_error = _describe(failure)
                if _is_transient(failure):
                    return False
                with self._cv:  # rejected: drop it, report it, go on with the rest
                    if self._ops and self._ops[0] is op:
                        self._ops.popleft()
                self.unlogged.append(f"{op.what}: {op.last_error}")
                continue
            with self._cv:
                if self._ops and self._ops[0] is op:
                    self._ops.popleft()

    def _finish(self, timeout: float, progress_wait: float = PROGRESS_WAIT) -> None:
        """Let the background thread drain the queue, then report what is left and restore
        the environment. Failed calls are retried until ``timeout`` s from now; calls that
        succeed (a new SQLite store takes seconds to create) are waited for up to
        ``progress_wait`` s longer."""
        try:
            atexit.unregister(self._at_exit)
            thread = self._thread
            with self._cv:
                self._closing = True
                self._deadline = time.monotonic() + timeout
                self._wake = True
                self._cv.notify_all()
            self._run_local_jobs()  # beside the files thread (each uses its own plot process)
            with self._cv:  # a file the files thread is writing right now
                self._cv.wait_for(lambda: not self._local_pending, timeout=PLOT_TIMEOUT)
            if thread is not None:
                thread.join(timeout + progress_wait)
            with self._cv:
                self._abandoned = True
                left = list(self._ops)
                self._ops.clear()
            for op in left:
                self.unlogged.append(f"{op.what}: {op.last_error or 'not attempted (an earlier call failed)'}")
            if self._files_thread is not None:
                self._files_thread.join(5.0)
            self._stop_workers()
            if self.unlogged:
                self._say(f"MLflow tracking: {len(self.unlogged)} item(s) could not be logged to {self.tracking_uri} "
                          f"(first: {self.unlogged[0]}); the run directory {self.run_dir} has everything "
                          f"(artifacts in {self.artifacts_dir}); see tracker.unlogged")
        finally:
            self._env.restore()
            self._open = False

    # -- MLflow calls (background thread only) ----------------------------------------
    def _get_client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            from certevo.search.tracking_store import prepare_store

            prepare_store(self.tracking_uri, self._artifact_root)
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _run(self) -> str:
        if self.run_id is None:
            if self._start_error is not None:
                raise _NoRun(f"no MLflow run ({self._start_error})")
            raise _NotReady("the parent run is not created yet")
        return self.run_id

    def _experiment(self) -> str:
        client = self._get_client()
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            try:
                return client.create_experiment(self.experiment_name, artifact_location=self._artifact_root)
            except Exception as exc:
                if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
            self._say(f"MLflow tracking: experiment {self.experiment_name!r} was deleted; restored it", warn=False)
        return experiment.experiment_id

    def _op_start_run(self) -> None:
        if self.run_id is not None:  # done on an earlier attempt
            return
        try:
            self.experiment_id = self._experiment()
            client = self._get_client()
            previous = self._read_run_file()
            if previous.get("run_id"):
                run = None
                try:
                    run = client.get_run(previous["run_id"])
                except Exception as exc:
                    if _is_transient(exc) or not _is_missing(exc):
                        raise
                if run is not None and run.info.lifecycle_stage == "active":
                    client.update_run(run.info.run_id, status="RUNNING")
                    self.run_id = run.info.run_id
                    self.experiment_id = run.info.experiment_id
                    self.resumed = True
                    self._existing_params = dict(run.data.params)
                    self._say(f"MLflow tracking: resuming parent run {self.run_id}", warn=False)
                else:
                    self._say(f"MLflow tracking: could not find the parent run {previous['run_id']} of {self.run_dir} "
                              f"in {self.tracking_uri} (deleted, or another tracking URI); starting a new run")
            if self.run_id is None:
                tags = dict(self._tags)
                if previous.get("run_id"):
                    tags["certevo.previous_run_id"] = str(previous["run_id"])
                run = client.create_run(self.experiment_id, run_name=self.run_name or self.run_dir.name, tags=tags)
                self.run_id = run.info.run_id
            if _is_http(self.tracking_uri):
                self.run_url = f"{self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
                self._say(f"MLflow tracking: parent run at {self.run_url}", warn=False)
            self._write_run_file()
        except Exception as exc:
            if not _is_transient(exc):
                self._start_error = f"starting it failed: {_describe(exc)}"
            raise

    def _read_run_file(self) -> dict[str, Any]:
        path = self.run_dir / RUN_FILE
        try:
            data = json.loads(path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write_run_file(self) -> None:
        data = {"run_id": self.run_id, "experiment_id": self.experiment_id, "experiment_name": self.experiment_name,
                "tracking_uri": self.tracking_uri,  # certevo.search.tracking_location: a moved run directory finds
                "default_store": self.tracking_uri == f"sqlite:///{self.run_dir / 'mlflow.db'}"}  # its own store
        tmp = self.run_dir / f".{RUN_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.run_dir / RUN_FILE)

    def _op_params(self) -> None:
        from mlflow.entities import Param, RunTag

        run_id = self._run()
        existing = self._existing_params
        params = [Param(k, v) for k, v in self._params.items() if k not in existing]
        tags = dict(self._tags)
        for name, value in self._params.items():
            if name in existing and existing[name] != value:  # params are immutable: say it as a tag
                tags[_key(f"resume.{name}")] = _cut(value, MAX_TAG_VALUE)
        if self.resumed:
            tags["certevo.resumed"] = "true"
        entities: list[Any] = params + [RunTag(k, v) for k, v in tags.items()]
        client = self._get_client()
        for i in range(0, len(entities), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = entities[i:i + MAX_PARAMS_TAGS_PER_BATCH]
            client.log_batch(run_id, params=[e for e in chunk if isinstance(e, Param)],
                             tags=[e for e in chunk if isinstance(e, RunTag)])
        self._existing_params = {**existing, **{p.key: p.value for p in params}}

    def _op_metrics(self, step: int, metrics: Mapping[str, float], stamp: int) -> None:
        from mlflow.entities import Metric

        self._get_client().log_batch(self._run(), metrics=[Metric(k, v, stamp, step) for k, v in metrics.items()])

    def _op_artifact(self, path: Path, where: str | None) -> None:
        if path in self._failed_local:  # not written: already in tracker.unwritten
            return
        self._get_client().log_artifact(self._run(), str(path), where)

    def _op_masks(self, cid: str) -> None:
        """Upload ``masks/<cid>.json`` and ``.safetensors`` (skipped for a child run an
        earlier session logged: its masks were uploaded before it was created)."""
        if cid in self._earlier_children:
            return
        run_id = self._run()
        for path in self._mask_paths.get(cid, []):  # none if writing failed (see tracker.unwritten)
            self._get_client().log_artifact(run_id, str(path), "masks")

    def _op_backfill(self, history: list[Mapping[str, Any]]) -> None:
        """Log the generations of ``history`` the parent run has no metrics for (a new run
        for a resumed search, or a crash before the queue drained)."""
        run_id = self._run()
        client = self._get_client()
        logged = {m.step for m in client.get_metric_history(run_id, "hypervolume")}
        stamp = int(time.time() * 1000)
        for entry in history:
            generation = int(entry["generation"])
            if generation in logged:
                continue
            self._op_metrics(generation, self._generation_metrics(entry), stamp)
            png = self._front_png(entry)
            name = png.relative_to(self.artifacts_dir).as_posix()
            with self._cv:  # on_start queued the pictures a crash left undrawn
                self._cv.wait_for(lambda: name not in self._local_pending, timeout=PLOT_TIMEOUT)
            if png.is_file():
                client.log_artifact(run_id, str(png), "fronts")
            logged.add(generation)

    def _op_find_children(self) -> None:
        client = self._get_client()
        run_id = self._run()
        if not self.resumed:  # a new parent run has no children yet
            return
        token = None
        while True:
            page = client.search_runs([self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
                                      max_results=500, page_token=token)
            for run in page:
                cid = run.data.tags.get("certevo.candidate_id")
                if cid and cid not in self.child_run_ids:
                    self.child_run_ids[cid] = run.info.run_id
                    self._earlier_children.add(cid)
                    self._on_front_tag[cid] = run.data.tags.get("certevo.on_front", "")
            token = page.token
            if not token:
                return

    def _op_child(self, candidate: Any, generation: int | None, step: int) -> None:
        """Create the finished child run of a front member (``step``: the generation it
        entered the front; ``generation``: the one it was made in)."""
        from mlflow.entities import Metric, Param, RunTag

        client = self._get_client()
        parent = self._run()
        cid = candidate.id
        record = candidate.record
        if cid in self.child_run_ids:  # logged in an earlier session: _op_membership tags it
            return
        child = self._child_pending.get(cid)
        if child is None:  # a retry after a failure below reuses the run created before it
            tags = {"mlflow.parentRunId": parent, "certevo.candidate_id": cid, "certevo.on_front": "true",
                    "mask_artifact": f"masks/{cid}"}
            if generation is not None:
                tags["generation"] = str(generation)
            child = client.create_run(self.experiment_id, run_name=child_run_name(candidate), tags=tags).info.run_id
            self._child_pending[cid] = child
            self._on_front_tag[cid] = "true"
        pattern = candidate.genome.activation_pattern()
        params = [Param(_key(f"layer_sparsity.{layer}"), f"{float(value):.6g}")
                  for layer, value in record.layer_sparsity.items()]
        params.append(Param("activations", _cut(json.dumps(pattern), MAX_PARAM_VALUE)))
        stamp = int(time.time() * 1000)
        metrics = [Metric("sparsity", float(record.sparsity), stamp, step),
                   Metric("certified_accuracy", float(record.certified_accuracy), stamp, step),
                   Metric("clean_accuracy", float(record.clean_accuracy), stamp, step)]
        if record.pgd_accuracy is not None:
            metrics.append(Metric("pgd_accuracy", float(record.pgd_accuracy), stamp, step))
        first = MAX_PARAMS_TAGS_PER_BATCH - 1
        client.log_batch(child, metrics=metrics, params=params[:first],
                         tags=[RunTag("activations_text", _cut(plots.activation_text(pattern), MAX_TAG_VALUE))])
        for i in range(first, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(child, params=params[i:i + MAX_PARAMS_TAGS_PER_BATCH])
        client.set_terminated(child, "FINISHED")
        self.child_run_ids[cid] = child
        self._child_pending.pop(cid, None)

    def _op_membership(self, front: frozenset[str]) -> None:
        """Set ``certevo.on_front`` of every child run to whether it is in ``front``, writing
        only the tags that change."""
        client = self._get_client()
        for cid, child in list(self.child_run_ids.items()):
            value = "true" if cid in front else "false"
            if self._on_front_tag.get(cid) != value:
                client.set_tag(child, "certevo.on_front", value)
                self._on_front_tag[cid] = value

    def _op_terminate(self, status: str) -> None:
        self._get_client().set_terminated(self._run(), status)

