"""Scores candidates: build each model, train it briefly (many at once where the stacked
path allows), certify it with auto_LiRPA, return its record."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from certevo.evaluators.batched_training import STACKED_METHODS, stacked_dense_gradients, train_stacked
from certevo.evaluators.bounds import BoundedModuleCache, VerifierError, bound_module
from certevo.evaluators.certification import certify
from certevo.evaluators.data import DatasetSplits
from certevo.evaluators.device import DEFAULT_STACK_SIZE, resolve_device
from certevo.evaluators.evaluation import Evaluation, EvaluationRequest  # also importable from here
from certevo.evaluators.fitness import FitnessRecord
from certevo.evaluators.lirpa_compat import AutoLirpaMissing
from certevo.evaluators.models import ModelTemplate, activation_pattern_key
from certevo.evaluators.settings import CertificationSettings, TrainingSettings
from certevo.evaluators.stacked import NotStackable, StackedNetwork
from certevo.evaluators.training import TrainingDiverged, dense_gradients, train_masked
from certevo.population.genome import UNCERTIFIABLE_ACTIVATIONS, Genome
from certevo.population.seeds import derive_seed


class CandidateEvaluator:
    """Evaluates candidates on one data set and model template, one at a time or many at
    once (:meth:`evaluate_batch`).

    With ``stacked`` (the default), candidates whose training the stacked path implements
    (clean and IBP, monotone activations: certevo.evaluators.batched_training) are trained
    together, up to ``stack_size`` per vectorised pass; a candidate's record is the same
    whether it was trained alone or with others. Everything else, and ``stacked=False``,
    trains one model at a time through auto_LiRPA. Certificates always come from
    auto_LiRPA, one candidate at a time (IBP first, then the certification method).

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
        device: str | torch.device | None = "cpu",
        stacked: bool = True,
        stack_size: int | None = None,
    ) -> None:
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.data = data if self.device.type == "cpu" else data.to(self.device)
        self.template = template
        self.training = training or TrainingSettings()
        self.certification = certification or CertificationSettings()
        self.seed = seed
        self.stacked = stacked
        self.stack_size = stack_size or DEFAULT_STACK_SIZE[self.device.type]
        self.cache = BoundedModuleCache(device=self.device) if reuse_traced else None
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
        """Train and certify ``genome`` (see :class:`EvaluationRequest` for the options);
        never raises for a bad candidate (the record says why it failed)."""
        request = EvaluationRequest(genome, initial_weights, epochs, keep_weights, prior_epochs, inherited_from)
        return self.evaluate_batch([request])[0]

    def evaluate_batch(self, requests: Sequence[EvaluationRequest]) -> list[Evaluation]:
        """Evaluate every request, in order; candidates that can share a stacked training
        (same epoch count) are trained together. Never raises for a bad candidate."""
        results: list[Evaluation | None] = [None] * len(requests)
        groups: dict[int, list[int]] = {}
        for i, request in enumerate(requests):
            empty = request.genome.empty_layers()
            if empty:
                results[i] = self._failed(
                    request, {}, f"layers {empty} keep no weight, so no signal passes; lower their sparsity")
            elif self.stacked and self.training.method in STACKED_METHODS:
                groups.setdefault(self._epochs(request), []).append(i)
            else:
                results[i] = self._alone(request)
        for members in groups.values():
            for start in range(0, len(members), self.stack_size):
                chunk = members[start : start + self.stack_size]
                for i, evaluation in zip(chunk, self._evaluate_stacked([requests[i] for i in chunk])):
                    results[i] = evaluation
        return results  # type: ignore[return-value]

    def _epochs(self, request: EvaluationRequest) -> int:
        return request.epochs if request.epochs is not None else self.training.epochs

    def _setup(self, request: EvaluationRequest) -> dict[str, Any]:
        """The record fields this evaluator's settings fix for ``request``, whatever its outcome."""
        epochs = self._epochs(request)
        return {
            "train_method": self.training.method,
            "certify_method": self.certification.method,
            "eps": self.certification.eps,
            "train_eps": self.training.eps,
            "epochs": epochs,
            "total_epochs": request.prior_epochs + epochs,
            "inherited_from": request.inherited_from,
        }

    def _record(self, request: EvaluationRequest, timings: dict[str, float], **values: Any) -> FitnessRecord:
        genome = request.genome
        return FitnessRecord(
            candidate_id=genome.id,
            sparsity=genome.sparsity,
            certified_accuracy=values.get("certified", 0.0),
            clean_accuracy=values.get("clean", 0.0),
            pgd_accuracy=values.get("pgd"),
            samples=values.get("samples", 0),
            layer_sparsity=genome.layer_sparsity(),
            timings=timings,
            kstarts=values.get("kstarts"),
            **self._setup(request),
        )

    def _failed(self, request: EvaluationRequest, timings: dict[str, float], reason: str,
                **extra: Any) -> Evaluation:
        """``request``'s evaluation that failed for ``reason`` (``extra`` goes to the record's extra)."""
        return Evaluation(FitnessRecord.failed(request.genome, reason, timings=timings, extra=extra,
                                               **self._setup(request)))

    def _guarded(self, request: EvaluationRequest, timings: dict[str, float],
                 work: Callable[[], Evaluation]) -> Evaluation:
        """``work()``, with every way a candidate can fail turned into a failed record."""
        try:
            return work()
        except TrainingDiverged as exc:
            return self._failed(request, timings, f"training diverged: {exc}; lower training.lr")
        except VerifierError as exc:
            hint = [a for a in request.genome.all_activation_names() if a in UNCERTIFIABLE_ACTIVATIONS]
            reason = f"activations {hint} cannot be bounded by auto_LiRPA 0.3 here; " if hint else ""
            return self._failed(request, timings, f"{reason}{exc}")
        except AutoLirpaMissing:
            raise  # the installation is broken, not the candidate
        except Exception as exc:  # a bad candidate must never kill a search
            return self._failed(request, timings, f"unexpected error: {type(exc).__name__}: {exc}",
                                traceback=traceback.format_exc())

    def _build(self, request: EvaluationRequest) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        genome = request.genome
        model = self.template.build(genome, derive_seed(self.seed, genome.id, "init"))
        masks = {name: torch.from_numpy(m.astype("float32")) for name, m in genome.masks.items()}
        if request.initial_weights is not None:
            _load_masked(model, request.initial_weights, masks)
        return model, masks

    def _settings(self, request: EvaluationRequest) -> TrainingSettings:
        return self.training if request.initial_weights is None else replace(self.training, ramp_fraction=0.0)

    def _traced(self, request: EvaluationRequest, model: nn.Module, timings: dict[str, float]):
        start = time.perf_counter()
        if self.cache is not None:
            traced = self.cache.get(activation_pattern_key(self.template, request.genome), model, self.data.input_shape)
            model, bounded = traced.model, traced.bounded
        else:
            model = model.to(self.device)
            bounded = bound_module(model, self.data.input_shape, device=self.device)
        timings["trace"] = time.perf_counter() - start
        return model, bounded

    def _evaluate_alone(self, request: EvaluationRequest, timings: dict[str, float]) -> Evaluation:
        """The one-at-a-time path: auto_LiRPA bounds inside the training too."""
        start = time.perf_counter()
        model, masks = self._build(request)
        timings["build"] = time.perf_counter() - start
        model, bounded = self._traced(request, model, timings)
        masks = {k: v.to(self.device) for k, v in masks.items()}
        settings = self._settings(request)
        start = time.perf_counter()
        kstarts = train_masked(
            model, bounded, masks, self.data.train, settings,
            seed=derive_seed(self.seed, request.genome.id, "train"), num_classes=self.data.num_classes,
            epochs=self._epochs(request),
        )
        timings["train"] = time.perf_counter() - start
        gradients = None
        if request.keep_weights:
            start = time.perf_counter()
            gradients = dense_gradients(
                model, bounded, list(masks), self.data.train, settings,
                seed=derive_seed(self.seed, request.genome.id, "gradients"), num_classes=self.data.num_classes,
            )
            timings["gradients"] = time.perf_counter() - start
        return self._certified(request, model, bounded, kstarts, gradients, timings)

    def _certified(self, request, model, bounded, kstarts, gradients, timings) -> Evaluation:
        """Certify trained ``model`` and make its evaluation."""
        with torch.no_grad():
            if not bool(torch.isfinite(model(self.data.val.x)).all()):
                raise TrainingDiverged("the trained model outputs NaN or infinite logits")
        start = time.perf_counter()
        result = certify(
            model, bounded, self.data.val, self.certification,
            num_classes=self.data.num_classes, seed=derive_seed(self.seed, request.genome.id, "attack"),
        )
        timings["certify"] = time.perf_counter() - start
        weights = None
        if request.keep_weights:
            weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            gradients = {k: v.detach().cpu().clone() for k, v in gradients.items()}
        record = self._record(
            request, timings, certified=result.certified_accuracy, clean=result.clean_accuracy,
            pgd=result.pgd_accuracy, samples=result.samples, kstarts=kstarts.to_dict(),
        )
        return Evaluation(record, weights, gradients if request.keep_weights else None)

    def _evaluate_stacked(self, requests: list[EvaluationRequest]) -> list[Evaluation]:
        """Train ``requests`` (same epoch count) in one stack, then certify each alone.
        A candidate whose model cannot be built or stacked goes the one-at-a-time way
        (which turns its error into a failed record)."""
        results: list[Evaluation | None] = [None] * len(requests)
        start = time.perf_counter()
        built, members = [], []
        for i, request in enumerate(requests):
            try:
                built.append(self._build(request))
                members.append(i)
            except Exception:
                results[i] = self._alone(request)
        try:
            net = StackedNetwork([m for m, _ in built], self.device) if built else None
        except NotStackable:
            net = None
        if net is None:
            for i in members:
                results[i] = self._alone(requests[i])
            return results  # type: ignore[return-value]
        stacked = [requests[i] for i in members]
        try:
            evaluations = self._train_stack(stacked, built, net, start)
        except AutoLirpaMissing:
            raise
        except Exception:  # whatever went wrong in the shared pass, no candidate is lost for it
            evaluations = [self._alone(request) for request in stacked]
        for i, evaluation in zip(members, evaluations):
            results[i] = evaluation
        return results  # type: ignore[return-value]

    def _alone(self, request: EvaluationRequest) -> Evaluation:
        timings: dict[str, float] = {}
        return self._guarded(request, timings, lambda: self._evaluate_alone(request, timings))

    def _train_stack(self, requests, built, net, start) -> list[Evaluation]:
        timings: list[dict[str, float]] = [{} for _ in requests]
        build = (time.perf_counter() - start) / len(requests)
        masks = {name: torch.stack([m[name] for _, m in built]) for name in built[0][1]}
        settings = self.training
        start = time.perf_counter()
        outcomes = train_stacked(
            net, masks, self.data.train, settings,
            seeds=[derive_seed(self.seed, r.genome.id, "train") for r in requests],
            epochs=self._epochs(requests[0]),
            ramp_fractions=[self._settings(r).ramp_fraction for r in requests],
        )
        train = (time.perf_counter() - start) / len(requests)
        gradients = None
        if any(r.keep_weights for r in requests):
            start = time.perf_counter()
            gradients = stacked_dense_gradients(
                net, self.data.train, settings,
                seeds=[derive_seed(self.seed, r.genome.id, "gradients") for r in requests],
            )
            gradient_time = (time.perf_counter() - start) / len(requests)
        states = net.state_dicts([m for m, _ in built])
        evaluations = []
        for c, (request, outcome) in enumerate(zip(requests, outcomes)):
            timing = timings[c]
            timing.update(build=build, train=train)
            if gradients is not None:
                timing["gradients"] = gradient_time
            if outcome.failure is not None:
                evaluations.append(self._failed(
                    request, timing, f"training diverged: {outcome.failure}; lower training.lr"))
                continue
            model = built[c][0]
            model.load_state_dict(states[c])
            own = {name: g[c] for name, g in gradients.items()} if gradients is not None else None

            def work(request=request, model=model, outcome=outcome, own=own, timing=timing) -> Evaluation:
                traced_model, bounded = self._traced(request, model, timing)
                return self._certified(request, traced_model, bounded, outcome.scores, own, timing)

            evaluations.append(self._guarded(request, timing, work))
        return evaluations


def _load_masked(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        model.load_state_dict(dict(weights))
        layers = dict(model.named_modules())
        for name, mask in masks.items():
            layers[name].weight.mul_(mask)
