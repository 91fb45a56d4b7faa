"""The compiled shrink-select (``select.py`` documents it and dispatches here for large inputs).

Two parallel passes over fixed-size chunks (the chunking never depends on the thread count, and
the random number of instance ``i`` depends only on (seed, epoch, i), so the result is identical
for any thread count and on every rank):

1. decide every instance's fate (vectorised hash + compare), write the keep mask, count per chunk;
2. after a prefix sum over the chunk counts, each chunk writes its kept indices into its own slice.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from ._threads import numba_threads
from .rng import STREAM_SELECT, stream_keys
from .rng_jit import hash32_parts
from .select import _TWO24

CHUNK = 1 << 16


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
    k1, k2 = stream_keys(seed, epoch, STREAM_SELECT)
    b = np.float32(floor)
    mask = np.empty(len(scores), np.bool_)
    counts = np.empty(-(-len(scores) // CHUNK), np.int64)
    with numba_threads(num_threads):
        _mark(scores, b, np.float32(1.0) - b, np.uint32(k1), np.uint32(k2), mask.view(np.uint8),
              counts)
    return mask, counts


def keep_mask(scores, floor, seed, epoch, num_threads):
    mask, counts = _marked(scores, floor, seed, epoch, num_threads)
    return mask, int(counts.sum())


def shrink_select(scores, floor, seed, epoch, num_threads, index_type):
    mask, counts = _marked(scores, floor, seed, epoch, num_threads)
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    kept = np.empty(int(offsets[-1]), index_type)
    with numba_threads(num_threads):
        _gather(mask.view(np.uint8), offsets, kept, *_compaction_tables())
    return kept, mask
