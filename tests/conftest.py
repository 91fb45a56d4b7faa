import os

import pytest

from autoassist.datasets import fashion_mnist_dir


def _have_fashion_mnist() -> bool:
    d = fashion_mnist_dir()
    return (d / "train-labels-idx1-ubyte.gz").exists() or (d / "train-labels-idx1-ubyte").exists()


@pytest.fixture(scope="session")
def fmnist_dir():
    if not _have_fashion_mnist():
        if os.environ.get("CI"):
            pytest.fail("Fashion-MNIST is missing in CI: scripts/setup.sh should have installed it")
        pytest.skip("Fashion-MNIST not installed (sudo apt-get install dataset-fashion-mnist)")
    return fashion_mnist_dir()


@pytest.fixture(scope="session")
def fmnist_train(fmnist_dir):
    from autoassist.datasets import FashionMNIST

    return FashionMNIST("train", root=fmnist_dir)
