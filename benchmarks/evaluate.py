"""Evaluations per minute of the default candidate: certevo's evaluator vs a naive loop.

Both run the same candidates (digits, MLP 64-256-256-10, random masks at 90 % sparsity,
IBP short training, CROWN certification) pinned to ONE core, side by side in one run:

* certevo: one CandidateEvaluator, torch pinned to 1 thread, traced bounded modules and
  the loaded data reused across candidates;
* naive: for every candidate the data is loaded again, auto_LiRPA traces the model
  again, CROWN bounds every sample (no cheap IBP pass first), torch's default threading.

Each side runs in its own subprocess (so thread settings cannot leak between them). The
last line printed is one JSON object with every figure; ``ratio`` is certevo / naive.

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
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import torch

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
    if mode == "certevo":
        evaluator = CandidateEvaluator(data, template, training, certification, seed=seed, num_threads=1)
        for genome in genomes:
            records.append(evaluator.evaluate(genome).record)
    else:
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
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=("certevo", "naive"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.candidates, args.epochs, args.seed)))
        return

    results = {}
    for mode in ("naive", "certevo"):
        print(f"running {mode} ({args.candidates} candidates)...", file=sys.stderr, flush=True)
        out = subprocess.run(
            [sys.executable, __file__, "--worker", mode, "--candidates", str(args.candidates),
             "--epochs", str(args.epochs), "--seed", str(args.seed)],
            check=True, capture_output=True, text=True, cwd=ROOT,
        )
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    ours, naive = results["certevo"], results["naive"]
    ratio = ours["evals_per_minute"] / naive["evals_per_minute"]
    print(f"naive loop : {naive['evals_per_minute']:6.2f} evaluations/min "
          f"({naive['threads']} torch threads on 1 core, {naive['trace_seconds']:.2f}s tracing)")
    print(f"certevo    : {ours['evals_per_minute']:6.2f} evaluations/min "
          f"({ours['threads']} torch thread on 1 core, {ours['trace_seconds']:.2f}s tracing)")
    print(f"ratio      : {ratio:.2f}x (target >= 1.5x)")
    print(json.dumps({
        "certevo_evals_per_minute": ours["evals_per_minute"],
        "naive_evals_per_minute": naive["evals_per_minute"],
        "certevo_seconds": ours["seconds"],
        "naive_seconds": naive["seconds"],
        "certevo_threads": ours["threads"],
        "naive_threads": naive["threads"],
        "candidates": args.candidates,
        "epochs": args.epochs,
        "certevo_mean_certified_accuracy": ours["mean_certified_accuracy"],
        "naive_mean_certified_accuracy": naive["mean_certified_accuracy"],
        "ratio": ratio,
    }))


if __name__ == "__main__":
    main()
