"""Many candidates of one template as one stacked network: weights ``[C, ...]``, inputs
``[C, B, ...]``, one vectorised pass for all of them.

Candidate ``c`` only ever touches slice ``c`` (batched matmuls, grouped convolutions,
per-candidate activation selectors), so a candidate's outputs, bounds and gradients do
not depend on which others share its stack. Interval bounds (IBP) follow auto_LiRPA 0.3's
formulas (centre/radius through linear and conv layers, the margin matrix merged into the
last linear layer, monotone activations applied to both ends); tests hold them equal to
auto_LiRPA's IBP to 1e-5. Training uses them; certificates still come from auto_LiRPA.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from certevo.evaluators.models import NeuronActivations

#: Activations whose interval image is [f(l), f(u)] (monotone non-decreasing), by the
#: name certevo's genomes use for them, with the function the model modules compute.
MONOTONE_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "linear": lambda x: x,
    "softplus": F.softplus,
}

_MODULE_KINDS: dict[type, str] = {
    nn.ReLU: "relu",
    nn.LeakyReLU: "leaky_relu",
    nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh",
    nn.Identity: "linear",
    nn.Softplus: "softplus",
}


class NotStackable(Exception):
    """These models cannot share a stack (the reason says why); evaluate them one at a time."""


@dataclass
class _Linear:
    name: str
    weight: torch.Tensor  # [C, out, in]
    bias: torch.Tensor  # [C, out]


@dataclass
class _Conv:
    name: str
    weight: torch.Tensor  # [C, out, in, k, k]
    bias: torch.Tensor  # [C, out]
    stride: tuple[int, int]
    padding: tuple[int, int]


class _Activation:
    """One hidden layer's activations for the whole stack, in the cheapest form its mix
    allows: one kind everywhere; one kind per candidate (each kind applied only to its
    candidates); or per-neuron kinds (every kind applied, then picked by 0/1 selectors)."""

    def __init__(self, per_candidate: list[list[str]], spatial: bool, device: torch.device) -> None:
        self.kinds = sorted({k for names in per_candidate for k in names})
        self.spatial = spatial
        self.select: torch.Tensor | None = None  # [C, neurons, kinds] 0/1
        self.groups: list[tuple[str, torch.Tensor]] = []
        self.inverse: torch.Tensor | None = None
        if len(self.kinds) == 1:
            return
        if all(len(set(names)) == 1 for names in per_candidate):
            order = []
            for kind in self.kinds:
                members = [c for c, names in enumerate(per_candidate) if names[0] == kind]
                self.groups.append((kind, torch.tensor(members, device=device)))
                order += members
            self.inverse = torch.argsort(torch.tensor(order, device=device))
            return
        self.select = torch.tensor(
            [[[1.0 if n == k else 0.0 for k in self.kinds] for n in names] for names in per_candidate], device=device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.kinds) == 1:
            return MONOTONE_ACTIVATIONS[self.kinds[0]](x)
        if self.groups:
            parts = [MONOTONE_ACTIVATIONS[kind](x.index_select(0, members)) for kind, members in self.groups]
            return torch.cat(parts).index_select(0, self.inverse)
        out = None
        spatial = 2 if self.spatial else 0
        for k, kind in enumerate(self.kinds):
            sel = self.select[:, :, k]  # [C, n]
            sel = sel.reshape(sel.shape[0], 1, sel.shape[1], *([1] * spatial))
            term = MONOTONE_ACTIVATIONS[kind](x) * sel
            out = term if out is None else out + term
        return out


class _Flatten:
    pass


def _neuron_kinds(module: nn.Module, neurons: int) -> list[str]:
    """The activation kind of each neuron (channel) computed by ``module``."""
    if isinstance(module, NeuronActivations):
        names = [None] * neurons
        for kind in module.kinds:
            if kind not in MONOTONE_ACTIVATIONS:
                raise NotStackable(f"activation {kind!r} has no stacked interval bound")
            select = getattr(module, f"select_{kind}").reshape(-1)
            for i in torch.nonzero(select).reshape(-1).tolist():
                names[i] = kind
        return names
    kind = _MODULE_KINDS.get(type(module))
    if kind is None or (kind == "leaky_relu" and module.negative_slope != 0.01):
        raise NotStackable(f"activation module {module!r} has no stacked interval bound")
    if kind == "softplus" and (module.beta != 1 or module.threshold != 20):
        raise NotStackable(f"activation module {module!r} has no stacked interval bound")
    return [kind] * neurons


class StackedNetwork:
    """``C`` sequential models of one architecture (Flatten, Linear, Conv2d and monotone
    activations), held as stacked parameter tensors that require gradients."""

    def __init__(self, models: Sequence[nn.Sequential], device: torch.device | str = "cpu") -> None:
        if not models:
            raise NotStackable("no models to stack")
        children = [list(m.named_children()) for m in models]
        names = [[n for n, _ in c] for c in children]
        if any(n != names[0] for n in names):
            raise NotStackable("the models do not share one architecture")
        self.size = len(models)
        self.device = torch.device(device)
        self.ops: list[_Linear | _Conv | _Activation | _Flatten] = []
        width, spatial = None, False
        for i, (name, first) in enumerate(children[0]):
            same = [c[i][1] for c in children]
            if isinstance(first, nn.Flatten):
                self.ops.append(_Flatten())
            elif isinstance(first, nn.Linear):
                self.ops.append(_Linear(name, self._stack([m.weight for m in same]), self._stack([m.bias for m in same])))
                width, spatial = first.out_features, False
            elif isinstance(first, nn.Conv2d):
                if first.groups != 1 or first.dilation != (1, 1) or not isinstance(first.padding, tuple):
                    raise NotStackable(f"convolution {name} uses groups, dilation or string padding")
                self.ops.append(_Conv(name, self._stack([m.weight for m in same]), self._stack([m.bias for m in same]),
                                      tuple(first.stride), tuple(first.padding)))
                width, spatial = first.out_channels, True
            else:
                if width is None:
                    raise NotStackable(f"module {name} ({type(first).__name__}) comes before any layer")
                self.ops.append(self._activation([_neuron_kinds(m, width) for m in same], spatial))
        self.layers = {op.name: op for op in self.ops if isinstance(op, (_Linear, _Conv))}

    def _stack(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([t.detach() for t in tensors]).to(self.device).clone().requires_grad_(True)

    def _activation(self, per_candidate: list[list[str]], spatial: bool) -> _Activation:
        return _Activation(per_candidate, spatial, self.device)

    def parameters(self) -> list[torch.Tensor]:
        """Stacked weights and biases, layer by layer."""
        return [t for op in self.layers.values() for t in (op.weight, op.bias)]

    def weights(self) -> dict[str, torch.Tensor]:
        """Each prunable layer's stacked weight, by layer name."""
        return {name: op.weight for name, op in self.layers.items()}

    def state_dicts(self, templates: Sequence[nn.Module]) -> list[dict[str, torch.Tensor]]:
        """Each candidate's weights as a state dict of its model (``templates[c]``, whose
        buffers, e.g. activation selectors, are kept)."""
        out = []
        for c, model in enumerate(templates):
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            for name, op in self.layers.items():
                state[f"{name}.weight"] = op.weight[c].detach().cpu().clone()
                state[f"{name}.bias"] = op.bias[c].detach().cpu().clone()
            out.append(state)
        return out

    # --- forward passes -------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[C, B, classes]`` of inputs ``[C, B, ...]`` (candidate c sees x[c])."""
        for op in self.ops:
            if isinstance(op, _Linear):
                x = torch.baddbmm(op.bias.unsqueeze(1), x, op.weight.transpose(1, 2))
            elif isinstance(op, _Conv):
                x = _conv(x, op.weight, op.bias, op)
            elif isinstance(op, _Flatten):
                x = x.flatten(2)
            else:
                x = op(x)
        return x

    __call__ = forward

    def interval(self, lower: torch.Tensor, upper: torch.Tensor, *, stop_before_last: bool = False,
                 box: tuple[torch.Tensor, torch.Tensor] | None = None):
        """IBP bounds of every layer's output, given input bounds ``[C, B, ...]``; with
        ``stop_before_last`` the bounds of the last linear layer's input. ``box``, if
        given, is the input's ``(upper + lower, upper - lower)`` computed beforehand (then
        ``lower`` and ``upper`` are not used).

        auto_LiRPA's centre ``W (u+l)/2 + b`` and radius ``|W| (u-l)/2`` are computed as
        ``0.5 W (u+l) + b`` (the 0.5 inside the matmul) and ``|W| (u-l)``, halved where it
        is added to or taken from the centre: halving is exact in floating point, so these
        are the same bits, without a pass over every activation to halve it."""
        ops = self.ops[:-1] if stop_before_last else self.ops
        for op in ops:
            if isinstance(op, (_Linear, _Conv)):
                if box is not None:
                    (total, width), box = box, None
                else:
                    total, width = upper + lower, upper - lower
                if isinstance(op, _Linear):
                    center = torch.baddbmm(op.bias.unsqueeze(1), total, op.weight.transpose(1, 2), alpha=0.5)
                    deviation = torch.bmm(width, op.weight.abs().transpose(1, 2))
                else:
                    half = op.weight * 0.5
                    center = _conv(total, half, op.bias, op)
                    deviation = _conv(width, op.weight.abs(), None, op)
                lower, upper = torch.sub(center, deviation, alpha=0.5), torch.add(center, deviation, alpha=0.5)
            elif isinstance(op, _Flatten) and box is not None:
                box = (box[0].flatten(2), box[1].flatten(2))
            elif isinstance(op, _Flatten):
                lower, upper = lower.flatten(2), upper.flatten(2)
            else:
                lower, upper = op(lower), op(upper)
        return lower, upper

    def margin_lower_bounds(self, x: torch.Tensor, labels: torch.Tensor, eps: torch.Tensor | float,
                            box: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """IBP lower bounds of ``logit_y - logit_j`` (j != y) over the eps-ball clipped to
        [0, 1], shape ``[C, B, classes-1]``. ``eps`` is a number or one per candidate ([C]);
        ``box`` optionally gives the ball's :func:`input_box` for ``x`` already computed."""
        last = self.ops[-1]
        if not isinstance(last, _Linear):
            raise NotStackable("the last layer is not linear")
        if box is None:
            if isinstance(eps, torch.Tensor):
                eps = eps.reshape(-1, *([1] * (x.dim() - 1)))
            box = input_box(x, eps)
        lower, upper = self.interval(x, x, stop_before_last=True, box=box)
        classes = last.weight.shape[1]
        # The margin matrix merged into the last layer, as auto_LiRPA does: row (y, j) of
        # the merged weight is W_y - W_j (C @ W with C's rows e_y - e_j; a dot product with
        # one +1, one -1 and zeros is exact). Every (y, j) pair is bounded in one dense
        # matmul, then each sample's own y is picked.
        pairs = _pair_matrix(classes, last.weight.device)  # [K*(K-1), K]
        weight = torch.matmul(pairs, last.weight)  # [C, K*(K-1), in]
        bias = torch.matmul(last.bias, pairs.t())  # [C, K*(K-1)]
        center = torch.baddbmm(weight.new_zeros(()), upper + lower, weight.transpose(1, 2), beta=0.0, alpha=0.5)
        deviation = torch.bmm(upper - lower, weight.abs().transpose(1, 2))
        pick = (labels * (classes - 1)).unsqueeze(-1) + torch.arange(classes - 1, device=labels.device)  # [C, B, K-1]
        center, deviation = center.gather(2, pick), deviation.gather(2, pick)
        bias = bias.unsqueeze(1).expand(-1, labels.shape[1], -1).gather(2, pick)
        return torch.sub(center, deviation, alpha=0.5) + bias


def input_box(x: torch.Tensor, eps: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(upper + lower, upper - lower)`` of the eps-ball around ``x`` clipped to [0, 1]."""
    lower, upper = (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)
    return upper + lower, upper - lower


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, op: _Conv) -> torch.Tensor:
    """Candidate c's convolution of x[c] with weight[c].

    On the CPU one call per candidate: oneDNN picks its algorithm by shape, so one grouped
    convolution would make a candidate's result depend (in the last bits) on how many
    share the stack. On a GPU (where many small launches cost more than last-bit
    reproducibility across stack sizes is worth) one grouped convolution."""
    if x.device.type == "cpu":
        return torch.stack([
            F.conv2d(x[c], weight[c], None if bias is None else bias[c], op.stride, op.padding) for c in range(x.shape[0])
        ])
    c, b = x.shape[:2]
    merged = x.transpose(0, 1).reshape(b, c * x.shape[2], *x.shape[3:])
    out = F.conv2d(merged, weight.reshape(-1, *weight.shape[2:]), None if bias is None else bias.reshape(-1),
                   op.stride, op.padding, 1, c)
    return out.reshape(b, c, -1, *out.shape[2:]).transpose(0, 1)


_PAIRS: dict[tuple[int, str], torch.Tensor] = {}


def _pair_matrix(classes: int, device: torch.device) -> torch.Tensor:
    """Rows e_y - e_j for y in order and, within y, every j != y in order: [K*(K-1), K]."""
    key = (classes, str(device))
    if key not in _PAIRS:
        eye = torch.eye(classes)
        _PAIRS[key] = torch.stack([eye[y] - eye[j] for y in range(classes) for j in range(classes) if j != y]).to(device)
    return _PAIRS[key]


__all__ = ["MONOTONE_ACTIVATIONS", "NotStackable", "StackedNetwork"]
