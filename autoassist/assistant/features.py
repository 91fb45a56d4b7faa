"""Cheap per-instance features for the Assistant, computed in the Boss from the batches it sees.

Default: a fixed random projection of the flattened input plus a one-hot of the class label
(the paper's "raw pixels + class bias", made small). The projection is computed the first time
an instance is seen and written into shared memory; after that the Boss pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

_INPUT_KEYS = ("input", "inputs", "x", "image", "images", "pixel_values", "input_ids", "features")
_LABEL_KEYS = ("label", "labels", "y", "target", "targets")


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Find the input tensor and (optional) integer class labels in a collated batch."""
    x = y = None
    if isinstance(batch, torch.Tensor):
        x = batch
    elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        x = batch[0]
        if len(batch) > 1 and isinstance(batch[1], torch.Tensor):
            y = batch[1]
    elif isinstance(batch, Mapping):
        x = next((batch[k] for k in _INPUT_KEYS if isinstance(batch.get(k), torch.Tensor)), None)
        y = next((batch[k] for k in _LABEL_KEYS if isinstance(batch.get(k), torch.Tensor)), None)
    if x is None:
        raise TypeError(
            f"autoassist cannot find the input tensor in a batch of type {type(batch).__name__}; "
            "pass inputs=lambda batch: (x, y) or features=... to autoassist.wrap"
        )
    if y is not None and (y.dtype.is_floating_point or y.ndim != 1 or len(y) != len(x)):
        y = None  # not class labels: regression targets or sequences carry no class bias
    return x, y


class RandomProjectionFeatures:
    """``[x_flat @ R, onehot(y mod buckets)]`` with R ~ N(0, 1/D), fixed by the seed."""

    def __init__(self, feature_dim: int, label_buckets: int, seed: int,
                 inputs: Callable[[Any], tuple[torch.Tensor, torch.Tensor | None]] | None = None):
        self.feature_dim = int(feature_dim)
        self.label_buckets = int(label_buckets)
        self.seed = int(seed)
        self.inputs = inputs or split_batch
        self._proj: torch.Tensor | None = None

    @property
    def dim(self) -> int:
        return self.feature_dim + self.label_buckets

    def _projection(self, in_dim: int, device, dtype) -> torch.Tensor:
        if self._proj is None or self._proj.shape[0] != in_dim:
            gen = torch.Generator().manual_seed(self.seed)
            self._proj = torch.randn(in_dim, self.feature_dim, generator=gen) / in_dim**0.5
        return self._proj.to(device=device, dtype=dtype)

    @torch.no_grad()
    def __call__(self, batch: Any, rows: torch.Tensor | slice = slice(None)) -> np.ndarray:
        x, y = self.inputs(batch)
        x = x[rows]
        flat = x.reshape(len(x), -1)
        if not flat.dtype.is_floating_point:
            flat = flat.float()
        out = np.zeros((len(x), self.dim), np.float32)
        proj = flat @ self._projection(flat.shape[1], flat.device, flat.dtype)
        out[:, : self.feature_dim] = proj.float().cpu().numpy()
        if y is not None and self.label_buckets:
            labels = y[rows].long().cpu().numpy() % self.label_buckets
            out[np.arange(len(x)), self.feature_dim + labels] = 1.0
        return out


class CallableFeatures:
    """User features: ``fn(batch) -> Tensor[B, dim]`` (e.g. an embedding the user already has)."""

    def __init__(self, fn: Callable[[Any], torch.Tensor], dim: int):
        self.fn, self.dim = fn, int(dim)

    @torch.no_grad()
    def __call__(self, batch: Any, rows=slice(None)) -> np.ndarray:
        feats = torch.as_tensor(self.fn(batch))
        if feats.ndim != 2 or feats.shape[1] != self.dim:
            raise ValueError(
                f"features callable returned shape {tuple(feats.shape)}; expected [batch, "
                f"{self.dim}] (set feature_dim to the width your callable returns)"
            )
        return feats[rows].float().cpu().numpy()
