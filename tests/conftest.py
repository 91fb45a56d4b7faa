import importlib
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

from autoassist.bench.datasets import fashion_mnist_dir

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """Refuse a run whose sys.path has the repository root ahead of site-packages (``python -m
    pytest`` from the checkout puts it first) when that matters: the root's ``kernels/`` folder
    (shipped as ``autoassist.kernels``) then shadows the installed PyPI package ``kernels``,
    which transformers 5 imports, and its tests fail far from the cause."""
    spec = importlib.util.find_spec("kernels")
    if spec is None or spec.origin is None or Path(spec.origin).parent != ROOT / "kernels":
        return
    try:
        installed = importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        return  # nothing shadowed (transformers 4 does not need it)
    raise pytest.UsageError(
        f"the repository root {ROOT} is on sys.path, so its kernels/ folder (autoassist.kernels) "
        f"shadows the installed PyPI package kernels {installed}, which transformers 5 imports. "
        "Run `make test`, or `.venv/bin/python -P -m pytest` (-P: no current folder on sys.path)"
    )


def repo_module(name: str) -> ModuleType:
    """Import ``name`` from a top-level package of the repository that is not installed
    (``benchmarks``), without the repository root on sys.path (``pytest_configure``): the
    package is loaded from its folder, its submodules then import as usual."""
    top = name.partition(".")[0]
    if top not in sys.modules:
        folder = ROOT / top
        spec = importlib.util.spec_from_file_location(
            top, folder / "__init__.py", submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[top] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[top]
            raise
    return importlib.import_module(name)


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
