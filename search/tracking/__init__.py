"""MLflow tracking of a search, as an observer of the loop (see ``certevo.search.observer.SearchObserver``).

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
  ``failures``, ``best_certified_at_<level>``. The data set is a dataset input (certevo.search.tracking.names).
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

Modules
-------
``hooks`` (:class:`MlflowTracker`: the observer hooks and the session's settings), and the
parts it is made of: ``local_artifacts`` (the files thread writing ``<run_dir>/artifacts/``),
``plot_worker`` (the helper processes that draw), ``op_queue`` (the MLflow thread: the queue
of calls and their retries), ``mlflow_calls`` (every MLflow call). Small helpers:
``values`` (params, tags and keys within MLflow's limits), ``provenance`` (git commit,
version), ``failures`` (transient or permanent; :class:`TrackingWarning`), ``http_env``
(the MLflow HTTP variables set while a search runs). Beside them: ``names`` (child-run
names, the data set input), ``store`` (building a SQLite store atomically), ``location``
(the store of a moved run directory). The names of the files tracking keeps in a run
directory come from ``certevo.search.run_directory``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from certevo._lazy import lazy_names

#: Public name -> the module that defines it (imported on first use: the modules beside the
#: tracker, e.g. ``location``, are imported without matplotlib and the tracker's threads).
_EXPORTS = {
    "MlflowTracker": "certevo.search.tracking.hooks",
    "TrackingWarning": "certevo.search.tracking.failures",
    "flatten_config": "certevo.search.tracking.values",
    "git_commit": "certevo.search.tracking.provenance",
}

__all__ = ["MlflowTracker", "TrackingWarning", "flatten_config", "git_commit"]


__getattr__, __dir__ = lazy_names(__name__, _EXPORTS, globals())


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from certevo.search.tracking.failures import TrackingWarning
    from certevo.search.tracking.hooks import MlflowTracker
    from certevo.search.tracking.provenance import git_commit
    from certevo.search.tracking.values import flatten_config
