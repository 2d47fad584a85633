"""Final, full-length certified training of an exported mask, and its report.

The search scores each candidate with a *short* training and picks candidates on the
*validation* split. The final training here:

* starts from the export's trained weights when it carries them (``from_trained``, the
  default then: the search's training accumulated along the candidate's lineage, and
  fine-tuning keeps it) and otherwise from a fresh seeded initialisation;
* from a fresh init, trains for many more epochs (default :data:`DEFAULT_EPOCHS`) with the
  full eps schedule: optional clean warm-up epochs (eps 0), then the robust phase, whose
  first ``ramp_fraction`` of steps (default 40 %) ramps eps from 0 to the training eps and
  the natural-loss weight kappa from 1 to ``kappa_final`` (and, for CROWN-IBP, the CROWN
  share from 1 to 0); the rest trains at full eps. From trained weights (already robust)
  it fine-tunes at the full eps from the first step: no warm-up, no ramp (unless asked
  for). Training is :func:`certevo.evaluators.training.train_masked`, so pruned weights stay exact
  zeros;
* trains on the train split **plus the validation split** by default
  (``use_validation=True``): validation was already used up for choosing the candidate,
  so it is not a fair test any more, and more data helps;
* reports on the **test split**, which the search never saw: clean accuracy, PGD
  accuracy, certified accuracy with pure IBP and with pure CROWN (``ibp_first=False``,
  each figure is what that one method proves), and ``certified_accuracy``, the share
  proven by either (both are sound, so the union is too). The data split is rebuilt from
  the export's data description (name, seed, subset, fractions), so it is the same split
  the search used;
* counts sparsity from the trained weights (exact zeros), not from the mask.

No pickle: :func:`save_final` writes ``report.json`` and ``weights.safetensors``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from certevo.evaluators.exported_model import build_exported_model
from certevo.evaluators.bounds import VerifierError, bound_module
from certevo.evaluators.certification import certify
from certevo.evaluators.data import DatasetSplits, Split, load_dataset
from certevo.evaluators.epoch_progress import EpochProgress, EpochReporter
from certevo.evaluators.settings import CertificationSettings, TrainingSettings
from certevo.evaluators.training import train_masked
from certevo.population.errors import CheckpointError, ConfigError, DataError
from certevo.population.export import Export
from certevo.population.files import atomic_write
from certevo.population.manifest import check_format, check_sha256, read_json, sha256_hex
from certevo.population.seeds import derive_seed

DEFAULT_EPOCHS = 60
DEFAULT_RAMP_FRACTION = 0.4
DEFAULT_PGD_STEPS = 40
DEFAULT_PGD_RESTARTS = 2
REPORT_FORMAT = "certevo-final-report"
REPORT_FORMAT_VERSION = 1
REPORT_FILE = "report.json"
WEIGHTS_FILE = "weights.safetensors"

__all__ = [
    "DEFAULT_EPOCHS",
    "DEFAULT_RAMP_FRACTION",
    "REPORT_FILE",
    "WEIGHTS_FILE",
    "EpochProgress",
    "FinalReport",
    "load_final_model",
    "save_final",
    "trained_sparsity",
    "train_final",
]


@dataclass(frozen=True)
class FinalReport:
    """Outcome of :func:`train_final`; frozen. :meth:`to_dict` gives the JSON data.

    Accuracies are on the test split (``samples`` images). ``certified_accuracy_crown``
    is ``None`` if auto_LiRPA cannot run CROWN on the activations (``notes`` says why).
    ``sparsity`` / ``layer_sparsity`` are counted from the trained weights (share of exact
    zeros). ``model`` is the trained model (not serialised; pass it to :func:`save_final`).
    """

    candidate_id: str
    method: str
    epochs: int
    warmup_epochs: int
    eps: float
    train_eps: float
    clean_accuracy: float
    certified_accuracy_ibp: float
    certified_accuracy_crown: float | None
    certified_accuracy: float
    pgd_accuracy: float
    sparsity: float
    layer_sparsity: dict[str, float]
    samples: int
    train_samples: int
    seconds: float
    timings: dict[str, float]
    data: dict[str, Any]
    settings: dict[str, Any]
    search_certified_accuracy: float | None = None
    notes: tuple[str, ...] = ()
    #: "trained" (fine-tuned from the export's trained weights) or "scratch" (fresh init).
    start: str = "scratch"
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (without the model)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        data["notes"] = list(self.notes)
        return json.loads(json.dumps(data))

    def summary(self) -> str:
        """A few readable lines for a terminal."""
        crown = "n/a" if self.certified_accuracy_crown is None else f"{self.certified_accuracy_crown:8.2%}"
        start = "fine-tuning the search's trained weights" if self.start == "trained" else "from a fresh init"
        lines = [
            f"candidate {self.candidate_id}: final {self.method} training, {self.epochs} epochs {start}, "
            f"eps={self.train_eps:g}, {self.train_samples} training images",
            f"  sparsity (weights)     {self.sparsity:8.2%}",
            f"  clean accuracy         {self.clean_accuracy:8.2%}   (test split, {self.samples} images)",
            f"  PGD accuracy           {self.pgd_accuracy:8.2%}   (eps={self.eps:g})",
            f"  certified, IBP         {self.certified_accuracy_ibp:8.2%}",
            f"  certified, CROWN       {crown}",
            f"  certified, either      {self.certified_accuracy:8.2%}",
        ]
        if self.search_certified_accuracy is not None:
            lines.append(f"  (search: {self.search_certified_accuracy:.2%} certified on validation after a short training)")
        lines.extend(f"  note: {n}" for n in self.notes)
        lines.append(f"  time {self.seconds:.1f}s")
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


def trained_sparsity(model: nn.Module, export: Export) -> tuple[float, dict[str, float]]:
    """``(overall, per layer)`` share of exact zeros in the weights of the export's layers,
    counted the way :attr:`Genome.sparsity` counts the mask (so equal masks give
    bit-identical numbers)."""
    layer_sparsity: dict[str, float] = {}
    nonzero_total, total = 0, 0
    for name in export.genome.masks:
        weight = model.get_submodule(name).weight.detach()
        nonzero = int(torch.count_nonzero(weight))
        layer_sparsity[name] = 1.0 - float(nonzero) / weight.numel()
        nonzero_total += nonzero
        total += weight.numel()
    return 1.0 - nonzero_total / total, layer_sparsity


def _check_mask_held(model: nn.Module, export: Export) -> None:
    for name, mask in export.genome.masks.items():
        weight = model.get_submodule(name).weight.detach()
        leaked = int(torch.count_nonzero(weight[torch.from_numpy(~mask)]))
        if leaked:  # pragma: no cover - a bug in training, not a user error
            raise RuntimeError(f"layer {name}: {leaked} pruned weights became non-zero during final training")


def _load_data(export: Export, data_path: str | os.PathLike | None) -> DatasetSplits:
    spec = export.data
    path = data_path if data_path is not None else spec.get("path")
    try:
        data = load_dataset(
            spec["name"],
            path,
            seed=spec.get("seed", 0),
            subset=spec.get("subset"),
            val_fraction=spec.get("val_fraction", 0.2),
            test_fraction=spec.get("test_fraction", 0.2),
        )
    except DataError as exc:
        raise DataError(
            f"{exc} (the export {export.json_path.name} recorded data path {spec.get('path')!r}; "
            "if the data lives elsewhere on this machine, pass data_path= / --data-path)"
        ) from exc
    model = export.model
    if tuple(data.input_shape) != tuple(model["input_shape"]) or data.num_classes != int(model["num_classes"]):
        raise ConfigError(
            f"data set {spec['name']!r} at {path!r} has input shape {list(data.input_shape)} and "
            f"{data.num_classes} classes, but the exported model expects {list(model['input_shape'])} and "
            f"{model['num_classes']}; pass the data set the search used"
        )
    return data


def _setting(export: Export, section: str, key: str, default: Any) -> Any:
    values = export.manifest.get(section)
    return values.get(key, default) if isinstance(values, dict) else default


# --------------------------------------------------------------------------- training


def train_final(
    export: Export,
    *,
    epochs: int | None = None,
    method: str | None = None,
    eps: float | None = None,
    train_eps: float | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    ramp_fraction: float | None = None,
    warmup_epochs: int | None = None,
    from_trained: bool | None = None,
    kappa_final: float | None = None,
    data_path: str | os.PathLike | None = None,
    seed: int = 0,
    use_validation: bool = True,
    pgd_steps: int = DEFAULT_PGD_STEPS,
    pgd_restarts: int = DEFAULT_PGD_RESTARTS,
    max_test_samples: int | None = None,
    certify_batch_size: int | None = None,
    progress: bool = False,
    callback: Callable[[EpochProgress], None] | None = None,
) -> FinalReport:
    """Train the exported mask for ``epochs`` and certify it on the test split.

    Defaults come from the export: ``method``, ``lr``, ``batch_size``, ``kappa_final`` from
    the search's training settings (method falls back to the fitness record's, then
    ``"ibp"``); ``eps`` (certification) from the search's certification eps;
    ``train_eps`` defaults to ``eps``. ``from_trained`` starts from the export's trained
    weights (default: when it has them; True without them is a ConfigError). ``warmup_epochs``
    (clean training, eps 0, counted in ``epochs``) defaults to ``epochs // 20`` for robust
    methods from a fresh init, else 0; ``ramp_fraction`` to :data:`DEFAULT_RAMP_FRACTION`
    from a fresh init and 0 from trained weights.
    ``data_path`` overrides the recorded data location. Every random draw derives from
    (``seed``, candidate id). ``progress`` shows a rich progress bar on stderr; ``callback``
    receives an :class:`EpochProgress` after each epoch. Raises :class:`ConfigError` for
    bad settings, :class:`DataError` if the data cannot be read, and
    :class:`~certevo.evaluators.training.TrainingDiverged` if the loss becomes NaN (lower ``lr``).
    """
    started = time.perf_counter()
    cid = export.candidate_id
    epochs = DEFAULT_EPOCHS if epochs is None else epochs
    method = method or _setting(export, "training", "method", export.fitness.get("train_method") or "ibp")
    eps = float(export.eps["certification"]) if eps is None else eps
    train_eps = eps if train_eps is None else train_eps
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a positive integer; got {epochs!r}; e.g. 60")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer; got {seed!r}; e.g. 0")
    if from_trained is None:
        from_trained = export.trained_weights is not None
    elif from_trained and export.trained_weights is None:
        raise ConfigError(
            f"export {export.json_path} carries no trained weights, so it cannot be fine-tuned (--from-trained); "
            "train it from scratch (--from-scratch), or export it again from a search run with "
            "search.weight_inheritance: true"
        )
    if ramp_fraction is None:
        ramp_fraction = 0.0 if from_trained else DEFAULT_RAMP_FRACTION
    if warmup_epochs is None:
        warmup_epochs = 0 if method == "clean" or from_trained else epochs // 20
    if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or not 0 <= warmup_epochs < epochs:
        raise ConfigError(
            f"warmup_epochs must be an integer in [0, epochs) = [0, {epochs}); got {warmup_epochs!r}; e.g. {epochs // 20}"
        )
    robust = TrainingSettings(
        method=method,
        epochs=epochs - warmup_epochs,
        batch_size=_setting(export, "training", "batch_size", TrainingSettings.batch_size) if batch_size is None else batch_size,
        lr=_setting(export, "training", "lr", TrainingSettings.lr) if lr is None else lr,
        eps=train_eps,
        ramp_fraction=ramp_fraction,
        kappa_final=_setting(export, "training", "kappa_final", TrainingSettings.kappa_final) if kappa_final is None else kappa_final,
        pgd_steps=_setting(export, "training", "pgd_steps", TrainingSettings.pgd_steps),
        lr_schedule=_setting(export, "training", "lr_schedule", TrainingSettings.lr_schedule),
    )
    cert_batch = certify_batch_size if certify_batch_size is not None else _setting(export, "certification", "batch_size", CertificationSettings.batch_size)
    ibp_settings = CertificationSettings(method="ibp", eps=eps, max_samples=max_test_samples, batch_size=cert_batch,
                                         ibp_first=False, pgd=True, pgd_steps=pgd_steps, pgd_restarts=pgd_restarts)
    crown_settings = CertificationSettings(method="crown", eps=eps, max_samples=max_test_samples, batch_size=cert_batch,
                                           ibp_first=False, pgd=False)

    data = _load_data(export, data_path)
    train = data.train
    if use_validation:
        train = Split(torch.cat([data.train.x, data.val.x]), torch.cat([data.train.y, data.val.y]))
    timings: dict[str, float] = {}

    start = time.perf_counter()
    model = build_exported_model(export, derive_seed(seed, cid, "final-init"), trained=from_trained)
    bounded = bound_module(model, data.input_shape)
    masks = {name: torch.from_numpy(m.astype("float32")) for name, m in export.genome.masks.items()}
    timings["build"] = time.perf_counter() - start

    start = time.perf_counter()
    steps_per_epoch = max(1, math.ceil(len(train) / robust.batch_size))
    ramp_steps = int(robust.ramp_fraction * robust.epochs * steps_per_epoch)
    with EpochReporter(model, epochs, callback, progress) as reporter:
        if warmup_epochs:
            warmup = TrainingSettings(method="clean", epochs=warmup_epochs, batch_size=robust.batch_size, lr=robust.lr)
            reporter.phase_start("warm-up", steps_per_epoch, lambda step: 0.0)
            train_masked(model, None, masks, train, warmup, seed=derive_seed(seed, cid, "final-warmup"),
                         num_classes=data.num_classes)
        reporter.phase_start(
            method, steps_per_epoch,
            lambda step: train_eps * (1.0 if ramp_steps <= 0 else min(1.0, (step - 1) / ramp_steps)),
        )
        train_masked(model, bounded, masks, train, robust, seed=derive_seed(seed, cid, "final-train"),
                     num_classes=data.num_classes)
    model.eval()
    _check_mask_held(model, export)
    timings["train"] = time.perf_counter() - start

    attack_seed = derive_seed(seed, cid, "final-attack")
    start = time.perf_counter()
    ibp = certify(model, bounded, data.test, ibp_settings, num_classes=data.num_classes, seed=attack_seed)
    timings["certify_ibp_pgd"] = time.perf_counter() - start
    notes: list[str] = []
    start = time.perf_counter()
    try:
        crown = certify(model, bounded, data.test, crown_settings, num_classes=data.num_classes, seed=attack_seed)
        crown_accuracy: float | None = crown.certified_accuracy
        either = ibp.certified | crown.certified
    except VerifierError as exc:
        crown_accuracy = None
        either = ibp.certified
        notes.append(f"CROWN certification not available for these activations: {exc}")
    timings["certify_crown"] = time.perf_counter() - start

    sparsity, layer_sparsity = trained_sparsity(model, export)
    search_certified = export.fitness.get("certified_accuracy")
    used_path = data_path if data_path is not None else export.data.get("path")
    return FinalReport(
        candidate_id=cid,
        method=method,
        epochs=epochs,
        warmup_epochs=warmup_epochs,
        eps=eps,
        train_eps=train_eps,
        clean_accuracy=ibp.clean_accuracy,
        certified_accuracy_ibp=ibp.certified_accuracy,
        certified_accuracy_crown=crown_accuracy,
        certified_accuracy=float(either.float().mean()),
        pgd_accuracy=float(ibp.pgd_accuracy),
        sparsity=sparsity,
        layer_sparsity=layer_sparsity,
        samples=ibp.samples,
        train_samples=len(train),
        seconds=time.perf_counter() - started,
        timings=timings,
        data={
            "name": data.name,
            "path": None if used_path is None else str(used_path),
            "seed": export.data.get("seed", 0),
            "subset": export.data.get("subset"),
            "val_fraction": export.data.get("val_fraction", 0.2),
            "test_fraction": export.data.get("test_fraction", 0.2),
            "trained_on": "train+val" if use_validation else "train",
            "reported_on": "test",
        },
        settings={
            **robust.to_dict(),
            "epochs": epochs,
            "warmup_epochs": warmup_epochs,
            "seed": seed,
            "start": "trained" if from_trained else "scratch",
            "pgd_steps_attack": pgd_steps,
            "pgd_restarts": pgd_restarts,
            "certify_batch_size": cert_batch,
            "max_test_samples": max_test_samples,
        },
        search_certified_accuracy=None if search_certified is None else float(search_certified),
        notes=tuple(notes),
        start="trained" if from_trained else "scratch",
        model=model,
    )


# --------------------------------------------------------------------------- saving


def save_final(report: FinalReport, model: nn.Module | None, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``<out_dir>/weights.safetensors`` (the model's state dict, safetensors.torch)
    and then ``<out_dir>/report.json`` (the report plus the weights file's sha256), each
    atomically. ``model`` defaults to ``report.model``. Returns ``(report_path,
    weights_path)``."""
    from safetensors.torch import save as save_bytes

    model = model if model is not None else report.model
    if model is None:
        raise ConfigError("save_final needs the trained model; pass it, or the FinalReport train_final returned")
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    blob = save_bytes(tensors, metadata={"format": "certevo-final-weights", "candidate_id": report.candidate_id})
    weights_path, report_path = directory / WEIGHTS_FILE, directory / REPORT_FILE
    atomic_write(weights_path, blob)
    document = {
        "format": REPORT_FORMAT,
        "format_version": REPORT_FORMAT_VERSION,
        **report.to_dict(),
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": sha256_hex(blob),
    }
    atomic_write(report_path, (json.dumps(document, indent=1) + "\n").encode())
    return report_path, weights_path


def load_final_model(out_dir: str | os.PathLike, export: Export) -> nn.Sequential:
    """The model :func:`save_final` wrote to ``out_dir``, rebuilt from ``export`` (checks
    the candidate id and the weights' sha256)."""
    from safetensors.torch import load as load_bytes

    directory = Path(out_dir)
    report_path, weights_path = directory / REPORT_FILE, directory / WEIGHTS_FILE
    for path in (report_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist; pass the output directory `certevo train EXPORT.json` wrote")
    report = read_json(report_path, lambda exc: f"{report_path} is not valid JSON ({exc}); train again")
    check_format(report, REPORT_FORMAT, lambda _: (
        f"{report_path} is not a certevo final-training report; pass the output directory `certevo train EXPORT.json` wrote"))
    if report.get("candidate_id") != export.candidate_id:
        raise CheckpointError(
            f"{report_path} is for candidate {report.get('candidate_id')!r}, the export is {export.candidate_id}; "
            "pass the export the final training was run on"
        )
    blob = weights_path.read_bytes()
    check_sha256(blob, report.get("weights_sha256"), lambda _: (
        f"{weights_path} does not match the sha256 in {report_path.name}; it is damaged; train again"))
    model = build_exported_model(export)
    model.load_state_dict(load_bytes(blob))
    return model
