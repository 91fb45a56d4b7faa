"""Counter-based random numbers: a pure function of (seed, epoch, stream, index).

Selection must be identical on every rank and for any thread count, and resumable mid-epoch
without saving generator state. A counter-based generator gives that by construction: the
random number for instance ``i`` is a hash of ``i`` under a key derived from (seed, epoch,
stream), so no thread or rank depends on what another one drew before it.

The per-element hash is 32-bit (two rounds of Wellons' ``lowbias32`` finaliser, keyed), so it
vectorises with plain 32-bit SIMD multiplies. It is a statistical generator, not a cryptographic
one. Streams separate uses (selection, shuffling) so they never share random numbers.

This module is the NumPy specification (no Numba import); ``rng_jit`` holds the same hash for
the compiled kernels.
"""

from __future__ import annotations

import numpy as np

STREAM_SELECT = 1
STREAM_SHUFFLE = 2

_MASK64 = (1 << 64) - 1
_U32 = np.uint32


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def stream_keys(seed: int, epoch: int, stream: int) -> tuple[int, int]:
    """Two 32-bit keys for one (seed, epoch, stream): computed once per call, in Python."""
    if seed < 0 or epoch < 0 or stream < 0:
        raise ValueError(f"seed, epoch and stream must be >= 0, got {seed}, {epoch}, {stream}")
    h = _splitmix64(int(seed) & _MASK64)
    h = _splitmix64(h ^ (int(epoch) & _MASK64))
    h = _splitmix64(h ^ (int(stream) & _MASK64))
    return h & 0xFFFFFFFF, h >> 32


def hash32_numpy(index: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """The same hash in NumPy (the reference the Numba kernels are tested against)."""
    index = np.asarray(index, np.int64)

    def lowbias(x):
        x = x ^ (x >> _U32(16))
        x = x * _U32(0x7FEB352D)
        x = x ^ (x >> _U32(15))
        x = x * _U32(0x846CA68B)
        return x ^ (x >> _U32(16))

    lo = (index & 0xFFFFFFFF).astype(np.uint32)
    hi = ((index >> 32) & 0xFFFFFFFF).astype(np.uint32)
    with np.errstate(over="ignore"):
        h = lowbias(lo + _U32(k1))
        return lowbias(h ^ (hi + _U32(k2)))


def uniforms(index: np.ndarray, seed: int, epoch: int, stream: int = STREAM_SELECT) -> np.ndarray:
    """Uniform floats in [0, 1) with 24 random bits, one per index (NumPy; for tests/tools)."""
    k1, k2 = stream_keys(seed, epoch, stream)
    return (hash32_numpy(index, k1, k2) >> 8).astype(np.float32) * np.float32(2.0**-24)
