"""Settings of the short robust training and of certification, validated on creation."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from certevo.population.errors import check_choice, reject

TRAINING_METHODS = ("clean", "pgd", "ibp", "crown-ibp")
LR_SCHEDULES = ("constant", "cosine")
CERTIFICATION_METHODS = ("ibp", "crown", "crown-optimized")


def _positive_int(field: str, value: Any, fix: str) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        reject(field, value, "must be a positive integer", fix)


def _fraction(field: str, value: Any, fix: str, *, allow_zero: bool = True, allow_one: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0) and (value <= 1 if allow_one else value < 1)
    low = "[0" if allow_zero else "(0"
    high = "1]" if allow_one else "1)"
    if not ok:
        reject(field, value, f"must be a number in {low}, {high}", fix)


@dataclass(frozen=True)
class TrainingSettings:
    """How one candidate is trained before it is certified.

    ``eps`` is the L-inf radius on pixels scaled to [0, 1]. During the first
    ``ramp_fraction`` of the steps, eps grows linearly from 0 to ``eps``, the natural-loss
    weight kappa falls from 1 to ``kappa_final`` and (CROWN-IBP) the CROWN share beta falls
    from 1 to 0, as in Zhang et al. (ICLR 2020). ``lr_schedule``: ``constant``, or
    ``cosine`` (decayed to 0 by the last step, so the trained weights are settled rather
    than a point of a noisy trajectory).
    """

    method: str = "ibp"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 5e-3
    eps: float = 0.1
    ramp_fraction: float = 0.5
    kappa_final: float = 0.5
    pgd_steps: int = 5
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        check_choice("training.lr_schedule", self.lr_schedule, LR_SCHEDULES, "a learning-rate schedule")
        check_choice("training.method", self.method, TRAINING_METHODS, "a training method")
        _positive_int("training.epochs", self.epochs, "e.g. 20 for a short training")
        _positive_int("training.batch_size", self.batch_size, "e.g. 64")
        if not (isinstance(self.lr, (int, float)) and not isinstance(self.lr, bool) and math.isfinite(self.lr)
                and self.lr > 0):
            reject("training.lr", self.lr, "must be a positive number", "e.g. 0.005")
        _fraction("training.eps", self.eps, "eps is measured on pixels in [0, 1], e.g. 0.1")
        _fraction("training.ramp_fraction", self.ramp_fraction, "e.g. 0.5 ramps eps over the first half")
        _fraction("training.kappa_final", self.kappa_final, "e.g. 0.5 (1 means natural loss only)")
        _positive_int("training.pgd_steps", self.pgd_steps, "e.g. 5")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return asdict(self)


@dataclass(frozen=True)
class CertificationSettings:
    """How a trained candidate is certified and attacked on the validation split.

    ``max_samples`` caps the validation samples used (None: all of them).
    ``pgd`` also measures PGD accuracy, an upper bound on any certificate.
    ``ibp_first`` tries cheap IBP before ``method`` and runs ``method`` only on what IBP
    could not prove (both are sound, so the union is too).
    """

    method: str = "crown"
    eps: float = 0.1
    max_samples: int | None = None
    batch_size: int = 64
    ibp_first: bool = True
    pgd: bool = False
    pgd_steps: int = 20
    pgd_restarts: int = 1
    alpha_iterations: int = 20

    def __post_init__(self) -> None:
        check_choice("certification.method", self.method, CERTIFICATION_METHODS, "a certification method")
        _fraction("certification.eps", self.eps, "eps is measured on pixels in [0, 1], e.g. 0.1")
        if self.max_samples is not None:
            _positive_int("certification.max_samples", self.max_samples, "or null for the whole validation split")
        _positive_int("certification.batch_size", self.batch_size, "e.g. 64")
        _positive_int("certification.pgd_steps", self.pgd_steps, "e.g. 20")
        _positive_int("certification.pgd_restarts", self.pgd_restarts, "e.g. 1")
        _positive_int("certification.alpha_iterations", self.alpha_iterations, "e.g. 20")
        for name in ("ibp_first", "pgd"):
            if not isinstance(getattr(self, name), bool):
                reject(f"certification.{name}", getattr(self, name), "must be true or false", "e.g. true")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return asdict(self)
