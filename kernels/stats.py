"""Running statistics of Boss losses, updated from batches as they arrive.

``ema_stream`` is the Assistant's label rule: an instance is informative (label 1) when its loss
exceeds the running mean of recent losses *before* it is folded in. ``scatter_ema`` keeps one
moving average per instance from scattered batches (repeated ids are applied in order); the
loss-history baselines (InfoBatch-, Selective-Backprop-style) build on it.

Each loop is written once in plain Python and compiled with Numba on first need: ``ema_stream``
runs it uncompiled for batches under ``COMPILE_AT`` losses until the compiled one is loaded
(the same float64 operations in the same order, so the same labels and mean), which keeps Numba
out of a starting Assistant: on a small data set its import and kernel load (~0.8 s of CPU) would
land in the Boss's first epoch, on the Boss's cores. Once the process has labelled
``COMPILE_AFTER`` losses in Python (about what loading the compiled loop costs), it compiles
whatever the batch size: a large data set's Assistant labels millions of losses an epoch, ~100x
faster compiled, and a starved one must not fall behind for want of it.
"""

from __future__ import annotations

import numpy as np

COMPILE_AT = 1 << 16  # losses in one call from which compiling pays off (Python: ~0.3 us each)
COMPILE_AFTER = 1 << 20  # losses labelled in Python by this process, after which it has paid
_COMPILED: dict = {}
_python_losses = [0]  # losses this process has labelled uncompiled (ema_stream)


def _compiled(loop):
    if loop not in _COMPILED:
        from numba import njit

        _COMPILED[loop] = njit(cache=True)(loop)
    return _COMPILED[loop]


def _ema_stream(losses, mean, alpha, labels):
    for i in range(losses.shape[0]):
        x = losses[i]
        if mean != mean:  # first loss ever: it defines the mean
            mean = x
        labels[i] = x > mean
        mean += alpha * (x - mean)
    return mean


def ema_stream(losses: np.ndarray, mean: float, alpha: float) -> tuple[np.ndarray, float]:
    """Labels ``1[loss_t > m_{t-1}]``, and the mean ``m_t = m_{t-1} + alpha (loss_t - m_{t-1})``.

    ``mean`` may be NaN (nothing seen yet). Returns ``(labels uint8[n], new mean)``.
    """
    losses = np.ascontiguousarray(losses, dtype=np.float64).reshape(-1)
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must lie in (0, 1]")
    labels = np.empty(len(losses), np.uint8)
    n = len(losses)
    if n >= COMPILE_AT or _ema_stream in _COMPILED or _python_losses[0] + n > COMPILE_AFTER:
        return labels, float(_compiled(_ema_stream)(losses, float(mean), float(alpha), labels))
    _python_losses[0] += n
    return labels, float(_ema_stream(losses, float(mean), float(alpha), labels))  # uncompiled


def compile_ema_stream() -> None:
    """Load the compiled label loop now: for a process that will label at least
    ``COMPILE_AFTER`` losses an epoch (an Assistant over that many instances), so that the
    ~0.5-0.8 s of CPU is paid at its start, beside the Boss's first epoch, and not in the middle
    of the losses its first scores wait for."""
    _compiled(_ema_stream)(np.zeros(1), float("nan"), 0.5, np.empty(1, np.uint8))


def _scatter_ema(table, seen, ids, values, alpha):
    for k in range(ids.shape[0]):
        i = ids[k]
        if seen[i]:
            table[i] += alpha * (values[k] - table[i])
        else:
            table[i] = values[k]
            seen[i] = 1


def scatter_ema(table: np.ndarray, seen: np.ndarray, ids: np.ndarray, values: np.ndarray,
                alpha: float) -> None:
    """In place: ``table[id] <- EMA(table[id], value)`` per (id, value); first sighting sets it."""
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    values = np.ascontiguousarray(values, dtype=table.dtype).reshape(-1)
    if len(ids) != len(values):
        raise ValueError(f"{len(ids)} ids but {len(values)} values")
    if seen.dtype != np.uint8 or seen.shape != table.shape:
        raise ValueError("seen must be a uint8 array shaped like table")
    if len(ids) and (ids.min() < 0 or ids.max() >= len(table)):
        raise IndexError(f"ids must lie in [0, {len(table)})")
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must lie in (0, 1]")
    _compiled(_scatter_ema)(table, seen, ids, values, table.dtype.type(alpha))
