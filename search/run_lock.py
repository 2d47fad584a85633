"""One driver per run directory: the lock ``certevo launch`` and ``certevo resume`` hold
while they run a search (two drivers in one run directory would evaluate the same
candidates twice and overwrite each other's checkpoints, fronts and MLflow runs).

* A local run directory (or a shared mount such as NFS) is locked with ``fcntl.flock`` on
  ``<run_dir>/.certevo.lock``. The kernel releases it when the holder exits in any way,
  SIGKILL included, so a killed driver never leaves it stuck; the file holds the holder's
  host, pid, start time and command, only to name it in the refusal. The descriptor is
  close-on-exec: processes the driver starts (Ray, plot workers) never hold the lock.
  ``release`` removes the file; ``acquire`` re-checks after locking that the file it
  locked is still the one at that path, so removing it is race-free.
* A remote run directory (``s3://`` ...; see ``certevo.search.run_storage``) cannot be flocked.
  There the driver writes ``<uri>/.certevo-lock.json`` (holder, a random token and a
  heartbeat time refreshed every :data:`HEARTBEAT_SECONDS` by a background thread) and
  reads it back :data:`SETTLE_SECONDS` later to confirm it won a concurrent start. A lock
  is stale when its heartbeat is older than :data:`STALE_SECONDS` (a killed driver; mind
  large clock differences between machines), or at once when its holder was on this host
  and that process is gone. The holder checks the lock at every heartbeat and reports it
  lost (``lost``) if another driver took it over.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from certevo.population.errors import CertevoError
from certevo.search.run_directory import REMOTE_LOCK_FILE, RunDirectory

HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0
SETTLE_SECONDS = 1.0


class RunDirectoryLocked(CertevoError):
    """Another certevo driver holds the run directory."""


def holder() -> dict[str, Any]:
    """Who this process is: host, pid, start time (UTC, ISO) and command line."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300] if sys.argv else ""}


def _describe(info: dict[str, Any] | None) -> str:
    if not info or "pid" not in info:
        return "a driver that has not written its name yet (it is just starting)"
    command = f", running `{info['command']}`" if info.get("command") else ""
    return f"pid {info['pid']} on host {info.get('host', '?')}, since {info.get('since', '?')}{command}"


def _refusal(label: str, info: dict[str, Any] | None, where: str, extra: str) -> RunDirectoryLocked:
    stop = (f"(`kill {info['pid']}` on {info.get('host', 'its host')})" if info and "pid" in info else "")
    return RunDirectoryLocked(
        f"run directory {label} is in use by another certevo driver: {_describe(info)}. One run directory takes one "
        f"driver at a time (two would evaluate the same candidates twice and overwrite each other's checkpoints); "
        f"wait for that one to finish, or stop it {stop} and run this command again. {extra} (lock: {where})"
    )


def _alive_here(info: dict[str, Any]) -> bool:
    """Whether the holder runs on this host and its process exists (True if unknown)."""
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return True
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


class RunLock:
    """The exclusive lock of a local run directory (see the module docstring)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, run_dir: str | os.PathLike, label: str | None = None) -> RunLock:
        """Lock ``run_dir`` (created if missing) or raise :class:`RunDirectoryLocked`
        naming the holder; ``label`` is how the message names the directory."""
        import fcntl

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = RunDirectory(run_dir).lock
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = _read_fd(fd)
                os.close(fd)
                raise _refusal(label or str(run_dir), info, str(path),
                               "A driver that was killed or crashed releases the lock by itself.") from None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file as it released it: lock the new one
        data = json.dumps(holder()).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        return cls(path, fd)

    def release(self) -> None:
        """Remove the lock file and unlock (idempotent)."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_fd(fd: int) -> dict[str, Any] | None:
    try:
        data = json.loads(os.pread(fd, 1 << 16, 0).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class RemoteRunLock:
    """The lock object of a remote run directory on a pyarrow ``filesystem`` (see the
    module docstring): ``acquire``, then ``release``; ``lost`` names the driver that took
    it over, if one did."""

    def __init__(self, filesystem: Any, path: str, label: str, *, heartbeat: float = HEARTBEAT_SECONDS,
                 stale_after: float = STALE_SECONDS, settle: float = SETTLE_SECONDS) -> None:
        self.filesystem = filesystem
        self.path = path
        self.label = label
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self.settle = settle
        self.lost: str | None = None
        self._info: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict[str, Any] | None:
        try:
            with self.filesystem.open_input_stream(self.path) as source:
                data = json.loads(source.read().decode("utf-8"))
        except FileNotFoundError:
            return None
        except ValueError:  # damaged or half-written: treat as a holder without a name
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, info: dict[str, Any]) -> None:
        """Write ``info`` (this driver's holder record) with a fresh heartbeat."""
        info["heartbeat"] = time.time()
        parent = self.path.rsplit("/", 1)[0] if "/" in self.path else ""
        if parent:
            self.filesystem.create_dir(parent, recursive=True)
        with self.filesystem.open_output_stream(self.path) as out:  # object stores: atomic on close
            out.write(json.dumps(info).encode())

    def _stale(self, info: dict[str, Any]) -> bool:
        beat = info.get("heartbeat")
        old = not isinstance(beat, (int, float)) or time.time() - beat > self.stale_after
        return old or not _alive_here(info)

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunDirectoryLocked` naming the holder."""
        current = self._read()
        if current is not None:
            if not self._stale(current):
                raise self._refused(current)
            print(f"certevo: warning: taking over the lock of {self.label} from {_describe(current)}: its heartbeat "
                  "stopped or its process is gone", file=sys.stderr, flush=True)
        self._info = {**holder(), "token": uuid.uuid4().hex}
        self._write(self._info)
        time.sleep(self.settle)  # a driver starting at the same moment has written by now
        current = self._read()
        if not current or current.get("token") != self._info["token"]:
            self._info = None
            raise self._refused(current)
        self._thread = threading.Thread(target=self._beat, name="certevo-run-lock", daemon=True)
        self._thread.start()

    def _refused(self, info: dict[str, Any] | None) -> RunDirectoryLocked:
        beat = info.get("heartbeat") if info else None
        ago = f" Its last heartbeat was {time.time() - beat:.0f} s ago;" if isinstance(beat, (int, float)) else ""
        return _refusal(self.label, info, f"{self.label.rstrip('/')}/{REMOTE_LOCK_FILE}",
                        f"{ago} a driver that was killed stops its heartbeat, and its lock is taken over "
                        f"{self.stale_after:.0f} s after the last one (at once from the same host).")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                current = self._read()
                if not current or current.get("token") != self._info["token"]:
                    self.lost = _describe(current)
                    print(f"certevo: warning: the lock of {self.label} was taken over by {self.lost}; this driver "
                          "stops writing there", file=sys.stderr, flush=True)
                    return
                self._write(self._info)
            except Exception as exc:  # a network error: try again at the next beat
                print(f"certevo: warning: could not refresh the lock of {self.label} ({exc}); retrying",
                      file=sys.stderr, flush=True)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock object if it is still this driver's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._info is None or self.lost:
            return
        try:
            current = self._read()
            if current and current.get("token") == self._info["token"]:
                self.filesystem.delete_file(self.path)
        except Exception as exc:  # unreachable: the lock goes stale on its own
            print(f"certevo: warning: could not remove the lock of {self.label} ({exc}); it expires "
                  f"{self.stale_after:.0f} s after its last heartbeat", file=sys.stderr, flush=True)
        self._info = None
