"""Stopping a search from outside: SIGTERM (what `kill`, Kubernetes and `ray job stop`
send) stops it the way Ctrl-C does, so everything evaluated is kept and the user is told
how to resume."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM; handled wherever Ctrl-C is."""


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within the block, the first SIGTERM raises :class:`Terminated` in the main thread;
    later ones are ignored, so the clean-up it starts (closing the MLflow run, the last
    mirror upload) is not cut short by a second signal (a SIGKILL still ends it). Outside
    the main thread this does nothing (Python delivers signals to the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal received
        if not received:
            received = True
            raise Terminated(f"received signal {signum} (SIGTERM)")

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


__all__ = ["Terminated", "stop_on_sigterm"]
