"""The Assistant: a separate process that learns which instances are still informative.

Boss -> Assistant: a bounded queue of ``("losses", ids, losses)`` messages. When it is full (the
Assistant is still starting, or a fast GPU Boss outruns it for a while) the Boss never blocks:
it holds the messages in a backlog, merging consecutive loss messages into one, and hands them
over as soon as the queue has room. Only a backlog beyond a memory bound loses its oldest
losses, and those are counted (``queue_drops``); score and state requests are never dropped. The
AutoAssist paper dropped messages at once; on a GPU that threw away the first epochs' losses
while the Assistant process was still importing its modules. The Assistant
labels each loss ``1[loss > running mean loss]``, trains its light model on the instance's
features (which the Boss wrote into shared memory), and on request (or when idle after enough
new evidence) scores all N instances and publishes them (``shared_state.SharedState``).

The process is started with the *spawn* method: Numba's OpenMP layer and torch's threads do not
survive ``fork`` safely. Spawn would also re-run the caller's main module in the child; the
Assistant's entry point lives in this package, so ``_main_module_hidden`` keeps the child from
doing that. It lowers its own priority and thread count so it never starves the Boss.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
import warnings
from collections import deque
from typing import Any

import numpy as np

from . import shared_state as ss
from .loss_memory import LossMemory

_POLL_SECONDS = 0.2
_SCORE_CHUNK = 65536
_ACCURACY_RATE = 0.001
_MINIBATCH = 32  # the Assistant's own SGD batch: many cheap steps per message
_BACKLOG_CAP = 1 << 22  # at most ~4M held losses (~50 MB), whatever the data set's size


# ------------------------------------------------------------------------------------------------
# Child side
# ------------------------------------------------------------------------------------------------
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


def _inputs(state: ss.SharedState, ids, memory: LossMemory | None, mean: float) -> np.ndarray:
    """The learner's input rows: the Boss-written features, plus the loss memory when used."""
    X = state.features[ids]
    if memory is None:
        return X
    return np.hstack([X, memory.features(ids, mean)])


def _score_all(model, state: ss.SharedState, memory: LossMemory | None = None,
               mean: float = float("nan")) -> np.ndarray:
    n = state.num_instances
    scores = np.ones(n, np.float32)  # never-seen instances stay "informative"
    for start in range(0, n, _SCORE_CHUNK):
        stop = min(n, start + _SCORE_CHUNK)
        have = np.flatnonzero(state.have[start:stop]) + start
        if len(have):
            scores[have] = model.predict_proba(_inputs(state, have, memory, mean))
    return scores


def run_assistant(shm_name: str, num_instances: int, feature_dim: int, settings: dict,
                  model_state: dict | None, inbox, outbox) -> None:
    """Entry point of the Assistant process (module-level so *spawn* can import it)."""
    threads = int(settings["threads"])
    # Imports run before the process lowers its priority: at nice 10 beside a Boss using every
    # core, they would take tens of seconds. Numba is not among them: ema_stream labels the usual
    # small messages in plain Python and compiles only for a large one (kernels/stats.py), which
    # keeps ~0.8 s of CPU out of the Boss's first epoch.
    from autoassist.assistant_models import make_assistant_model
    from autoassist.kernels import ema_stream
    limiter = _limit_threads(threads)  # noqa: F841 - held for the process's lifetime
    if settings["kind"] == "mlp":  # this process is the Assistant's own: its torch, its threads
        import torch

        torch.set_num_threads(threads)

    state = ss.SharedState(num_instances, feature_dim, name=shm_name)
    memory = LossMemory(num_instances) if settings.get("loss_history") else None
    dim = feature_dim + (LossMemory.dim if memory is not None else 0)
    model = make_assistant_model(settings["kind"], dim, settings["lr"], settings["seed"])
    mean = float(state.fheader[ss.LOSS_MEAN])
    accuracy = float(state.fheader[ss.ACCURACY])
    if model_state is not None:
        model.load_state_dict(model_state["model"])
        mean, accuracy = model_state["loss_mean"], model_state["accuracy"]
        if memory is not None and model_state.get("memory") is not None:
            memory.load_state_dict(model_state["memory"])
    alpha = float(settings["label_ema"])
    fresh = 0  # instances trained on since the last publication
    parent = mp.parent_process()
    train_seconds = float(state.fheader[ss.TRAIN_SECONDS])
    try:
        while True:
            try:
                msg = inbox.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if parent is not None and not parent.is_alive():
                    return
                idle_publish = settings.get("idle_publish", True)
                if idle_publish and fresh >= max(1, num_instances // 4):  # refresh continuously
                    state.publish(_score_all(model, state, memory, mean))
                    fresh = 0
                continue
            kind = msg[0]
            if kind == "losses":
                t0 = time.perf_counter()
                ids, losses = msg[1], msg[2]
                if len(msg) > 3 and len(msg[3]) and memory is not None:
                    memory.forget(msg[3])  # renewed slots (replay): before their new losses
                before = mean  # the memory feature is relative to the mean before this batch
                labels, mean = ema_stream(losses, mean, alpha)
                have = state.have[ids].astype(bool)
                if have.any():
                    X = _inputs(state, ids[have], memory, before)
                    y = labels[have]
                    pred = model.predict_proba(X) > 0.5
                    hit = float(np.mean(pred == y.astype(bool)))
                    if np.isnan(accuracy):
                        accuracy = hit
                    else:  # per-instance EMA: a window of ~1000 recent instances
                        rate = 1.0 - (1.0 - _ACCURACY_RATE) ** len(X)
                        accuracy = (1 - rate) * accuracy + rate * hit
                    for start in range(0, len(X), _MINIBATCH):  # several small steps
                        model.partial_fit(X[start : start + _MINIBATCH],
                                          y[start : start + _MINIBATCH])
                    fresh += int(have.sum())
                    state.header[ss.TRAINED] += int(have.sum())
                if memory is not None:
                    memory.update(ids, losses)
                train_seconds += time.perf_counter() - t0
            elif kind == "score":
                t0 = time.perf_counter()
                state.publish(_score_all(model, state, memory, mean), epoch=int(msg[1]))
                fresh = 0
                train_seconds += time.perf_counter() - t0
            elif kind == "state":
                outbox.put(("state", msg[1], {
                    "model": model.state_dict(), "loss_mean": mean, "accuracy": accuracy,
                    "memory": None if memory is None else memory.state_dict(),
                }))
            elif kind == "crash":  # used by tests to simulate a dying Assistant
                os._exit(17)
            elif kind == "stop":
                return
            state.fheader[ss.ACCURACY] = accuracy
            state.fheader[ss.LOSS_MEAN] = mean
            state.fheader[ss.TRAIN_SECONDS] = train_seconds
            state.fheader[ss.CPU_SECONDS] = time.process_time()
            state.header[ss.PROCESSED] += 1
    finally:
        state.close()


# ------------------------------------------------------------------------------------------------
# Boss side
# ------------------------------------------------------------------------------------------------
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


class AssistantProcess:
    """The Boss's handle on the Assistant process: start, send, restart, stop, state."""

    state_timeout = 30.0  # seconds model_state() waits for the process to answer

    def __init__(self, state: ss.SharedState, settings: dict, queue_size: int, max_restarts: int):
        self.state = state
        self.settings = dict(settings)
        self.queue_size = int(queue_size)
        self.max_restarts = int(max_restarts)
        self.restarts = 0
        self.drops = 0
        self.sent = 0
        self._backlog: deque[tuple] = deque()  # messages the full queue could not take yet
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
        self.failed = False

    # -- life cycle -----------------------------------------------------------------------------
    def start(self, model_state: dict | None = None, *, replace_state: bool = False) -> None:
        """Start the process; ``replace_state`` sets the learner state even to None (resume)."""
        if model_state is not None or replace_state:
            self._last_model_state = model_state
        self._inbox = self._ctx.Queue(maxsize=self.queue_size)
        self._outbox = self._ctx.Queue()
        self._proc = self._ctx.Process(
            target=run_assistant,
            args=(self.state.name, self.state.num_instances, self.state.feature_dim,
                  self.settings, self._last_model_state, self._inbox, self._outbox),
            name="autoassist-assistant",
            daemon=True,
        )
        with _main_module_hidden():
            self._proc.start()
        self.sent = 0
        self.state.header[ss.PROCESSED] = 0

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def check(self) -> bool:
        """Restart a dead Assistant (bounded); returns whether an Assistant is running."""
        if self.alive:
            return True
        if self._proc is None or self.failed:
            return False
        code = self._proc.exitcode
        self.cpu_seconds_before_restart += float(self.state.fheader[ss.CPU_SECONDS])
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
        if self._proc is None:
            return
        if self._proc.is_alive():
            try:
                self._inbox.put(("stop",), timeout=1.0)
            except (queue.Full, ValueError, OSError):
                pass
            self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(timeout)
        self._discard_queues()
        self._proc = None

    def _discard_queues(self) -> None:
        for q in (self._inbox, self._outbox):
            if q is not None:
                q.cancel_join_thread()  # never hang on exit flushing messages nobody reads
                q.close()

    # -- messages -------------------------------------------------------------------------------
    def send(self, message: tuple, block: bool = False) -> None:
        """Queue a message after any held ones. ``block=False`` never waits: what the full queue
        cannot take stays in the backlog (see the module docstring)."""
        if not self.check():
            return
        self._hold(message)
        self.deliver(block=block)

    def deliver(self, block: bool = False) -> None:
        """Hand held messages to the queue, oldest first (all of them, waiting, when ``block``)."""
        while self._backlog and self.alive:
            try:
                if block:
                    self._inbox.put(self._backlog[0])
                else:
                    self._inbox.put_nowait(self._backlog[0])
            except queue.Full:
                return
            message = self._backlog.popleft()
            if message[0] == "losses":
                self._backlog_instances -= len(message[1])
            self.sent += 1

    @property
    def backlog_instances(self) -> int:
        return self._backlog_instances

    def _hold(self, message: tuple) -> None:
        if message[0] != "losses":
            self._backlog.append(message)
            return
        last = self._backlog[-1] if self._backlog else None
        if (last is not None and last[0] == "losses"
                and not (len(message[3]) and np.isin(message[3], last[1]).any())):
            # one message for both; the new forgets may go first: they touch none of last's ids
            message = ("losses", np.concatenate([last[1], message[1]]),
                       np.concatenate([last[2], message[2]]),
                       np.concatenate([last[3], message[3]]))
            self._backlog.pop()
            self._backlog_instances -= len(last[1])
        self._backlog.append(message)
        self._backlog_instances += len(message[1])
        while self._backlog_instances > self.backlog_limit:  # bounded memory: oldest losses go
            oldest = next(i for i, m in enumerate(self._backlog) if m[0] == "losses")
            kind, ids, losses, forget = self._backlog[oldest]
            cut = min(len(ids), self._backlog_instances - self.backlog_limit)
            if cut == len(ids) and not len(forget):
                del self._backlog[oldest]
            else:  # its forgets still apply to the losses that follow
                self._backlog[oldest] = (kind, ids[cut:], losses[cut:], forget)
            self._backlog_instances -= cut
            self.dropped_instances += cut
            self.drops += 1

    def wait_processed(self, timeout: float) -> bool:
        """Wait until the Assistant has handled every message sent (sync mode, checkpoints)."""
        self.deliver(block=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                return False
            if int(self.state.header[ss.PROCESSED]) >= self.sent:
                return True
            time.sleep(0.002)
        return False

    def model_state(self, timeout: float | None = None) -> tuple[dict | None, bool]:
        """The Assistant's learner state, asked of the live process.

        Returns ``(state, current)``. When the process does not answer within ``timeout``
        (stalled, dead, given up), ``current`` is False, ``state`` is the last one known (None if
        none) and a warning says so: a checkpoint must not pass an old Assistant off as the
        current one. The request never blocks on a full queue: it waits in the backlog.
        """
        timeout = self.state_timeout if timeout is None else float(timeout)
        if self.check() and not self.failed:
            self._token += 1
            token = self._token
            self._hold(("state", token))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.alive:
                self.deliver()
                try:
                    reply = self._outbox.get(timeout=0.05)
                except queue.Empty:
                    continue
                if reply[0] == "state" and reply[1] == token:  # older answers are skipped
                    self._last_model_state = reply[2]
                    return reply[2], True
            why = (f"did not answer within {timeout:g} s" if self.alive
                   else "died before answering")
        else:
            why = "is not running (given up after repeated deaths)"
        known = ("the last state it reported" if self._last_model_state is not None
                 else "no Assistant state")
        warnings.warn(f"autoassist: the Assistant {why}; the checkpoint holds {known}, marked "
                      "as not current (state_dict()['assistant_current'] is False)",
                      RuntimeWarning, stacklevel=3)
        return self._last_model_state, False

    def telemetry(self) -> dict[str, Any]:
        f = self.state.fheader
        return {
            "assistant_accuracy": float(f[ss.ACCURACY]),
            "assistant_loss_mean": float(f[ss.LOSS_MEAN]),
            "assistant_cpu_seconds": self.cpu_seconds_before_restart + float(f[ss.CPU_SECONDS]),
            "assistant_train_seconds": float(f[ss.TRAIN_SECONDS]),
            "assistant_trained_instances": int(self.state.header[ss.TRAINED]),
            "assistant_restarts": self.restarts,
            "queue_drops": self.drops,
            "dropped_instances": self.dropped_instances,
            "backlog_instances": self._backlog_instances,
            "score_version": int(self.state.header[ss.VERSION]),
        }
