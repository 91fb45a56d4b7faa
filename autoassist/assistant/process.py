"""The Boss's handle on the Assistant process: start, send, restart, stop, state.

The Boss never blocks on the Assistant. ``Losses`` go through the shared-memory loss ring
(``loss_ring.py``: a copy, no pickling, no feeder thread), the rare control messages through a
bounded queue, each with a frame in the ring that keeps its place among the losses
(``protocol.py``). When the ring is full (the Assistant is still starting, or a fast GPU Boss
outruns it for a while) messages wait in a backlog, where consecutive ``Losses`` merge into one
(up to the ring's size), and go over as soon as the ring has room. Only a backlog beyond a memory
bound loses its oldest losses, and those are counted (``queue_drops``); score and state requests
are never dropped. (The AutoAssist paper dropped messages at once; on a GPU that threw away the
first epochs' losses while the Assistant was still importing its modules.)

A dead Assistant is restarted (at most ``max_restarts`` times) only by ``check()``, which the
engine calls where an epoch is planned or ends, never on the report path; meanwhile its messages
wait in the backlog. What it left in the ring survives it: its successor takes the ring from
where it stopped, and the control messages not yet taken are queued again for it.

The process is started with the *spawn* method: Numba's OpenMP layer and torch's threads do not
survive ``fork`` safely. Spawn would also re-run the caller's main module in the child; the
Assistant's entry point lives in this package, so ``_main_module_hidden`` keeps the child from
doing that.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
import warnings
import weakref
from collections import deque
from typing import Any

from .loss_ring import LossRing, default_slots
from .protocol import (
    AssistantSettings,
    Losses,
    Message,
    SharedState,
    StateReply,
    StateRequest,
    Stop,
    merge_losses,
)
from .worker import run_assistant

_BACKLOG_CAP = 1 << 22  # at most ~4M held losses (~50 MB), whatever the data set's size
_START_LOCK = threading.Lock()


@contextlib.contextmanager
def _main_module_hidden():
    """Start a spawned child without it re-running the caller's ``__main__``.

    Spawn makes the child import the parent's main module (by its ``__spec__`` name, else its
    ``__file__``) unless the module has neither, as in an interactive session. The Assistant needs
    nothing from it, and importing it costs the child a second torch import (~1.5 s of CPU taken
    from the Boss on a small machine) and re-runs any unguarded script top to bottom. Both
    attributes are hidden only while ``Process.start()`` pickles the child's preparation data,
    and restored at once.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    with _START_LOCK:  # read under the lock: another thread may be hiding them right now
        saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if k in main.__dict__}
        try:
            main.__spec__ = None
            main.__dict__.pop("__file__", None)
            yield
        finally:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


_LIVE: weakref.WeakSet[AssistantProcess] = weakref.WeakSet()
_AT_EXIT_REGISTERED = False


def _stop_at_exit(handle: AssistantProcess) -> None:
    """Stop still-running Assistants when the interpreter exits, before multiprocessing's own
    exit hook (registered earlier, so run later) joins its children without a deadline: a
    frozen Assistant would hang the exit there."""
    global _AT_EXIT_REGISTERED
    _LIVE.add(handle)
    if not _AT_EXIT_REGISTERED:
        _AT_EXIT_REGISTERED = True
        atexit.register(_stop_all)


def _stop_all() -> None:
    for handle in list(_LIVE):
        with contextlib.suppress(Exception):
            handle.stop(timeout=1.0)


class AssistantProcess:
    """The Boss's handle on the Assistant process.

    Args:
        state: the shared block (the Boss's, which owns it).
        settings: what the Assistant runs with.
        queue_size: messages in flight at most (the ring's frames and the control queue's
            bound; more wait in the backlog).
        max_restarts: restarts of a dead process before running on without one.
        ring_slots: the loss ring's data slots (default ``loss_ring.default_slots(queue_size,
            1)``; the engine sizes it for its ``send_every``).
    """

    state_timeout = 30.0  # seconds model_state() waits for the process to answer

    def __init__(self, state: SharedState, settings: AssistantSettings, queue_size: int,
                 max_restarts: int, ring_slots: int | None = None):
        self.state = state
        self.settings = settings
        self.queue_size = int(queue_size)
        self.max_restarts = int(max_restarts)
        self.ring_slots = int(ring_slots or default_slots(queue_size, 1))
        self.restarts = 0
        self.drops = 0
        self._ring: LossRing | None = None  # made at start, kept across restarts, gone at stop
        self._doorbell = None  # a semaphore: one release per frame wakes the Assistant
        # control messages in the ring's frames, (frame, message), until the Assistant has
        # handled them: a restarted Assistant gets those it had not taken yet
        self._controls: deque[tuple[int, Message]] = deque()
        self._backlog: deque[Message] = deque()  # messages the full ring could not take yet
        self._backlog_instances = 0
        self.dropped_instances = 0  # losses lost to the backlog's bound
        self.backlog_limit = min(max(4 * state.num_instances, 65536), _BACKLOG_CAP)
        self._ctx = mp.get_context("spawn")
        self._proc = None
        self._inbox = None
        self._outbox = None
        self._last_model_state: dict | None = None
        self._token = 0
        self.cpu_seconds_before_restart = 0.0
        self._bad_scores_seen = 0
        self.failed = False

    # -- life cycle -----------------------------------------------------------------------------
    def start(self, model_state: dict | None = None, *, replace_state: bool = False) -> None:
        """Start the process.

        Args:
            model_state: the learner state to start from (a ``model_state()`` answer).
            replace_state: resume: take ``model_state`` even when None (a fresh learner), and
                show its running mean loss and accuracy in the shared cells at once.
        """
        if model_state is not None or replace_state:
            self._last_model_state = model_state
        if replace_state:  # resume: this timeline's held messages and give-up end here
            self._backlog.clear()
            self._backlog_instances = 0
            self.failed = False
            self._close_ring()
            if model_state is not None:
                self.state.loss_mean = model_state["loss_mean"]
                self.state.accuracy = model_state["accuracy"]
        if self.state.seq % 2:  # a publish cut short by the last process's death
            self.state.seq = 2 * self.state.version  # the version cell says what completed
        self.state.cpu_seconds = 0.0  # the new process's own (the old one's is counted)
        if self._ring is None:
            self._ring = LossRing(self.ring_slots, self.queue_size)
            self._controls.clear()
        self._inbox = self._ctx.Queue(maxsize=self.queue_size)
        self._outbox = self._ctx.Queue()
        self._doorbell = self._ctx.Semaphore(0)
        # a restart: the ring's frames not taken yet are the successor's, and so are the
        # control messages they stand for (the dead process's queue went with it)
        taken = self._ring.frames_taken
        self.state.processed = taken  # a frame taken by the dead process counts as handled
        self._controls = deque((k, m) for k, m in self._controls if k >= taken)
        for _, message in self._controls:
            self._inbox.put_nowait(message)  # at most queue_size: one per frame in flight
        self._proc = self._ctx.Process(
            target=run_assistant,
            args=(self.state.name, self.state.num_instances, self.state.feature_dim,
                  self.state.feature_dir, self.settings, self._last_model_state,
                  self._ring.name, self._inbox, self._doorbell, self._outbox),
            name="autoassist-assistant",
            daemon=True,
        )
        with _main_module_hidden():
            self._proc.start()
        _stop_at_exit(self)

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def check(self) -> bool:
        """Restart a dead Assistant (bounded); returns whether an Assistant is running.

        Also says, once per occurrence, that the Assistant withheld a non-finite scoring."""
        bad = self.state.bad_scores
        if bad > self._bad_scores_seen:
            self._bad_scores_seen = bad
            warnings.warn(
                f"autoassist: the Assistant's model gave non-finite scores ({bad} time(s) so "
                "far); they were not published, its learner was started afresh, and selection "
                "uses the last good scores meanwhile. Check the features (NaN/inf or huge "
                "values) or lower assistant_lr.",
                RuntimeWarning, stacklevel=3,
            )
        if self.alive:
            return True
        if self._proc is None or self.failed:
            return False
        code = self._proc.exitcode
        self.cpu_seconds_before_restart += self.state.cpu_seconds
        if self.restarts >= self.max_restarts:
            self.failed = True
            warnings.warn(
                f"autoassist: the Assistant process died (exit code {code}) and was restarted "
                f"{self.restarts} times already; training continues on the last published scores "
                "without an Assistant. Raise max_restarts to retry more.",
                RuntimeWarning, stacklevel=3,
            )
            return False
        self.restarts += 1
        warnings.warn(
            f"autoassist: the Assistant process died (exit code {code}); training continues on "
            f"the last scores and the Assistant is restarted "
            f"({self.restarts}/{self.max_restarts}).",
            RuntimeWarning, stacklevel=3,
        )
        self._discard_queues()
        self.start()
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the process: a ``Stop`` message, then (after ``timeout`` seconds) SIGTERM, then
        SIGKILL. A frozen process (SIGSTOPped, stuck in a library call) is killed, never left
        behind; the whole stop takes at most about ``timeout + 2`` seconds."""
        proc = self._proc
        if proc is None:
            return
        if proc.is_alive():
            with contextlib.suppress(ValueError, OSError):
                # after the messages in flight; no free frame: the process is not reading
                self._post(Stop())
            proc.join(timeout)
            if proc.is_alive():
                proc.terminate()
                with contextlib.suppress(OSError):  # a stopped process takes SIGTERM only
                    os.kill(proc.pid, signal.SIGCONT)  # once continued
                proc.join(1.0)
            if proc.is_alive():
                proc.kill()  # SIGKILL ends even a stopped process
                proc.join(1.0)
        self._discard_queues()
        self._close_ring()
        self._proc = None
        _LIVE.discard(self)

    def _close_ring(self) -> None:
        """Unlink the ring (owned here, like ``SharedState`` by the engine); in flight is lost."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        self._controls.clear()

    def _discard_queues(self) -> None:
        for q in (self._inbox, self._outbox):
            if q is not None:
                q.cancel_join_thread()  # never hang on exit flushing messages nobody reads
                q.close()

    # -- messages -------------------------------------------------------------------------------
    @property
    def ring_name(self) -> str | None:
        """The loss ring's shared-memory name (None while no Assistant runs)."""
        return None if self._ring is None else self._ring.name

    @property
    def sent(self) -> int:
        """Messages put in the ring since it was made (``state.processed`` counts the same
        ones handled)."""
        return 0 if self._ring is None else self._ring.frames_written

    def send(self, message: Message, block: bool = False) -> None:
        """Send a message after any held ones. ``block=False`` never waits: what the full ring
        cannot take stays in the backlog, and so does everything while the process is dead
        (until ``check()`` restarts it). Nothing is sent once the Assistant is given up."""
        if self.failed:
            return
        if not self._backlog and self.alive and self._post(message):
            return  # the usual case: straight into the ring
        self._hold(message)
        self.deliver(block=block)

    def deliver(self, block: bool = False, timeout: float = 300.0) -> bool:
        """Hand held messages to the ring (control messages: a frame and the queue), oldest
        first; returns whether none is left.

        ``block``: wait for room, while the process lives and for at most ``timeout`` seconds
        (what is not delivered by then stays held, never lost)."""
        deadline = time.monotonic() + timeout if block else 0.0  # report path: no clock read
        while self._backlog and self.alive:
            if not self._post(self._backlog[0]):
                if block and time.monotonic() < deadline:
                    time.sleep(0.0005)  # the Assistant frees room as it takes frames
                    continue
                return False
            message = self._backlog.popleft()
            if isinstance(message, Losses):
                self._backlog_instances -= len(message.ids)
        return not self._backlog

    def _post(self, message: Message) -> bool:
        """One message into the ring, or False (nothing sent) when it has no room. ``Losses``
        are copied into it; any other message, and ``Losses`` larger than the whole ring, goes
        through the queue behind a control frame.

        Raises:
            ValueError, OSError: the queue is closed.
        """
        ring = self._ring
        if isinstance(message, Losses) and ring.fits(message):
            was_half_full = ring.half_full
            if not ring.put_losses(message):
                return False
            if not was_half_full and ring.half_full:  # else its timer fetches them: a wake-up
                self._doorbell.release()  # per message preempted the Boss on a busy machine
            return True
        if not ring.has_frame():
            return False
        processed = self.state.processed
        while self._controls and self._controls[0][0] < processed:  # handled: forget
            self._controls.popleft()
        try:  # before its frame: the frame says the message is in the queue
            self._inbox.put_nowait(message)
        except queue.Full:  # (a frame per queued message keeps it below its bound)
            return False
        if not isinstance(message, Stop):
            self._controls.append((ring.frames_written, message))
        ring.put_control()
        self._doorbell.release()  # requests are answered at once
        return True

    @property
    def backlog_instances(self) -> int:
        return self._backlog_instances

    def _hold(self, message: Message) -> None:
        if not isinstance(message, Losses):
            self._backlog.append(message)
            return
        last = self._backlog[-1] if self._backlog else None
        merged = None
        if isinstance(last, Losses) and (len(last.ids) + len(last.forget) + len(message.ids)
                                         + len(message.forget) <= self.ring_slots):
            merged = merge_losses(last, message)  # (not beyond the ring: it would be pickled)
        if merged is not None:  # one message for both
            self._backlog.pop()
            self._backlog_instances -= len(last.ids)
            message = merged
        self._backlog.append(message)
        self._backlog_instances += len(message.ids)
        while self._backlog_instances > self.backlog_limit:  # bounded memory: oldest losses go
            oldest = next(i for i, m in enumerate(self._backlog)  # (forget-only ones stay)
                          if isinstance(m, Losses) and len(m.ids))
            ids, losses, forget = self._backlog[oldest]
            cut = min(len(ids), self._backlog_instances - self.backlog_limit)
            if cut == len(ids) and not len(forget):
                del self._backlog[oldest]
            else:  # its forgets still apply to the losses that follow
                self._backlog[oldest] = Losses(ids[cut:], losses[cut:], forget)
            self._backlog_instances -= cut
            self.dropped_instances += cut
            self.drops += 1

    def wait_processed(self, timeout: float) -> bool:
        """Wait until the Assistant has handled every message sent (sync mode, checkpoints)."""
        deadline = time.monotonic() + timeout
        if not self.deliver(block=True, timeout=timeout):
            return False
        if self._doorbell is not None and self.alive:
            self._doorbell.release()  # losses in the ring: now, not at the Assistant's timer
        while time.monotonic() < deadline:
            if not self.alive:
                return False
            if self.state.processed >= self.sent:
                return True
            time.sleep(0.002)
        return False

    def model_state(self, timeout: float | None = None) -> tuple[dict | None, bool]:
        """The Assistant's learner state, asked of the live process.

        Args:
            timeout: seconds to wait for the answer (default ``state_timeout``).

        Returns:
            ``(state, current)``. When the process does not answer in time (stalled, dead,
            given up), ``current`` is False, ``state`` is the last one known (None if none) and
            a warning says so: a checkpoint must not pass an old Assistant off as the current
            one. The request never blocks on a full queue: it waits in the backlog.
        """
        timeout = self.state_timeout if timeout is None else float(timeout)
        if self.check() and not self.failed:
            self._token += 1
            token = self._token
            self._hold(StateRequest(token))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.alive:
                self.deliver()
                try:
                    reply = self._outbox.get(timeout=0.05)
                except queue.Empty:
                    continue
                if isinstance(reply, StateReply) and reply.token == token:  # skip older ones
                    self._last_model_state = reply.state
                    return reply.state, True
            why = (f"did not answer within {timeout:g} s" if self.alive
                   else "died before answering")
        else:
            why = ("is not running (given up after repeated deaths)" if self.failed
                   else "is not running (stopped)")
        known = ("the last state it reported" if self._last_model_state is not None
                 else "no Assistant state")
        warnings.warn(f"autoassist: the Assistant {why}; the checkpoint holds {known}, marked "
                      "as not current (state_dict()['assistant_current'] is False)",
                      RuntimeWarning, stacklevel=3)
        return self._last_model_state, False

    def telemetry(self) -> dict[str, Any]:
        s = self.state
        return {
            "assistant_accuracy": s.accuracy,
            "assistant_loss_mean": s.loss_mean,
            "assistant_cpu_seconds": self.cpu_seconds_before_restart + s.cpu_seconds,
            "assistant_train_seconds": s.train_seconds,
            "assistant_trained_instances": s.trained,
            "assistant_restarts": self.restarts,
            "queue_drops": self.drops,
            "dropped_instances": self.dropped_instances,
            "backlog_instances": self._backlog_instances,
            "ring_instances": 0 if self._ring is None else self._ring.instances_held,
            "score_version": s.version,
            "assistant_bad_scores": s.bad_scores,
        }
