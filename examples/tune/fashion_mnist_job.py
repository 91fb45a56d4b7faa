"""A training job for ``autoassist tune``: the Fashion-MNIST CNN, validated on held-out images.

    autoassist tune examples/tune/fashion_mnist_job.py:job --candidates 9 --max-epochs 6

A job is a plain function ``job(config, epochs, seed)``: build the loader, the model and the
optimiser, train for ``epochs`` and return the validation metric after each epoch with the
training wall-clock so far (``train_classifier`` returns exactly that, as a ``Curve``).
``config`` is the ShrinkConfig to try, or ``None`` for the uniform baseline the tune measures
against. Validation uses the last 10,000 training images, never the test set.

``FMNIST_TUNE_IMAGES`` (default 12000) sets how many training images a probe trains on.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Subset

import autoassist
from autoassist.bench.datasets import FashionMNIST
from autoassist.bench.models import small_cnn
from autoassist.bench.training import train_classifier

VALIDATION = 10_000  # the last images of the training split


def job(config, epochs: int, seed: int, *, images: int | None = None, width: int = 32,
        max_lr: float = 0.1, progress: bool = False):
    images = images or int(os.environ.get("FMNIST_TUNE_IMAGES", 12_000))
    full = FashionMNIST("train")
    if images > len(full) - VALIDATION:
        raise ValueError(f"images={images}: at most {len(full) - VALIDATION} (the rest validates)")
    train = Subset(full, range(images))
    val = (full.images[-VALIDATION:], full.labels[-VALIDATION:])
    loader = DataLoader(train, batch_size=128, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    if config is not None:
        loader = autoassist.wrap(loader, config=config.replace(seed=seed))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = small_cnn(width=width)
    try:
        return train_classifier(model, loader, val, epochs=epochs, max_lr=max_lr,
                                name="autoassist" if config is not None else "uniform",
                                progress_bar=progress)
    finally:
        if hasattr(loader, "close"):
            loader.close()
