"""Running out of disk space: recognised wherever it surfaces (a journal line, a
checkpoint, a weights file, SQLite) and turned into one message that says where, how
much space is left and how to go on."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from certevo.population.errors import CertevoError

_FULL = {errno.ENOSPC, errno.EDQUOT}


class DiskFull(CertevoError):
    """The disk holding the run directory (or the tracking store) is full."""


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) means no space is left."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return True
        if "database or disk is full" in str(exc):  # sqlite3.OperationalError, as SQLAlchemy wraps it
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _free_space(path: Path) -> str:
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return "free space unknown"
    return f"{usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.1f} MiB"


def disk_full(exc: BaseException, run_dir: Path, resume: str) -> DiskFull:
    """The error to show for ``exc``: the file being written, the space left on the file
    system of ``run_dir``, and the command (``resume``) that goes on once space is freed."""
    where = getattr(exc, "filename", None) or run_dir
    return DiskFull(
        f"no space left on the device while writing {where} ({_free_space(Path(run_dir))} on the file system "
        f"of {run_dir}); the search stopped and everything journaled so far is kept. Free some space (or move "
        f"the run directory to a larger disk), then continue with: {resume}"
    )


__all__ = ["DiskFull", "disk_full", "is_disk_full"]
