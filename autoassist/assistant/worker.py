"""The Assistant process: learns, from the Boss's losses, which instances are still informative.

It labels each reported loss ``1[loss > running mean loss]`` (``kernels.ema_stream``), trains its
light model (``models.py``) on the instance's features (written by the Boss into shared memory,
plus the loss memory's two columns), and on request, or when idle after enough new evidence,
scores all N instances and publishes them. The messages and cells are ``protocol.py``'s: it
takes the loss ring's frames in order (``loss_ring.py``), a control frame's message from the
queue, and sleeps on the doorbell while the ring is empty.

This module is what the spawned child imports: NumPy only at import time, so the child starts
without torch (the "mlp" learner imports it when chosen).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time

import numpy as np

from .loss_memory import LossMemory
from .loss_ring import LossRing
from .protocol import (
    AssistantSettings,
    Losses,
    ScoreRequest,
    SharedState,
    StateReply,
    StateRequest,
    Stop,
)

_POLL_SECONDS = 0.2  # the Assistant's timer while the ring is quiet (then it is idle)
_BUSY_POLL_SECONDS = 0.02  # its timer while losses come (the Boss rings only when half full)
_SCORE_CHUNK = 65536
_ACCURACY_RATE = 0.001  # per-instance EMA rate of the accuracy: a window of ~1000 instances
_MINIBATCH = 32  # the Assistant's own SGD batch: many cheap steps per message


def _limit_threads(threads: int):
    """Bound this (spawned, Assistant-only) process's CPU use; returns the limiter to keep alive.

    Environment variables alone come too late: spawn imported NumPy (and its BLAS pool) before
    this runs, so the pools are also limited in place (threadpoolctl, scikit-learn's own helper).
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(threads)  # for anything imported from here on (torch for "mlp")
    from threadpoolctl import threadpool_limits

    limiter = threadpool_limits(limits=threads)
    try:
        os.nice(10)  # the Boss comes first on a shared machine
    except OSError:
        pass
    return limiter


class _Worker:
    """The Assistant's state and one handler per message kind."""

    def __init__(self, state: SharedState, settings: AssistantSettings,
                 model_state: dict | None, outbox):
        from autoassist.kernels import ema_stream

        from .models import make_assistant_model

        self._ema_stream = ema_stream  # the label rule, looked up once, not per message
        self.state, self.settings, self.outbox = state, settings, outbox
        n = state.num_instances
        self.memory = LossMemory(n) if settings.loss_history else None
        dim = state.feature_dim + (LossMemory.dim if self.memory is not None else 0)
        self._new_model = lambda: make_assistant_model(settings.kind, dim, settings.lr,
                                                       settings.seed, **settings.model_options())
        self.model = self._new_model()
        self.mean, self.accuracy = state.loss_mean, state.accuracy
        if model_state is not None:
            self.model.load_state_dict(model_state["model"])
            self.mean, self.accuracy = model_state["loss_mean"], model_state["accuracy"]
            if self.memory is not None and model_state.get("memory") is not None:
                self.memory.load_state_dict(model_state["memory"])
        self.fresh = 0  # instances trained on since the last publication
        self.train_seconds = state.train_seconds

    # -- helpers ---------------------------------------------------------------------------------
    def _inputs(self, ids: np.ndarray, mean: float) -> np.ndarray:
        """The learner's input rows: the Boss-written features, plus the loss memory."""
        X = self.state.features[ids]
        if self.memory is None:
            return X
        return np.hstack([X, self.memory.features(ids, mean)])

    def _score_all(self) -> np.ndarray:
        state = self.state
        n = state.num_instances
        # never-seen instances stay "informative"
        scores = np.full(n, self.model.unseen_score, np.float32)
        for start in range(0, n, _SCORE_CHUNK):
            stop = min(n, start + _SCORE_CHUNK)
            have = np.flatnonzero(state.have[start:stop]) + start
            if len(have):
                scores[have] = self.model.predict_proba(self._inputs(have, self.mean))
        return self.model.calibrate(scores)  # (a rule over all scores at once, or as they are)

    def publish(self, epoch: int = -1) -> None:
        """Publish fresh scores, never non-finite ones: a learner whose output went bad is
        counted (``bad_scores``: the Boss warns and keeps selecting from the last good scores)
        and started afresh, so the next scoring comes from a sane model."""
        scores = self._score_all()
        self.fresh = 0
        if not np.isfinite(scores).all():
            self.state.bad_scores = self.state.bad_scores + 1
            self.model = self._new_model()
            return
        self.state.publish(scores, epoch=epoch)

    def write_cells(self) -> None:
        s = self.state
        s.accuracy, s.loss_mean = self.accuracy, self.mean
        s.train_seconds, s.cpu_seconds = self.train_seconds, time.process_time()
        s.processed = s.processed + 1

    # -- handlers --------------------------------------------------------------------------------
    def on_losses(self, msg: Losses) -> None:
        t0 = time.perf_counter()
        ids, losses = msg.ids, msg.losses
        if len(msg.forget) and self.memory is not None:
            self.memory.forget(msg.forget)  # renewed slots (replay): before their new losses
        before = self.mean  # the memory feature is relative to the mean before this batch
        labels, self.mean = self._ema_stream(losses, self.mean, self.settings.label_ema)
        have = self.state.have[ids].astype(bool)
        if have.any():
            X = self._inputs(ids[have], before)
            y = labels[have]
            pred = self.model.predict_proba(X) > 0.5
            hit = float(np.mean(pred == y.astype(bool)))
            if np.isnan(self.accuracy):
                self.accuracy = hit
            else:
                rate = 1.0 - (1.0 - _ACCURACY_RATE) ** len(X)
                self.accuracy = (1 - rate) * self.accuracy + rate * hit
            for start in range(0, len(X), _MINIBATCH):  # several small steps
                self.model.partial_fit(X[start : start + _MINIBATCH],
                                       y[start : start + _MINIBATCH])
            self.fresh += int(have.sum())
            self.state.trained = self.state.trained + int(have.sum())
        if self.memory is not None:
            self.memory.update(ids, losses)
        self.train_seconds += time.perf_counter() - t0

    def on_score(self, msg: ScoreRequest) -> None:
        t0 = time.perf_counter()
        self.publish(epoch=int(msg.epoch))
        self.train_seconds += time.perf_counter() - t0

    def on_state(self, msg: StateRequest) -> None:
        self.outbox.put(StateReply(msg.token, {
            "model": self.model.state_dict(), "loss_mean": self.mean, "accuracy": self.accuracy,
            "memory": None if self.memory is None else self.memory.state_dict(),
        }))

    def on_idle(self) -> None:
        """Refresh the scores continuously when there is enough new evidence (not in sync
        mode, where scores change only on request so that runs are deterministic)."""
        if self.settings.idle_publish and self.fresh >= max(1, self.state.num_instances // 4):
            self.publish()


def _queued_message(inbox, parent):
    """The message a control frame stands for: the Boss queued it before writing the frame, so
    it is there or on its way; None when the Boss died meanwhile."""
    while True:
        try:
            return inbox.get(timeout=_POLL_SECONDS)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return None


def run_assistant(shm_name: str, num_instances: int, feature_dim: int, feature_dir: str,
                  settings: AssistantSettings, model_state: dict | None, ring_name: str,
                  inbox, doorbell, outbox) -> None:
    """Entry point of the Assistant process (module-level so *spawn* can import it).

    Args:
        shm_name, num_instances, feature_dim, feature_dir: the ``SharedState`` to attach to.
        settings: the learner's settings.
        model_state: a learner state to start from (None: a fresh learner).
        ring_name: the loss ring to take messages from.
        inbox: the control messages' queue.
        doorbell: a semaphore the Boss releases once per frame it writes.
        outbox: where ``StateReply`` goes.
    """
    # Imports run before the process lowers its priority: at nice 10 beside a Boss using every
    # core, they would take tens of seconds. Numba is not among them: ema_stream labels the usual
    # small messages in plain Python and compiles only for a large one or after many
    # (kernels/stats.py), which keeps ~0.8 s of CPU out of a small run's first epoch; a data set
    # of COMPILE_AFTER instances or more, which will need it each epoch, compiles it here.
    from autoassist.kernels import (
        ema_stream,  # noqa: F401 - imported before nice, see above
        stats,
    )

    from . import models  # noqa: F401
    if num_instances >= stats.COMPILE_AFTER:  # it labels that many losses an epoch: compile now,
        os.environ["NUMBA_NUM_THREADS"] = str(settings.threads)  # (as _limit_threads sets it)
        stats.compile_ema_stream()  # at full priority, beside the Boss's first epoch
    limiter = _limit_threads(settings.threads)  # noqa: F841 - held for the process's lifetime
    if settings.kind == "mlp":  # this process is the Assistant's own: its torch, its threads
        import torch

        torch.set_num_threads(settings.threads)

    state = SharedState(num_instances, feature_dim, name=shm_name, feature_dir=feature_dir)
    ring = LossRing(name=ring_name)
    worker = _Worker(state, settings, model_state, outbox)
    handlers = {Losses: worker.on_losses, ScoreRequest: worker.on_score,
                StateRequest: worker.on_state}
    parent = mp.parent_process()
    last_frame = time.monotonic()
    busy = False  # a frame came within the last _POLL_SECONDS
    try:
        while True:
            msg = ring.take()
            if msg is None:  # nothing in flight: sleep until rung or timed out (no busy wait)
                rung = doorbell.acquire(timeout=_BUSY_POLL_SECONDS if busy else _POLL_SECONDS)
                if rung or ring.pending:
                    continue  # (a release for a frame already taken only loops once more)
                if parent is not None and not parent.is_alive():
                    return
                if time.monotonic() - last_frame >= _POLL_SECONDS:  # quiet: idle work
                    busy = False
                    worker.on_idle()
                continue
            last_frame, busy = time.monotonic(), True
            if not isinstance(msg, Losses):  # CONTROL: its message is the queue's next one
                msg = _queued_message(inbox, parent)
            if msg is None or isinstance(msg, Stop):
                return
            handler = handlers.get(type(msg))
            if handler is None:
                raise TypeError(f"the Assistant got an unknown message {type(msg).__name__}; "
                                "the messages are protocol.py's")
            handler(msg)
            worker.write_cells()
    finally:
        ring.close()
        state.close()
