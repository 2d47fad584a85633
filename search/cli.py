"""The ``certevo`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from population.errors import CertevoError


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

    from evaluators.data import load_dataset
    from evaluators.evaluator import CandidateEvaluator
    from evaluators.models import make_template
    from evaluators.settings import CertificationSettings, TrainingSettings
    from population.genome import random_genome
    from population.seeds import derive_seed

    console = Console(stderr=True)
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
    p.add_argument("--address", default=None, help="Ray cluster address (auto, HOST:PORT or ray://HOST:PORT)")
    p.add_argument("--run-dir", default=None, help="where the search writes everything (default: run_dir from the config, else runs/<time>-<config hash>)")
    p.set_defaults(handler=_run_launch)


def _add_resume(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("resume", help="continue a search from its last checkpoint",
                       description="Continue the search in RUN_DIR from its last checkpoint.")
    p.add_argument("run_dir", help="the run directory of the search")
    p.add_argument("--generations", type=int, default=None, help="raise the number of generations")
    p.add_argument("--evaluation-budget", type=int, default=None, help="raise the evaluation budget")
    p.set_defaults(handler=_run_resume)


def _finish_search(search) -> int:
    import ray

    from rich.console import Console

    try:
        result = search.run()
    except KeyboardInterrupt:
        Console(stderr=True).print(
            f"[yellow]interrupted[/]; everything evaluated so far is kept. Continue with: certevo resume {search.run_dir}"
        )
        return 130
    finally:
        ray.shutdown()
    console = Console(stderr=True)
    console.print(f"run directory: {result.run_dir}")
    console.print(f"front: {result.run_dir / 'front.json'}")
    console.print(f"next: certevo resume {result.run_dir} --generations {search.config.search.generations + 5}")
    return 0


def _run_launch(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from search.config import load_config
    from search.loop import Search
    from search.progress import ConsoleProgress

    config = load_config(args.config, args.overrides)
    if args.address is not None:
        config = replace(config, cluster=replace(config.cluster, address=args.address))
    run_dir = args.run_dir
    if run_dir is None:
        import time

        # A fresh directory per launch unless the config names one, so launching twice never collides.
        run_dir = config.run_dir if config.run_dir != "runs/default" else f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{config.digest()}"
    search = Search.create(config, run_dir, [ConsoleProgress()])
    return _finish_search(search)


def _run_resume(args: argparse.Namespace) -> int:
    from search.loop import Search
    from search.progress import ConsoleProgress

    search = Search.resume(args.run_dir, generations=args.generations, evaluation_budget=args.evaluation_budget,
                           observers=[ConsoleProgress()])
    return _finish_search(search)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``certevo`` command."""
    parser = argparse.ArgumentParser(
        prog="certevo",
        description="Evolutionary search for sparse, certifiably robust neural networks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_launch(sub)
    _add_resume(sub)
    _add_evaluate(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``certevo`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except CertevoError as exc:
        print(f"certevo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("certevo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
