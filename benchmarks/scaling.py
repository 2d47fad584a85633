"""Scaling: how busy the real search keeps many workers, in both search modes, and how many
results per second its driver takes in; the figure for 1,000 workers is simulated.

* Utilisation at ``--workers`` (64): the real search (``Search.create(config, run_dir).run()``,
  default digits config, population 12) on a local Ray offering ``--workers`` logical CPUs,
  with stub actors (``Search.actor_class``) that import no torch (checked in each) and sleep
  a log-normal time per candidate (median 1 s x ``--time-scale``, sigma 0.5, drawn from its
  id), returning a record deterministic in the genome (certified accuracy falls smoothly
  with sparsity and unequal layer sparsities, +-1.5 points from the id). Generational runs
  ``--generations``; asynchronous ``--async-rounds`` x workers children. Utilisation = stub
  sleep / (workers x wall) over the evolutionary phase: from the end of the K-starts, once
  every actor is up (64 take ~30 s to start here), to the last dispatch; ``whole`` adds the
  final drain. Median and spread over ``--repeats``. Beside them, the strongest generational
  baseline (``--no-baseline`` skips it): a population of one child per worker, as many
  evaluations as the asynchronous runs.
* Driver capacity: the same searches with stubs that return at once (``--capacity-workers``):
  results/s at saturation, and the driver's time per 12 results against the archive size a,
  fitted as c0 + c1 a + c2 a^2 (a checkpoint writes the whole archive: the generational
  mode writes one every generation, the asynchronous one spaces them out; the parts of a
  generation end are timed again on the finished search).
* 1,000 workers (``--simulate``): a discrete-event simulation. Durations from the same
  distribution at full scale; the driver is one server taking results in arrival order, each
  costing 1/12 of the fitted time per 12 results at the archive size then (extrapolated
  past the sizes measured; also printed held at its K-starts value); dispatch and result
  each take half the measured Ray round trip; a generation lasts its slowest candidate plus
  the driver's time. Checked against the measurement at ``--workers``.
* ``--stub-tasks``: the pool and journal alone (``driver_results_per_second``, the figure of
  earlier versions); ``--rounds`` > 0: the real evaluator on 1 and 2 actors (``speedup_ratio``).

The last line is JSON (``utilization_async_64``, ``utilization_generational_64``,
``driver_results_per_s``, ``utilization_*_1000_simulated``, ``ratio``: asynchronous over
generational utilisation; ``utilization_generational_population64_64``: the baseline). The
default run takes about 10 minutes here, mostly starting 64 actor processes per search.

    python benchmarks/scaling.py [--workers 64] [--repeats 3] [--time-scale 1] [--simulate 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from certevo.cluster.connect import connect  # noqa: E402
from certevo.cluster.pool import EvaluationPool, EvaluationTask  # noqa: E402
from certevo.evaluators.evaluation import Evaluation  # noqa: E402
from certevo.evaluators.fitness import FitnessRecord  # noqa: E402
from certevo.population.genome import random_genome  # noqa: E402
from certevo.population.seeds import derive_seed  # noqa: E402
from certevo.search.config import SearchSettings, load_config  # noqa: E402
from certevo.search.journal import EvaluationJournal  # noqa: E402
from certevo.search.loop import Search  # noqa: E402
from certevo.search.observer import SearchObserver  # noqa: E402

from scaling_model import MEDIAN_SECONDS, SIGMA, cost_at, driver_cost, simulate  # noqa: E402  (beside this file)

MODES = ("generational", "asynchronous")


# -- the stub evaluator -------------------------------------------------------------------
def stub_duration(candidate_id: str, scale: float) -> float:
    """Seconds a stub spends on a candidate: log-normal (median 1 s, sigma 0.5) x scale."""
    z = np.random.default_rng(derive_seed(0, "stub-duration", candidate_id)).standard_normal()
    return scale * MEDIAN_SECONDS * math.exp(SIGMA * z)


def stub_record(task: EvaluationTask, extra: dict, timings: dict) -> FitnessRecord:
    """A made-up record, deterministic in the genome: certified accuracy falls smoothly with
    sparsity and with how unequal the layers' sparsities are, plus up to +-1.5 points from
    the id."""
    genome = task.genome
    layers = genome.layer_sparsity()
    spread = float(np.std(list(layers.values())))
    noise = int(genome.id[:8], 16) / 0xFFFFFFFF - 0.5
    certified = float(np.clip(0.92 - 0.55 * genome.sparsity ** 6 - 0.3 * spread + 0.03 * noise, 0.0, 1.0))
    epochs = task.epochs or 0
    return FitnessRecord(
        candidate_id=genome.id, sparsity=genome.sparsity, certified_accuracy=certified,
        clean_accuracy=min(1.0, certified + 0.05), pgd_accuracy=None, train_method="stub", certify_method="stub",
        eps=0.0, train_eps=0.0, epochs=epochs, samples=0, layer_sparsity=layers, timings=timings,
        kstarts={"magnitude": certified, "gradient": certified, "combined": certified}, extra=extra,
        total_epochs=task.prior_epochs + epochs, inherited_from=task.inherited_from)


class StubActorBase:
    """EvaluatorActor's methods; sleeps instead of training (see the module docstring).
    Shipped by value to the workers (defined in __main__), it imports only torch-free
    certevo modules; ``scale`` is set on a subclass made by :func:`stub_actor_class`."""

    scale = 1.0

    def __init__(self, spec, threads: int, device: str = "cpu", stack_size: int | None = None) -> None:
        self.name = f"stub-{os.getpid()}"

    def ready(self) -> str:
        return self.name

    def evaluate_batch(self, tasks: list[EvaluationTask]):
        begin = time.perf_counter()
        torch_loaded = "torch" in sys.modules  # the tasks are unpickled by now
        evaluations = []
        for task in tasks:
            seconds = stub_duration(task.genome.id, self.scale)
            start = time.time()
            if seconds > 0:
                time.sleep(seconds)
            end = time.time()
            extra = {"worker": self.name, "torch": torch_loaded}
            evaluations.append(Evaluation(stub_record(task, extra, {"stub_start": start, "stub_end": end})))
        return evaluations, self.name, time.perf_counter() - begin


def stub_actor_class(scale: float) -> type:
    """A stub actor class sleeping ``scale`` x the log-normal durations (a new class per
    scale, so Ray never reuses one exported with another scale)."""
    return type(f"StubActor_{str(scale).replace('.', '_')}", (StubActorBase,), {"scale": scale})


# -- one measured search --------------------------------------------------------------------
class Timeline(SearchObserver):
    """Wall-clock times of the results; at the end of the K-starts, waits until every actor
    is up and measures the workers (memory, Ray round trip) before the measured phase."""

    def __init__(self) -> None:
        self.results: list[tuple[float, float, float, str, bool]] = []  # arrival, start, end, worker, torch
        self.window_start: float | None = None
        self.workers: dict[str, float] = {}
        self.cpu_start = 0.0
        self.driver_cores = 0.0

    def on_generation(self, search, summary) -> None:
        if summary["generation"] != 0 or self.window_start is not None:
            return
        import ray

        actors = search.pool.actors
        names = ray.get([a.ready.remote() for a in actors])
        trips = []
        for _ in range(100):
            t = time.perf_counter()
            ray.get(actors[0].ready.remote())
            trips.append(time.perf_counter() - t)
        pids = [int(name.rsplit("-", 1)[1]) for name in names]
        pss = rss = 0
        for pid in pids:
            pss_kb, rss_kb = _memory_kb(pid)
            pss, rss = pss + pss_kb, rss + rss_kb
        # What the idle workers themselves burn (Ray's threads): on this machine it is taken from the driver.
        before, t = _cpu_seconds(pids), time.perf_counter()
        time.sleep(1.0)
        idle_cores = (_cpu_seconds(pids) - before) / (time.perf_counter() - t)
        self.workers = {"count": len(names), "pss_mb": pss / 1024, "rss_mb": rss / 1024,
                        "round_trip_ms": 1000 * float(np.median(trips)), "idle_worker_cores": idle_cores}
        self.window_start, self.cpu_start = time.time(), time.process_time()

    def on_end(self, search, summary) -> None:
        self.driver_cores = (time.process_time() - self.cpu_start) / (time.time() - self.window_start)

    def on_evaluation(self, search, result) -> None:
        record = result.evaluation.record
        self.results.append((time.time(), record.timings["stub_start"], record.timings["stub_end"],
                             record.extra["worker"], record.extra["torch"]))


def _cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system) the local processes ``pids`` have used so far."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of a local process in kB (0, 0 if it is not on this machine)."""
    values = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Pss", "Rss"):
                values[key] = int(rest.split()[0])
    except OSError:
        return 0, 0
    return values.get("Pss", 0), values.get("Rss", 0)


def run_search(mode: str, workers: int, scale: float, generations: int, root: Path,
               population: int | None = None) -> dict:
    """One real search with stub actors (the default population unless ``population``);
    its utilisation and results/s over the evolutionary phase."""
    config = load_config(None, [f"cluster.actors={workers}", f"search.generations={generations}",
                                *([f"search.mode={mode}"] if mode != "generational" else []),
                                *([f"search.population_size={population}"] if population else [])])
    timeline = Timeline()
    search = Search.create(config, root / f"{mode}-{workers}-{scale}-{time.time_ns()}", [timeline])
    search.actor_class = stub_actor_class(scale)
    search.run()
    parts = generation_work(search)
    start = timeline.window_start
    evo = [r for r in timeline.results if r[1] >= start]
    last_dispatch, end = max(r[1] for r in evo), max(r[0] for r in evo)
    steady = sum(max(0.0, min(e, last_dispatch) - s) for _, s, e, _, _ in evo)
    gaps, by_worker = [], {}
    for _, s, e, worker, _ in sorted(evo, key=lambda r: r[1]):
        if worker in by_worker:
            gaps.append(s - by_worker[worker])
        by_worker[worker] = e
    arrivals = sorted(r[0] for r in evo)
    return {
        "utilization": steady / (workers * (last_dispatch - start)),
        "utilization_whole": sum(e - s for _, s, e, _, _ in evo) / (workers * (end - start)),
        "results_per_s": len(evo) / (end - start), "evaluations": len(evo), "seconds": end - start,
        "gap_ms": 1000 * float(np.median(gaps)) if gaps else None,
        "workers_with_torch": len({w for *_, w, torch in timeline.results if torch}),
        "arrivals": arrivals, "archive_before": len(timeline.results) - len(evo), "generation_work": parts,
        "driver_cores": timeline.driver_cores,
        **timeline.workers,
    }


def generation_work(search: Search) -> dict[str, float]:
    """Seconds of the work that ends every generation (both modes), timed again on the
    finished search's state: its Pareto front and hypervolume (the history entry) and the
    checkpoint of the whole state, written to the search's own checkpoint."""
    state, seconds = search.state, {}
    for name, call in (("front", state.front), ("hypervolume", state.hypervolume)):
        t = time.perf_counter()
        call()
        seconds[name] = time.perf_counter() - t
    t = time.perf_counter()
    saved, arrays = state.to_checkpoint()
    saved["config"] = search.config.to_dict()
    search.store.save(saved, arrays, state.generation)
    seconds["checkpoint"] = time.perf_counter() - t
    return {"archive": len(state.archive), **seconds}


# -- earlier measurements: the pool and journal alone; the real evaluator ---------------------
def candidates(config, count: int):
    data = config.data.load()
    template = config.model.template(data.input_shape, data.num_classes)
    acts = ["relu"] * len(template.hidden_sizes())
    return [
        random_genome(template.layer_shapes(), acts, 0.9, np.random.default_rng(derive_seed(0, "scaling", i)))
        for i in range(count)
    ]


def throughput(config, genomes, actors: int) -> dict:
    pool = EvaluationPool(config.evaluation_spec(), actors)
    try:
        # Warm-up: one evaluation per actor (imports, first trace), outside the timing.
        list(pool.run([EvaluationTask(g) for g in genomes[:actors]]))
        spans: dict[str, list[float]] = {}
        busy: dict[str, float] = {}
        start = time.perf_counter()
        for result in pool.run([EvaluationTask(g) for g in genomes]):
            now = time.perf_counter()
            spans.setdefault(result.worker, [start, now])[1] = now
            busy[result.worker] = busy.get(result.worker, 0.0) + result.busy_seconds
        wall = time.perf_counter() - start
    finally:
        pool.shutdown()
    overheads = [1.0 - busy[w] / (spans[w][1] - spans[w][0]) for w in busy]
    return {"actors": actors, "seconds": wall, "evals_per_minute": 60.0 * len(genomes) / wall,
            "overhead": float(np.mean(overheads)), "mean_eval_seconds": sum(busy.values()) / len(genomes)}


def absorption(config, genome, tasks: int) -> dict:
    """Results/s the pool and the fsync'd journal alone take in (2 stubs that return at once)."""
    pool = EvaluationPool(config.evaluation_spec(), 2, actor_class=stub_actor_class(0.0))
    with tempfile.TemporaryDirectory() as tmp:
        journal = EvaluationJournal(Path(tmp))
        try:
            list(pool.run([EvaluationTask(genome) for _ in range(4)]))
            # One task object each: the pool takes a batch's tasks out of its queue by identity.
            start = time.perf_counter()
            count = 0
            for result in pool.run([EvaluationTask(genome) for _ in range(tasks)]):
                journal.append(result.evaluation.record)
                count += 1
            wall = time.perf_counter() - start
        finally:
            pool.shutdown()
    assert count == tasks, f"{count} results for {tasks} tasks"
    return {"results_per_second": tasks / wall, "seconds": wall, "tasks": tasks}


def speedup(config, candidates_count: int, rounds: int) -> dict:
    """The real evaluator on 1 and 2 actors, order alternating (this VM's speed drifts)."""
    genomes = candidates(config, candidates_count)
    pairs = []
    for r in range(rounds):
        order = (1, 2) if r % 2 == 0 else (2, 1)
        measured = {n: throughput(config, genomes, n) for n in order}
        pairs.append((measured[1], measured[2]))
        print(f"round {r + 1}: 1 actor {measured[1]['evals_per_minute']:.2f}/min, 2 actors "
              f"{measured[2]['evals_per_minute']:.2f}/min")
    ratios = [two["evals_per_minute"] / one["evals_per_minute"] for one, two in pairs]
    one = {k: float(np.mean([p[0][k] for p in pairs])) for k in ("evals_per_minute", "overhead", "mean_eval_seconds")}
    two = {k: float(np.mean([p[1][k] for p in pairs])) for k in ("evals_per_minute", "overhead", "mean_eval_seconds")}
    print(f"real evaluator: 1 actor {one['evals_per_minute']:.2f}/min (overhead {one['overhead']:.2%}), 2 actors "
          f"{two['evals_per_minute']:.2f}/min (overhead {two['overhead']:.2%}), speed-up {np.median(ratios):.2f}x")
    return {"evals_per_minute_1": one["evals_per_minute"], "evals_per_minute_2": two["evals_per_minute"],
            "overhead_1": one["overhead"], "overhead_2": two["overhead"], "mean_eval_seconds": one["mean_eval_seconds"],
            "candidates": candidates_count, "round_ratios": ratios, "speedup_ratio": float(np.median(ratios))}


# -- main -----------------------------------------------------------------------------------
def summarise(mode: str, runs: list[dict] | None, cap: dict | None, cost: tuple | None, args) -> dict:
    """Print one mode's measured figures (median and spread over the repeats); its JSON keys."""
    key, w = _key(mode), args.workers
    if runs is None:
        print(f"{mode:>12}: not available (search.mode is not in this certevo)")
        return {f"utilization_{key}_{w}": None}
    util, util_lo, util_hi = _median_spread([x["utilization"] for x in runs])
    whole = _median_spread([x["utilization_whole"] for x in runs])
    rate = _median_spread([x["results_per_s"] for x in runs])
    print(f"{mode:>12} at {w} workers: utilisation {util:.1%} (min {util_lo:.1%}, max {util_hi:.1%}; whole phase "
          f"{whole[0]:.1%}), {rate[0]:.1f} results/s (min {rate[1]:.1f}, max {rate[2]:.1f}); driver capacity "
          f"{cap['results_per_s']:.0f} results/s ({args.capacity_workers} stubs returning at once); its time per 12 "
          "results at archive sizes 100 / 1,000 / 10,000: "
          + " / ".join(f"{1000 * cost_at(cost, a):.0f}" for a in (100, 1000, 10000))
          + f" ms (measured up to {cap['archive_before'] + cap['evaluations']}, beyond: extrapolated)")
    gaps = [x["gap_ms"] for x in runs if x["gap_ms"] is not None]
    return {f"utilization_{key}_{w}": util, f"utilization_{key}_{w}_min": util_lo,
            f"utilization_{key}_{w}_max": util_hi,
            f"utilization_{key}_{w}_whole": whole[0], f"results_per_s_{key}_{w}": rate[0],
            f"driver_results_per_s_{key}": cap["results_per_s"], f"driver_cost_{key}": cost,
            f"driver_cores_{key}_{w}": float(np.median([x["driver_cores"] for x in runs])),
            f"worker_gap_ms_{key}": float(np.median(gaps)) if gaps else None}


def simulate_all(mode: str, cost: tuple, round_trip: float, out: dict, args) -> dict:
    """Print the simulation at the measured worker count (beside the measurement) and at
    each ``--simulate`` count; its JSON keys."""
    key, w, population = _key(mode), args.workers, 12
    check = simulate(mode, w, args.time_scale, _generations(mode, args) * population, cost, round_trip, 12)
    print(f"simulated {mode} at {w} workers, time scale {args.time_scale:g}: {check:.1%} "
          f"(measured {out[f'utilization_{key}_{w}']:.1%})")
    keys = {f"utilization_{key}_{w}_simulated": check}
    for count in args.simulate:
        evaluations = args.generations * population
        if mode == "asynchronous":
            evaluations = max(args.async_rounds * count, evaluations)
        value = simulate(mode, count, 1.0, evaluations, cost, round_trip, 12)
        flat = simulate(mode, count, 1.0, evaluations, cost, round_trip, 12, grows=False)
        keys[f"utilization_{key}_{count}_simulated"] = value
        keys[f"utilization_{key}_{count}_simulated_flat_driver"] = flat
        print(f"SIMULATED {mode} at {count} workers (median 1 s, {evaluations} evaluations): {value:.1%} "
              f"({flat:.1%} if the driver's work per generation stayed at its K-starts size)")
    return keys


def _generations(mode: str, args) -> int:
    """Generations (of 12) of a measured search: asynchronous ones run --async-rounds x workers."""
    rounds = math.ceil(args.async_rounds * args.workers / 12) if mode == "asynchronous" else 0
    return max(args.generations, rounds)


def _key(mode: str) -> str:
    return "async" if mode == "asynchronous" else mode


def _median_spread(values: list[float]) -> tuple[float, float, float]:
    return float(np.median(values)), float(min(values)), float(max(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=64, help="stub evaluator actors of the measured searches")
    parser.add_argument("--repeats", type=int, default=3, help="measured searches per mode (median and spread)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="stub durations x this (median 1 s at 1)")
    parser.add_argument("--generations", type=int, default=8, help="generations of the generational search")
    parser.add_argument("--async-rounds", type=int, default=10,
                        help="asynchronous search: rounds x workers children (at least --generations generations)")
    parser.add_argument("--capacity-workers", type=int, default=16, help="stubs that return at once (driver capacity)")
    parser.add_argument("--capacity-generations", type=int, default=60, help="generations of the capacity searches")
    parser.add_argument("--simulate", type=int, nargs="*", default=[1000], help="worker counts to simulate")
    parser.add_argument("--stub-tasks", type=int, default=2000, help="pool + journal alone (0: skip)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the generational searches whose population is one child per worker")
    parser.add_argument("--rounds", type=int, default=0,
                        help="real evaluator 1-/2-actor rounds (minutes each; 0: skip)")
    parser.add_argument("--candidates", type=int, default=12, help="evaluations per real-evaluator measurement")
    args = parser.parse_args()

    modes = [m for m in MODES if m == "generational" or "mode" in {f.name for f in dataclasses.fields(SearchSettings)}]
    connect(num_cpus=max(args.workers, args.capacity_workers, 2))
    out: dict = {"workers": args.workers, "time_scale": args.time_scale, "repeats": args.repeats}
    population = load_config().search.population_size
    with tempfile.TemporaryDirectory(prefix="certevo-scaling-") as tmp:
        root = Path(tmp)
        capacity = {m: run_search(m, args.capacity_workers, 0.0, args.capacity_generations, root) for m in modes}
        measured: dict[str, list[dict]] = {m: [] for m in modes}
        baseline: list[dict] = []
        # The strongest generational setting: a population of one child per worker, as many
        # evaluations as the asynchronous runs.
        wide = math.ceil(_generations("asynchronous", args) * population / args.workers)
        for r in range(args.repeats):
            for mode in modes if r % 2 == 0 else modes[::-1]:
                run = run_search(mode, args.workers, args.time_scale, _generations(mode, args), root)
                measured[mode].append(run)
                print(f"repeat {r + 1} {mode:>12}: utilisation {run['utilization']:6.1%} (whole "
                      f"{run['utilization_whole']:6.1%}), {run['results_per_s']:6.1f} results/s, "
                      f"{run['evaluations']} evaluations in {run['seconds']:.1f}s, "
                      f"driver process busy {run['driver_cores']:.0%} of a core"
                      + (f", median worker gap {run['gap_ms']:.1f} ms" if mode == "asynchronous" else ""), flush=True)
            if args.baseline:
                run = run_search("generational", args.workers, args.time_scale, wide, root, population=args.workers)
                baseline.append(run)
                print(f"repeat {r + 1} generational, population {args.workers}: utilisation "
                      f"{run['utilization']:6.1%} (whole {run['utilization_whole']:6.1%}), {run['results_per_s']:6.1f} "
                      f"results/s, {run['evaluations']} evaluations in {run['seconds']:.1f}s", flush=True)

    w = args.workers
    first = measured["generational"][0]
    print(f"\n{first['count']} stub workers: PSS {first['pss_mb']:.0f} MB in all "
          f"({first['pss_mb'] / first['count']:.0f} MB each; RSS {first['rss_mb'] / first['count']:.0f} MB each); "
          "workers that imported torch: "
          f"{max(run['workers_with_torch'] for runs in measured.values() for run in runs)}; "
          f"Ray round trip (no-op method, idle actor) {first['round_trip_ms']:.2f} ms; the idle workers use "
          f"{first['idle_worker_cores']:.2f} of this machine's {os.cpu_count()} cores")
    out.update({"worker_pss_mb": first["pss_mb"], "worker_rss_mb": first["rss_mb"],
                "ray_round_trip_ms": first["round_trip_ms"], "idle_worker_cores": first["idle_worker_cores"],
                "workers_with_torch": max(run["workers_with_torch"] for runs in measured.values() for run in runs)})
    costs = {mode: driver_cost(capacity[mode], population) for mode in modes}
    for mode in MODES:
        out.update(summarise(mode, measured.get(mode), capacity.get(mode), costs.get(mode), args))
    out["driver_results_per_s"] = out.get("driver_results_per_s_async", out["driver_results_per_s_generational"])
    if baseline:
        util, low, high = _median_spread([x["utilization"] for x in baseline])
        whole = _median_spread([x["utilization_whole"] for x in baseline])[0]
        print(f"generational with population {w} (one child per worker, {wide} generations): utilisation {util:.1%} "
              f"(min {low:.1%}, max {high:.1%}; whole phase {whole:.1%}): every generation waits for its slowest child")
        out.update({f"utilization_generational_population{w}_{w}": util,
                    f"utilization_generational_population{w}_{w}_min": low,
                    f"utilization_generational_population{w}_{w}_max": high,
                    f"utilization_generational_population{w}_{w}_whole": whole})
    parts = capacity[modes[-1]]["generation_work"]
    print(f"work ending every generation, at an archive of {parts['archive']}: Pareto front "
          f"{1000 * parts['front']:.0f} ms, hypervolume {1000 * parts['hypervolume']:.0f} ms, "
          f"checkpoint {1000 * parts['checkpoint']:.0f} ms")
    out["generation_work_seconds"] = parts
    if "asynchronous" in modes:  # the headline: how much busier asynchronous keeps the workers
        out["ratio"] = out[f"utilization_async_{w}"] / out[f"utilization_generational_{w}"]
        print(f"target (issue 13): asynchronous >= 90% at 64 workers; here, at {w} workers: asynchronous "
              f"{out['utilization_async_' + str(w)]:.1%}, generational {out['utilization_generational_' + str(w)]:.1%}")
    out["simulation_method"] = ("simulated: discrete-event model, log-normal durations (median 1 s, sigma 0.5), driver "
                                "time per generation fitted on the capacity runs, extrapolated in archive size")
    for mode in modes:
        out.update(simulate_all(mode, costs[mode], first["round_trip_ms"] / 1000, out, args))

    if args.stub_tasks > 0:
        config = load_config()
        absorbed = absorption(config, candidates(config, 1)[0], args.stub_tasks)
        print(f"pool + journal alone (no search): {absorbed['results_per_second']:.0f} results/s")
        out["driver_results_per_second"] = absorbed["results_per_second"]
    if args.rounds > 0:
        out.update(speedup(load_config(), args.candidates, args.rounds))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
