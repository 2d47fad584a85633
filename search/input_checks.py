"""Checks of the paths, URIs and counts a user gives, made before a command does any work:
``~`` expanded, a run directory or output file that cannot be written, a tracking URI
MLflow cannot use, a resume target the run has already reached. Each failure is a
ConfigError naming the option, the value and the fix."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import unquote

from certevo.population.errors import ConfigError

SQLITE_PREFIX = "sqlite:///"
#: Tracking URIs MLflow takes as a bare word (its registry special-cases them).
_BARE_STORES = ("databricks", "databricks-uc", "uc")


def user_path(value: str) -> str:
    """``value`` with a leading ``~`` expanded (argparse ``type=`` of every path option;
    URIs such as ``s3://...`` pass unchanged)."""
    return os.path.expanduser(value)


def can_create_in(directory: Path) -> str | None:
    """Why nothing can be created under ``directory`` (None if something can): its nearest
    existing ancestor must be a directory this process may write into."""
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a directory"
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        return f"{probe} does not accept new files ({exc.strerror or exc})"
    return None


def check_new_run_dir(run_dir: str | os.PathLike) -> None:
    """Refuse, before a launch does anything, a local run directory that is a file or
    cannot be created (URIs other than ``file://`` are checked by their filesystem)."""
    from certevo.search.run_storage import is_remote

    if is_remote(run_dir):
        return
    text = str(run_dir)
    path = Path(text[len("file://"):] if text.startswith("file://") else text).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run directory {text} is an existing file, not a directory; pass a directory path "
                          "(it is created), e.g. runs/my-search")
    problem = can_create_in(path)
    if problem:
        raise ConfigError(f"run directory {text} cannot be created: {problem}; pass a directory you can write, "
                          "e.g. runs/my-search")


def check_output_file(path: str | os.PathLike, option: str, *, allow_dir: bool = False) -> Path:
    """``path`` (``~`` expanded) for a file an option names: refused if it is a directory
    (unless ``allow_dir``) or its directory cannot be created. Returns the expanded path."""
    target = Path(path).expanduser()
    if target.is_dir():
        if allow_dir:
            return target

        raise ConfigError(f"{option} {path} is a directory; pass a file name, e.g. {target / 'front.png'}")
    problem = can_create_in(target.parent)
    if problem:
        raise ConfigError(f"{option} {path} cannot be written: {problem}; pass a path in a directory you can write")
    return target


def _store_schemes() -> list[str]:
    """The tracking-store schemes the installed MLflow registers (plugins included)."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    return sorted(_tracking_store_registry._registry)


def check_tracking_uri(uri: str | None) -> str | None:
    """``uri`` with ``~`` expanded in its path; refused (ConfigError) if MLflow has no store
    for its scheme, or if it names a local SQLite file or directory that cannot be written
    (checked at once, instead of MLflow retrying for minutes)."""
    if uri is None:
        return None
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError(f"--tracking-uri must be an MLflow tracking URI; got {uri!r}; e.g. sqlite:///mlflow.db, "
                          "http://127.0.0.1:5000, or leave it unset for a SQLite store in the run directory")
    uri = uri.strip()
    if uri.startswith(SQLITE_PREFIX + "~"):
        uri = SQLITE_PREFIX + os.path.expanduser(uri[len(SQLITE_PREFIX):])
    elif uri.startswith("~"):
        uri = os.path.expanduser(uri)
    if uri in _BARE_STORES:
        return uri
    from mlflow.utils.uri import get_uri_scheme

    schemes = _store_schemes()
    try:
        scheme = get_uri_scheme(uri)
    except Exception:  # MLflow raises its own error for a database type it does not know
        scheme = uri.split(":", 1)[0]
    if scheme not in schemes:
        shown = ", ".join(f"{s}://" for s in schemes if s)
        raise ConfigError(
            f"--tracking-uri {uri!r} has scheme {scheme!r}, for which MLflow has no tracking store; use a local "
            f"path or one of {shown} (databases as e.g. postgresql+psycopg2://user@host/db)"
        )
    local = _local_store_path(uri, scheme)
    if local is not None:
        what = "SQLite database" if scheme == "sqlite" else "MLflow store directory"
        if scheme == "sqlite" and local.exists() and (local.is_dir() or not os.access(local, os.R_OK | os.W_OK)):
            raise ConfigError(f"--tracking-uri {uri}: {what} {local} is {'a directory' if local.is_dir() else 'not writable'}; "
                              "pass a SQLite file you can write, or leave --tracking-uri unset")
        problem = can_create_in(local.parent if scheme == "sqlite" else local)
        if problem:
            raise ConfigError(f"--tracking-uri {uri}: the {what} {local} cannot be written: {problem}; "
                              "pass a path you can write, or leave --tracking-uri unset for the run directory")
    return uri


def _local_store_path(uri: str, scheme: str) -> Path | None:
    """The local file (sqlite) or directory (file store) a tracking URI writes, if any."""
    if scheme == "sqlite":
        if not uri.startswith(SQLITE_PREFIX):
            return None
        path = uri[len(SQLITE_PREFIX):].split("?", 1)[0]
        return Path(unquote(path)) if path and path != ":memory:" else None
    if scheme == "file":
        from urllib.parse import urlparse

        parsed = urlparse(uri)
        return Path(unquote(parsed.path)) if parsed.netloc in ("", "localhost") and parsed.path else None
    if scheme == "":
        return Path(uri)
    return None


def check_resume_targets(run_dir: str | os.PathLike, generation: int, evaluations: int,
                         generations: int | None, evaluation_budget: int | None) -> None:
    """Refuse ``resume --generations N`` / ``--evaluation-budget N`` that do not go beyond
    what the run in ``run_dir`` has done (checkpoint at ``generation``, ``evaluations``
    evaluated), saying where the run is and what to pass."""
    where = (f"the run in {run_dir} has reached generation {generation} with {evaluations} evaluations"
             if generation >= 0 else f"the run in {run_dir} has no checkpoint yet")
    if generations is not None:
        if isinstance(generations, bool) or not isinstance(generations, int) or generations < max(0, generation + 1):
            raise ConfigError(
                f"--generations {generations!r} does not go beyond what is done: {where}; pass --generations "
                f"{max(0, generation + 1)} or more, or leave it out to finish the planned generations"
            )
    if evaluation_budget is not None:
        if isinstance(evaluation_budget, bool) or not isinstance(evaluation_budget, int) \
                or evaluation_budget <= max(0, evaluations):
            raise ConfigError(
                f"--evaluation-budget {evaluation_budget!r} does not go beyond what is done: {where}; pass "
                f"--evaluation-budget {evaluations + 1} or more, or leave it out"
            )


__all__ = ["can_create_in", "check_new_run_dir", "check_output_file", "check_resume_targets", "check_tracking_uri", "user_path"]
