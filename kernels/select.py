"""Shrink-select: the instances one epoch keeps, each with probability ``b + (1 - b) * p_i``.

Two parallel passes over fixed-size chunks (the chunking never depends on the thread count, and
the random number of instance ``i`` depends only on (seed, epoch, i), so the result is identical
for any thread count and on every rank):

1. decide every instance's fate (vectorised hash + compare), write the keep mask, count per chunk;
2. after a prefix sum over the chunk counts, each chunk writes its kept indices into its own slice.

Scores outside [0, 1] are clipped; a NaN score counts as 1 (informative: never drop on doubt).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from ._threads import numba_threads
from .rng import STREAM_SELECT, hash32_numpy, hash32_parts, stream_keys

CHUNK = 1 << 16
_TWO24 = np.float32(16777216.0)


def _check(scores: np.ndarray, floor: float) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be a 1-D array, got shape {scores.shape}")
    if scores.dtype != np.float32:
        scores = scores.astype(np.float32)
    if not 0.0 <= float(floor) <= 1.0:
        raise ValueError(f"floor={floor} must lie in [0, 1]")
    return np.ascontiguousarray(scores)


@njit(inline="always", cache=True)
def _threshold(s, b, a):
    """``P * 2**24`` in float32: instance kept iff its 24 random bits fall below it."""
    if s != s:
        s = np.float32(1.0)
    s = min(max(s, np.float32(0.0)), np.float32(1.0))
    return (b + a * s) * _TWO24


@njit(parallel=True, cache=True)
def _mark(scores, b, a, k1, k2, mask, counts):
    n = scores.shape[0]
    for c in prange(counts.shape[0]):
        start = c * CHUNK
        # slice views with 0-based loops: LLVM vectorises these (a range(start, stop) it did not)
        sv = scores[start : min(n, start + CHUNK)]
        mv = mask[start : min(n, start + CHUNK)]
        hi = np.uint32(start >> 32)  # constant within a chunk (CHUNK divides 2**32)
        lo = np.uint32(start & 0xFFFFFFFF)
        kept = 0
        for j in range(sv.shape[0]):
            h = hash32_parts(np.uint32(lo + np.uint32(j)), hi, k1, k2)
            keep = np.float32(h >> np.uint32(8)) < _threshold(sv[j], b, a)
            mv[j] = keep
            kept += keep
        counts[c] = kept


_PACK = np.uint64(0x8040201008040201)  # 8 bytes of 0/1 -> one byte of bits (bit-reversed)


@functools.cache
def _compaction_tables() -> tuple[np.ndarray, np.ndarray]:
    """For each packed byte: the positions of its kept instances (padded) and their count."""
    positions = np.zeros((256, 8), np.int32)
    count = np.zeros(256, np.int64)
    for pattern in range(256):
        word = np.array([(pattern >> k) & 1 for k in range(8)], np.uint8).view(np.uint64)[0]
        with np.errstate(over="ignore"):
            packed = int((word * _PACK) >> np.uint64(56))
        kept = [k for k in range(8) if (pattern >> k) & 1]
        positions[packed, : len(kept)] = kept
        count[packed] = len(kept)
    return positions, count


@njit(parallel=True, cache=True)
def _gather(mask, offsets, out, positions, count):
    n = mask.shape[0]
    for c in prange(offsets.shape[0] - 1):
        start = c * CHUNK
        mv = mask[start : min(n, start + CHUNK)]
        pos = offsets[c]
        end = offsets[c + 1]
        words = mv[: mv.shape[0] // 8 * 8].view(np.uint64)
        j = 0
        # eight instances per step through the lookup table, always writing 8 slots; only while
        # 8 slots remain in this chunk's slice, so a write never lands in the next chunk's
        while j < words.shape[0] and pos + 8 <= end:
            packed = (words[j] * _PACK) >> np.uint64(56)
            base = start + j * 8
            for k in range(8):
                out[pos + k] = base + positions[packed, k]
            pos += count[packed]
            j += 1
        i = j * 8
        while pos < end:
            if mv[i]:
                out[pos] = start + i
                pos += 1
            i += 1


def _marked(scores, floor, seed, epoch, num_threads):
    scores = _check(scores, floor)
    k1, k2 = stream_keys(seed, epoch, STREAM_SELECT)
    b = np.float32(floor)
    mask = np.empty(len(scores), np.bool_)
    counts = np.empty(-(-len(scores) // CHUNK), np.int64)
    with numba_threads(num_threads):
        _mark(scores, b, np.float32(1.0) - b, np.uint32(k1), np.uint32(k2), mask.view(np.uint8),
              counts)
    return mask, counts


def index_dtype(n: int) -> type[np.signedinteger]:
    """int32 when every index of ``n`` instances fits, else int64 (as scipy.sparse chooses):
    half the bytes to write for the kept list, which is what bounds this kernel."""
    return np.int32 if n <= np.iinfo(np.int32).max else np.int64


def keep_mask(scores: np.ndarray, floor: float, seed: int, epoch: int, *,
              num_threads: int | None = None) -> tuple[np.ndarray, int]:
    """The keep mask of ``shrink_select`` and the number kept, without listing the indices."""
    mask, counts = _marked(scores, floor, seed, epoch, num_threads)
    return mask, int(counts.sum())


def shrink_select(scores: np.ndarray, floor: float, seed: int, epoch: int, *,
                  num_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Keep instance i with probability ``floor + (1 - floor) * clip(scores[i], 0, 1)``.

    Returns ``(kept, mask)``: the kept indices (ascending, ``index_dtype(N)``) and the boolean
    keep mask. Identical for every ``num_threads`` (None = Numba's current count).
    """
    mask, counts = _marked(scores, floor, seed, epoch, num_threads)
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    kept = np.empty(int(offsets[-1]), index_dtype(len(mask)))
    with numba_threads(num_threads):
        _gather(mask.view(np.uint8), offsets, kept, *_compaction_tables())
    return kept, mask


def keep_probabilities(scores: np.ndarray, floor: float) -> np.ndarray:
    """``P_i = floor + (1 - floor) * clip(scores_i, 0, 1)`` (NaN as 1), float32."""
    scores = _check(scores, floor)
    s = np.nan_to_num(scores, nan=1.0)
    np.clip(s, 0.0, 1.0, out=s)
    b = np.float32(floor)
    return b + (np.float32(1.0) - b) * s


def shrink_select_numpy(scores: np.ndarray, floor: float, seed: int,
                        epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """NumPy reference of ``shrink_select`` with the same random numbers (the specification)."""
    scores = _check(scores, floor)
    k1, k2 = stream_keys(seed, epoch, STREAM_SELECT)
    bits = hash32_numpy(np.arange(len(scores), dtype=np.int64), k1, k2) >> np.uint32(8)
    mask = bits.astype(np.float32) < keep_probabilities(scores, floor) * _TWO24
    return np.flatnonzero(mask).astype(index_dtype(len(mask))), mask
