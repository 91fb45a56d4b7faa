"""Seeded shuffle of the kept set: a Fisher-Yates walk driven by the counter-based hash.

Step ``i`` swaps position ``i`` with ``j = floor(u_i * (i + 1))`` where ``u_i`` is the hash of
(seed, epoch, i) as a 32-bit fraction (Lemire's multiply-shift; bias below n / 2**32). The order
is a pure function of (ids, seed, epoch): resuming mid-epoch needs only the position.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .rng import STREAM_SHUFFLE, stream_keys
from .rng_jit import hash32


@njit(cache=True)
def _fisher_yates(out, k1, k2):
    for i in range(out.shape[0] - 1, 0, -1):
        j = (np.uint64(hash32(i, k1, k2)) * np.uint64(i + 1)) >> np.uint64(32)
        tmp = out[i]
        out[i] = out[j]
        out[j] = tmp


def shuffle_kept(ids: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """A shuffled copy of ``ids`` (1-D), the same for the same (ids, seed, epoch) everywhere."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
    if len(ids) >= 2**32:
        raise ValueError("shuffle_kept handles fewer than 2**32 ids")
    out = ids.copy()
    k1, k2 = stream_keys(seed, epoch, STREAM_SHUFFLE)
    _fisher_yates(out, np.uint32(k1), np.uint32(k2))
    return out
