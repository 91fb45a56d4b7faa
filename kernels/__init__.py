"""Numba kernels: pure functions on NumPy arrays, importable and testable without torch.

Imported as ``autoassist.kernels`` (the folder ``kernels/`` is mapped there by pyproject).
Kernels compile lazily on first call (cached on disk) and run in the Boss's main process and in
the spawned Assistant process, never in forked DataLoader workers (see docs/ARCHITECTURE.md).

- ``shrink_select``: scores -> kept indices + mask, counter-based RNG (any thread count, any rank);
  ``keep_mask``: the mask and count only.
- ``keep_probabilities``: ``b + (1 - b) * p``.
- ``shuffle_kept``: seeded Fisher-Yates of the kept set.
- ``ema_stream``, ``scatter_ema``: loss statistics from batches as they arrive.
- ``batch_by_size``: batches under a token budget for variable-length instances.
- ``sum_tree``: sum/min trees for proportional prioritised replay (update, draw).
"""

from . import sum_tree
from .batching import batch_by_size
from .rng import STREAM_SELECT, STREAM_SHUFFLE, hash32_numpy, stream_keys, uniforms
from .select import (
    index_dtype,
    keep_mask,
    keep_probabilities,
    shrink_select,
    shrink_select_numpy,
)
from .shuffle import shuffle_kept
from .stats import ema_stream, scatter_ema

__all__ = [
    "STREAM_SELECT", "STREAM_SHUFFLE", "batch_by_size", "ema_stream", "hash32_numpy",
    "index_dtype", "keep_mask", "keep_probabilities", "scatter_ema", "shrink_select",
    "shrink_select_numpy", "shuffle_kept", "stream_keys", "sum_tree", "uniforms",
]
