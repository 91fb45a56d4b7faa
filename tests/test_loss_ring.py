"""The loss ring (``assistant/loss_ring.py``) and the Assistant's use of it: wrap-around, a full
ring's backlog, control messages in their place among the losses, restarts, cleanup.

Nothing here depends on which process is faster: the Assistant is made late on purpose
(SIGSTOP, or not started at all) and every check waits for ``wait_processed``.
"""

import os
import signal

import numpy as np
import pytest

from autoassist.assistant import AssistantProcess, AssistantSettings, Losses, ScoreRequest
from autoassist.assistant.loss_ring import CONTROL, LossRing, default_slots, ring_bytes
from autoassist.assistant.protocol import SharedState


def _losses(ids, value=None, forget=()):
    ids = np.asarray(ids, np.int64)
    losses = (ids.astype(np.float32) / 7 if value is None
              else np.full(len(ids), value, np.float32))
    return Losses(ids, losses, np.asarray(forget, np.int64))


def _same(a: Losses, b: Losses) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# -- the ring alone (one process: the Boss's end and an attached Assistant's end) ----------------
def test_messages_that_wrap_around_the_ring_come_out_whole_and_in_order():
    ring = LossRing(slots=13, frames=3)
    reader = LossRing(name=ring.name)
    try:
        rng = np.random.default_rng(0)
        sent, taken = [], []
        for k in range(60):  # ~4 slots a message over 13 slots: every offset, many wraps
            n, f = int(rng.integers(0, 6)), int(rng.integers(0, 3))
            msg = _losses(rng.integers(0, 1000, n), forget=rng.integers(0, 1000, f))
            while not ring.put_losses(msg):  # full: the reader makes room
                taken.append(reader.take())
            sent.append(msg)
            if k % 5 == 0:  # control frames between them take no slots
                while not ring.put_control():
                    taken.append(reader.take())
        while (item := reader.take()) is not None:
            taken.append(item)
        got = [m for m in taken if isinstance(m, Losses)]
        assert len(got) == len(sent) and all(map(_same, got, sent))
        assert taken.count(CONTROL) == 12
        assert ring.instances_held == 0 and ring.frames_written == ring.frames_taken
    finally:
        reader.close()
        ring.close()


def test_a_full_ring_refuses_a_message_and_writes_nothing():
    ring = LossRing(slots=8, frames=2)
    reader = LossRing(name=ring.name)
    try:
        assert ring.put_losses(_losses(range(5)))
        assert not ring.put_losses(_losses(range(4)))  # 5 + 4 slots > 8
        assert ring.put_control()
        assert not ring.put_control() and not ring.put_losses(_losses([]))  # 2 frames in use
        assert ring.frames_written == 2 and ring.instances_held == 5
        assert _same(reader.take(), _losses(range(5)))
        assert reader.take() == CONTROL and reader.take() is None
        assert ring.fits(_losses(range(8))) and not ring.fits(_losses(range(6), forget=[1, 2, 3]))
    finally:
        reader.close()
        ring.close()


def test_the_ring_says_when_it_is_half_full_for_the_boss_to_wake_the_assistant():
    ring = LossRing(slots=8, frames=4)
    reader = LossRing(name=ring.name)
    try:
        assert not ring.pending and not ring.half_full
        ring.put_losses(_losses(range(3)))
        assert ring.pending and not ring.half_full  # 1 of 4 frames, 3 of 8 slots
        ring.put_losses(_losses([3]))
        assert ring.half_full  # 2 of 4 frames
        reader.take()
        assert not ring.half_full and ring.pending
        ring.put_losses(_losses(range(4, 7)))
        assert ring.half_full  # 4 of 8 slots
    finally:
        reader.close()
        ring.close()


def test_the_ring_is_a_fixed_size_from_the_settings_and_unlinked_by_its_owner():
    assert default_slots(64, 4) == 65536  # the defaults: 768 KiB of /dev/shm
    assert ring_bytes(65536, 64) <= 800 * 1024
    assert default_slots(1, 1) == 4096 and default_slots(10**6, 10**6) == 1 << 20
    # a quarter epoch where that is more (large batches), never past the cap
    assert default_slots(64, 4, 100_000) == 65536
    assert default_slots(64, 4, 1_000_000) == 250_000
    assert default_slots(64, 4, 10**8) == 1 << 20
    ring = LossRing(slots=16, frames=4)
    path = f"/dev/shm/{ring.name.lstrip('/')}"
    if os.path.isdir("/dev/shm"):
        assert os.path.exists(path)
    ring.close()
    assert not os.path.exists(path)
    with pytest.raises(ValueError, match="slots >= 1 and frames >= 1"):
        LossRing(slots=0, frames=4)


# -- the Assistant process on the ring -----------------------------------------------------------
N = 300


class _Assistant:
    """A started ``AssistantProcess`` over its own shared state, for one test."""

    def __init__(self, kind="logistic", queue_size=8, ring_slots=64):
        dim = 0 if kind == "memory" else 1
        self.state = SharedState(N, dim)
        self.state.have[:] = 1
        if dim:
            self.state.features[:] = np.linspace(-1, 1, N, dtype=np.float32)[:, None]
        settings = AssistantSettings(kind=kind, idle_publish=False)  # scores on request only
        self.proc = AssistantProcess(self.state, settings, queue_size=queue_size,
                                     max_restarts=1, ring_slots=ring_slots)
        self.proc.start()

    def pause(self):
        os.kill(self.proc.pid, signal.SIGSTOP)  # late on purpose, whatever it was doing

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.alive:
            self.resume()
        self.proc.stop()
        self.state.close()


def test_a_full_ring_holds_losses_in_the_backlog_and_delivers_them_all_later():
    with _Assistant(ring_slots=32, queue_size=4) as a:
        proc = a.proc
        a.pause()
        for k in range(10):  # 10 messages of 10 losses into a ring of 32 slots
            proc.send(_losses(range(10 * k, 10 * k + 10)))
        assert proc._ring.instances_held == 30  # three messages fit
        assert proc.backlog_instances == 70  # the rest, merged up to the ring's size
        assert [len(m.ids) for m in proc._backlog] == [30, 30, 10]
        assert proc.telemetry()["ring_instances"] == 30
        proc.send(ScoreRequest(4))
        a.resume()
        assert proc.wait_processed(60)
        assert a.state.trained == 100 and proc.backlog_instances == 0 and proc.drops == 0
        assert a.state.published_epoch == 4


def test_a_backlog_merges_only_up_to_the_ring_and_a_larger_message_goes_whole_by_queue():
    with _Assistant(ring_slots=16, queue_size=2) as a:
        proc = a.proc
        a.pause()
        proc.send(_losses(range(40)))  # larger than the ring: through the queue, whole
        assert proc._ring.instances_held == 0 and proc.sent == 1
        for k in range(6):  # then one message of 6 in the ring, the rest held, merged
            proc.send(_losses(range(100 + 6 * k, 106 + 6 * k)))
        assert [len(m.ids) for m in proc._backlog] == [12, 12, 6]  # <= 16 slots each
        a.resume()
        assert proc.wait_processed(60)
        assert a.state.trained == 40 + 36


@pytest.mark.parametrize("queue_size", [8, 1], ids=["in-ring", "held-in-backlog"])
def test_a_score_request_is_handled_after_the_losses_before_it_and_before_those_after(
        queue_size):
    """The memory Assistant scores 0 an instance it saw at the mean loss, 1 one it never saw:
    the published scores show exactly which losses came before the request."""
    with _Assistant(kind="memory", queue_size=queue_size, ring_slots=4096) as a:
        proc = a.proc
        a.pause()
        proc.send(_losses(range(0, 100), value=0.0))
        proc.send(ScoreRequest(5))
        proc.send(_losses(range(100, 200), value=0.0))
        if queue_size == 1:  # one frame: the request and the later losses wait, held
            assert len(proc._backlog) == 2
        a.resume()
        assert proc.wait_processed(60)
        scores, version = a.state.snapshot()
        assert version == 1 and a.state.published_epoch == 5
        assert (scores[:100] == 0).all() and (scores[100:] == 1).all()
        state, current = proc.model_state(timeout=60)  # behind every loss in flight
        assert current and state["memory"]["seen"][:200].all()


def test_a_state_request_answers_after_the_losses_in_the_ring():
    with _Assistant(kind="memory") as a:
        proc = a.proc
        a.pause()
        proc.send(_losses(range(50), value=1.0))
        a.resume()  # it may take the losses before or after the request is sent: both behind
        state, current = a.proc.model_state(timeout=60)
        seen = state["memory"]["seen"]
        assert current and seen[:50].all() and not seen[50:].any()


def test_a_restarted_assistant_takes_the_ring_where_the_dead_one_left_it():
    """Losses in the ring and the control messages behind them outlive the process that
    died before taking them (its queue does not: they are queued again for its successor)."""
    with _Assistant(queue_size=8, ring_slots=256) as a:
        proc = a.proc
        assert proc.wait_processed(60)
        a.pause()
        proc.send(_losses(range(50)))
        proc.send(ScoreRequest(3))
        proc.send(_losses(range(50, 120)))
        assert proc._ring.instances_held == 120 and proc.sent == 3
        old = proc.pid
        os.kill(old, signal.SIGKILL)  # a stopped process dies of SIGKILL too
        proc._proc.join(30)
        with pytest.warns(RuntimeWarning, match="Assistant process died"):
            assert proc.check()
        assert proc.pid != old and proc.restarts == 1
        assert proc.wait_processed(60)
        assert a.state.trained == 120 and a.state.published_epoch == 3
        assert proc._ring.instances_held == 0


def test_stop_unlinks_the_ring_and_a_restart_after_stop_starts_an_empty_one():
    with _Assistant() as a:
        proc = a.proc
        name = proc._ring.name
        proc.send(_losses(range(10)))
        assert proc.wait_processed(60)
        proc.stop()
        assert proc._ring is None and proc.sent == 0
        if os.path.isdir("/dev/shm"):
            assert not os.path.exists(f"/dev/shm/{name.lstrip('/')}")
        proc.start()
        assert proc._ring.name != name and proc._ring.frames_written == 0
        proc.send(_losses(range(10, 30)))
        assert proc.wait_processed(60) and a.state.trained == 30
