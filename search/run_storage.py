"""Run directories on shared storage: a local path, ``file://``, or any pyarrow or fsspec
filesystem URI (``s3://``, ``gs://``, ``hdfs://``, ``abfs://``, ``memory://``, ...).

The search itself always writes to a local directory (checkpoints are atomic renames,
the journal is an append-only file, MLflow's default store is SQLite: none of that works
on an object store). For a remote URI this module

1. maps the URI to a deterministic local *staging* directory
   (``$CERTEVO_STAGING_DIR`` or ``<temp dir>/certevo-<user>/runs``, then ``<name>-<hash of URI>``),
2. before ``launch``: refuses a URI that already holds a search, and empties stale staging,
3. before ``resume``: makes the staging directory an exact copy of the remote run (the
   remote is the truth: evaluations journaled after its last upload are redone, with the
   same results, since every evaluation is deterministic),
4. while the search runs: mirrors changed files to the remote as a search observer
   (at the start, after every generation, at the end, and when the search stops on an
   error or Ctrl-C).

Local paths and ``file://`` URIs (an NFS or other shared mount is just a path) are used
in place: no staging, no copying.

Contract of the mirror: only the driver process writes, one sync at a time. A file is
uploaded when its size or modification time changed since the last sync; the checkpoint
manifest ``checkpoint/state.json`` goes last, so the remote never names arrays it does not
hold yet; files the search deleted locally (an older checkpoint's arrays) are deleted
remotely afterwards — only files this mirror synced, never anything else under the URI.
Files being written (``.certevo-tmp-*``) are skipped.

One driver per run directory (``certevo.search.run_lock``): ``prepare_launch`` and
``prepare_resume`` lock it until ``close``, and refuse, naming the holder, if another
driver holds it. A local path is locked with ``flock`` on ``<run_dir>/.certevo.lock``
(released by the kernel when the driver dies, however it dies). A remote URI cannot be
flocked: the staging directory's lock keeps one process per machine, and a lock object
``<uri>/.certevo-lock.json`` (holder, heartbeat every 30 s) keeps one driver across
machines; a killed driver's lock is taken over once its heartbeat is 5 minutes old, or at
once from the same host if its process is gone. That object is written, then read back a
second later, so two drivers starting together do not both win (object stores have no
atomic create-if-absent through pyarrow: the guarantee assumes reads see the latest write,
as S3 and GCS do). A driver whose lock was taken over (its heartbeat could not be written
for 5 minutes) stops uploading: ``sync`` raises :class:`StorageError`.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from certevo.population.errors import CertevoError, CheckpointError, ConfigError
from certevo.population.files import TMP_PREFIX
from certevo.search.command_hint import command_hint
from certevo.search.observer import SearchObserver
from certevo.search.run_directory import (CHECKPOINT_DIR, CONFIG_FILE, LOCK_FILE, MANIFEST, MLFLOW_RUN_FILE,
                                          REMOTE_LOCK_FILE, RunDirectory)
from certevo.search.run_lock import RemoteRunLock, RunLock

#: Environment variable naming the root of the staging directories.
STAGING_ENV = "CERTEVO_STAGING_DIR"
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)(://|::)")  # scheme://... or a chained fsspec URL a::b://...
_SUPPORTED = ("a local path, file://, s3://, gs://, hdfs://, abfs:// (pyarrow) or any fsspec protocol "
              "(memory://, and e.g. s3:// via `pip install s3fs`, gs:// via `pip install gcsfs`)")


class StorageError(CertevoError):
    """The remote run directory cannot be read or written."""


def is_remote(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` is a URI other than ``file://`` (local paths and ``file://``
    URIs are used in place)."""
    match = _URI.match(str(run_dir))
    return bool(match) and not (match.group(1).lower() == "file" and match.group(2) == "://")


def staging_root() -> Path:
    """Where staging directories live: ``$CERTEVO_STAGING_DIR``, else
    ``<temp dir>/certevo-<user>/runs`` (e.g. ``/tmp/certevo-ray/runs``).

    The default deliberately does not depend on the home directory: MLflow's default
    SQLite store records absolute paths (its artifact root), so a run resumed on another
    machine by the same user finds them at the same place.
    """
    if os.environ.get(STAGING_ENV):
        return Path(os.environ[STAGING_ENV]).expanduser()
    import getpass
    import tempfile

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"certevo-{re.sub(r'[^A-Za-z0-9_.-]+', '_', user)}" / "runs"


def staging_dir(uri: str, root: str | os.PathLike | None = None) -> Path:
    """The deterministic local staging directory of a remote ``uri``: the URI's last path
    component (for people reading the cache) plus a hash of the whole URI."""
    normal = uri.rstrip("/")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", normal.rsplit("/", 1)[-1] or "run")[:40] or "run"
    digest = hashlib.sha256(normal.encode()).hexdigest()[:16]
    base = Path(root).expanduser() if root is not None else staging_root()
    return base / f"{name}-{digest}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def resolve_filesystem(uri: str) -> tuple[Any, str]:
    """``(pyarrow FileSystem, path)`` for a URI: pyarrow's own filesystems first, then any
    fsspec protocol (wrapped so both look the same). Raises ConfigError naming the URI."""
    import pyarrow
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except pyarrow.ArrowInvalid as exc:
        if "Unrecognized filesystem type" not in str(exc):
            raise ConfigError(f"run directory {uri!r}: pyarrow cannot use it ({_first_line(exc)}); "
                              f"check the URI, or use {_SUPPORTED}") from exc
    except (OSError, pyarrow.ArrowException) as exc:  # a known scheme whose library or service is missing
        raise ConfigError(f"run directory {uri!r}: pyarrow cannot open it ({_first_line(exc)}); "
                          f"check credentials and libraries for this scheme, or use {_SUPPORTED}") from exc
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - fsspec is installed with certevo's dependencies
        raise ConfigError(f"run directory {uri!r}: pyarrow does not know its scheme and fsspec is not installed; "
                          f"`pip install fsspec`, or use {_SUPPORTED}") from exc
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except ImportError as exc:
        raise ConfigError(f"run directory {uri!r}: {_first_line(exc)} (fsspec needs it for this scheme); "
                          "install it, then run the command again") from exc
    except ValueError as exc:
        raise ConfigError(f"run directory {uri!r}: unknown filesystem scheme ({_first_line(exc)}); "
                          f"use {_SUPPORTED}") from exc
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


class RunStorage:
    """Where a run directory lives: ``local_dir`` is what the search writes; for a remote
    ``uri`` a staging directory mirrored to ``remote_path`` on ``filesystem``.

    Use it as a context manager (or call ``close``): a remote run holds an exclusive lock
    on its staging directory, so two processes on one machine never share it.
    """

    def __init__(self, run_dir: str | os.PathLike, *, staging_root: str | os.PathLike | None = None) -> None:
        self.uri = str(run_dir)
        self.filesystem: Any = None
        self.remote_path = ""
        self._synced: dict[str, tuple[int, int]] = {}
        self._lock: Any = None
        self._run_lock: RunLock | None = None
        self._remote_lock: RemoteRunLock | None = None
        if not _URI.match(self.uri):
            self.local_dir = Path(self.uri)
            return
        filesystem, path = resolve_filesystem(self.uri)
        import pyarrow.fs as pafs

        local_fs = isinstance(filesystem, pafs.LocalFileSystem) or (
            isinstance(filesystem, pafs.PyFileSystem) and type(filesystem.handler.fs).__name__ == "LocalFileSystem")
        if local_fs:  # file:// (or an fsspec alias of the local disk): use it in place
            self.local_dir = Path(path)
            return
        self.filesystem = filesystem
        self.remote_path = path.rstrip("/")
        self.local_dir = staging_dir(self.uri, staging_root)
        self._take_lock()

    # -- lifecycle ------------------------------------------------------------------
    @property
    def remote(self) -> bool:
        """Whether the run directory is mirrored to a remote filesystem."""
        return self.filesystem is not None

    def __enter__(self) -> RunStorage:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the run directory's lock and the staging lock (the process exiting
        releases the local ones too; a remote lock object then goes stale)."""
        if self._run_lock is not None:
            self._run_lock.release()
            self._run_lock = None
        if self._remote_lock is not None:
            self._remote_lock.release()
            self._remote_lock = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _take_lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return
        self.local_dir.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.local_dir.parent / f"{self.local_dir.name}.lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            raise ConfigError(
                f"run directory {self.uri}: another certevo process on this machine is using it (staging "
                f"directory {self.local_dir} is locked); wait for it to finish, or set {STAGING_ENV} to another "
                "directory if that process is gone"
            ) from exc
        self._lock = handle

    def lock(self) -> None:
        """Hold the run directory for this driver (see the module docstring), or raise
        ``RunDirectoryLocked`` naming the driver that holds it. Idempotent."""
        if self.remote:
            if self._remote_lock is None:
                lock = RemoteRunLock(self.filesystem, self._remote(REMOTE_LOCK_FILE), self.uri)
                lock.acquire()
                self._remote_lock = lock
        elif self._run_lock is None:
            self._run_lock = RunLock.acquire(self.local_dir, label=self.uri)

    def is_empty(self) -> bool:
        """Whether the local run directory is missing or holds nothing but the lock."""
        return not self.local_dir.is_dir() or all(p.name == LOCK_FILE for p in self.local_dir.iterdir())

    # -- remote listing ------------------------------------------------------------
    def _remote(self, rel: str) -> str:
        return f"{self.remote_path}/{rel}" if self.remote_path else rel

    def remote_files(self) -> dict[str, int]:
        """Every file under the remote run directory: relative path -> size."""
        import pyarrow.fs as pafs

        try:
            infos = self.filesystem.get_file_info(pafs.FileSelector(self.remote_path, recursive=True,
                                                                    allow_not_found=True))
        except Exception as exc:  # pyarrow and fsspec backends raise their own types
            raise StorageError(f"run directory {self.uri}: cannot list it ({_first_line(exc)}); check the URI, "
                               "network and credentials") from exc
        prefix = len(self.remote_path) + 1 if self.remote_path else 0
        return {info.path[prefix:]: info.size for info in infos if info.type == pafs.FileType.File}

    def holds_search(self) -> bool:
        """Whether the run directory already holds a search (config or checkpoint)."""
        if not self.remote:
            return RunDirectory(self.local_dir).holds_search()
        files = self.remote_files()
        return CONFIG_FILE in files or any(rel.startswith(f"{CHECKPOINT_DIR}/") for rel in files)

    # -- launch and resume ------------------------------------------------------------
    def prepare_launch(self) -> None:
        """Before a new search: refuse a remote run directory that holds one (as
        ``Search.create`` does locally) and empty stale staging from an earlier session.
        Locks the run directory first."""
        self.lock()
        if not self.remote:
            return
        if self.holds_search():
            raise ConfigError(
                f"run directory {self.uri} already holds a search; resume it with `{command_hint('resume', self.uri)}` "
                "or choose another --run-dir"
            )
        self._clear_staging()

    def prepare_resume(self) -> None:
        """Before resuming: lock the run directory, and make the staging directory an exact
        copy of the remote run."""
        if not self.remote:
            if self.local_dir.is_dir():  # else Search.resume refuses it (no such directory)
                self.lock()
            return
        self.lock()
        files = self.remote_files()
        if CONFIG_FILE not in files:
            raise CheckpointError(
                f"{self.uri} is not a certevo run directory (no {CONFIG_FILE} there); pass the URI a launch "
                "was given with --run-dir"
            )
        self._clear_staging()
        for rel in sorted(files):
            if Path(rel).name.startswith(TMP_PREFIX) or rel == REMOTE_LOCK_FILE:
                continue
            target = self.local_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with self.filesystem.open_input_stream(self._remote(rel)) as source, open(target, "wb") as out:
                    while chunk := source.read(1 << 22):
                        out.write(chunk)
            except OSError as exc:
                raise StorageError(f"run directory {self.uri}: cannot download {rel} ({_first_line(exc)}); "
                                   "check the network and credentials, then resume again") from exc
            self._synced[rel] = self._stamp(target)

    def _clear_staging(self) -> None:
        import shutil

        if self.local_dir.exists():
            shutil.rmtree(self.local_dir)
        self.local_dir.mkdir(parents=True)
        self._synced = {}

    # -- mirroring ----------------------------------------------------------------------
    @staticmethod
    def _stamp(path: Path) -> tuple[int, int]:
        stat = path.stat()
        return stat.st_size, stat.st_mtime_ns

    def _local_files(self) -> Iterator[tuple[str, Path]]:
        for path in sorted(self.local_dir.rglob("*")):
            if path.is_file() and not path.name.startswith(TMP_PREFIX) and not path.name.startswith(f".{MLFLOW_RUN_FILE}"):
                yield path.relative_to(self.local_dir).as_posix(), path

    def sync(self) -> int:
        """Upload files changed since the last sync (the checkpoint manifest last), then
        delete remote files this mirror synced that no longer exist locally. Returns the
        number of files uploaded."""
        if not self.remote:
            return 0
        if self._remote_lock is not None and self._remote_lock.lost:
            raise StorageError(f"run directory {self.uri}: another driver took over its lock ({self._remote_lock.lost}) "
                               "after this one could not refresh it; this driver no longer uploads, its files are in "
                               f"the staging directory {self.local_dir}")
        current: dict[str, tuple[int, int]] = {}
        changed: list[tuple[str, Path]] = []
        for rel, path in self._local_files():
            try:
                stamp = self._stamp(path)
            except FileNotFoundError:  # removed while listing (an old checkpoint's arrays)
                continue
            current[rel] = stamp
            if self._synced.get(rel) != stamp:
                changed.append((rel, path))
        changed.sort(key=lambda item: item[0] == MANIFEST)  # the manifest commits the checkpoint: last
        uploaded = 0
        for rel, path in changed:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                current.pop(rel, None)
                continue
            self._upload(rel, data)
            uploaded += 1
            self._synced[rel] = current[rel]
        for rel in [r for r in self._synced if r not in current]:
            try:
                self.filesystem.delete_file(self._remote(rel))
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StorageError(f"run directory {self.uri}: cannot delete stale {rel} ({_first_line(exc)})") from exc
            del self._synced[rel]
        return uploaded

    def _upload(self, rel: str, data: bytes) -> None:
        target = self._remote(rel)
        parent = target.rsplit("/", 1)[0] if "/" in target else ""
        try:
            if parent:
                self.filesystem.create_dir(parent, recursive=True)
            with self.filesystem.open_output_stream(target) as out:  # object stores: atomic on close
                out.write(data)
        except OSError as exc:
            raise StorageError(f"run directory {self.uri}: cannot upload {rel} ({_first_line(exc)}); everything is "
                               f"in the staging directory {self.local_dir}") from exc

    def did_work(self) -> bool:
        """Whether the search in this run directory journaled an evaluation or wrote a
        checkpoint (else a failed launch has nothing worth keeping)."""
        paths = RunDirectory(self.local_dir)
        return (paths.journal.is_file() and paths.journal.stat().st_size > 0) or paths.checkpoint.exists()

    def discard(self) -> None:
        """Remove a run directory that a failed launch created and did no work in (and
        what this storage uploaded of it), so the same launch can simply be run again."""
        import shutil

        if self.remote:
            for rel in list(self._synced):
                try:
                    self.filesystem.delete_file(self._remote(rel))
                except OSError:
                    pass  # already gone, or unreachable: the message below still holds locally
            self._synced = {}
        shutil.rmtree(self.local_dir, ignore_errors=True)

    def observers(self) -> list[Any]:
        """The search observers this storage needs: a mirror for a remote run, else none."""
        return [RunMirror(self)] if self.remote else []


class RunMirror(SearchObserver):
    """Search observer that mirrors the staging directory to the remote run directory:
    at the start, after every generation, at the end and when the search stops early.

    A failed upload during the search is reported on stderr and retried at the next
    generation (the search goes on; the staging directory has everything); a failed final
    upload raises :class:`StorageError`.
    """

    def __init__(self, storage: RunStorage) -> None:
        self.storage = storage
        self.uploads = 0
        self.failures: list[str] = []

    def _try_sync(self) -> None:
        try:
            self.uploads += self.storage.sync()
        except StorageError as exc:
            self.failures.append(str(exc))
            print(f"certevo: warning: {exc}; retrying after the next generation", file=sys.stderr)

    def on_start(self, search: Any) -> None:
        """Upload the config at once, so a second launch into the URI refuses."""
        self._try_sync()

    def on_evaluation(self, search: Any, result: Any) -> None:
        """Nothing per evaluation (the journal goes up with the generation)."""

    def on_generation(self, search: Any, summary: dict[str, Any]) -> None:
        """Upload the generation's checkpoint, journal and tracking files."""
        self._try_sync()

    def on_end(self, search: Any, summary: dict[str, Any]) -> None:
        """Upload everything; raise StorageError if that fails."""
        self.uploads += self.storage.sync()

    def on_error(self, search: Any, error: BaseException) -> None:
        """Upload what the stopped search has (never masks the original error)."""
        try:
            self.uploads += self.storage.sync()
        except Exception as exc:  # the original error matters more
            print(f"certevo: warning: could not upload the stopped run to {self.storage.uri} ({exc}); "
                  f"its files are in {self.storage.local_dir}", file=sys.stderr)
