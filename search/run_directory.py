"""The run directory of a search: the name of every file in it, and reading a run back.

Every module that reads or writes a run directory takes its names from here::

    config.yaml                      the configuration (a resume may raise its budget)
    checkpoint/state.json            the last checkpoint's manifest, and its arrays in
    checkpoint/arrays-<sha>.safetensors   (certevo.population.checkpoint.CheckpointStore)
    evaluations.jsonl                every finished evaluation (certevo.search.journal)
    evaluations.damaged.jsonl        damaged journal lines, set aside
    since_checkpoint.jsonl           asynchronous mode: children proposed and absorbed since the
                                     last checkpoint, replayed by a resume (certevo.search.steady_state)
    weights/<candidate id>.safetensors   trained weights kept for weight inheritance
    front.json                       the final front, written when the search ends
    .certevo.lock                    the driver's lock (certevo.search.run_lock)
    mlflow.db, mlruns/               the default MLflow store and its artifact root
    mlflow_run.json                  the MLflow run the search logs to (a resume continues it)
    artifacts/                       what the tracker writes and uploads: fronts/front_gen_<ggg>.png,
                                     masks/<candidate id>.json and .safetensors,
                                     front.json, front.html, front.png, history.png,
                                     lineage.csv, lineage.png

A remote run directory (``s3://`` ..., see certevo.search.run_storage) also holds the lock
object ``.certevo-lock.json``.

:func:`open_run` reads a run back (configuration, checkpointed state, journal) without
importing torch or Ray, so ``certevo inspect`` and notebooks stay quick.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certevo.population.checkpoint import MANIFEST_NAME, CheckpointStore
from certevo.population.errors import CheckpointError, ConfigError
from certevo.search.command_hint import command_hint

# The configuration, state and journal modules are imported by the functions that read a
# run: run_frames takes its names from here and promises not to load the search, and the
# journal imports this module.
if TYPE_CHECKING:
    from certevo.evaluators.fitness import FitnessRecord
    from certevo.search.config import SearchConfig
    from certevo.search.state import SearchState

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoint"
#: The checkpoint manifest, relative to the run directory (it commits a checkpoint).
MANIFEST = f"{CHECKPOINT_DIR}/{MANIFEST_NAME}"
JOURNAL_FILE = "evaluations.jsonl"
DAMAGED_JOURNAL_FILE = "evaluations.damaged.jsonl"
SINCE_CHECKPOINT_FILE = "since_checkpoint.jsonl"
WEIGHTS_DIR = "weights"
FRONT_FILE = "front.json"
LOCK_FILE = ".certevo.lock"
REMOTE_LOCK_FILE = ".certevo-lock.json"
MLFLOW_RUN_FILE = "mlflow_run.json"
MLFLOW_DATABASE = "mlflow.db"
MLFLOW_ARTIFACT_ROOT = "mlruns"
ARTIFACTS_DIR = "artifacts"
# In ARTIFACTS_DIR (the final front is FRONT_FILE there too):
FRONTS_DIR = "fronts"
FRONT_GENERATION_PNG = "front_gen_{generation:03d}.png"
MASKS_DIR = "masks"
FRONT_HTML = "front.html"
FRONT_PNG = "front.png"
HISTORY_PNG = "history.png"
LINEAGE_CSV = "lineage.csv"
LINEAGE_PNG = "lineage.png"

__all__ = [
    "ARTIFACTS_DIR", "CHECKPOINT_DIR", "CONFIG_FILE", "DAMAGED_JOURNAL_FILE", "FRONTS_DIR", "FRONT_FILE",
    "FRONT_GENERATION_PNG", "FRONT_HTML", "FRONT_PNG", "HISTORY_PNG", "JOURNAL_FILE", "LINEAGE_CSV", "LINEAGE_PNG",
    "LOCK_FILE", "MANIFEST", "MASKS_DIR", "MLFLOW_ARTIFACT_ROOT", "MLFLOW_DATABASE", "MLFLOW_RUN_FILE",
    "REMOTE_LOCK_FILE", "SINCE_CHECKPOINT_FILE", "WEIGHTS_DIR", "OpenedRun", "RunDirectory", "check_same_config", "open_run",
]


@dataclass(frozen=True, init=False)
class RunDirectory:
    """The paths of the files in the run directory ``root`` (see the module docstring)."""

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        """``config.yaml``."""
        return self.root / CONFIG_FILE

    @property
    def checkpoint(self) -> Path:
        """The checkpoint directory."""
        return self.root / CHECKPOINT_DIR

    @property
    def manifest(self) -> Path:
        """The checkpoint manifest ``checkpoint/state.json``."""
        return self.root / MANIFEST

    @property
    def journal(self) -> Path:
        """The evaluation journal."""
        return self.root / JOURNAL_FILE

    @property
    def damaged_journal(self) -> Path:
        """Where damaged journal lines are set aside."""
        return self.root / DAMAGED_JOURNAL_FILE

    @property
    def since_checkpoint(self) -> Path:
        """Asynchronous mode: what happened since the last checkpoint, for a resume to replay."""
        return self.root / SINCE_CHECKPOINT_FILE

    @property
    def weights(self) -> Path:
        """The directory of kept trained weights."""
        return self.root / WEIGHTS_DIR

    @property
    def front(self) -> Path:
        """``front.json``, written when the search ends."""
        return self.root / FRONT_FILE

    @property
    def lock(self) -> Path:
        """The driver's lock file."""
        return self.root / LOCK_FILE

    @property
    def mlflow_run(self) -> Path:
        """``mlflow_run.json``: the MLflow run the search logs to."""
        return self.root / MLFLOW_RUN_FILE

    @property
    def mlflow_database(self) -> Path:
        """The default MLflow store (SQLite)."""
        return self.root / MLFLOW_DATABASE

    @property
    def mlflow_artifact_root(self) -> Path:
        """The default MLflow store's artifact root."""
        return self.root / MLFLOW_ARTIFACT_ROOT

    @property
    def artifacts(self) -> Path:
        """The files the tracker writes and uploads."""
        return self.root / ARTIFACTS_DIR

    def checkpoint_store(self) -> CheckpointStore:
        """The checkpoint store of this run."""
        return CheckpointStore(self.checkpoint)

    def holds_search(self) -> bool:
        """Whether a search was launched here (its config or a checkpoint exists)."""
        return self.config.exists() or self.checkpoint.exists()


@dataclass(frozen=True)
class OpenedRun:
    """A run read back: its ``directory``, ``config`` and last checkpointed ``state``
    (None when the search stopped before its first checkpoint)."""

    directory: RunDirectory
    config: SearchConfig
    state: SearchState | None

    def journal_records(self) -> dict[str, FitnessRecord]:
        """Every valid record of the evaluation journal, by candidate id (first wins),
        including those evaluated after the last checkpoint; reads only."""
        from certevo.search.journal import EvaluationJournal

        return EvaluationJournal(self.directory.root).records()


def open_run(run_dir: str | os.PathLike, *, require_checkpoint: bool = True) -> OpenedRun:
    """The search in ``run_dir``: its configuration and last checkpointed state. Refuses a
    path that is not a run directory, a ``config.yaml`` edited since the checkpoint (apart
    from the budget) and, with ``require_checkpoint``, a run without a checkpoint yet."""
    from certevo.search.config import read_run_config
    from certevo.search.state import SearchState

    path = Path(run_dir).expanduser()
    if not path.exists():
        raise ConfigError(f"run directory {path} does not exist; pass the directory `certevo launch` created (e.g. runs/<name>)")
    if not path.is_dir():
        raise ConfigError(f"run directory {path} is a file, not a directory; pass the directory `certevo launch` created")
    directory = RunDirectory(path)
    if not directory.config.is_file():
        raise CheckpointError(f"{path} is not a certevo run directory (no {CONFIG_FILE}); pass the directory a launch created")
    config = read_run_config(directory.config)
    store = directory.checkpoint_store()
    if not store.exists():
        if require_checkpoint:
            raise CheckpointError(
                f"{path} has no checkpoint yet ({store.manifest_path} is missing): the search stopped before its first "
                f"generation finished; resume it with `{command_hint('resume', path)}`"
            )
        return OpenedRun(directory, config, None)
    state_data, arrays = store.load()
    check_same_config(config, state_data.get("config"), directory.config)
    return OpenedRun(directory, config, SearchState.from_checkpoint(state_data, arrays, str(store.manifest_path)))


def check_same_config(config: SearchConfig, saved: dict[str, Any] | None, where: Path) -> None:
    """Refuse to resume if the config file no longer matches the checkpoint's (apart from
    the budget, which resume may raise, and where it runs)."""
    from certevo.search.config import config_from_dict

    if saved is None:
        raise CheckpointError(f"the checkpoint next to {where} has no configuration; it is damaged or foreign")
    before = config_from_dict(saved)
    same_budget = replace(before, search=replace(before.search, generations=config.search.generations,
                                                 evaluation_budget=config.search.evaluation_budget))
    if same_budget.digest() != config.digest():
        now, then = config.to_dict(), same_budget.to_dict()
        changed = sorted(
            f"{section}.{key}" for section in now if isinstance(now[section], dict)
            for key in now[section] if now[section][key] != then[section].get(key)
        )
        raise CheckpointError(
            f"{where} differs from the configuration the checkpoint was made with (changed: {', '.join(changed)}); "
            "a resumed search must use the same settings: restore the file, or launch a new run directory"
        )
