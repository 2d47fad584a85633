"""Search quality of the two modes at equal evaluations: generational vs asynchronous.

For each seed, the default digits search (the `make run` search: MLP 64-64, IBP short
training, CROWN at eps 0.1, 118 evaluations) runs once per ``search.mode`` on the same
local Ray, with ``search.evaluation_budget`` fixed so both make exactly the same number of
evaluations; which mode runs first alternates with the seed. Compared: the hypervolume of
the final front above 90 % sparsity (reference point (0.9, 0), the regime certevo is for),
and over the whole range (reference (0, 0)).

``--workers N``: a local Ray offering N logical CPUs and one evaluator actor on each (they
share this machine's cores), so that as many children are in flight as on an N-worker
cluster: the asynchronous mode then chooses parents from a population that misses up to N
results (``max(population_size, actors)`` in flight), which is what a cluster launch does.

"Within noise" is judged on the paired per-seed differences: their mean, standard
deviation and t statistic (mean / (sd / sqrt(n))), next to the spread of each mode's
hypervolumes across seeds. An asynchronous search is not bit-reproducible (results are
absorbed in the order they finish), so one seed says little: use several.

    python benchmarks/async_quality.py [--seeds 3] [--first-seed 0] [--budget 118] [--workers N] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from certevo.cluster.connect import connect  # noqa: E402
from certevo.population.selection import hypervolume_2d  # noqa: E402
from certevo.search.config import load_config  # noqa: E402
from certevo.search.loop import Search  # noqa: E402

MODES = ("generational", "asynchronous")


def run_once(mode: str, seed: int, budget: int, overrides: list[str]) -> dict:
    config = load_config(None, [*overrides, f"search.mode={mode}", f"search.seed={seed}",
                                f"search.evaluation_budget={budget}"])
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = Search.create(config, Path(tmp) / "run").run()
        seconds = time.perf_counter() - started
    points = [(c.record.sparsity, c.record.certified_accuracy) for c in result.front]
    return {"mode": mode, "seed": seed, "evaluations": result.evaluations, "seconds": seconds,
            "hv_90": hypervolume_2d(points, (0.9, 0.0)), "hv": hypervolume_2d(points)}


def paired(differences: list[float]) -> dict:
    n = len(differences)
    mean = statistics.fmean(differences)
    sd = statistics.stdev(differences) if n > 1 else float("nan")
    t = mean / (sd / n ** 0.5) if n > 1 and sd > 0 else float("nan")
    return {"mean": mean, "sd": sd, "t": t}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--budget", type=int, default=118, help="evaluations per search (default: the default search's 118)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides for both modes")
    parser.add_argument("--workers", type=int, default=None,
                        help="logical CPUs of the local Ray and evaluator actors (default: one per core)")
    args = parser.parse_args()
    if args.workers is not None:
        connect(num_cpus=args.workers)
        args.set = [f"cluster.actors={args.workers}", *args.set]

    runs: list[dict] = []
    for k, seed in enumerate(range(args.first_seed, args.first_seed + args.seeds)):
        order = MODES if k % 2 == 0 else MODES[::-1]
        for mode in order:
            run = run_once(mode, seed, args.budget, args.set)
            runs.append(run)
            print(f"seed {seed:3d}  {mode:13s} {run['evaluations']:4d} evaluations  {run['seconds']:6.1f} s  "
                  f"HV>=0.9 {run['hv_90']:.5f}  HV {run['hv']:.4f}", flush=True)

    by = {(r["mode"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    summary: dict = {"seeds": seeds, "budget": args.budget, "workers": args.workers}
    print()
    print(f"{'':14s} {'HV>=0.9 mean':>13s} {'sd':>8s} {'HV mean':>9s} {'s/search':>9s}")
    for mode in MODES:
        hv90 = [by[mode, s]["hv_90"] for s in seeds]
        hv = [by[mode, s]["hv"] for s in seeds]
        secs = [by[mode, s]["seconds"] for s in seeds]
        sd = statistics.stdev(hv90) if len(hv90) > 1 else float("nan")
        print(f"{mode:14s} {statistics.fmean(hv90):13.5f} {sd:8.5f} {statistics.fmean(hv):9.4f} "
              f"{statistics.median(secs):9.1f}")
        summary[f"hv90_{mode}"] = statistics.fmean(hv90)
        summary[f"hv90_sd_{mode}"] = sd
        summary[f"hv_{mode}"] = statistics.fmean(hv)
        summary[f"seconds_median_{mode}"] = statistics.median(secs)
    diff90 = paired([by["asynchronous", s]["hv_90"] - by["generational", s]["hv_90"] for s in seeds])
    diff = paired([by["asynchronous", s]["hv"] - by["generational", s]["hv"] for s in seeds])
    print(f"asynchronous - generational, paired over {len(seeds)} seeds: HV>=0.9 {diff90['mean']:+.5f} "
          f"(sd {diff90['sd']:.5f}, t {diff90['t']:+.2f});  HV {diff['mean']:+.4f} (sd {diff['sd']:.4f}, t {diff['t']:+.2f})")
    evaluations = {r["evaluations"] for r in runs}
    print(f"evaluations per search: {sorted(evaluations)}")
    summary.update({"hv90_diff_mean": diff90["mean"], "hv90_diff_sd": diff90["sd"], "hv90_diff_t": diff90["t"],
                    "hv_diff_mean": diff["mean"], "hv_diff_t": diff["t"], "evaluations": sorted(evaluations),
                    "runs": runs})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
