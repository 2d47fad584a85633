"""A picklable description of how to evaluate candidates, from which any worker builds
the same evaluator."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from evaluators.data import DatasetSplits, load_dataset
from evaluators.evaluator import CandidateEvaluator
from evaluators.models import make_template
from evaluators.settings import CertificationSettings, TrainingSettings


@dataclass(frozen=True)
class DataSpec:
    """Which data set, split how."""

    name: str = "digits"
    path: str | None = None
    subset: int | None = None
    seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2

    def load(self) -> DatasetSplits:
        """Load and split the data set."""
        return load_dataset(self.name, self.path, seed=self.seed, subset=self.subset,
                            val_fraction=self.val_fraction, test_fraction=self.test_fraction)


@dataclass(frozen=True)
class ModelSpec:
    """Which model template."""

    kind: str = "mlp"
    widths: tuple[int, ...] | None = None
    channels: tuple[int, ...] | None = None

    def template(self, input_shape: tuple[int, ...], num_classes: int):
        """The template for data of this shape."""
        return make_template(self.kind, input_shape, num_classes, widths=self.widths, channels=self.channels)


@dataclass(frozen=True)
class EvaluationSpec:
    """Everything a worker needs to build a :class:`CandidateEvaluator`."""

    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    certification: CertificationSettings = field(default_factory=CertificationSettings)
    seed: int = 0

    def build(
        self,
        *,
        num_threads: int | None = None,
        data: DatasetSplits | None = None,
        device: str | None = "cpu",
        stack_size: int | None = None,
        stacked: bool = True,
    ) -> CandidateEvaluator:
        """A fresh evaluator on ``device`` (loads the data unless given)."""
        data = data if data is not None else self.data.load()
        template = self.model.template(data.input_shape, data.num_classes)
        return CandidateEvaluator(data, template, self.training, self.certification, seed=self.seed,
                                  num_threads=num_threads, device=device, stack_size=stack_size, stacked=stacked)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return asdict(self)
