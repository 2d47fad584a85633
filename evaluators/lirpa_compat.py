"""Compatibility layer that lets auto-lirpa 0.3 (2022) run on torch 2.x and numpy 2.

auto-lirpa 0.3 is the only release on PyPI. On current torch and numpy it fails in four
places; each patch below is applied only where the installed version needs it, and does
nothing otherwise:

1. ``torch.onnx.symbolic_helper._set_opset_version`` no longer exists.
2. ``torch._C.Node`` lost ``__getitem__`` (auto_LiRPA reads node attributes as ``n[k]``).
3. ``numpy.lib.arraysetops`` is gone in numpy 2 (auto_LiRPA imports ``isin`` from it).
4. ``BoundedModule._named_members`` lacks the ``remove_duplicate`` keyword that torch 2's
   ``named_parameters()`` passes.

Use :func:`auto_lirpa` instead of ``import auto_LiRPA``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
import types
import warnings
from typing import Any

from certevo.population.errors import CertevoError

INSTALL_HINT = (
    "auto_LiRPA is not installed. Install it without its stale dependency pins: "
    "`pip install --no-deps auto-lirpa==0.3` (its real runtime needs come with certevo), "
    "or run `make test` / `make run`, which set up the virtual environment for you."
)

_applied: list[str] = []


class AutoLirpaMissing(CertevoError, ImportError):
    """auto_LiRPA cannot be imported."""


def _patch_opset_setter() -> None:
    import torch.onnx.symbolic_helper as helper

    if hasattr(helper, "_set_opset_version"):
        return
    globals_module = importlib.import_module("torch.onnx._internal.torchscript_exporter._globals")

    def _set_opset_version(opset_version: int) -> None:
        globals_module.GLOBALS.export_onnx_opset_version = opset_version

    helper._set_opset_version = _set_opset_version
    _applied.append("torch.onnx.symbolic_helper._set_opset_version")


def _patch_node_getitem() -> None:
    import torch

    node_type = torch._C.Node
    if hasattr(node_type, "__getitem__"):
        return

    def _node_attribute(node: Any, name: str) -> Any:
        # kindOf gives the typed accessor's name: "i", "f", "s", "t", "is", ...
        return getattr(node, node.kindOf(name))(name)

    node_type.__getitem__ = _node_attribute
    _applied.append("torch._C.Node.__getitem__")


def _patch_numpy_arraysetops() -> None:
    import numpy

    try:
        importlib.import_module("numpy.lib.arraysetops")
        return
    except ImportError:
        pass
    shim = types.ModuleType("numpy.lib.arraysetops")
    shim.isin = numpy.isin
    sys.modules["numpy.lib.arraysetops"] = shim
    _applied.append("numpy.lib.arraysetops")


def _patch_named_members(bounded_module_type: type) -> None:
    original = bounded_module_type._named_members
    if getattr(original, "_certevo_patch", False):
        return
    if "remove_duplicate" in inspect.signature(original, follow_wrapped=False).parameters:
        return

    @functools.wraps(original)
    def _named_members(self, get_members_fn, prefix="", recurse=True, remove_duplicate=True):
        # auto_LiRPA always removes duplicates; the keyword is accepted for torch 2's callers.
        return original(self, get_members_fn, prefix=prefix, recurse=recurse)

    _named_members._certevo_patch = True
    bounded_module_type._named_members = _named_members
    _applied.append(f"{bounded_module_type.__name__}._named_members")


def _quiet_known_warnings() -> None:
    # auto_LiRPA 0.3 triggers these on every trace or bound; they say nothing about the
    # candidate and would flood every evaluator's log.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*Consider using tensor\.detach\(\) first", category=UserWarning)
    warnings.filterwarnings("ignore", message=r".*_jit_set_profiling", category=DeprecationWarning)
    warnings.filterwarnings("ignore", module=r"auto_LiRPA.*", category=DeprecationWarning)


@functools.cache
def auto_lirpa() -> types.ModuleType:
    """The ``auto_LiRPA`` module, importable and usable on the installed torch and numpy."""
    _quiet_known_warnings()
    _patch_opset_setter()
    _patch_node_getitem()
    _patch_numpy_arraysetops()
    try:
        # auto_LiRPA calls warnings.simplefilter("once") at import, which would override
        # every warning filter of the host program: it is disabled during the import.
        with warnings.catch_warnings():
            _quiet_known_warnings()
            simplefilter = warnings.simplefilter
            warnings.simplefilter = lambda *args, **kwargs: None
            try:
                module = importlib.import_module("auto_LiRPA")
            finally:
                warnings.simplefilter = simplefilter
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "auto_LiRPA":
            raise AutoLirpaMissing(INSTALL_HINT) from exc
        raise
    _patch_named_members(module.BoundedModule)
    bound_multi_gpu = importlib.import_module("auto_LiRPA.bound_multi_gpu")
    _patch_named_members(bound_multi_gpu.BoundDataParallel)
    return module


def applied_patches() -> tuple[str, ...]:
    """Names of the patches that were needed (and applied) in this process."""
    auto_lirpa()
    return tuple(_applied)
