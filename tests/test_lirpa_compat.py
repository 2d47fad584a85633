"""The auto_LiRPA compatibility layer, against the real auto_LiRPA 0.3 on this torch."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from certevo.evaluators import lirpa_compat
from certevo.evaluators.bounds import bound_module
from certevo.evaluators.lirpa_compat import applied_patches, auto_lirpa


def _small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(flatten=nn.Flatten(), fc0=nn.Linear(4, 5), act0=nn.ReLU(), fc1=nn.Linear(5, 3))
    )


def test_auto_lirpa_imports_and_exposes_the_api():
    module = auto_lirpa()
    assert module.__name__ == "auto_LiRPA"
    for name in ("BoundedModule", "BoundedTensor", "PerturbationLpNorm"):
        assert hasattr(module, name), name
    # A second call changes nothing: same module, same patched method, same patch list.
    named_members = module.BoundedModule._named_members
    patches = applied_patches()
    assert auto_lirpa() is module
    assert module.BoundedModule._named_members is named_members
    assert applied_patches() == patches


def test_applied_patches_lists_each_needed_patch_once():
    patches = applied_patches()
    assert isinstance(patches, tuple)
    assert all(isinstance(p, str) and p for p in patches)
    assert len(patches) == len(set(patches)), patches
    # On torch 2.x the keyword fix for named_parameters() is always needed.
    assert "BoundedModule._named_members" in patches
    # Every patch that is listed is really in effect.
    if "torch._C.Node.__getitem__" in patches:
        assert hasattr(torch._C.Node, "__getitem__")
    if "torch.onnx.symbolic_helper._set_opset_version" in patches:
        import torch.onnx.symbolic_helper as helper

        assert callable(helper._set_opset_version)
    if "numpy.lib.arraysetops" in patches:
        from numpy.lib.arraysetops import isin  # noqa: F401  (the import auto_LiRPA does)


def test_named_parameters_of_bounded_module_use_the_models_names():
    lirpa = auto_lirpa()
    model = _small_net()
    bounded = lirpa.BoundedModule(model, torch.zeros(1, 4))
    names = [name for name, _ in bounded.named_parameters()]
    assert names == [name for name, _ in model.named_parameters()]
    assert names == ["fc0.weight", "fc0.bias", "fc1.weight", "fc1.bias"]
    # torch 2 passes remove_duplicate to _named_members; both spellings must work.
    assert len(list(bounded.parameters())) == 4
    assert [n for n, _ in bounded._named_members(lambda m: m._parameters.items(), remove_duplicate=True)]


def test_bounded_module_shares_parameter_storage_with_the_model():
    model = _small_net()
    bounded = bound_module(model, (4,))
    model_params = dict(model.named_parameters())
    bounded_params = dict(bounded.named_parameters())
    for name, param in model_params.items():
        assert bounded_params[name].data_ptr() == param.data_ptr(), name
    # A change to the model's weights is seen by the bounded module (no stale copy).
    x = torch.rand(2, 4)
    with torch.no_grad():
        model.fc1.bias.add_(10.0)
    assert torch.allclose(bounded(x), model(x))


def test_patches_are_idempotent_when_applied_again():
    """Running the patches a second time (a cache_clear, a module reload) must neither
    duplicate the list of applied patches nor wrap a patch around itself."""
    lirpa = auto_lirpa()
    before = lirpa.BoundedModule._named_members
    saved_applied = list(lirpa_compat._applied)
    import auto_LiRPA.bound_multi_gpu as multi

    before_multi = multi.BoundDataParallel._named_members
    try:
        lirpa_compat.auto_lirpa.cache_clear()
        assert lirpa_compat.auto_lirpa() is lirpa
        # Still works after the second pass.
        bounded = lirpa.BoundedModule(_small_net(), torch.zeros(1, 4))
        assert [n for n, _ in bounded.named_parameters()][0] == "fc0.weight"
        double_wrapped = getattr(lirpa.BoundedModule._named_members, "__wrapped__", None) is before
        assert not double_wrapped, "BoundedModule._named_members was wrapped a second time"
        assert lirpa.BoundedModule._named_members is before
        assert len(applied_patches()) == len(set(applied_patches())), applied_patches()
    finally:
        lirpa.BoundedModule._named_members = before
        multi.BoundDataParallel._named_members = before_multi
        lirpa_compat._applied[:] = saved_applied

