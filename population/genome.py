"""The genome: one boolean weight mask per prunable layer plus activation choices.

A genome is immutable and identified by a stable content hash. It knows nothing about
torch: masks are numpy boolean arrays, so variation operators stay cheap and pure.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from certevo.population.allocation import layer_kept_counts
from certevo.population.errors import CheckpointError, GenomeError

#: Activation functions a hidden layer may use. "linear" (the identity) grafts a neuron's
#: activation away, which makes it exactly linear for the verifier.
ACTIVATIONS: tuple[str, ...] = ("relu", "leaky_relu", "sigmoid", "tanh", "linear")
#: Activations certevo can build and train but auto_LiRPA 0.3 cannot bound with every
#: method; a candidate using them gets a failed fitness record, not a crash.
UNCERTIFIABLE_ACTIVATIONS: tuple[str, ...] = ("gelu", "elu", "softplus")
KNOWN_ACTIVATIONS: tuple[str, ...] = ACTIVATIONS + UNCERTIFIABLE_ACTIVATIONS

GENOME_FORMAT = "certevo-genome/1"


def _frozen_mask(name: str, mask: Any) -> np.ndarray:
    array = np.asarray(mask)
    if array.dtype != np.bool_:
        if not np.isin(array, (0, 1)).all():
            raise GenomeError(
                f"mask of layer {name!r} must be binary (0/1 or bool); found values "
                f"{np.unique(array)[:5].tolist()}; threshold it first, e.g. `mask > 0`"
            )
        array = array.astype(np.bool_)
    array = np.ascontiguousarray(array).copy()
    array.setflags(write=False)
    return array


def _check_activation(name: str, where: str) -> str:
    if name not in KNOWN_ACTIVATIONS:
        raise GenomeError(
            f"{where} has activation {name!r}, which certevo does not know; "
            f"use one of {', '.join(KNOWN_ACTIVATIONS)}"
        )
    return name


@dataclass(frozen=True, eq=False)
class Genome:
    """Masks (layer name -> bool array shaped like the layer's weight) and activations.

    ``activations[i]`` is the activation of hidden layer ``i``. ``neuron_activations``, when
    given, holds for each hidden layer either ``None`` (the whole layer uses
    ``activations[i]``) or one activation name per neuron (per channel for convolutions),
    which overrides the layer's choice.
    """

    masks: Mapping[str, np.ndarray]
    activations: tuple[str, ...]
    neuron_activations: tuple[tuple[str, ...] | None, ...] | None = None
    _id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.masks:
            raise GenomeError("a genome needs at least one layer mask; got none")
        masks = {str(k): _frozen_mask(str(k), v) for k, v in self.masks.items()}
        activations = tuple(
            _check_activation(a, f"hidden layer {i}") for i, a in enumerate(self.activations)
        )
        neuron = self.neuron_activations
        if neuron is not None:
            if len(neuron) != len(activations):
                raise GenomeError(
                    f"neuron_activations has {len(neuron)} entries but there are "
                    f"{len(activations)} hidden layers; give one entry (or None) per layer"
                )
            neuron = tuple(
                None
                if layer is None
                else tuple(_check_activation(a, f"hidden layer {i} neuron {j}") for j, a in enumerate(layer))
                for i, layer in enumerate(neuron)
            )
            if all(layer is None for layer in neuron):
                neuron = None
        object.__setattr__(self, "masks", masks)
        object.__setattr__(self, "activations", activations)
        object.__setattr__(self, "neuron_activations", neuron)
        object.__setattr__(self, "_id", self._content_hash())

    # -- identity -------------------------------------------------------------------
    def _content_hash(self) -> str:
        digest = hashlib.sha256()
        for name, mask in sorted(self.masks.items()):
            digest.update(f"{name}:{mask.shape}".encode())
            digest.update(np.packbits(mask.ravel()).tobytes())
        digest.update(json.dumps(self.activation_pattern()).encode())
        return digest.hexdigest()[:20]

    @property
    def id(self) -> str:
        """Stable content hash: equal genomes have equal ids, on any machine."""
        return self._id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Genome) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def activation_pattern(self) -> list[Any]:
        """Activation choices as plain JSON data (per layer, or per neuron where set)."""
        neuron = self.neuron_activations or (None,) * len(self.activations)
        return [
            list(per_neuron) if per_neuron is not None else layer
            for layer, per_neuron in zip(self.activations, neuron)
        ]

    def layer_activation_names(self, layer: int) -> tuple[str, ...]:
        """The distinct activations hidden layer ``layer`` uses."""
        if self.neuron_activations is not None and self.neuron_activations[layer] is not None:
            return tuple(sorted(set(self.neuron_activations[layer])))
        return (self.activations[layer],)

    def all_activation_names(self) -> tuple[str, ...]:
        """Every distinct activation anywhere in the genome."""
        names: set[str] = set()
        for layer in range(len(self.activations)):
            names.update(self.layer_activation_names(layer))
        return tuple(sorted(names))

    # -- sparsity -------------------------------------------------------------------
    @property
    def total_weights(self) -> int:
        """Number of prunable weights."""
        return int(sum(m.size for m in self.masks.values()))

    @property
    def kept_weights(self) -> int:
        """Number of prunable weights the masks keep."""
        return int(sum(int(m.sum()) for m in self.masks.values()))

    @property
    def sparsity(self) -> float:
        """Share of prunable weights that are pruned (exact count ratio)."""
        return 1.0 - self.kept_weights / self.total_weights

    def layer_sparsity(self) -> dict[str, float]:
        """Sparsity of each prunable layer."""
        return {name: 1.0 - float(m.sum()) / m.size for name, m in self.masks.items()}

    def empty_layers(self) -> list[str]:
        """Layers whose mask keeps no weight at all (no signal can pass them)."""
        return [name for name, m in self.masks.items() if not m.any()]

    # -- serialisation --------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """JSON-ready description of everything but the mask bits."""
        return {
            "format": GENOME_FORMAT,
            "id": self.id,
            "layers": {name: list(m.shape) for name, m in self.masks.items()},
            "activations": list(self.activations),
            "neuron_activations": (
                None
                if self.neuron_activations is None
                else [None if n is None else list(n) for n in self.neuron_activations]
            ),
            "sparsity": self.sparsity,
        }

    def mask_arrays(self) -> dict[str, np.ndarray]:
        """Masks as uint8 arrays, ready for safetensors."""
        return {name: m.astype(np.uint8) for name, m in self.masks.items()}

    @classmethod
    def from_parts(cls, manifest: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Genome:
        """Rebuild a genome from :meth:`manifest` and :meth:`mask_arrays` output."""
        if not isinstance(manifest, Mapping):
            raise CheckpointError(f"genome manifest must be a JSON object; got {type(manifest).__name__}; the file is damaged")
        if manifest.get("format") != GENOME_FORMAT:
            raise CheckpointError(
                f"genome manifest has format {manifest.get('format')!r}, expected "
                f"{GENOME_FORMAT!r}; it was not written by this version of certevo"
            )
        missing_keys = [k for k in ("layers", "activations") if k not in manifest]
        if missing_keys:
            raise CheckpointError(f"genome manifest lacks {missing_keys}; the file is damaged or was edited")
        layers = manifest["layers"]
        missing = [name for name in layers if name not in arrays]
        if missing:
            raise CheckpointError(f"genome masks missing for layers {missing}; the mask file is incomplete")
        for name, shape in layers.items():
            if list(arrays[name].shape) != list(shape):
                raise CheckpointError(
                    f"mask of layer {name!r} has shape {list(arrays[name].shape)}, manifest says {shape}"
                )
        neuron = manifest.get("neuron_activations")
        genome = cls(
            masks={name: arrays[name] for name in layers},
            activations=tuple(manifest["activations"]),
            neuron_activations=None if neuron is None else tuple(None if n is None else tuple(n) for n in neuron),
        )
        expected = manifest.get("id")
        if expected is not None and expected != genome.id:
            raise CheckpointError(
                f"genome content hash is {genome.id} but the manifest says {expected}; "
                "the masks or the manifest were changed or damaged"
            )
        return genome

    def save(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``<path>.json`` and ``<path>.safetensors``; return both paths."""
        from safetensors.numpy import save

        from certevo.population.files import atomic_write

        base = Path(path)
        json_path, tensor_path = base.with_suffix(".json"), base.with_suffix(".safetensors")
        atomic_write(tensor_path, save(self.mask_arrays()))
        atomic_write(json_path, json.dumps(self.manifest(), indent=2).encode())
        return json_path, tensor_path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Genome:
        """Read a genome written by :meth:`save`."""
        from safetensors.numpy import load_file

        base = Path(path)
        json_path, tensor_path = base.with_suffix(".json"), base.with_suffix(".safetensors")
        for p in (json_path, tensor_path):
            if not p.is_file():
                raise CheckpointError(f"genome file {p} does not exist; pass the path given to Genome.save")
        try:
            manifest = json.loads(json_path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"genome manifest {json_path} is not valid JSON ({exc}); the file is damaged") from exc
        try:
            arrays = load_file(str(tensor_path))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"genome masks {tensor_path} cannot be read ({exc}); the file is damaged") from exc
        return cls.from_parts(manifest, arrays)


def dense_genome(layer_shapes: Mapping[str, Sequence[int]], activations: Sequence[str]) -> Genome:
    """A genome that keeps every weight."""
    return Genome(
        masks={name: np.ones(tuple(shape), dtype=bool) for name, shape in layer_shapes.items()},
        activations=tuple(activations),
    )


def random_genome(
    layer_shapes: Mapping[str, Sequence[int]],
    activations: Sequence[str],
    sparsity: float,
    rng: np.random.Generator,
    allocation: str = "uniform",
) -> Genome:
    """A genome pruned at random to global ``sparsity``, split across layers by
    ``allocation`` (see :mod:`certevo.population.allocation`; ``uniform``: the same sparsity in
    every layer). Exact kept counts per layer; one ``rng.choice`` per layer, in order."""
    counts = layer_kept_counts(layer_shapes, sparsity, allocation)
    masks = {}
    for name, shape in layer_shapes.items():
        size = int(np.prod(shape))
        flat = np.zeros(size, dtype=bool)
        flat[rng.choice(size, size=counts[name], replace=False)] = True
        masks[name] = flat.reshape(tuple(shape))
    return Genome(masks=masks, activations=tuple(activations))
