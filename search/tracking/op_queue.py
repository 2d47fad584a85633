"""The MLflow thread of the tracker: the queue of MLflow calls, run in order, retried after
a transient failure and dropped (and reported) when MLflow rejects them; and the end of a
session, which waits for the queue to drain."""

from __future__ import annotations

import atexit
import time
from collections.abc import Callable
from dataclasses import dataclass

from certevo.search.tracking.failures import _describe, _is_transient
from certevo.search.tracking.plot_worker import PLOT_TIMEOUT

PROGRESS_WAIT = 60.0


@dataclass
class _Op:
    what: str
    fn: Callable[[], None]
    needs: str | None = None  # a local file (artifacts/<needs>) written before the call
    attempts: int = 0
    last_error: str = ""


class OpQueue:
    """The queue part of :class:`certevo.search.tracking.MlflowTracker` (its state is set up
    by ``MlflowTracker._reset``)."""

    def _submit(self, what: str, fn: Callable[[], None], needs: str | None = None) -> None:
        with self._cv:
            self._ops.append(_Op(what, fn, needs))
            self._wake = True
            self._cv.notify_all()

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
