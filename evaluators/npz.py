"""Reading a ``.npz`` data set: arrays ``x`` (images) and ``y`` (integer labels), checked
for shape, dtype and range, as float32 ``[N, C, H, W]`` in [0, 1] and int64 labels."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from certevo.population.errors import DataError

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK"
_SAVE_HOW = "save it with numpy.savez(path, x=images, y=labels)"


def load_npz(file: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """Images, labels and a source label (the path, for messages) of the ``.npz`` at ``file``."""
    source = str(file)
    if not file.is_file():
        what = "is a directory" if file.is_dir() else "does not exist"
        raise DataError(
            f"npz file {source!r} {what}. Pass the path of a .npz file ({_SAVE_HOW}); "
            "a directory of IDX files goes with data.name: mnist (or fashion-mnist, kmnist)."
        )
    try:
        with open(file, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise DataError(f"Cannot read {source!r}: {exc.strerror or exc}. Check the file's permissions.") from exc
    if head.startswith(_NPY_MAGIC):
        raise DataError(
            f"{source!r} is a .npy file (one array), not a .npz archive of the two arrays x and y; {_SAVE_HOW}."
        )
    if not head.startswith(_ZIP_MAGIC):
        raise DataError(
            f"Cannot read {source!r} as a .npz archive: it starts with {head!r}, not a zip header (a CSV or "
            f"text file?); load it into arrays and {_SAVE_HOW}."
        )
    try:
        with np.load(file, allow_pickle=False) as archive:
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                raise DataError(
                    f"{source!r} has no array {' or '.join(repr(k) for k in missing)} "
                    f"(arrays found: {archive.files}). Save it with "
                    "numpy.savez(path, x=images, y=labels)."
                )
            x, y = archive["x"], archive["y"]
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(
            f"Cannot read {source!r} as a .npz archive of plain arrays: {exc}. Save it with "
            "numpy.savez(path, x=images, y=labels) using numeric arrays (no objects)."
        ) from exc
    return _npz_images(x, source), _npz_labels(y, len(x), source), source


def _npz_images(x: np.ndarray, source: str) -> np.ndarray:
    if x.ndim == 2:
        x = x[:, None, None, :]
    elif x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim != 4:
        raise DataError(
            f"{source!r}: array 'x' has shape {x.shape}; expected [N, D], [N, H, W] or "
            "[N, C, H, W]. Reshape the images to one of these."
        )
    if len(x) == 0 or 0 in x.shape:
        raise DataError(f"{source!r}: array 'x' is empty (shape {x.shape}). Save some images.")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if x.dtype == np.bool_:
        return x.astype(np.float32)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(
            f"{source!r}: array 'x' has dtype {x.dtype}; expected uint8 (0..255) or float "
            "(in [0, 1]). Convert it, e.g. x.astype('float32') / x.max()."
        )
    x = x.astype(np.float32)
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        raise DataError(
            f"{source!r}: array 'x' contains {bad} NaN or infinite values. Pixels must be "
            "finite and scaled to [0, 1]; clean or drop those images."
        )
    low, high = float(x.min()), float(x.max())
    if low < 0.0 or high > 1.0:
        outside = int(np.count_nonzero((x < 0.0) | (x > 1.0)))
        raise DataError(
            f"{source!r}: array 'x' has values in [{low:g}, {high:g}] ({outside} outside "
            "[0, 1]). Pixels must be scaled to [0, 1], e.g. x / 255 for 8-bit images."
        )
    return x


def _npz_labels(y: np.ndarray, count: int, source: str) -> np.ndarray:
    if y.ndim != 1:
        raise DataError(
            f"{source!r}: array 'y' has shape {y.shape}; expected one integer label per "
            "image, shape [N]. Flatten it, or convert one-hot labels with argmax."
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"{source!r}: array 'y' has dtype {y.dtype}; labels must be integers 0..K-1. "
            "Convert them, e.g. y.astype('int64')."
        )
    if len(y) != count:
        raise DataError(
            f"{source!r}: array 'x' holds {count} images but 'y' holds {len(y)} labels. "
            "Save one label per image."
        )
    return y.astype(np.int64)
