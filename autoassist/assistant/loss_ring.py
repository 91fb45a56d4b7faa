"""The loss ring: ``Losses`` messages from the Boss to the Assistant through shared memory.

A pickled queue costs the Boss on every message: ``multiprocessing.Queue`` pickles and writes
in a feeder thread that holds the GIL meanwhile, stalling the Boss's next torch call (issue 29:
~0.8 ms per message). Here the Boss copies ids and losses into fixed arrays in ``/dev/shm`` and
moves a counter; the Assistant copies them out. No pickling, no thread, no system call beyond
the wake-up (``protocol.py`` documents the whole exchange, ordering included).

One producer (the Boss) and one consumer (the Assistant). Two rings share the block: data slots
(an int64 id and a float32 loss each) and frames (one per message: where its data ends and how
many of its leading slots are ``forget`` ids; -1 marks a control frame, whose message travels
through the queue). Four int64 counters only ever grow: the Boss writes ``data_head`` and
``frame_head``, the Assistant ``data_tail`` and ``frame_tail``; a position is its counter modulo
the ring's size. The Boss fills the slots and the frame first and moves ``frame_head`` last, and
the Assistant copies a frame's slots out before moving the tails, which relies on each process's
stores being seen in order by the other (x86's memory model, as ``SharedState``'s seqlock).
"""

from __future__ import annotations

import contextlib
from multiprocessing import shared_memory

import numpy as np

from .protocol import SHM_DIR, Losses, check_room

# int64 header cells
_DATA_HEAD, _FRAME_HEAD, _DATA_TAIL, _FRAME_TAIL, _SLOTS, _FRAMES = range(6)
_HEADER_CELLS = 8
SLOT_BYTES = 12  # an int64 id and a float32 loss
FRAME_BYTES = 16  # its data's end and its forget count
CONTROL = -1  # a frame's forget count when its message is the queue's next one

# default size: queue_size messages of send_every batches of up to this many instances
_INSTANCES_PER_BATCH = 256
MIN_SLOTS, MAX_SLOTS = 1 << 12, 1 << 20


def default_slots(queue_size: int, send_every: int, num_instances: int = 0) -> int:
    """The ring's data slots for the settings: as many losses as ``queue_size`` messages of
    ``send_every`` batches of 256 instances, or a quarter of an epoch's (``num_instances / 4``)
    where that is more, within [4096, 2**20]: 48 KiB to 12 MiB of ``/dev/shm``, 768 KiB at the
    defaults up to 262k instances, at most 3 bytes per instance above that. The quarter epoch
    is for large batches (8192 instances x 4 per message fill the 256-based ring with two
    messages; a full ring holds the next ones in the Boss's backlog). A message larger than
    the whole ring goes through the queue instead (pickled).

    Args:
        queue_size: the inbox's bound in messages (also the ring's frames).
        send_every: batches per ``Losses`` message.
        num_instances: the instances the Assistant scores (0: not considered).

    Returns:
        The number of slots.
    """
    wanted = max(int(queue_size) * int(send_every) * _INSTANCES_PER_BATCH, int(num_instances) // 4)
    return int(min(max(wanted, MIN_SLOTS), MAX_SLOTS))


def ring_bytes(slots: int, frames: int) -> int:
    """Bytes of ``/dev/shm`` a ring of ``slots`` data slots and ``frames`` frames takes."""
    return _HEADER_CELLS * 8 + int(slots) * SLOT_BYTES + int(frames) * FRAME_BYTES


class LossRing:
    """A single-producer, single-consumer ring of ``Losses`` messages in shared memory.

    Args:
        slots: data slots (ids, losses and forget ids of the messages in flight).
        frames: messages in flight at most.
        name: attach to the ring another process made (the Assistant; sizes are read from the
            block), else make one (the Boss's handle, which owns it and unlinks it on
            ``close``).

    Raises:
        ValueError: ``slots`` or ``frames`` < 1 for a new ring.
        SharedMemoryTooSmall: /dev/shm lacks the room (the message says how much is needed).
    """

    def __init__(self, slots: int = 0, frames: int = 0, name: str | None = None):
        self._owner = name is None
        if self._owner:
            if slots < 1 or frames < 1:
                raise ValueError(f"a loss ring needs slots >= 1 and frames >= 1, got "
                                 f"slots={slots}, frames={frames}")
            total = ring_bytes(slots, frames)
            check_room(SHM_DIR, total, f"a loss ring of {slots} slots",
                       "give the container more shared memory (docker run --shm-size=1g) or "
                       "lower queue_size")
            self._shm = shared_memory.SharedMemory(create=True, size=total)
        else:
            self._shm = shared_memory.SharedMemory(name=name, create=False)
        buf = self._shm.buf
        self._h = np.ndarray((_HEADER_CELLS,), np.int64, buf)
        if self._owner:
            self._h[:] = 0
            self._h[_SLOTS], self._h[_FRAMES] = slots, frames
        self.slots, self.frames = int(self._h[_SLOTS]), int(self._h[_FRAMES])
        s, f = self.slots, self.frames
        if self._shm.size < ring_bytes(s, f):
            raise ValueError(f"shared block {name} is smaller than a ring of {s} slots")
        offset = _HEADER_CELLS * 8
        self._ids = np.ndarray((s,), np.int64, buf, offset=offset)
        self._frame_end = np.ndarray((f,), np.int64, buf, offset=offset + 8 * s)
        self._frame_forget = np.ndarray((f,), np.int64, buf, offset=offset + 8 * s + 8 * f)
        self._losses = np.ndarray((s,), np.float32, buf, offset=offset + 8 * s + 16 * f)

    @property
    def name(self) -> str:
        return self._shm.name

    @property
    def frames_written(self) -> int:
        """Messages the Boss has put in the ring since it was made (the frame head)."""
        return int(self._h[_FRAME_HEAD])

    @property
    def frames_taken(self) -> int:
        """Messages the Assistant has taken out (the frame tail)."""
        return int(self._h[_FRAME_TAIL])

    @property
    def pending(self) -> bool:
        """Whether a frame waits to be taken."""
        return int(self._h[_FRAME_HEAD]) > int(self._h[_FRAME_TAIL])

    @property
    def half_full(self) -> bool:
        """Whether half the frames or half the slots are in flight (the Boss then wakes the
        Assistant rather than wait for its timer)."""
        return (2 * (int(self._h[_FRAME_HEAD]) - int(self._h[_FRAME_TAIL])) >= self.frames
                or 2 * self.instances_held >= self.slots)

    @property
    def instances_held(self) -> int:
        """Slots written and not yet taken (losses and forget ids in flight)."""
        return int(self._h[_DATA_HEAD]) - int(self._h[_DATA_TAIL])

    # -- Boss side -------------------------------------------------------------------------------
    def fits(self, message: Losses) -> bool:
        """Whether ``message`` fits the ring at all (when empty)."""
        return len(message.ids) + len(message.forget) <= self.slots

    def put_losses(self, message: Losses) -> bool:
        """Copy ``message`` in as one frame; False (nothing written) when there is no room."""
        forget, ids = message.forget, message.ids
        size = len(forget) + len(ids)
        head = int(self._h[_DATA_HEAD])
        if not self._has_frame() or head + size - int(self._h[_DATA_TAIL]) > self.slots:
            return False
        self._write(head, forget, None)
        self._write(head + len(forget), ids, message.losses)
        self._publish(head + size, len(forget))
        return True

    def put_control(self) -> bool:
        """A control frame (its message is the queue's next one); False when no frame is
        free."""
        if not self._has_frame():
            return False
        self._publish(int(self._h[_DATA_HEAD]), CONTROL)
        return True

    def has_frame(self) -> bool:
        """Whether a frame is free (a control message can be sent now)."""
        return self._has_frame()

    def _has_frame(self) -> bool:
        return int(self._h[_FRAME_HEAD]) - int(self._h[_FRAME_TAIL]) < self.frames

    def _write(self, pos: int, ids: np.ndarray, losses: np.ndarray | None) -> None:
        n = len(ids)
        start = pos % self.slots
        first = min(n, self.slots - start)  # up to the ring's end, the rest from its start
        self._ids[start:start + first] = ids[:first]
        self._ids[:n - first] = ids[first:]
        if losses is not None:
            self._losses[start:start + first] = losses[:first]
            self._losses[:n - first] = losses[first:]

    def _publish(self, end: int, forget: int) -> None:
        k = int(self._h[_FRAME_HEAD])
        self._frame_end[k % self.frames] = end
        self._frame_forget[k % self.frames] = forget
        self._h[_DATA_HEAD] = end
        self._h[_FRAME_HEAD] = k + 1  # last: the frame is the Assistant's from here on

    # -- Assistant side --------------------------------------------------------------------------
    def take(self) -> Losses | int | None:
        """The oldest frame, taken out: a ``Losses`` (copies), ``CONTROL`` (the queue holds its
        message), or None when the ring is empty. Taken before it is handled, so a message
        that kills the Assistant is not handed to its successor again."""
        k = int(self._h[_FRAME_TAIL])
        if k == int(self._h[_FRAME_HEAD]):
            return None
        slot = k % self.frames
        end, forget = int(self._frame_end[slot]), int(self._frame_forget[slot])
        start = int(self._h[_DATA_TAIL])
        if forget == CONTROL:
            item: Losses | int = CONTROL
        else:
            ids = self._read(self._ids, start, end - start)
            losses = self._read(self._losses, start + forget, end - start - forget)
            item = Losses(ids[forget:], losses, ids[:forget])
        self._h[_DATA_TAIL] = end
        self._h[_FRAME_TAIL] = k + 1
        return item

    def _read(self, ring: np.ndarray, pos: int, n: int) -> np.ndarray:
        start = pos % self.slots
        first = min(n, self.slots - start)
        if first == n:
            return ring[start:start + n].copy()
        return np.concatenate([ring[start:], ring[:n - first]])

    def close(self) -> None:
        """Unmap the ring; its owner also unlinks it (what is in flight is lost)."""
        for attr in ("_h", "_ids", "_frame_end", "_frame_forget", "_losses"):
            if hasattr(self, attr):
                delattr(self, attr)
        if self._owner:  # the name goes even if a view keeps the mapping alive a while
            with contextlib.suppress(FileNotFoundError):
                self._shm.unlink()
        with contextlib.suppress(BufferError):  # a view still alive: freed with the process
            self._shm.close()
