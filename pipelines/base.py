"""``EngineLoader``: the base of the autoassist loaders, which owns the epoch state.

A loader over an engine walks epochs: ``set_epoch(e)`` (or the next ``iter()``) plans epoch
``e``, the iteration yields its batches and remembers each batch's instance ids for ``report``,
and the end of the iteration ends the epoch (the Assistant's scoring request). A resumed epoch
skips the batches it had already yielded. All of that lives here, once.

A subclass supplies what differs, as a template method: ``_iter_epoch(plan, skip)``, the
epoch's ``(ids, batch)`` pairs; optionally ``_extra_state()`` / ``_load_extra_state(state)``
for state of its own, and ``_forget_epoch_position()`` for per-epoch position state.

The helpers below (ids from users, the state version) are shared by every adapter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from autoassist.config import ShrinkConfig
from autoassist.engine import EpochPlan, ShrinkEngine, state_check

STATE_VERSION = 1


def check_state_version(state: dict[str, Any]) -> None:
    """Refuse a loader state saved in another format than this version's."""
    state_check.as_dict(state, "state")
    if state.get("version") != STATE_VERSION:
        raise ValueError(
            f"loader state version {state.get('version')!r} is not {STATE_VERSION}; it was "
            "saved by an incompatible autoassist"
        )


def as_ids(ids, n: int) -> np.ndarray:
    """User-given ids (list, array or tensor on any device) as checked int64 NumPy ids."""
    return check_ids(np.asarray(torch.as_tensor(ids).cpu(), dtype=np.int64).reshape(-1), n)


def check_ids(ids: np.ndarray, n: int) -> np.ndarray:
    """``ids`` (int64) when every one lies in ``[0, n)``; else an IndexError naming one."""
    if len(ids) and (ids.min() < 0 or ids.max() >= n):
        bad = ids[(ids < 0) | (ids >= n)][0]
        raise IndexError(
            f"instance id {bad} is out of range: the dataset has {n} instances; "
            "fix the sampler, the dataset's __len__, or the ids passed to report()"
        )
    return ids


class EngineLoader:
    """What every autoassist loader shares: an engine, epochs, ``report``, state, closing."""

    def __init__(self, num_instances: int, config: ShrinkConfig, *, features=None, inputs=None,
                 tensorboard: str | None = None):
        self.num_instances = int(num_instances)
        self.config = config
        self._epoch = 0
        self._epoch_set = False  # set_epoch was called for the next iter()
        self._epoch_complete = False
        self._batches_done = 0  # in the current epoch (a resumed epoch skips them)
        self._last_ids: np.ndarray | None = None  # the batch just yielded, until reported
        self._last_batch: Any = None
        self._defer_end = False  # inside late_reports()
        self._pending_end: tuple[int, int] | None = None
        self._closed = False
        self.engine = ShrinkEngine(self.num_instances, config, features=features, inputs=inputs,
                                   tensorboard=tensorboard)

    # -- what a subclass supplies ----------------------------------------------------------------
    def _iter_epoch(self, plan: EpochPlan, skip: int) -> Iterator[tuple[np.ndarray, Any]]:
        """``(ids, batch)`` for each batch of the epoch ``plan`` keeps (``ids``: checked int64
        instance ids of ``batch``), leaving out its first ``skip`` batches (yielded before a
        checkpoint)."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement _iter_epoch(plan, skip): the epoch's "
            "(ids, batch) pairs, EngineLoader's template for one epoch"
        )

    def _extra_state(self) -> dict[str, Any]:
        """A subclass's own entries of ``state_dict()``."""
        return {}

    def _check_extra_state(self, state: dict[str, Any]) -> None:
        """Check what ``_extra_state`` saved (``state_check``'s helpers), changing nothing."""

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``_extra_state`` saved (checked by ``_check_extra_state``)."""

    def _max_batches(self, plan: EpochPlan) -> int | None:
        """At most how many batches the epoch of ``plan`` yields (None: not known), without
        touching the sampler: a loaded position beyond it is refused."""
        return None

    def _forget_epoch_position(self) -> None:
        """A new epoch starts from its beginning: drop per-epoch position state of your own."""

    # -- batches -----------------------------------------------------------------------------------
    @property
    def batch_ids(self) -> np.ndarray | None:
        """Instance ids of the batch just yielded (None once it was reported)."""
        return None if self._last_ids is None else self._last_ids.copy()

    def loss_weights(self, like: torch.Tensor) -> torch.Tensor | None:
        """Weights ``mean(P)/P_i`` for the batch just yielded (as ``like``), or None for a plain
        mean: for training schemes that weight several losses before reporting the last one."""
        if self._last_ids is None:
            raise RuntimeError("loss_weights() needs a yielded, not yet reported batch")
        return self.engine.loss_weights(self._last_ids, like)

    def __iter__(self) -> Iterator[Any]:
        plan = self._start_epoch()
        for ids, batch in self._iter_epoch(plan, self._batches_done):
            self._last_ids = ids
            self._last_batch = batch
            self._batches_done += 1
            yield batch
        self._finish_epoch()

    # -- epochs ----------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make ``epoch`` the one the next ``iter()`` runs, and plan it now.

        As ``DistributedSampler.set_epoch``: every data-parallel rank calls it at the same
        point, so the plan's collectives (reports gathered, scores broadcast) match up there.
        Afterwards ``len(loader)`` is this epoch's (shrunk) number of batches.

        Args:
            epoch: the epoch to run, a non-negative integer. The same epoch again after it
                finished runs it again; while it is unfinished (a resumed checkpoint), the
                iteration continues where it stopped.

        Raises:
            ValueError: ``epoch`` is negative or not an integer.
            RuntimeError: the loader was closed.
        """
        if int(epoch) != epoch or epoch < 0:
            raise ValueError(f"set_epoch takes a non-negative integer, got {epoch!r}")
        self._check_open()
        epoch = int(epoch)
        if epoch != self._epoch or self._epoch_complete:
            self._epoch = epoch
            self._batches_done = 0
            self._epoch_complete = False
            self._forget_epoch_position()
        self._epoch_set = True
        if self._pending_end is None:  # the previous epoch has ended (not deferred by
            self.engine.plan(self._epoch)  # late_reports): its scores are asked for

    def _check_open(self) -> None:
        if "engine" not in vars(self):
            raise RuntimeError(f"{type(self).__name__}.__init__ must call EngineLoader.__init__ "
                               "(it starts the engine and the epoch state)")
        if self._closed:
            raise RuntimeError("this autoassist loader was closed; wrap the DataLoader again")

    def _start_epoch(self) -> EpochPlan:
        """At ``iter()``: a finished epoch not followed by set_epoch advances by one; the
        epoch is planned unless set_epoch did it."""
        self._check_open()
        if self._epoch_complete and not self._epoch_set:
            self.set_epoch(self._epoch + 1)
        self._epoch_set = False
        self._epoch_complete = False
        return self.engine.plan(self._epoch)

    def _finish_epoch(self) -> None:
        self._last_batch = None
        self._epoch_complete = True
        if self._defer_end:
            self._pending_end = (self._epoch, self._batches_done)
        else:
            self.engine.end_epoch(self._epoch, batches=self._batches_done)

    @contextmanager
    def late_reports(self):
        """For pipelines whose losses come back after the loop has taken the last batch: the
        epoch's end (the Assistant's scoring request) waits until this block exits, so every
        loss of the epoch is in before the next epoch's scores are made."""
        self._defer_end = True
        try:
            yield self
        finally:
            self._defer_end = False
            if self._pending_end is not None:
                epoch, batches = self._pending_end
                self._pending_end = None
                self.engine.end_epoch(epoch, batches=batches)

    # -- reports ---------------------------------------------------------------------------------
    def report(self, per_sample: torch.Tensor, ids=None, batch: Any = None) -> torch.Tensor:
        """Send per-instance losses to the Assistant; return the loss to backpropagate.

        Only detached copies go to the Assistant; the call never waits for it (unless
        ``sync``), nor for the GPU (CUDA losses are copied without a wait).

        Args:
            per_sample: a 1-D tensor, one loss per instance (``reduction="none"``), of the
                batch just yielded, or of ``ids``.
            ids: the instance ids of ``per_sample``, when they are not the batch just yielded
                (a list, array or tensor).
            batch: with ``ids``: their collated batch, from which the default features are
                computed (without it, instances seen first here get no features).

        Returns:
            The mean of ``per_sample``, weighted by ``mean(P) / P_i`` when ``reweight`` is on
            and the epoch shrinks (an unbiased estimate of the full epoch's mean loss).

        Raises:
            RuntimeError: no batch was yielded since the last report (and no ``ids``).
            TypeError, ValueError: ``per_sample`` is not a 1-D tensor with one loss per id.
            IndexError: an id lies outside ``[0, num_instances)``.
            FloatingPointError: a loss is NaN or infinite.
        """
        if ids is None:
            if self._last_ids is None:
                raise RuntimeError(
                    "report() was called before any batch was yielded, or twice for one batch; "
                    "call it once per batch after `for batch in loader`, or pass ids=..."
                )
            loss = self.engine.report(per_sample, self._last_ids, self._last_batch)
            self._last_ids = None  # only once it was accepted: a rejected report can be redone
            return loss
        return self.engine.report(per_sample, as_ids(ids, self.num_instances), batch)

    @property
    def telemetry(self) -> list[dict[str, Any]]:
        """One dict per finished epoch: kept fraction, Assistant accuracy, drops, times."""
        return self.engine.telemetry

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly here, also mid-epoch.

        Save it with the model's and optimizer's state; a loader over the same data that loads
        it yields the batches this one would have yielded next (with ``sync``, bit-identically).

        Returns:
            A dict of plain Python, NumPy and torch values (``torch.save`` stores it): the
            epoch position, the Assistant's model, published scores, features, reports not yet
            sent, and the telemetry so far.
        """
        return {"version": STATE_VERSION, "num_instances": self.num_instances,
                "epoch": self._epoch, "batches_done": self._batches_done,
                "epoch_complete": self._epoch_complete, **self._extra_state(),
                "engine": self.engine.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()``'s result: the next ``iter()`` continues that epoch
        where it stopped (or starts the next one, if it had finished).

        Args:
            state: what ``state_dict()`` returned, from a loader over the same data.

        The whole state is checked before anything changes: a state that cannot be loaded
        raises and leaves this loader as it was (its Assistant running, its epoch and position
        unchanged), so training can go on.

        Raises:
            ValueError: the state comes from another number of instances, another feature
                size, or an incompatible autoassist version; or it is damaged: a key missing,
                a value of the wrong type, shape or range (an out-of-range position), another
                Assistant kind (``autoassist.engine.state_check.StateError``, whose message
                names the key and the fix).
        """
        check_state_version(state)
        saved_n = state_check.integer(state_check.get(state, "num_instances", "state"),
                                      "state['num_instances']")
        if saved_n != self.num_instances:
            raise state_check.StateError(
                f"this state comes from a dataset of {saved_n} instances but the "
                f"wrapped dataset has {self.num_instances}: load it into a loader over the same "
                "dataset"
            )
        epoch = state_check.integer(state_check.get(state, "epoch", "state"), "state['epoch']",
                                    low=0)
        done = state_check.integer(state_check.get(state, "batches_done", "state"),
                                   "state['batches_done']", low=0)
        state_check.boolean(state_check.get(state, "epoch_complete", "state"),
                            "state['epoch_complete']")
        plan = self.engine.check_state(state_check.get(state, "engine", "state"),
                                       path="state['engine']")
        if plan is not None and plan.epoch > epoch:
            raise state_check.bad("state['engine']['plan']['epoch']",
                                  f"is {plan.epoch}, after the loader's epoch {epoch}")
        most = self._max_batches(plan) if plan is not None and plan.epoch == epoch else None
        if most is not None and done > most:
            raise state_check.bad("state['batches_done']", f"is {done}, but epoch {epoch} "
                                  f"has at most {most} batches under the saved plan")
        self._check_extra_state(state)
        # checked: from here on nothing fails
        self.engine.restore_state(state["engine"], plan)
        self._epoch = epoch
        self._batches_done = done
        self._epoch_complete = bool(state["epoch_complete"])
        self._epoch_set = not self._epoch_complete
        self._last_ids = None
        self._last_batch = None
        self._load_extra_state(state)

    # -- closing ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the Assistant process and free shared memory (idempotent)."""
        if not self._closed:
            self._closed = True
            self.engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown, or __init__ failed before the engine started
            pass
