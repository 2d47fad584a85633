"""The evaluation journal: every finished evaluation, appended the moment it arrives, so
an interrupted generation loses nothing already computed.

Every line is ``{"id", "record", "config"}``: ``config`` is :func:`journal_digest` of the
configuration the evaluation was made under. A resumed search reuses only the records of
its own configuration (``config.yaml`` edited before the first checkpoint must not mix two
configurations in one archive). Lines without ``config`` were written by an older certevo:
they are reused only when a checkpoint exists (a resume has then checked that
``config.yaml`` still matches the checkpoint's configuration, so they were made under it);
without a checkpoint nothing vouches for them and they are evaluated again.

The file is read as bytes. A damaged line (invalid UTF-8, invalid JSON, not an entry, or a
torn last line without its newline) is moved to ``evaluations.damaged.jsonl`` next to the
journal, with a warning on stderr; a complete entry that a torn write was joined to (older
journals) is recovered from the end of the damaged line. Before every append a torn tail is
moved out first, so a new record is never concatenated onto it. Nothing valid is dropped:
records of another configuration stay in the journal, only unused.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from certevo.evaluators.fitness import FitnessRecord
from certevo.population.files import atomic_write
from certevo.search.run_directory import RunDirectory

if TYPE_CHECKING:
    from certevo.search.config import SearchConfig

_ENTRY_START = b'{"id": '  # how json.dumps starts every entry: where a joined entry begins


def journal_digest(config: SearchConfig) -> str:
    """The configuration digest journal records carry: :meth:`SearchConfig.digest` without
    what a resume may change (``search.generations``, ``search.evaluation_budget``; the
    digest already leaves out ``run_dir`` and ``cluster``)."""
    return replace(config, search=replace(config.search, generations=0, evaluation_budget=None)).digest()


@dataclass
class JournalScan:
    """What the journal file holds: valid entries in file order as ``(line, id, record,
    config digest or None)``, damaged complete lines, and a torn tail (bytes after the
    last newline) if any."""

    entries: list[tuple[bytes, str, FitnessRecord, str | None]] = field(default_factory=list)
    damaged: list[bytes] = field(default_factory=list)
    torn_tail: bytes = b""
    #: The last line is a whole entry that only lacks its newline.
    unterminated: bool = False


def _parse(line: bytes) -> tuple[str, FitnessRecord, str | None] | None:
    try:
        entry = json.loads(line.decode("utf-8"))
        config = entry.get("config")
        if not isinstance(entry["id"], str) or not (config is None or isinstance(config, str)):
            return None
        return entry["id"], FitnessRecord.from_dict(entry["record"]), config
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _salvage(line: bytes) -> tuple[bytes, bytes] | None:
    """``(damaged prefix, entry)`` if a complete entry was appended onto a torn line."""
    start = line.find(_ENTRY_START, 1)
    while start > 0:
        if _parse(line[start:]) is not None:
            return line[:start], line[start:]
        start = line.find(_ENTRY_START, start + 1)
    return None


def _warn(message: str) -> None:
    print(f"certevo: warning: {message}", file=sys.stderr, flush=True)


class EvaluationJournal:
    """The journal of ``run_dir``, plus (when weights are kept) one safetensors file per
    candidate in ``weights/``. Only the driver writes. ``config_digest`` stamps appended
    records and selects the records :meth:`recover` reuses."""

    def __init__(self, run_dir: Path, config_digest: str | None = None) -> None:
        paths = RunDirectory(run_dir)
        self.path = paths.journal
        self.damaged_path = paths.damaged_journal
        self.weights_dir = paths.weights
        self.config_digest = config_digest

    # -- writing --------------------------------------------------------------------
    def append(self, record: FitnessRecord, weights: dict[str, np.ndarray] | None = None) -> None:
        """Record one finished evaluation durably."""
        if weights is not None:
            from safetensors.numpy import save

            self.weights_dir.mkdir(exist_ok=True)
            atomic_write(self.weights_dir / f"{record.candidate_id}.safetensors", save(weights))
        entry = {"id": record.candidate_id, "record": record.to_dict()}
        if self.config_digest is not None:
            entry["config"] = self.config_digest
        self._set_aside_torn_tail()
        with open(self.path, "ab") as handle:
            handle.write((json.dumps(entry) + "\n").encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())

    def _set_aside_torn_tail(self) -> None:
        """Move a last line without its newline (a write cut short, e.g. by a full disk)
        to the damaged file, so the next append does not join it."""
        try:
            handle = open(self.path, "rb+")
        except FileNotFoundError:
            return
        with handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            handle.seek(0)
            data = handle.read()
            keep = data.rfind(b"\n") + 1
            if _parse(data[keep:]) is not None:  # a whole entry that only lacks its newline
                handle.write(b"\n")
                handle.flush()
                os.fsync(handle.fileno())
                return
            self._put_aside([data[keep:]])
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
        _warn(f"the last line of {self.path} was cut off (an interrupted write, e.g. a full disk); it was moved to "
              f"{self.damaged_path} so that the next record is not joined to it")

    def _put_aside(self, lines: list[bytes]) -> None:
        with open(self.damaged_path, "ab") as handle:
            for line in lines:
                handle.write(line + b"\n")
            handle.flush()
            os.fsync(handle.fileno())

    # -- reading --------------------------------------------------------------------
    def scan(self) -> JournalScan:
        """Read the journal (bytes; never raises on damaged content)."""
        scan = JournalScan()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return scan
        lines = data.split(b"\n")
        scan.torn_tail = lines.pop()  # b"" when the file ends with a newline
        if scan.torn_tail and _parse(scan.torn_tail) is not None:  # cut just before its newline
            lines.append(scan.torn_tail)
            scan.torn_tail, scan.unterminated = b"", True
        for line in lines:
            if not line.strip():
                continue
            parsed = _parse(line)
            if parsed is None and (salvaged := _salvage(line)) is not None:
                scan.damaged.append(salvaged[0])
                line, parsed = salvaged[1], _parse(salvaged[1])
            if parsed is None:
                scan.damaged.append(line)
            else:
                scan.entries.append((line, *parsed))
        return scan

    def records(self) -> dict[str, FitnessRecord]:
        """Every valid entry, whatever its configuration, by candidate id (first entry
        wins); read only."""
        out: dict[str, FitnessRecord] = {}
        for _, cid, record, _ in self.scan().entries:
            out.setdefault(cid, record)
        return out

    def recover(self, *, accept_unstamped: bool) -> dict[str, FitnessRecord]:
        """For the driver, before it appends: set damaged lines and a torn tail aside
        (warning on stderr), and return the records made under ``config_digest`` by
        candidate id (first entry wins). ``accept_unstamped``: also reuse records without
        a digest (pass True only when a checkpoint of this configuration exists); records
        that are not reused are counted in a warning and stay in the journal."""
        scan = self.scan()
        damaged = scan.damaged + ([scan.torn_tail] if scan.torn_tail else [])
        if damaged:
            self._put_aside(damaged)
        if damaged or scan.unterminated:
            atomic_write(self.path, b"".join(line + b"\n" for line, *_ in scan.entries))
        if damaged:
            _warn(f"{len(damaged)} damaged line(s) in {self.path} (invalid UTF-8 or JSON, or a write cut short) were "
                  f"moved to {self.damaged_path}; every valid record was kept, and a candidate whose record was lost "
                  "is evaluated again")
        out: dict[str, FitnessRecord] = {}
        other: dict[str, int] = {}
        unstamped = 0
        for _, cid, record, digest in scan.entries:
            if digest == self.config_digest or (digest is None and accept_unstamped):
                out.setdefault(cid, record)
            elif digest is None:
                unstamped += 1
            else:
                other[digest] = other.get(digest, 0) + 1
        if other:
            _warn(f"{sum(other.values())} record(s) in {self.path} were made under another configuration (digest "
                  f"{', '.join(sorted(other))}; this run's is {self.config_digest}): config.yaml changed after they "
                  "were made. They are not reused (those candidates are evaluated again under the current settings) "
                  "and stay in the journal")
        if unstamped:
            _warn(f"{unstamped} record(s) in {self.path} do not say which configuration they were made under (an "
                  "older certevo wrote them) and there is no checkpoint to vouch for them; they are not reused "
                  "(those candidates are evaluated again) and stay in the journal")
        return out

    def weights(self, candidate_id: str) -> dict[str, np.ndarray] | None:
        """The saved weights of a candidate, if any."""
        path = self.weights_dir / f"{candidate_id}.safetensors"
        if not path.is_file():
            return None
        from safetensors.numpy import load_file

        return load_file(str(path))
