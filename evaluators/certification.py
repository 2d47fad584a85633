"""Certified, clean and PGD accuracy of a trained model on a split."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from certevo.evaluators.attack import pgd_attack
from certevo.evaluators.bounds import margin_lower_bounds
from certevo.evaluators.data import Split
from certevo.evaluators.settings import CertificationSettings


#: Samples bounded per auto_LiRPA IBP call (and per plain forward pass).
IBP_CHUNK = 1024


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
    (cheap) runs first and the chosen method only on the samples IBP did not prove, in
    batches of ``settings.batch_size``: a sample proven by either sound method is certified."""
    x, y = data.x, data.y
    if settings.max_samples is not None:
        x, y = x[: settings.max_samples], y[: settings.max_samples]
    model.eval()
    if settings.method == "crown-optimized":
        bounded.set_bound_opts({"optimize_bound_args": {"iteration": settings.alpha_iterations}})
    with torch.no_grad():
        correct = torch.cat([model(x[i : i + IBP_CHUNK]).argmax(dim=1) == y[i : i + IBP_CHUNK]
                             for i in range(0, len(y), IBP_CHUNK)])
    certified = torch.zeros_like(correct)
    todo = correct.clone()
    if settings.ibp_first and settings.method != "ibp":
        # IBP keeps no linear relaxations, so it bounds large chunks at once: one
        # auto_LiRPA call instead of one per batch (its per-call overhead dominates here).
        _prove(bounded, x, y, todo, certified, "ibp", IBP_CHUNK, settings.eps, num_classes)
    _prove(bounded, x, y, todo, certified, settings.method,
           IBP_CHUNK if settings.method == "ibp" else settings.batch_size, settings.eps, num_classes)
    robust_parts = []
    if settings.pgd:
        generator = torch.Generator().manual_seed(seed)
        for start in range(0, len(y), settings.batch_size):
            xb, yb = x[start : start + settings.batch_size], y[start : start + settings.batch_size]
            adv = pgd_attack(
                model, xb, yb, settings.eps, steps=settings.pgd_steps, restarts=settings.pgd_restarts, generator=generator
            )
            with torch.no_grad():
                robust_parts.append(correct[start : start + settings.batch_size] & (model(adv).argmax(dim=1) == yb))
    n = len(y)
    return CertificationResult(
        clean_accuracy=float(correct.float().mean()),
        certified_accuracy=float(certified.float().mean()),
        pgd_accuracy=float(torch.cat(robust_parts).float().mean()) if settings.pgd else None,
        certified=certified,
        correct=correct,
        samples=n,
    )


def _prove(bounded: object, x: torch.Tensor, y: torch.Tensor, todo: torch.Tensor, certified: torch.Tensor,
           method: str, chunk: int, eps: float, num_classes: int) -> None:
    """Bound the ``todo`` samples with ``method``, ``chunk`` at a time; mark the proven
    ones certified (and no longer to do)."""
    index = todo.nonzero().squeeze(1)
    for start in range(0, len(index), chunk):
        part = index[start : start + chunk]
        lower = margin_lower_bounds(bounded, x[part], y[part], eps, method, num_classes)
        proven = (lower.detach() > 0).all(dim=1)
        certified[part[proven]] = True
        todo[part[proven]] = False
