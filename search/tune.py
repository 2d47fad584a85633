"""Tuning the search's own settings with Optuna.

Each trial runs a whole search at a fixed evaluation budget, in its own directory under
``<run_dir>/trials/``, and scores the hypervolume it reached. The study lives in Optuna's
journal file storage (``<run_dir>/optuna.journal``): resumable, and safe for several
`certevo tune` processes on the same run directory (on a shared filesystem too). Open it
with ``optuna-dashboard <run_dir>/optuna.journal``.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import yaml

from certevo.population.errors import ConfigError
from certevo.population.seeds import derive_seed
from certevo.search.config import OperatorRates, SearchConfig, config_from_dict
from certevo.search.loop import Search, SearchObserver, initial_evaluations

STUDY_NAME = "certevo-tune"
TUNE_FILE = "tune.yaml"


def suggest_config(trial: optuna.Trial, base: SearchConfig, budget: int) -> SearchConfig:
    """The base config with the tuned settings drawn for ``trial``: the variation settings
    the search uses (with weight inheritance: the activation rate, the regrown share and a
    child's epochs; without: the operator rates), K, short-training epochs and learning
    rate, population size."""
    inherit = base.search.weight_inheritance
    if inherit:
        rates = replace(
            base.search.rates,
            activation=trial.suggest_float("rates.activation", 0.0, 1.0),
            regrow_fraction=trial.suggest_float("rates.regrow_fraction", 0.02, 0.5, log=True),
        )
    else:
        rates = OperatorRates(
            crossover=trial.suggest_float("rates.crossover", 0.0, 1.0),
            prune_regrow=trial.suggest_float("rates.prune_regrow", 0.0, 1.0),
            density=trial.suggest_float("rates.density", 0.0, 1.0),
            activation=trial.suggest_float("rates.activation", 0.0, 1.0),
            regrow_fraction=base.search.rates.regrow_fraction,
            density_step=base.search.rates.density_step,
        )
    search = replace(
        base.search,
        rates=rates,
        kstarts=trial.suggest_int("kstarts", 1, 3),
        population_size=trial.suggest_int("population_size", 4, 16),
        evaluation_budget=budget,
        generations=10_000,
    )
    if inherit:
        search = replace(search, inherit_epochs=trial.suggest_int("inherit_epochs", 1, max(2, 2 * base.search.inherit_epochs)))
    training = replace(
        base.training,
        epochs=trial.suggest_int("training.epochs", 2, max(3, base.training.epochs)),
        lr=trial.suggest_float("training.lr", 1e-3, 2e-2, log=True),
    )
    config = replace(base, search=search, training=training)
    starts = initial_evaluations(config)
    if budget <= starts:
        raise optuna.TrialPruned(f"budget {budget} leaves nothing after the {starts} evaluations of generation 0")
    return config


def config_key(param: str) -> str:
    """The ``--set`` key of the tuned Optuna parameter ``param``: ``kstarts``,
    ``population_size``, ``inherit_epochs`` and ``rates.*`` live in the ``search`` section."""
    sections = {f.name for f in dataclasses.fields(SearchConfig)}
    return param if param.split(".", 1)[0] in sections else f"search.{param}"


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _yaml_text(value: Any) -> str:
    # YAML, not repr: a float such as 1e-05 must read back as a float (PyYAML writes 1.0e-05)
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
    return text[:-3].strip() if text.endswith("\n...") else text


def launch_overrides(base: SearchConfig, params: Mapping[str, Any]) -> list[str]:
    """``KEY=VALUE`` items for ``certevo launch --set`` that rebuild, from the default
    config, the tuning's base config (its settings that differ from the default, run_dir
    aside) with the tuned ``params``."""
    values = _flat(base.to_dict())
    default = _flat(SearchConfig().to_dict())
    chosen = {key: value for key, value in values.items() if key != "run_dir" and default.get(key) != value}
    chosen.update({config_key(name): value for name, value in params.items()})
    return [f"{key}={_yaml_text(value)}" for key, value in chosen.items()]


def launch_command(base: SearchConfig, params: Mapping[str, Any]) -> str:
    """The ``certevo launch --set ...`` shell command of :func:`launch_overrides`."""
    return " ".join(["certevo launch", *(f"--set {shlex.quote(item)}" for item in launch_overrides(base, params))])


def trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial, total: int, elapsed: float) -> str:
    """One progress line for a trial that just ended: finished trials / ``total``, its
    hypervolume, the best so far, its duration and ``elapsed`` seconds since tuning began."""
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    took = f"{trial.duration.total_seconds():.0f} s" if trial.duration is not None else "?"
    seconds = round(elapsed)
    clock = f"{seconds // 60}:{seconds % 60:02d} elapsed"
    if trial.state != optuna.trial.TrialState.COMPLETE:
        return f"trial #{trial.number} {trial.state.name.lower()} after {took} ({len(complete)}/{total} finished); {clock}"
    best = study.best_trial
    return (f"trial {len(complete)}/{total} (#{trial.number}): hypervolume {trial.value:.4f} | best {best.value:.4f} "
            f"(#{best.number}) | {took}, {clock}")


def storage(run_dir: Path) -> optuna.storages.JournalStorage:
    """The study's journal file storage in ``run_dir``."""
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(run_dir / "optuna.journal")))


def tune(
    base: SearchConfig | None,
    run_dir: str | Path,
    trials: int,
    *,
    budget: int = 40,
    observers: Callable[[int, Path], Sequence[SearchObserver]] | None = None,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> optuna.Study:
    """Run trials until the study in ``run_dir`` has ``trials`` finished trials.

    A first call stores ``base`` and ``budget`` in ``<run_dir>/tune.yaml``; later calls
    (``base`` None) resume with those, and refuse a different base config.
    """
    path = Path(run_dir)
    spec_path = path / TUNE_FILE
    if spec_path.is_file():
        saved = yaml.safe_load(spec_path.read_text())
        saved_base = config_from_dict(saved["config"])
        if base is not None and base.digest() != saved_base.digest():
            raise ConfigError(
                f"{path} holds a tuning study of another configuration; resume it without a config "
                "(`certevo tune --run-dir DIR --trials N`) or choose another --run-dir"
            )
        base, budget = saved_base, int(saved["budget"])
    else:
        if base is None:
            raise ConfigError(f"{path} holds no tuning study; pass a config (or none for the default) to start one")
        path.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(yaml.safe_dump({"config": base.to_dict(), "budget": budget}, sort_keys=False))
    sampler = optuna.samplers.TPESampler(seed=derive_seed(base.search.seed, "tune") % (2**32))
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage(path), direction="maximize",
                                sampler=sampler, load_if_exists=True)

    def objective(trial: optuna.Trial) -> float:
        config = suggest_config(trial, base, budget)
        trial_dir = path / "trials" / f"trial-{trial.number:04d}"
        if trial_dir.exists():  # an interrupted trial of a previous session: start it anew
            import shutil

            shutil.rmtree(trial_dir)
        search = Search.create(config, trial_dir, observers(trial.number, trial_dir) if observers else ())
        result = search.run()
        trial.set_user_attr("run_dir", str(trial_dir))
        trial.set_user_attr("evaluations", result.evaluations)
        trial.set_user_attr("front_size", len(result.front))
        return result.hypervolume

    finished = sum(1 for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    remaining = trials - finished
    if remaining > 0:
        callbacks = [lambda study, trial: on_trial(study, trial)] if on_trial else None
        study.optimize(objective, n_trials=remaining, callbacks=callbacks, catch=())
    _write_best(path, study, base)
    return study


def _write_best(path: Path, study: optuna.Study, base: SearchConfig) -> None:
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return
    best = study.best_trial
    data: dict[str, Any] = {"best_trial": best.number, "hypervolume": best.value, "params": best.params,
                            "run_dir": best.user_attrs.get("run_dir"), "trials": len(complete),
                            "launch": launch_command(base, best.params)}
    (path / "best.json").write_text(json.dumps(data, indent=2))
