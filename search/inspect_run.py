"""Reading a run directory back: its population, front, lineage and history."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from certevo.population.checkpoint import CheckpointStore
from certevo.population.errors import CheckpointError, ConfigError
from certevo.search.certified_caption import certification_context
from certevo.search.command_hint import command_hint
from certevo.search.config import SearchConfig, read_run_config
from certevo.search.loop import CONFIG_FILE, check_same_config
from certevo.search.state import Candidate, SearchState

SORT_KEYS = ("sparsity", "certified", "clean", "generation", "id")


def load_run(run_dir: str | Path) -> tuple[SearchConfig, SearchState]:
    """The configuration and last checkpointed state of the search in ``run_dir``; refuses
    a config.yaml edited since the checkpoint (apart from the budget)."""
    path = Path(run_dir).expanduser()
    if not path.exists():
        raise ConfigError(f"run directory {path} does not exist; pass the directory `certevo launch` created (e.g. runs/<name>)")
    if not path.is_dir():
        raise ConfigError(f"run directory {path} is a file, not a directory; pass the directory `certevo launch` created")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{path} is not a certevo run directory (no {CONFIG_FILE}); pass the directory a launch created")
    config = read_run_config(config_path)
    store = CheckpointStore(path / "checkpoint")
    if not store.exists():
        raise CheckpointError(
            f"{path} has no checkpoint yet ({store.manifest_path} is missing): the search stopped before its first "
            f"generation finished; resume it with `{command_hint('resume', path)}`"
        )
    state_data, arrays = store.load()
    check_same_config(config, state_data.get("config"), config_path)
    return config, SearchState.from_checkpoint(state_data, arrays, str(store.manifest_path))


def candidate_row(state: SearchState, candidate: Candidate) -> dict[str, Any]:
    """One candidate as plain data."""
    record = candidate.record
    lineage = state.lineage.get(candidate.id) if candidate.id in state.lineage else None
    return {
        "id": candidate.id,
        "sparsity": record.sparsity,
        "certified_accuracy": record.certified_accuracy,
        "clean_accuracy": record.clean_accuracy,
        "pgd_accuracy": record.pgd_accuracy,
        "activations": candidate.genome.activation_pattern(),
        "generation": lineage.generation if lineage else None,
        "operator": lineage.operator if lineage else None,
        "parents": list(lineage.parent_ids) if lineage else [],
        "failure": record.failure,
        "epochs": record.epochs,
        "total_epochs": record.total_epochs if record.total_epochs is not None else record.epochs,
        "inherited_from": record.inherited_from,
    }


def sorted_rows(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Rows sorted by ``key`` (objectives descending, generation and id ascending)."""
    if key not in SORT_KEYS:
        raise ConfigError(f"--sort {key!r} is not a column; use one of {', '.join(SORT_KEYS)}")
    field = {"certified": "certified_accuracy", "clean": "clean_accuracy"}.get(key, key)
    descending = key in ("sparsity", "certified", "clean")
    return sorted(rows, key=lambda r: (r[field] is None, r[field] or 0), reverse=descending) if descending else \
        sorted(rows, key=lambda r: (r[field] is None, r[field] if r[field] is not None else 0))


def resolve_id(state: SearchState, prefix: str) -> str:
    """The archive id equal to, or uniquely starting with, ``prefix``; else a clear error."""
    if not isinstance(prefix, str) or not prefix.strip():
        raise ConfigError(f"a candidate id (or a prefix of one) is needed; got {prefix!r}")
    prefix = prefix.strip()
    if prefix in state.archive:
        return prefix
    matches = [cid for cid in state.archive if cid.startswith(prefix)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ConfigError(f"{prefix!r} matches {len(matches)} candidates ({', '.join(sorted(matches)[:10])}); "
                          "give more characters of the id")
    close = difflib.get_close_matches(prefix, list(state.archive), n=5, cutoff=0.3)
    front = [c.id for c in sorted(state.front(), key=lambda c: c.record.sparsity)]
    hint = f"close ids: {', '.join(close)}" if close else f"front ids: {', '.join(front[:10]) or 'none'}"
    raise ConfigError(f"no candidate id starts with {prefix!r} ({len(state.archive)} candidates); {hint}; "
                      "see `certevo inspect RUN_DIR` for the ids")


def lineage_tree(state: SearchState, candidate_id: str, max_depth: int = 12) -> dict[str, Any]:
    """The ancestry of a candidate as a nested dict: operator, generation, objectives and the
    change of certified accuracy against each parent."""

    def node(cid: str, depth: int) -> dict[str, Any]:
        cand = state.archive.get(cid)
        record = state.lineage.get(cid) if cid in state.lineage else None
        out = {
            "id": cid,
            "operator": record.operator if record else None,
            "generation": record.generation if record else None,
            "sparsity": cand.record.sparsity if cand else None,
            "certified_accuracy": cand.record.certified_accuracy if cand else None,
            "parents": [],
        }
        if record and depth < max_depth:
            for parent in record.parent_ids:
                child = node(parent, depth + 1)
                if cand and child["certified_accuracy"] is not None:
                    child["child_gain"] = cand.record.certified_accuracy - child["certified_accuracy"]
                out["parents"].append(child)
        return out

    return node(candidate_id, 0)


def operator_stats(state: SearchState) -> dict[str, dict[str, int]]:
    """Per variation operator: children it took part in making, and how many are on the front."""
    front = {c.id for c in state.front()}
    stats: dict[str, dict[str, int]] = {}
    for record in state.lineage:
        for op in record.operator.split("+"):
            entry = stats.setdefault(op, {"children": 0, "on_front": 0})
            entry["children"] += 1
            entry["on_front"] += int(record.candidate_id in front)
    return dict(sorted(stats.items()))


def summary(config: SearchConfig, state: SearchState, sort: str = "sparsity") -> dict[str, Any]:
    """Everything `certevo inspect --json` prints."""
    population = [candidate_row(state, state.archive[i]) for i in state.population]
    front = [candidate_row(state, c) for c in state.front()]
    return {
        "generation": state.generation,
        "evaluations": len(state.archive),
        "hypervolume": state.hypervolume(),
        "strategy": config.search.strategy,
        "certified_accuracy_refers_to": certification_context(config, (c.record for c in state.archive.values())),
        "population": sorted_rows(population, sort),
        "front": sorted_rows(front, "sparsity"),
        "activation_population": state.activation_population,
        "operators": operator_stats(state),
        "history": [{k: v for k, v in h.items() if k != "front"} for h in state.history],
    }
