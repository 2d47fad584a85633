"""L-inf PGD attack (Madry et al.) inside the eps-ball intersected with [0, 1]."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from certevo.evaluators.bounds import input_box


def _margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Best wrong logit minus true logit, per sample (positive: misclassified)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    wrong = logits.clone()
    wrong.scatter_(1, labels[:, None], float("-inf"))
    return wrong.max(dim=1).values - true


def pgd_attack(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    steps: int = 20,
    restarts: int = 1,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    loss: str = "margin",
) -> torch.Tensor:
    """Adversarial inputs: per sample, the strongest point found over ``restarts`` random
    starts (drawn from ``generator``) of ``steps`` signed-gradient steps."""
    low, high = input_box(x, eps)
    step = step_size if step_size is not None else 2.5 * eps / steps
    best = x.clone()
    best_score = torch.full((x.shape[0],), float("-inf"), device=x.device)
    was_training = model.training
    model.eval()
    for _ in range(restarts):
        noise = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x.device)  # drawn on the CPU: same on every device
        adv = (x + eps * noise).clamp(low, high)
        for _ in range(steps):
            adv.requires_grad_(True)
            logits = model(adv)
            objective = _margin_loss(logits, labels) if loss == "margin" else F.cross_entropy(logits, labels, reduction="none")
            (grad,) = torch.autograd.grad(objective.sum(), adv)
            adv = (adv.detach() + step * grad.sign()).clamp(low, high)
        with torch.no_grad():
            score = _margin_loss(model(adv), labels)
        better = score > best_score
        best[better] = adv[better]
        best_score = torch.where(better, score, best_score)
    model.train(was_training)
    return best.detach()
