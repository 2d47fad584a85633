"""The helper processes that draw the tracker's pictures (JSON over a pipe, no pickle)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from certevo.search import plots
from certevo.search.tracking.failures import _describe
from certevo.search.tracking.provenance import PROJECT_ROOT

PLOT_FUNCTIONS = ("plot_front", "plot_history", "plot_lineage")
PLOT_TIMEOUT = 120.0


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
            [sys.executable, "-c", "from certevo.search.tracking.plot_worker import _plot_worker_main; _plot_worker_main()"],
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
