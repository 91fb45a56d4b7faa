import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

from autoassist.bench.datasets import fashion_mnist_dir


def missing(what: str, install: str) -> NoReturn:
    """Skip: ``what`` (an optional dependency or data set) is not installed here. Under ``CI=1``
    fail instead: CI installs every extra and the data (scripts/setup.sh), so a missing one there
    is a broken set-up that would otherwise skip its tests silently."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI: scripts/setup.sh should have installed it "
                    f"({install})", pytrace=False)
    pytest.skip(f"{what} not installed ({install})", allow_module_level=True)


def require(module: str, extra: str) -> ModuleType:
    """Import the optional dependency ``module`` (of ``pip install 'autoassist[extra]'``) or
    skip, failing under ``CI=1`` (``missing``). Works at module level and in a test."""
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(module, f"pip install 'autoassist[{extra}]'")


def _have_fashion_mnist() -> bool:
    d = fashion_mnist_dir()
    return (d / "train-labels-idx1-ubyte.gz").exists() or (d / "train-labels-idx1-ubyte").exists()


@pytest.fixture(scope="session")
def fmnist_dir():
    if not _have_fashion_mnist():
        missing("Fashion-MNIST", "sudo apt-get install dataset-fashion-mnist")
    return fashion_mnist_dir()


@pytest.fixture(scope="session")
def fmnist_train(fmnist_dir):
    from autoassist.bench.datasets import FashionMNIST

    return FashionMNIST("train", root=fmnist_dir)
