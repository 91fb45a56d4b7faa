"""Shrink-select: the instances one epoch keeps, each with probability ``b + (1 - b) * p_i``.

The random number of instance ``i`` depends only on (seed, epoch, i) (``rng.py``), so the choice
is identical for any thread count, on every rank, and on both paths: the Numba kernel
(``select_jit.py``, parallel) and, below ``NUMPY_BELOW`` instances, NumPy, which is faster end to
end there: loading Numba and the cached kernel costs ~0.8 s once per process, more than a small
data set's selections for a whole run. Measured on 10M scores with 2 Numba threads (``python -m
benchmarks.kernels``, ``benchmarks/results/kernels.json``: 2-core Xeon VM, clean commit 52b159a),
the kernel is 8.1x faster than the usual vectorised NumPy selection (``Generator.random(n) < P``
+ ``flatnonzero``) and 29x faster than NumPy computing the same counter-based hash
(``shrink_select_numpy``).

Scores outside [0, 1] are clipped; a NaN score counts as 1 (informative: never drop on doubt).
"""

from __future__ import annotations

import math

import numpy as np

from .rng import STREAM_SELECT, hash32_numpy, stream_keys

NUMPY_BELOW = 1 << 17  # ~5 ms per selection in NumPy here; the Numba kernel takes ~0.1 ms
_TWO24 = np.float32(16777216.0)
BACKENDS = ("auto", "numba", "numpy")


def _as_scores(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be a 1-D array, got shape {scores.shape}")
    if scores.dtype != np.float32:
        scores = scores.astype(np.float32)
    return np.ascontiguousarray(scores)


def _check(scores: np.ndarray, floor: float) -> np.ndarray:
    scores = _as_scores(scores)
    if not 0.0 <= float(floor) <= 1.0:
        raise ValueError(f"floor={floor} must lie in [0, 1]")
    return scores


def _use_numpy(n: int, num_threads: int | None, backend: str) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {BACKENDS}")
    if backend == "auto":
        return n < NUMPY_BELOW and num_threads is None
    return backend == "numpy"


def index_dtype(n: int) -> type[np.signedinteger]:
    """int32 when every index of ``n`` instances fits, else int64 (as scipy.sparse chooses):
    half the bytes to write for the kept list, which is what bounds this kernel."""
    return np.int32 if n <= np.iinfo(np.int32).max else np.int64


def keep_mask(scores: np.ndarray, floor: float, seed: int, epoch: int, *,
              num_threads: int | None = None, backend: str = "auto") -> tuple[np.ndarray, int]:
    """The keep mask of ``shrink_select`` and the number kept, without listing the indices."""
    scores = _check(scores, floor)
    if _use_numpy(len(scores), num_threads, backend):
        mask = _mask_numpy(scores, floor, seed, epoch)
        return mask, int(np.count_nonzero(mask))
    from . import select_jit

    return select_jit.keep_mask(scores, floor, seed, epoch, num_threads)


def shrink_select(scores: np.ndarray, floor: float, seed: int, epoch: int, *,
                  num_threads: int | None = None,
                  backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Keep instance i with probability ``floor + (1 - floor) * clip(scores[i], 0, 1)``.

    Returns ``(kept, mask)``: the kept indices (ascending, ``index_dtype(N)``) and the boolean
    keep mask. Identical for every ``num_threads`` (None = Numba's current count) and backend
    ("auto": NumPy below ``NUMPY_BELOW`` instances unless ``num_threads`` is given, else Numba).
    """
    scores = _check(scores, floor)
    if _use_numpy(len(scores), num_threads, backend):
        mask = _mask_numpy(scores, floor, seed, epoch)
        return np.flatnonzero(mask).astype(index_dtype(len(mask))), mask
    from . import select_jit

    return select_jit.shrink_select(scores, floor, seed, epoch, num_threads,
                                    index_dtype(len(scores)))


def keep_probabilities(scores: np.ndarray, floor: float) -> np.ndarray:
    """``P_i = floor + (1 - floor) * clip(scores_i, 0, 1)`` (NaN as 1), float32."""
    scores = _check(scores, floor)
    s = np.nan_to_num(scores, nan=1.0)
    np.clip(s, 0.0, 1.0, out=s)
    b = np.float32(floor)
    return b + (np.float32(1.0) - b) * s


def rank_scores(scores: np.ndarray, power: float) -> np.ndarray:
    """Each score's rank percentile among the finite scores, to the ``power``, float32 in (0, 1).

    Used in place of the raw scores, the keep rule depends only on the Assistant's *ordering*:
    a poorly calibrated Assistant (scores bunched near the running-mean threshold) still keeps
    its top-ranked instances far more often than its bottom ones, and ``power`` > 1 spends the
    budget on the top, as Selective Backprop's ``CDF(loss) ** 3`` does for losses. Ties share
    their mid-rank (no order from the index); NaN stays NaN (kept with probability 1).
    """
    scores = _as_scores(scores)
    if not (math.isfinite(power) and power > 0):
        raise ValueError(f"power={power} must be a positive finite number (1 = plain ranks)")
    out = np.full(len(scores), np.nan, np.float32)
    finite = np.isfinite(scores)
    values = scores[finite]
    if len(values):
        ordered = np.sort(values)
        below = np.searchsorted(ordered, values, side="left")
        upto = np.searchsorted(ordered, values, side="right")
        u = (below + upto).astype(np.float64) / (2.0 * len(values))  # mid-rank in (0, 1)
        out[finite] = u ** float(power)
    return out


def proportional_scores(ratios: np.ndarray, keep: float, floor: float,
                        sample: int = 1 << 16) -> np.ndarray:
    """Scores ``p_i`` whose keep probabilities ``P_i = b + (1 - b) * p_i`` are proportional to
    ``ratios_i``, at least the floor ``b``, at most 1, and ``keep`` on average.

    ``P_i = clip(ratios_i / tau, b, 1)``: importance sampling by (for instance) each instance's
    last loss over the mean loss, where the "above the mean" rule keeps all or ``b``. The
    threshold ``tau`` is found by bisection on an evenly strided sample of at most ``sample``
    ratios and applied to all, so ``mean(P)`` is ``keep`` to within about 1% at any size.

    Args:
        ratios: 1-D, each ``>= 0``; ``+inf`` or NaN: always kept (``P = 1``; an instance the
            Assistant has not seen yet).
        keep: the mean keep probability wanted, in ``[b, 1]``.
        floor: ``b``, the least keep probability, in ``[0, keep]``.
        sample: ratios used to find ``tau``.

    Returns:
        float32 scores in [0, 1]. When the always-kept instances alone exceed ``keep``, the
        others are all at ``P = b``; when no ratio is above 0, ``P`` is uniform.

    Raises:
        ValueError: ``keep`` or ``floor`` out of range, or a negative ratio.
    """
    r = np.asarray(ratios, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"ratios must be a 1-D array, got shape {r.shape}")
    if not (0.0 <= floor <= keep <= 1.0) or floor >= 1.0:
        raise ValueError(f"keep={keep}, floor={floor}: need 0 <= floor <= keep <= 1, floor < 1")
    if np.any(r < 0):
        raise ValueError("ratios must be >= 0 (a loss over the mean loss, for instance)")
    always = ~np.isfinite(r)
    finite = r[~always]
    P = np.ones(len(r), np.float64)
    if len(finite) and keep < 1.0:
        n = len(r)
        budget = keep * n - always.sum()  # what the finite ratios may keep in all
        step = max(1, len(finite) // sample)
        probe = finite[::step]
        scale = len(finite) / len(probe)

        def kept(tau):  # expected keeps among the finite ratios
            return np.clip(probe / tau, floor, 1.0).sum() * scale

        positive = finite > 0
        if budget <= floor * len(finite):  # the always-kept use it up: the rest at the floor
            P[~always] = floor
        elif budget >= positive.sum() + floor * (~positive).sum():
            # every positive ratio kept (tau -> 0) is not enough: the zero ratios share the rest
            rest = (budget - positive.sum()) / max(1, (~positive).sum())
            P[~always] = np.where(positive, 1.0, min(max(rest, floor), 1.0))
        else:  # kept(tau) falls from above the budget (tau -> 0) to floor * n (tau = top / b)
            top = probe.max()
            lo, hi = top * 1e-12, top / max(floor, 1e-12)
            for _ in range(100):
                mid = math.sqrt(lo * hi)
                if kept(mid) > budget:
                    lo = mid
                else:
                    hi = mid
                if hi / lo < 1.0 + 1e-6:
                    break
            P[~always] = np.clip(finite / hi, floor, 1.0)
    scores = (P - floor) / (1.0 - floor)
    return np.clip(scores, 0.0, 1.0).astype(np.float32)


def _mask_numpy(scores: np.ndarray, floor: float, seed: int, epoch: int) -> np.ndarray:
    k1, k2 = stream_keys(seed, epoch, STREAM_SELECT)
    bits = hash32_numpy(np.arange(len(scores), dtype=np.int64), k1, k2) >> np.uint32(8)
    return bits.astype(np.float32) < keep_probabilities(scores, floor) * _TWO24


def shrink_select_numpy(scores: np.ndarray, floor: float, seed: int,
                        epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """NumPy reference of ``shrink_select`` with the same random numbers (the specification)."""
    mask = _mask_numpy(_check(scores, floor), floor, seed, epoch)
    return np.flatnonzero(mask).astype(index_dtype(len(mask))), mask
