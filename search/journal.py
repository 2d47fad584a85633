"""The evaluation journal: every finished evaluation, appended the moment it arrives, so
an interrupted generation loses nothing already computed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from evaluators.fitness import FitnessRecord
from population.files import atomic_write


class EvaluationJournal:
    """Append-only JSON lines ``{"id", "record"}`` plus, when weights are kept, one
    safetensors file per candidate. Only the driver writes. A torn last line (the driver
    killed mid-write) is ignored on reading."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "evaluations.jsonl"
        self.weights_dir = run_dir / "weights"

    def append(self, record: FitnessRecord, weights: dict[str, np.ndarray] | None = None) -> None:
        """Record one finished evaluation durably."""
        if weights is not None:
            from safetensors.numpy import save

            self.weights_dir.mkdir(exist_ok=True)
            atomic_write(self.weights_dir / f"{record.candidate_id}.safetensors", save(weights))
        line = json.dumps({"id": record.candidate_id, "record": record.to_dict()}) + "\n"
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def records(self) -> dict[str, FitnessRecord]:
        """Every complete entry, by candidate id (first entry wins)."""
        out: dict[str, FitnessRecord] = {}
        if not self.path.is_file():
            return out
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                out.setdefault(entry["id"], FitnessRecord.from_dict(entry["record"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a torn line from an interrupted write
        return out

    def weights(self, candidate_id: str) -> dict[str, np.ndarray] | None:
        """The saved weights of a candidate, if any."""
        path = self.weights_dir / f"{candidate_id}.safetensors"
        if not path.is_file():
            return None
        from safetensors.numpy import load_file

        return load_file(str(path))
