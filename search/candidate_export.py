"""One candidate out of a run directory: choosing it, writing its export, and training an
export to the end (what ``certevo export`` and ``certevo train`` do), as plain functions.

Exporting reads the run's last checkpoint (:func:`certevo.search.run_directory.open_run`),
chooses ONE candidate and writes it with :func:`certevo.population.export.write_export`.

Choosing (exactly one rule):

* ``candidate_id``: any successfully evaluated candidate of the archive (not only the
  front); a unique prefix of its id is enough.
* ``min_sparsity=S``: of the Pareto front members with sparsity >= S, the one with the
  best certified accuracy (ties: the sparser, then the better clean accuracy).
* ``knee=True``: the knee of the front (sparsity vs certified accuracy, both as raw
  fractions in [0, 1], no rescaling): the member farthest from the straight line through
  the front's two extremes (least and most sparse), on the side of the ideal point (1, 1).
  A member below that line (a concave part of the front) never wins over one above it.
  With one or two members, or all on the line, the best certified accuracy wins.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any


from certevo.evaluators.final_training import REPORT_FILE, FinalReport, save_final, train_final
from certevo.evaluators.models import make_template
from certevo.population.errors import CheckpointError, ConfigError
from certevo.population.export import Export, export_paths, read_export, write_export
from certevo.search.config import SearchConfig
from certevo.search.inspect_run import resolve_id
from certevo.search.input_checks import can_create_in, check_output_file
from certevo.search.journal import EvaluationJournal
from certevo.search.run_directory import open_run
from certevo.search.state import Candidate, SearchState, split_trained

#: Input shapes of the data sets whose shape is fixed (others are read from the data).
_KNOWN_INPUT_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "kmnist": (1, 28, 28)}

__all__ = ["choose_candidate", "default_final_dir", "export_candidate", "knee_point", "train_exported"]


# --------------------------------------------------------------------------- the run


def knee_point(points: list[tuple[float, float]]) -> int:
    """Index of the knee of ``points`` (sparsity, certified accuracy): the largest signed
    distance to the line through the least and the most sparse point, positive towards
    (1, 1); ties (and fronts of fewer than three points) go to the best certified
    accuracy, then the lower index."""
    if not points:
        raise ConfigError("the front is empty; no candidate to choose")
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    (sa, ca), (sb, cb) = points[order[0]], points[order[-1]]
    dx, dy = sb - sa, cb - ca
    length = math.hypot(dx, dy)

    def distance(i: int) -> float:
        if length == 0:
            return 0.0
        s, c = points[i]
        return ((s - sa) * -dy + (c - ca) * dx) / length

    return max(range(len(points)), key=lambda i: (round(distance(i), 12), points[i][1], -i))


def _by_id(state: SearchState, candidate_id: str) -> Candidate:
    candidate = state.archive[resolve_id(state, candidate_id)]
    if not candidate.record.ok:
        raise ConfigError(
            f"candidate {candidate.id} failed its evaluation ({candidate.record.failure}); there is nothing to "
            "export; choose another candidate (e.g. --knee)"
        )
    return candidate


def _front(state: SearchState) -> list[Candidate]:
    front = state.front()
    if not front:
        raise ConfigError(
            f"the run has no successfully evaluated candidate ({len(state.archive)} evaluations, all failed); "
            "nothing to export; list the failures with `certevo inspect RUN_DIR` and start a new search"
        )
    return front


def _by_min_sparsity(state: SearchState, min_sparsity: float) -> Candidate:
    if isinstance(min_sparsity, bool) or not isinstance(min_sparsity, (int, float)) or not 0 <= min_sparsity <= 1:
        raise ConfigError(f"--min-sparsity must be a number in [0, 1]; got {min_sparsity!r}; e.g. 0.9")
    front = _front(state)
    eligible = [c for c in front if c.record.sparsity >= min_sparsity - 1e-12]
    if not eligible:
        top = max(c.record.sparsity for c in front)
        raise ConfigError(
            f"no front member has sparsity >= {min_sparsity:g}; the sparsest on the front has {top:.6g}; "
            f"pass --min-sparsity {math.floor(top * 1e4) / 1e4:g} or lower"
        )
    return max(eligible, key=lambda c: (c.record.certified_accuracy, c.record.sparsity, c.record.clean_accuracy, c.id))


def _by_knee(state: SearchState) -> Candidate:
    front = sorted(_front(state), key=lambda c: (c.record.sparsity, c.id))
    return front[knee_point([c.record.objectives for c in front])]


def choose_candidate(
    run_dir: str | os.PathLike,
    *,
    candidate_id: str | None = None,
    min_sparsity: float | None = None,
    knee: bool = False,
) -> tuple[Candidate, SearchState, SearchConfig]:
    """The candidate chosen by exactly one rule (see the module docstring), with the run's
    state and configuration."""
    given = [name for name, on in (("--id", candidate_id is not None), ("--min-sparsity", min_sparsity is not None),
                                   ("--knee", bool(knee))) if on]
    if len(given) != 1:
        raise ConfigError(
            f"choose the candidate with exactly one of --id, --min-sparsity, --knee; got "
            f"{', '.join(given) if given else 'none'}; e.g. --knee, or --min-sparsity 0.9"
        )
    run = open_run(run_dir)
    config, state = run.config, run.state
    if candidate_id is not None:
        candidate = _by_id(state, candidate_id)
    elif min_sparsity is not None:
        candidate = _by_min_sparsity(state, min_sparsity)
    else:
        candidate = _by_knee(state)
    return candidate, state, config


# --------------------------------------------------------------------------- exporting


def _model_fields(config: SearchConfig, candidate: Candidate) -> dict[str, Any]:
    """The template the candidate was built from, with every size resolved: the genome's
    layer shapes are the architecture, so widths/channels come from them (an export must
    not depend on certevo's defaults of the day; a config that left ``model.widths`` unset
    may predate a change of the default). Sizes the config sets explicitly must agree."""
    masks = candidate.genome.masks
    conv = [m.shape for name, m in masks.items() if name.startswith("conv")]
    fc = [m.shape for name, m in masks.items() if name.startswith("fc")]
    kind = config.model.kind
    widths = [int(shape[0]) for shape in fc[:-1]]
    channels = [int(shape[0]) for shape in conv] if kind == "cnn" else None
    num_classes = int(fc[-1][0]) if fc else 0
    input_shape = _KNOWN_INPUT_SHAPES.get(config.data.name)
    if input_shape is None:  # e.g. npz: only the data knows
        data = config.data.load()
        input_shape, num_classes = tuple(data.input_shape), data.num_classes
    explicit = {"model.widths": (config.model.widths, widths), "model.channels": (config.model.channels, channels)}
    for field_name, (configured, inferred) in explicit.items():
        if configured is not None and inferred is not None and list(configured) != inferred:
            raise CheckpointError(
                f"candidate {candidate.id} has {field_name.split('.')[1]} {inferred} but config.yaml sets "
                f"{field_name}: {list(configured)}; config.yaml does not match the checkpoint; restore it"
            )
    got = {name: tuple(m.shape) for name, m in masks.items()}
    try:
        template = make_template(kind, input_shape, num_classes, widths=widths, channels=channels)
        shapes = template.layer_shapes()
    except ConfigError as exc:
        shapes, template = str(exc), None
    if template is None or got != shapes:
        raise CheckpointError(
            f"candidate {candidate.id} has layers {got}, which a {kind} model for {config.data.name} data "
            f"(input {list(input_shape)}) cannot have ({shapes}); config.yaml does not match the checkpoint; restore it"
        )
    return {
        "kind": template.kind,
        "input_shape": list(template.input_shape),
        "num_classes": template.num_classes,
        "widths": list(template.widths),
        "channels": list(template.channels) if template.kind == "cnn" else None,
    }


def _lineage_fields(state: SearchState, candidate_id: str) -> dict[str, Any]:
    if candidate_id in state.lineage:
        record = state.lineage.get(candidate_id)
        return {"candidate_id": candidate_id, "parents": list(record.parent_ids), "operator": record.operator,
                "generation": record.generation}
    return {"candidate_id": candidate_id, "parents": [], "operator": None, "generation": None}


def export_candidate(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    candidate_id: str | None = None,
    min_sparsity: float | None = None,
    knee: bool = False,
) -> tuple[Path, Path]:
    """Choose a candidate of the run in ``run_dir`` (see :func:`choose_candidate`) and
    write it to ``out`` (a stem or either file name; an existing directory gets
    ``<out>/<candidate id>.json`` / ``.safetensors``). Returns ``(json_path, st_path)``."""
    run_dir = Path(run_dir).expanduser()
    target = check_output_file(out, "--output", allow_dir=True)
    candidate, state, config = choose_candidate(run_dir, candidate_id=candidate_id, min_sparsity=min_sparsity, knee=knee)
    if target.is_dir():
        target = target / candidate.id
    data = config.data
    fields = {
        "model": _model_fields(config, candidate),
        "fitness": candidate.record.to_dict(),
        "eps": {"certification": config.certification.eps, "training": config.training.eps},
        "data": {"name": data.name, "path": data.path, "seed": data.seed, "subset": data.subset,
                 "val_fraction": data.val_fraction, "test_fraction": data.test_fraction},
        "config_digest": config.digest(),
        "lineage": _lineage_fields(state, candidate.id),
        "training": config.training.to_dict(),
        "certification": config.certification.to_dict(),
        "search_seed": config.search.seed,
        "run_dir": str(Path(run_dir).resolve()),
        "run_generation": state.generation,
    }
    arrays = state.weights.get(candidate.id) or EvaluationJournal(Path(run_dir)).weights(candidate.id)
    trained = split_trained(arrays)[0] if arrays else None
    return write_export(target, candidate.genome, fields, trained_weights=trained)


# --------------------------------------------------------------------------- final training


def default_final_dir(export_path: str | os.PathLike) -> Path:
    """Where :func:`train_exported` writes by default: ``<stem>-final/`` next to the export."""
    json_path, _ = export_paths(export_path)
    return json_path.with_name(json_path.stem + "-final")


def train_exported(
    path: str | os.PathLike | Export,
    out_dir: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    **overrides: Any,
) -> tuple[FinalReport, Path]:
    """Read the export at ``path``, train it to the end (:func:`certevo.evaluators.final_training.train_final`,
    which takes ``overrides`` such as ``epochs``, ``method``, ``eps``, ``lr``, ``batch_size``,
    ``data_path``, ``seed``, ``progress``) and save ``report.json`` + ``weights.safetensors``
    in ``out_dir`` (default :func:`default_final_dir`). Refuses, before training, to
    overwrite an earlier report unless ``overwrite``."""
    import inspect

    accepted = [name for name, p in inspect.signature(train_final).parameters.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise ConfigError(f"final training has no setting {unknown[0]!r}; the settings are: {', '.join(accepted)}")
    export = path if isinstance(path, Export) else read_export(path)
    directory = Path(out_dir).expanduser() if out_dir is not None else default_final_dir(export.json_path)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"output directory {directory} is a file; pass a directory for report.json and weights.safetensors")
    problem = can_create_in(directory)
    if problem:
        raise ConfigError(f"output directory {directory} cannot be created: {problem}; pass a directory you can write (-o)")
    if (directory / REPORT_FILE).exists() and not overwrite:
        raise ConfigError(
            f"{directory / REPORT_FILE} already exists (an earlier final training); pass another output "
            "directory, or overwrite=True (--force) to replace it"
        )
    report = train_final(export, **overrides)
    save_final(report, report.model, directory)
    return report, directory
