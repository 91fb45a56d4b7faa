"""Benchmark tasks: a data set and a model factory with their training budget.

Adding a task is a few lines: write a loader returning ``(train dataset, (test x, test y))`` and
register a ``Task``. The time-to-accuracy harness (``time_to_accuracy.py``) takes any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from autoassist.bench.models import mlp, small_cnn

TestSet = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Task:
    """What to train and for how long; ``quick_*`` fields shrink it to a few minutes."""

    name: str
    description: str
    load: Callable[[int | None], tuple[Dataset, TestSet]]  # limit on train instances -> data
    model: Callable[[], nn.Module]
    epochs: int
    batch_size: int
    lrs: tuple[float, ...]  # the uniform baseline's learning-rate sweep
    weight_decay: float = 5e-4
    quick_epochs: int = 3
    quick_limit: int | None = None
    quick_lrs: tuple[float, ...] | None = None


def _fashion_mnist(limit: int | None):
    from autoassist.bench.datasets import FashionMNIST

    return FashionMNIST("train", limit=limit), FashionMNIST("test").tensors()


def _keel(name: str) -> Callable[[int | None], tuple[Dataset, TestSet]]:
    def load(limit: int | None):
        from autoassist.bench.datasets import KEEL_SPLIT_SEED, TensorPairs, keel_split

        train, test = keel_split(name)
        if limit is not None and limit < len(train):
            # a fixed random slice: KEEL files are sorted by class, so the first rows would be
            # one class only (a task any constant answer "solves")
            rng = np.random.Generator(np.random.PCG64(KEEL_SPLIT_SEED + 1))
            rows = np.sort(rng.permutation(len(train))[:limit])
            train = TensorPairs(train.x[rows], train.y[rows], train.classes)
        return train, test.tensors()

    return load


def _adult(limit: int | None):
    from autoassist.bench.datasets import TensorPairs, load_adult

    x_train, y_train, x_test, y_test = load_adult()

    def pairs(x, y):  # labels {-1, +1} -> classes {0, 1}
        return TensorPairs(torch.from_numpy(x.astype(np.float32)),
                           torch.from_numpy((y > 0).astype(np.int64)), ("<=50K", ">50K"))

    train = pairs(x_train, y_train)
    if limit is not None and limit < len(train):
        rows = np.sort(np.random.Generator(np.random.PCG64(1)).permutation(len(train))[:limit])
        train = TensorPairs(train.x[rows], train.y[rows], train.classes)
    return train, pairs(x_test, y_test).tensors()


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    if task.name in TASKS:
        raise ValueError(f"a task named {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


register_task(Task(
    name="fashion_mnist",
    description="Fashion-MNIST (60k/10k), small CNN (2 conv blocks, ~420k parameters)",
    load=_fashion_mnist, model=lambda: small_cnn(width=32),
    epochs=12, batch_size=128, lrs=(0.05, 0.1, 0.2),
    quick_epochs=4, quick_limit=12000, quick_lrs=(0.1, 0.2),
))
register_task(Task(
    name="keel_magic",
    description="KEEL magic gamma telescope (15.2k/3.8k, 10 features, 2 classes), MLP 512x4",
    load=_keel("magic"), model=lambda: mlp(10, 2, hidden=512, depth=4),
    epochs=30, batch_size=64, lrs=(0.02, 0.05, 0.1), weight_decay=1e-4,
    quick_epochs=10, quick_limit=None, quick_lrs=(0.05, 0.1),
))
register_task(Task(
    name="adult",
    description="UCI Adult income (32.6k/16.3k, 109 one-hot/standardised features, 2 classes), "
                "MLP 256x3",
    load=_adult, model=lambda: mlp(109, 2, hidden=256, depth=3),
    epochs=12, batch_size=128, lrs=(0.02, 0.05, 0.1), weight_decay=1e-4,
    quick_epochs=4, quick_limit=None, quick_lrs=(0.05, 0.1),
))
