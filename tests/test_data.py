"""Tests for certevo.evaluators.data: real files in tmp_path, no mocks."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from certevo.evaluators.data import DATASETS, DatasetSplits, _stratified_split, load_dataset
from certevo.population.errors import ConfigError, DataError

MNIST_T10K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist-t10k"


# --------------------------------------------------------------------------- helpers


def write_idx(path: Path, array: np.ndarray, *, magic: int | None = None,
              compress: bool | None = None, drop_bytes: int = 0) -> Path:
    """Write ``array`` (uint8) as an IDX file; gzip it when the name ends in .gz."""
    array = np.asarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | array.ndim
    payload = (
        int(magic).to_bytes(4, "big")
        + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        + array.tobytes()
    )
    if drop_bytes:
        payload = payload[:-drop_bytes]
    compress = path.name.endswith(".gz") if compress is None else compress
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)
    return path


def fake_mnist(n: int, seed: int, classes: int = 4, size: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    labels = (np.arange(n) % classes).astype(np.uint8)
    return images, labels


def write_pair(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray,
               gz: bool) -> None:
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)


def all_rows(ds: DatasetSplits) -> tuple[np.ndarray, np.ndarray]:
    x = torch.cat([ds.train.x, ds.val.x, ds.test.x]).reshape(len_total(ds), -1).numpy()
    y = torch.cat([ds.train.y, ds.val.y, ds.test.y]).numpy()
    return x, y


def len_total(ds: DatasetSplits) -> int:
    return sum(len(s.y) for s in (ds.train, ds.val, ds.test))


def sorted_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    rows = np.concatenate([x, y[:, None].astype(x.dtype)], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_dataset("digits", seed=0)


# --------------------------------------------------------------------------- digits


def test_datasets_constant() -> None:
    assert DATASETS == ("digits", "mnist", "fashion-mnist", "kmnist", "npz")


def test_digits_shapes_dtypes_range(digits: DatasetSplits) -> None:
    assert digits.name == "digits"
    assert digits.input_shape == (1, 8, 8)
    assert digits.num_classes == 10
    for split in (digits.train, digits.val, digits.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (1, 8, 8)
        assert split.x.shape[0] == split.y.shape[0] > 0
        assert float(split.x.min()) >= 0.0 and float(split.x.max()) <= 1.0
        assert set(split.y.tolist()) == set(range(10))
    assert float(digits.train.x.max()) == 1.0


def test_digits_splits_cover_everything_once(digits: DatasetSplits) -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    assert len_total(digits) == 1797
    x, y = all_rows(digits)
    original_x = (bunch.images.astype(np.float32) / 16.0).reshape(1797, -1)
    np.testing.assert_array_equal(sorted_rows(x, y), sorted_rows(original_x, bunch.target))
    # default fractions: roughly 60/20/20 per class
    assert 0.55 < len(digits.train.y) / 1797 < 0.65
    assert 0.17 < len(digits.val.y) / 1797 < 0.23


def test_split_indices_disjoint_and_stratified() -> None:
    y = np.repeat(np.arange(5), [3, 4, 10, 50, 7])
    train, val, test = _stratified_split(y, np.random.default_rng(3), 0.2, 0.2)
    joined = np.concatenate([train, val, test])
    assert len(joined) == len(y) == len(np.unique(joined))
    for part in (train, val, test):
        assert set(y[part]) == set(range(5))


def test_same_seed_identical_different_seed_differs(digits: DatasetSplits) -> None:
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    for a, b in ((digits.train, again.train), (digits.val, again.val), (digits.test, again.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(digits.test.x, other.test.x)


def test_subset_exact_size_and_deterministic() -> None:
    ds = load_dataset("digits", seed=5, subset=300)
    assert len_total(ds) == 300
    assert ds.num_classes == 10
    for split in (ds.train, ds.val, ds.test):
        assert set(split.y.tolist()) == set(range(10))
    again = load_dataset("digits", seed=5, subset=300)
    assert torch.equal(ds.train.x, again.train.x)
    smallest = load_dataset("digits", seed=5, subset=30)
    assert len_total(smallest) == 30
    assert [len(s.y) for s in (smallest.train, smallest.val, smallest.test)] == [10, 10, 10]


def test_custom_fractions() -> None:
    ds = load_dataset("digits", seed=0, val_fraction=0.1, test_fraction=0.5)
    assert 0.45 < len(ds.test.y) / 1797 < 0.55
    assert 0.08 < len(ds.val.y) / 1797 < 0.12


# --------------------------------------------------------------------------- argument errors


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"val_fraction": 0.0}, r"val_fraction=0\.0"),
        ({"val_fraction": -0.1}, r"val_fraction=-0\.1"),
        ({"test_fraction": 1.0}, r"test_fraction=1\.0"),
        ({"test_fraction": float("nan")}, r"test_fraction=nan"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, r"val_fraction \+ test_fraction must be below 1"),
        ({"subset": 0}, r"subset must be a positive integer.*subset=0"),
        ({"subset": 2.5}, r"subset=2\.5"),
        ({"subset": True}, r"subset=True"),
        ({"subset": 29}, r"subset=29 is too small.*at least 30"),
        ({"subset": 5000}, r"subset=5000 is larger than the 1797 samples"),
        ({"seed": -1}, r"seed=-1"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_dataset("digits", **kwargs)


def test_unknown_name_and_path_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Unknown data set name='cifar'.*digits, mnist"):
        load_dataset("cifar")
    with pytest.raises(ConfigError, match=r"'digits' .* takes no path"):
        load_dataset("digits", tmp_path)
    with pytest.raises(ConfigError, match=r"'mnist' .*needs path=: pass a directory"):
        load_dataset("mnist")
    with pytest.raises(ConfigError, match=r"'npz' needs path="):
        load_dataset("npz")


# --------------------------------------------------------------------------- IDX files


def test_idx_gzip_and_raw_give_same_tensors(tmp_path: Path) -> None:
    train = fake_mnist(40, seed=1)
    test = fake_mnist(20, seed=2)
    write_pair(tmp_path / "gz", "train", *train, gz=True)
    write_pair(tmp_path / "gz", "t10k", *test, gz=True)
    write_pair(tmp_path / "raw", "train", *train, gz=False)
    write_pair(tmp_path / "raw", "t10k", *test, gz=False)
    a = load_dataset("mnist", tmp_path / "gz", seed=7)
    b = load_dataset("mnist", str(tmp_path / "raw"), seed=7)
    assert len_total(a) == 60 and a.input_shape == (1, 6, 6) and a.num_classes == 4
    for sa, sb in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert torch.equal(sa.x, sb.x) and torch.equal(sa.y, sb.y)
    x, y = all_rows(a)
    expected_x = np.concatenate([train[0], test[0]]).reshape(60, -1).astype(np.float32) / 255
    expected_y = np.concatenate([train[1], test[1]])
    np.testing.assert_array_equal(sorted_rows(x, y), sorted_rows(expected_x, expected_y))


def test_idx_single_pair_is_enough(tmp_path: Path) -> None:
    write_pair(tmp_path, "t10k", *fake_mnist(24, seed=3), gz=True)
    ds = load_dataset("kmnist", tmp_path, seed=0)
    assert ds.name == "kmnist" and len_total(ds) == 24


@pytest.mark.parametrize(
    ("name", "folder"),
    [("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw"),
     ("kmnist", "KMNIST/raw"), ("mnist", "raw")],
)
def test_torchvision_layout_found(tmp_path: Path, name: str, folder: str) -> None:
    write_pair(tmp_path / folder, "train", *fake_mnist(30, seed=4), gz=False)
    ds = load_dataset(name, tmp_path, seed=0)
    assert len_total(ds) == 30 and ds.name == name


def test_real_mnist_t10k() -> None:
    if not MNIST_T10K.is_dir():
        pytest.skip(f"real MNIST test set not present at {MNIST_T10K}")
    sums = MNIST_T10K / "MD5SUMS"
    if sums.is_file():
        for line in sums.read_text().splitlines():
            if line.strip():
                digest, filename = line.split()
                actual = hashlib.md5((MNIST_T10K / filename).read_bytes()).hexdigest()
                assert actual == digest, f"{filename} MD5 {actual} != {digest}"
    ds = load_dataset("mnist", MNIST_T10K, seed=0)
    assert len_total(ds) == 10_000
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    for split in (ds.train, ds.val, ds.test):
        assert split.x.shape[1:] == (1, 28, 28)
        assert float(split.x.min()) >= 0.0 and float(split.x.max()) <= 1.0
        assert set(split.y.tolist()) == set(range(10))
    assert float(ds.train.x.max()) == 1.0


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=r"nowhere.*does not exist.*Pass the directory"):
        load_dataset("mnist", missing)
    file = tmp_path / "afile"
    file.write_text("x")
    with pytest.raises(DataError, match=r"afile.*is a file, not a directory"):
        load_dataset("mnist", file)


def test_missing_files_lists_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"No fashion-mnist IDX files found in .*empty.*"
                                        r"FashionMNIST.*Looked for train-images-idx3-ubyte\[\.gz\]"):
        load_dataset("fashion-mnist", tmp_path / "empty")


def test_half_pair(tmp_path: Path) -> None:
    images, _ = fake_mnist(10, seed=0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*no matching train-labels"):
        load_dataset("mnist", tmp_path)


def test_wrong_magic_number(tmp_path: Path) -> None:
    images, labels = fake_mnist(12, seed=0)
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels, magic=2051)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.*magic number 2051 .*expected 2049"):
        load_dataset("mnist", tmp_path)


def test_swapped_files_magic(tmp_path: Path) -> None:
    images, labels = fake_mnist(12, seed=0)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", labels)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", images)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz.*magic number 2049 .*expected 2051"):
        load_dataset("mnist", tmp_path)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_idx(tmp_path: Path, gz: bool) -> None:
    images, labels = fake_mnist(12, seed=0)
    ext = ".gz" if gz else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{ext}", images, drop_bytes=5)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{ext}", labels)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*truncated.*432 bytes of data.*427"):
        load_dataset("mnist", tmp_path)


def test_truncated_header(tmp_path: Path) -> None:
    images, labels = fake_mnist(12, seed=0)
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes((2049).to_bytes(4, "big") + b"\x00")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.*truncated.*header"):
        load_dataset("mnist", tmp_path)


def test_damaged_gzip(tmp_path: Path) -> None:
    images, labels = fake_mnist(12, seed=0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    good = gzip.compress(np.asarray(labels).tobytes())
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"Cannot read .*train-labels-idx1-ubyte\.gz.*damaged"):
        load_dataset("mnist", tmp_path)


def test_count_mismatch(tmp_path: Path) -> None:
    images, labels = fake_mnist(12, seed=0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels[:10])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz holds 12 images but "
                                        r"train-labels-idx1-ubyte\.gz holds 10 labels"):
        load_dataset("mnist", tmp_path)


def test_too_few_per_class_idx(tmp_path: Path) -> None:
    images, labels = fake_mnist(12, seed=0, classes=4)
    labels = labels.copy()
    labels[:] = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 0]
    write_pair(tmp_path, "train", images, labels, gz=True)
    with pytest.raises(DataError, match=r"class 3 has only 2 sample\(s\); each class needs at "
                                        r"least 3.*larger subset.*more samples"):
        load_dataset("mnist", tmp_path)


# --------------------------------------------------------------------------- npz


@pytest.mark.parametrize(
    ("shape", "input_shape"),
    [((30, 5, 7), (1, 5, 7)), ((30, 3, 4, 4), (3, 4, 4)), ((30, 12), (1, 1, 12))],
)
@pytest.mark.parametrize("dtype", ["float32", "float64", "uint8"])
def test_npz_shapes(tmp_path: Path, shape: tuple, input_shape: tuple, dtype: str) -> None:
    rng = np.random.default_rng(0)
    if dtype == "uint8":
        x = rng.integers(0, 256, size=shape, dtype=np.uint8)
        expected = x.astype(np.float32) / 255
    else:
        x = rng.random(shape).astype(dtype)
        expected = x.astype(np.float32)
    y = np.arange(30) % 3
    file = tmp_path / "data.npz"
    np.savez(file, x=x, y=y)
    ds = load_dataset("npz", file, seed=1)
    assert ds.input_shape == input_shape and ds.num_classes == 3 and len_total(ds) == 30
    got_x, got_y = all_rows(ds)
    np.testing.assert_allclose(
        sorted_rows(got_x, got_y), sorted_rows(expected.reshape(30, -1), y), rtol=1e-6
    )


def test_npz_label_gap_is_refused_not_a_bigger_model(tmp_path: Path) -> None:
    file = tmp_path / "gap.npz"
    np.savez(file, x=np.zeros((9, 2, 2), np.float32), y=np.repeat([0, 1, 4], 3))
    with pytest.raises(DataError, match=r"gap\.npz.*5-class model.*classes 2, 3 have no samples.*return_inverse"):
        load_dataset("npz", file)


def _save(tmp_path: Path, name: str = "bad.npz", **arrays) -> Path:
    file = tmp_path / name
    np.savez(file, **arrays)
    return file


def test_npz_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"absent\.npz.*does not exist"):
        load_dataset("npz", tmp_path / "absent.npz")


def test_npz_not_an_archive(tmp_path: Path) -> None:
    file = tmp_path / "junk.npz"
    file.write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match=r"Cannot read .*junk\.npz"):
        load_dataset("npz", file)


@pytest.mark.parametrize("missing", ["x", "y"])
def test_npz_missing_array(tmp_path: Path, missing: str) -> None:
    arrays = {"x": np.zeros((9, 2, 2), np.float32), "y": np.arange(9) % 3}
    del arrays[missing]
    file = _save(tmp_path, **arrays)
    with pytest.raises(DataError, match=rf"bad\.npz.*has no array '{missing}'"):
        load_dataset("npz", file)


def test_npz_nan(tmp_path: Path) -> None:
    x = np.full((9, 2, 2), 0.5, np.float32)
    x[0, 0, 0] = np.nan
    x[1, 1, 1] = np.inf
    file = _save(tmp_path, x=x, y=np.arange(9) % 3)
    with pytest.raises(DataError, match=r"bad\.npz.*contains 2 NaN or infinite values.*scaled to \[0, 1\]"):
        load_dataset("npz", file)


def test_npz_out_of_range(tmp_path: Path) -> None:
    x = np.linspace(0, 255, 36, dtype=np.float32).reshape(9, 2, 2)
    file = _save(tmp_path, x=x, y=np.arange(9) % 3)
    with pytest.raises(DataError, match=r"bad\.npz.*values in \[0, 255\].*must be scaled to \[0, 1\]"):
        load_dataset("npz", file)


def test_npz_negative_labels(tmp_path: Path) -> None:
    file = _save(tmp_path, x=np.zeros((9, 4), np.float32), y=np.arange(9) % 3 - 1)
    with pytest.raises(DataError, match=r"bad\.npz.*3 labels are negative"):
        load_dataset("npz", file)


def test_npz_bad_label_dtype_and_count(tmp_path: Path) -> None:
    file = _save(tmp_path, x=np.zeros((9, 4), np.float32), y=(np.arange(9) % 3).astype(float))
    with pytest.raises(DataError, match=r"bad\.npz.*'y' has dtype float64; labels must be integers"):
        load_dataset("npz", file)
    file = _save(tmp_path, "count.npz", x=np.zeros((9, 4), np.float32), y=np.arange(8) % 3)
    with pytest.raises(DataError, match=r"count\.npz.*'x' holds 9 images but 'y' holds 8 labels"):
        load_dataset("npz", file)


def test_npz_bad_image_shape_and_dtype(tmp_path: Path) -> None:
    file = _save(tmp_path, x=np.zeros(9, np.float32), y=np.arange(9) % 3)
    with pytest.raises(DataError, match=r"bad\.npz.*'x' has shape \(9,\)"):
        load_dataset("npz", file)
    file = _save(tmp_path, "int.npz", x=np.zeros((9, 4), np.int32), y=np.arange(9) % 3)
    with pytest.raises(DataError, match=r"int\.npz.*dtype int32; expected uint8"):
        load_dataset("npz", file)


def test_npz_object_array_refused(tmp_path: Path) -> None:
    x = np.empty(9, dtype=object)
    file = tmp_path / "obj.npz"
    np.savez(file, x=x, y=np.arange(9) % 3)
    with pytest.raises(DataError, match=r"Cannot read .*obj\.npz"):
        load_dataset("npz", file)


def test_npz_too_few_per_class(tmp_path: Path) -> None:
    file = _save(tmp_path, "small.npz", x=np.zeros((8, 4), np.float32),
                 y=np.array([0, 0, 0, 1, 1, 1, 2, 2]))
    with pytest.raises(DataError, match=r"small\.npz.*class 2 has only 2 sample\(s\).*at least 3"):
        load_dataset("npz", file)


def test_real_mnist_in_torchvision_layout(tmp_path: Path) -> None:
    """The real gzip files, copied into a temporary torchvision layout, load with a subset."""
    if not MNIST_T10K.is_dir():
        pytest.skip(f"real MNIST test set not present at {MNIST_T10K}")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for file in MNIST_T10K.glob("t10k-*.gz"):
        shutil.copy(file, raw / file.name)
    ds = load_dataset("mnist", tmp_path, seed=0, subset=500)
    assert len_total(ds) == 500 and ds.input_shape == (1, 28, 28)


def test_digits_equal_scikit_learns_and_load_without_importing_it():
    """The embedded data set is read from scikit-learn's file directly (importing
    scikit-learn costs every evaluator actor ~1.8 s at start-up); same images and labels."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from certevo.evaluators.digits import load_digits as _load_digits

    x, y, _ = _load_digits()
    reference = load_digits()
    assert np.array_equal(x[:, 0], (reference.images / 16.0).astype(np.float32))
    assert np.array_equal(y, reference.target)
    code = "import sys; from certevo.evaluators.data import load_dataset; load_dataset('digits'); print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert out.stdout.strip() == "False"
