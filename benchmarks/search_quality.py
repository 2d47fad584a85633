"""Search quality: certevo's front vs random search at an equal evaluation budget.

For digits (and MNIST from ../shared/data/mnist-t10k where present) both searches use the
same genome space, seeds, short training and certification, on the same Ray pool:

* certevo: the configured search (default: Lamarckian nsga2, K-starts plus pruned starts;
  children start from their parent's trained weights and train ``inherit_epochs``);
* random: masks at sparsities drawn uniformly from [min_sparsity, max_sparsity],
  activations drawn uniformly per hidden layer from the allowed set, each trained from a
  fresh init for ``training.epochs``.

Equal evaluations, not equal training: the epochs each search trained in all are printed
too (certevo's children train fewer epochs than a fresh candidate, but their weights carry
their ancestors' training, which is how its front can rise above the dense network's
short-training figure and past ``ratio_ceiling``).

Printed per data set: both hypervolumes (reference point (0, 0)) and their ratio, the best
certified accuracy at >= 90 % and >= 99 % sparsity for each, and the dense network's
certified accuracy under the same training. Also printed: the hypervolume of the sparse
regime alone (reference (0.9, 0)) and ``ratio_ceiling``, the ratio a front would score if it
kept the dense network's certified accuracy up to the space's largest sparsity (with
certified accuracy flat from dense to ~75 % sparsity, random search already comes close to
it). The last line is one JSON object with every figure; ``ratio`` is the mean hypervolume
ratio over the data sets.

    python benchmarks/search_quality.py [--budget 60] [--mnist-budget 40]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from certevo.cluster.connect import connect  # noqa: E402
from certevo.cluster.pool import EvaluationPool, EvaluationTask  # noqa: E402
from certevo.evaluators.models import make_template  # noqa: E402
from certevo.population.genome import random_genome  # noqa: E402
from certevo.population.seeds import derive_seed  # noqa: E402
from certevo.population.selection import hypervolume_2d, pareto_front  # noqa: E402
from certevo.search.config import load_config  # noqa: E402
from certevo.search.loop import Search  # noqa: E402

MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist-t10k"


def best_at(records, level: float) -> float:
    return max((r.certified_accuracy for r in records if r.ok and r.sparsity >= level - 1e-12), default=0.0)


def random_search(config, budget: int):
    """``budget`` random genomes from the search's genome space, evaluated on the pool."""
    data = config.data.load()
    template = make_template(config.model.kind, data.input_shape, data.num_classes,
                             widths=config.model.widths, channels=config.model.channels)
    rng = np.random.default_rng(derive_seed(config.search.seed, "random-search"))
    space = config.genome
    genomes = []
    for _ in range(budget):
        sparsity = float(rng.uniform(space.min_sparsity, space.max_sparsity))
        acts = [space.activations[int(i)] for i in rng.integers(len(space.activations), size=len(template.hidden_sizes()))]
        genomes.append(random_genome(template.layer_shapes(), acts, sparsity, rng))
    pool = EvaluationPool(config.evaluation_spec(), config.cluster.actors or 2)
    try:
        records = [r.evaluation.record for r in pool.run([EvaluationTask(g) for g in genomes])]
    finally:
        pool.shutdown()
    dense = template.dense_genome(space.activations[0])
    pool = EvaluationPool(config.evaluation_spec(), 1)
    try:
        dense_record = next(iter(pool.run([EvaluationTask(dense)]))).evaluation.record
    finally:
        pool.shutdown()
    return records, dense_record


def compare(name: str, overrides: list[str], budget: int) -> dict:
    config = load_config(None, overrides + [f"search.evaluation_budget={budget}", "search.generations=1000"])
    with tempfile.TemporaryDirectory() as tmp:
        search = Search.create(config, Path(tmp) / "run")
        result = search.run()
        ours = [c.record for c in search.state.archive.values()]
    theirs, dense = random_search(config, len(ours))
    ok_theirs = [r for r in theirs if r.ok]
    hv_ours = result.hypervolume
    front_random = [r.objectives for r in pareto_front(ok_theirs, [r.objectives for r in ok_theirs])]
    hv_random = hypervolume_2d(front_random)
    front_ours = [c.record.objectives for c in search.state.front()]
    # The sparse regime alone: hypervolume above 90 % sparsity (reference (0.9, 0)).
    hv_ours_90 = hypervolume_2d(front_ours, (0.9, 0.0))
    hv_random_90 = hypervolume_2d(front_random, (0.9, 0.0))
    figures = {
        "evaluations": len(ours),
        "epochs_certevo": sum(r.epochs for r in ours),
        "epochs_random": sum(r.epochs for r in theirs),
        "hypervolume_certevo": hv_ours,
        "hypervolume_random": hv_random,
        "ratio": hv_ours / hv_random if hv_random > 0 else float("inf"),
        "best_certified_90_certevo": best_at(ours, 0.9),
        "best_certified_90_random": best_at(theirs, 0.9),
        "best_certified_99_certevo": best_at(ours, 0.99),
        "best_certified_99_random": best_at(theirs, 0.99),
        "dense_certified": dense.certified_accuracy,
        "dense_clean": dense.clean_accuracy,
        # What any search could reach if it kept the dense network's certified accuracy up to
        # the space's largest sparsity, over random search's hypervolume.
        "ratio_ceiling": hypervolume_2d([(config.genome.max_sparsity, dense.certified_accuracy)]) / hv_random
        if hv_random > 0 else float("inf"),
        "hypervolume_above_90_certevo": hv_ours_90,
        "hypervolume_above_90_random": hv_random_90,
        "ratio_above_90": hv_ours_90 / hv_random_90 if hv_random_90 > 0 else float("inf"),
    }
    print(f"\n== {name} ({len(ours)} evaluations each; epochs trained in all: certevo {figures['epochs_certevo']}, "
          f"random {figures['epochs_random']}) ==")
    print(f"hypervolume   certevo {hv_ours:.4f}   random {hv_random:.4f}   ratio {figures['ratio']:.2f}x (target >= 1.2)")
    print(f"  (ceiling: a front at the dense network's certified accuracy up to {config.genome.max_sparsity:.1%} sparsity "
          f"would score {figures['ratio_ceiling']:.2f}x)")
    print(f"hypervolume above 90% sparsity: certevo {hv_ours_90:.4f}   random {hv_random_90:.4f}   "
          f"ratio {figures['ratio_above_90']:.2f}x")
    print(f"best certified at >= 90% sparsity: certevo {figures['best_certified_90_certevo']:.2%}, "
          f"random {figures['best_certified_90_random']:.2%}; dense network {dense.certified_accuracy:.2%}")
    print(f"best certified at >= 99% sparsity: certevo {figures['best_certified_99_certevo']:.2%}, "
          f"random {figures['best_certified_99_random']:.2%}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=60, help="evaluations per search on digits")
    parser.add_argument("--mnist-budget", type=int, default=40, help="evaluations per search on MNIST")
    parser.add_argument("--mnist-subset", type=int, default=2000)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides for both searches (search.* settings only affect certevo)")
    parser.add_argument("--no-mnist", action="store_true")
    args = parser.parse_args()
    connect(num_cpus=2)
    results = {"digits": compare("digits", args.overrides, args.budget)}
    if MNIST_DIR.is_dir() and not args.no_mnist:
        results["mnist"] = compare("mnist", args.overrides + ["data.name=mnist", f"data.path={MNIST_DIR}",
                                                              f"data.subset={args.mnist_subset}"], args.mnist_budget)
    else:
        print(f"\n(MNIST skipped: {'--no-mnist' if args.no_mnist else f'{MNIST_DIR} is not present'})")
    ratios = [r["ratio"] for r in results.values()]
    summary = {f"{ds}_{k}": v for ds, figs in results.items() for k, v in figs.items()}
    summary["ratio"] = float(np.mean(ratios))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
