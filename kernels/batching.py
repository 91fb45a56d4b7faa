"""Batch-by-size under a token budget, for variable-length instances (translation, text).

Walks the instances in the given order and closes a batch when adding the next one would exceed
``max_tokens`` counted as padded tokens (``longest * count``) or ``max_sentences``. With
``multiple > 1`` a closed batch is cut down to a multiple of it (when it has at least that many)
and the rest opens the next batch, so batch sizes suit tensor-core shapes. The order is the
caller's (usually sorted by length): choosing instances and building batches stay separate.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _overflows(longest, count, max_tokens, max_sentences):
    return (max_tokens > 0 and longest * count > max_tokens) or (
        max_sentences > 0 and count > max_sentences
    )


@njit(cache=True)
def _bounds(sizes, max_tokens, max_sentences, multiple, bounds):
    n = sizes.shape[0]
    start = 0
    longest = 0
    nb = 0
    for i in range(n):
        longest = max(longest, sizes[i])
        while i > start and _overflows(longest, i - start + 1, max_tokens, max_sentences):
            size = i - start  # the batch without instance i
            if multiple > 1 and size >= multiple:
                size -= size % multiple
            start += size
            nb += 1
            bounds[nb] = start
            longest = 0
            for j in range(start, i + 1):
                longest = max(longest, sizes[j])
    if start < n:
        nb += 1
        bounds[nb] = n
    return nb


def batch_by_size(order: np.ndarray, sizes: np.ndarray, *, max_tokens: int | None = None,
                  max_sentences: int | None = None, multiple: int = 1) -> list[np.ndarray]:
    """Split ``order`` (instance ids) into batches; ``sizes[id]`` is instance ``id``'s length.

    A batch holds at most ``max_sentences`` instances and at most ``max_tokens`` padded tokens.
    Raises ``ValueError`` naming an instance that alone exceeds ``max_tokens``.
    """
    order = np.ascontiguousarray(order, dtype=np.int64).reshape(-1)
    sizes = np.asarray(sizes).reshape(-1)
    if max_tokens is None and max_sentences is None:
        raise ValueError("batch_by_size needs max_tokens and/or max_sentences")
    if multiple < 1:
        raise ValueError(f"multiple={multiple} must be >= 1")
    if len(order) and (order.min() < 0 or order.max() >= len(sizes)):
        raise IndexError(f"order holds ids outside [0, {len(sizes)})")
    ordered = np.ascontiguousarray(sizes[order], dtype=np.int64)
    mt = int(max_tokens or 0)
    ms = int(max_sentences or 0)
    if (max_tokens is not None and mt <= 0) or (max_sentences is not None and ms <= 0):
        raise ValueError("max_tokens and max_sentences must be positive")
    if mt and len(ordered) and ordered.max() > mt:
        k = int(np.argmax(ordered))
        raise ValueError(
            f"instance {int(order[k])} has {int(ordered[k])} tokens, more than max_tokens={mt}: "
            "filter it out by size first or raise max_tokens"
        )
    bounds = np.zeros(len(order) + 1, np.int64)
    nb = _bounds(ordered, mt, ms, int(multiple), bounds)
    return np.split(order, bounds[1:nb]) if nb else []
