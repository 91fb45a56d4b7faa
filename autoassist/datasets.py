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


class DataNotFoundError(FileNotFoundError):
    """A data set's files are missing; the message says how to install them."""


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
