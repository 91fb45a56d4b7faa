"""Numba kernels: pure functions on NumPy arrays, importable and testable without torch.

Imported as ``autoassist.kernels`` (the folder ``kernels/`` is mapped there by pyproject).
Kernels compile lazily on first call (cached on disk) and run in the Boss's main process and in
the spawned Assistant process, never in forked DataLoader workers (see docs/ARCHITECTURE.md).
Names load lazily, and small inputs take NumPy or plain-Python paths with identical results:
importing Numba and loading a cached kernel costs ~0.8 s of CPU, more than a small data set's
whole run of selections and label updates (it would land in the first epochs, on the Boss's
cores).

- ``shrink_select``: scores -> kept indices + mask, counter-based RNG (any thread count, any rank);
  ``keep_mask``: the mask and count only.
- ``keep_probabilities``: ``b + (1 - b) * p``; ``rank_scores``: scores -> rank percentiles ** k
  (the ``rank_power`` keep rule).
- ``shuffle_kept``: seeded Fisher-Yates of the kept set.
- ``ema_stream``, ``scatter_ema``: loss statistics from batches as they arrive.
- ``batch_by_size``: batches under a token budget for variable-length instances.
- ``sum_tree``: sum/min trees for proportional prioritised replay (update, draw).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "STREAM_SELECT": "rng", "STREAM_SHUFFLE": "rng", "hash32_numpy": "rng",
    "stream_keys": "rng", "uniforms": "rng",
    "index_dtype": "select", "keep_mask": "select", "keep_probabilities": "select",
    "proportional_scores": "select", "rank_scores": "select", "shrink_select": "select",
    "shrink_select_numpy": "select",
    "shuffle_kept": "shuffle",
    "ema_stream": "stats", "scatter_ema": "stats",
    "batch_by_size": "batching",
    "sum_tree": None,  # a module
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'autoassist.kernels' has no attribute {name!r}")
    module = _EXPORTS[name]
    if module is None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
