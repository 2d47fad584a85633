"""Scores one candidate: build its model, train it briefly, certify it, return its record."""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from evaluators.bounds import BoundedModuleCache, VerifierError, bound_module
from evaluators.certification import certify
from evaluators.data import DatasetSplits
from evaluators.fitness import FitnessRecord
from evaluators.lirpa_compat import AutoLirpaMissing
from evaluators.models import ModelTemplate, activation_pattern_key
from evaluators.settings import CertificationSettings, TrainingSettings
from evaluators.training import TrainingDiverged, dense_gradients, train_masked
from population.genome import UNCERTIFIABLE_ACTIVATIONS, Genome
from population.seeds import derive_seed


@dataclass(frozen=True)
class Evaluation:
    """A fitness record plus, when asked for, the trained weights (the model's state dict)
    and the absolute dense gradient of each prunable layer's weight (for guided,
    Lamarckian variation: see population.guided_operators)."""

    record: FitnessRecord
    weights: dict[str, torch.Tensor] | None = None
    gradients: dict[str, torch.Tensor] | None = None


class CandidateEvaluator:
    """Evaluates candidates one at a time on one data set and model template.

    Not thread-safe: one evaluator per worker. Traced bounded modules are reused across
    candidates with the same architecture and activation pattern (``reuse_traced``).
    Every random draw derives from (``seed``, candidate id), so a candidate's record does
    not depend on which evaluator ran it or what it ran before.
    """

    def __init__(
        self,
        data: DatasetSplits,
        template: ModelTemplate,
        training: TrainingSettings | None = None,
        certification: CertificationSettings | None = None,
        *,
        seed: int = 0,
        reuse_traced: bool = True,
        num_threads: int | None = None,
    ) -> None:
        self.data = data
        self.template = template
        self.training = training or TrainingSettings()
        self.certification = certification or CertificationSettings()
        self.seed = seed
        self.cache = BoundedModuleCache() if reuse_traced else None
        if num_threads is not None:
            torch.set_num_threads(num_threads)

    def evaluate(
        self,
        genome: Genome,
        *,
        initial_weights: Mapping[str, torch.Tensor] | None = None,
        epochs: int | None = None,
        keep_weights: bool = False,
        prior_epochs: int = 0,
        inherited_from: str | None = None,
    ) -> Evaluation:
        """Train and certify ``genome``; never raises for a bad candidate (the record says
        why it failed). ``initial_weights`` (e.g. a parent's) replace the seeded init and
        are masked to ``genome``; training from them starts at the full eps (they are
        already robustly trained: ramping eps up again from 0 would spend the short
        training undoing that). ``epochs`` overrides the training length; ``prior_epochs``
        (the training the initial weights carry) and ``inherited_from`` (their candidate)
        go into the record. ``keep_weights`` returns the trained weights and gradients."""
        timings: dict[str, float] = {}
        epochs = epochs if epochs is not None else self.training.epochs

        def record(failure: str | None = None, **values) -> FitnessRecord:
            return FitnessRecord(
                candidate_id=genome.id,
                sparsity=genome.sparsity,
                certified_accuracy=values.get("certified", 0.0),
                clean_accuracy=values.get("clean", 0.0),
                pgd_accuracy=values.get("pgd"),
                train_method=self.training.method,
                certify_method=self.certification.method,
                eps=self.certification.eps,
                train_eps=self.training.eps,
                epochs=epochs,
                samples=values.get("samples", 0),
                layer_sparsity=genome.layer_sparsity(),
                timings=timings,
                kstarts=values.get("kstarts"),
                failure=failure,
                extra=values.get("extra", {}),
                total_epochs=prior_epochs + epochs,
                inherited_from=inherited_from,
            )

        empty = genome.empty_layers()
        if empty:
            return Evaluation(record(f"layers {empty} keep no weight, so no signal passes; lower their sparsity"))
        try:
            return self._evaluate(genome, initial_weights, epochs, keep_weights, timings, record)
        except TrainingDiverged as exc:
            return Evaluation(record(f"training diverged: {exc}; lower training.lr"))
        except VerifierError as exc:
            hint = [a for a in genome.all_activation_names() if a in UNCERTIFIABLE_ACTIVATIONS]
            reason = f"activations {hint} cannot be bounded by auto_LiRPA 0.3 here; " if hint else ""
            return Evaluation(record(f"{reason}{exc}"))
        except AutoLirpaMissing:
            raise  # the installation is broken, not the candidate
        except Exception as exc:  # a bad candidate must never kill a search
            return Evaluation(
                record(f"unexpected error: {type(exc).__name__}: {exc}", extra={"traceback": traceback.format_exc()})
            )

    def _evaluate(self, genome, initial_weights, epochs, keep_weights, timings, record) -> Evaluation:
        start = time.perf_counter()
        model = self.template.build(genome, derive_seed(self.seed, genome.id, "init"))
        masks = {name: torch.from_numpy(m.astype("float32")) for name, m in genome.masks.items()}
        if initial_weights is not None:
            _load_masked(model, initial_weights, masks)
        timings["build"] = time.perf_counter() - start

        start = time.perf_counter()
        if self.cache is not None:
            traced = self.cache.get(activation_pattern_key(self.template, genome), model, self.data.input_shape)
            model, bounded = traced.model, traced.bounded
        else:
            bounded = bound_module(model, self.data.input_shape)
        timings["trace"] = time.perf_counter() - start

        start = time.perf_counter()
        settings = self.training if initial_weights is None else replace(self.training, ramp_fraction=0.0)
        kstarts = train_masked(
            model, bounded, masks, self.data.train, settings,
            seed=derive_seed(self.seed, genome.id, "train"), num_classes=self.data.num_classes, epochs=epochs,
        )
        timings["train"] = time.perf_counter() - start
        with torch.no_grad():
            if not bool(torch.isfinite(model(self.data.val.x)).all()):
                raise TrainingDiverged("the trained model outputs NaN or infinite logits")

        start = time.perf_counter()
        result = certify(
            model, bounded, self.data.val, self.certification,
            num_classes=self.data.num_classes, seed=derive_seed(self.seed, genome.id, "attack"),
        )
        timings["certify"] = time.perf_counter() - start
        weights = gradients = None
        if keep_weights:
            weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            start = time.perf_counter()
            gradients = dense_gradients(
                model, bounded, list(masks), self.data.train, settings,
                seed=derive_seed(self.seed, genome.id, "gradients"), num_classes=self.data.num_classes,
            )
            timings["gradients"] = time.perf_counter() - start
        return Evaluation(
            record(
                certified=result.certified_accuracy,
                clean=result.clean_accuracy,
                pgd=result.pgd_accuracy,
                samples=result.samples,
                kstarts=kstarts.to_dict(),
            ),
            weights,
            gradients,
        )


def _load_masked(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        model.load_state_dict(dict(weights))
        layers = dict(model.named_modules())
        for name, mask in masks.items():
            layers[name].weight.mul_(mask)
