"""Model templates (masked models built from genomes) and settings validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from certevo.evaluators.models import (
    CNNTemplate,
    MLPTemplate,
    NeuronActivations,
    activation_pattern_key,
    make_template,
)
from certevo.evaluators.settings import (
    CERTIFICATION_METHODS,
    TRAINING_METHODS,
    CertificationSettings,
    TrainingSettings,
)
from certevo.population.errors import ConfigError, GenomeError
from certevo.population.genome import Genome, random_genome

MANUAL = {
    "relu": torch.relu,
    "leaky_relu": lambda x: torch.where(x >= 0, x, 0.01 * x),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "linear": lambda x: x,
}
KINDS = list(MANUAL)


def _template(kind: str, digits):
    if kind == "mlp":
        return MLPTemplate(digits.input_shape, digits.num_classes, (32, 32))
    return CNNTemplate(digits.input_shape, digits.num_classes, (4, 8), (16,))


def _sparse(template, rng, sparsity=0.6, activation="relu"):
    return random_genome(template.layer_shapes(), [activation] * len(template.hidden_sizes()), sparsity, rng)


def _mixed(template, rng, sparsity=0.5):
    """A genome whose every hidden layer mixes all five activations neuron by neuron."""
    g = _sparse(template, rng, sparsity)
    neuron = tuple(
        tuple(KINDS[(i * 7 + layer) % len(KINDS)] for i in range(size))
        for layer, size in enumerate(template.hidden_sizes())
    )
    return Genome(g.masks, g.activations, neuron)


# --------------------------------------------------------------------------- building


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_pruned_weights_are_exact_zeros_and_kept_weights_are_not(kind, digits, rng):
    template = _template(kind, digits)
    genome = _sparse(template, rng, 0.8)
    model = template.build(genome, seed=3)
    layers = dict(model.named_modules())
    nonzero = 0
    for name, mask in genome.masks.items():
        weight = layers[name].weight.detach()
        assert weight.shape == mask.shape
        pruned = torch.from_numpy(~mask)
        assert torch.count_nonzero(weight[pruned]) == 0, name
        assert (weight[pruned] == 0.0).all()
        assert torch.count_nonzero(weight[~pruned]) == int(mask.sum()), name
        nonzero += int(torch.count_nonzero(weight))
    # Sparsity counted from the weights equals the genome's.
    assert 1 - nonzero / genome.total_weights == genome.sparsity


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_same_seed_gives_identical_weights(kind, digits, rng):
    template = _template(kind, digits)
    genome = _sparse(template, rng)
    a = template.build(genome, seed=11).state_dict()
    b = template.build(genome, seed=11).state_dict()
    c = template.build(genome, seed=12).state_dict()
    assert a.keys() == b.keys() == c.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert all(not torch.equal(a[k], c[k]) for k in a if k.endswith("weight"))


def test_model_output_shape_and_layer_names(digits, rng):
    for kind, prunable in (("mlp", ["fc0", "fc1", "fc2"]), ("cnn", ["conv0", "conv1", "fc0", "fc1"])):
        template = _template(kind, digits)
        model = template.build(template.dense_genome(), seed=0)
        assert list(template.layer_shapes()) == prunable
        assert model(digits.val.x[:5]).shape == (5, digits.num_classes)


@pytest.mark.parametrize("activation", KINDS)
def test_layer_activation_is_the_requested_function(activation, digits, rng):
    template = _template("mlp", digits)
    model = template.build(template.dense_genome(activation), seed=0)
    x = digits.val.x[:16]
    h = x.flatten(1)
    for i in range(3):
        h = getattr(model, f"fc{i}")(h)
        if i < 2:
            h = MANUAL[activation](h)
    torch.testing.assert_close(model(x), h, rtol=0, atol=1e-6)


def test_per_neuron_activations_of_an_mlp_match_a_manual_computation(digits, rng):
    template = _template("mlp", digits)
    genome = _mixed(template, rng)
    model = template.build(genome, seed=2)
    assert isinstance(model.act0, NeuronActivations) and isinstance(model.act1, NeuronActivations)
    x = digits.val.x[:20]
    h = x.flatten(1)
    for layer in range(2):
        pre = getattr(model, f"fc{layer}")(h)
        names = genome.neuron_activations[layer]
        h = torch.stack([MANUAL[names[j]](pre[:, j]) for j in range(pre.shape[1])], dim=1)
        torch.testing.assert_close(getattr(model, f"act{layer}")(pre), h, rtol=0, atol=1e-6)
    torch.testing.assert_close(model(x), model.fc2(h), rtol=0, atol=1e-5)


def test_per_channel_activations_of_a_cnn_match_a_manual_computation(digits, rng):
    template = _template("cnn", digits)
    genome = _mixed(template, rng)
    model = template.build(genome, seed=2)
    pre = model.conv0(digits.val.x[:8])  # [8, 4, 4, 4]
    names = genome.neuron_activations[0]
    expected = torch.stack([MANUAL[names[c]](pre[:, c]) for c in range(pre.shape[1])], dim=1)
    torch.testing.assert_close(model.act0(pre), expected, rtol=0, atol=1e-6)
    # A negative input shows the branches really differ per channel.
    probe = -torch.ones(1, 4, 2, 2)
    out = model.act0(probe)[0, :, 0, 0]
    expected_probe = torch.tensor([float(MANUAL[n](torch.tensor(-1.0))) for n in names])
    torch.testing.assert_close(out, expected_probe, rtol=0, atol=1e-6)


def test_a_per_neuron_list_with_one_kind_builds_the_plain_module(digits, rng):
    template = _template("mlp", digits)
    g = _sparse(template, rng, activation="relu")
    genome = Genome(g.masks, g.activations, (("tanh",) * 32, None))
    model = template.build(genome, seed=0)
    assert isinstance(model.act0, nn.Tanh) and isinstance(model.act1, nn.ReLU)


# --------------------------------------------------------------------------- mismatches


def test_genome_for_another_template_is_refused(digits, rng):
    mlp = _template("mlp", digits)
    cnn = _template("cnn", digits)
    with pytest.raises(GenomeError, match="do not match the mlp template"):
        mlp.build(cnn.dense_genome(), seed=0)
    with pytest.raises(GenomeError, match="do not match the cnn template"):
        cnn.build(mlp.dense_genome(), seed=0)
    wider = MLPTemplate(digits.input_shape, digits.num_classes, (64, 32))
    with pytest.raises(GenomeError, match="fc0"):
        wider.build(mlp.dense_genome(), seed=0)


def test_wrong_number_of_activations_is_refused(digits):
    template = _template("mlp", digits)
    genome = Genome(template.dense_genome().masks, ("relu",))
    with pytest.raises(GenomeError, match="1 activations but the template has 2 hidden layers"):
        template.build(genome, seed=0)


def test_wrong_number_of_neuron_activations_is_refused(digits):
    template = _template("mlp", digits)
    genome = Genome(template.dense_genome().masks, ("relu", "relu"), (None, ("tanh",) * 31))
    with pytest.raises(GenomeError, match="hidden layer 1 has 32 neurons but the genome gives 31"):
        template.build(genome, seed=0)


def test_activation_pattern_key_ignores_masks_but_not_activations(digits, rng):
    template = _template("mlp", digits)
    a, b = _sparse(template, rng, 0.3), _sparse(template, rng, 0.9)
    assert a.id != b.id
    assert activation_pattern_key(template, a) == activation_pattern_key(template, b)
    c = Genome(a.masks, ("relu", "tanh"))
    assert activation_pattern_key(template, c) != activation_pattern_key(template, a)
    other = MLPTemplate(digits.input_shape, digits.num_classes, (32, 32, 32))
    assert other.key() != template.key()


# --------------------------------------------------------------------------- config errors


def test_make_template_rejects_an_unknown_kind(digits):
    with pytest.raises(ConfigError) as info:
        make_template("transformer", digits.input_shape, 10)
    message = str(info.value)
    assert "model.kind" in message and "'transformer'" in message
    assert "mlp" in message and "cnn" in message


def test_make_template_builds_both_kinds(digits):
    assert make_template("mlp", digits.input_shape, 10, widths=[8]).widths == (8,)
    cnn = make_template("cnn", digits.input_shape, 10, channels=[2], widths=[4])
    assert cnn.channels == (2,) and cnn.widths == (4,)
    with pytest.raises(ConfigError, match="model.channels"):
        make_template("mlp", digits.input_shape, 10, channels=[4])
    with pytest.raises(ConfigError, match="model.widths"):
        make_template("mlp", digits.input_shape, 10, widths=[0])
    with pytest.raises(ConfigError, match="at most 3"):
        make_template("cnn", digits.input_shape, 10, channels=[2, 2, 2, 2])


@pytest.mark.parametrize(
    "cls, kwargs, field, shown, choices",
    [
        (TrainingSettings, {"method": "foo"}, "training.method", "'foo'", TRAINING_METHODS),
        (TrainingSettings, {"epochs": 0}, "training.epochs", "0", ("positive integer",)),
        (TrainingSettings, {"epochs": 2.5}, "training.epochs", "2.5", ("positive integer",)),
        (TrainingSettings, {"eps": 2.0}, "training.eps", "2.0", ("[0, 1]",)),
        (TrainingSettings, {"lr": 0.0}, "training.lr", "0.0", ("positive",)),
        (TrainingSettings, {"lr": float("nan")}, "training.lr", "nan", ("positive",)),
        (TrainingSettings, {"batch_size": -1}, "training.batch_size", "-1", ("positive integer",)),
        (CertificationSettings, {"method": "foo"}, "certification.method", "'foo'", CERTIFICATION_METHODS),
        (CertificationSettings, {"eps": 2.0}, "certification.eps", "2.0", ("[0, 1]",)),
        (CertificationSettings, {"eps": -0.1}, "certification.eps", "-0.1", ("[0, 1]",)),
        (CertificationSettings, {"max_samples": 0}, "certification.max_samples", "0", ("positive integer",)),
    ],
)
def test_bad_settings_name_the_field_the_value_and_the_choices(cls, kwargs, field, shown, choices):
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    message = str(info.value)
    assert message.startswith(field + " "), message
    assert f"got {shown}" in message, message
    for choice in choices:
        assert choice in message, (choice, message)


def test_default_settings_are_valid_and_serialisable():
    assert TrainingSettings().to_dict()["method"] in TRAINING_METHODS
    assert CertificationSettings().to_dict()["method"] in CERTIFICATION_METHODS
    assert TrainingSettings(eps=0.0).eps == 0.0  # eps 0 means clean: allowed
