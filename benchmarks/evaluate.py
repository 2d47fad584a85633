"""Evaluations per minute of the default candidate: certevo's evaluator vs a naive loop.

Both run the same candidates (digits, the default MLP 64-64-64-10, random masks at 90 %
sparsity, IBP short training, CROWN certification) on ONE core, side by side in one run:

* certevo: one CandidateEvaluator, torch pinned to 1 thread, traced bounded modules and
  the loaded data reused across candidates;
* naive: for every candidate the data is loaded again, auto_LiRPA traces the model
  again, CROWN bounds every sample (no cheap IBP pass first), and torch keeps its default
  thread count (one per core of the machine) although the process has one core.

A third run, the naive loop with torch pinned to one thread, separates what thread pinning
buys (an oversubscribed OpenMP pool spin-waits on a single core) from what reuse buys.
Each runs in its own subprocess, so thread settings cannot leak between them. The last
line printed is one JSON object with every figure; ``ratio`` is certevo / naive (the
issue's baseline) and ``ratio_vs_naive_1thread`` certevo / naive with one thread.

    python benchmarks/evaluate.py [--candidates 4] [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("naive", "naive-1thread", "certevo")


def _candidates(count: int, template, seed: int):
    import numpy as np

    from population.genome import random_genome
    from population.seeds import derive_seed

    activations = ["relu"] * len(template.hidden_sizes())
    return [
        random_genome(template.layer_shapes(), activations, 0.9, np.random.default_rng(derive_seed(seed, "bench", i)))
        for i in range(count)
    ]


def _worker(mode: str, count: int, epochs: int, seed: int) -> dict:
    # torch picks its default thread count (the machine's cores) when it is imported; the
    # process is then given ONE core, as a Ray actor with num_cpus=1 or a CPU-limited
    # container is. certevo pins torch to the cores it reserved; the naive loop does not.
    import torch

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    from evaluators.data import load_dataset
    from evaluators.evaluator import CandidateEvaluator
    from evaluators.models import make_template
    from evaluators.settings import CertificationSettings, TrainingSettings

    training = TrainingSettings(method="ibp", epochs=epochs, eps=0.1)
    certification = CertificationSettings(method="crown", eps=0.1)
    data = load_dataset("digits", seed=seed)
    template = make_template("mlp", data.input_shape, data.num_classes)
    genomes = _candidates(count, template, seed)
    # Warm-up outside the timed loop: first import of auto_LiRPA and torch's lazy init.
    CandidateEvaluator(data, template, TrainingSettings(method="ibp", epochs=1), certification, seed=seed).evaluate(genomes[0])

    records = []
    start = time.perf_counter()
    if mode == "naive-1thread":
        torch.set_num_threads(1)
    if mode == "certevo":
        evaluator = CandidateEvaluator(data, template, training, certification, seed=seed, num_threads=1)
        for genome in genomes:
            records.append(evaluator.evaluate(genome).record)
    else:  # both naive variants
        for genome in genomes:
            fresh = load_dataset("digits", seed=seed)
            plain = CertificationSettings(method="crown", eps=0.1, ibp_first=False)
            evaluator = CandidateEvaluator(fresh, template, training, plain, seed=seed, reuse_traced=False)
            records.append(evaluator.evaluate(genome).record)
    elapsed = time.perf_counter() - start
    failures = [r.failure for r in records if not r.ok]
    if failures:
        raise SystemExit(f"{mode}: evaluations failed: {failures}")
    return {
        "mode": mode,
        "threads": torch.get_num_threads(),
        "seconds": elapsed,
        "evaluations": len(records),
        "evals_per_minute": 60.0 * len(records) / elapsed,
        "mean_certified_accuracy": sum(r.certified_accuracy for r in records) / len(records),
        "trace_seconds": sum(r.timings["trace"] for r in records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--naive-candidates", type=int, default=1,
                        help="candidates for the default-threading naive loop (it is very slow)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.candidates, args.epochs, args.seed)))
        return

    results = {}
    for mode in MODES:
        count = args.naive_candidates if mode == "naive" else args.candidates
        print(f"running {mode} ({count} candidates)...", file=sys.stderr, flush=True)
        out = subprocess.run(
            [sys.executable, __file__, "--worker", mode, "--candidates", str(count),
             "--epochs", str(args.epochs), "--seed", str(args.seed)],
            check=True, capture_output=True, text=True, cwd=ROOT,
        )
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    ours, naive, naive1 = results["certevo"], results["naive"], results["naive-1thread"]
    ratio = ours["evals_per_minute"] / naive["evals_per_minute"]
    ratio_one_thread = ours["evals_per_minute"] / naive1["evals_per_minute"]
    for label, res in (("naive loop", naive), ("naive, 1 thread", naive1), ("certevo", ours)):
        print(f"{label:16s}: {res['evals_per_minute']:7.2f} evaluations/min ({res['evaluations']} candidates, "
              f"{res['threads']} torch thread(s) on 1 core, {res['trace_seconds']:.2f}s tracing)")
    print(f"ratio vs the naive loop          : {ratio:.2f}x (target >= 1.5x)")
    print(f"ratio vs the naive loop, 1 thread: {ratio_one_thread:.2f}x (reuse and IBP-first alone)")
    print(json.dumps({
        "certevo_evals_per_minute": ours["evals_per_minute"],
        "naive_evals_per_minute": naive["evals_per_minute"],
        "naive_1thread_evals_per_minute": naive1["evals_per_minute"],
        "certevo_threads": ours["threads"],
        "naive_threads": naive["threads"],
        "candidates": args.candidates,
        "naive_candidates": args.naive_candidates,
        "epochs": args.epochs,
        "certevo_mean_certified_accuracy": ours["mean_certified_accuracy"],
        "naive_1thread_mean_certified_accuracy": naive1["mean_certified_accuracy"],
        "ratio_vs_naive_1thread": ratio_one_thread,
        "ratio": ratio,
    }))


if __name__ == "__main__":
    main()
