"""Downsampling filters for the auxiliary variables exchanged between block processes (paper C).

An auxiliary variable lives in the filter's coarse space: ``z = P a`` stores (and sends) a
quarter of a 2x2 average-pooled activation ``a``; the next block reads ``U z`` (nearest-neighbour
upsampling). ``P`` is linear with adjoint ``P^T = U / 4`` (checked by a dot-product test), so
penalties in the coarse space are ordinary least-squares terms. ``IdentityFilter`` is "no
filter": the exact activations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class IdentityFilter:
    factor = 1

    def down(self, a: torch.Tensor) -> torch.Tensor:
        return a

    def up(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def adjoint(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def coarse_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)


class AvgPoolFilter:
    """``P`` = average pooling over ``k x k`` windows; ``U`` = nearest upsampling by ``k``."""

    def __init__(self, k: int = 2):
        if k < 2:
            raise ValueError(f"k={k}: pooling windows of at least 2x2 (k=1 is IdentityFilter)")
        self.k = k
        self.factor = k * k

    def down(self, a: torch.Tensor) -> torch.Tensor:
        if a.shape[-1] % self.k or a.shape[-2] % self.k:
            raise ValueError(f"activation {tuple(a.shape)} is not divisible into {self.k}x"
                             f"{self.k} windows")
        return F.avg_pool2d(a, self.k)

    def up(self, z: torch.Tensor) -> torch.Tensor:
        return F.interpolate(z, scale_factor=self.k, mode="nearest")

    def adjoint(self, z: torch.Tensor) -> torch.Tensor:
        """``P^T``: each coarse value spread evenly over its window."""
        return self.up(z) / self.factor

    def coarse_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*shape[:-2], shape[-2] // self.k, shape[-1] // self.k)


def make_filter(spec: int | None):
    """``None``/1: no filter; ``k``: ``k x k`` average pooling."""
    return IdentityFilter() if spec in (None, 1) else AvgPoolFilter(int(spec))
