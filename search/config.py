"""The search configuration: YAML in, validated frozen dataclasses out.

An empty config is the digits default. Unknown keys and bad values raise ConfigError
naming the field, the value received and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from certevo.evaluators.names import DATASETS, DEVICES
from certevo.evaluators.settings import CertificationSettings, TrainingSettings
from certevo.evaluators.spec import DataSpec, EvaluationSpec, ModelSpec
from certevo.population.errors import CertevoError, CheckpointError, ConfigError, check_choice, reject
from certevo.population.allocation import ALLOCATIONS
from certevo.population.genome import KNOWN_ACTIVATIONS

STRATEGIES = ("nsga2", "coevolution")
INITS = ("kstarts+prune", "kstarts")
KSTART_SCORES = ("magnitude", "gradient", "combined", "certified")
EXTRA_OBJECTIVES = ("clean_accuracy", "evaluation_time")
MODES = ("generational", "asynchronous")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _str_list(field_name: str, value: Any, example: str) -> None:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        reject(field_name, value, "must be a list of names", f"e.g. {example}")


@dataclass(frozen=True)
class GenomeSpace:
    """Which genomes the search may produce."""

    sparsities: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
    activations: tuple[str, ...] = ("relu", "leaky_relu", "sigmoid", "tanh")
    per_neuron: bool = False
    min_sparsity: float = 0.3
    max_sparsity: float = 0.995
    #: How K-starts masks split a target sparsity across layers (certevo.population.allocation).
    allocation: str = "erk"

    def __post_init__(self) -> None:
        if not isinstance(self.sparsities, (list, tuple)) or not self.sparsities:
            reject("genome.sparsities", self.sparsities, "must list at least one target sparsity", "e.g. [0.5, 0.9, 0.98]")
        for s in self.sparsities:
            if not _is_number(s) or not 0 <= s < 1:
                reject("genome.sparsities", list(self.sparsities), "must hold numbers in [0, 1)", "e.g. [0.5, 0.9, 0.98]")
        _str_list("genome.activations", self.activations, "[relu, tanh]")
        if not self.activations:
            reject("genome.activations", list(self.activations), "must list at least one activation", "e.g. [relu]")
        for a in self.activations:
            if a not in KNOWN_ACTIVATIONS:
                reject("genome.activations", list(self.activations), f"contains unknown activation {a!r}",
                       f"use some of {', '.join(KNOWN_ACTIVATIONS)}")
        check_choice("genome.allocation", self.allocation, ALLOCATIONS, "a known allocation")
        if not isinstance(self.per_neuron, bool):
            reject("genome.per_neuron", self.per_neuron, "must be true or false",
                   "true lets every neuron choose its own activation")
        if not (_is_number(self.min_sparsity) and _is_number(self.max_sparsity)) \
                or not 0 <= self.min_sparsity < self.max_sparsity < 1:
            reject("genome.min_sparsity/max_sparsity", (self.min_sparsity, self.max_sparsity),
                   "must satisfy 0 <= min_sparsity < max_sparsity < 1", "e.g. 0.3 and 0.995")


@dataclass(frozen=True)
class OperatorRates:
    """Probabilities of the variation operators.

    With weight inheritance (search.weight_inheritance, the default) a child has one
    parent and gets exactly one guided mask operator (certevo.population.guided_operators:
    sparsify, reallocate or regrow, equally likely; ``regrow_fraction`` is the share
    regrown), then an activation mutation with probability ``activation``. Without it,
    ``crossover``, ``prune_regrow``, ``density`` and ``density_step`` drive the random
    operators of certevo.population.operators.
    """

    crossover: float = 0.5
    prune_regrow: float = 0.5
    density: float = 0.5
    activation: float = 0.3
    regrow_fraction: float = 0.1
    density_step: float = 0.05

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _is_number(value) or not 0 <= value <= 1:
                reject(f"search.rates.{f.name}", value, "must be a probability in [0, 1]", "e.g. 0.5")


@dataclass(frozen=True)
class SearchSettings:
    """The evolutionary search itself."""

    strategy: str = "nsga2"
    population_size: int = 12
    generations: int = 8
    evaluation_budget: int | None = None
    kstarts: int = 2
    kstarts_score: str = "magnitude"
    rates: OperatorRates = field(default_factory=OperatorRates)
    #: Children start from their parent's trained weights (Lamarckian: training adds up
    #: along a lineage) and their masks change by magnitude and gradient.
    weight_inheritance: bool = True
    #: Epochs of a child that starts from trained weights.
    inherit_epochs: int = 5
    #: Generation 0: ``kstarts`` = K random masks per target sparsity; ``kstarts+prune``
    #: adds the best least-sparse start pruned by magnitude to every other target sparsity.
    init: str = "kstarts+prune"
    #: Keep alive, and breed as if on the front, the best candidate between each pair of
    #: consecutive target sparsities (genome.sparsities), so every level keeps a lineage.
    #: Off by default: measured end to end (benchmarks/end_to_end.py, 3 seeds) it moved the
    #: exported candidates to lower sparsity without raising their certified accuracy.
    level_champions: bool = False
    extra_objectives: tuple[str, ...] = ()
    seed: int = 0
    #: Populations evolving in parallel (search.islands); every migration_interval
    #: generations each sends its `migrants` best members to the next (a ring).
    islands: int = 1
    migration_interval: int = 2
    migrants: int = 2
    #: ``generational``: each generation waits for all its offspring (bit-reproducible);
    #: ``asynchronous``: steady state, a new child whenever a worker frees up
    #: (certevo.search.steady_state).
    mode: str = "generational"
    #: Asynchronous mode: evaluations between checkpoints (one is written at the first
    #: generation end after that many). null: automatic, at a generation end once the
    #: driver has worked 20 times as long as the last checkpoint took, so checkpoints take
    #: at most about 5 % of its time however large the archive (the generational mode
    #: checkpoints every generation). Nothing is lost in between: since_checkpoint.jsonl
    #: and the journal hold what came after. Does not change results.
    checkpoint_every: int | None = None

    def __post_init__(self) -> None:
        check_choice("search.strategy", self.strategy, STRATEGIES, "a strategy")
        check_choice("search.mode", self.mode, MODES, "a search mode")
        for name, minimum in (("population_size", 2), ("generations", 0), ("kstarts", 1), ("inherit_epochs", 1),
                              ("islands", 1), ("migration_interval", 1), ("migrants", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < minimum:
                reject(f"search.{name}", value, f"must be an integer >= {minimum}", f"e.g. {max(minimum, 4)}")
        if self.evaluation_budget is not None and (not _is_int(self.evaluation_budget) or self.evaluation_budget < 1):
            reject("search.evaluation_budget", self.evaluation_budget, "must be a positive integer or null",
                   "e.g. 100, or null to stop after search.generations")
        if self.checkpoint_every is not None and (not _is_int(self.checkpoint_every) or self.checkpoint_every < 1):
            reject("search.checkpoint_every", self.checkpoint_every, "must be a positive integer or null",
                   "e.g. 100 (evaluations between checkpoints), or null to let the driver choose")
        check_choice("search.init", self.init, INITS, "a way to start a search")
        if not isinstance(self.weight_inheritance, bool):
            reject("search.weight_inheritance", self.weight_inheritance, "must be true or false",
                   "true: children start from their parent's trained weights")
        if self.init == "kstarts+prune" and not self.weight_inheritance:
            reject("search.init", self.init, "prunes trained K-start weights, so it needs search.weight_inheritance: true",
                   "set search.weight_inheritance: true, or use search.init: kstarts")
        if not isinstance(self.level_champions, bool):
            reject("search.level_champions", self.level_champions, "must be true or false",
                   "true keeps the best candidate of every target-sparsity band alive")
        check_choice("search.kstarts_score", self.kstarts_score, KSTART_SCORES, "a K-starts score")
        _str_list("search.extra_objectives", self.extra_objectives, "[clean_accuracy]")
        for objective in self.extra_objectives:
            if objective not in EXTRA_OBJECTIVES:
                reject("search.extra_objectives", list(self.extra_objectives), f"contains unknown objective {objective!r}",
                       f"use some of {', '.join(EXTRA_OBJECTIVES)}")
        if not _is_int(self.seed) or self.seed < 0:
            reject("search.seed", self.seed, "must be a non-negative integer", "e.g. 0")
        if self.islands > 1 and self.migrants >= self.population_size:
            reject("search.migrants", self.migrants, f"must be below search.population_size ({self.population_size})",
                   f"e.g. {max(1, self.population_size // 4)}")


@dataclass(frozen=True)
class ClusterSettings:
    """Where the evaluations run."""

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: int = 1
    #: Host islands in Ray actors; null: only when search.islands > 1.
    island_actors: bool | None = None
    #: Where evaluator actors train and certify: cpu or cuda; null: cuda when Ray sees a GPU.
    device: str | None = None
    #: GPUs each evaluator actor reserves on cuda (fractions share a GPU: 0.25 = 4 actors).
    gpus_per_actor: float = 1.0
    #: Most candidates an actor trains in one stacked pass; null: 16 on cpu, 128 on cuda.
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            reject("cluster.address", self.address, "must be a Ray address or null",
                   "e.g. auto, HOST:PORT or ray://HOST:10001; null starts a local Ray")
        if self.device is not None and (not isinstance(self.device, str) or self.device not in DEVICES):
            reject("cluster.device", self.device, "is not a device", f"use one of {', '.join(DEVICES)}, or null to pick cuda when Ray sees a GPU")
        if isinstance(self.gpus_per_actor, bool) or not isinstance(self.gpus_per_actor, (int, float)) or not 0 < self.gpus_per_actor <= 8:
            reject("cluster.gpus_per_actor", self.gpus_per_actor, "must be a number in (0, 8]", "e.g. 1, or 0.25 for four actors per GPU")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1):
            reject("cluster.batch_size", self.batch_size, "must be a positive integer or null", "null picks 16 on cpu and 128 on cuda")
        if self.island_actors is not None and not isinstance(self.island_actors, bool):
            reject("cluster.island_actors", self.island_actors, "must be true, false or null",
                   "null hosts islands in actors only when search.islands > 1")
        if self.actors is not None and (not _is_int(self.actors) or self.actors < 1):
            reject("cluster.actors", self.actors, "must be a positive integer or null", "null uses every CPU Ray offers")
        if not _is_int(self.cpus_per_actor) or self.cpus_per_actor < 1:
            reject("cluster.cpus_per_actor", self.cpus_per_actor, "must be a positive integer", "e.g. 1")


@dataclass(frozen=True)
class SearchConfig:
    """The whole configuration of one search."""

    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    genome: GenomeSpace = field(default_factory=GenomeSpace)
    training: TrainingSettings = field(default_factory=lambda: TrainingSettings(epochs=10))
    certification: CertificationSettings = field(default_factory=CertificationSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    run_dir: str = "runs/default"

    def __post_init__(self) -> None:
        check_choice("data.name", self.data.name, DATASETS, "a data set")

    def evaluation_spec(self) -> EvaluationSpec:
        """What every evaluator actor is built from."""
        return EvaluationSpec(self.data, self.model, self.training, self.certification, self.search.seed)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (round-trips through :func:`config_from_dict`)."""
        return json.loads(json.dumps(asdict(self)))

    def digest(self) -> str:
        """A short hash of everything that changes results (run_dir, cluster and
        how often to checkpoint excluded).
        Settings added after runs existed count only away from their default, so the digest
        of an earlier run (its journal records, checkpoint, exports) stays what it was."""
        data = self.to_dict()
        data.pop("run_dir")
        data.pop("cluster")
        for section, key in _RUN_SETTINGS:
            data[section].pop(key)
        for (section, key), default in _LATER_SETTINGS.items():
            if data[section].get(key) == default:
                data[section].pop(key)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


#: Settings of how a search runs rather than what it computes: left out of the digest, so
#: resume accepts a changed value.
_RUN_SETTINGS: tuple[tuple[str, str], ...] = (("search", "checkpoint_every"),)

#: Settings added after runs were made, with the default that gives the earlier behaviour.
_LATER_SETTINGS: dict[tuple[str, str], Any] = {("search", "mode"): "generational"}


_SECTIONS: dict[str, type] = {
    "data": DataSpec,
    "model": ModelSpec,
    "genome": GenomeSpace,
    "training": TrainingSettings,
    "certification": CertificationSettings,
    "search": SearchSettings,
    "cluster": ClusterSettings,
}


def _build(cls: type, values: Any, path: str, defaults: Any = None) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        reject(path, values, "must be a mapping of settings", f"write it as `{path}: {{key: value}}`")
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.name.startswith("_")}
    unknown = sorted(set(values) - set(fields), key=str)
    if unknown:
        reject(f"{path}.{unknown[0]}", values[unknown[0]], "is not a known setting",
               f"the settings of {path} are: {', '.join(fields)}")
    kwargs = {}
    for name, value in values.items():
        if name == "rates" and cls is SearchSettings:
            value = _build(OperatorRates, value, f"{path}.rates")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        if defaults is not None:
            return dataclasses.replace(defaults, **kwargs)
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}; check the value types against the README") from exc


def config_from_dict(values: dict[str, Any] | None) -> SearchConfig:
    """Validate a plain mapping (e.g. parsed YAML) into a SearchConfig."""
    if values is not None and not isinstance(values, dict):
        reject("the configuration", values, "must be a mapping of sections (data, model, search...)",
               "write it as `section: {key: value}`, e.g. `search: {generations: 4}`")
    values = dict(values or {})
    unknown = sorted(set(values) - set(_SECTIONS) - {"run_dir"}, key=str)
    if unknown:
        reject(unknown[0], values[unknown[0]], "is not a known section",
               f"the sections are: {', '.join([*_SECTIONS, 'run_dir'])}")
    default = SearchConfig()
    kwargs: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        if name in values:
            kwargs[name] = _build(cls, values[name], name, getattr(default, name))
    if "run_dir" in values:
        if not isinstance(values["run_dir"], str) or not values["run_dir"]:
            reject("run_dir", values["run_dir"], "must be a directory path", "e.g. runs/my-search")
        kwargs["run_dir"] = values["run_dir"]
    return dataclasses.replace(default, **kwargs)


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-5`` as a number as YAML 1.2 does (YAML 1.1, which
    PyYAML follows, needs ``1.0e-5`` and would hand ``lr: 1e-5`` over as a string)."""


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """A config text (a file or a ``--set`` value) as plain data."""
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass


def _parse_scalar(text: str) -> Any:
    return load_yaml(text) if text != "" else None


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a plain mapping."""
    values = json.loads(json.dumps(values or {}))
    for item in overrides:
        if "=" not in item:
            reject("--set", item, "must look like key=value", "e.g. --set search.generations=4")
        key, text = item.split("=", 1)
        node = values
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                reject("--set", item, f"goes through {part!r}, which is not a section", "check the key path")
        node[parts[-1]] = _parse_scalar(text)
    return values


def read_yaml_mapping(path: str | Path, what: str, error: type[CertevoError], fix: str) -> dict[str, Any]:
    """The mapping in the YAML file at ``path`` (empty file: ``{}``); anything else (a missing
    or unreadable file, binary data, invalid YAML, a list or a string) raises ``error``
    naming ``what`` and the file, with ``fix``."""
    p = Path(path)
    if not p.is_file():
        state = "is a directory" if p.is_dir() else "does not exist"
        raise error(f"{what} {p} {state}; {fix}")
    try:
        text = p.read_bytes().decode("utf-8")
        values = load_yaml(text)
    except OSError as exc:
        raise error(f"{what} {p} cannot be read ({exc.strerror or exc}); {fix}") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{what} {p} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}): it is binary "
                    f"or damaged; {fix}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{what} {p} is not valid YAML ({exc}); {fix}") from exc
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise error(f"{what} {p} must hold a mapping of sections (data, model, search...); got a "
                    f"{type(values).__name__} ({values!r:.60}); {fix}")
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> SearchConfig:
    """Read a YAML config (None: the default; ``~`` is expanded) and apply ``--set`` style overrides."""
    return config_from_dict(_config_values(path, overrides))


def _config_values(path: str | Path | None, overrides: list[str] | None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if path is not None:
        values = read_yaml_mapping(Path(path).expanduser(), "config file", ConfigError,
                                   "pass a YAML file of settings (see the README), or none for the digits default")
    return apply_overrides(values, overrides or [])


#: ``search.mode`` of a launch on a Ray cluster (an address) that does not set it: measured
#: with benchmarks/scaling.py and benchmarks/async_quality.py, it keeps a cluster's workers
#: busy at equal search quality (README, "Asynchronous evolution").
CLUSTER_MODE = "asynchronous"


def load_launch_config(path: str | Path | None, overrides: list[str] | None,
                       address: str | None = None) -> tuple[SearchConfig, str | None]:
    """The configuration of ``certevo launch``: as :func:`load_config`, with ``address``
    (``--address``) as ``cluster.address``; on a cluster (an address from either) a config
    that does not set ``search.mode`` gets :data:`CLUSTER_MODE`. Returns it and, when that
    default applied, a note saying so."""
    values = _config_values(path, overrides)
    cluster, search = values.get("cluster") or {}, values.get("search") or {}
    if not isinstance(cluster, dict) or not isinstance(search, dict):  # config_from_dict says what is wrong
        return config_from_dict(values), None
    if address is not None:
        cluster = values["cluster"] = {**cluster, "address": address}
    note = None
    if cluster.get("address") is not None and "mode" not in search:
        values["search"] = {**search, "mode": CLUSTER_MODE}
        note = (f"search.mode: {CLUSTER_MODE} (the default on a Ray cluster: every worker stays busy; results "
                "are not bit-reproducible; set search.mode: generational for that)")
    return config_from_dict(values), note


def read_run_config(config_path: str | Path) -> SearchConfig:
    """The configuration a run directory's ``config.yaml`` holds; a damaged or edited file
    raises CheckpointError naming the file."""
    fix = "the run directory is damaged or the file was edited; restore config.yaml (its copy is in the checkpoint)"
    values = read_yaml_mapping(config_path, "run configuration", CheckpointError, fix)
    try:
        return config_from_dict(values)
    except ConfigError as exc:
        raise CheckpointError(f"{config_path}: {exc} ({fix})") from exc
