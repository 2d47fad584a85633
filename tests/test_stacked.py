"""The stacked (population-batched) path: its IBP bounds equal auto_LiRPA's, a candidate's
record does not depend on who shares its stack, masks hold, one diverging candidate fails
alone, and the CUDA path (skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from certevo.evaluators.bounds import bound_module, margin_lower_bounds
from certevo.evaluators.device import cuda_available
from certevo.evaluators.evaluator import CandidateEvaluator, EvaluationRequest
from certevo.evaluators.fitness import FitnessRecord
from certevo.evaluators.models import CNNTemplate, MLPTemplate
from certevo.evaluators.settings import CertificationSettings, TrainingSettings
from certevo.evaluators.stacked import MONOTONE_ACTIVATIONS, StackedNetwork
from certevo.population.genome import Genome, random_genome

TRAINING = TrainingSettings(method="ibp", epochs=3, lr=1e-2, eps=0.05)
CERT = CertificationSettings(method="crown", eps=0.05)
ACTIVATIONS = sorted(MONOTONE_ACTIVATIONS)


@pytest.fixture(scope="module")
def mlp(digits_small):
    return MLPTemplate(digits_small.input_shape, digits_small.num_classes, (32, 32))


@pytest.fixture(scope="module")
def cnn(digits_small):
    return CNNTemplate(digits_small.input_shape, digits_small.num_classes, (4, 8), (16,))


def _genome(template, seed: int, activation: str = "relu", sparsity: float = 0.6, per_neuron: bool = False,
            mix: tuple[str, ...] = ("leaky_relu", "linear", "relu", "sigmoid", "tanh")) -> Genome:
    rng = np.random.default_rng(seed)
    hidden = template.hidden_sizes()
    genome = random_genome(template.layer_shapes(), [activation] * len(hidden), sparsity, rng)
    if per_neuron:  # softplus is left out by default: auto_LiRPA 0.3 has no CROWN bound for it
        mixed = [[mix[int(k)] for k in rng.integers(0, len(mix), size)] for size in hidden]
        genome = Genome(genome.masks, genome.activations, mixed)
    return genome


def _results(record: FitnessRecord) -> dict:
    data = record.to_dict()
    data.pop("timings")
    return data


# ------------------------------------------------------------------- bounds equal auto_LiRPA's


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("activation", [*ACTIVATIONS, "per-neuron mix"])
def test_stacked_ibp_bounds_equal_auto_lirpa(digits_small, mlp, cnn, kind, activation):
    template = mlp if kind == "mlp" else cnn
    mix = activation == "per-neuron mix"
    genomes = [_genome(template, 10 + c, "relu" if mix else activation, per_neuron=mix, mix=tuple(ACTIVATIONS))
               for c in range(3)]
    models = [template.build(g, 20 + c) for c, g in enumerate(genomes)]
    for model in models:  # trained-like weights: larger than the init, so bounds are loose
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(3.0)
    net = StackedNetwork(models)
    x = digits_small.val.x[:60].reshape(3, 20, *digits_small.input_shape)
    y = digits_small.val.y[:60].reshape(3, 20)
    eps = torch.tensor([0.0, 0.02, 0.1])
    stacked = net.margin_lower_bounds(x, y, eps)
    logits = net(x)
    for c, model in enumerate(models):
        bounded = bound_module(model, digits_small.input_shape)
        reference = margin_lower_bounds(bounded, x[c], y[c], float(eps[c]), "ibp", digits_small.num_classes)
        # 1e-5, relative where a bound exceeds 1 in size (float32 holds about 7 digits).
        error = ((stacked[c] - reference).abs() / reference.abs().clamp(min=1.0)).max()
        assert error <= 1e-5, (c, error)
        assert torch.allclose(logits[c], model(x[c]), rtol=0, atol=1e-5)
    assert (stacked[1] < stacked[0]).any(), "a larger eps must give looser bounds somewhere"


# ------------------------------------------------------------------- batch versus alone


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_a_record_is_the_same_alone_and_in_a_batch_of_any_size(digits_small, mlp, cnn, kind):
    """Mixed activations, one inherited start: each candidate alone, in a batch of 2 and of
    5 gives the same record and the same trained weights (bit for bit on this CPU)."""
    template = mlp if kind == "mlp" else cnn
    evaluator = CandidateEvaluator(digits_small, template, TRAINING, CERT)
    parent = evaluator.evaluate(_genome(template, 1), keep_weights=True)
    requests = [
        EvaluationRequest(_genome(template, 2), keep_weights=True),
        EvaluationRequest(_genome(template, 3, "tanh"), keep_weights=True),
        EvaluationRequest(_genome(template, 4, per_neuron=True), keep_weights=True),
        EvaluationRequest(_genome(template, 5, "leaky_relu", sparsity=0.9), keep_weights=True),
        EvaluationRequest(_genome(template, 6), initial_weights=parent.weights, keep_weights=True,
                          prior_epochs=3, inherited_from=parent.record.candidate_id),
    ]
    alone = [evaluator.evaluate_batch([r])[0] for r in requests]
    pairs = evaluator.evaluate_batch(requests[:2]) + evaluator.evaluate_batch(requests[2:4])
    together = CandidateEvaluator(digits_small, template, TRAINING, CERT).evaluate_batch(list(reversed(requests)))[::-1]
    for batch in (pairs, together):
        for single, batched in zip(alone, batch):
            assert single.record.ok, single.record.failure
            assert _results(batched.record) == _results(single.record)
            for name, tensor in single.weights.items():
                assert torch.equal(batched.weights[name], tensor), name
            for name, tensor in single.gradients.items():
                assert torch.equal(batched.gradients[name], tensor), name
    assert len({r.record.certified_accuracy for r in alone}) > 1, "the candidates should differ"


def test_masks_hold_exactly_in_a_batch(digits_small, mlp, cnn):
    for template in (mlp, cnn):
        genomes = [_genome(template, 40 + c, sparsity=s) for c, s in enumerate((0.5, 0.8, 0.95, 0.99))]
        evaluations = CandidateEvaluator(digits_small, template, TRAINING, CERT).evaluate_batch(
            [EvaluationRequest(g, keep_weights=True) for g in genomes])
        for genome, evaluation in zip(genomes, evaluations):
            assert evaluation.record.ok, evaluation.record.failure
            for name, mask in genome.masks.items():
                weight = evaluation.weights[f"{name}.weight"]
                assert bool((weight[torch.from_numpy(~mask)] == 0).all()), name
                assert torch.count_nonzero(weight) == int(mask.sum()), name


def test_one_diverging_candidate_fails_alone_and_the_others_are_unchanged(digits_small, mlp):
    evaluator = CandidateEvaluator(digits_small, mlp, TRAINING, CERT)
    healthy = [EvaluationRequest(_genome(mlp, 50 + c), keep_weights=True) for c in range(3)]
    exploding = {name: value * 1e30 for name, value in mlp.build(_genome(mlp, 59), 0).state_dict().items()}
    bad = EvaluationRequest(_genome(mlp, 59), initial_weights=exploding)
    batch = evaluator.evaluate_batch([healthy[0], bad, healthy[1], healthy[2]])
    assert not batch[1].record.ok
    assert "diverged" in batch[1].record.failure and "training.lr" in batch[1].record.failure
    assert batch[1].record.failure == evaluator.evaluate_batch([bad])[0].record.failure
    for request, evaluation in zip(healthy, [batch[0], batch[2], batch[3]]):
        single = evaluator.evaluate_batch([request])[0]
        assert evaluation.record.ok
        assert _results(evaluation.record) == _results(single.record)
        assert torch.equal(evaluation.weights["fc0.weight"], single.weights["fc0.weight"])


def test_stacked_training_matches_auto_lirpa_training(digits_small, mlp):
    """The stacked trainer computes IBP itself; trained with auto_LiRPA's bounds instead
    (stacked=False, the one-at-a-time path), the same candidates end with weights equal
    to float tolerance and the same certified accuracy."""
    genomes = [_genome(mlp, 60 + c, a) for c, a in enumerate(("relu", "tanh", "sigmoid"))]
    requests = [EvaluationRequest(g, keep_weights=True) for g in genomes]
    stacked = CandidateEvaluator(digits_small, mlp, TRAINING, CERT).evaluate_batch(requests)
    legacy = CandidateEvaluator(digits_small, mlp, TRAINING, CERT, stacked=False).evaluate_batch(requests)
    for a, b in zip(stacked, legacy):
        assert a.record.certified_accuracy == b.record.certified_accuracy
        assert a.record.clean_accuracy == b.record.clean_accuracy
        assert torch.allclose(a.weights["fc1.weight"], b.weights["fc1.weight"], rtol=0, atol=1e-4)


def test_methods_without_a_stacked_path_still_evaluate_in_a_batch(digits_small, mlp):
    training = TrainingSettings(method="crown-ibp", epochs=1, lr=1e-2, eps=0.05)
    evaluator = CandidateEvaluator(digits_small, mlp, training, CERT)
    requests = [EvaluationRequest(_genome(mlp, 70 + c)) for c in range(2)]
    batch = evaluator.evaluate_batch(requests)
    assert all(e.record.ok and e.record.train_method == "crown-ibp" for e in batch)
    assert _results(batch[1].record) == _results(evaluator.evaluate(requests[1].genome).record)


# ------------------------------------------------------------------- GPU


@pytest.mark.skipif(not cuda_available(), reason="no CUDA GPU on this machine (torch.cuda.is_available() is False); "
                                                 "run on a GPU node to check the cuda path")
def test_cuda_gives_records_that_mean_the_same_as_cpu(digits_small, mlp):
    requests = [EvaluationRequest(_genome(mlp, 80 + c), keep_weights=True) for c in range(3)]
    cpu = CandidateEvaluator(digits_small, mlp, TRAINING, CERT).evaluate_batch(requests)
    gpu = CandidateEvaluator(digits_small, mlp, TRAINING, CERT, device="cuda").evaluate_batch(requests)
    for a, b in zip(cpu, gpu):
        assert b.record.ok, b.record.failure
        assert abs(a.record.certified_accuracy - b.record.certified_accuracy) <= 0.05
        assert b.weights["fc0.weight"].device.type == "cpu"  # results come back to the host
        assert torch.allclose(a.weights["fc0.weight"], b.weights["fc0.weight"], atol=1e-3)


def test_asking_for_cuda_without_a_gpu_says_how_to_fix_it(digits_small, mlp):
    if cuda_available():
        pytest.skip("this machine has a GPU")
    from certevo.population.errors import ConfigError

    with pytest.raises(ConfigError, match="cluster.device: cpu"):
        CandidateEvaluator(digits_small, mlp, TRAINING, CERT, device="cuda")


def test_masked_adam_takes_exactly_torchs_adam_steps():
    """certevo.evaluators.adam: vector-sized candidate slices go through torch's fused Adam, the
    rest through its foreach arithmetic without torch.sqrt of exact zeros (slow on x86);
    every update must be torch.optim.Adam's (fused, respectively foreach), bit for bit,
    with masked (zero-gradient) entries and a changing lr."""
    from certevo.evaluators.adam import MaskedAdam, fused_eligible

    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(4, 16, 16, generator=generator), torch.randn(4, 16, generator=generator),
             torch.randn(4, 10, generator=generator)]
    assert [fused_eligible(p) for p in start] == [True, True, False]
    mask = (torch.rand(4, 16, 16, generator=generator) > 0.8).float()
    ours = [p.clone().requires_grad_(True) for p in start]
    fused = [p.clone().requires_grad_(True) for p in start[:2]]
    foreach = [start[2].clone().requires_grad_(True)]
    optimizers = [MaskedAdam(ours, lr=5e-3), torch.optim.Adam(fused, lr=5e-3, fused=True),
                  torch.optim.Adam(foreach, lr=5e-3)]
    for step in range(60):
        x = torch.randn(4, 8, 16, generator=generator)
        lr = 5e-3 * (1 - step / 60)
        for params, optimizer in ((ours, optimizers[0]), (fused + foreach, None)):
            for p in params:
                p.grad = None
            out = torch.bmm(x, params[0]) + params[1][:, None, :]
            (out**2).mean().backward()
            (params[2] ** 2).sum().mul(0.1).backward()
            params[0].grad.mul_(mask)
        optimizers[0].lr = lr
        for reference in optimizers[1:]:
            reference.param_groups[0]["lr"] = lr
        for optimizer in optimizers:
            optimizer.step()
    for a, b in zip(ours, fused + foreach):
        assert torch.equal(a, b)
    assert bool((ours[0][mask == 0] == start[0][mask == 0]).all()), "masked entries must not move"
