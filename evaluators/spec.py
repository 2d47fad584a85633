"""A picklable description of how to evaluate candidates, from which any worker builds
the same evaluator."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from certevo.evaluators.names import DATASETS, TEMPLATE_KINDS
from certevo.evaluators.settings import CertificationSettings, TrainingSettings, _fraction
from certevo.population.errors import check_choice, reject

# The data, model and evaluator modules import torch: imported where a method needs them,
# so that a configuration is read and checked without torch (e.g. by `certevo inspect`).
if TYPE_CHECKING:
    from certevo.evaluators.data import DatasetSplits
    from certevo.evaluators.evaluator import CandidateEvaluator


@dataclass(frozen=True)
class DataSpec:
    """Which data set, split how."""

    name: str = "digits"
    path: str | None = None
    subset: int | None = None
    seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        check_choice("data.name", self.name, DATASETS, "a data set")
        if self.name == "digits":
            if self.path is not None:
                reject("data.path", self.path, "must be unset for digits (it is embedded)",
                       "remove data.path, or set data.name to npz or an MNIST-format name to read files")
        elif not (isinstance(self.path, str) and self.path.strip() != ""):
            reject("data.path", self.path, f"must name the files of data set {self.name}",
                   "a directory of IDX files for mnist-format sets, a .npz file for npz (`~` is expanded)")
        if self.subset is not None:
            if not (isinstance(self.subset, int) and not isinstance(self.subset, bool) and self.subset > 0):
                reject("data.subset", self.subset, "must be a positive integer or null", "e.g. 1000, or null for all")
        if not (isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0):
            reject("data.seed", self.seed, "must be a non-negative integer", "e.g. 0")
        _fraction("data.val_fraction", self.val_fraction, "e.g. 0.2", allow_zero=False, allow_one=False)
        _fraction("data.test_fraction", self.test_fraction, "e.g. 0.2", allow_zero=False, allow_one=False)
        if not self.val_fraction + self.test_fraction < 1:
            reject("data.val_fraction + data.test_fraction", self.val_fraction + self.test_fraction,
                   "must be below 1 so training data remains", "e.g. 0.2 each")

    def load(self) -> DatasetSplits:
        """Load and split the data set."""
        from certevo.evaluators.data import load_dataset

        return load_dataset(self.name, self.path, seed=self.seed, subset=self.subset,
                            val_fraction=self.val_fraction, test_fraction=self.test_fraction)


@dataclass(frozen=True)
class ModelSpec:
    """Which model template."""

    kind: str = "mlp"
    widths: tuple[int, ...] | None = None
    channels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_choice("model.kind", self.kind, TEMPLATE_KINDS, "a model template")
        for name, example in (("widths", "[64, 64]"), ("channels", "[16, 32]")):
            sizes = getattr(self, name)
            if sizes is None:
                continue
            if not (isinstance(sizes, (list, tuple))
                    and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes)
                    and (len(sizes) > 0 or (name == "widths" and self.kind == "cnn"))):
                reject(f"model.{name}", sizes, "must be a list of positive integers (one per layer)",
                       f"e.g. {example}, or null for the default")
        if not (self.kind == "cnn" or self.channels is None):
            reject("model.channels", self.channels,
                   "is only for kind: cnn (an mlp has no conv layers)", "remove it, or set model.kind: cnn")

    def template(self, input_shape: tuple[int, ...], num_classes: int):
        """The template for data of this shape."""
        from certevo.evaluators.models import make_template

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
        from certevo.evaluators.evaluator import CandidateEvaluator

        data = data if data is not None else self.data.load()
        template = self.model.template(data.input_shape, data.num_classes)
        return CandidateEvaluator(data, template, self.training, self.certification, seed=self.seed,
                                  num_threads=num_threads, device=device, stack_size=stack_size, stacked=stacked)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return asdict(self)
