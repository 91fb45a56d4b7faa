"""The counter-based hash of ``rng`` for Numba kernels (inlined into them); same bits as
``rng.hash32_numpy``."""

from __future__ import annotations

import numpy as np
from numba import njit

_U32 = np.uint32


@njit(inline="always", cache=True)
def _lowbias32(x):
    x = _U32(x ^ (x >> _U32(16)))
    x = _U32(x * _U32(0x7FEB352D))
    x = _U32(x ^ (x >> _U32(15)))
    x = _U32(x * _U32(0x846CA68B))
    return _U32(x ^ (x >> _U32(16)))


@njit(inline="always", cache=True)
def hash32_parts(lo, hi, k1, k2):
    """32 random bits for the index whose low and high 32-bit halves are ``lo``, ``hi``."""
    h = _lowbias32(_U32(lo + k1))
    return _lowbias32(_U32(h ^ _U32(hi + k2)))


@njit(inline="always", cache=True)
def hash32(index, k1, k2):
    """32 random bits for ``index`` (int64) under keys ``k1``, ``k2`` (uint32)."""
    return hash32_parts(_U32(index & 0xFFFFFFFF), _U32((index >> 32) & 0xFFFFFFFF), k1, k2)
