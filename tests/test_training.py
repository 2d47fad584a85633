"""Short robust training keeps masks exact, really trains, and reports K-starts scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from certevo.evaluators.bounds import bound_module
from certevo.evaluators.models import CNNTemplate, MLPTemplate
from certevo.evaluators.settings import TRAINING_METHODS, TrainingSettings
from certevo.evaluators.training import KStartsScores, TrainingDiverged, train_masked
from certevo.population.genome import ACTIVATIONS, Genome, random_genome


def _template(kind, data):
    if kind == "mlp":
        return MLPTemplate(data.input_shape, data.num_classes, (32, 32))
    return CNNTemplate(data.input_shape, data.num_classes, (4, 8), (16,))


def _setup(kind, data, sparsity=0.7, mixed=False, seed=0):
    template = _template(kind, data)
    hidden = template.hidden_sizes()
    genome = random_genome(template.layer_shapes(), ["relu"] * len(hidden), sparsity, np.random.default_rng(seed))
    if mixed:
        neuron = tuple(tuple(ACTIVATIONS[i % len(ACTIVATIONS)] for i in range(size)) for size in hidden)
        genome = Genome(genome.masks, genome.activations, neuron)
    model = template.build(genome, seed=seed)
    bounded = bound_module(model, data.input_shape)
    masks = {name: torch.from_numpy(m.astype(np.float32)) for name, m in genome.masks.items()}
    return genome, model, bounded, masks


def _prunable(model, genome):
    layers = dict(model.named_modules())
    return {name: layers[name].weight for name in genome.masks}


CASES = [(kind, method) for kind in ("mlp", "cnn") for method in TRAINING_METHODS] + [("mlp-mixed", "crown-ibp")]


@pytest.mark.parametrize("kind, method", CASES, ids=[f"{k}-{m}" for k, m in CASES])
def test_masks_stay_exact_through_training(digits_small, kind, method):
    genome, model, bounded, masks = _setup(kind.split("-")[0], digits_small, mixed=kind.endswith("mixed"))
    before = {name: w.detach().clone() for name, w in _prunable(model, genome).items()}
    biases_before = {name: p.detach().clone() for name, p in model.named_parameters() if name.endswith("bias")}
    # 2 epochs of 4 batches: the eps ramp ends at step 4, so crown-ibp mixes in CROWN
    # bounds for steps 1-3 and every method sees a non-zero eps.
    settings = TrainingSettings(method=method, epochs=2, batch_size=64, lr=5e-3, eps=0.1, pgd_steps=3)
    scores = train_masked(model, bounded, masks, digits_small.train, settings, seed=7, num_classes=10)
    assert isinstance(scores, KStartsScores)

    nonzero = 0
    for name, weight in _prunable(model, genome).items():
        mask = torch.tensor(genome.masks[name])
        w = weight.detach()
        assert torch.isfinite(w).all(), name
        assert torch.count_nonzero(w[~mask]) == 0, f"{method} revived pruned weights of {name}"
        assert (w[~mask] == 0.0).all()
        # Training happened: most kept weights moved (a few inputs, e.g. the always-black
        # border pixels of digits, get no gradient under clean training).
        changed = (w != before[name])[mask].float().mean().item()
        assert changed > 0.5, f"{method}: only {changed:.0%} of the kept weights of {name} changed"
        nonzero += int(torch.count_nonzero(w))
    # Sparsity counted from the weights: never below the genome's (kept weights may be 0
    # by chance, pruned ones may never be anything else).
    assert 1 - nonzero / genome.total_weights >= genome.sparsity
    assert nonzero >= 0.99 * genome.kept_weights
    assert any(not torch.equal(p, biases_before[n]) for n, p in model.named_parameters() if n in biases_before)
    # The bounded module shares the trained weights (no stale copy).
    bounded_params = dict(bounded.named_parameters())
    for name, weight in _prunable(model, genome).items():
        assert bounded_params[f"{name}.weight"].data_ptr() == weight.data_ptr()


def test_training_improves_accuracy(digits):
    genome, model, bounded, masks = _setup("mlp", digits, sparsity=0.5)
    x, y = digits.val.x, digits.val.y
    with torch.no_grad():
        before = (model(x).argmax(1) == y).float().mean().item()
    settings = TrainingSettings(method="clean", epochs=5, lr=1e-2)
    train_masked(model, bounded, masks, digits.train, settings, seed=0, num_classes=10)
    with torch.no_grad():
        after = (model(x).argmax(1) == y).float().mean().item()
    assert after >= 0.8 and after > before + 0.3, (before, after)


def test_kstarts_scores_are_computed_from_the_kept_weights(digits_small):
    genome, model, bounded, masks = _setup("mlp", digits_small)
    settings = TrainingSettings(method="ibp", epochs=1, lr=1e-3)
    scores = train_masked(model, bounded, masks, digits_small.train, settings, seed=1, num_classes=10)
    weights = _prunable(model, genome)
    magnitude = sum(float(w.detach().abs().sum()) for w in weights.values()) / genome.kept_weights
    assert scores.magnitude == pytest.approx(magnitude, rel=1e-6)
    assert scores.magnitude > 0 and scores.gradient > 0
    assert scores.combined == pytest.approx(math.sqrt(scores.magnitude * scores.gradient), rel=1e-12)
    assert scores.to_dict() == {"magnitude": scores.magnitude, "gradient": scores.gradient, "combined": scores.combined}


def test_same_seed_trains_to_identical_weights_and_other_seeds_do_not(digits_small):
    results = []
    for seed in (3, 3, 4):
        genome, model, bounded, masks = _setup("mlp", digits_small, seed=0)
        settings = TrainingSettings(method="pgd", epochs=1, lr=1e-2, pgd_steps=2)
        scores = train_masked(model, bounded, masks, digits_small.train, settings, seed=seed, num_classes=10)
        results.append((scores, {k: v.detach().clone() for k, v in model.state_dict().items()}))
    (s1, w1), (s2, w2), (s3, w3) = results
    assert s1 == s2
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert any(not torch.equal(w1[k], w3[k]) for k in w1)


def test_exploding_loss_raises_training_diverged(digits_small):
    genome, model, bounded, masks = _setup("mlp", digits_small)
    settings = TrainingSettings(method="clean", epochs=2, lr=1e30)
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf)"):
        train_masked(model, bounded, masks, digits_small.train, settings, seed=0, num_classes=10)


def test_epochs_argument_overrides_the_settings(digits_small):
    genome, model, bounded, masks = _setup("mlp", digits_small)
    settings = TrainingSettings(method="clean", epochs=50, lr=1e-3)
    one = train_masked(model, bounded, masks, digits_small.train, settings, seed=0, num_classes=10, epochs=1)
    genome, model, bounded, masks = _setup("mlp", digits_small)
    two = train_masked(model, bounded, masks, digits_small.train, settings, seed=0, num_classes=10, epochs=2)
    # The gradient score sums over steps: twice the steps, clearly more of it.
    assert two.gradient > 1.5 * one.gradient


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_learning_rate_schedule(digits_small, schedule):
    """Cosine decays the rate from lr towards 0 by the last step (settled weights);
    constant keeps it. Read from the optimizer as it steps."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    _, model, bounded, masks = _setup("mlp", digits_small)
    settings = TrainingSettings(method="ibp", epochs=2, batch_size=64, lr=1e-2, eps=0.05, lr_schedule=schedule)
    rates: list[float] = []
    handle = register_optimizer_step_post_hook(lambda opt, *_: rates.append(opt.param_groups[0]["lr"]))
    try:
        train_masked(model, bounded, masks, digits_small.train, settings, seed=0, num_classes=10)
    finally:
        handle.remove()
    steps = 2 * math.ceil(len(digits_small.train.y) / 64)
    assert len(rates) == steps and rates[0] == pytest.approx(1e-2)
    if schedule == "constant":
        assert set(rates) == {1e-2}
    else:
        assert all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] < 1e-2 * 0.05
        assert rates[steps // 2] == pytest.approx(0.5e-2)  # half way: half the rate


def test_unknown_schedule_is_refused_with_the_field():
    from certevo.population.errors import ConfigError

    with pytest.raises(ConfigError, match="training.lr_schedule.*cosine"):
        TrainingSettings(lr_schedule="step")
