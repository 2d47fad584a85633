"""The files thread of the tracker: writes the queued files (pictures through the plot
processes, masks, the final files) into ``<run_dir>/artifacts/``, beside the MLflow calls."""

from __future__ import annotations

import csv
import queue
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from certevo.search import plots
from certevo.search.run_directory import FRONT_GENERATION_PNG, FRONTS_DIR
from certevo.search.tracking.failures import _describe
from certevo.search.tracking.plot_worker import _PlotWorker, _WorkerGone


def _front_picture(generation: int) -> str:
    """``fronts/front_gen_<ggg>.png``, relative to ``artifacts/``."""
    return f"{FRONTS_DIR}/{FRONT_GENERATION_PNG.format(generation=generation)}"


class LocalArtifacts:
    """The local-files part of :class:`certevo.search.tracking.MlflowTracker` (its state is
    set up by ``MlflowTracker._reset``)."""

    def _front_png(self, summary: Mapping[str, Any]) -> Path:
        return self.artifacts_dir / _front_picture(int(summary["generation"]))

    def _queue_front_png(self, summary: Mapping[str, Any], earlier: list[Mapping[str, Any]], caption: str = "") -> Path:
        """Queue drawing ``fronts/front_gen_<ggg>.png`` (captioned); return its path."""
        generation = int(summary["generation"])
        name = _front_picture(generation)
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
