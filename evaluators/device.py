"""Where evaluations run: the one place that turns a device name into a torch device.

Random draws stay on the CPU (seeded ``torch.Generator``s) and are moved to the device,
so a candidate's init, data order and attack starts are the same on every device.
"""

from __future__ import annotations

import torch

from certevo.evaluators.names import DEVICES
from certevo.population.errors import ConfigError

#: Candidates trained in one stacked pass, by device kind: on one CPU core the gain
#: levels off near 16-32 (benchmarks/evaluate.py); a GPU wants far more work per launch.
DEFAULT_STACK_SIZE = {"cpu": 16, "cuda": 128}


def cuda_available() -> bool:
    """True if torch can use a CUDA GPU in this process."""
    return torch.cuda.is_available()


def resolve_device(name: str | None) -> torch.device:
    """The torch device for ``name`` ("cpu", "cuda" or None = cuda if torch sees a GPU,
    else cpu); a clear error if CUDA is asked for where there is none."""
    if name is None:
        return torch.device("cuda" if cuda_available() else "cpu")
    if name not in DEVICES:
        raise ConfigError(f"cluster.device is {name!r}, not a device certevo knows; use one of {', '.join(DEVICES)}")
    if name == "cuda" and not cuda_available():
        raise ConfigError(
            "cluster.device is 'cuda' but torch sees no CUDA GPU here (torch.cuda.is_available() is False); "
            "install a CUDA build of torch on a GPU machine, or set cluster.device: cpu"
        )
    return torch.device(name)


__all__ = ["DEFAULT_STACK_SIZE", "DEVICES", "cuda_available", "resolve_device"]
