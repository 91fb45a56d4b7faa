"""The Boss <-> Assistant protocol, written down once: messages, settings, shared memory.

Two processes; what goes between them:

the loss ring (Boss -> Assistant, shared memory, ``loss_ring.py``) and the inbox (a queue)
    ``Losses(ids, losses, forget)``  per-instance losses the Boss trained on, in report order;
                                     ``forget``: instances whose data changed (replay slots),
                                     whose remembered loss is cleared before these losses count
    ``ScoreRequest(epoch)``          score all N instances and publish (sent at each epoch's end)
    ``StateRequest(token)``          send the learner's state back (checkpoints)
    ``Stop()``                       leave the loop
    Every message takes one *frame* of the ring, in the order the Boss sends them. A ``Losses``
    frame carries the message itself: its ``forget`` ids and then its ids as int64 slots, its
    losses as float32 slots (12 bytes a slot), copied in by the Boss and out by the Assistant:
    no pickling and no feeder thread, whose GIL-holding writes stalled the Boss's next torch
    call (issue 29). Any other message, and a ``Losses`` larger than the whole ring, goes
    through the inbox queue (pickled) behind a *control frame*, which the Boss writes only after
    the message is queued. The Assistant takes frames strictly in order and, at a control
    frame, the queue's next message; so a message is handled after every message sent before
    it and before every one sent after it: a ``ScoreRequest`` scores with every loss reported
    before it and none reported after it, and a ``StateRequest``'s answer holds every loss
    reported before it. (A control frame is the ring's write position at the time its message
    was sent.) The ring and the queue hold ``queue_size`` frames; the ring's data slots
    (``loss_ring.default_slots``: ``queue_size`` messages of ``send_every`` batches of 256
    instances, or a quarter epoch's losses where that is more, within 4096 to 2**20; 768 KiB
    of /dev/shm at the defaults up to 262k instances, at most 3 bytes per instance above).
    The Boss never blocks on a full ring (except with ``sync=True``, where it
    waits for room): ``process.AssistantProcess`` holds what it cannot take in a bounded backlog
    and merges consecutive ``Losses`` (up to the ring's size).

the doorbell (Boss -> Assistant, a semaphore)
    released for every control frame, when ``Losses`` bring the ring to half full, and when the
    Boss waits for the Assistant (``wait_processed``). Otherwise the Assistant's timer fetches
    the losses: it sleeps on the doorbell only while the ring is empty, 0.02 s at a time while
    losses come and 0.2 s once none came for 0.2 s (then it is idle: it checks that the Boss
    lives and does its idle work). No busy wait, and no wake-up per message: waking the
    Assistant for each one preempted the Boss on a busy machine (~0.4 ms a release measured on
    two loaded cores). The doorbell only hurries the Assistant: nothing depends on it.

``outbox`` (Assistant -> Boss, unbounded)
    ``StateReply(token, state)``     the answer to the ``StateRequest`` with the same token

``SharedState`` (one shared-memory block plus a mapped feature file; no copies, no waits)
    written by the Boss:      ``features`` / ``have`` (an instance's row, the first time the Boss
                              sees it: rows survive an Assistant restart)
    written by the Assistant: the scores (``publish``), and the cells ``processed``, ``trained``,
                              ``accuracy``, ``loss_mean``, ``cpu_seconds``, ``train_seconds``
    read by the Boss:         ``snapshot()`` (the newest complete scores), the cells (telemetry,
                              the adaptive floor)
    ``processed`` counts handled frames since the ring was made: the ring's frames written (the
    Boss's ``sent``) minus it is what is in flight. The Boss writes the Assistant's cells only
    while no Assistant runs (start, resume).

The ring lives as long as the Boss's handle runs an Assistant: made at its first start, kept
across restarts, unlinked at ``stop`` (and at resume, with the backlog: that timeline's
messages in flight end there). The Assistant takes a frame before handling it, so a message
that killed it is not handed to its successor; a successor takes the ring from there (losses
in flight survive a death), and the Boss queues again, for its new queue, the control messages
of the frames not yet taken (the dead process's queue is gone). At a restart ``processed`` is
set to the frames taken.

Scores are published under a seqlock over two buffers. The sequence count is even while no one
writes and odd while the Assistant writes; version ``v`` lives in buffer ``v % 2`` and
``seq // 2`` is the newest complete version. Publishing ``v + 1`` makes the count odd, fills
buffer ``(v + 1) % 2``, then makes it even again, so the buffer a reader copies is only touched
again by the write of ``v + 2``, which starts at ``seq = 2v + 3``: a reader that saw the count at
``s`` before its copy and at most ``2 * (s // 2) + 2`` after it holds one whole version. The Boss
never waits for a write to finish (the other buffer is complete), and retries only if the
Assistant finished one version and started the next during its copy. This relies on the stores
of one process being seen in order by the other (x86's memory model; untested on weakly ordered
CPUs).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any, NamedTuple

import numpy as np

from autoassist.errors import UsageError


# -- messages ------------------------------------------------------------------------------------
class Losses(NamedTuple):
    ids: np.ndarray  # int64 instance ids, in the order the Boss reported them
    losses: np.ndarray  # float32, one per id
    forget: np.ndarray  # int64 ids whose remembered loss is cleared first


class ScoreRequest(NamedTuple):
    epoch: int  # the epoch that just ended (recorded with the published scores)


class StateRequest(NamedTuple):
    token: int


class StateReply(NamedTuple):
    token: int
    state: dict[str, Any]  # learner state, running mean loss, accuracy, loss memory


class Stop(NamedTuple):
    pass


Message = Losses | ScoreRequest | StateRequest | Stop


def merge_losses(first: Losses, second: Losses) -> Losses | None:
    """One message for two consecutive ones, or None when they must stay apart (``second``
    forgets an instance ``first`` reports: the forget would overtake that loss)."""
    if len(second.forget) and np.isin(second.forget, first.ids).any():
        return None
    return Losses(np.concatenate([first.ids, second.ids]),
                  np.concatenate([first.losses, second.losses]),
                  np.concatenate([first.forget, second.forget]))


# -- settings ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AssistantSettings:
    """What the Assistant process needs of the ``ShrinkConfig`` (typed, picklable)."""

    kind: str = "logistic"
    lr: float = 0.1
    seed: int = 0
    label_ema: float = 0.01
    threads: int = 1
    loss_history: bool = True
    idle_publish: bool = True  # publish fresh scores on its own when idle (not in sync mode)
    keep: float = 1.0  # the proportional Assistant's mean keep probability ...
    floor: float = 0.0  # ... and the Boss's floor, which its scores must respect

    @classmethod
    def from_config(cls, config) -> AssistantSettings:
        return cls(kind=config.assistant, lr=float(config.assistant_lr), seed=int(config.seed),
                   label_ema=float(config.label_ema), threads=int(config.assistant_threads),
                   loss_history=bool(config.loss_history), idle_publish=not config.sync,
                   keep=1.0 if config.keep is None else float(config.keep),
                   floor=float(config.floor))

    def model_options(self) -> dict:
        """The keyword arguments ``make_assistant_model`` passes to this kind's model."""
        return {"keep": self.keep, "floor": self.floor} if self.kind == "proportional" else {}


# -- shared memory -------------------------------------------------------------------------------
# 8-byte header cells: int64 counters, then float64 values (the same cells viewed as float64)
_VERSION, _PROCESSED, _TRAINED, _PUBLISHED_EPOCH = 0, 1, 2, 3
_ACCURACY, _CPU_SECONDS, _LOSS_MEAN, _TRAIN_SECONDS = 4, 5, 6, 7
_SEQ, _BAD_SCORES = 8, 9
_HEADER_CELLS = 16
_INT, _FLOAT = "_header", "_fheader"  # the two views of the header


def _cell(view: str, index: int, cast: type, doc: str) -> property:
    """A named header cell: ``view`` is the int64 or float64 view of the same 8-byte cells."""
    def get(self):
        return cast(getattr(self, view)[index])

    def set(self, value) -> None:
        getattr(self, view)[index] = value

    return property(get, set, doc=doc)


SHM_DIR = "/dev/shm"  # where Linux keeps POSIX shared memory (Docker's default: 64 MB)
SHM_BYTES_PER_INSTANCE = 9  # two float32 score buffers + the "have" flag
FEATURE_DIR_ENV = "AUTOASSIST_FEATURE_DIR"


class SharedMemoryTooSmall(UsageError, MemoryError):
    """Not enough room in /dev/shm (or the feature directory) for this data set's tables."""


def default_feature_dir() -> str:
    """Where the feature table's file goes: $AUTOASSIST_FEATURE_DIR, else the temp directory."""
    return os.environ.get(FEATURE_DIR_ENV) or tempfile.gettempdir()


def check_room(directory: str, need: int, what: str, fixes: str) -> None:
    """Refuse to make a table that would not fit ``directory`` (a full /dev/shm ends the
    process with SIGBUS at the first write, far from the cause).

    Raises:
        SharedMemoryTooSmall: less than ``need`` bytes free; the message names ``what`` and
            the ``fixes``.
    """
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return  # no such mount here (not Linux): nothing to check
    if free < need:
        raise SharedMemoryTooSmall(
            f"autoassist needs {need / 2**20:.1f} MB in {directory} for {what} but only "
            f"{free / 2**20:.1f} MB are free; {fixes}")


class SharedState:
    """Header cells and double-buffered scores (float32[2, N]) and ``have[N]`` in shared memory;
    the feature table (float32[N, d]) in a memory-mapped file.

    Only what both processes touch every epoch lives in ``/dev/shm`` (9 bytes per instance), so
    a container's small ``/dev/shm`` holds millions of instances; the features (``4 d`` bytes per
    instance) are a file in ``feature_dir``, in the page cache like any mapped file.

    Args:
        num_instances: N, the data set's size.
        feature_dim: d, the width of each instance's feature row.
        name: attach to the block another process made (the Assistant), else make one (the Boss,
            which owns it and unlinks it and the feature file on ``close``).
        feature_dir: the feature file's folder (default ``default_feature_dir()``); an attaching
            process must pass the owner's.

    Raises:
        ValueError: N < 1, or the named block is smaller than this layout.
        SharedMemoryTooSmall: /dev/shm or the feature folder lacks the room (the message says
            how much is needed and the fixes).
    """

    def __init__(self, num_instances: int, feature_dim: int, name: str | None = None,
                 feature_dir: str | None = None):
        if num_instances <= 0:
            raise ValueError(f"need at least one instance, got num_instances={num_instances}")
        self.num_instances = int(num_instances)
        self.feature_dim = int(feature_dim)
        n, d = self.num_instances, self.feature_dim
        sizes = [_HEADER_CELLS * 8, 2 * n * 4, n]
        offsets = np.cumsum([0] + sizes)
        total = int(offsets[-1])
        self.feature_dir = str(feature_dir or default_feature_dir())
        self._owner = name is None
        if name is None:
            check_room(SHM_DIR, total, f"the scores of {n} instances",
                       "give the container more shared memory (docker run --shm-size=1g) or "
                       "train on a subset")
            if d:
                check_room(self.feature_dir, n * d * 4, f"a {n} x {d} feature table",
                           f"point feature_dir (or ${FEATURE_DIR_ENV}) at a folder with room, "
                           "or lower feature_dim")
            self._shm = shared_memory.SharedMemory(create=True, size=total)
        else:
            self._shm = shared_memory.SharedMemory(name=name, create=False)
            if self._shm.size < total:
                raise ValueError(f"shared block {name} is smaller than {total} bytes")
        buf = self._shm.buf
        self._header = np.ndarray((_HEADER_CELLS,), np.int64, buf, offset=int(offsets[0]))
        self._fheader = np.ndarray((_HEADER_CELLS,), np.float64, buf, offset=int(offsets[0]))
        self.scores = np.ndarray((2, n), np.float32, buf, offset=int(offsets[1]))
        self.have = np.ndarray((n,), np.uint8, buf, offset=int(offsets[2]))
        if d == 0:  # an Assistant that reads no features (memory): no table, no file
            self.features = np.zeros((n, 0), np.float32)
        else:
            self.feature_path = os.path.join(self.feature_dir,
                                             f"autoassist-{self._shm.name.lstrip('/')}.features")
            if self._owner:
                with open(self.feature_path, "wb") as f:
                    f.truncate(n * d * 4)  # sparse: pages are made as rows are written
            self.features = np.memmap(self.feature_path, np.float32, "r+", shape=(n, d))
        if self._owner:
            self._header[:] = 0
            self._fheader[_ACCURACY] = np.nan
            self._fheader[_LOSS_MEAN] = np.nan
            self.scores[:] = 1.0  # before the Assistant speaks, every instance looks informative
            self.have[:] = 0

    # the named cells (int64 counters, float64 values)
    version = _cell(_INT, _VERSION, int, "the newest complete score version (0: none yet)")
    processed = _cell(_INT, _PROCESSED, int, "frames handled since the loss ring was made")
    trained = _cell(_INT, _TRAINED, int, "instances the Assistant trained on (with features)")
    published_epoch = _cell(_INT, _PUBLISHED_EPOCH, int, "epoch of the last ScoreRequest")
    seq = _cell(_INT, _SEQ, int, "the scores' seqlock count (odd while the Assistant writes)")
    bad_scores = _cell(_INT, _BAD_SCORES, int, "scorings withheld because the model's output "
                       "was not finite (the Assistant then starts its learner afresh)")
    accuracy = _cell(_FLOAT, _ACCURACY, float, "the Assistant's running accuracy")
    loss_mean = _cell(_FLOAT, _LOSS_MEAN, float, "the running mean loss: 'informative' above")
    cpu_seconds = _cell(_FLOAT, _CPU_SECONDS, float, "the Assistant process's CPU time")
    train_seconds = _cell(_FLOAT, _TRAIN_SECONDS, float, "its time training and scoring")

    @property
    def name(self) -> str:
        return self._shm.name

    # -- Assistant side --------------------------------------------------------------------------
    def publish(self, scores: np.ndarray, epoch: int = -1) -> int:
        """Write the next version of the scores (one writer: the Assistant); returns it."""
        seq = self.seq
        version = seq // 2
        self.seq = seq + 1  # odd: buffer (version + 1) % 2 is being written
        self.scores[(version + 1) % 2, :] = scores
        self.published_epoch = epoch
        self.version = version + 1
        self.seq = seq + 2
        return version + 1

    # -- Boss side -------------------------------------------------------------------------------
    def snapshot(self, retries: int = 8) -> tuple[np.ndarray, int]:
        """A consistent copy of the newest complete scores and their version.

        Raises:
            RuntimeError: no consistent copy in ``retries`` tries (the Assistant publishes
                faster than the scores can be copied).
        """
        for _ in range(retries):
            seq = self.seq
            version = seq // 2
            copy = self._copy_buffer(version % 2)
            if self.seq <= 2 * version + 2:  # version + 2 not begun: the buffer is intact
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
        self.version = int(version)
        self.seq = 2 * int(version)

    def close(self) -> None:
        for attr in ("_header", "_fheader", "scores", "features", "have"):
            if hasattr(self, attr):
                delattr(self, attr)
        if self._owner and hasattr(self, "feature_path"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.feature_path)
        try:
            self._shm.close()
        except BufferError:  # a view still alive somewhere; the OS frees it with the process
            return
        if self._owner:
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass
