"""Classification data sets for certevo, as torch tensors split into train/val/test.

Sources (see :data:`DATASETS`):

- ``digits``: scikit-learn's embedded 8x8 digits (1,797 images); needs no path.
- ``mnist``, ``fashion-mnist``, ``kmnist``: a user's directory of IDX files (gzip or raw),
  either flat or in torchvision's ``<dir>/<Name>/raw/`` layout. Nothing is downloaded.
- ``npz``: a ``.npz`` file holding arrays ``x`` (images) and ``y`` (integer labels).

Every image tensor is float32 ``[N, C, H, W]`` with values in [0, 1]; labels are int64.
Splits are stratified and determined only by ``seed``: one ``numpy.random.Generator``
seeded with it draws the optional subset first, then the per-class train/val/test split.
"""

from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from certevo.evaluators.digits import load_digits
from certevo.evaluators.npz import load_npz
from certevo.evaluators.names import DATASETS
from certevo.population.errors import ConfigError, DataError

#: Each class needs one sample in each of train, val and test.
MIN_PER_CLASS = 3

_IDX_LABELS_MAGIC = 0x00000801  # 2049: unsigned bytes, 1 dimension
_IDX_IMAGES_MAGIC = 0x00000803  # 2051: unsigned bytes, 3 dimensions
_IDX_PREFIXES = ("train", "t10k")
_TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}


@dataclass(frozen=True)
class Split:
    """One part of a data set: images ``x`` (float32 [N, C, H, W] in [0, 1]) and labels ``y``
    (int64 [N])."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> Split:
        """This split on ``device``."""
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class DatasetSplits:
    """A data set split into train, validation and test parts, with its input shape
    ``(C, H, W)`` and number of classes."""

    name: str
    train: Split
    val: Split
    test: Split
    input_shape: tuple[int, int, int]
    num_classes: int

    def to(self, device: torch.device | str) -> DatasetSplits:
        """These splits on ``device``."""
        return replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))


def load_dataset(
    name: str = "digits",
    path: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    subset: int | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> DatasetSplits:
    """Load data set ``name`` (from ``path`` where it needs one) and split it into
    stratified train/val/test parts determined by ``seed``.

    ``subset`` (if given) first keeps a stratified sample of that many images in total.
    ``val_fraction`` and ``test_fraction`` are the shares of each class that go to
    validation and test; the rest is training data. Raises :class:`ConfigError` for bad
    arguments and :class:`DataError` for unreadable or implausible data.
    """
    name = _check_name(name)
    _check_seed(seed)
    _check_fractions(val_fraction, test_fraction)
    _check_subset(subset)
    x, y, source = _load_arrays(name, path)
    num_classes = _check_labels(y, source)
    _check_class_counts(y, source)
    rng = np.random.default_rng(seed)
    if subset is not None:
        keep = _stratified_subset(y, subset, rng, source)
        x, y = x[keep], y[keep]
    train_idx, val_idx, test_idx = _stratified_split(y, rng, val_fraction, test_fraction)
    return DatasetSplits(
        name=name,
        train=_make_split(x, y, train_idx),
        val=_make_split(x, y, val_idx),
        test=_make_split(x, y, test_idx),
        input_shape=(int(x.shape[1]), int(x.shape[2]), int(x.shape[3])),
        num_classes=num_classes,
    )


# --------------------------------------------------------------------------- arguments


def _check_name(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ConfigError(
            f"Unknown data set name={name!r}. Use one of: {', '.join(DATASETS)}."
        )
    return key


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(
            f"seed must be a non-negative integer, got seed={seed!r}. "
            "Pass e.g. seed=0 (derive per-run seeds with certevo.population.seeds.derive_seed)."
        )


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for field, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float, np.floating, np.integer))
            or not math.isfinite(value)
            or not 0 < value < 1
        ):
            raise ConfigError(
                f"{field} must be a number strictly between 0 and 1, got {field}={value!r}. "
                f"Use e.g. {field}=0.2."
            )
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"val_fraction + test_fraction must be below 1 so training data remains, got "
            f"val_fraction={val_fraction!r} + test_fraction={test_fraction!r} = "
            f"{val_fraction + test_fraction!r}. Lower one of them (e.g. 0.2 each)."
        )


def _check_subset(subset: int | None) -> None:
    if subset is None:
        return
    if isinstance(subset, bool) or not isinstance(subset, (int, np.integer)) or subset <= 0:
        raise ConfigError(
            f"subset must be a positive integer (number of samples to keep) or None for all, "
            f"got subset={subset!r}. Pass e.g. subset=1000, or leave it unset."
        )


# --------------------------------------------------------------------------- loading


def _load_arrays(name: str, path: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray, str]:
    """Images as float32 [N, C, H, W] in [0, 1], labels as int64 [N], and a source label
    for error messages."""
    if name == "digits":
        if path is not None:
            raise ConfigError(
                f"Data set 'digits' is embedded in scikit-learn and takes no path, got "
                f"path={os.fspath(path)!r}. Leave path unset, or use name='npz' or an "
                "MNIST-format name to read files."
            )
        return load_digits()
    if name == "npz":
        if path is None:
            raise ConfigError(
                "Data set 'npz' needs path= pointing to a .npz file with arrays 'x' and 'y'."
            )
        return load_npz(Path(path).expanduser())
    if path is None:
        raise ConfigError(
            f"Data set {name!r} is read from your own files and needs path=: pass a "
            "directory holding the IDX files (train-images-idx3-ubyte[.gz], "
            "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
            "t10k-labels-idx1-ubyte[.gz]) or torchvision's download root."
        )
    return _load_idx_dir(name, Path(path).expanduser())



def _load_idx_dir(name: str, directory: Path) -> tuple[np.ndarray, np.ndarray, str]:
    if not directory.is_dir():
        what = "is a file, not a directory" if directory.exists() else "does not exist"
        raise DataError(
            f"{name} directory {str(directory)!r} {what}. Pass the directory that holds "
            "the IDX files (or torchvision's download root)."
        )
    searched = _idx_search_dirs(name, directory)
    for folder in searched:
        pairs = _idx_pairs(folder)
        if pairs:
            break
    else:
        wanted = ", ".join(
            f"{p}-{kind}[.gz]" for p in _IDX_PREFIXES
            for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
        )
        raise DataError(
            f"No {name} IDX files found in {', '.join(repr(str(d)) for d in searched)}. "
            f"Looked for {wanted}; at least one train or t10k images+labels pair is needed. "
            "Put the files there (gzip or uncompressed) or pass the directory that holds them."
        )
    xs, ys = [], []
    for images_file, labels_file in pairs:
        images = _read_idx(images_file, _IDX_IMAGES_MAGIC, ndim=3, kind="images")
        labels = _read_idx(labels_file, _IDX_LABELS_MAGIC, ndim=1, kind="labels")
        if len(images) != len(labels):
            raise DataError(
                f"{images_file.name} holds {len(images)} images but {labels_file.name} holds "
                f"{len(labels)} labels (in {str(images_file.parent)!r}). Use matching files "
                "from the same release."
            )
        xs.append(images)
        ys.append(labels)
    if len({img.shape[1:] for img in xs}) > 1:
        raise DataError(
            f"Image sizes differ between {pairs[0][0].name} {xs[0].shape[1:]} and "
            f"{pairs[1][0].name} {xs[1].shape[1:]} in {str(pairs[0][0].parent)!r}. "
            "Use train and t10k files of the same data set."
        )
    x = np.concatenate(xs).astype(np.float32)[:, None, :, :] / np.float32(255.0)
    y = np.concatenate(ys).astype(np.int64)
    return x, y, str(pairs[0][0].parent)


def _idx_search_dirs(name: str, directory: Path) -> list[Path]:
    """Where IDX files may live: the directory itself, ``raw/`` in it, and torchvision's
    ``<Name>/raw/`` layout."""
    folder = _TORCHVISION_FOLDERS[name]
    return [directory, directory / "raw", directory / folder / "raw"]


def _idx_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """The (images, labels) files present in ``folder``, train first; a half pair is an error."""
    pairs = []
    for prefix in _IDX_PREFIXES:
        images = _find_file(folder, f"{prefix}-images-idx3-ubyte")
        labels = _find_file(folder, f"{prefix}-labels-idx1-ubyte")
        if images and labels:
            pairs.append((images, labels))
        elif images or labels:
            found, missing = (images, "labels") if images else (labels, "images")
            raise DataError(
                f"Found {found.name} in {str(folder)!r} but no matching {prefix}-{missing}"
                f"-idx{3 if missing == 'images' else 1}-ubyte[.gz]. Add the missing file or "
                f"remove {found.name}."
            )
    return pairs


def _find_file(folder: Path, stem: str) -> Path | None:
    """``stem`` or ``stem.gz`` in ``folder``, preferring the uncompressed file."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_bytes(file: Path) -> bytes:
    try:
        if file.suffix == ".gz":
            with gzip.open(file, "rb") as handle:
                return handle.read()
        return file.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(
            f"Cannot read {str(file)!r}: {exc}. The file is damaged or not gzip data; "
            "download it again (or decompress it and drop the .gz suffix)."
        ) from exc


def _read_idx(file: Path, magic: int, *, ndim: int, kind: str) -> np.ndarray:
    """Parse an IDX file of unsigned bytes with the given magic number into a uint8 array."""
    data = _read_bytes(file)
    header = 4 + 4 * ndim
    if len(data) < 4:
        raise DataError(
            f"{str(file)!r} is {len(data)} bytes long, too short for an IDX header. "
            "The file is truncated; download it again."
        )
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(
            f"{str(file)!r} has IDX magic number {found} (0x{found:08x}), expected {magic} "
            f"(0x{magic:08x}) for {kind}. Check that this is the {kind} file of an "
            "MNIST-format data set and that it is not swapped with another file."
        )
    if len(data) < header:
        raise DataError(
            f"{str(file)!r} is truncated: {len(data)} bytes, shorter than its {header}-byte "
            "IDX header. Download it again."
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    expected = math.prod(dims)
    available = len(data) - header
    if available < expected:
        raise DataError(
            f"{str(file)!r} is truncated: its header says {kind} of shape {dims} "
            f"({expected} bytes of data) but only {available} bytes follow. "
            "Download it again."
        )
    if available > expected:
        raise DataError(
            f"{str(file)!r} has {available - expected} bytes after the {expected} bytes its "
            f"header (shape {dims}) describes. The file is damaged or not an IDX file; "
            "download it again."
        )
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims)


# --------------------------------------------------------------------------- checks


def _check_labels(y: np.ndarray, source: str) -> int:
    """Validate labels (class indices 0..K-1, every class present, K >= 2) and return K."""
    if len(y) == 0:
        raise DataError(f"{source!r} holds no samples. Use a data set with some images.")
    negative = int(np.count_nonzero(y < 0))
    if negative:
        raise DataError(
            f"{source!r}: {negative} labels are negative (smallest {int(y.min())}). Labels "
            "must be class indices 0..K-1; remap them."
        )
    present = np.unique(y)
    if len(present) < 2:
        raise DataError(
            f"{source!r}: every sample has label {int(present[0])}, so there is one class; a classifier needs "
            "at least two. Use a data set with two or more classes (labels 0..K-1)."
        )
    num_classes = int(present[-1]) + 1
    if len(present) < num_classes:
        empty = sorted(set(range(num_classes)) - set(present.tolist()))
        shown = ", ".join(map(str, empty[:8])) + (f" and {len(empty) - 8} more" if len(empty) > 8 else "")
        raise DataError(
            f"{source!r}: labels go up to {num_classes - 1}, which makes a {num_classes}-class model, but classes "
            f"{shown} have no samples ({len(present)} distinct labels). Labels must be class indices 0..K-1 with "
            "every class present; remap them, e.g. y = numpy.unique(y, return_inverse=True)[1], or drop the "
            "mislabelled samples."
        )
    return num_classes


def _check_class_counts(y: np.ndarray, source: str) -> None:
    """Every class that occurs needs :data:`MIN_PER_CLASS` samples (one per split)."""
    classes, counts = np.unique(y, return_counts=True)
    for label, count in zip(classes.tolist(), counts.tolist()):
        if count < MIN_PER_CLASS:
            raise DataError(
                f"{source!r}: class {label} has only {count} sample(s); each class "
                f"needs at least {MIN_PER_CLASS} so train, val and test each get one. Use a "
                "larger subset (or none), or add more samples of that class."
            )


# --------------------------------------------------------------------------- splitting


def _stratified_subset(
    y: np.ndarray, subset: int, rng: np.random.Generator, source: str
) -> np.ndarray:
    """Indices of ``subset`` samples: every class gets :data:`MIN_PER_CLASS`, the rest is
    shared in proportion to class sizes (largest remainder); members drawn with ``rng``."""
    classes, counts = np.unique(y, return_counts=True)
    if subset > len(y):
        raise ConfigError(
            f"subset={subset} is larger than the {len(y)} samples in {source!r}. Pass "
            f"subset<={len(y)} or leave it unset to use everything."
        )
    minimum = MIN_PER_CLASS * len(classes)
    if subset < minimum:
        raise ConfigError(
            f"subset={subset} is too small for the {len(classes)} classes in {source!r}: "
            f"each class needs {MIN_PER_CLASS} samples (one per split), so subset must be at "
            f"least {minimum}. Pass a larger subset."
        )
    take = np.full(len(classes), MIN_PER_CLASS, dtype=np.int64)
    capacity = counts - take
    extra = subset - minimum
    if extra:
        quota = extra * capacity / capacity.sum()
        floors = np.floor(quota).astype(np.int64)
        order = np.argsort(-(quota - floors), kind="stable")
        floors[order[: extra - int(floors.sum())]] += 1
        take += floors
    chosen = [
        rng.permutation(np.flatnonzero(y == label))[:n] for label, n in zip(classes, take)
    ]
    return np.sort(np.concatenate(chosen))


def _split_sizes(count: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(val, test) sizes for a class of ``count`` >= 3 samples; each split gets >= 1."""
    n_val = min(max(1, round(val_fraction * count)), count - 2)
    n_test = min(max(1, round(test_fraction * count)), count - 1 - n_val)
    return n_val, n_test


def _stratified_split(
    y: np.ndarray, rng: np.random.Generator, val_fraction: float, test_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint train/val/test index arrays covering ``y``: each class is shuffled with
    ``rng`` and cut by the fractions; each split is then shuffled with ``rng``."""
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        n_val, n_test = _split_sizes(len(members), val_fraction, test_fraction)
        parts[1].append(members[:n_val])
        parts[2].append(members[n_val : n_val + n_test])
        parts[0].append(members[n_val + n_test :])
    train, val, test = (rng.permutation(np.concatenate(p)) for p in parts)
    return train, val, test


def _make_split(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> Split:
    return Split(
        x=torch.from_numpy(np.ascontiguousarray(x[idx], dtype=np.float32)),
        y=torch.from_numpy(np.ascontiguousarray(y[idx], dtype=np.int64)),
    )
