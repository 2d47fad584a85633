"""Checkpoint store: a search's state as one JSON manifest plus one safetensors file.

No pickle: state is JSON, arrays are ``safetensors.numpy``. Also helpers to pack genomes
into arrays + manifests and to keep a ``numpy`` RNG's state in JSON.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from certevo.population.files import TMP_PREFIX, atomic_write
from certevo.population.errors import CheckpointError, ConfigError
from certevo.population.genome import Genome
from certevo.population.manifest import check_format, check_sha256, check_version, read_json, sha256_hex

CHECKPOINT_FORMAT = "certevo-checkpoint"
CHECKPOINT_FORMAT_VERSION = 2
#: Versions ``load`` reads: 1 (before manifests were hashed) and 2.
READABLE_VERSIONS = (1, 2)
MANIFEST_NAME = "state.json"
_ARRAYS_PATTERN = re.compile(r"^arrays-[0-9a-f]{16}\.safetensors$")

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "MANIFEST_NAME",
    "READABLE_VERSIONS",
    "CheckpointStore",
    "manifest_sha256",
    "pack_genomes",
    "restore_rng",
    "rng_state",
    "unpack_genomes",
]


class CheckpointStore:
    """The latest checkpoint of one search, in ``directory``.

    Layout: ``state.json`` (the manifest) and ``arrays-<sha256[:16]>.safetensors``. The
    manifest holds ``format`` (``"certevo-checkpoint"``), ``format_version`` (2),
    ``generation``, ``arrays_file``, ``arrays_sha256``, the caller's JSON ``state`` and
    ``manifest_sha256``: :func:`manifest_sha256` of everything else in it. So both files
    are covered by a hash: an edited value anywhere in ``state.json`` is refused on load
    like damaged arrays are, instead of the resumed search silently diverging. Version 1
    manifests (written before that hash existed) are still read, without it: their
    arrays are checked as before.

    Contract:

    * Only the search driver writes, one ``save`` at a time (not thread- or
      process-safe for concurrent writers). Actors never write checkpoints.
    * ``save`` is atomic: the arrays go to a content-named file (temp file, fsync,
      ``os.replace``), then the manifest the same way — replacing ``state.json`` is the
      commit. A crash at any point leaves the previous checkpoint loadable; leftover
      temp files are ignored by ``load`` and removed by the next ``save``, as are arrays
      files the manifest no longer names. Only the latest generation is kept.
    * Snapshots are never mutated: ``save`` serialises its arguments at call time and
      ``load`` returns fresh objects, so neither side can change a stored checkpoint.
    * ``load`` refuses loudly (:class:`~certevo.population.errors.CheckpointError` naming the
      file, what is wrong and what to do) on a missing, truncated, damaged (sha256
      mismatch of the arrays or of the manifest itself) or foreign (other format name or
      version) checkpoint; it never falls back
      to something else silently.
    * JSON round trip: tuples in ``state`` come back as lists, dict keys as strings.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    @property
    def manifest_path(self) -> Path:
        """Path of the manifest (``state.json``)."""
        return self.directory / MANIFEST_NAME

    def exists(self) -> bool:
        """Whether a checkpoint has been committed in the directory (not whether it is
        intact: ``load`` checks that)."""
        return self.manifest_path.is_file()

    # -- writing --------------------------------------------------------------------
    def save(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray], generation: int) -> Path:
        """Atomically replace the checkpoint with ``state`` (JSON data), ``arrays`` and
        ``generation``; return the manifest path."""
        from safetensors.numpy import save as save_bytes

        if isinstance(generation, bool) or not isinstance(generation, (int, np.integer)) or generation < 0:
            raise ConfigError(f"checkpoint generation must be an integer >= 0; got {generation!r}")
        try:
            state_data = json.loads(json.dumps(dict(state)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"checkpoint state must be JSON data (str, numbers, bool, None, lists, dicts); "
                f"{exc}; put arrays in `arrays`, convert numpy scalars with .item()"
            ) from exc
        tensors = {}
        for key, value in arrays.items():
            if not isinstance(key, str) or not key:
                raise ConfigError(f"checkpoint array keys must be non-empty strings; got {key!r}")
            if not isinstance(value, np.ndarray):
                raise ConfigError(
                    f"checkpoint array {key!r} must be a numpy array; got {type(value).__name__}; "
                    "convert torch tensors with .detach().cpu().numpy()"
                )
            tensors[key] = np.array(value, order="C", copy=True)  # keeps 0-d shapes
        try:
            blob = save_bytes(tensors)
        except Exception as exc:  # safetensors raises its own error types
            raise ConfigError(f"checkpoint arrays cannot be stored with safetensors ({exc}); use numeric or bool arrays") from exc
        sha = sha256_hex(blob)
        arrays_name = f"arrays-{sha[:16]}.safetensors"
        manifest = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "generation": int(generation),
            "arrays_file": arrays_name,
            "arrays_sha256": sha,
            "state": state_data,
        }
        manifest["manifest_sha256"] = manifest_sha256(manifest)
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write(self.directory / arrays_name, blob)
        atomic_write(self.manifest_path, json.dumps(manifest, indent=1).encode())
        self._clean(keep=arrays_name)
        return self.manifest_path

    def _clean(self, keep: str) -> None:
        """Remove temp files and arrays files other than ``keep`` (only the driver writes,
        so no other save is in flight)."""
        for path in self.directory.iterdir():
            stale_arrays = _ARRAYS_PATTERN.match(path.name) and path.name != keep
            if path.name.startswith(TMP_PREFIX) or stale_arrays:
                path.unlink(missing_ok=True)

    # -- reading --------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any]:
        """The checked manifest (format, version, generation, arrays file and sha, state)."""
        path = self.manifest_path
        if not path.is_file():
            raise CheckpointError(
                f"no checkpoint at {path}: the file does not exist; check the run directory, "
                "or start a new search instead of resuming"
            )
        manifest = read_json(path, lambda exc: (
            f"checkpoint manifest {path} is not valid JSON ({exc}); it is truncated or "
            "damaged; restore it from a backup or start a new search"
        ))
        check_format(manifest, CHECKPOINT_FORMAT, lambda found: (
            f"{path} has format {found!r}, not {CHECKPOINT_FORMAT!r}: it is not a certevo "
            "checkpoint; pass the run directory a certevo search wrote: `certevo resume RUN_DIR`"
        ))
        version = check_version(manifest, READABLE_VERSIONS, lambda version: (
            f"{path} has checkpoint format version {version!r}; this certevo reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}; resume with the certevo version that wrote it"
        ))
        problems = []
        if not isinstance(manifest.get("generation"), int) or isinstance(manifest.get("generation"), bool):
            problems.append(f"generation is {manifest.get('generation')!r}")
        if not isinstance(manifest.get("arrays_file"), str) or not _ARRAYS_PATTERN.match(manifest["arrays_file"]):
            problems.append(f"arrays_file is {manifest.get('arrays_file')!r}")
        if not isinstance(manifest.get("arrays_sha256"), str):
            problems.append(f"arrays_sha256 is {manifest.get('arrays_sha256')!r}")
        if not isinstance(manifest.get("state"), dict):
            problems.append(f"state is {type(manifest.get('state')).__name__}, not an object")
        if problems:
            raise CheckpointError(
                f"checkpoint manifest {path} is damaged: {'; '.join(problems)}; restore it "
                "from a backup or start a new search"
            )
        if version >= 2 and manifest.get("manifest_sha256") != manifest_sha256(manifest):
            raise CheckpointError(
                f"checkpoint manifest {path} does not match its sha256 (recorded "
                f"{manifest.get('manifest_sha256')!r}, content {manifest_sha256(manifest)}): it was edited or "
                "damaged after the search wrote it, and resuming from it would silently diverge from the search; "
                "undo the edit or restore the file from a backup (a copy of the whole run directory), or start a "
                "new search"
            )
        return manifest

    def generation(self) -> int:
        """Generation of the stored checkpoint."""
        return int(self.read_manifest()["generation"])

    def load(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The stored ``(state, arrays)``, after checking format, version and sha256."""
        from safetensors.numpy import load as load_bytes

        manifest = self.read_manifest()
        arrays_path = self.directory / manifest["arrays_file"]
        if not arrays_path.is_file():
            raise CheckpointError(
                f"checkpoint arrays {arrays_path} (named by {self.manifest_path}) do not "
                "exist; the checkpoint is incomplete; restore the directory from a backup"
            )
        blob = arrays_path.read_bytes()
        check_sha256(blob, manifest["arrays_sha256"], lambda sha: (
            f"checkpoint arrays {arrays_path} have sha256 {sha} but {self.manifest_path} "
            f"records {manifest['arrays_sha256']}; the file is truncated, damaged or was changed; "
            "restore it from a backup or start a new search"
        ))
        try:
            arrays = load_bytes(blob)
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(
                f"checkpoint arrays {arrays_path} cannot be read as safetensors ({exc}); the "
                "file is truncated or damaged; restore it from a backup"
            ) from exc
        return manifest["state"], dict(arrays)


def manifest_sha256(manifest: Mapping[str, Any]) -> str:
    """sha256 of a checkpoint manifest's content, ``manifest_sha256`` itself left out:
    canonical JSON (sorted keys, no spaces), so it does not depend on the file's layout."""
    content = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    return sha256_hex(json.dumps(content, sort_keys=True, separators=(",", ":")).encode())


# --------------------------------------------------------------------------- genomes


def pack_genomes(genomes: Sequence[Genome]) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Genomes as ``(manifests, arrays)``: one :meth:`Genome.manifest` per genome (in order,
    duplicates kept) and uint8 masks under ``f"{genome.id}/{layer}"`` (shared by equal
    genomes). Put the manifests in the checkpoint state and the arrays in its arrays."""
    manifests = []
    arrays: dict[str, np.ndarray] = {}
    for genome in genomes:
        manifests.append(genome.manifest())
        for layer, mask in genome.mask_arrays().items():
            arrays[f"{genome.id}/{layer}"] = mask
    return manifests, arrays


def unpack_genomes(
    manifests: Sequence[Mapping[str, Any]], arrays: Mapping[str, np.ndarray]
) -> list[Genome]:
    """Inverse of :func:`pack_genomes`; each genome's content hash is checked against its
    manifest (:class:`CheckpointError` if masks are missing or changed)."""
    genomes = []
    for manifest in manifests:
        if not isinstance(manifest, Mapping) or not isinstance(manifest.get("id"), str):
            raise CheckpointError(
                f"a packed genome manifest has no id ({manifest!r:.80}); the checkpoint state "
                "is damaged; restore it from a backup"
            )
        prefix = manifest["id"] + "/"
        own = {key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)}
        genomes.append(Genome.from_parts(manifest, own))
    return genomes


# --------------------------------------------------------------------------- RNG state


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """JSON data of ``rng``'s bit generator state (``rng.bit_generator.state``; numpy
    arrays in it, e.g. MT19937's key, become lists). Restore with :func:`restore_rng`."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, np.integer):
            return int(value)
        return value

    return plain(rng.bit_generator.state)


def restore_rng(state: Mapping[str, Any]) -> np.random.Generator:
    """A generator that continues exactly where the one :func:`rng_state` saved stopped."""
    name = state.get("bit_generator") if isinstance(state, Mapping) else None
    bit_generator_class = getattr(np.random, name, None) if isinstance(name, str) else None
    if bit_generator_class is None or not isinstance(bit_generator_class, type) or not issubclass(
        bit_generator_class, np.random.BitGenerator
    ):
        raise CheckpointError(
            f"RNG state names bit generator {name!r}, which numpy does not have; the state "
            "is damaged or from elsewhere; pass the output of rng_state()"
        )
    bit_generator = bit_generator_class()
    try:
        bit_generator.state = dict(state)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"RNG state for {name} cannot be restored ({exc}); the state is damaged") from exc
    return np.random.Generator(bit_generator)
