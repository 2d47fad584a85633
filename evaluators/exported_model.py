"""Using an exported mask: a fresh certevo model, or the user's own model.

Two routes:

* :func:`build_exported_model` builds the model the search evaluated (same template,
  same activations) with pruned weights as exact zeros in the parameters — ready for
  :func:`certevo.evaluators.bounds.bound_module` and certified training.
* :func:`apply_mask_to_model` prunes a model *you* built, through
  ``torch.nn.utils.prune.custom_from_mask``. That reparametrises each layer as
  ``weight = weight_orig * weight_mask`` recomputed by a forward pre-hook, so pruned
  weights stay zero while you train (gradients of ``weight_orig`` at pruned positions
  are multiplied by zero).

  **Before certifying with auto_LiRPA, make the mask permanent** with
  :func:`make_mask_permanent` (``torch.nn.utils.prune.remove`` on each layer): it turns
  ``weight`` back into a plain parameter holding the zeros. A weight computed in
  ``forward`` (what pruning's hook does) breaks auto_LiRPA 0.3's CROWN backward pass
  (design.md, "Masks are exact zeros in the weights"); certevo itself never uses the
  reparametrisation for that reason. After ``prune.remove`` nothing keeps the zeros
  any more: further training must mask gradients itself (as
  :func:`certevo.evaluators.training.train_masked` does).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from certevo.evaluators.models import CNNTemplate, MLPTemplate, make_template
from certevo.population.errors import CheckpointError, GenomeError
from certevo.population.export import Export

__all__ = ["apply_mask_to_model", "build_exported_model", "make_mask_permanent", "template_from_export"]


def template_from_export(export: Export) -> MLPTemplate | CNNTemplate:
    """The model template the export describes; checked against the export's masks."""
    model = export.model
    try:
        template = make_template(
            model["kind"],
            model["input_shape"],
            int(model["num_classes"]),
            widths=model.get("widths"),
            channels=model.get("channels"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"export {export.json_path} has an unusable model template {model!r:.200} ({exc}); "
            "export the candidate again with `certevo export`"
        ) from exc
    shapes = template.layer_shapes()
    got = {name: tuple(m.shape) for name, m in export.genome.masks.items()}
    if got != shapes:
        raise CheckpointError(
            f"export {export.json_path}: its masks have shapes {got} but its model template "
            f"({template.key()}) has layers {shapes}; the manifest was edited; export the candidate again"
        )
    return template


def build_exported_model(export: Export, seed: int = 0, *, trained: bool = False) -> nn.Sequential:
    """A model of the export's template and activations, with every pruned weight an
    exact zero in its parameter: freshly initialised (deterministic in ``seed``), or, with
    ``trained``, holding the export's trained weights."""
    model = template_from_export(export).build(export.genome, seed)
    if trained:
        if export.trained_weights is None:
            raise CheckpointError(
                f"export {export.json_path} carries no trained weights; build it untrained, or export the candidate "
                "again from a search with search.weight_inheritance: true"
            )
        state = {k: torch.from_numpy(v.copy()) for k, v in export.trained_weights.items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"export {export.json_path}: its trained weights do not fit its template ({exc}); "
                                  "export the candidate again") from exc
    return model


def _module_names_with_weight(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)]


def apply_mask_to_model(
    model: nn.Module, export: Export, layer_map: Mapping[str, str] | None = None
) -> nn.Module:
    """Prune ``model`` in place with the export's masks and return it.

    ``layer_map`` maps export layer names (``"fc0"``, ``"conv1"``...; see
    ``export.genome.masks``) to names of ``model``'s modules as ``model.get_submodule``
    takes them (e.g. ``{"fc0": "encoder.0"}``); layers it does not name use the same name
    in ``model``. Each target module needs a ``weight`` of exactly the mask's shape
    (``[out, in]`` for linear, ``[out, in, kh, kw]`` for conv layers).

    Every layer is checked before any is pruned (:class:`GenomeError` naming the layer,
    both shapes and the fix), so a failure leaves ``model`` unchanged. The masks are
    applied with ``torch.nn.utils.prune.custom_from_mask`` — see the module docstring:
    call :func:`make_mask_permanent` (``prune.remove``) before certifying with auto_LiRPA.
    """
    mapping = dict(layer_map or {})
    masks = export.genome.masks
    unknown = sorted(set(mapping) - set(masks))
    if unknown:
        raise GenomeError(
            f"layer_map names {unknown}, which are not layers of export {export.candidate_id}; "
            f"its layers are {list(masks)}; map those to your module names"
        )
    targets: list[tuple[str, nn.Module, np.ndarray]] = []
    for layer, mask in masks.items():
        target = mapping.get(layer, layer)
        try:
            module = model.get_submodule(target)
        except AttributeError:
            raise GenomeError(
                f"export layer {layer!r} (mask shape {list(mask.shape)}) maps to module {target!r}, "
                f"which the model does not have; modules with a weight: "
                f"{_module_names_with_weight(model)}; pass layer_map={{{layer!r}: '<module name>'}}"
            ) from None
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise GenomeError(
                f"export layer {layer!r} maps to module {target!r} ({type(module).__name__}), which has no "
                f"weight tensor; map it to a Linear or Conv2d layer via layer_map"
            )
        if tuple(weight.shape) != tuple(mask.shape):
            raise GenomeError(
                f"export layer {layer!r} has mask shape {list(mask.shape)} but module {target!r} has "
                f"weight shape {list(weight.shape)}; map the layer to a module with that weight shape "
                f"(layer_map), or build the exported architecture with build_exported_model()"
            )
        targets.append((layer, module, mask))
    for _, module, mask in targets:
        weight = module.weight
        prune.custom_from_mask(module, "weight", torch.from_numpy(mask.astype(np.float32)).to(weight.device, weight.dtype))
    return model


def make_mask_permanent(model: nn.Module) -> nn.Module:
    """Make the pruning of every pruned ``weight`` in ``model`` permanent
    (``torch.nn.utils.prune.remove``): ``weight`` becomes a plain parameter with the
    zeros in it, and the forward hook is gone — required before auto_LiRPA certification.
    Returns ``model``."""
    for module in model.modules():
        if prune.is_pruned(module) and hasattr(module, "weight_orig"):
            prune.remove(module, "weight")
    return model
