"""What goes to an evaluator and what comes back: the request for one candidate's
evaluation and its result.

Imports no torch (the tensors they may carry are only annotated), so an actor that merely
receives requests and returns results, such as the scaling benchmark's stub evaluator,
does not import torch when Ray unpickles them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from certevo.evaluators.fitness import FitnessRecord
from certevo.population.genome import Genome

if TYPE_CHECKING:
    import torch

__all__ = ["Evaluation", "EvaluationRequest"]


@dataclass(frozen=True)
class Evaluation:
    """A fitness record plus, when asked for, the trained weights (the model's state dict)
    and the absolute dense gradient of each prunable layer's weight (for guided,
    Lamarckian variation: see certevo.population.guided_operators)."""

    record: FitnessRecord
    weights: dict[str, torch.Tensor] | None = None
    gradients: dict[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class EvaluationRequest:
    """One candidate to evaluate and how.

    ``initial_weights`` (e.g. a parent's trained weights) replace the seeded init and are
    masked to the genome; training from them starts at the full eps (they are already
    robustly trained: ramping eps up again from 0 would spend the short training undoing
    that). ``epochs`` overrides the training length; ``prior_epochs`` (the training the
    initial weights carry) and ``inherited_from`` (their candidate) go into the record.
    ``keep_weights`` returns the trained weights and gradients."""

    genome: Genome
    initial_weights: Mapping[str, torch.Tensor] | None = None
    epochs: int | None = None
    keep_weights: bool = False
    prior_epochs: int = 0
    inherited_from: str | None = None

    @property
    def key(self) -> str:
        """The candidate id."""
        return self.genome.id
