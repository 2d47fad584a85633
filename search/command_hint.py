"""Commands to suggest to the user, spelled so that they run as shown in a new shell.

After ``make run`` (which calls ``.venv/bin/certevo``) the name ``certevo`` is usually not
on PATH, so a hint such as ``certevo resume runs/x`` fails with "command not found". A
hint names ``certevo`` only when that name on PATH is the very program running; otherwise
it names this program's path: relative to the current directory when that is shorter
(``.venv/bin/certevo``), else absolute.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

PROGRAM = "certevo"


def _entry_point(name: str, argv0: str, executable: str) -> str | None:
    """The absolute path of the console script ``name`` of this environment, if there is
    one: the running script itself, or (``python -m certevo``, tests, or another tool
    such as ``mlflow``) the one installed next to the interpreter."""
    if name == PROGRAM and argv0 and Path(argv0).stem == PROGRAM and Path(argv0).is_file():
        return os.path.abspath(argv0)
    beside = Path(executable).parent / name
    return os.path.abspath(beside) if beside.is_file() else None


def certevo_program(*, argv0: str | None = None, executable: str | None = None, path: str | None = None,
                    cwd: str | os.PathLike[str] | None = None, name: str = PROGRAM) -> str:
    """How to call this certevo (or the console script ``name`` of its environment, e.g.
    ``mlflow``) from a shell in ``cwd``: the bare name when that name on ``path``
    (default: $PATH) is this very program, else its path (relative when shorter). The
    arguments default to this process (``sys.argv[0]``, ``sys.executable``, cwd)."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    executable = sys.executable if executable is None else executable
    entry = _entry_point(name, argv0, executable)
    if entry is None:
        if name != PROGRAM:  # not installed here: whatever PATH finds, if anything
            return name
        return f"{shlex.quote(executable)} -m certevo"  # a source checkout without the script
    found = shutil.which(name, path=path)
    if found is not None and _same_file(found, entry):
        return name
    here = os.fspath(cwd) if cwd is not None else os.getcwd()
    try:
        relative = os.path.relpath(entry, here)
    except ValueError:  # another drive (Windows)
        relative = entry
    if os.sep not in relative:
        relative = os.path.join(os.curdir, relative)
    return shlex.quote(min(relative, entry, key=len))


def command_hint(*args: object, **where: Any) -> str:
    """``certevo`` followed by ``args`` (quoted for a POSIX shell), as a line that runs as
    shown; ``where`` is passed to :func:`certevo_program`."""
    return " ".join([certevo_program(**where), *(shlex.quote(str(a)) for a in args)])


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


__all__ = ["certevo_program", "command_hint"]
