"""Short robust training of one masked model: clean, PGD, IBP or CROWN-IBP.

Pruned weights stay exact zeros: their gradients are zeroed before every step (so Adam's
moments for them stay zero) and the weights are re-zeroed after it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from certevo.evaluators.attack import pgd_attack
from certevo.evaluators.bounds import margin_lower_bounds
from certevo.evaluators.data import Split
from certevo.evaluators.settings import TrainingSettings


class TrainingDiverged(Exception):
    """The loss became NaN or infinite."""


def loss_diverged(loss: float, step: int, total: int, lr: float) -> str:
    """Why a training stopped: its loss stopped being finite at ``step``."""
    return f"loss became {loss} at step {step} of {total} (lr {lr})"


def weights_diverged(total: int, lr: float) -> str:
    """Why a training failed: its weights stopped being finite in its last step."""
    return f"weights became NaN or infinite in the last of {total} steps (lr {lr})"


@dataclass(frozen=True)
class KStartsScores:
    """Scores that rank K random starts after a short training (Haroon, arXiv 2209.02201).

    ``magnitude``: mean |w| over kept weights at the end. ``gradient``: mean |grad| over
    kept weights, accumulated (summed) over all steps. ``combined``: their geometric mean.
    """

    magnitude: float
    gradient: float
    combined: float

    @classmethod
    def of(cls, magnitude: float, gradient: float) -> KStartsScores:
        """The scores with their geometric mean."""
        return cls(magnitude, gradient, math.sqrt(max(magnitude, 0.0) * max(gradient, 0.0)))

    def to_dict(self) -> dict[str, float]:
        """Plain JSON data."""
        return asdict(self)


def learning_rate(settings: TrainingSettings, step: int, total: int) -> float:
    """The step's learning rate: constant, or cosine-decayed from ``lr`` to 0 over the run."""
    if settings.lr_schedule == "cosine" and total > 0:
        return settings.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
    return settings.lr


def ramp(step: int, ramp_steps: int) -> float:
    """Share of the eps ramp done at ``step``: 0 at the start, 1 from ``ramp_steps`` on."""
    return 1.0 if ramp_steps <= 0 else min(1.0, step / ramp_steps)


def _robust_loss(lower_margins: torch.Tensor) -> torch.Tensor:
    # Worst-case logits relative to the true class: [0, -lb_1, ..., -lb_{K-1}], target 0.
    logits = torch.cat([torch.zeros_like(lower_margins[:, :1]), -lower_margins], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def train_masked(
    model: nn.Module,
    bounded: object | None,
    masks: dict[str, torch.Tensor],
    data: Split,
    settings: TrainingSettings,
    *,
    seed: int,
    num_classes: int,
    epochs: int | None = None,
) -> KStartsScores:
    """Train ``model`` in place (and so ``bounded``, which shares its weights).

    ``masks`` maps a layer name to its float 0/1 mask. ``bounded`` is needed by IBP and
    CROWN-IBP. Every random draw comes from ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    layers = dict(model.named_modules())
    masked = [(layers[name].weight, mask) for name, mask in masks.items()]
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    epochs = epochs if epochs is not None else settings.epochs
    n = len(data.y)
    batches_per_epoch = max(1, math.ceil(n / settings.batch_size))
    total = epochs * batches_per_epoch
    ramp_steps = int(settings.ramp_fraction * total)
    gradient_sum = 0.0
    kept = sum(float(mask.sum()) for _, mask in masked) or 1.0
    step = 0
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, settings.batch_size):
            index = order[start : start + settings.batch_size].to(data.y.device)
            x, y = data.x[index], data.y[index]
            progress = ramp(step, ramp_steps)
            eps = settings.eps * progress
            loss = _loss(model, bounded, x, y, eps, progress, settings, num_classes, generator)
            if not torch.isfinite(loss):
                raise TrainingDiverged(loss_diverged(loss.item(), step, total, settings.lr))
            optimizer.zero_grad(set_to_none=False)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(settings, step, total)
            loss.backward()
            with torch.no_grad():
                for weight, mask in masked:
                    weight.grad.mul_(mask)
                gradient_sum += sum(float(w.grad.abs().sum()) for w, _ in masked) / kept
            optimizer.step()
            with torch.no_grad():
                for weight, mask in masked:
                    weight.mul_(mask)
            step += 1
    model.eval()
    with torch.no_grad():
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise TrainingDiverged(weights_diverged(total, settings.lr))
        magnitude = sum(float(w.abs().sum()) for w, _ in masked) / kept
    return KStartsScores.of(magnitude, gradient_sum)


def _loss(
    model: nn.Module,
    bounded: object | None,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    progress: float,
    settings: TrainingSettings,
    num_classes: int,
    generator: torch.Generator,
) -> torch.Tensor:
    method = settings.method
    if method == "clean":
        return F.cross_entropy(model(x), y)
    if method == "pgd":
        if eps == 0:
            return F.cross_entropy(model(x), y)
        adv = pgd_attack(model, x, y, eps, steps=settings.pgd_steps, generator=generator, loss="ce")
        model.train()
        return F.cross_entropy(model(adv), y)
    natural = F.cross_entropy(model(x), y)
    if eps == 0:
        return natural
    kappa = 1.0 - progress * (1.0 - settings.kappa_final)
    lower = margin_lower_bounds(bounded, x, y, eps, "ibp", num_classes)
    if method == "crown-ibp":
        beta = 1.0 - progress
        if beta > 0:
            crown = margin_lower_bounds(bounded, x, y, eps, "crown-ibp", num_classes)
            lower = beta * crown + (1.0 - beta) * lower
    return kappa * natural + (1.0 - kappa) * _robust_loss(lower)


def dense_gradients(
    model: nn.Module,
    bounded: object | None,
    layer_names: list[str],
    data: Split,
    settings: TrainingSettings,
    *,
    seed: int,
    num_classes: int,
    samples: int = 512,
) -> dict[str, torch.Tensor]:
    """Absolute gradient of the training loss (full eps, final kappa) with respect to every
    entry of each named layer's weight, pruned entries included: RigL's signal for which
    pruned connections would help most if grown (Evci et al. 2020). Measured on
    ``samples`` training images drawn with ``seed``; the model's weights are not changed."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(data.y), generator=generator)[:samples].to(data.y.device)
    x, y = data.x[index], data.y[index]
    layers = dict(model.named_modules())
    model.eval()
    model.zero_grad(set_to_none=True)
    loss = _loss(model, bounded, x, y, settings.eps, 1.0, settings, num_classes, generator)
    loss.backward()
    gradients = {name: layers[name].weight.grad.detach().abs().clone() for name in layer_names}
    model.zero_grad(set_to_none=True)
    return gradients
