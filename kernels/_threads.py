"""Run a Numba call with a given thread count and restore the caller's settings afterwards.

Numba's thread count is thread-local and bounded by NUMBA_NUM_THREADS; we never change it for
longer than one kernel call, so the user's own Numba settings stay theirs.

Numba's first parallel call starts its threading layer. With the OpenMP layer it shares the
process's libgomp with PyTorch, and starting it sets the calling thread's OpenMP thread count to
NUMBA_NUM_THREADS: a user who had called ``torch.set_num_threads(1)`` would silently train with
every core from then on (and with different floating-point sums). So when torch is loaded, its
thread count is put back as well.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numba


@contextmanager
def _torch_threads_kept() -> Iterator[None]:
    torch = sys.modules.get("torch")  # never import it: the kernels work without torch
    before = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        if torch is not None and torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextmanager
def numba_threads(num_threads: int | None) -> Iterator[int]:
    with _torch_threads_kept():
        if num_threads is None:
            yield numba.get_num_threads()
            return
        limit = numba.config.NUMBA_NUM_THREADS
        if not 1 <= int(num_threads) <= limit:
            raise ValueError(
                f"num_threads={num_threads}: Numba allows 1..{limit} here "
                "(raise NUMBA_NUM_THREADS before starting Python for more)"
            )
        before = numba.get_num_threads()
        numba.set_num_threads(int(num_threads))
        try:
            yield int(num_threads)
        finally:
            numba.set_num_threads(before)
