"""What `certevo inspect` shows of a run (read with :func:`certevo.search.run_directory.open_run`):
its population, front, lineage and history as plain data."""

from __future__ import annotations

import difflib
from typing import Any

from certevo.population.errors import ConfigError
from certevo.search.certified_caption import certification_context
from certevo.search.config import SearchConfig
from certevo.search.state import Candidate, SearchState

SORT_KEYS = ("sparsity", "certified", "clean", "generation", "id")


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
