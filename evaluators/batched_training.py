"""Short robust training of many masked candidates at once (clean or IBP), on a
:class:`~certevo.evaluators.stacked.StackedNetwork`.

Every candidate keeps its own init (its model's weights), its own data order and its own
failure: candidate ``c`` draws its batches from its own generator (``seeds[c]``), and its
loss, gradients and Adam moments only ever touch slice ``c`` of the stacked tensors (Adam
is element-wise, so one optimiser over the stack is C independent optimisers; it is
torch's Adam arithmetic without its slow square root of zeros: certevo.evaluators.adam). A
candidate's trained weights therefore do not depend on which others share its stack.
A candidate whose loss stops being finite is dropped from the summed loss at that step
and reported with the same message as the one-at-a-time path; the others go on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from certevo.evaluators.adam import MaskedAdam
from certevo.evaluators.data import Split
from certevo.evaluators.settings import TrainingSettings
from certevo.evaluators.stacked import StackedNetwork, input_box
from certevo.evaluators.training import KStartsScores, learning_rate, loss_diverged, ramp, weights_diverged

#: Training methods the stacked path implements; others go one at a time.
STACKED_METHODS = ("clean", "ibp")


@dataclass
class StackedOutcome:
    """What training did to one candidate: its K-starts scores, or why it failed."""

    scores: KStartsScores | None
    failure: str | None = None


def _gather(data: Split, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``[C, B, ...]`` and labels ``[C, B]`` of each candidate's own batch."""
    index = index.to(data.y.device)
    return _rows(data.x, index).to(device), _rows(data.y, index).to(device)


def _rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for an index of any shape (index_select: several times faster than
    advanced indexing for these copies)."""
    return table.index_select(0, index.reshape(-1)).reshape(*index.shape, *table.shape[1:])


class _BoxTable:
    """The full-eps ball (:func:`~certevo.evaluators.stacked.input_box`) of every training image,
    computed on first use: once the eps ramp is over (and for inherited weights, from the
    first step) a step gathers its rows instead of recomputing them per candidate (on
    MNIST those input-sized element-wise passes cost about as much as the first layer's
    matmuls). Same values, bit for bit."""

    MAX_ELEMENTS = 50_000_000  # beyond this (e.g. 60k colour images) the table is not kept

    def __init__(self, data: Split, eps: float, device: torch.device) -> None:
        self.data, self.eps, self.device = data, eps, device
        self.table: tuple[torch.Tensor, torch.Tensor] | None = None
        self.enabled = data.x.numel() <= self.MAX_ELEMENTS

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.enabled:
            return None
        if self.table is None:
            self.table = tuple(t.to(self.device) for t in input_box(self.data.x, self.eps))
        index = index.to(self.table[0].device)
        return _rows(self.table[0], index), _rows(self.table[1], index)


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per candidate of logits [C, B, K]. Classes are put on dim 1
    ([C, K, B]): torch's log-softmax is vectorised along the samples then, more than twice
    as fast for K = 10 as over rows of length 10 (same values)."""
    return F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(1)


def stacked_losses(
    net: StackedNetwork,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: torch.Tensor,
    progress: torch.Tensor,
    settings: TrainingSettings,
    box: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Each candidate's training loss on its batch, shape [C]: the natural cross-entropy
    mixed with the IBP robust loss as :func:`certevo.evaluators.training._loss` does (kappa falls
    from 1 to ``kappa_final`` with ``progress``; a candidate at eps 0 gets the natural loss).
    ``box``: the inputs' eps-ball (:func:`~certevo.evaluators.stacked.input_box`), if known."""
    logits = net(x)
    natural = _cross_entropy(logits, y)
    if settings.method == "clean" or not bool((eps > 0).any()):
        return natural
    lower = net.margin_lower_bounds(x, y, eps, box)  # [C, B, K-1]
    worst = torch.cat([torch.zeros_like(lower[..., :1]), -lower], dim=-1)
    robust = _cross_entropy(worst, torch.zeros_like(y))
    kappa = 1.0 - progress * (1.0 - settings.kappa_final)
    return torch.where(eps > 0, kappa * natural + (1.0 - kappa) * robust, natural)


def train_stacked(
    net: StackedNetwork,
    masks: dict[str, torch.Tensor],
    data: Split,
    settings: TrainingSettings,
    *,
    seeds: Sequence[int],
    epochs: int,
    ramp_fractions: Sequence[float],
) -> list[StackedOutcome]:
    """Train every candidate of ``net`` in place; ``masks`` maps a layer name to its
    stacked float 0/1 mask ``[C, ...]``. Candidate c draws its data order from
    ``seeds[c]`` and ramps eps over its first ``ramp_fractions[c]`` of the steps."""
    device = net.device
    size = net.size
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    masked = [(net.layers[name].weight, mask.to(device)) for name, mask in masks.items()]
    optimizer = MaskedAdam(net.parameters(), lr=settings.lr)
    n = len(data.y)
    batches_per_epoch = max(1, math.ceil(n / settings.batch_size))
    total = epochs * batches_per_epoch
    ramp_steps = [int(f * total) for f in ramp_fractions]
    kept = torch.stack([sum(m[c].sum() for _, m in masked) for c in range(size)]).clamp(min=1.0).double()
    weights = [w for w, _ in masked]
    mask_list = [m for _, m in masked]
    # |gradient| summed over steps entry by entry (summed per candidate at the end): two
    # foreach calls a step instead of a reduction per layer.
    gradient_acc = [torch.zeros_like(w) for w in weights]
    alive = torch.ones(size, dtype=torch.bool, device=device)
    failures: list[str | None] = [None] * size
    boxes = _BoxTable(data, settings.eps, device) if settings.method == "ibp" else None
    step = 0
    for _ in range(epochs):
        orders = torch.stack([torch.randperm(n, generator=g) for g in generators])
        for start in range(0, n, settings.batch_size):
            index = orders[:, start : start + settings.batch_size]
            x, y = _gather(data, index, device)
            ramps = [ramp(step, r) for r in ramp_steps]
            progress = torch.tensor(ramps, device=device)
            eps = settings.eps * progress
            box = boxes.rows(index) if boxes is not None and all(r == 1.0 for r in ramps) else None
            losses = stacked_losses(net, x, y, eps, progress, settings, box)
            finite = torch.isfinite(losses)
            if not bool(finite[alive].all()):
                for c in torch.nonzero(alive & ~finite).reshape(-1).tolist():
                    failures[c] = loss_diverged(losses[c].item(), step, total, settings.lr)
                alive &= finite
                if not bool(alive.any()):
                    break
            optimizer.zero_grad()
            optimizer.lr = learning_rate(settings, step, total)
            torch.where(alive, losses, torch.zeros_like(losses)).sum().backward()
            with torch.no_grad():
                grads = [w.grad for w in weights]
                torch._foreach_mul_(grads, mask_list)
                torch._foreach_add_(gradient_acc, torch._foreach_abs(grads))
            # No re-masking after the step: a pruned entry's gradient is zero at every step,
            # so its Adam moments stay exactly zero and so does its update (tested).
            optimizer.step()
            step += 1
        if not bool(alive.any()):
            break
    with torch.no_grad():
        gradient_sum = torch.stack([g.flatten(1).sum(1) for g in gradient_acc]).sum(0).double() / kept
    return _outcomes(net, masked, kept, gradient_sum, failures, total, settings)


def _outcomes(net, masked, kept, gradient_sum, failures, total, settings) -> list[StackedOutcome]:
    with torch.no_grad():
        finite = torch.stack([torch.isfinite(p).flatten(1).all(1) for p in net.parameters()]).all(0)
        magnitude = torch.stack([w.abs().flatten(1).sum(1) for w, _ in masked]).sum(0).double() / kept
    outcomes = []
    for c in range(net.size):
        if failures[c] is not None:
            outcomes.append(StackedOutcome(None, failures[c]))
        elif not bool(finite[c]):
            outcomes.append(StackedOutcome(None, weights_diverged(total, settings.lr)))
        else:
            outcomes.append(StackedOutcome(KStartsScores.of(float(magnitude[c]), float(gradient_sum[c]))))
    return outcomes


def stacked_dense_gradients(
    net: StackedNetwork,
    data: Split,
    settings: TrainingSettings,
    *,
    seeds: Sequence[int],
    samples: int = 512,
) -> dict[str, torch.Tensor]:
    """|d loss / d w| of every entry of every layer's weight, pruned entries included,
    per candidate ([C, ...] by layer name): the stacked form of
    :func:`certevo.evaluators.training.dense_gradients` (full eps, final kappa, ``samples``
    training images drawn with each candidate's seed)."""
    index = torch.stack([
        torch.randperm(len(data.y), generator=torch.Generator().manual_seed(int(s)))[:samples] for s in seeds
    ])
    x, y = _gather(data, index, net.device)
    for p in net.parameters():
        p.grad = None
    ones = torch.ones(net.size, device=net.device)
    stacked_losses(net, x, y, settings.eps * ones, ones, settings).sum().backward()
    gradients = {name: w.grad.detach().abs().clone() for name, w in net.weights().items()}
    for p in net.parameters():
        p.grad = None
    return gradients


__all__ = ["STACKED_METHODS", "StackedOutcome", "stacked_dense_gradients", "stacked_losses", "train_stacked"]
