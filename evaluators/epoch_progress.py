"""Progress of a final training, epoch by epoch: the record passed to ``train_final``'s
callback and the reporter that produces it (and, optionally, a rich progress bar)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["EpochProgress", "EpochReporter"]


@dataclass(frozen=True)
class EpochProgress:
    """Passed to ``train_final``'s ``callback`` after each epoch (``epoch`` counts from 1
    over warm-up and robust phase together; ``eps`` is the training eps reached)."""

    epoch: int
    epochs: int
    phase: str
    eps: float
    seconds: float


class EpochReporter:
    """Counts optimizer steps of one model's optimizer (through torch's global
    optimizer post-step hook, since train_masked creates its optimizer internally) and
    reports each finished epoch."""

    def __init__(self, model: nn.Module, epochs: int, callback: Callable[[EpochProgress], None] | None, show: bool) -> None:
        self.first = next(model.parameters())
        self.epochs = epochs
        self.callback = callback
        self.epoch = 0
        self.steps = 0
        self.steps_per_epoch = 1
        self.phase = ""
        self.eps_at: Callable[[int], float] = lambda step: 0.0
        self.started = time.perf_counter()
        self.progress = None
        self.task = None
        if show:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]final training"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"),
                TimeRemainingColumn(), TextColumn("{task.description}"), console=Console(stderr=True),
            )
            self.task = self.progress.add_task("", total=epochs)

    def phase_start(self, phase: str, steps_per_epoch: int, eps_at: Callable[[int], float]) -> None:
        self.phase, self.steps_per_epoch, self.eps_at, self.steps = phase, steps_per_epoch, eps_at, 0

    def hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not any(p is self.first for group in optimizer.param_groups for p in group["params"]):
            return  # another optimizer in this process
        self.steps += 1
        if self.steps % self.steps_per_epoch:
            return
        self.epoch += 1
        info = EpochProgress(self.epoch, self.epochs, self.phase, self.eps_at(self.steps), time.perf_counter() - self.started)
        if self.progress is not None:
            self.progress.update(self.task, advance=1, description=f"{info.phase}  eps {info.eps:.4f}")
        if self.callback is not None:
            self.callback(info)

    def __enter__(self) -> EpochReporter:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.handle = register_optimizer_step_post_hook(self.hook)
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()
        if self.progress is not None:
            self.progress.stop()
