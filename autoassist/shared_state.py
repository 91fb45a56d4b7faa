"""Shared-memory tables joining the Boss and the Assistant process without copies or waits.

One block holds a small header (counters, Assistant accuracy), two score buffers and the feature
table. The Boss writes instance features the first time it sees an instance, so features survive
an Assistant restart and need no pickling.

Scores are published under a seqlock over two buffers. The sequence count ``SEQ`` is even while
no one writes and odd while the Assistant writes; version ``v`` lives in buffer ``v % 2`` and
``SEQ // 2`` is the newest complete version. Publishing ``v + 1`` makes ``SEQ`` odd, fills buffer
``(v + 1) % 2``, then makes it even again, so the buffer a reader copies is only touched again by
the write of ``v + 2``, which starts at ``SEQ = 2v + 3``: a reader that saw ``SEQ`` at ``s`` before
its copy and at most ``2 * (s // 2) + 2`` after it holds one whole version. The Boss never waits
for a write to finish (the other buffer is complete), and retries only if the Assistant finished
one version and started the next during its copy. This relies on the stores of one process being
seen in order by the other (x86's memory model; untested on weakly ordered CPUs).
"""

from __future__ import annotations

import time
from multiprocessing import shared_memory

import numpy as np

# int64 header slots
VERSION, PROCESSED, TRAINED, PUBLISHED_EPOCH = 0, 1, 2, 3
# float64 header slots (same 8-byte cells, viewed as float64)
ACCURACY, CPU_SECONDS, LOSS_MEAN, TRAIN_SECONDS = 4, 5, 6, 7
# int64: the scores' seqlock count (odd while the Assistant writes a buffer)
SEQ = 8
HEADER_CELLS = 16


class SharedState:
    """Header, double-buffered scores (float32[2, N]) and features (float32[N, d] + have[N])."""

    def __init__(self, num_instances: int, feature_dim: int, name: str | None = None):
        if num_instances <= 0:
            raise ValueError(f"need at least one instance, got num_instances={num_instances}")
        self.num_instances = int(num_instances)
        self.feature_dim = int(feature_dim)
        n, d = self.num_instances, self.feature_dim
        sizes = [HEADER_CELLS * 8, 2 * n * 4, n * d * 4, n]
        self._offsets = np.cumsum([0] + sizes)
        total = int(self._offsets[-1])
        self._owner = name is None
        if name is None:
            self._shm = shared_memory.SharedMemory(create=True, size=total)
        else:
            self._shm = shared_memory.SharedMemory(name=name, create=False)
            if self._shm.size < total:
                raise ValueError(f"shared block {name} is smaller than {total} bytes")
        buf = self._shm.buf
        o = self._offsets
        self.header = np.ndarray((HEADER_CELLS,), np.int64, buf, offset=int(o[0]))
        self.fheader = np.ndarray((HEADER_CELLS,), np.float64, buf, offset=int(o[0]))
        self.scores = np.ndarray((2, n), np.float32, buf, offset=int(o[1]))
        self.features = np.ndarray((n, d), np.float32, buf, offset=int(o[2]))
        self.have = np.ndarray((n,), np.uint8, buf, offset=int(o[3]))
        if self._owner:
            self.header[:] = 0
            self.fheader[ACCURACY] = np.nan
            self.fheader[LOSS_MEAN] = np.nan
            self.scores[:] = 1.0  # before the Assistant speaks, every instance looks informative
            self.have[:] = 0

    @property
    def name(self) -> str:
        return self._shm.name

    # -- Assistant side --------------------------------------------------------------------------
    def publish(self, scores: np.ndarray, epoch: int = -1) -> int:
        """Write the next version of the scores (one writer: the Assistant)."""
        seq = int(self.header[SEQ])
        version = seq // 2
        self.header[SEQ] = seq + 1  # odd: buffer (version + 1) % 2 is being written
        self.scores[(version + 1) % 2, :] = scores
        self.header[PUBLISHED_EPOCH] = epoch
        self.header[VERSION] = version + 1
        self.header[SEQ] = seq + 2
        return version + 1

    # -- Boss side -------------------------------------------------------------------------------
    def snapshot(self, retries: int = 8) -> tuple[np.ndarray, int]:
        """A consistent copy of the newest complete scores and their version (never one mixed
        from two versions: see the module docstring)."""
        for _ in range(retries):
            seq = int(self.header[SEQ])
            version = seq // 2
            copy = self._copy_buffer(version % 2)
            if int(self.header[SEQ]) <= 2 * version + 2:  # version + 2 not begun: buffer intact
                return copy, version
            time.sleep(0.001)
        raise RuntimeError(
            f"could not take a consistent score snapshot in {retries} tries: the Assistant "
            "publishes faster than the scores can be copied"
        )

    def _copy_buffer(self, buffer: int) -> np.ndarray:
        return self.scores[buffer].copy()

    def load_scores(self, scores: np.ndarray, version: int) -> None:
        """Restore a snapshot (resume, no Assistant running): both buffers get it."""
        self.scores[:] = scores
        self.header[VERSION] = version
        self.header[SEQ] = 2 * int(version)

    def close(self) -> None:
        for attr in ("header", "fheader", "scores", "features", "have"):
            if hasattr(self, attr):
                delattr(self, attr)
        try:
            self._shm.close()
        except BufferError:  # a view still alive somewhere; the OS frees it with the process
            return
        if self._owner:
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass
