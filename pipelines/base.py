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

import contextlib
import inspect
import os
import sys
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from autoassist.config import ShrinkConfig
from autoassist.engine import EpochPlan, ShrinkEngine, state_check
from autoassist.engine.safe_state import safe

# 2: tensors and plain values only (torch.load's weights_only=True reads it). 1 (autoassist
# 0.1.0) held NumPy arrays and pickled the sgd Assistant: it still loads, except that pickle.
STATE_VERSION = 2
READS_VERSIONS = (1, 2)


def check_state_version(state: dict[str, Any]) -> None:
    """Refuse a loader state saved in a format this version does not read.

    Raises:
        StateError: ``state`` is not a dict, or its ``version`` is not one of
            ``READS_VERSIONS`` (a ``ValueError``).
    """
    state_check.as_dict(state, "state")
    version = state.get("version")
    if isinstance(version, bool) or version not in READS_VERSIONS:
        raise state_check.StateError(
            f"loader state version {version!r} is not one this autoassist reads "
            f"({', '.join(map(str, READS_VERSIONS))}): it was saved by an incompatible "
            "autoassist; resume with the version that saved it"
        )


def with_rank_state(shared: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """One data-parallel rank's whole loader state, from rank 0's ``state_dict()`` and that
    rank's ``rank_state()``: rank 0's with the rank's own entries in place of rank 0's.

    Args:
        shared: a loader's ``state_dict()`` (rank 0's: plan, scores, features, Assistant).
        own: another rank's ``EngineLoader.rank_state()``, saved at the same point.

    Returns:
        A state for that rank's ``load_state_dict`` (checked there as any other).

    Raises:
        StateError: either is not a dict, or has no ``engine`` dict (a ``ValueError``).
    """
    engine = state_check.as_dict(state_check.get(shared, "engine", "state"), "state['engine']")
    mine = state_check.as_dict(state_check.get(own, "engine", "rank state"),
                               "rank state['engine']")
    return {**shared, **own, "engine": {**engine, **mine}}


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


def _caller_level() -> int:
    """``stacklevel`` of the first frame outside the adapters (and contextlib), for a warning
    raised from ``_warn_once``: the user's line, however deep in the loader it was found."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(2), 2  # stacklevel 2: the caller of _warn_once
    while frame is not None and (os.path.dirname(frame.f_code.co_filename) == here
                                 or frame.f_code.co_filename == contextlib.__file__):
        frame, level = frame.f_back, level + 1
    return level


@dataclass
class _EpochCounts:
    """What the current epoch's telemetry record tells besides the engine's figures."""

    yielded: int = 0  # instances yielded by this epoch's iterations (not the abandoned ones)
    this_iteration: int = 0  # of them, by the latest iteration
    abandoned_batches: int = 0  # yielded by iterations that stopped early, then started over
    repeated: bool = False  # set_epoch gave a number that had already run


class EngineLoader:
    """What every autoassist loader shares: an engine, epochs, ``report``, state, closing."""

    def __init__(self, num_instances: int, config: ShrinkConfig, *, features=None, inputs=None,
                 tensorboard: str | None = None,
                 on_epoch_end: Callable[[dict[str, Any]], Any] | None = None):
        if on_epoch_end is not None and not callable(on_epoch_end):
            raise TypeError(
                f"on_epoch_end must be a function taking the epoch's telemetry dict, got "
                f"{type(on_epoch_end).__name__} {on_epoch_end!r}; pass e.g. "
                "on_epoch_end=lambda record: logger.log(record), or leave it out"
            )
        self._on_epoch_end = on_epoch_end
        self.num_instances = int(num_instances)
        self.config = config
        self._epoch = 0
        self._epoch_set = False  # set_epoch was called for the next iter()
        self._epoch_complete = False
        self._batches_done = 0  # in the current epoch (a resumed epoch skips them)
        self._start_position = 0  # where an iteration of this epoch starts (a loaded position)
        self._counts = _EpochCounts()
        self._live: weakref.ref | None = None  # the iteration started last
        self._warned: set[str] = set()
        self._dropped_seen = 0  # the Assistant's dropped losses already warned about
        self._last_ids: np.ndarray | None = None  # the batch just yielded, until reported
        self._last_batch: Any = None
        self._defer_end = False  # inside late_reports()
        self._pending_ends: list[tuple[int, int, dict[str, Any]]] = []
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

    def _epoch_record(self, plan: EpochPlan | None) -> dict[str, Any]:
        """A subclass's entries of the epoch's telemetry record (what its sampler drew)."""
        return {}

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
        """The current epoch's batches (the next epoch's, once the current one finished).

        One iteration at a time: ``report()`` pairs its losses with the batch just yielded, so
        an iteration that starts (its first ``next()``) while another one is live, started and
        not finished (``zip(loader, loader)``, or an iterator kept from an earlier
        ``iter(loader)``), raises. An iterator made but never started counts for nothing
        (``tqdm.auto`` makes one). A new iteration after one that stopped early (a peek with
        ``next(iter(loader))``, a ``break``) runs the epoch again from its start (a loaded
        checkpoint's position), as a DataLoader does; the epoch's record counts the abandoned
        iteration's batches (``abandoned_batches``).

        Raises:
            RuntimeError: the loader was closed, or another iteration of it is live.
        """
        self._check_open()
        me: list[weakref.ref] = []
        iteration = self._iterate(me)
        me.append(weakref.ref(iteration))
        return iteration

    def _iteration_live(self) -> bool:
        """Whether an iteration has started and can still yield."""
        iteration = None if self._live is None else self._live()
        return (iteration is not None
                and inspect.getgeneratorstate(iteration) == inspect.GEN_SUSPENDED)

    def _iterate(self, me: list[weakref.ref]) -> Iterator[Any]:
        if self._iteration_live():
            raise RuntimeError(
                "this autoassist loader is already being iterated: report() matches losses to "
                "the instances of the batch just yielded, so two iterations at once (e.g. "
                "zip(loader, loader), or an iterator kept from iter(loader)) would pair losses "
                "with the wrong instances. Finish or drop the first iteration (break out of its "
                "loop, del the iterator) before starting another, or wrap a second DataLoader"
            )
        self._live = me[0]
        plan = self._start_epoch()
        self._batches_done = self._start_position
        counts = self._counts
        counts.this_iteration = 0
        batches = self._iter_epoch(plan, self._start_position)
        while True:
            if self._closed:
                raise RuntimeError("this autoassist loader was closed during its iteration")
            try:
                ids, batch = next(batches)
            except StopIteration:
                break
            self._last_ids = ids
            self._last_batch = batch
            self._batches_done += 1
            counts.yielded += len(ids)
            counts.this_iteration += len(ids)
            yield batch
        self._finish_epoch()

    # -- epochs ----------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def batches_done(self) -> int:
        """Batches of the current epoch yielded so far (a resumed epoch counts those before
        its checkpoint): with ``len(loader)``, where training is inside the epoch."""
        return self._batches_done

    def set_epoch(self, epoch: int) -> None:
        """Make ``epoch`` the one the next ``iter()`` runs, and plan it now.

        As ``DistributedSampler.set_epoch``: every data-parallel rank calls it at the same
        point, so the plan's collectives (reports gathered, scores broadcast) match up there.
        Afterwards ``len(loader)`` is this epoch's (shrunk) number of batches.

        Args:
            epoch: the epoch to run, a non-negative integer. The same epoch again after it
                finished runs it again (with a warning, once, and ``repeated_epoch`` in its
                record: the epoch number seeds the selection); while it is unfinished (a
                resumed checkpoint), the iteration continues where it stopped. Another epoch
                while the current one is unfinished ends the current one (``broken_off`` in
                its record, and a warning, once).

        Raises:
            ValueError: ``epoch`` is negative or not an integer.
            RuntimeError: the loader was closed, or another epoch was asked for while an
                iteration of this one is still live.
        """
        if int(epoch) != epoch or epoch < 0:
            raise ValueError(f"set_epoch takes a non-negative integer, got {epoch!r}")
        self._check_open()
        epoch = int(epoch)
        if epoch != self._epoch or self._epoch_complete:
            if self._iteration_live():
                raise RuntimeError(
                    f"set_epoch({epoch}) while an iteration of epoch {self._epoch} is live: "
                    "finish it or break out of its loop (dropping the iterator) first"
                )
            if not self._epoch_complete and self._batches_done > 0:
                self._end_broken_off_epoch(next_epoch=epoch)
            repeated = any(r.get("epoch") == epoch for r in self.engine.telemetry)
            self._epoch = epoch
            self._batches_done = 0
            self._start_position = 0
            self._epoch_complete = False
            self._counts = _EpochCounts(repeated=repeated)
            self._forget_epoch_position()
            if repeated:
                self._warn_once(
                    "repeated",
                    f"autoassist: set_epoch({epoch}) for an epoch that already ran: it runs "
                    f"again, and telemetry gets a second record for epoch {epoch} "
                    "(repeated_epoch=True). The epoch number seeds the selection (and a "
                    "DistributedSampler's order): give each epoch its own number, e.g. "
                    "set_epoch(epoch) with the training loop's counter",
                )
        self._epoch_set = True
        if not self._pending_ends:  # the previous epoch has ended (not deferred by
            self.engine.plan(self._epoch)  # late_reports): its scores are asked for

    def _check_open(self) -> None:
        if "engine" not in vars(self):
            raise RuntimeError(f"{type(self).__name__}.__init__ must call EngineLoader.__init__ "
                               "(it starts the engine and the epoch state)")
        if self._closed:
            raise RuntimeError("this autoassist loader was closed; wrap the DataLoader again")

    def _start_epoch(self) -> EpochPlan:
        """At the first ``next()``: a finished epoch not followed by set_epoch advances by one;
        an epoch whose last iteration stopped early starts again (its batches are recorded as
        abandoned); the epoch is planned unless set_epoch did it."""
        self._check_open()
        if self._epoch_complete and not self._epoch_set:
            self.set_epoch(self._epoch + 1)
        elif self._batches_done > self._start_position:  # an iteration stopped early
            self._counts.abandoned_batches += self._batches_done - self._start_position
            self._counts.yielded -= self._counts.this_iteration
        self._epoch_set = False
        self._epoch_complete = False
        return self.engine.plan(self._epoch)

    def _finish_epoch(self) -> None:
        self._last_batch = None
        self._epoch_complete = True
        self._end_epoch(self._epoch, self._batches_done, broken_off=False)

    def _end_broken_off_epoch(self, next_epoch: int) -> None:
        """The unfinished current epoch ends here (set_epoch asked for another one)."""
        epoch, batches = self._epoch, self._batches_done
        self._last_batch = None
        self._end_epoch(epoch, batches, broken_off=True)
        self._warn_once(
            "broken_off",
            f"autoassist: epoch {epoch} ended after {batches} batches, before its iteration "
            f"finished (set_epoch({next_epoch}) came first); its telemetry record says "
            "broken_off=True. On purpose (a step budget per epoch)? Then ignore this. To "
            "continue an epoch later, use state_dict() / load_state_dict()",
        )

    def _end_epoch(self, epoch: int, batches: int, broken_off: bool) -> None:
        plan = self.engine.current
        counts = self._counts
        fields = {"yielded_instances": counts.yielded,
                  "abandoned_batches": counts.abandoned_batches,
                  "repeated_epoch": counts.repeated, "broken_off": broken_off,
                  **self._epoch_record(plan if plan is not None and plan.epoch == epoch
                                       else None)}
        if self._defer_end:
            self._pending_ends.append((epoch, batches, fields))
        else:
            self._record_end(epoch, batches, fields)

    def _record_end(self, epoch: int, batches: int, fields: dict[str, Any]) -> None:
        record = self.engine.end_epoch(epoch, batches=batches, fields=fields)
        missing = record.get("unreported_instances", 0)
        if missing:
            self._warn_once(
                "unreported",
                f"autoassist: {missing} instances of epoch {epoch} were yielded but their "
                "losses never reported (a batch without report(), or losses that came after "
                "the epoch ended); the Assistant learns nothing from them. Call "
                "loader.report(per_sample) once per batch; when losses come back after the "
                "loop, run the epoch inside `with loader.late_reports():`",
            )
        self._warn_if_behind(epoch, record)
        if self._on_epoch_end is not None:  # a copy: the hook cannot change the loader's
            self._on_epoch_end(dict(record))

    def _warn_if_behind(self, epoch: int, record: dict[str, Any]) -> None:
        """Say so when the Assistant's lag costs the run its shrinking: the Boss never waits
        for it, so a starved Assistant (its process runs at low priority) would otherwise just
        leave every epoch full."""
        starved = ("it runs at low priority so as never to slow the Boss, and gets little CPU "
                   "when every core is busy. Leave a core free for it (fewer torch threads or "
                   "DataLoader workers), or set sync=True to wait for it (slower)")
        if record.get("first_scores_wait_expired"):
            self._warn_once(
                "no_first_scores",
                f"autoassist: epoch {epoch} trained on every instance: the Assistant had "
                f"published no scores after {record.get('first_scores_waited', 0.0):.2f} s "
                "(first_scores_wait); later epochs shrink as soon as its scores come, without "
                f"waiting. If this persists (telemetry score_version stays 0): {starved}",
            )
        dropped = record.get("dropped_instances", 0) - self._dropped_seen
        self._dropped_seen = record.get("dropped_instances", 0)
        if dropped > 0:
            self._warn_once(
                "dropped_losses",
                f"autoassist: the Assistant is falling behind: {dropped} losses of epoch "
                f"{epoch} were dropped before it could take them (telemetry "
                f"dropped_instances), so its scores lag the Boss's progress: {starved}",
            )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=_caller_level())

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
            pending, self._pending_ends = self._pending_ends, []
            for epoch, batches, fields in pending:
                self._record_end(epoch, batches, fields)

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
            TypeError: ``per_sample`` is not a tensor of floating-point losses (checked
                before anything is queued: a corrected retry counts the batch once).
            ValueError: ``per_sample`` is not 1-D with one loss per id.
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
            A dict of tensors and plain Python values only (``torch.save`` stores it and
            ``torch.load(path)`` reads it with its default ``weights_only=True``): the epoch
            position, the Assistant's model, published scores, features, reports not yet
            sent, and the telemetry so far.
        """
        return safe({"version": STATE_VERSION, "num_instances": self.num_instances,
                     "epoch": self._epoch, "batches_done": self._batches_done,
                     "epoch_complete": self._epoch_complete, **self._extra_state(),
                     "engine": self.engine.state_dict()}, "loader state")

    def rank_state(self) -> dict[str, Any]:
        """The entries of ``state_dict()`` that are this data-parallel rank's own: its
        position in the epoch (its shard's batches), its sampler's state, and the engine's
        (``ShrinkEngine.rank_state``: reports not yet gathered to rank 0, telemetry).

        Where only rank 0 writes the checkpoint (Lightning), each rank's ``rank_state()`` is
        saved with rank 0's ``state_dict()``, and ``with_rank_state`` makes the rank's whole
        state from the two. Cheaper than ``state_dict()`` (no Assistant, scores or features),
        and sends nothing to the Assistant.

        Returns:
            A dict of tensors and plain Python values only (``weights_only`` loads it).
        """
        return safe({"epoch": self._epoch, "batches_done": self._batches_done,
                     "epoch_complete": self._epoch_complete, **self._extra_state(),
                     "engine": self.engine.rank_state()}, "loader rank state")

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
        if self._iteration_live():
            raise RuntimeError("load_state_dict() while an iteration of this loader is live: "
                               "break out of its loop (dropping the iterator) first")
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
        self._batches_done = self._start_position = done
        self._counts = _EpochCounts()
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
