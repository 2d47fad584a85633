"""Which MLflow store a resumed search logs to, when its run directory was moved or copied.

The default store of a run directory is ``sqlite:///<run_dir>/mlflow.db`` with artifacts in
``<run_dir>/mlruns``. MLflow records both as absolute paths: the tracking URI in
``mlflow_run.json`` (written by ``certevo.search.tracking``), the artifact locations inside the
database (the experiment's ``artifact_location``, every run's ``artifact_uri``). A run
directory that was moved, copied, or downloaded into another staging directory would then
log into the original's database and artifact folders, or recreate them.

So a resume recognises "the default store of this run directory" and rebuilds it from the
current location: ``mlflow_run.json`` says ``"default_store": true`` (files written before
that flag existed: a store named ``mlflow.db`` outside the current run directory, while the
current run directory has its own ``mlflow.db``, i.e. the one copied along), and the
artifact locations in the copied database that point into the old run directory's
``mlruns`` are rewritten to the current one (MLflow has no API to change them; these two
columns have kept their names across MLflow's schema versions, and tables without them
are skipped). Other stores (a server, a SQLite file elsewhere) are used as recorded.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from certevo.search.run_directory import MLFLOW_ARTIFACT_ROOT, MLFLOW_DATABASE, MLFLOW_RUN_FILE

_PREFIX = "sqlite:///"
_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("logged_models", "artifact_location"))


def default_uri(run_dir: str | Path) -> str:
    """The default tracking URI of a run directory (as ``MlflowTracker`` builds it)."""
    return f"{_PREFIX}{Path(run_dir).resolve() / MLFLOW_DATABASE}"


def _database(uri: str) -> Path | None:
    path = uri[len(_PREFIX):].split("?", 1)[0] if uri.startswith(_PREFIX) else ""
    return Path(path) if path and path != ":memory:" else None


def resume_tracking_uri(run_dir: str | Path) -> str | None:
    """The tracking URI a resumed search in ``run_dir`` logs to: the one recorded in its
    ``mlflow_run.json``, except that the run directory's default store is found where the
    run directory is now (returned as None: the tracker's default), with its artifact
    locations moved along. None too when nothing is recorded."""
    run_dir = Path(run_dir)
    try:
        saved = json.loads((run_dir / MLFLOW_RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or not isinstance(saved.get("tracking_uri"), str):
        return None
    uri = saved["tracking_uri"]
    database = _database(uri)
    here = run_dir.resolve() / MLFLOW_DATABASE
    flag = saved.get("default_store")
    if flag is None:  # written before the flag: the store copied along with the run directory
        flag = database is not None and database.name == MLFLOW_DATABASE and database != here and here.is_file()
    if not flag or database is None:
        return uri
    if database != here and here.is_file():
        relocate_artifacts(here, database.parent / MLFLOW_ARTIFACT_ROOT, here.parent / MLFLOW_ARTIFACT_ROOT)
    return None


def relocate_artifacts(database: Path, old_root: Path, new_root: Path) -> int:
    """Rewrite the artifact locations in the SQLite store ``database`` that lie under
    ``old_root`` to lie under ``new_root``; return how many rows changed."""
    old, new = old_root.as_uri(), new_root.as_uri()
    changed = 0
    with sqlite3.connect(database) as connection:  # one transaction: all rows or none
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table, column in _COLUMNS:
            if table not in tables or column not in {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}:
                continue
            changed += connection.execute(
                f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                (new, len(old) + 1, old, len(old) + 1, old + "/"),
            ).rowcount
    connection.close()
    return changed
