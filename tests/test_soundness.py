"""Soundness of certification: no point of the (clipped) eps-ball ever has a margin
``logit_y - logit_j`` below the certified lower bound, so no certified sample can be
attacked. Checked with real auto_LiRPA for every activation certevo can certify, a
per-neuron mixed genome, IBP and CROWN, an MLP and a CNN, sparse random masks and
random or briefly trained weights."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from certevo.evaluators.attack import pgd_attack
from certevo.evaluators.bounds import bound_module, input_box, margin_lower_bounds
from certevo.evaluators.certification import certify
from certevo.evaluators.data import Split
from certevo.evaluators.models import CNNTemplate, MLPTemplate
from certevo.evaluators.settings import CertificationSettings, TrainingSettings
from certevo.evaluators.training import train_masked
from certevo.population.genome import ACTIVATIONS, Genome, random_genome

SAMPLES = 128  # validation images per case
UNIFORM_POINTS = 160  # uniform samples per image inside the box
CORNERS = 48  # random vertices of the box per image
# float32 slack: the bound and the forward pass round differently.
ATOL, RTOL = 1e-4, 1e-4

_KINDS = list(ACTIVATIONS)  # relu, leaky_relu, sigmoid, tanh, linear
_nets: dict[tuple[str, str, str], tuple] = {}


def _seed(*parts: str) -> int:
    return zlib.crc32("/".join(parts).encode())


def _net(digits, kind: str, activation: str, weights: str):
    """(model, bounded, genome), built once per module and reused by both methods."""
    key = (kind, activation, weights)
    if key in _nets:
        return _nets[key]
    if kind == "mlp":
        template = MLPTemplate(digits.input_shape, digits.num_classes, (32, 32))
    else:
        template = CNNTemplate(digits.input_shape, digits.num_classes, (4, 8), (16,))
    hidden = template.hidden_sizes()
    rng = np.random.default_rng(_seed(*key))
    layer_act = "relu" if activation == "mixed" else activation
    genome = random_genome(template.layer_shapes(), [layer_act] * len(hidden), 0.5, rng)
    if activation == "mixed":
        neuron = tuple(tuple(_KINDS[(i + layer) % len(_KINDS)] for i in range(size)) for layer, size in enumerate(hidden))
        genome = Genome(genome.masks, genome.activations, neuron)
        assert set(genome.all_activation_names()) == set(_KINDS)
    model = template.build(genome, seed=_seed(*key))
    bounded = bound_module(model, digits.input_shape)
    if weights == "trained":
        # Train after tracing: the bounds must follow the weights the model ends up with.
        masks = {name: torch.from_numpy(m.astype(np.float32)) for name, m in genome.masks.items()}
        settings = TrainingSettings(method="clean", epochs=3, lr=1e-2)
        train_masked(model, bounded, masks, digits.train, settings, seed=0, num_classes=digits.num_classes)
    model.eval()
    _nets[key] = (model, bounded, genome)
    return _nets[key]


def _margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``logit_y - logit_j`` for every j != y in increasing j: [..., K] -> [..., K-1]
    (the order of certevo.evaluators.bounds.margin_matrix's rows), computed independently."""
    k = logits.shape[-1]
    others = torch.stack([torch.tensor([j for j in range(k) if j != int(label)]) for label in y])
    view = (len(y),) + (1,) * (logits.dim() - 2) + (k - 1,)
    others = others.reshape(view).expand(*logits.shape[:-1], k - 1)
    true = logits.gather(-1, y.reshape(view[:-1] + (1,)).expand(*logits.shape[:-1], 1))
    return true - logits.gather(-1, others)


def _violation(margins: torch.Tensor, lower: torch.Tensor) -> float:
    """Largest amount by which a margin falls below its lower bound beyond float slack
    (<= 0 means sound). ``margins`` is [B, P, K-1], ``lower`` is [B, K-1]."""
    slack = ATOL + RTOL * lower.abs()
    return float((lower[:, None, :] - slack[:, None, :] - margins).max())


def _pick_eps(bounded, x, y, correct, method, num_classes) -> float:
    """An eps (found by bisection in log space) at which some correctly classified samples
    are certified and some are not, so that the checks below are about something."""
    target = int(correct.sum())
    low, high = math.log(1e-5), math.log(1.0)
    found = None
    for _ in range(16):
        eps = math.exp((low + high) / 2)
        lower = margin_lower_bounds(bounded, x, y, eps, method, num_classes).detach()
        count = int((correct & (lower > 0).all(dim=1)).sum())
        if 0 < count < target:
            found = eps
            if 0.2 * target <= count <= 0.8 * target:
                break
        if count > target / 2:
            low = math.log(eps)
        else:
            high = math.log(eps)
    return found if found is not None else eps


def _targeted_descent(model, x, y, eps, steps=15) -> torch.Tensor:
    """For every sample and every wrong class j, signed-gradient descent on
    ``logit_y - logit_j`` inside the box: returns the points, [B, K-1, C, H, W]."""
    low, high = input_box(x, eps)
    b, k1 = len(y), 9
    low_r = low[:, None].expand(b, k1, *x.shape[1:]).reshape(b * k1, *x.shape[1:])
    high_r = high[:, None].expand_as(low[:, None].expand(b, k1, *x.shape[1:])).reshape(b * k1, *x.shape[1:])
    point = ((low_r + high_r) / 2).clone()
    target = torch.eye(k1).repeat(b, 1)  # which of the K-1 margins to push down
    y_r = y.repeat_interleave(k1)
    step = 2.5 * eps / steps
    for _ in range(steps):
        point.requires_grad_(True)
        margins = _margins(model(point), y_r)
        (grad,) = torch.autograd.grad((margins * target).sum(), point)
        point = torch.min(torch.max(point.detach() - step * grad.sign(), low_r), high_r)
    return point.reshape(b, k1, *x.shape[1:]).detach()


CASES = [
    pytest.param(
        kind,
        activation,
        weights,
        method,
        id=f"{kind}-{activation}-{weights}-{method}",
    )
    for kind in ("mlp", "cnn")
    for activation in (*ACTIVATIONS, "mixed")
    # Random weights for half the activations keeps the matrix compact.
    for weights in (("trained", "random") if activation in ("relu", "tanh", "mixed") else ("trained",))
    for method in ("ibp", "crown")
]


@pytest.mark.parametrize("kind, activation, weights, method", CASES)
def test_certified_lower_bounds_are_sound(digits, kind, activation, weights, method):
    model, bounded, genome = _net(digits, kind, activation, weights)
    num_classes = digits.num_classes
    x, y = digits.val.x[:SAMPLES], digits.val.y[:SAMPLES]
    if weights == "random":
        # An untrained net mostly predicts one class; its own predictions as labels give
        # every sample a margin worth bounding (the bounds hold for any label).
        with torch.no_grad():
            y = model(x).argmax(dim=1)
    with torch.no_grad():
        correct = model(x).argmax(dim=1) == y
    assert int(correct.sum()) >= 2, "too few correct samples to make the check meaningful"

    eps = _pick_eps(bounded, x, y, correct, method, num_classes)
    lower = margin_lower_bounds(bounded, x, y, eps, method, num_classes).detach()
    assert lower.shape == (SAMPLES, num_classes - 1)
    assert torch.isfinite(lower).all()
    certified = correct & (lower > 0).all(dim=1)
    assert certified.any() and (correct & ~certified).any(), (
        f"eps={eps}: {int(certified.sum())} certified of {int(correct.sum())} correct; "
        "need some of each for a meaningful check"
    )

    generator = torch.Generator().manual_seed(_seed(kind, activation, weights, method))
    low, high = input_box(x, eps)

    # (a) Uniform samples in the clipped ball, random corners of it, and its centre.
    n, shape = len(x), x.shape[1:]
    uniform = low[:, None] + torch.rand((n, UNIFORM_POINTS, *shape), generator=generator) * (high - low)[:, None]
    pick_high = torch.rand((n, CORNERS, *shape), generator=generator) < 0.5
    corners = torch.where(pick_high, high[:, None], low[:, None])
    points = torch.cat([x[:, None], uniform, corners], dim=1)
    assert (points >= low[:, None]).all() and (points <= high[:, None]).all()
    with torch.no_grad():
        logits = model(points.reshape(-1, *shape)).reshape(n, points.shape[1], num_classes)
    sampled = _margins(logits, y)
    assert _violation(sampled, lower) <= 0, "a sampled point beats the certified lower bound"

    # ... and a targeted descent on each margin separately.
    targeted = _targeted_descent(model, x, y, eps)
    assert (targeted >= low[:, None]).all() and (targeted <= high[:, None]).all()
    with torch.no_grad():
        t_logits = model(targeted.reshape(-1, *shape)).reshape(n, num_classes - 1, num_classes)
    t_margins = _margins(t_logits, y)  # [B, K-1 (attack target), K-1 (margin)]
    assert _violation(t_margins, lower) <= 0, "targeted descent beats the certified lower bound"

    # (b) PGD (certevo.evaluators.attack) never gets below the bound either.
    adv = pgd_attack(model, x, y, eps, steps=20, restarts=2, generator=generator)
    assert (adv >= low).all() and (adv <= high).all(), "PGD left the clipped eps-ball"
    with torch.no_grad():
        adv_logits = model(adv)
    assert _violation(_margins(adv_logits, y)[:, None, :], lower) <= 0, "PGD beats the certified lower bound"

    # (c) certify() agrees with the bounds, and nothing it certifies is broken by PGD.
    settings = CertificationSettings(method=method, eps=eps, pgd=True, pgd_steps=20, pgd_restarts=2, batch_size=50)
    result = certify(model, bounded, Split(x, y), settings, num_classes=num_classes, seed=0)
    assert result.samples == SAMPLES
    assert torch.equal(result.correct, correct)
    # certify() may first try IBP and run the chosen method only on what IBP did not
    # prove (settings.ibp_first): a sample proven by either sound bound is certified.
    expected = certified
    if getattr(settings, "ibp_first", False) and method != "ibp":
        ibp_lower = margin_lower_bounds(bounded, x, y, eps, "ibp", num_classes).detach()
        assert _violation(sampled, ibp_lower) <= 0, "a sampled point beats the IBP lower bound"
        expected = certified | (correct & (ibp_lower > 0).all(dim=1))
    assert torch.equal(result.certified, expected)
    assert not (result.certified & (adv_logits.argmax(dim=1) != y)).any(), "PGD broke a certified sample"
    broken_by_targeted = (t_margins.min(dim=2).values <= 0).any(dim=1)
    assert not (result.certified & broken_by_targeted).any(), "targeted descent broke a certified sample"
    assert 0 < result.certified_accuracy <= result.pgd_accuracy <= result.clean_accuracy
    assert result.certified_accuracy < result.clean_accuracy
