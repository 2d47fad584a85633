"""The fitness record: what one evaluation of one candidate produced."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from certevo.population.genome import Genome
from certevo.population.sparsity_text import format_sparsity


@dataclass(frozen=True)
class FitnessRecord:
    """Outcome of one candidate's evaluation; frozen and JSON-serialisable.

    ``failure`` is None for a successful evaluation, otherwise the reason (diverged
    training, an activation the verifier cannot bound, an empty layer...). A failed record
    has certified and clean accuracy 0, so selection never prefers it. ``epochs`` and
    ``total_epochs`` say at which fidelity the record was measured: how long this
    evaluation trained, and how much training its weights carry in all.
    """

    candidate_id: str
    sparsity: float
    certified_accuracy: float
    clean_accuracy: float
    pgd_accuracy: float | None
    train_method: str
    certify_method: str
    eps: float
    train_eps: float
    epochs: int
    samples: int
    layer_sparsity: dict[str, float]
    timings: dict[str, float]
    kstarts: dict[str, float] | None = None
    failure: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: Epochs of training behind the measured weights: this evaluation's ``epochs`` plus
    #: those its parent's weights had (None: records written before inheritance existed).
    total_epochs: int | None = None
    #: The candidate whose trained weights this one started from (None: a fresh init).
    inherited_from: str | None = None

    @property
    def ok(self) -> bool:
        """True if the evaluation succeeded."""
        return self.failure is None

    @property
    def objectives(self) -> tuple[float, float]:
        """(sparsity, certified accuracy), both to be maximised."""
        return (self.sparsity, self.certified_accuracy)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitnessRecord:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)

    @classmethod
    def failed(cls, genome: Genome, reason: str, **known: Any) -> FitnessRecord:
        """The record of ``genome``'s failed evaluation: ``failure`` is ``reason``, the
        accuracies are 0 and nothing was measured; ``known`` sets the other fields the
        caller knows (methods, eps, epochs, timings, extra...), the rest stay empty."""
        empty: dict[str, Any] = {
            "pgd_accuracy": None, "train_method": "", "certify_method": "", "eps": 0.0, "train_eps": 0.0,
            "epochs": 0, "samples": 0, "timings": {},
        }
        return cls(candidate_id=genome.id, sparsity=genome.sparsity, certified_accuracy=0.0, clean_accuracy=0.0,
                   layer_sparsity=genome.layer_sparsity(), failure=reason, **{**empty, **known})

    def summary(self) -> str:
        """A few readable lines for a terminal."""
        lines = [f"candidate {self.candidate_id}"]
        if not self.ok:
            lines.append(f"  FAILED: {self.failure}")
        lines += [
            f"  sparsity            {format_sparsity(self.sparsity):>8}",
            f"  certified accuracy  {self.certified_accuracy:8.2%}  ({self.certify_method}, eps={self.eps:g}, {self.samples} validation samples)",
            f"  clean accuracy      {self.clean_accuracy:8.2%}",
        ]
        if self.pgd_accuracy is not None:
            lines.append(f"  PGD accuracy        {self.pgd_accuracy:8.2%}")
        carried = f" ({self.total_epochs} in all, from {self.inherited_from})" if self.inherited_from else ""
        lines.append(f"  training            {self.train_method}, {self.epochs} epochs{carried}, eps={self.train_eps:g}")
        lines.append("  time                " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()))
        return "\n".join(lines)
