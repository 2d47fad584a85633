"""Model templates: a genome plus a template plus a seed gives a masked torch model.

Pruned weights are exact zeros in the parameters themselves (see design.md: a mask applied
in ``forward`` breaks auto_LiRPA 0.3's CROWN pass).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from certevo.evaluators.names import TEMPLATE_KINDS
from certevo.population.errors import ConfigError, GenomeError
from certevo.population.genome import Genome, dense_genome


def activation_module(name: str) -> nn.Module:
    """A fresh module computing activation ``name``."""
    modules = {
        "relu": nn.ReLU,
        "leaky_relu": lambda: nn.LeakyReLU(0.01),
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "linear": nn.Identity,
        "gelu": nn.GELU,
        "elu": nn.ELU,
        "softplus": nn.Softplus,
    }
    if name not in modules:
        raise GenomeError(f"unknown activation {name!r}; use one of {', '.join(modules)}")
    return modules[name]()


class NeuronActivations(nn.Module):
    """Per-neuron activation choice: ``sum_k act_k(x) * select_k``, ``select_k`` a 0/1
    constant per neuron (per channel for convolutions).

    Only multiplications by non-negative constants and additions are added to the graph,
    so auto_LiRPA's bounds stay sound and every branch stays supported.
    """

    def __init__(self, names: Sequence[str], spatial: bool) -> None:
        super().__init__()
        self.kinds = sorted(set(names))
        shape = (1, len(names), 1, 1) if spatial else (1, len(names))
        self.branches = nn.ModuleList(activation_module(k) for k in self.kinds)
        for kind in self.kinds:
            select = torch.tensor([1.0 if n == kind else 0.0 for n in names]).reshape(shape)
            self.register_buffer(f"select_{kind}", select)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for kind, branch in zip(self.kinds, self.branches):
            term = branch(x) * getattr(self, f"select_{kind}")
            out = term if out is None else out + term
        return out


def _hidden_activation(genome: Genome, layer: int, spatial: bool) -> nn.Module:
    per_neuron = genome.neuron_activations[layer] if genome.neuron_activations else None
    if per_neuron is None or len(set(per_neuron)) == 1:
        return activation_module(per_neuron[0] if per_neuron else genome.activations[layer])
    return NeuronActivations(per_neuron, spatial)


class ModelTemplate(Protocol):
    """What the evaluators need from a template."""

    kind: str

    def layer_shapes(self) -> dict[str, tuple[int, ...]]: ...
    def hidden_sizes(self) -> list[int]: ...
    def build(self, genome: Genome, seed: int) -> nn.Sequential: ...
    def key(self) -> str: ...


def _seeded_init(module: nn.Module, seed: int, genome: Genome | None = None) -> None:
    """IBP initialisation (Shi et al., NeurIPS 2021: weights N(0, sqrt(2*pi)/fan_in)),
    with fan_in counted over the weights the mask keeps (mean per output unit), so a
    sparse layer starts with the same bound growth as a dense one; zero biases."""
    generator = torch.Generator().manual_seed(seed)
    masks = genome.masks if genome is not None else {}
    for name, child in module.named_modules():
        if isinstance(child, (nn.Linear, nn.Conv2d)):
            fan_in = child.weight[0].numel()
            if name in masks:
                fan_in = max(1.0, float(masks[name].sum()) / masks[name].shape[0])
            with torch.no_grad():
                child.weight.normal_(0.0, float(np.sqrt(2 * np.pi) / fan_in), generator=generator)
                child.bias.zero_()


def apply_masks(model: nn.Module, genome: Genome) -> None:
    """Zero every pruned weight of ``model`` in place."""
    named = dict(model.named_modules())
    with torch.no_grad():
        for name, mask in genome.masks.items():
            layer = named[name]
            layer.weight.mul_(torch.from_numpy(mask.astype(np.float32)))


def _check_genome(template: ModelTemplate, genome: Genome) -> None:
    shapes = template.layer_shapes()
    got = {name: tuple(m.shape) for name, m in genome.masks.items()}
    if got != shapes:
        raise GenomeError(
            f"genome layers {got} do not match the {template.kind} template's {shapes}; "
            "make the genome from this template (template.dense_genome() or a K-start)"
        )
    hidden = template.hidden_sizes()
    if len(genome.activations) != len(hidden):
        raise GenomeError(
            f"genome has {len(genome.activations)} activations but the template has "
            f"{len(hidden)} hidden layers; give one activation per hidden layer"
        )
    if genome.neuron_activations is not None:
        for i, (per_neuron, size) in enumerate(zip(genome.neuron_activations, hidden)):
            if per_neuron is not None and len(per_neuron) != size:
                raise GenomeError(
                    f"hidden layer {i} has {size} neurons but the genome gives "
                    f"{len(per_neuron)} per-neuron activations; give exactly {size}"
                )


@dataclass(frozen=True)
class MLPTemplate:
    """Fully connected net: flatten, then ``widths`` hidden layers, then the classifier."""

    input_shape: tuple[int, int, int]
    num_classes: int
    widths: tuple[int, ...] = (64, 64)
    kind: str = "mlp"

    def __post_init__(self) -> None:
        if not self.widths or any(int(w) < 1 for w in self.widths):
            raise ConfigError(f"model.widths must be positive integers; got {list(self.widths)}; e.g. [256, 256]")

    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Weight shape of each prunable layer, by name."""
        sizes = [int(np.prod(self.input_shape)), *self.widths, self.num_classes]
        return {f"fc{i}": (sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1)}

    def hidden_sizes(self) -> list[int]:
        """Neurons per hidden layer."""
        return list(self.widths)

    def key(self) -> str:
        """Identifies the architecture (not the genome)."""
        return f"mlp{list(self.input_shape)}-{list(self.widths)}-{self.num_classes}"

    def dense_genome(self, activation: str = "relu") -> Genome:
        """The unpruned genome with one activation everywhere."""
        return dense_genome(self.layer_shapes(), [activation] * len(self.widths))

    def build(self, genome: Genome, seed: int) -> nn.Sequential:
        """A freshly initialised model, deterministic in ``seed``, masked by ``genome``."""
        _check_genome(self, genome)
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        shapes = list(self.layer_shapes().values())
        for i, (out_f, in_f) in enumerate(shapes):
            layers[f"fc{i}"] = nn.Linear(in_f, out_f)
            if i < len(self.widths):
                layers[f"act{i}"] = _hidden_activation(genome, i, spatial=False)
        model = nn.Sequential(layers)
        _seeded_init(model, seed, genome)
        apply_masks(model, genome)
        return model


@dataclass(frozen=True)
class CNNTemplate:
    """Small CNN: conv layers (kernel 4, stride 2, padding 1), then fully connected layers."""

    input_shape: tuple[int, int, int]
    num_classes: int
    channels: tuple[int, ...] = (16, 32)
    widths: tuple[int, ...] = (100,)
    kind: str = "cnn"

    def __post_init__(self) -> None:
        if not self.channels or any(int(c) < 1 for c in self.channels):
            raise ConfigError(f"model.channels must be positive integers; got {list(self.channels)}; e.g. [16, 32]")
        if any(int(w) < 1 for w in self.widths):
            raise ConfigError(f"model.widths must be positive integers; got {list(self.widths)}; e.g. [100]")
        side = min(self.input_shape[1:])
        if side // (2 ** len(self.channels)) < 1:
            raise ConfigError(
                f"model.channels has {len(self.channels)} conv layers, each halving the "
                f"{side}-pixel input; use at most {int(np.log2(side))} for this data"
            )

    def _spatial(self) -> list[tuple[int, int]]:
        h, w = self.input_shape[1:]
        out = []
        for _ in self.channels:
            h, w = h // 2, w // 2
            out.append((h, w))
        return out

    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Weight shape of each prunable layer, by name."""
        shapes: dict[str, tuple[int, ...]] = {}
        in_c = self.input_shape[0]
        for i, c in enumerate(self.channels):
            shapes[f"conv{i}"] = (c, in_c, 4, 4)
            in_c = c
        h, w = self._spatial()[-1]
        sizes = [in_c * h * w, *self.widths, self.num_classes]
        for i in range(len(sizes) - 1):
            shapes[f"fc{i}"] = (sizes[i + 1], sizes[i])
        return shapes

    def hidden_sizes(self) -> list[int]:
        """Neurons per hidden layer (channels for conv layers)."""
        return [*self.channels, *self.widths]

    def key(self) -> str:
        """Identifies the architecture (not the genome)."""
        return f"cnn{list(self.input_shape)}-{list(self.channels)}-{list(self.widths)}-{self.num_classes}"

    def dense_genome(self, activation: str = "relu") -> Genome:
        """The unpruned genome with one activation everywhere."""
        return dense_genome(self.layer_shapes(), [activation] * len(self.hidden_sizes()))

    def build(self, genome: Genome, seed: int) -> nn.Sequential:
        """A freshly initialised model, deterministic in ``seed``, masked by ``genome``."""
        _check_genome(self, genome)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        hidden = 0
        in_c = self.input_shape[0]
        for i, c in enumerate(self.channels):
            layers[f"conv{i}"] = nn.Conv2d(in_c, c, kernel_size=4, stride=2, padding=1)
            layers[f"act{hidden}"] = _hidden_activation(genome, hidden, spatial=True)
            hidden += 1
            in_c = c
        layers["flatten"] = nn.Flatten()
        fc_shapes = [s for name, s in self.layer_shapes().items() if name.startswith("fc")]
        for i, (out_f, in_f) in enumerate(fc_shapes):
            layers[f"fc{i}"] = nn.Linear(in_f, out_f)
            if i < len(self.widths):
                layers[f"act{hidden}"] = _hidden_activation(genome, hidden, spatial=False)
                hidden += 1
        model = nn.Sequential(layers)
        _seeded_init(model, seed, genome)
        apply_masks(model, genome)
        return model


def make_template(
    kind: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    widths: Sequence[int] | None = None,
    channels: Sequence[int] | None = None,
) -> MLPTemplate | CNNTemplate:
    """The template of ``kind`` ("mlp" or "cnn") for data of ``input_shape``."""
    shape = tuple(int(s) for s in input_shape)
    if kind == "mlp":
        if channels:
            raise ConfigError(f"model.channels is set to {list(channels)} but an mlp has no conv layers; remove it or use kind: cnn")
        return MLPTemplate(shape, num_classes, tuple(widths) if widths is not None else (64, 64))
    if kind == "cnn":
        return CNNTemplate(
            shape,
            num_classes,
            tuple(channels) if channels is not None else (16, 32),
            tuple(widths) if widths is not None else (100,),
        )
    raise ConfigError(f"model.kind is {kind!r}; use one of {', '.join(TEMPLATE_KINDS)}")


def activation_pattern_key(template: ModelTemplate, genome: Genome) -> str:
    """Key under which a traced bounded module can be reused: architecture plus activations."""
    import json

    return template.key() + "|" + json.dumps(genome.activation_pattern(), separators=(",", ":"))
