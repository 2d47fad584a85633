"""Evaluations per minute on ONE core: the batched path, today's one-at-a-time evaluator and
the naive loop pinned to one thread, side by side in one run.

Every mode evaluates the same candidates with the search's default settings (IBP short
training of 10 epochs at eps 0.1, CROWN certification after an IBP pass), each in its own
subprocess pinned to one core with torch on one thread:

* batched: ``CandidateEvaluator.evaluate_batch`` (stacked training of up to the device's
  default stack size, then auto_LiRPA certification per candidate), as an actor runs it;
* one-at-a-time: ``CandidateEvaluator.evaluate``, one candidate per call (the same code
  with a stack of one: what ``certevo evaluate`` runs); its certified accuracies must equal
  the batched ones exactly;
* legacy: the one-at-a-time evaluator as it was before batching (``stacked=False``:
  auto_LiRPA computes the IBP bounds inside the training too), traced modules and the data
  reused across candidates;
* naive, pinned: for every candidate the data is loaded again, auto_LiRPA traces the model
  again and CROWN bounds every sample (no IBP pass first), training as in legacy; torch on
  one thread, so the baseline is not crippled by thread oversubscription.

Cases: digits (MLP 64-64, the default search), MNIST (../shared/data/mnist-t10k, subset
5000, MLP 64-64) and the CNN template on MNIST (subset 2000; batched and one at a time,
with where the time goes). Candidates are random ERK masks at the default target
sparsities (0.5 to 0.98) with relu. Modes run ``--repeats`` times in alternating order;
medians are reported with their spread. FLOPs are counted densely (a masked weight still
costs its multiply): training (natural forward + IBP centre and radius, backward twice the
forward), the IBP certification pass and the gradient pass; CROWN is not counted, so the
achieved GFLOP/s are a lower bound. The machine's limit is a 1024x1024 fp32 matmul on the
same core.

    python benchmarks/evaluate.py [--candidates 32] [--repeats 3] [--device cpu|cuda]

The last line is one JSON object: ``batched_evals_per_minute`` and
``pinned_naive_evals_per_minute`` (digits) and ``ratio`` = the first over the second
(target >= 6), ``mnist_ratio`` (target >= 3), every other figure (``mnist_`` and
``mnist_cnn_`` prefixes), and whether the batched path's certified accuracies equal the
one-at-a-time path's on the same candidates (``certified_equal``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist-t10k"
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
CASES = {
    "digits": {"data": {"name": "digits"}, "model": "mlp",
               "modes": ("batched", "one-at-a-time", "legacy", "naive-pinned")},
    "mnist": {"data": {"name": "mnist", "path": str(MNIST_DIR), "subset": 5000}, "model": "mlp",
              "modes": ("batched", "one-at-a-time", "legacy", "naive-pinned")},
    "mnist-cnn": {"data": {"name": "mnist", "path": str(MNIST_DIR), "subset": 2000}, "model": "cnn",
                  "modes": ("batched", "one-at-a-time", "legacy")},
}


def _setup(case: str):
    from certevo.evaluators.data import load_dataset
    from certevo.evaluators.models import make_template
    from certevo.evaluators.settings import CertificationSettings, TrainingSettings

    spec = CASES[case]
    data = load_dataset(**spec["data"], seed=0)
    template = make_template(spec["model"], data.input_shape, data.num_classes)
    return data, template, TrainingSettings(method="ibp", epochs=10, eps=0.1), CertificationSettings(method="crown", eps=0.1)


def _candidates(template, count: int):
    import numpy as np

    from certevo.population.genome import random_genome
    from certevo.population.seeds import derive_seed

    acts = ["relu"] * len(template.hidden_sizes())
    out = []
    for i in range(count):
        sparsity = SPARSITIES[i % len(SPARSITIES)]
        rng = np.random.default_rng(derive_seed(0, "bench-evaluate", i))
        out.append(random_genome(template.layer_shapes(), acts, sparsity, rng, allocation="erk"))
    return out


def dense_flops(template, data, training, certification_samples: int) -> float:
    """FLOPs of one evaluation counted densely (see the module docstring)."""
    import math

    macs = 0
    shape = data.input_shape
    for name, weight in template.layer_shapes().items():
        if name.startswith("conv"):
            h, w = shape[1] // 2, shape[2] // 2
            macs += weight[0] * weight[1] * weight[2] * weight[3] * h * w
            shape = (weight[0], h, w)
        else:
            macs += weight[0] * weight[1]
    per_sample_step = 2 * macs * 3 * 3  # natural + IBP centre + radius; backward = 2x forward
    batches = math.ceil(len(data.train) / training.batch_size)
    train = per_sample_step * batches * training.batch_size * training.epochs
    certify = 2 * macs * 3 * certification_samples
    gradients = per_sample_step * min(512, len(data.train))
    return float(train + certify + gradients)


def machine_gflops() -> float:
    """fp32 matmul GFLOP/s of this core (1024x1024, best of 5)."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        best = min(best, (time.perf_counter() - start) / 5)
    return 2 * 1024**3 / best / 1e9


def _worker(case: str, mode: str, count: int, device: str) -> dict:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import torch

    torch.set_num_threads(1)
    from certevo.evaluators.certification import certify  # noqa: F401  (imports auto_LiRPA before timing)
    from certevo.evaluators.evaluator import CandidateEvaluator, EvaluationRequest
    from certevo.evaluators.settings import CertificationSettings

    data, template, training, certification = _setup(case)
    genomes = _candidates(template, count)
    requests = [EvaluationRequest(g, keep_weights=True) for g in genomes]
    # Warm-up outside the timing: first import of auto_LiRPA, torch's lazy init, one trace.
    CandidateEvaluator(data, template, training, certification, device=device).evaluate(genomes[0])

    start = time.perf_counter()
    if mode == "batched":
        evaluations = CandidateEvaluator(data, template, training, certification, device=device).evaluate_batch(requests)
    elif mode == "one-at-a-time":
        evaluator = CandidateEvaluator(data, template, training, certification, device=device)
        evaluations = [evaluator.evaluate(r.genome, keep_weights=True) for r in requests]
    elif mode == "legacy":
        evaluator = CandidateEvaluator(data, template, training, certification, device=device, stacked=False)
        evaluations = [evaluator.evaluate_batch([r])[0] for r in requests]
    else:
        plain = CertificationSettings(method="crown", eps=certification.eps, ibp_first=False)
        evaluations = []
        for request in requests:
            fresh, template, _, _ = _setup(case)
            evaluator = CandidateEvaluator(fresh, template, training, plain, reuse_traced=False, stacked=False)
            evaluations.append(evaluator.evaluate_batch([request])[0])
    elapsed = time.perf_counter() - start
    records = [e.record for e in evaluations]
    failures = [r.failure for r in records if not r.ok]
    if failures:
        raise SystemExit(f"{case}/{mode}: evaluations failed: {failures[:2]}")
    phases = {k: sum(r.timings.get(k, 0.0) for r in records) / elapsed for k in ("build", "trace", "train", "certify", "gradients")}
    return {
        "seconds": elapsed,
        "evaluations": len(records),
        "evals_per_minute": 60.0 * len(records) / elapsed,
        "certified": [r.certified_accuracy for r in records],
        "time_shares": phases,
        "flops": dense_flops(template, data, training, len(data.val)),
        "machine_gflops": machine_gflops() if mode == "batched" else None,
    }


def _run(case: str, mode: str, count: int, device: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", case, mode, "--candidates", str(count), "--device", device],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=32, help="candidates per mode and case")
    parser.add_argument("--naive-candidates", type=int, default=8, help="candidates for the (slow) naive loop")
    parser.add_argument("--mnist-candidates", type=int, default=16)
    parser.add_argument("--cnn-candidates", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(*args.worker, args.candidates, args.device)))
        return

    figures: dict[str, object] = {"device": args.device, "repeats": args.repeats}
    for case in args.cases.split(","):
        if case.startswith("mnist") and not MNIST_DIR.is_dir():
            print(f"skipping {case}: {MNIST_DIR} not found", file=sys.stderr)
            continue
        modes = CASES[case]["modes"]
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for repeat in range(args.repeats):
            order = modes if repeat % 2 == 0 else tuple(reversed(modes))
            for mode in order:
                count = {"mnist-cnn": args.cnn_candidates, "mnist": args.mnist_candidates}.get(case, args.candidates)
                if mode == "naive-pinned":
                    count = min(count, args.naive_candidates)
                print(f"[{case}] repeat {repeat + 1}/{args.repeats}: {mode} ({count} candidates)...", file=sys.stderr, flush=True)
                runs[mode].append(_run(case, mode, count, args.device))
        print(f"\n{case}: evaluations/min on one core (median of {args.repeats}, min-max)")
        rates = {}
        for mode in modes:
            values = [r["evals_per_minute"] for r in runs[mode]]
            rates[mode] = statistics.median(values)
            flops = runs[mode][0]["flops"]
            gflops = rates[mode] / 60 * flops / 1e9
            shares = runs[mode][0]["time_shares"]
            where = ", ".join(f"{k} {v:.0%}" for k, v in shares.items() if v >= 0.005)
            print(f"  {mode:14s} {rates[mode]:7.1f}  ({min(values):.1f}-{max(values):.1f})  "
                  f"{gflops:5.2f} GFLOP/s achieved; time: {where}")
            key = {"batched": "batched", "one-at-a-time": "one_at_a_time", "legacy": "legacy",
                   "naive-pinned": "pinned_naive"}[mode]
            prefix = "" if case == "digits" else case.replace("-", "_") + "_"
            figures[f"{prefix}{key}_evals_per_minute"] = rates[mode]
            figures[f"{prefix}{key}_gflops"] = gflops
            figures[f"{prefix}{key}_time_shares"] = shares
        prefix = "" if case == "digits" else case.replace("-", "_") + "_"
        limit = statistics.median(r["machine_gflops"] for r in runs["batched"])
        flops = runs["batched"][0]["flops"]
        figures[f"{prefix}flops_per_evaluation"] = flops
        figures[f"{prefix}machine_gflops"] = limit
        print(f"  estimated {flops / 1e9:.2f} GFLOP per evaluation; this core's fp32 matmul limit {limit:.0f} GFLOP/s")
        batched = runs["batched"][0]["certified"]
        single = runs["one-at-a-time"][0]["certified"]
        legacy = runs["legacy"][0]["certified"]
        figures[f"{prefix}certified_equal"] = batched == single
        figures[f"{prefix}max_certified_difference"] = max(abs(a - b) for a, b in zip(batched, single))
        figures[f"{prefix}legacy_max_certified_difference"] = max(abs(a - b) for a, b in zip(batched, legacy))
        figures[f"{prefix}mean_certified"] = statistics.mean(batched)
        figures[f"{prefix}legacy_mean_certified"] = statistics.mean(legacy)
        print(f"  certified accuracy on the same {len(batched)} candidates: batched "
              f"{'equal to' if batched == single else 'DIFFERENT from'} one at a time; vs legacy training "
              f"max difference {figures[f'{prefix}legacy_max_certified_difference']:.4f} "
              f"(means {statistics.mean(batched):.4f} / {statistics.mean(legacy):.4f})")
        figures[f"{prefix}ratio_vs_one_at_a_time"] = rates["batched"] / rates["one-at-a-time"]
        figures[f"{prefix}ratio_vs_legacy"] = rates["batched"] / rates["legacy"]
        line = (f"  batched / one at a time: {rates['batched'] / rates['one-at-a-time']:.2f}x   "
                f"batched / legacy: {rates['batched'] / rates['legacy']:.2f}x")
        if "naive-pinned" in rates:
            figures[f"{prefix}ratio"] = rates["batched"] / rates["naive-pinned"]
            line += f"   batched / pinned naive: {figures[f'{prefix}ratio']:.2f}x"
        print(line)
    if "mnist_ratio" in figures:
        print(f"targets: digits ratio {figures.get('ratio', float('nan')):.2f} (>= 6), MNIST ratio "
              f"{figures['mnist_ratio']:.2f} (>= 3)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
