"""Scaling on this machine: evaluations per minute with 1 and 2 evaluator actors, the
orchestration overhead, and how many finished evaluations per second the driver absorbs.

* Throughput: the same default candidates (digits, MLP 64-64, IBP short training of the
  search default, CROWN) on an EvaluationPool of 1 actor, then of 2 actors; ``ratio`` is
  the 2-actor speed-up.
* Overhead: per actor, the share of its wall time (first dispatch to last result) not
  spent inside ``evaluate``.
* Driver absorption: 2 stub actors whose evaluations return at once; the driver's work per
  result (pool bookkeeping + the fsync'd journal append the search does) bounds how many
  results per second it can take in. At the default evaluation time T seconds, that many
  results per second sustain ``rate * T`` busy workers.

Throughput is measured in rounds of (1 actor, 2 actors), the order alternating, and the
speed-up is the median over rounds: this VM's per-core speed drifts by tens of percent
over minutes, which a single 1-then-2 measurement mistakes for scaling.

    python benchmarks/scaling.py [--candidates 12] [--rounds 3] [--stub-tasks 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from certevo.cluster.connect import connect  # noqa: E402
from certevo.cluster.pool import EvaluationPool, EvaluationTask  # noqa: E402
from certevo.evaluators.evaluator import Evaluation  # noqa: E402
from certevo.evaluators.fitness import FitnessRecord  # noqa: E402
from certevo.population.genome import random_genome  # noqa: E402
from certevo.population.seeds import derive_seed  # noqa: E402
from certevo.search.config import load_config  # noqa: E402
from certevo.search.journal import EvaluationJournal  # noqa: E402


class StubActor:
    """Same interface as EvaluatorActor; every evaluation returns immediately."""

    def __init__(self, spec, threads: int, device: str = "cpu", stack_size: int | None = None) -> None:
        self.name = "stub"

    def ready(self) -> str:
        return self.name

    def evaluate_batch(self, tasks: list[EvaluationTask]):
        return [Evaluation(FitnessRecord.failed(task.genome, "stub")) for task in tasks], self.name, 0.0


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
    pool = EvaluationPool(config.evaluation_spec(), 2, actor_class=StubActor)
    with tempfile.TemporaryDirectory() as tmp:
        journal = EvaluationJournal(Path(tmp))
        try:
            list(pool.run([EvaluationTask(genome)] * 4))
            start = time.perf_counter()
            for result in pool.run([EvaluationTask(genome)] * tasks):
                journal.append(result.evaluation.record)
            wall = time.perf_counter() - start
        finally:
            pool.shutdown()
    return {"results_per_second": tasks / wall, "seconds": wall, "tasks": tasks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=12, help="evaluations per measurement")
    parser.add_argument("--rounds", type=int, default=3,
                        help="1-actor/2-actor pairs, order alternating (this VM's speed drifts over minutes)")
    parser.add_argument("--stub-tasks", type=int, default=2000)
    args = parser.parse_args()
    connect(num_cpus=2)
    config = load_config()
    genomes = candidates(config, args.candidates + 2)
    pairs = []
    for r in range(args.rounds):
        order = (1, 2) if r % 2 == 0 else (2, 1)
        measured = {n: throughput(config, genomes[: args.candidates], n) for n in order}
        pairs.append((measured[1], measured[2]))
        print(f"round {r + 1}: 1 actor {measured[1]['evals_per_minute']:.2f}/min, 2 actors "
              f"{measured[2]['evals_per_minute']:.2f}/min, speed-up {measured[2]['evals_per_minute'] / measured[1]['evals_per_minute']:.2f}x")
    ratios = [two["evals_per_minute"] / one["evals_per_minute"] for one, two in pairs]
    ratio = float(np.median(ratios))
    one = {k: float(np.mean([p[0][k] for p in pairs])) for k in ("evals_per_minute", "overhead", "mean_eval_seconds")}
    two = {k: float(np.mean([p[1][k] for p in pairs])) for k in ("evals_per_minute", "overhead", "mean_eval_seconds")}
    absorbed = absorption(config, genomes[0], args.stub_tasks)
    eval_seconds = one["mean_eval_seconds"]
    sustained = absorbed["results_per_second"] * eval_seconds
    print(f"1 actor : {one['evals_per_minute']:6.2f} evaluations/min, overhead {one['overhead']:.2%}")
    print(f"2 actors: {two['evals_per_minute']:6.2f} evaluations/min, overhead {two['overhead']:.2%}")
    print(f"speed-up: {ratio:.2f}x, median of {len(ratios)} rounds (target >= 1.8x); overhead target <= 3%")
    print(f"driver absorbs {absorbed['results_per_second']:.0f} finished evaluations/s (stub evaluations, "
          f"journal fsync included); at the default evaluation time of {eval_seconds:.2f}s that keeps "
          f"~{sustained:.0f} workers busy")
    print(json.dumps({
        "evals_per_minute_1": one["evals_per_minute"], "evals_per_minute_2": two["evals_per_minute"],
        "overhead_1": one["overhead"], "overhead_2": two["overhead"],
        "mean_eval_seconds": eval_seconds, "driver_results_per_second": absorbed["results_per_second"],
        "workers_sustained": sustained, "candidates": args.candidates, "round_ratios": ratios, "ratio": ratio,
    }))


if __name__ == "__main__":
    main()
