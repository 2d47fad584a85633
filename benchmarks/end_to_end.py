"""End to end: what a user gets from certevo against the simple ways to a sparse certified
network, on the test split, each method's compute beside its result.

For each data set (MNIST from ../shared/data/mnist-t10k, subset 5000; digits) and seed
(the search seed and the data split's seed are both the seed):

* **certevo**: the default search (``certevo launch``), then for each level L the front
  member with the most certified accuracy at sparsity >= L (``certevo export
  --min-sparsity L``), final-trained by ``certevo train`` the way the README recommends
  (it fine-tunes the candidate's trained weights); the same mask trained from a fresh init
  is printed too.
* At exactly that candidate's global sparsity, with the same final training:
  **random ERK** (a random mask, layer densities by ERK, from scratch);
  **magnitude global / ERK** (one-shot magnitude pruning of a dense network trained with
  the search's short robust training, one threshold over all layers or layer-wise under
  ERK budgets; the better of fine-tuning the pruned dense weights and training the mask
  from scratch); **Optuna** (the best trial at >= L of Optuna's ``NSGAIISampler`` over
  per-layer densities and per-layer activations, with certevo's number of evaluations,
  short training and certification; the better of fine-tuning its trained weights and
  training from scratch). The dense network, trained from scratch the same way, is given
  for reference, and so is the best magnitude baseline at exactly L (a denser network).
* A fidelity check: the 6 archive candidates nearest 95 % sparsity (within 1.5 points),
  final-trained, and the Spearman correlation of their search fitness (validation certified
  accuracy) with their final test certified accuracy.

Everything runs on one local Ray with 2 CPUs (final trainings run two at a time, one
thread each). The last line is JSON: every figure, ``margin`` (the smallest, over data sets
and levels, of certevo's mean minus the best baseline's mean, in points), ``mean_margin``
(its average over MNIST's levels) and ``ratio`` (the smallest of certevo's mean over the
best baseline's mean).

    python benchmarks/end_to_end.py [--seeds 3] [--first-seed 0] [--epochs 30] [--datasets mnist,digits]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402

from certevo.cluster.connect import connect  # noqa: E402
from certevo.cluster.pool import EvaluationPool, EvaluationTask  # noqa: E402
from certevo.evaluators.models import make_template  # noqa: E402
from certevo.population.export import read_export, write_export  # noqa: E402
from certevo.population.genome import Genome, random_genome  # noqa: E402
from certevo.population.guided_operators import magnitude_prune  # noqa: E402
from certevo.population.seeds import derive_seed  # noqa: E402
from certevo.search.config import load_config  # noqa: E402
from certevo.search.candidate_export import export_candidate  # noqa: E402
from certevo.search.loop import Search  # noqa: E402

MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist-t10k"
LEVELS = (0.9, 0.95, 0.98)
BASELINES = ("random_erk", "magnitude_global", "magnitude_erk", "optuna")


@ray.remote(num_cpus=1)
def final_training(export_path: str, from_trained: bool, epochs: int, out_dir: str) -> dict:
    """``certevo train`` on one export (one thread); the figures of its report."""
    import torch

    from certevo.search.candidate_export import train_exported

    torch.set_num_threads(1)
    report, _ = train_exported(export_path, out_dir, overwrite=True, epochs=epochs, from_trained=from_trained)
    return {"certified": report.certified_accuracy, "clean": report.clean_accuracy, "sparsity": report.sparsity,
            "seconds": report.seconds, "start": report.start}


class Trainer:
    """Queues final trainings on the local Ray and caches them by (export, start)."""

    def __init__(self, epochs: int, workdir: Path) -> None:
        self.epochs, self.workdir, self.jobs = epochs, workdir, {}

    def submit(self, export_path: Path, from_trained: bool) -> tuple[str, bool]:
        key = (str(export_path), from_trained)
        if key not in self.jobs:
            out = self.workdir / f"final-{len(self.jobs)}"
            self.jobs[key] = final_training.remote(str(export_path), from_trained, self.epochs, str(out))
        return key

    def result(self, key: tuple[str, bool]) -> dict:
        return ray.get(self.jobs[key])


def baseline_export(like: Path, genome: Genome, weights: dict | None, path: Path, label: str) -> Path:
    """An export of a baseline's mask (and weights) that the final training treats exactly
    like certevo's: the manifest of ``like`` with this genome's identity."""
    manifest = read_export(like).manifest
    fields = {k: manifest[k] for k in ("model", "eps", "data", "config_digest", "training", "certification")}
    fields["fitness"] = {"candidate_id": genome.id, "train_method": manifest["fitness"]["train_method"], "baseline": label}
    fields["lineage"] = {"candidate_id": genome.id, "parents": [], "operator": label, "generation": None}
    masked = None
    if weights is not None:
        masked = {k: np.asarray(v, dtype=np.float32).copy() for k, v in weights.items()}
        for name, mask in genome.masks.items():
            masked[f"{name}.weight"][~mask] = 0.0
    json_path, _ = write_export(path, genome, fields, trained_weights=masked)
    return json_path


def counts_genome(shapes: dict, counts: dict, activations: tuple, rng: np.random.Generator) -> Genome:
    masks = {}
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        flat = np.zeros(size, dtype=bool)
        flat[rng.choice(size, size=counts[name], replace=False)] = True
        masks[name] = flat.reshape(shape)
    return Genome(masks, activations)


def optuna_search(config, budget: int, seed: int) -> list[tuple[Genome, object, dict]]:
    """Optuna's NSGA-II over per-layer densities and activations; every trial is one
    short training + certification on the Ray pool (batches of one NSGA-II generation)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = config.data.load()
    template = make_template(config.model.kind, data.input_shape, data.num_classes,
                             widths=config.model.widths, channels=config.model.channels)
    shapes = template.layer_shapes()
    hidden = len(template.hidden_sizes())
    size = config.search.population_size
    sampler = optuna.samplers.NSGAIISampler(population_size=size, seed=seed)
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
    pool = EvaluationPool(config.evaluation_spec(), 2)
    done: list[tuple[Genome, object, dict]] = []
    try:
        while len(done) < budget:
            trials, tasks = [], []
            for _ in range(min(size, budget - len(done))):
                trial = study.ask()
                counts = {n: max(1, round(trial.suggest_float(f"density_{n}", 0.002, 1.0, log=True) * math.prod(s)))
                          for n, s in shapes.items()}
                acts = tuple(trial.suggest_categorical(f"activation_{i}", list(config.genome.activations)) for i in range(hidden))
                genome = counts_genome(shapes, counts, acts, np.random.default_rng(derive_seed(seed, "optuna", trial.number)))
                trials.append((trial, genome))
                tasks.append(EvaluationTask(genome, keep_weights=True))
            results = {r.task.key: r.evaluation for r in pool.run(tasks)}
            for trial, genome in trials:
                evaluation = results[genome.id]
                record = evaluation.record
                study.tell(trial, [genome.sparsity, record.certified_accuracy if record.ok else 0.0])
                weights = {k: v.numpy() for k, v in evaluation.weights.items()} if evaluation.weights else None
                done.append((genome, record, weights))
    finally:
        pool.shutdown()
    return done


def dense_weights(config) -> tuple[Genome, dict]:
    """The dense network after the search's short robust training (on the train split)."""
    data = config.data.load()
    template = make_template(config.model.kind, data.input_shape, data.num_classes,
                             widths=config.model.widths, channels=config.model.channels)
    genome = template.dense_genome("relu")
    evaluation = config.evaluation_spec().build(num_threads=1, data=data).evaluate(genome, keep_weights=True)
    return genome, {k: v.numpy() for k, v in evaluation.weights.items()}


def run_seed(name: str, overrides: list[str], seed: int, trainer: Trainer, work: Path) -> dict:
    config = load_config(None, overrides + [f"search.seed={seed}", f"data.seed={seed}"])
    run_dir = work / f"{name}-{seed}"
    started = time.perf_counter()
    search = Search.create(config, run_dir)
    search.run()
    archive = search.state.archive
    search_epochs = sum(c.record.epochs for c in archive.values())
    print(f"  [{name} seed {seed}] search: {len(archive)} evaluations, {search_epochs} epochs, "
          f"{time.perf_counter() - started:.0f}s", flush=True)
    dense_genome, dense = dense_weights(config)
    optuna_trials = optuna_search(config, len(archive), seed)
    shapes = {n: m.shape for n, m in dense_genome.masks.items()}
    exports, jobs = {}, {}
    for level in LEVELS:
        cert_path, _ = export_candidate(run_dir, work / f"{name}-{seed}-certevo-{level}", min_sparsity=level)
        chosen = read_export(cert_path)
        exports[level] = chosen
        target = chosen.genome.sparsity
        rng = np.random.default_rng(derive_seed(seed, "baselines", level))
        relu = ("relu",) * len(chosen.genome.activations)
        jobs[(level, "certevo")] = [trainer.submit(cert_path, True)]
        jobs[(level, "certevo_scratch")] = [trainer.submit(cert_path, False)]
        genome = random_genome(shapes, relu, target, rng, "erk")
        jobs[(level, "random_erk")] = [trainer.submit(baseline_export(cert_path, genome, None, work / f"{name}-{seed}-rnd-{level}", "random_erk"), False)]
        for allocation in ("global", "erk"):
            for at, sparsity in (("", target), ("_at_level", level)):
                magnitudes = {n: dense[f"{n}.weight"] for n in shapes}
                genome = magnitude_prune(dense_genome, sparsity, allocation, rng, magnitudes)
                path = baseline_export(cert_path, genome, dense, work / f"{name}-{seed}-mag{allocation}{at}-{level}", "magnitude")
                jobs[(level, f"magnitude_{allocation}{at}")] = [trainer.submit(path, True), trainer.submit(path, False)]
        eligible = [t for t in optuna_trials if t[1].ok and t[0].sparsity >= level - 1e-12]
        if eligible:
            genome, record, weights = max(eligible, key=lambda t: t[1].certified_accuracy)
            path = baseline_export(cert_path, genome, weights, work / f"{name}-{seed}-optuna-{level}", "optuna")
            jobs[(level, "optuna")] = [trainer.submit(path, True), trainer.submit(path, False)]
    dense_path = baseline_export(exports[LEVELS[0]].json_path, dense_genome, None, work / f"{name}-{seed}-dense", "dense")
    dense_job = trainer.submit(dense_path, False)
    near = sorted((c for c in archive.values() if c.record.ok and abs(c.record.sparsity - 0.95) <= 0.015),
                  key=lambda c: (abs(c.record.sparsity - 0.95), c.id))[:6]
    fidelity_jobs = []
    for candidate in near:
        path, _ = export_candidate(run_dir, work / f"{name}-{seed}-near-{candidate.id[:10]}", candidate_id=candidate.id)
        fidelity_jobs.append((candidate.record.certified_accuracy, trainer.submit(path, True)))

    final_epochs = trainer.epochs
    out: dict = {"levels": {}, "dense": trainer.result(dense_job)["certified"], "compute": {
        "certevo": search_epochs + final_epochs, "random_erk": final_epochs,
        "magnitude": config.training.epochs + final_epochs, "optuna": len(optuna_trials) * config.training.epochs + final_epochs,
        "dense": final_epochs}}
    for level in LEVELS:
        row = {"sparsity": exports[level].genome.sparsity, "search_fitness": exports[level].fitness["certified_accuracy"]}
        for (lvl, method), keys in jobs.items():
            if lvl == level:
                results = [trainer.result(k) for k in keys]
                row[method] = max(r["certified"] for r in results)
        out["levels"][f"{level:g}"] = row
    pairs = [(fitness, trainer.result(key)["certified"]) for fitness, key in fidelity_jobs]
    out["fidelity"] = {"pairs": pairs, "spearman": spearman(pairs)}
    print(f"  [{name} seed {seed}] done in {time.perf_counter() - started:.0f}s: " + json.dumps(out["levels"]), flush=True)
    return out


def spearman(pairs: list[tuple[float, float]]) -> float | None:
    if len(pairs) < 3:
        return None
    from scipy.stats import spearmanr

    value = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return None if value is None or not math.isfinite(value) else float(value)


def summarise(name: str, runs: list[dict]) -> dict:
    """Mean and std over seeds per level and method; the table; this data set's margins."""
    figures: dict = {}
    print(f"\n== {name}: test-split certified accuracy (%), mean ± std over {len(runs)} seed(s) ==")
    methods = ["certevo", *BASELINES, "magnitude_global_at_level", "magnitude_erk_at_level", "certevo_scratch"]
    print(f"{'level':>6} {'sparsity':>9} " + " ".join(f"{m:>17}" for m in methods) + "   margin")
    margins = []
    for level in LEVELS:
        key = f"{level:g}"
        rows = [r["levels"][key] for r in runs]
        stats = {}
        for method in methods:
            values = [100 * row[method] for row in rows if method in row]
            if values:
                stats[method] = (float(np.mean(values)), float(np.std(values)))
        best = max((stats[m][0], m) for m in BASELINES if m in stats)
        margin = stats["certevo"][0] - best[0]
        margins.append(margin)
        sparsity = float(np.mean([row["sparsity"] for row in rows]))
        print(f"{key:>6} {sparsity:9.2%} " + " ".join(
            f"{stats[m][0]:10.1f} ± {stats[m][1]:4.1f}" if m in stats else f"{'-':>17}" for m in methods)
            + f"   {margin:+.1f} vs {best[1]}")
        for method, (mean, std) in stats.items():
            figures[f"{name}_{key}_{method}_mean"] = mean
            figures[f"{name}_{key}_{method}_std"] = std
        figures[f"{name}_{key}_sparsity"] = sparsity
        figures[f"{name}_{key}_margin"] = margin
        figures[f"{name}_{key}_ratio"] = stats["certevo"][0] / best[0] if best[0] > 0 else float("inf")
    dense = [100 * r["dense"] for r in runs]
    figures[f"{name}_dense_mean"] = float(np.mean(dense))
    print(f"dense network (same final training, from scratch): {np.mean(dense):.1f} ± {np.std(dense):.1f}")
    compute = {m: int(np.mean([r["compute"][m] for r in runs])) for m in runs[0]["compute"]}
    figures.update({f"{name}_epochs_{m}": v for m, v in compute.items()})
    print("compute, epochs trained in all per level: " + ", ".join(f"{m} {v}" for m, v in compute.items()))
    correlations = [r["fidelity"]["spearman"] for r in runs if r["fidelity"]["spearman"] is not None]
    figures[f"{name}_fidelity_spearman"] = float(np.mean(correlations)) if correlations else None
    figures[f"{name}_fidelity_pairs"] = [r["fidelity"]["pairs"] for r in runs]
    print(f"fidelity: Spearman(search fitness, final test certified) of the archive candidates nearest 95 %: "
          + ", ".join(f"{c:+.2f}" for c in correlations) + (f" (mean {np.mean(correlations):+.2f})" if correlations else ""))
    figures[f"{name}_margins"] = margins
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds (default 3; 1 for a quick run)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed (default 0): seeds are first..first+N-1")
    parser.add_argument("--epochs", type=int, default=30, help="final training epochs (default 30)")
    parser.add_argument("--datasets", default="mnist,digits")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="overrides of certevo's search config (default: the default search)")
    parser.add_argument("--keep", default=None, help="keep the run directories and exports here")
    args = parser.parse_args()
    connect(num_cpus=2)
    datasets = {"mnist": ["data.name=mnist", f"data.path={MNIST_DIR}", "data.subset=5000"], "digits": []}
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="certevo-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(args.epochs, work)
    figures: dict = {"seeds": list(range(args.first_seed, args.first_seed + args.seeds)), "final_epochs": args.epochs}
    margins, ratios = {}, []
    for name in args.datasets.split(","):
        if name == "mnist" and not MNIST_DIR.is_dir():
            print(f"(MNIST skipped: {MNIST_DIR} is not present)")
            continue
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        runs = [run_seed(name, datasets[name] + args.overrides, seed, trainer, work) for seed in seeds]
        result = summarise(name, runs)
        margins[name] = result.pop(f"{name}_margins")
        ratios += [result[f"{name}_{level:g}_ratio"] for level in LEVELS]
        figures.update(result)
    figures["margin"] = min(m for values in margins.values() for m in values)
    figures["mean_margin"] = float(np.mean(margins["mnist"])) if "mnist" in margins else None
    figures["ratio"] = min(ratios)
    print(f"\nmargin {figures['margin']:+.2f} points (target >= 0); MNIST mean margin "
          f"{figures['mean_margin'] if figures['mean_margin'] is None else round(figures['mean_margin'], 2)} (target >= 2)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
