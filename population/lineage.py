"""Lineage: which operator made each candidate from which parents, in which generation.

Records are frozen; the store only ever grows. It serialises to plain JSON data (no
pickle) so it can live inside a checkpoint's state and be logged as an artifact.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from numbers import Integral
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from certevo.population.errors import CheckpointError, ConfigError
from certevo.population.manifest import check_format, check_version

LINEAGE_FORMAT = "certevo-lineage"
LINEAGE_FORMAT_VERSION = 1

__all__ = ["LINEAGE_FORMAT", "LINEAGE_FORMAT_VERSION", "Lineage", "LineageRecord"]


def _plain_copy(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    """A deep copy of ``value`` through JSON, which also proves it is JSON data."""
    try:
        return json.loads(json.dumps(dict(value)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{what} must be JSON data (str, numbers, bool, None, lists, dicts); {exc}; "
            "convert numpy scalars with .item() and arrays with .tolist()"
        ) from exc


@dataclass(frozen=True)
class LineageRecord:
    """How one candidate was made.

    ``parent_ids`` is empty for seeds (e.g. K-starts); ``operator`` names the variation
    operator (e.g. ``"prune_regrow"``, ``"crossover_uniform"``, ``"seed"``);
    ``objectives`` and ``fitness`` (the evaluator's JSON fitness record) are ``None``
    until the candidate is scored. ``fitness`` is a read-only mapping.
    """

    candidate_id: str
    parent_ids: tuple[str, ...]
    operator: str
    generation: int
    objectives: tuple[float, ...] | None = None
    fitness: Mapping[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.candidate_id, str) or not self.candidate_id:
            raise ConfigError(
                f"a lineage record needs a non-empty string candidate_id; got "
                f"{self.candidate_id!r}; use Genome.id"
            )
        if isinstance(self.parent_ids, str):
            raise ConfigError(
                f"parent_ids of {self.candidate_id} must be a sequence of ids, got the string "
                f"{self.parent_ids!r}; wrap a single parent as ({self.parent_ids!r},)"
            )
        parents = tuple(self.parent_ids)
        if not all(isinstance(p, str) and p for p in parents):
            raise ConfigError(f"parent_ids of {self.candidate_id} must be non-empty strings; got {parents!r}")
        if self.candidate_id in parents:
            raise ConfigError(
                f"candidate {self.candidate_id} lists itself as a parent; the operator "
                "returned an unchanged genome, which is not a new candidate; do not record it"
            )
        if not isinstance(self.operator, str) or not self.operator:
            raise ConfigError(
                f"operator of {self.candidate_id} must be a non-empty string; got "
                f"{self.operator!r}; e.g. 'prune_regrow' or 'seed'"
            )
        if isinstance(self.generation, bool) or not isinstance(self.generation, Integral) or self.generation < 0:
            raise ConfigError(
                f"generation of {self.candidate_id} must be an integer >= 0; got {self.generation!r}"
            )
        object.__setattr__(self, "generation", int(self.generation))
        objectives = self.objectives
        if objectives is not None:
            objectives = tuple(float(v) for v in objectives)
        fitness = self.fitness
        if fitness is not None:
            fitness = MappingProxyType(_plain_copy(fitness, f"fitness of {self.candidate_id}"))
        object.__setattr__(self, "parent_ids", parents)
        object.__setattr__(self, "objectives", objectives)
        object.__setattr__(self, "fitness", fitness)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return {
            "candidate_id": self.candidate_id,
            "parent_ids": list(self.parent_ids),
            "operator": self.operator,
            "generation": self.generation,
            "objectives": None if self.objectives is None else list(self.objectives),
            "fitness": None if self.fitness is None else _plain_copy(self.fitness, "fitness"),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LineageRecord:
        """Inverse of :meth:`to_dict`."""
        objectives = data.get("objectives")
        return cls(
            candidate_id=data["candidate_id"],
            parent_ids=tuple(data["parent_ids"]),
            operator=data["operator"],
            generation=data["generation"],
            objectives=None if objectives is None else tuple(objectives),
            fitness=data.get("fitness"),
        )


class Lineage:
    """Store of :class:`LineageRecord`, one per candidate id, in insertion order.

    Contract: only the search driver writes (``add``); it is not thread-safe. Records are
    never changed or removed. Adding a record whose id is already stored is a no-op when
    the content is equal and an error otherwise — in particular a genome rediscovered
    through other parents (genome ids are content hashes) is not a new candidate: the
    search loop should skip children whose id is already known. Parents need not be
    stored (or be stored first); traversals return every reachable id.
    """

    def __init__(self, records: Iterable[LineageRecord] = ()) -> None:
        self._records: dict[str, LineageRecord] = {}
        self._children: dict[str, list[str]] = {}
        for record in records:
            self.add(record)

    # -- writing --------------------------------------------------------------------
    def add(self, record: LineageRecord) -> None:
        """Store ``record`` (a no-op if an equal record is already stored)."""
        if not isinstance(record, LineageRecord):
            raise ConfigError(f"Lineage.add takes a LineageRecord; got {type(record).__name__}")
        known = self._records.get(record.candidate_id)
        if known is not None:
            if known == record:
                return
            raise ConfigError(
                f"candidate {record.candidate_id} is already recorded as made by "
                f"{known.operator!r} from {list(known.parent_ids)} in generation "
                f"{known.generation}; got {record.operator!r} from {list(record.parent_ids)} "
                f"in generation {record.generation}; a genome seen before is not a new "
                "candidate: skip it (check `candidate_id in lineage`) instead of adding it"
            )
        self._records[record.candidate_id] = record
        for parent in dict.fromkeys(record.parent_ids):
            self._children.setdefault(parent, []).append(record.candidate_id)

    # -- reading --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, candidate_id: object) -> bool:
        return candidate_id in self._records

    def __iter__(self) -> Iterator[LineageRecord]:
        return iter(list(self._records.values()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lineage) and list(self._records.values()) == list(other._records.values())

    def get(self, candidate_id: str) -> LineageRecord:
        """The record of ``candidate_id``."""
        self._require(candidate_id)
        return self._records[candidate_id]

    def _require(self, candidate_id: str) -> None:
        if candidate_id not in self._records and candidate_id not in self._children:
            raise ConfigError(
                f"candidate {candidate_id!r} is not in the lineage (neither recorded nor "
                "a parent of a recorded candidate); pass an id from Lineage.rows()"
            )

    def ancestors(self, candidate_id: str) -> list[str]:
        """Every id ``candidate_id`` descends from, nearest first (breadth-first, parents
        in recorded order), without ``candidate_id`` itself."""
        self._require(candidate_id)
        return self._walk(candidate_id, lambda cid: self._records[cid].parent_ids if cid in self._records else ())

    def descendants(self, candidate_id: str) -> list[str]:
        """Every id descending from ``candidate_id``, nearest first (breadth-first,
        children in insertion order), without ``candidate_id`` itself."""
        self._require(candidate_id)
        return self._walk(candidate_id, lambda cid: self._children.get(cid, ()))

    @staticmethod
    def _walk(start: str, neighbours: Any) -> list[str]:
        seen = {start}
        order: list[str] = []
        queue = deque([start])
        while queue:
            for nxt in neighbours(queue.popleft()):
                if nxt not in seen:
                    seen.add(nxt)
                    order.append(nxt)
                    queue.append(nxt)
        return order

    def operator_stats(self, front_ids: Iterable[str]) -> dict[str, dict[str, int]]:
        """Per operator (sorted by name): ``children`` it made and how many of them are
        ``on_front`` (their id is in ``front_ids``)."""
        front = set(front_ids)
        stats: dict[str, dict[str, int]] = {}
        for record in self._records.values():
            entry = stats.setdefault(record.operator, {"children": 0, "on_front": 0})
            entry["children"] += 1
            entry["on_front"] += int(record.candidate_id in front)
        return {name: stats[name] for name in sorted(stats)}

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per record, for tables and CSV: ``candidate_id``, ``generation``,
        ``operator``, ``parents`` (space-separated ids), ``objective_<i>`` per objective
        (``None`` if unscored) and ``fitness.<key>`` for each scalar fitness entry."""
        width = max((len(r.objectives) for r in self._records.values() if r.objectives is not None), default=0)
        rows = []
        for record in self._records.values():
            row: dict[str, Any] = {
                "candidate_id": record.candidate_id,
                "generation": record.generation,
                "operator": record.operator,
                "parents": " ".join(record.parent_ids),
            }
            for i in range(width):
                objectives = record.objectives
                row[f"objective_{i}"] = objectives[i] if objectives is not None and i < len(objectives) else None
            for key, value in (record.fitness or {}).items():
                if value is None or isinstance(value, (str, bool, int, float)):
                    row[f"fitness.{key}"] = value
            rows.append(row)
        return rows

    # -- serialisation --------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """Plain JSON data: format name, version and the records in insertion order."""
        return {
            "format": LINEAGE_FORMAT,
            "format_version": LINEAGE_FORMAT_VERSION,
            "records": [record.to_dict() for record in self._records.values()],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> Lineage:
        """Rebuild a store from :meth:`to_json` output (or that data as a JSON string)."""
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"lineage data is not valid JSON ({exc}); it is damaged") from exc
        check_format(data, LINEAGE_FORMAT, lambda found: (
            f"lineage data has format {found!r}, expected {LINEAGE_FORMAT!r}; pass the "
            "output of Lineage.to_json()"
        ))
        check_version(data, (LINEAGE_FORMAT_VERSION,), lambda version: (
            f"lineage data has format version {version!r}; this "
            f"certevo reads version {LINEAGE_FORMAT_VERSION}; use the certevo that wrote it"
        ))
        try:
            return cls(LineageRecord.from_dict(item) for item in data["records"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"lineage data has a malformed record ({exc}); it is damaged") from exc

