"""The search loop: K-starts, then generations of offspring evaluated on the Ray pool,
selection, lineage, and a checkpoint after every generation."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from certevo.cluster.connect import check_reachable, connect
from certevo.cluster.island_hosts import host_islands
from certevo.cluster.pool import EvaluationPool, EvaluationTask, EvaluatorActor, TaskResult
from certevo.evaluators.models import make_template
from certevo.population.errors import ConfigError
from certevo.population.files import atomic_write
from certevo.population.lineage import LineageRecord
from certevo.population.seeds import derive_seed
from certevo.search.command_hint import command_hint
from certevo.search.config import SearchConfig
from certevo.search.input_checks import check_resume_targets
from certevo.search.island_model import Island, initial_snapshots, offspring_counts
from certevo.search.journal import EvaluationJournal, journal_digest
from certevo.search.observer import SearchObserver, check_observers  # SearchObserver: also importable from here
from certevo.search.run_directory import RunDirectory, open_run
from certevo.search.state import Candidate, SearchState, objectives, split_trained, trained_arrays
from certevo.search.steady_state import SteadyState
from certevo.search.strategies import PRUNED_START_ALLOCATIONS, CoevolutionStrategy, Proposal, Strategy, make_strategy

SPARSITY_LEVELS = (0.5, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class SearchResult:
    """What a finished (or stopped) search produced."""

    front: list[Candidate]
    history: list[dict[str, Any]]
    evaluations: int
    hypervolume: float
    run_dir: Path


def best_at_levels(front: Sequence[Candidate], levels: Sequence[float] = SPARSITY_LEVELS) -> dict[str, float]:
    """Best certified accuracy among candidates at least as sparse as each level."""
    return {
        f"{level:g}": max((c.record.certified_accuracy for c in front if c.record.sparsity >= level - 1e-12), default=0.0)
        for level in levels
    }


class Search:
    """One search in one run directory. Only this driver writes checkpoints."""

    #: The class of the pool's evaluator actors (benchmarks/scaling.py sets a stub with the
    #: same methods on a search, to measure the driver and the pool without training).
    actor_class: type = EvaluatorActor

    def __init__(self, config: SearchConfig, run_dir: Path, state: SearchState, observers: Sequence[SearchObserver] = ()) -> None:
        self.config = config
        self.run_dir = run_dir
        self.state = state
        self.observers = check_observers(observers)  # refused here, not when a hook is first called
        self.store = RunDirectory(run_dir).checkpoint_store()
        self.journal = EvaluationJournal(run_dir, journal_digest(config))
        # Records without a digest (older journals) only when a checkpoint of this
        # configuration exists: resume has checked config.yaml against it.
        self._cached = self.journal.recover(accept_unstamped=self.store.exists())
        self.pool: EvaluationPool | None = None
        self.islands: list[Any] = []
        self._migrated: list[list[str]] | None = None
        self.started = time.perf_counter()
        self.evaluated_this_session = 0
        #: When the last checkpoint of this session was written, and how long it took.
        self.checkpointed_at: float | None = None
        self.checkpoint_seconds = 0.0
        data = config.data.load()
        self.template = make_template(config.model.kind, data.input_shape, data.num_classes,
                                      widths=config.model.widths, channels=config.model.channels)
        self.strategy: Strategy = make_strategy(config, self.template.layer_shapes(), len(self.template.hidden_sizes()))

    # -- creation -------------------------------------------------------------------
    @classmethod
    def create(cls, config: SearchConfig, run_dir: str | Path | None = None, observers: Sequence[SearchObserver] = ()) -> Search:
        """A new search in an empty (or new) run directory; refuses to overwrite one."""
        path = Path(run_dir if run_dir is not None else config.run_dir)
        if RunDirectory(path).holds_search():
            raise ConfigError(
                f"run directory {path} already holds a search; resume it with `{command_hint('resume', path)}` "
                "or choose another --run-dir"
            )
        config = replace(config, run_dir=str(path))
        _check_budget(config)
        state = SearchState(rng=np.random.default_rng(derive_seed(config.search.seed, "search")))
        # Built before anything is written: a data set or model that cannot be loaded
        # fails here and leaves no run directory behind to block the retry.
        search = cls(config, path, state, observers)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write(RunDirectory(path).config, yaml.safe_dump(config.to_dict(), sort_keys=False).encode())
        return search

    @classmethod
    def resume(cls, run_dir: str | Path, *, generations: int | None = None,
               evaluation_budget: int | None = None, observers: Sequence[SearchObserver] = ()) -> Search:
        """The search in ``run_dir``, from its last checkpoint, optionally with a larger budget."""
        run = open_run(run_dir, require_checkpoint=False)
        path, config, state = run.directory.root, run.config, run.state
        if state is None:  # stopped before the K-starts phase finished: start over (the journal keeps results)
            state = SearchState(rng=np.random.default_rng(derive_seed(config.search.seed, "search")))
        # Before config.yaml is rewritten: a target the run has already reached is refused.
        check_resume_targets(path, state.generation, len(state.archive), generations, evaluation_budget)
        settings = config.search
        if generations is not None:
            settings = replace(settings, generations=generations)
        if evaluation_budget is not None:
            settings = replace(settings, evaluation_budget=evaluation_budget)
        config = replace(config, search=settings, run_dir=str(path))
        raised = generations is not None or evaluation_budget is not None
        if raised:
            _check_budget(config)
        # Built before config.yaml is rewritten: a refused observer, or data that cannot be
        # loaded, leaves the run's settings as they were.
        search = cls(config, path, state, observers)
        if raised:
            atomic_write(run.directory.config, yaml.safe_dump(config.to_dict(), sort_keys=False).encode())
        return search

    # -- running --------------------------------------------------------------------
    def planned_evaluations(self) -> int:
        """How many evaluations the whole search will run at most."""
        s = self.config.search
        total = initial_evaluations(self.config) + s.generations * s.population_size * s.islands
        return min(total, s.evaluation_budget) if s.evaluation_budget is not None else total

    def _budget_left(self) -> int:
        budget = self.config.search.evaluation_budget
        return budget - len(self.state.archive) if budget is not None else 1 << 30

    def run(self) -> SearchResult:
        """Run until the generation count or evaluation budget is reached."""
        torch.set_num_threads(1)
        self.started = time.perf_counter()
        # A cluster address nobody answers at fails before anything starts (ray.init
        # would retry it for many minutes).
        check_reachable(self.config.cluster.address)
        # Observers start first: their background work (e.g. creating the MLflow store)
        # then overlaps with Ray starting, instead of with the evaluator actors starting.
        for observer in self.observers:
            observer.on_start(self)
        try:
            connect(self.config.cluster.address)
            self.pool = self._make_pool()
            if self.state.generation < 0:
                self._kstarts()
            if self.state.generation < self.config.search.generations and self._budget_left() > 0:
                self._start_islands()
            if self.config.search.mode == "asynchronous":
                SteadyState(self).run()
            else:
                while self.state.generation < self.config.search.generations and self._budget_left() > 0:
                    self._generation()
        except BaseException as exc:  # Ctrl-C included: observers close what they opened
            for observer in self.observers:
                observer.on_error(self, exc)
            raise
        finally:
            if self.pool is not None:
                self.pool.shutdown()
            for island in self.islands:
                island.shutdown()
        summary = self._finish()
        for observer in self.observers:
            observer.on_end(self, summary)
        return SearchResult(self.state.front(), self.state.history, len(self.state.archive),
                            self.state.hypervolume(), self.run_dir)

    def _make_pool(self) -> EvaluationPool:
        import ray

        cluster = self.config.cluster
        resources = ray.cluster_resources()
        device = cluster.device or ("cuda" if resources.get("GPU", 0) > 0 else "cpu")
        if device == "cuda" and resources.get("GPU", 0) <= 0:
            raise ConfigError("cluster.device is 'cuda' but the Ray cluster has no GPU (`ray status` lists its "
                              "resources); start Ray on GPU nodes, or set cluster.device: cpu")
        actors = cluster.actors
        if actors is None:
            actors = max(1, int(resources.get("CPU", 1) // cluster.cpus_per_actor))
            if device == "cuda":
                actors = min(actors, max(1, int(resources["GPU"] // cluster.gpus_per_actor)))
        return EvaluationPool(self.config.evaluation_spec(), actors, cpus_per_actor=cluster.cpus_per_actor,
                              device=device, gpus_per_actor=cluster.gpus_per_actor, batch_size=cluster.batch_size,
                              actor_class=self.actor_class)

    def _kstarts(self) -> None:
        proposals = self.strategy.kstart_proposals(self.state)
        self._evaluate(proposals, generation=0)
        pruned = self.strategy.pruned_proposals(self.state, proposals)
        self._evaluate(pruned, generation=0)
        self.state.population = self.strategy.kstart_population(self.state, proposals, pruned)
        if isinstance(self.strategy, CoevolutionStrategy):
            self.strategy.seed_activations(self.state)
        self.state.generation = 0
        self._end_generation(len(proposals) + len(pruned))

    def _island_args(self, snapshot: dict[str, Any]) -> tuple:
        seen = [self.state.archive[i] for i in snapshot["seen"]]
        weights = {k: self.state.weights[k] for k in snapshot["population"] if k in self.state.weights}
        return (self.config.to_dict(), self.template.layer_shapes(), len(self.template.hidden_sizes()),
                snapshot, seen, weights)

    def _start_islands(self) -> None:
        settings = self.config.search
        if not self.state.islands:  # after K-starts, or a checkpoint from before islands existed
            self.state.islands = initial_snapshots(self.state, settings.islands, settings.seed)
        actors = self.config.cluster.island_actors
        if actors is None:
            actors = settings.islands > 1
        self.islands = host_islands(Island, [self._island_args(s) for s in self.state.islands], actors=actors)

    def _generation(self) -> None:
        settings = self.config.search
        counts = offspring_counts(len(self.islands), settings.population_size, self._budget_left())
        pending = [island.submit("offspring", n) for island, n in zip(self.islands, counts)]
        per_island = [island.result(p) for island, p in zip(self.islands, pending)]
        proposals = [p for batch in per_island for p in batch]
        self._evaluate(proposals, generation=self.state.generation + 1)
        pending = []
        for island, batch in zip(self.islands, per_island):
            evaluated = [self.state.archive[i] for i in dict.fromkeys(p.genome.id for p in batch)]
            weights = {c.id: self.state.weights[c.id] for c in evaluated if c.id in self.state.weights}
            pending.append(island.submit("accept", batch, evaluated, weights))
        snapshots = [island.result(p) for island, p in zip(self.islands, pending)]
        self.state.generation += 1
        snapshots = self._adopt_islands(snapshots)
        self._end_generation(len(proposals))
        for island, snapshot in zip(self.islands, snapshots):
            island.checkpointed(self._island_args(snapshot))

    def _adopt_islands(self, snapshots: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """At the end of generation ``state.generation``: migrate if it is due, then make the
        islands' snapshots the search's populations. Returns the snapshots kept."""
        if len(self.islands) > 1 and self.state.generation % self.config.search.migration_interval == 0:
            snapshots = self._migrate()
        self.state.islands = snapshots
        self.state.population = list(dict.fromkeys(i for s in snapshots for i in s["population"]))
        patterns = [p for s in snapshots for p in s["activation_population"]]
        self.state.activation_population = [p for k, p in enumerate(patterns) if p not in patterns[:k]]
        return snapshots

    def _migrate(self) -> list[dict[str, Any]]:
        """Ring migration: every island's best go to the next island (see certevo.search.island_model)."""
        count = self.config.search.migrants
        pending = [island.submit("emigrants", count) for island in self.islands]
        leaving = [island.result(p) for island, p in zip(self.islands, pending)]
        pending = []
        for k, island in enumerate(self.islands):
            arriving = [self.state.archive[i] for i in leaving[k - 1]]
            weights = {c.id: self.state.weights[c.id] for c in arriving if c.id in self.state.weights}
            pending.append(island.submit("immigrate", arriving, weights))
        self._migrated = leaving
        return [island.result(p) for island, p in zip(self.islands, pending)]

    def _task(self, proposal: Proposal) -> EvaluationTask:
        inherit = self.config.search.weight_inheritance
        parent = proposal.inherit_from if inherit and proposal.inherit_from in self.state.weights else None
        if parent is None:
            return EvaluationTask(proposal.genome, keep_weights=inherit)
        weights, _ = split_trained(self.state.weights[parent])
        record = self.state.archive[parent].record
        return EvaluationTask(
            proposal.genome,
            initial_weights={k: torch.from_numpy(v) for k, v in weights.items()},
            epochs=self.config.search.inherit_epochs,
            keep_weights=True,
            prior_epochs=record.total_epochs if record.total_epochs is not None else record.epochs,
            inherited_from=parent,
        )

    def _evaluate(self, proposals: list[Proposal], generation: int) -> None:
        fresh: dict[str, Proposal] = {}
        for p in proposals:
            if p.genome.id not in self.state.archive and p.genome.id not in fresh:
                fresh[p.genome.id] = p
        records: dict[str, Any] = {}
        weights: dict[str, dict[str, np.ndarray] | None] = {}
        tasks = []
        for cid, proposal in fresh.items():
            if cid in self._cached:  # finished before an interruption
                records[cid] = self._cached[cid]
                weights[cid] = self.journal.weights(cid)
            else:
                tasks.append(self._task(proposal))
        for result in self.pool.run(tasks):
            cid = result.task.key
            records[cid], weights[cid] = result.evaluation.record, self._journal_result(result)
        for cid, proposal in fresh.items():  # proposal order: the archive does not depend on timing
            self._add_candidate(proposal, records[cid], weights.get(cid), generation)

    def _journal_result(self, result: TaskResult) -> dict[str, np.ndarray] | None:
        """A finished evaluation into the journal, and to the observers; returns its arrays
        (trained weights and gradients) if it kept any."""
        evaluation = result.evaluation
        arrays = trained_arrays(evaluation.weights, evaluation.gradients)
        self.journal.append(evaluation.record, arrays)
        self.evaluated_this_session += 1
        for observer in self.observers:
            observer.on_evaluation(self, result)
        return arrays

    def _add_candidate(self, proposal: Proposal, record: Any, arrays: dict[str, np.ndarray] | None,
                       generation: int) -> Candidate:
        """An evaluated proposal into the archive, its weights (if kept) and the lineage."""
        cid = proposal.genome.id
        candidate = Candidate(proposal.genome, record)
        self.state.add(candidate)
        if arrays is not None:
            self.state.weights[cid] = arrays
        if cid not in self.state.lineage:
            extra = self.config.search.extra_objectives
            self.state.lineage.add(LineageRecord(cid, proposal.parents, proposal.operator, generation,
                                                 objectives(record, extra), record.to_dict()))
        return candidate

    def _end_generation(self, offspring: int, keep_weights: Sequence[str] = (), *, save: bool = True,
                        replayed: bool = False) -> None:
        """The history entry of the generation just ended, the checkpoint (unless ``save``
        is False: the asynchronous driver spaces them out) and ``on_generation`` (with
        ``"replayed": true`` for a generation an asynchronous resume ended again: the
        observers may have seen it before the stop)."""
        keep = set(self.state.population) | set(keep_weights)  # plus in-flight children's parents (asynchronous)
        self.state.weights = {k: v for k, v in self.state.weights.items() if k in keep}
        front = self.state.front()
        elapsed = time.perf_counter() - self.started
        summary = {
            "generation": self.state.generation,
            "hypervolume": self.state.hypervolume(),
            "front_size": len(front),
            "evaluations": len(self.state.archive),
            "offspring": offspring,
            "failures": sum(1 for c in self.state.archive.values() if not c.record.ok),
            "evaluations_per_minute": 60.0 * self.evaluated_this_session / elapsed if elapsed > 0 else 0.0,
            "best_certified": best_at_levels(front),
            "front": [[c.id, c.record.sparsity, c.record.certified_accuracy] for c in front],
        }
        if self._migrated is not None:  # ids each island sent to the next
            summary["migrants"] = self._migrated
            self._migrated = None
        self.state.history.append(summary)
        if save:
            self._save_checkpoint()
        observed = {**summary, "replayed": True} if replayed else summary
        for observer in self.observers:
            observer.on_generation(self, observed)

    def _save_checkpoint(self) -> None:
        """The whole state as the checkpoint of generation ``state.generation``."""
        begin = time.perf_counter()
        state, arrays = self.state.to_checkpoint()
        state["config"] = self.config.to_dict()
        self.store.save(state, arrays, self.state.generation)
        self.checkpointed_at = time.perf_counter()
        self.checkpoint_seconds = self.checkpointed_at - begin

    def _finish(self) -> dict[str, Any]:
        front = sorted(self.state.front(), key=lambda c: c.record.sparsity)
        rows = [
            {"id": c.id, "sparsity": c.record.sparsity, "certified_accuracy": c.record.certified_accuracy,
             "clean_accuracy": c.record.clean_accuracy, "activations": c.genome.activation_pattern(),
             "generation": self.state.lineage.get(c.id).generation if c.id in self.state.lineage else None}
            for c in front
        ]
        summary = {"front": rows, "hypervolume": self.state.hypervolume(), "evaluations": len(self.state.archive),
                   "generations": self.state.generation, "history": self.state.history}
        atomic_write(RunDirectory(self.run_dir).front, json.dumps(summary, indent=2).encode())
        return summary


def initial_evaluations(config: SearchConfig) -> int:
    """Evaluations of generation 0: the K-starts, plus (``search.init: kstarts+prune``) at
    most two pruned starts per target sparsity above the lowest."""
    s = config.search
    starts = s.kstarts * len(config.genome.sparsities)
    if s.init == "kstarts+prune":
        starts += len(PRUNED_START_ALLOCATIONS) * (len(set(config.genome.sparsities)) - 1)
    return starts


def _check_budget(config: SearchConfig) -> None:
    s = config.search
    starts = initial_evaluations(config)
    if s.evaluation_budget is not None and s.evaluation_budget <= starts:
        raise ConfigError(
            f"search.evaluation_budget is {s.evaluation_budget}, but generation 0 alone needs up to {starts} "
            f"evaluations (search.kstarts x genome.sparsities, plus pruned starts with search.init: kstarts+prune); "
            f"raise the budget above {starts}, lower search.kstarts or set search.init: kstarts"
        )

