"""The export format of ONE chosen candidate: its masks plus everything needed to rebuild,
retrain and compare it, as ``<stem>.safetensors`` + ``<stem>.json``.

``<stem>.safetensors`` holds one ``uint8`` (0/1) array per prunable layer, keyed by the
layer name of the model template (``fc0``, ``conv1``...), and, when the search kept them,
the candidate's trained weights (its model's state dict, float32) keyed
``weights/<parameter name>`` (``weights/fc0.weight``...): what ``certevo train
--from-trained`` fine-tunes. Its safetensors header metadata names the format and the
candidate. ``<stem>.json`` is the manifest::

    format            "certevo-export"
    format_version    1
    candidate_id      the genome's content hash
    genome            Genome.manifest(): layer shapes, activations, per-neuron choices
    model             template: kind, input_shape, num_classes, widths, channels
    activations       {"layers": [...], "per_neuron": [[...] | null, ...] | null}
    sparsity          overall share of pruned weights (exact mask count, a float)
    layer_sparsity    {layer name: share of pruned weights}
    fitness           the search's fitness record of the candidate (validation split)
    eps               {"certification": float, "training": float}
    data              name, path, seed, subset, val_fraction, test_fraction
    config_digest     SearchConfig.digest() of the search that found it
    lineage           candidate_id, parents, operator, generation
    certevo_version   version of the certevo that wrote it (certevo.__version__)
    masks_file        name of the safetensors file (informational)
    masks_sha256      sha256 of the safetensors file's bytes
    trained_weights   the parameter names of the trained weights in the file, or null

plus any further JSON entries the writer passes (e.g. ``training`` and
``certification`` settings of the search, ``search_seed``, ``run_dir``).

Writing is atomic per file (temp file, fsync, ``os.replace``): the safetensors file first,
the manifest last, so a manifest on disk always names masks that were fully written.
Reading refuses loudly (:class:`~certevo.population.errors.CheckpointError` naming the file, the
problem and the fix) on missing, damaged (sha256 mismatch, bad JSON, bad masks) or foreign
files; it never guesses. No pickle anywhere; this module imports neither torch nor the
evaluators (it is part of ``population``).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from certevo.population.files import atomic_write
from certevo.population.errors import CheckpointError, ConfigError
from certevo.population.genome import Genome
from certevo.population.manifest import check_format, check_sha256, check_version, read_json, sha256_hex

EXPORT_FORMAT = "certevo-export"
EXPORT_FORMAT_VERSION = 1
_SUFFIXES = (".json", ".safetensors")

#: Entries the caller of :func:`write_export` must give.
REQUIRED_FIELDS = ("model", "fitness", "eps", "data", "config_digest", "lineage")
#: Entries :func:`write_export` computes itself; the caller may not set them.
COMPUTED_FIELDS = (
    "format",
    "format_version",
    "candidate_id",
    "genome",
    "activations",
    "sparsity",
    "layer_sparsity",
    "certevo_version",
    "masks_file",
    "masks_sha256",
    "trained_weights",
)
#: Key prefix of the trained weights in the export's safetensors file.
WEIGHTS_PREFIX = "weights/"

__all__ = [
    "COMPUTED_FIELDS",
    "EXPORT_FORMAT",
    "EXPORT_FORMAT_VERSION",
    "REQUIRED_FIELDS",
    "WEIGHTS_PREFIX",
    "Export",
    "certevo_version",
    "export_paths",
    "read_export",
    "write_export",
]


def certevo_version() -> str:
    """This certevo's version (``certevo.__version__``)."""
    from certevo import __version__

    return __version__


def export_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(json_path, safetensors_path)`` of the export at ``path``, which may be the
    ``.json``, the ``.safetensors`` or their common stem (any other suffix is kept as part
    of the stem: ``best.v2`` gives ``best.v2.json``); a leading ``~`` is expanded."""
    base = Path(path).expanduser()
    if base.suffix in _SUFFIXES:
        base = base.with_suffix("")
    if not base.name:
        raise ConfigError(f"export path {str(path)!r} has no file name; pass e.g. exports/best")
    return base.parent / (base.name + ".json"), base.parent / (base.name + ".safetensors")


@dataclass(frozen=True)
class Export:
    """One exported candidate: its :class:`Genome` and its manifest (plain JSON data, a
    private copy: changing it changes nothing on disk), and where it was read from."""

    genome: Genome
    manifest: dict[str, Any]
    json_path: Path
    safetensors_path: Path
    #: The candidate's trained weights (parameter name -> array), if the export has them.
    trained_weights: dict[str, np.ndarray] | None = field(default=None, compare=False, repr=False)

    @property
    def candidate_id(self) -> str:
        """The genome id."""
        return self.genome.id

    @property
    def model(self) -> dict[str, Any]:
        """Template description: kind, input_shape, num_classes, widths, channels."""
        return self.manifest["model"]

    @property
    def data(self) -> dict[str, Any]:
        """Data set description: name, path, seed, subset, val_fraction, test_fraction."""
        return self.manifest["data"]

    @property
    def eps(self) -> dict[str, float]:
        """``{"certification": eps, "training": eps}`` of the search."""
        return self.manifest["eps"]

    @property
    def fitness(self) -> dict[str, Any]:
        """The search's fitness record of this candidate."""
        return self.manifest["fitness"]


# --------------------------------------------------------------------------- writing


def _check_fields(genome: Genome, fields: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(fields, Mapping):
        raise ConfigError(f"manifest_fields must be a mapping; got {type(fields).__name__}")
    reserved = sorted(set(fields) & set(COMPUTED_FIELDS))
    if reserved:
        raise ConfigError(
            f"manifest_fields sets {reserved}, which write_export computes from the genome; "
            "remove them"
        )
    missing = [name for name in REQUIRED_FIELDS if name not in fields]
    if missing:
        raise ConfigError(
            f"manifest_fields lacks {missing}; an export needs {', '.join(REQUIRED_FIELDS)} "
            "(certevo.search.candidate_export.export_candidate fills them from a run directory)"
        )
    try:
        data = json.loads(json.dumps(dict(fields), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"manifest_fields must be JSON data (str, finite numbers, bool, None, lists, dicts); "
            f"{exc}; convert numpy scalars with .item() and tuples are fine"
        ) from exc
    model = data["model"]
    if not isinstance(model, dict) or model.get("kind") not in ("mlp", "cnn"):
        raise ConfigError(
            f"manifest_fields['model'] must describe the template with kind 'mlp' or 'cnn', "
            f"input_shape, num_classes, widths and channels; got {model!r:.200}"
        )
    for key in ("input_shape", "num_classes"):
        if key not in model:
            raise ConfigError(f"manifest_fields['model'] lacks {key!r}; give the template's {key}")
    eps = data["eps"]
    if not isinstance(eps, dict) or not {"certification", "training"} <= set(eps):
        raise ConfigError(
            f"manifest_fields['eps'] must be {{'certification': eps, 'training': eps}}; got {eps!r:.200}"
        )
    lineage = data["lineage"]
    if not isinstance(lineage, dict) or lineage.get("candidate_id") != genome.id:
        found = lineage.get("candidate_id") if isinstance(lineage, dict) else lineage
        raise ConfigError(
            f"manifest_fields['lineage'] describes candidate {found!r} but the genome is "
            f"{genome.id}; pass the lineage record of the exported genome"
        )
    fitness = data["fitness"]
    if not isinstance(fitness, dict) or fitness.get("candidate_id", genome.id) != genome.id:
        found = fitness.get("candidate_id") if isinstance(fitness, dict) else fitness
        raise ConfigError(
            f"manifest_fields['fitness'] is the record of candidate {found!r:.80} but the genome "
            f"is {genome.id}; pass the fitness record of the exported genome"
        )
    return data


def _check_trained(genome: Genome, weights: Mapping[str, Any], where: str) -> dict[str, np.ndarray]:
    """Trained weights as float32 arrays, refused unless every prunable layer's weight is
    there, shaped like its mask and zero wherever the mask prunes."""
    arrays = {str(k): np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in weights.items()}
    for name, mask in genome.masks.items():
        weight = arrays.get(f"{name}.weight")
        if weight is None or weight.shape != mask.shape:
            found = None if weight is None else list(weight.shape)
            raise CheckpointError(f"{where}: trained weight {name}.weight is {found}, the mask is {list(mask.shape)}; "
                                  "the weights belong to another candidate")
        leaked = int(np.count_nonzero(weight[~mask]))
        if leaked:
            raise CheckpointError(f"{where}: {leaked} weights of layer {name} are non-zero where the mask prunes them; "
                                  "the weights belong to another candidate or were changed")
    return arrays


def write_export(
    path: str | os.PathLike,
    genome: Genome,
    manifest_fields: Mapping[str, Any],
    trained_weights: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``genome`` and ``manifest_fields`` (see the module docstring; the entries in
    :data:`REQUIRED_FIELDS` are required) as an export at ``path`` (the stem, or either
    file name), with ``trained_weights`` (a state dict of numpy arrays or tensors, pruned
    entries exactly zero) if given. Creates the parent directory, replaces an existing
    export of that name. Returns ``(json_path, safetensors_path)``."""
    from safetensors.numpy import save as save_bytes

    if not isinstance(genome, Genome):
        raise ConfigError(f"write_export needs a certevo.population.genome.Genome; got {type(genome).__name__}")
    fields = _check_fields(genome, manifest_fields)
    json_path, tensor_path = export_paths(path)
    arrays = genome.mask_arrays()
    trained = None
    if trained_weights is not None:
        trained = _check_trained(genome, trained_weights, "write_export")
        arrays.update({WEIGHTS_PREFIX + k: v for k, v in trained.items()})
    blob = save_bytes(
        arrays,
        metadata={"format": EXPORT_FORMAT, "format_version": str(EXPORT_FORMAT_VERSION), "candidate_id": genome.id},
    )
    genome_manifest = genome.manifest()
    manifest: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "candidate_id": genome.id,
        "genome": genome_manifest,
        "activations": {
            "layers": genome_manifest["activations"],
            "per_neuron": genome_manifest["neuron_activations"],
        },
        "sparsity": genome.sparsity,
        "layer_sparsity": genome.layer_sparsity(),
        **fields,
        "certevo_version": certevo_version(),
        "masks_file": tensor_path.name,
        "masks_sha256": sha256_hex(blob),
        "trained_weights": sorted(trained) if trained is not None else None,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(tensor_path, blob)
    atomic_write(json_path, (json.dumps(manifest, indent=1) + "\n").encode())
    return json_path, tensor_path


# --------------------------------------------------------------------------- reading

_FIX_PATH = "pass the .json or .safetensors file `certevo export` wrote (or their common stem)"
_FIX_DAMAGED = "export the candidate again from its run directory (`certevo export`)"


def _positive_ints(value: Any, length: int | None = None) -> bool:
    return isinstance(value, list) and (length is None or len(value) == length) and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)


def _check_entries(manifest: dict[str, Any], json_path: Path) -> None:
    """The entries that training and comparison read are of the types :func:`write_export`
    writes; anything else is a damaged or edited manifest."""
    model, data, eps, fitness = (manifest[k] for k in ("model", "data", "eps", "fitness"))
    problems = []
    if not isinstance(model, dict) or model.get("kind") not in ("mlp", "cnn"):
        problems.append(f"model is {model!r:.80} (needs kind mlp or cnn)")
    else:
        if not _positive_ints(model.get("input_shape"), 3):
            problems.append(f"model.input_shape is {model.get('input_shape')!r:.60} (needs three positive integers)")
        num_classes = model.get("num_classes")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            problems.append(f"model.num_classes is {num_classes!r:.60} (needs an integer >= 2)")
        for key in ("widths", "channels"):
            if model.get(key) is not None and not _positive_ints(model.get(key)):
                problems.append(f"model.{key} is {model.get(key)!r:.60} (needs positive integers or null)")
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        problems.append(f"data is {data!r:.80} (needs the data set's name, path, seed, subset and fractions)")
    if not isinstance(eps, dict) or not all(
            isinstance(eps.get(k), (int, float)) and not isinstance(eps.get(k), bool) and 0 <= eps.get(k) <= 1
            for k in ("certification", "training")):
        problems.append(f"eps is {eps!r:.80} (needs certification and training radii in [0, 1])")
    if not isinstance(fitness, dict):
        problems.append(f"fitness is {fitness!r:.80} (needs the search's fitness record)")
    if problems:
        raise CheckpointError(f"export manifest {json_path} is damaged or was edited: {'; '.join(problems)}; {_FIX_DAMAGED}")


def read_export(path: str | os.PathLike) -> Export:
    """Read the export at ``path`` (the ``.json``, the ``.safetensors`` or their stem),
    checking format, version, the masks' sha256 and the genome's content hash."""
    from safetensors.numpy import load as load_bytes

    json_path, tensor_path = export_paths(path)
    if not json_path.is_file():
        given = Path(path)
        if given.is_file() and given.suffix not in _SUFFIXES:
            raise CheckpointError(f"{given} is not a certevo export (exports end in .json / .safetensors); {_FIX_PATH}")
        what = "is a directory" if json_path.is_dir() else "does not exist"
        raise CheckpointError(f"export manifest {json_path} {what}; {_FIX_PATH}")
    manifest = read_json(json_path, lambda exc: (
        f"export manifest {json_path} is not valid JSON ({exc}); it is truncated or damaged; {_FIX_DAMAGED}"
    ))
    check_format(manifest, EXPORT_FORMAT, lambda found: (
        f"{json_path} has format {found!r}, not {EXPORT_FORMAT!r}: it is not a certevo export; {_FIX_PATH}"
    ))
    check_version(manifest, (EXPORT_FORMAT_VERSION,), lambda version: (
        f"{json_path} has export format version {version!r}; this certevo "
        f"reads version {EXPORT_FORMAT_VERSION}; use the certevo version that wrote it "
        f"({manifest.get('certevo_version', 'unknown')}) or export the candidate again"
    ))
    missing = [k for k in (*REQUIRED_FIELDS, "genome", "masks_sha256") if k not in manifest]
    if missing:
        raise CheckpointError(f"export manifest {json_path} lacks {missing}; it is damaged or was edited; {_FIX_DAMAGED}")
    _check_entries(manifest, json_path)
    if not tensor_path.is_file():
        raise CheckpointError(
            f"export masks {tensor_path} (next to {json_path.name}) do not exist; the export is "
            f"incomplete: keep the .json and .safetensors files together, or {_FIX_DAMAGED}"
        )
    blob = tensor_path.read_bytes()
    check_sha256(blob, manifest["masks_sha256"], lambda sha: (
        f"export masks {tensor_path} have sha256 {sha} but {json_path.name} records "
        f"{manifest['masks_sha256']}; the masks are truncated, damaged or were changed "
        f"(or belong to another export); {_FIX_DAMAGED}"
    ))
    try:
        arrays = load_bytes(blob)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"export masks {tensor_path} cannot be read as safetensors ({exc}); {_FIX_DAMAGED}") from exc
    masks = {k: np.asarray(v) for k, v in arrays.items() if not k.startswith(WEIGHTS_PREFIX)}
    try:
        genome = Genome.from_parts(manifest["genome"], masks)
    except (CheckpointError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"export {json_path} does not describe its masks: {exc}; {_FIX_DAMAGED}") from exc
    if manifest.get("candidate_id") != genome.id:
        raise CheckpointError(
            f"export {json_path} names candidate {manifest.get('candidate_id')!r} but its masks are "
            f"candidate {genome.id}; the manifest was edited; {_FIX_DAMAGED}"
        )
    trained = None
    names = manifest.get("trained_weights")
    if names is not None:
        valid = isinstance(names, list) and all(isinstance(n, str) for n in names)
        missing = [n for n in names if WEIGHTS_PREFIX + n not in arrays] if valid else repr(names)
        if missing:
            raise CheckpointError(f"export {json_path} lists trained weights {missing} that {tensor_path.name} lacks; {_FIX_DAMAGED}")
        trained = _check_trained(genome, {n: arrays[WEIGHTS_PREFIX + n] for n in names}, f"export {tensor_path}")
    return Export(genome=genome, manifest=copy.deepcopy(manifest), json_path=json_path, safetensors_path=tensor_path,
                  trained_weights=trained)
