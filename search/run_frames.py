"""A run directory as pandas DataFrames, for a notebook.

    from certevo.search.run_frames import load_frames
    run = load_frames("runs/<run>")
    run.archive   # one row per evaluated candidate
    run.front     # the Pareto front (rows of the archive), by sparsity
    run.history   # one row per generation

Reads only the run directory's files (``config.yaml``, ``checkpoint/state.json``,
``evaluations.jsonl``; names from ``certevo.search.run_directory``), as plain JSON: it
imports neither torch nor Ray (nor the search itself), so it is quick in a notebook and
works on a machine with pandas alone. A search still running, or interrupted, is fine:
evaluations journaled after the last checkpoint are rows too (``checkpointed`` False;
their generation and parents are not known yet).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certevo.population.errors import CheckpointError, ConfigError
from certevo.search.run_directory import CONFIG_FILE, RunDirectory

__all__ = ["RunFrames", "load_frames"]

ARCHIVE_COLUMNS = ["id", "generation", "sparsity", "certified_accuracy", "clean_accuracy", "pgd_accuracy",
                   "activations", "parents", "operator", "epochs", "total_epochs", "inherited_from", "failure",
                   "eval_seconds", "on_front", "in_population", "checkpointed"]


@dataclass(frozen=True)
class RunFrames:
    """The tables of one run: ``archive`` (one row per evaluated candidate: the columns of
    ARCHIVE_COLUMNS, then ``layer_sparsity.<layer>`` per layer), ``front`` (the archive rows
    on the Pareto front after the last checkpointed generation, by sparsity), ``history``
    (per generation: hypervolume, front size, evaluations, ..., ``best_certified_at_<level>``)
    and ``config`` (config.yaml as a dict)."""

    archive: Any
    front: Any
    history: Any
    config: dict[str, Any]


def _activation_text(activations: list[str], per_neuron: list[list[str] | None] | None) -> str:
    """``relu,tanh`` per layer; a per-neuron layer as its counts, e.g. ``relu×12/tanh×4``."""
    parts = []
    for i, layer in enumerate(activations):
        neurons = per_neuron[i] if per_neuron and i < len(per_neuron) else None
        if neurons is None:
            parts.append(layer)
        else:
            parts.append("/".join(f"{name}×{n}" for name, n in sorted(Counter(neurons).items())))
    return ",".join(parts)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the {what} is damaged; restore it") from exc


def _journal(path: Path) -> dict[str, dict[str, Any]]:
    """The journal's records by id (first entry wins; a torn last line is skipped)."""
    records: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                records.setdefault(entry["id"], entry["record"])
            except (ValueError, KeyError, TypeError):
                continue
    return records


def _row(cid: str, record: dict[str, Any], genome: dict[str, Any] | None, lineage: dict[str, Any] | None) -> dict:
    row = {
        "id": cid,
        "generation": lineage["generation"] if lineage else None,
        "sparsity": record.get("sparsity"),
        "certified_accuracy": record.get("certified_accuracy"),
        "clean_accuracy": record.get("clean_accuracy"),
        "pgd_accuracy": record.get("pgd_accuracy"),
        "activations": _activation_text(genome["activations"], genome.get("neuron_activations")) if genome else None,
        "parents": list(lineage["parent_ids"]) if lineage else [],
        "operator": lineage["operator"] if lineage else None,
        "epochs": record.get("epochs"),
        "total_epochs": record.get("total_epochs") if record.get("total_epochs") is not None else record.get("epochs"),
        "inherited_from": record.get("inherited_from"),
        "failure": record.get("failure"),
        "eval_seconds": sum((record.get("timings") or {}).values()),
    }
    row.update({f"layer_sparsity.{k}": v for k, v in (record.get("layer_sparsity") or {}).items()})
    return row


def load_frames(run_dir: str | Path) -> RunFrames:
    """The archive, front and history of the search in ``run_dir`` as pandas DataFrames."""
    import pandas as pd
    import yaml

    path = Path(run_dir)
    if not path.is_dir():
        raise ConfigError(f"run directory {path} does not exist or is not a directory; pass the directory "
                          "`certevo launch` created (e.g. runs/<name>)")
    paths = RunDirectory(path)
    if not paths.config.is_file():
        raise CheckpointError(f"{path} is not a certevo run directory (no {CONFIG_FILE}); pass the directory a launch created")
    config = yaml.safe_load(paths.config.read_text()) or {}
    manifest_path = paths.manifest
    state: dict[str, Any] = {}
    if manifest_path.is_file():
        manifest = _read_json(manifest_path, "checkpoint")
        if not isinstance(manifest, dict) or not isinstance(manifest.get("state"), dict):
            raise CheckpointError(f"{manifest_path} holds no search state; the checkpoint is damaged; restore it")
        state = manifest["state"]
    lineage = {r["candidate_id"]: r for r in (state.get("lineage") or {}).get("records", [])}
    history = list(state.get("history") or [])
    front_ids = [str(p[0]) for p in history[-1].get("front", [])] if history else []
    population = set(state.get("population") or [])

    rows, seen = [], set()
    for entry in state.get("archive", []):
        genome, record = entry["genome"], entry["record"]
        rows.append({**_row(genome["id"], record, genome, lineage.get(genome["id"])), "checkpointed": True})
        seen.add(genome["id"])
    for cid, record in _journal(paths.journal).items():  # evaluated after the last checkpoint
        if cid not in seen:
            rows.append({**_row(cid, record, None, lineage.get(cid)), "checkpointed": False})
    for row in rows:
        row["on_front"] = row["id"] in front_ids
        row["in_population"] = row["id"] in population
    layers = sorted({k for row in rows for k in row if k.startswith("layer_sparsity.")})
    archive = pd.DataFrame(rows, columns=ARCHIVE_COLUMNS + layers)
    archive["generation"] = archive["generation"].astype("Int64")
    front = archive[archive["on_front"]].sort_values(["sparsity", "certified_accuracy"]).reset_index(drop=True)
    history_rows = []
    for entry in history:
        row = {k: v for k, v in entry.items() if k not in ("front", "best_certified")}
        row.update({f"best_certified_at_{level}": v for level, v in (entry.get("best_certified") or {}).items()})
        history_rows.append(row)
    return RunFrames(archive=archive, front=front, history=pd.DataFrame(history_rows), config=config)
