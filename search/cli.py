"""The ``certevo`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from certevo import __version__
from certevo.population.errors import CertevoError, ConfigError
from certevo.population.sparsity_text import format_sparsity
from certevo.search.command_hint import command_hint
from certevo.search.input_checks import check_new_run_dir, check_output_file, check_tracking_uri, user_path

#: Arguments that name a file or directory (a leading ``~`` is expanded).
_PATH_ARGUMENTS = ("config", "run_dir", "data_path", "output", "plot", "file")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="train and certify one candidate and print its fitness",
        description="Short robust training of one candidate (a random mask at --sparsity), "
        "then certification on the validation split. With no options: the digits default.",
    )
    p.add_argument("--dataset", default="digits", help="digits (default), mnist, fashion-mnist, kmnist or npz")
    p.add_argument("--data-path", default=None, help="directory of IDX files, or an .npz file")
    p.add_argument("--subset", type=int, default=None, help="use only this many samples (quick runs)")
    p.add_argument("--model", default="mlp", choices=("mlp", "cnn"))
    p.add_argument("--sparsity", type=float, default=0.9, help="share of weights pruned at random (default 0.9)")
    p.add_argument("--activation", default="relu", help="activation of every hidden layer (default relu)")
    p.add_argument("--train-method", default="ibp", help="clean, pgd, ibp (default) or crown-ibp")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--eps", type=float, default=0.1, help="L-inf radius on pixels in [0, 1] (default 0.1)")
    p.add_argument("--certify-method", default="crown", help="ibp, crown (default) or crown-optimized")
    p.add_argument("--no-pgd", action="store_true", help="skip the PGD attack")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--json", action="store_true", help="print the fitness record as JSON")
    p.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    import numpy as np
    from rich.console import Console

    from certevo.evaluators.data import load_dataset
    from certevo.evaluators.evaluator import CandidateEvaluator
    from certevo.evaluators.models import make_template
    from certevo.evaluators.settings import CertificationSettings, TrainingSettings
    from certevo.population.genome import random_genome
    from certevo.population.seeds import derive_seed

    console = Console(stderr=True)
    if args.threads < 1:
        raise ConfigError(f"--threads must be a positive integer; got {args.threads}; e.g. 1")
    training = TrainingSettings(method=args.train_method, epochs=args.epochs, eps=args.eps)
    certification = CertificationSettings(method=args.certify_method, eps=args.eps, pgd=not args.no_pgd)
    with console.status(f"loading {args.dataset}..."):
        data = load_dataset(args.dataset, args.data_path, seed=args.seed, subset=args.subset)
    template = make_template(args.model, data.input_shape, data.num_classes)
    activations = [args.activation] * len(template.hidden_sizes())
    rng = np.random.default_rng(derive_seed(args.seed, "evaluate-cli"))
    genome = random_genome(template.layer_shapes(), activations, args.sparsity, rng)
    evaluator = CandidateEvaluator(data, template, training, certification, seed=args.seed, num_threads=args.threads)
    with console.status(
        f"training ({training.method}, {training.epochs} epochs) and certifying ({certification.method}) "
        f"candidate {genome.id} on {data.name}..."
    ):
        record = evaluator.evaluate(genome).record
    if args.json:
        print(json.dumps(record.to_dict(), indent=2))
    else:
        print(f"data set {data.name}: {len(data.train.y)} train / {len(data.val.y)} validation samples, "
              f"model {template.key()}")
        print(record.summary())
    return 0 if record.ok else 1


def _add_launch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "launch",
        help="start a search",
        description="Start a search. With no CONFIG: the built-in digits default.",
    )
    p.add_argument("config", nargs="?", default=None, help="YAML config file (default: the digits default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set search.generations=4 (repeatable)")
    p.add_argument("--address", default=None, help="Ray cluster address (auto, HOST:PORT or ray://HOST:PORT); on a "
                   "cluster search.mode defaults to asynchronous")
    p.add_argument("--run-dir", default=None,
                   help="where the search writes everything: a path or a filesystem URI such as s3://bucket/run "
                        "(default: run_dir from the config, else runs/<time>-<config hash>)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: a SQLite store in the run directory, no server needed)")
    p.set_defaults(handler=_run_launch)


def _add_resume(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("resume", help="continue a search from its last checkpoint",
                       description="Continue the search in RUN_DIR from its last checkpoint.")
    p.add_argument("run_dir", help="the run directory of the search (a path or a filesystem URI)")
    p.add_argument("--generations", type=int, default=None, help="raise the number of generations")
    p.add_argument("--evaluation-budget", type=int, default=None, help="raise the evaluation budget")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the one the launch used)")
    p.set_defaults(handler=_run_resume)


def _finish_search(search, trackers=(), storage=None) -> int:
    import ray

    from rich.console import Console

    from certevo.search.disk_full import disk_full, is_disk_full
    from certevo.search.run_directory import RunDirectory
    from certevo.search.stop_signals import Terminated, stop_on_sigterm

    where = storage.uri if storage is not None and storage.remote else search.run_dir
    try:
        with stop_on_sigterm():
            result = search.run()
    except KeyboardInterrupt as exc:
        how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        Console(stderr=True).print(
            f"[yellow]{how}[/]; everything evaluated so far is kept. Continue with: {command_hint('resume', where)}",
            soft_wrap=True,
        )
        return 143 if isinstance(exc, Terminated) else 130
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full(exc, search.run_dir, command_hint("resume", where)) from exc
        raise
    finally:
        ray.shutdown()
    console = Console(stderr=True)
    console.print(f"run directory: {where}" + (f" (staged in {result.run_dir})" if where != search.run_dir else ""))
    console.print(f"front: {RunDirectory(result.run_dir).front}")
    for tracker in trackers:
        uri = tracker.tracking_uri or ""
        console.print(f"MLflow: {tracker.run_url or uri} (run {tracker.run_id})")
        if uri.startswith("sqlite:///"):
            mlflow_ui = command_hint("ui", "--backend-store-uri", uri, "--host", "127.0.0.1", name="mlflow")
            console.print(f"  view it: {mlflow_ui}", soft_wrap=True)
        if tracker.unlogged:
            console.print(f"[yellow]MLflow could not log {len(tracker.unlogged)} item(s)[/]: "
                          + "; ".join(str(u) for u in tracker.unlogged[:5]) + " (the run directory has everything)")
    # soft_wrap: a hint is copied into a shell, so it is never broken across lines
    console.print(f"next: {command_hint('inspect', result.run_dir)}", soft_wrap=True)
    console.print(f"next: {command_hint('export', result.run_dir, '--knee', '-o', 'best')}", soft_wrap=True)
    console.print(f"next: {command_hint('resume', where, '--generations', search.config.search.generations + 5)}",
                  soft_wrap=True)
    return 0


class _LaunchDidNoWork(CertevoError):
    """A launch failed before its first evaluation; its run directory was removed."""


def _run_launch(args: argparse.Namespace) -> int:
    from certevo.search.config import load_launch_config
    from certevo.search.loop import Search
    from certevo.search.progress import ConsoleProgress
    from certevo.search.run_storage import RunStorage

    config, note = load_launch_config(args.config, args.overrides, args.address)
    run_dir = args.run_dir
    if run_dir is None:
        import time

        # A fresh directory per launch unless the config names one, so launching twice never collides.
        run_dir = config.run_dir if config.run_dir != "runs/default" else f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{config.digest()}"
    run_dir = user_path(run_dir)
    check_new_run_dir(run_dir)  # before anything is created or started
    check_tracking_uri(args.tracking_uri)
    if note is not None:
        print(f"certevo: {note}", file=sys.stderr, flush=True)
    with RunStorage(run_dir) as storage:  # a local path, or a URI staged locally and mirrored
        storage.prepare_launch()
        fresh = storage.is_empty()  # nothing in it but this driver's lock
        trackers = _trackers(args.tracking_uri)
        try:
            search = Search.create(config, storage.local_dir, [ConsoleProgress(), *trackers, *storage.observers()])
            return _finish_search(search, trackers, storage)
        except Exception as exc:
            if fresh and not storage.did_work():
                # Nothing was evaluated: leave nothing that would make the retry a `resume`.
                storage.discard()
                note = (f"nothing was evaluated, so {storage.uri} was removed: fix the cause, then run the same "
                        "launch again")
                if isinstance(exc, CertevoError):
                    raise _LaunchDidNoWork(f"{exc}\n({note})") from exc
                print(f"certevo: {note}", file=sys.stderr)
            raise


def _run_resume(args: argparse.Namespace) -> int:
    from certevo.search.loop import Search
    from certevo.search.progress import ConsoleProgress
    from certevo.search.run_storage import RunStorage
    from certevo.search.tracking.location import resume_tracking_uri

    with RunStorage(args.run_dir) as storage:  # a local path, or a URI downloaded to local staging
        storage.prepare_resume()
        # The default store is the one in the run directory where it is now (moved, copied, staged).
        uri = args.tracking_uri if args.tracking_uri is not None else resume_tracking_uri(storage.local_dir)
        trackers = _trackers(uri)
        search = Search.resume(storage.local_dir, generations=args.generations,
                               evaluation_budget=args.evaluation_budget,
                               observers=[ConsoleProgress(), *trackers, *storage.observers()])
        return _finish_search(search, trackers, storage)


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show a run's population, front, lineage and history",
                       description="Show the population and Pareto front of the search in RUN_DIR.")
    p.add_argument("run_dir")
    p.add_argument("--sort", default="sparsity", help="sort the population by sparsity (default), certified, clean, generation or id")
    p.add_argument("--lineage", metavar="ID", default=None, help="show the ancestry tree of a candidate (id or unique prefix)")
    p.add_argument("--json", action="store_true", help="print everything as JSON (for scripts)")
    p.add_argument("--plot", metavar="FILE", default=None,
                   help="write the Pareto front (earlier fronts faded) to FILE and its history per generation "
                        "(hypervolume, best certified accuracy, front size) to FILE-history.png")
    p.set_defaults(handler=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.tree import Tree

    from certevo.search.certified_caption import caption_text
    from certevo.search.inspect_run import lineage_tree, resolve_id, sorted_rows, summary
    from certevo.search.run_directory import open_run

    if args.plot:
        check_output_file(args.plot, "--plot")
    run = open_run(args.run_dir)
    config, state = run.config, run.state
    info = summary(config, state, args.sort)
    caption = caption_text(info["certified_accuracy_refers_to"])  # what every certified figure below means
    if args.lineage:
        tree = lineage_tree(state, resolve_id(state, args.lineage))
        info = {"lineage": tree}
    if args.plot:
        from certevo.search.plots import plot_front, plot_history

        points = [(c.record.sparsity, c.record.certified_accuracy) for c in state.front()]
        plot_front(points, args.plot, history=state.history, title=f"{args.run_dir}: Pareto front\n{caption}")
        plot = Path(args.plot)
        history_png = plot_history(state.history, plot.with_name(f"{plot.stem}-history{plot.suffix or '.png'}"),
                                   title=f"{args.run_dir}: search progress\n{caption}")
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    console = Console()
    if args.lineage:
        console.print(_rich_tree(info["lineage"], Tree))
        console.print(caption)
        return 0
    console.print(f"[bold]{args.run_dir}[/]: generation {info['generation']}, {info['evaluations']} candidates "
                  f"evaluated, hypervolume {info['hypervolume']:.4f} ({info['strategy']})")
    console.print(_rows_table(info["population"], f"population (sorted by {args.sort})", Table))
    console.print(_rows_table(sorted_rows(info["front"], "sparsity"), "Pareto front", Table, caption))
    ops = Table(title="operators")
    for col in ("operator", "children", "on front"):
        ops.add_column(col)
    for name, stats in info["operators"].items():
        ops.add_row(name, str(stats["children"]), str(stats["on_front"]))
    console.print(ops)
    if args.plot:
        console.print(f"plots written to {args.plot} (Pareto front) and {history_png} (history)")
    return 0


def _rows_table(rows, title, table_type, caption=None):
    table = table_type(title=title, caption=caption)
    numeric = ("sparsity", "certified", "clean", "epochs", "gen")
    for col in ("id", "sparsity", "certified", "clean", "activations", "epochs", "gen", "operator"):
        table.add_column(col, justify="right" if col in numeric else "left")
    for r in rows:
        acts = ",".join(a if isinstance(a, str) else "per-neuron" for a in r["activations"])
        table.add_row(r["id"], format_sparsity(r["sparsity"]), f"{r['certified_accuracy']:.2%}", f"{r['clean_accuracy']:.2%}",
                      acts, str(r["total_epochs"]), str(r["generation"]), r["operator"] or "")
    return table


def _rich_tree(node, tree_type, tree=None):
    gain = node.get("child_gain")
    label = (f"{node['id']}  gen {node['generation']}  {node['operator']}  "
             f"sparsity {format_sparsity(node['sparsity'])}  certified {node['certified_accuracy']:.2%}")
    if gain is not None:
        label += f"  (child {'+' if gain >= 0 else ''}{gain:.2%})"
    branch = tree_type(label) if tree is None else tree.add(label)
    for parent in node["parents"]:
        _rich_tree(parent, tree_type, branch)
    return branch


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a candidate's masks and activations",
                       description="Write the chosen candidate as FILE.safetensors (masks) + FILE.json (manifest).")
    p.add_argument("run_dir")
    choice = p.add_mutually_exclusive_group(required=True)
    choice.add_argument("--id", dest="candidate_id", default=None, help="candidate id (or unique prefix)")
    choice.add_argument("--min-sparsity", type=float, default=None,
                        help="the most certified front member at least this sparse, e.g. 0.9")
    choice.add_argument("--knee", action="store_true", help="the knee of the Pareto front")
    p.add_argument("-o", "--output", required=True, help="output path (FILE.json and FILE.safetensors are written)")
    p.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from certevo.search.candidate_export import export_candidate

    json_path, tensor_path = export_candidate(args.run_dir, args.output, candidate_id=args.candidate_id,
                                              min_sparsity=args.min_sparsity, knee=args.knee)
    manifest = json.loads(Path(json_path).read_text())
    print(f"exported candidate {manifest.get('candidate_id')} (sparsity {format_sparsity(manifest.get('sparsity', 0))}) to "
          f"{json_path} and {tensor_path}")
    print(f"next: {command_hint('train', json_path)}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="full-length certified training of an exported mask",
                       description="Train an exported mask for real (full eps schedule), then certify it on the "
                       "held-out test split the search never saw.")
    p.add_argument("file", help="the export (.json, .safetensors or their common stem)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--method", default=None, help="training method (clean, pgd, ibp, crown-ibp)")
    p.add_argument("--eps", type=float, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--data-path", default=None, help="where the data set lives, if not where the search read it")
    p.add_argument("--seed", type=int, default=None)
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from-trained", dest="from_trained", action="store_true", default=None,
                       help="fine-tune the search's trained weights (the default when the export carries them)")
    start.add_argument("--from-scratch", dest="from_trained", action="store_false",
                       help="train the mask from a fresh init (full eps schedule)")
    p.add_argument("-o", "--output", default=None, help="output directory (default: next to the export)")
    p.add_argument("--force", action="store_true", help="overwrite an earlier report in the output directory")
    p.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from certevo.search.candidate_export import train_exported

    overrides = {k: v for k, v in {"epochs": args.epochs, "method": args.method, "eps": args.eps, "lr": args.lr,
                                   "batch_size": args.batch_size, "data_path": args.data_path,
                                   "seed": args.seed, "from_trained": args.from_trained}.items() if v is not None}
    report, out_dir = train_exported(args.file, args.output, overwrite=args.force, progress=True, **overrides)
    data = report.to_dict()
    start = "fine-tuned from the search's trained weights" if data.get("start") == "trained" else "from a fresh init"
    print(f"final training of {data.get('candidate_id')} ({data.get('method')}, {data.get('epochs')} epochs {start}, "
          f"eps={data.get('eps')}) on the held-out test split ({data.get('samples')} samples):")
    for key in ("sparsity", "clean_accuracy", "pgd_accuracy", "certified_accuracy_ibp", "certified_accuracy_crown",
                "certified_accuracy"):
        value = data.get(key)
        if value is not None:
            print(f"  {key:26s} {format_sparsity(value) if key == 'sparsity' else f'{value:.2%}':>8}")
    print(f"report and weights in {out_dir}")
    return 0


def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="tune the search's own settings with Optuna",
                       description="Each trial runs a search at a fixed evaluation budget and scores its "
                       "hypervolume. The study is in RUN_DIR/optuna.journal; rerun to resume.")
    p.add_argument("config", nargs="?", default=None, help="YAML config of the searches (default: digits default)")
    p.add_argument("--trials", type=int, required=True, help="number of finished trials to reach")
    p.add_argument("--budget", type=int, default=40, help="evaluations per trial (default 40)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--run-dir", default="runs/tune", help="where the study lives (default runs/tune)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: SQLite in the run directory)")
    p.set_defaults(handler=_run_tune)


def _run_tune(args: argparse.Namespace) -> int:
    import time

    import ray

    from certevo.search.config import load_config
    from certevo.search.tune import TUNE_FILE, config_key, trial_line, tune

    if args.trials < 1:
        raise ConfigError(f"--trials must be >= 1; got {args.trials}")
    if args.budget < 1:
        raise ConfigError(f"--budget must be a positive number of evaluations per trial; got {args.budget}; e.g. 40")
    check_new_run_dir(args.run_dir)
    check_tracking_uri(args.tracking_uri)
    run_dir = Path(args.run_dir)
    base = None
    if not (run_dir / TUNE_FILE).is_file() or args.config or args.overrides:
        base = load_config(args.config, args.overrides)

    def observers(number, trial_dir):
        uri = args.tracking_uri or f"sqlite:///{run_dir.resolve() / 'mlflow.db'}"
        return _trackers(uri, experiment="certevo-tune", tags={"optuna.trial": str(number)})

    started = time.monotonic()

    def report(study, trial):  # plain lines, flushed: readable in a log file or a pipe too
        print(trial_line(study, trial, args.trials, time.monotonic() - started), flush=True)

    print(f"tuning in {run_dir} until {args.trials} trials have finished (each trial is a whole search); "
          "one line per finished trial", flush=True)
    try:
        study = tune(base, run_dir, args.trials, budget=args.budget, observers=observers, on_trial=report)
    finally:
        ray.shutdown()
    best = study.best_trial
    print(f"best trial #{best.number}: hypervolume {best.value:.4f}")
    for key, value in best.params.items():
        print(f"  {config_key(key)} = {value}")
    print(f"launch a search with these settings:\n  {json.loads((run_dir / 'best.json').read_text())['launch']}")
    print(f"study: {run_dir / 'optuna.journal'} (open with: optuna-dashboard {run_dir / 'optuna.journal'})")
    return 0


def _trackers(tracking_uri, experiment="certevo", tags=None):
    """The MLflow tracker, as a list of observers."""
    from certevo.search.tracking import MlflowTracker

    tracking_uri = check_tracking_uri(tracking_uri)  # an unusable store fails now, not after minutes of retries
    return [MlflowTracker(tracking_uri=tracking_uri, experiment_name=experiment, tags=tags or {})]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``certevo`` command."""
    parser = argparse.ArgumentParser(
        prog="certevo",
        description="Evolutionary search for sparse, certifiably robust neural networks.",
    )
    parser.add_argument("--version", action="version", version=f"certevo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_launch(sub)
    _add_resume(sub)
    _add_inspect(sub)
    _add_export(sub)
    _add_train(sub)
    _add_tune(sub)
    _add_evaluate(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``certevo`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    for name in _PATH_ARGUMENTS:  # `~` in a quoted or --opt=~/x path: the shell left it
        if isinstance(getattr(args, name, None), str):
            setattr(args, name, user_path(getattr(args, name)))
    try:
        return args.handler(args)
    except CertevoError as exc:
        print(f"certevo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("certevo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `certevo inspect RUN --json | head`
        sys.stdout = None
        return 0


if __name__ == "__main__":
    sys.exit(main())
