"""Everything a search knows between generations, and its checkpoint form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from certevo.evaluators.fitness import FitnessRecord
from certevo.population.checkpoint import pack_genomes, restore_rng, rng_state, unpack_genomes
from certevo.population.errors import CheckpointError
from certevo.population.genome import Genome
from certevo.population.lineage import Lineage
from certevo.population.selection import HV_REFERENCE_2D, IncrementalFront, hypervolume_2d, pareto_front

STATE_FORMAT = "certevo-search-state/1"
FAILED_OBJECTIVES = (-1.0, -1.0)
#: Trained arrays of a candidate hold its state dict plus, under this prefix and the
#: layer name, the absolute dense gradient of that layer's weight.
GRADIENT_PREFIX = "grad/"


def trained_arrays(weights: dict[str, Any] | None, gradients: dict[str, Any] | None) -> dict[str, np.ndarray] | None:
    """One dict of numpy arrays from an evaluation's weights and gradients (None: none kept)."""
    if weights is None:
        return None
    arrays = {name: np.asarray(value.numpy() if hasattr(value, "numpy") else value) for name, value in weights.items()}
    for name, value in (gradients or {}).items():
        arrays[GRADIENT_PREFIX + name] = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    return arrays


def split_trained(arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(state dict, gradients by layer)`` of a candidate's trained arrays."""
    weights = {k: v for k, v in arrays.items() if not k.startswith(GRADIENT_PREFIX)}
    gradients = {k[len(GRADIENT_PREFIX):]: v for k, v in arrays.items() if k.startswith(GRADIENT_PREFIX)}
    return weights, gradients


@dataclass(frozen=True)
class Candidate:
    """An evaluated genome."""

    genome: Genome
    record: FitnessRecord

    @property
    def id(self) -> str:
        """The genome id."""
        return self.genome.id


def objectives(record: FitnessRecord, extra: tuple[str, ...] = ()) -> tuple[float, ...]:
    """Maximised objectives: sparsity, certified accuracy, then any extras (clean accuracy;
    evaluation time, negated). A failed record scores below every successful one."""
    if not record.ok:
        return FAILED_OBJECTIVES + tuple(-1.0 if e == "clean_accuracy" else -1e9 for e in extra)
    values = [record.sparsity, record.certified_accuracy]
    for name in extra:
        values.append(record.clean_accuracy if name == "clean_accuracy" else -sum(record.timings.values()))
    return tuple(values)


@dataclass
class SearchState:
    """The mutable state of one search; only the driver holds and changes it.

    ``generation`` is -1 before the K-starts phase has finished, then the number of
    completed generations. ``population`` holds candidate ids (the mask population for
    co-evolution); ``activation_population`` holds activation patterns (co-evolution only).
    """

    rng: np.random.Generator
    generation: int = -1
    archive: dict[str, Candidate] = field(default_factory=dict)
    population: list[str] = field(default_factory=list)
    activation_population: list[list[Any]] = field(default_factory=list)
    lineage: Lineage = field(default_factory=Lineage)
    history: list[dict[str, Any]] = field(default_factory=list)
    weights: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    #: Per island, its state after the last generation (see certevo.search.island_model).
    islands: list[dict[str, Any]] = field(default_factory=list)
    #: Asynchronous mode (certevo.search.steady_state): proposals handed out and not yet
    #: absorbed, each ``{"island", "genome", "parents", "operator", "inherit_from"}``.
    in_flight: list[dict[str, Any]] = field(default_factory=list)
    #: Asynchronous mode: proposals absorbed since the last generation ended.
    absorbed: int = 0
    #: The archive's front, kept up to date by :meth:`add` (every generation, and in
    #: asynchronous mode every few results, asks for it; sorting the whole archive each
    #: time grew with the archive). Rebuilt if the archive changed some other way.
    _archive_front: IncrementalFront = field(default_factory=IncrementalFront, repr=False, compare=False)

    def add(self, candidate: Candidate) -> None:
        """Put an evaluated candidate in the archive (once)."""
        if candidate.id in self.archive:
            return
        in_step = self._archive_front.seen == len(self.archive)
        self.archive[candidate.id] = candidate
        if in_step:
            self._offer(candidate)

    def _offer(self, candidate: Candidate) -> None:
        self._archive_front.add(candidate, candidate.record.objectives if candidate.record.ok else None)

    def front(self, ids: list[str] | None = None) -> list[Candidate]:
        """The Pareto front (sparsity vs certified accuracy) of ``ids`` (default: the
        whole archive), failed candidates excluded, in archive order."""
        if ids is None:
            if self._archive_front.seen != len(self.archive):
                self._archive_front = IncrementalFront()
                for candidate in self.archive.values():
                    self._offer(candidate)
            return self._archive_front.items()
        pool = [self.archive[i] for i in ids if self.archive[i].record.ok]
        return pareto_front(pool, [c.record.objectives for c in pool])

    def hypervolume(self) -> float:
        """Hypervolume of the archive's front at the fixed reference point of certevo.population.selection."""
        return hypervolume_2d([c.record.objectives for c in self.front()], HV_REFERENCE_2D)

    # -- checkpoint form ------------------------------------------------------------
    def to_checkpoint(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON state and named arrays for a CheckpointStore."""
        manifests, arrays = pack_genomes([c.genome for c in self.archive.values()])
        flying, flying_arrays = pack_genomes([p["genome"] for p in self.in_flight])
        arrays.update(flying_arrays)  # keyed by genome id: an archived genome's masks are the same
        for cid, tensors in self.weights.items():
            for name, value in tensors.items():
                arrays[f"weights/{cid}/{name}"] = value
        state = {
            "format": STATE_FORMAT,
            "generation": self.generation,
            "rng": rng_state(self.rng),
            "archive": [
                {"genome": m, "record": c.record.to_dict()} for m, c in zip(manifests, self.archive.values())
            ],
            "population": list(self.population),
            "activation_population": self.activation_population,
            "lineage": self.lineage.to_json(),
            "history": self.history,
            "islands": self.islands,
        }
        if self.in_flight or self.absorbed:  # asynchronous mode only: generational checkpoints stay as they were
            state["in_flight"] = [{**p, "genome": m, "parents": list(p["parents"])} for m, p in zip(flying, self.in_flight)]
            state["absorbed"] = self.absorbed
        return state, arrays

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], arrays: dict[str, np.ndarray], where: str) -> SearchState:
        """Inverse of :meth:`to_checkpoint`; ``where`` names the checkpoint in errors."""
        if state.get("format") != STATE_FORMAT:
            raise CheckpointError(
                f"{where} holds search state of format {state.get('format')!r}, expected {STATE_FORMAT!r}; "
                "it was written by another version of certevo; start a new run directory"
            )
        try:
            genomes = unpack_genomes([entry["genome"] for entry in state["archive"]], arrays)
            archive = {
                g.id: Candidate(g, FitnessRecord.from_dict(entry["record"]))
                for g, entry in zip(genomes, state["archive"])
            }
            flying = state.get("in_flight", [])
            in_flight = [{**p, "genome": g, "parents": tuple(p["parents"])}
                         for g, p in zip(unpack_genomes([p["genome"] for p in flying], arrays), flying)]
            weights: dict[str, dict[str, np.ndarray]] = {}
            for key, value in arrays.items():
                if key.startswith("weights/"):
                    _, cid, name = key.split("/", 2)
                    weights.setdefault(cid, {})[name] = value
            return cls(
                rng=restore_rng(state["rng"]),
                generation=int(state["generation"]),
                archive=archive,
                population=list(state["population"]),
                activation_population=list(state["activation_population"]),
                lineage=Lineage.from_json(state["lineage"]),
                history=list(state["history"]),
                weights=weights,
                islands=list(state.get("islands", [])),
                in_flight=in_flight,
                absorbed=int(state.get("absorbed", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where} is missing or has bad search state ({type(exc).__name__}: {exc}); "
                                  "the checkpoint is damaged; restore it or start a new run directory") from exc
