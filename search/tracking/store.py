"""Creating a SQLite MLflow store so that a failure half-way (a full disk) never leaves a
broken one behind.

MLflow builds a new SQLite store by creating its tables and then running every schema
migration in place; the migrations are not transactional, and one cut short by a full
disk leaves a table (``_alembic_tmp_*``) that makes every later open fail ("table
_alembic_tmp_endpoints already exists") even after space is freed. Here a store that does
not exist yet is built in a temporary file next to it and renamed into place only once
complete: the store is either absent (and built again next time) or whole."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from certevo.population.files import TMP_PREFIX, fsync_dir
from certevo.search.run_directory import MLFLOW_ARTIFACT_ROOT

SQLITE_PREFIX = "sqlite:///"


def sqlite_path(uri: str | None) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (None for other stores)."""
    if not uri or not uri.startswith(SQLITE_PREFIX):
        return None
    path = uri[len(SQLITE_PREFIX):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def create_sqlite_store(uri: str | None, artifact_root: str | None = None) -> bool:
    """Build the SQLite store of ``uri`` if it does not exist yet, atomically. Returns
    whether it built one. Other URIs, and stores that exist, are left to MLflow."""
    path = sqlite_path(uri)
    if path is None or path.exists():
        return False
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix="-" + path.name, dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # SQLite creates the file itself
    try:
        store = SqlAlchemyStore(f"{SQLITE_PREFIX}{tmp}", artifact_root or str(path.parent / MLFLOW_ARTIFACT_ROOT))
        store.engine.dispose()
        if path.exists():  # another process built it meanwhile: keep theirs
            return False
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def prepare_store(uri: str | None, artifact_root: str | None = None) -> None:
    """Ready the store of ``uri`` for the tracker: build a new SQLite store atomically
    (:func:`create_sqlite_store`), and keep MLflow's own database-error log (a full SQL
    traceback per failed call, e.g. on a full disk) off the user's terminal: the tracker
    retries, then reports what it could not log in one line."""
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    create_sqlite_store(uri, artifact_root)


__all__ = ["create_sqlite_store", "prepare_store", "sqlite_path"]
