"""Run a Numba call with a given thread count and restore the caller's afterwards.

Numba's thread count is thread-local and bounded by NUMBA_NUM_THREADS; we never change it for
longer than one kernel call, so the user's own Numba settings stay theirs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numba


@contextmanager
def numba_threads(num_threads: int | None) -> Iterator[int]:
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
