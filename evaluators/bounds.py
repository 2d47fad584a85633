"""Margin bounds through auto_LiRPA, and a cache of traced bounded modules."""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from certevo.evaluators.lirpa_compat import auto_lirpa
from certevo.evaluators.models import NeuronActivations

#: auto_LiRPA's method names for certevo's bound methods.
LIRPA_METHODS = {
    "ibp": "IBP",
    "crown-ibp": "IBP+backward",
    "crown": "backward",
    "crown-optimized": "CROWN-Optimized",
}


class VerifierError(Exception):
    """auto_LiRPA cannot bound this model (unsupported operation or relaxation)."""


def margin_matrix(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C with rows ``e_y - e_j`` for every ``j != y``: shape [B, K-1, K]."""
    eye, others = _margin_tables(num_classes)
    eye, others = eye.to(labels.device), others.to(labels.device)
    return eye[labels].unsqueeze(1) - eye[others[labels]]


@functools.cache
def _margin_tables(num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    eye = torch.eye(num_classes, dtype=torch.float32)
    classes = torch.arange(num_classes)
    others = torch.stack([classes[classes != y] for y in range(num_classes)])  # [K, K-1]
    return eye, others


def input_box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The eps-ball around ``x`` intersected with the pixel range [0, 1]."""
    return (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)


def needs_matrix_conv_mode(model: nn.Module) -> bool:
    """True if a convolution is followed by an activation that auto_LiRPA 0.3's patches
    mode cannot bound with CROWN: per-neuron mixes (a per-channel constant product) and
    LeakyReLU (its relaxation calls ``clamp`` on a Patches object)."""
    modules = list(model.children())
    return any(
        isinstance(m, (NeuronActivations, nn.LeakyReLU)) and i > 0 and isinstance(modules[i - 1], nn.Conv2d)
        for i, m in enumerate(modules)
    )


def bound_module(model: nn.Module, input_shape: tuple[int, ...], device: torch.device | str = "cpu"):
    """Trace ``model`` (already on ``device``) into an auto_LiRPA BoundedModule that shares
    its parameter storage."""
    lirpa = auto_lirpa()
    opts = {"conv_mode": "matrix"} if needs_matrix_conv_mode(model) else {}
    device = torch.device(device)
    try:
        return lirpa.BoundedModule(model, torch.zeros(1, *input_shape, device=device), bound_opts=opts, device=device.type)
    except NotImplementedError as exc:
        raise VerifierError(f"auto_LiRPA cannot trace this model: {exc}") from exc


def margin_lower_bounds(
    bounded, x: torch.Tensor, labels: torch.Tensor, eps: float, method: str, num_classes: int
) -> torch.Tensor:
    """Lower bounds of ``logit_y - logit_j`` over the eps-ball, shape [B, K-1]."""
    lirpa = auto_lirpa()
    x_low, x_high = input_box(x, eps)
    perturbation = lirpa.PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=x_low, x_U=x_high)
    bounded_x = lirpa.BoundedTensor(x, perturbation)
    try:
        lower, _ = bounded.compute_bounds(
            x=(bounded_x,), C=margin_matrix(labels, num_classes), method=LIRPA_METHODS[method], bound_upper=False
        )
    except (NotImplementedError, AssertionError, RuntimeError) as exc:
        raise VerifierError(f"auto_LiRPA cannot bound this model with {method}: {type(exc).__name__}: {exc}") from exc
    return lower


@dataclass
class TracedModel:
    """A model and the BoundedModule traced from it; they share parameter storage."""

    model: nn.Module
    bounded: object


class BoundedModuleCache:
    """Traced models kept by key (architecture + activation pattern), least recently used
    evicted first. Loading a candidate's weights into a cached entry replaces tracing."""

    def __init__(self, capacity: int = 16, device: torch.device | str = "cpu") -> None:
        self.capacity = capacity
        self.device = torch.device(device)
        self._entries: OrderedDict[str, TracedModel] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str, model: nn.Module, input_shape: tuple[int, ...]) -> TracedModel:
        """A traced model holding ``model``'s weights, traced anew only on a miss."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            model = model.to(self.device)
            entry = TracedModel(model, bound_module(model, input_shape, self.device))
            self._entries[key] = entry
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        else:
            self.hits += 1
            self._entries.move_to_end(key)
            with torch.no_grad():
                entry.model.load_state_dict(model.state_dict())
        return entry
