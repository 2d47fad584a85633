"""The names a configuration may use for data sets, model templates and devices.

Kept apart from the modules that implement them (``data``, ``models``, ``device``, which
import torch), so that reading and checking a configuration, e.g. for
``certevo inspect``, imports no torch.
"""

from __future__ import annotations

DATASETS = ("digits", "mnist", "fashion-mnist", "kmnist", "npz")
TEMPLATE_KINDS = ("mlp", "cnn")
DEVICES = ("cpu", "cuda")

__all__ = ["DATASETS", "DEVICES", "TEMPLATE_KINDS"]
