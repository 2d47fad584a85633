"""Certified, clean and PGD accuracy of a trained model on a split."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from evaluators.attack import pgd_attack
from evaluators.bounds import margin_lower_bounds
from evaluators.data import Split
from evaluators.settings import CertificationSettings


@dataclass(frozen=True)
class CertificationResult:
    """Per-split accuracies; ``certified`` marks each sample proven robust at eps."""

    clean_accuracy: float
    certified_accuracy: float
    pgd_accuracy: float | None
    certified: torch.Tensor
    correct: torch.Tensor
    samples: int


def certify(
    model: nn.Module,
    bounded: object,
    data: Split,
    settings: CertificationSettings,
    *,
    num_classes: int,
    seed: int,
) -> CertificationResult:
    """A sample counts as certified when it is classified correctly and every margin
    lower bound ``logit_y - logit_j`` is > 0 over the eps-ball (clipped to [0, 1]).

    Bounds are computed only for correctly classified samples. With ``ibp_first``, IBP
    (cheap) runs first and the chosen method only on the samples IBP did not prove: a
    sample proven by either sound method is certified."""
    x, y = data.x, data.y
    if settings.max_samples is not None:
        x, y = x[: settings.max_samples], y[: settings.max_samples]
    model.eval()
    if settings.method == "crown-optimized":
        bounded.set_bound_opts({"optimize_bound_args": {"iteration": settings.alpha_iterations}})
    correct_parts, certified_parts, robust_parts = [], [], []
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, len(y), settings.batch_size):
        xb, yb = x[start : start + settings.batch_size], y[start : start + settings.batch_size]
        with torch.no_grad():
            correct = model(xb).argmax(dim=1) == yb
        certified = _certify_batch(bounded, xb, yb, correct, settings, num_classes)
        correct_parts.append(correct)
        certified_parts.append(certified)
        if settings.pgd:
            adv = pgd_attack(
                model, xb, yb, settings.eps, steps=settings.pgd_steps, restarts=settings.pgd_restarts, generator=generator
            )
            with torch.no_grad():
                robust_parts.append(correct & (model(adv).argmax(dim=1) == yb))
    correct_all = torch.cat(correct_parts)
    certified_all = torch.cat(certified_parts)
    n = len(y)
    return CertificationResult(
        clean_accuracy=float(correct_all.float().mean()),
        certified_accuracy=float(certified_all.float().mean()),
        pgd_accuracy=float(torch.cat(robust_parts).float().mean()) if settings.pgd else None,
        certified=certified_all,
        correct=correct_all,
        samples=n,
    )


def _certify_batch(
    bounded: object,
    x: torch.Tensor,
    y: torch.Tensor,
    correct: torch.Tensor,
    settings: CertificationSettings,
    num_classes: int,
) -> torch.Tensor:
    certified = torch.zeros_like(correct)
    todo = correct.clone()
    methods = ["ibp", settings.method] if settings.ibp_first and settings.method != "ibp" else [settings.method]
    for method in methods:
        if not todo.any():
            break
        index = todo.nonzero().squeeze(1)
        lower = margin_lower_bounds(bounded, x[index], y[index], settings.eps, method, num_classes)
        proven = (lower.detach() > 0).all(dim=1)
        certified[index[proven]] = True
        todo[index[proven]] = False
    return certified
