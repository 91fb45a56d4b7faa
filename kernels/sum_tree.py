"""Sum tree (and min tree) over priorities: proportional prioritised replay in O(log N) per op.

Schaul et al. 2016's proportional variant samples transition i with probability
``p_i / sum_j p_j``. A complete binary tree whose leaves are the ``p_i`` and whose inner nodes
hold the sum of their children gives both an update and a draw in ``O(log N)``: a uniform ``u`` in
``[0, total)`` descends left while ``u`` is below the left child's sum. A second tree with minima
gives the smallest priority (the largest importance weight) in ``O(1)``.

Layout: ``tree`` has ``2 * cap`` entries (``cap``: the capacity rounded up to a power of two);
node 1 is the root, node ``i`` has children ``2i`` and ``2i + 1``, leaf ``j`` is node
``cap + j``. Empty leaves hold 0 in the sum tree and +inf in the min tree. Pure functions on
NumPy arrays, no torch; ``sample_numpy`` is the specification the kernel is tested against.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def tree_size(capacity: int) -> int:
    """Leaves of the tree for ``capacity`` priorities (the next power of two)."""
    if capacity < 1:
        raise ValueError(f"capacity={capacity}: must be >= 1")
    return 1 << max(0, int(capacity - 1).bit_length())


def new_trees(capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """An empty sum tree and min tree for ``capacity`` priorities."""
    cap = tree_size(capacity)
    return np.zeros(2 * cap, np.float64), np.full(2 * cap, np.inf, np.float64)


@njit(cache=True)
def _update(sums, mins, ids, priorities):
    cap = sums.shape[0] // 2
    for k in range(ids.shape[0]):
        node = cap + ids[k]
        sums[node] = priorities[k]
        mins[node] = priorities[k]
        node //= 2
        while node >= 1:
            sums[node] = sums[2 * node] + sums[2 * node + 1]
            mins[node] = min(mins[2 * node], mins[2 * node + 1])
            node //= 2


def update(sums: np.ndarray, mins: np.ndarray, ids: np.ndarray, priorities: np.ndarray) -> None:
    """In place: leaf ``ids[k]`` gets ``priorities[k]`` (> 0, finite); repeated ids: last wins."""
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    priorities = np.ascontiguousarray(priorities, dtype=np.float64).reshape(-1)
    if len(ids) != len(priorities):
        raise ValueError(f"{len(ids)} ids but {len(priorities)} priorities")
    cap = len(sums) // 2
    if len(ids) and (ids.min() < 0 or ids.max() >= cap):
        raise IndexError(f"ids must lie in [0, {cap})")
    if len(priorities) and not (np.isfinite(priorities).all() and priorities.min() > 0):
        raise ValueError("priorities must be finite and > 0 (add a small epsilon to |TD error|)")
    _update(sums, mins, ids, priorities)


@njit(cache=True)
def _sample(sums, u, out):
    cap = sums.shape[0] // 2
    for k in range(u.shape[0]):
        x = u[k]
        node = 1
        while node < cap:
            left = sums[2 * node]
            if x < left or sums[2 * node + 1] <= 0.0:
                node = 2 * node
            else:
                x -= left
                node = 2 * node + 1
        out[k] = node - cap


def sample(sums: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Leaves drawn by ``u`` (uniforms in ``[0, 1)``, scaled by the total): ``P(i) = p_i / sum``."""
    total = sums[1]
    if not total > 0:
        raise ValueError("the tree is empty: add priorities before sampling")
    scaled = np.ascontiguousarray(u, dtype=np.float64).reshape(-1) * total
    out = np.empty(len(scaled), np.int64)
    _sample(sums, scaled, out)
    return out


def sample_numpy(priorities: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The specification: the first index whose cumulative priority exceeds ``u * total``."""
    c = np.cumsum(np.asarray(priorities, np.float64))
    idx = np.searchsorted(c, np.asarray(u, np.float64) * c[-1], side="right")
    return np.minimum(idx, len(c) - 1)
