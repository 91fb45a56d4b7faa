"""PyTorch Lightning: ``AutoAssist``, a callback that trains each epoch on the shrunk set.

    import lightning.pytorch as L
    from autoassist.lightning import AutoAssist

    aa = AutoAssist(floor=0.3)                  # autoassist.wrap's settings
    model = Model(aa)                           # training_step: return self.aa.report(per_sample)
    trainer = L.Trainer(max_epochs=10, callbacks=[aa])
    trainer.fit(model, train_dataloaders=aa.wrap(DataLoader(data, batch_size=128, shuffle=True)))

How it meets Lightning (docs/lightning.md has the details):

- ``aa.wrap(loader)`` gives Lightning an iterable without a length, not a DataLoader: Lightning
  leaves it alone (no sampler of its own added under DDP) and ends each epoch when it runs out,
  however much the epoch shrinks. The shrinking loader itself is made at the first iteration,
  in each training process (after ``ddp_spawn`` started it and the process group is up); under
  DDP its sampler becomes a ``DistributedSampler``, so each rank takes its shard of the kept set.
- Lightning fetches one batch ahead, so the batch being trained is not the one the loader
  yielded last: the ids of each yielded batch wait in a queue until ``on_train_batch_start``
  takes them, and ``report`` pairs the losses with those. The loader's epoch end (the
  Assistant's scoring request) is held until the epoch's last batch is reported.
- The loader's state (Assistant included) is the callback's ``state_dict``, so it rides in
  Lightning's checkpoints; each epoch's telemetry is logged with ``log_dict``. Lightning writes
  rank 0's checkpoint only, so under DDP ``state_dict`` (called on every rank) gathers each
  rank's own part (its position, its reports not yet sent to rank 0, its telemetry) into it,
  and each rank resumes from its own.
"""

from __future__ import annotations

import numbers
import warnings
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import timedelta
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
)

from autoassist.config import ShrinkConfig
from autoassist.engine import state_check
from autoassist.engine.distributed import rank_world
from autoassist.errors import UsageError
from autoassist.pipelines.base import with_rank_state
from autoassist.pipelines.dataloader import ShrinkingLoader, loading_settings, wrap

try:
    from lightning.pytorch import Callback
except ImportError as error:  # pragma: no cover - the extra is installed wherever tests run
    raise ImportError(
        "autoassist.lightning needs PyTorch Lightning (the `lightning` package, 2.x): "
        "pip install 'autoassist[lightning]'"
    ) from error

__all__ = ["AutoAssist", "LightningTrainLoader"]


class LightningTrainLoader:
    """What ``AutoAssist.wrap`` hands Lightning as the training loader.

    An iterable with no ``__len__`` on purpose: a shrinking epoch's length is known only once
    the epoch is planned, and Lightning fixes a sized loader's epoch length (and where it
    validates) when it first sets the loader up. Without one, Lightning prefetches a batch to
    see where each epoch ends, and validates there.
    """

    def __init__(self, callback: AutoAssist, dataloader: DataLoader):
        self.callback = callback
        self.dataloader = dataloader

    def __iter__(self) -> Iterator[Any]:
        return self.callback._iterate(self.dataloader)


class AutoAssist(Callback):
    """Trains each epoch on the instances the Assistant still finds informative.

    Give Lightning ``aa.wrap(loader)`` as the training loader (``trainer.fit(model,
    train_dataloaders=...)``, or return it from ``train_dataloader()``), add ``aa`` to the
    Trainer's callbacks, and return ``aa.report(per_sample)`` from ``training_step``. The
    callback sets the loader's epoch, shards the kept set under DDP, saves the loader and its
    Assistant in Lightning's checkpoints (a run resumed with ``ckpt_path=`` continues exactly,
    bit for bit with ``sync=True``, also under DDP with the same number of processes), logs
    each epoch's telemetry with ``log_dict`` (keys ``autoassist/<field>``) and closes the
    Assistant when ``fit`` ends, also on an exception.

    Args:
        config: a ``ShrinkConfig``, a dict of its settings, or a .toml/.json file; None for
            the defaults (as ``autoassist.wrap``).
        features: per-instance features for the Assistant (``autoassist.wrap``'s).
        inputs: ``fn(batch) -> (x, y)`` when a batch is not ``(x, y, ...)`` or a dict.
        tensorboard: a log directory for the telemetry besides Lightning's loggers.
        log_telemetry: log each epoch's telemetry through the LightningModule's ``log_dict``.
        state_timeout: under DDP, seconds a checkpoint waits for the other ranks' loader
            state (every rank saves together; a rank that never comes, as when one rank saves
            alone, costs this wait once, and the checkpoint then holds rank 0's state only,
            with a warning).
        **settings: single settings that win over ``config``'s (``floor=0.3``, ``sync=True``).

    Raises:
        UsageError: an unknown setting or one out of its range (a ``ValueError``).
        TypeError: ``config`` is of an unknown type.
        ValueError: ``state_timeout`` is not a positive number of seconds.
    """

    def __init__(self, config=None, *, features=None, inputs=None,
                 tensorboard: str | None = None, log_telemetry: bool = True,
                 state_timeout: float = 300.0, **settings):
        self.config = ShrinkConfig.coerce(config, **settings)
        if not (isinstance(state_timeout, numbers.Real) and state_timeout > 0):
            raise ValueError(f"state_timeout={state_timeout!r}: give a positive number of "
                             "seconds (the default is 300)")
        self._options = {"features": features, "inputs": inputs, "tensorboard": tensorboard}
        self.log_telemetry = log_telemetry
        self.state_timeout = float(state_timeout)
        self.loader: ShrinkingLoader | None = None
        self._source: DataLoader | None = None  # the DataLoader given to wrap(), now shrinking
        self._trainer = None
        self._loaded: dict[str, Any] | None = None  # a checkpoint's state, until the loader
        # under DDP: a gloo group of its own for gathering the ranks' states at a checkpoint,
        # with its own deadline (a lone rank's gather times out instead of hanging training)
        self._group = None
        self._yielded: deque[tuple[np.ndarray, Any]] = deque()  # yielded, not yet in training
        self._current: tuple[np.ndarray, Any] | None = None  # the batch in training_step
        self._held = ExitStack()  # the loader's epoch end, held until its last batch's report
        self._held_epoch: int | None = None
        self._ran_out = False  # the loader's iteration of the held epoch has ended
        self._logged = 0  # telemetry records logged so far
        self._telemetry: list[dict[str, Any]] = []

    # -- what the user calls -------------------------------------------------------------------
    def wrap(self, loader: DataLoader) -> LightningTrainLoader:
        """The training loader to give Lightning in place of ``loader``.

        Args:
            loader: a map-style ``torch.utils.data.DataLoader``. Under DDP its sampler is
                replaced by a ``DistributedSampler`` (shuffling if it shuffled) unless it is
                one already, as Lightning does with ``use_distributed_sampler=True``.

        Returns:
            An iterable for ``trainer.fit(train_dataloaders=...)`` or ``train_dataloader()``;
            the shrinking loader behind it is made when Lightning first iterates it.

        Raises:
            TypeError: ``loader`` is not a DataLoader (an autoassist loader included: give
                the plain one, the callback wraps it).
        """
        if not isinstance(loader, DataLoader):
            raise TypeError(
                f"AutoAssist.wrap takes the plain torch.utils.data.DataLoader, got "
                f"{type(loader).__name__}; the callback wraps it itself (do not call "
                "autoassist.wrap first)"
            )
        return LightningTrainLoader(self, loader)

    def report(self, per_sample: torch.Tensor) -> torch.Tensor:
        """Send the losses of the batch in ``training_step`` to the Assistant; return the loss.

        Args:
            per_sample: one loss per instance of the batch (``reduction="none"``), 1-D.

        Returns:
            Their mean (weighted by ``mean(P)/P_i`` with ``reweight``): return it from
            ``training_step``.

        Raises:
            RuntimeError: not inside ``training_step`` of a fit whose training loader is
                ``aa.wrap(...)``, or a second report for the same batch.
            TypeError, ValueError, FloatingPointError: the losses are not one finite
                floating-point value per instance (as ``ShrinkingLoader.report``).
        """
        if self._current is None or self.loader is None:
            raise RuntimeError(
                "AutoAssist.report() takes the per-sample losses of the batch in training_step, "
                "once per batch, during trainer.fit with train_dataloaders=aa.wrap(loader) and "
                "aa in Trainer(callbacks=[...])"
            )
        ids, batch = self._current
        loss = self.loader.report(per_sample, ids=ids, batch=batch)
        self._current = None  # only once accepted: a corrected retry counts the batch once
        return loss

    @property
    def batch_ids(self) -> np.ndarray | None:
        """Instance ids of the batch in ``training_step`` (None outside one, or once reported)."""
        return None if self._current is None else self._current[0].copy()

    @property
    def telemetry(self) -> list[dict[str, Any]]:
        """One dict per finished epoch (``ShrinkingLoader.telemetry``), also after ``fit``."""
        return self.loader.telemetry if self.loader is not None else self._telemetry

    # -- the loader ------------------------------------------------------------------------------
    def _open(self, dataloader: DataLoader) -> ShrinkingLoader:
        """The shrinking loader, made once per fit in this process (a checkpoint's state in)."""
        if self.loader is not None:
            if self._source is not dataloader:
                raise UsageError(
                    "this AutoAssist callback already shrinks another training loader in this "
                    "fit; use one callback per loader (reloading the train dataloader each "
                    "epoch is not supported: it would start a new Assistant)"
                )
            return self.loader
        trainer = self._trainer
        if trainer is None:
            raise RuntimeError("AutoAssist's loader was iterated outside trainer.fit, or the "
                               "callback is missing from Trainer(callbacks=[...])")
        self._source = dataloader
        if trainer.world_size > 1:
            dataloader = _sharded(dataloader, trainer.global_rank, trainer.world_size,
                                  self.config.seed)
        loader = wrap(dataloader, self.config, **self._options)
        if self._loaded is not None:
            try:
                state = _state_for_rank(self._loaded, trainer.global_rank, trainer.world_size)
                if state is not None:
                    loader.load_state_dict(state)
            except BaseException:
                loader.close()
                raise
            self._loaded = None
        self.loader = loader
        self._logged = len(loader.telemetry)  # a resumed run's earlier epochs were logged
        return loader

    def _iterate(self, dataloader: DataLoader) -> Iterator[Any]:
        """One epoch of the shrinking loader, for Lightning (``LightningTrainLoader``)."""
        loader = self._open(dataloader)
        self._end_held_epoch()  # an earlier epoch that Lightning stopped early
        self._yielded.clear()
        self._current = None
        self._ran_out = False
        self._held.enter_context(loader.late_reports())
        self._held_epoch = None
        for batch in loader:
            self._held_epoch = loader.epoch
            self._yielded.append((loader.batch_ids, batch))
            yield batch
        self._ran_out = True
        if not self._yielded and self._current is None:  # nothing left to report (no prefetch)
            self._end_held_epoch()

    def _end_held_epoch(self) -> None:
        """Let the held epoch end now (its scoring request, its telemetry record)."""
        self._ran_out = False
        self._held_epoch = None
        self._held.close()

    # -- Lightning's hooks -----------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        """Remember the trainer: the loader is made in its process, for its world size.
        Under DDP, make the group that gathers the ranks' states at checkpoints (every rank
        runs ``setup`` together, once the process group is up)."""
        self._trainer = trainer
        dist = torch.distributed
        if (stage == "fit" and self._group is None and trainer.world_size > 1
                and dist.is_available() and dist.is_initialized()):
            self._group = dist.new_group(backend="gloo",
                                         timeout=timedelta(seconds=self.state_timeout))

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        """Set the loader's epoch to Lightning's (it plans the epoch; under DDP every rank
        does so here, together)."""
        loader = self.loader
        if loader is None:
            return
        if self._held_epoch is not None and self._held_epoch != trainer.current_epoch:
            self._end_held_epoch()
        loader.set_epoch(trainer.current_epoch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        """The batch about to be trained is the oldest one yielded: ``report`` pairs with it."""
        self._current = self._yielded.popleft() if self._yielded else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        """After the epoch's last batch: its end (scoring request, record) goes ahead."""
        self._current = None  # an unreported batch is counted by the epoch's record
        if self._ran_out and not self._yielded:
            self._end_held_epoch()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """Log the epoch's telemetry (``autoassist/<field>``, numbers only) with ``log_dict``."""
        if self.loader is None:
            return
        records = self.loader.telemetry
        if not self.log_telemetry or len(records) <= self._logged:
            self._logged = len(records)
            return
        self._logged = len(records)
        metrics = {f"autoassist/{key}": float(value) for key, value in records[-1].items()
                   if key != "epoch" and isinstance(value, numbers.Real)
                   and np.isfinite(value)}
        if trainer.global_rank == 0:  # rank 0's record holds the Assistant's figures
            pl_module.log_dict(metrics, on_step=False, on_epoch=True, rank_zero_only=True)

    def state_dict(self) -> dict[str, Any]:
        """The loader's state (epoch, position, Assistant, scores, features, telemetry).

        Lightning calls it on every rank and writes rank 0's result only. Under DDP each rank
        therefore sends its own part (``ShrinkingLoader.rank_state()``: its position, its
        reports not yet gathered to rank 0, its telemetry) to rank 0 here, in one
        ``gather_object`` on the callback's own gloo group, within ``state_timeout``;
        nothing is sent to the Assistant, so a run that checkpoints trains as one that does
        not.

        Returns:
            On rank 0 (or without DDP): ``{"loader": ShrinkingLoader.state_dict(),
            "world_size": W, "ranks": [rank 1's part, ..., rank W-1's]}`` ("ranks" None when
            the other ranks' parts did not come), empty before the loader exists. On a rank
            > 0: ``{"rank": r, "world_size": W, "rank_state": its part}``, for rank 0's
            gather. Each position counts only the batches Lightning has trained: a batch
            fetched ahead is yielded again after a resume.
        """
        if self.loader is None:
            return {} if self._loaded is None else self._loaded
        rank, world = self._rank_world()
        parts = None
        if world > 1:  # the parts first: rank 0's own state may wait for its Assistant
            own = self._trained_part(self.loader.rank_state())
            parts = self._gather_rank_states(own)
            if rank > 0:
                return {"rank": rank, "world_size": world, "rank_state": own}
        state = self._trained_part(self.loader.state_dict())
        return {"loader": state, "world_size": world,
                "ranks": None if parts is None else parts[1:]}

    def _trained_part(self, state: dict[str, Any]) -> dict[str, Any]:
        """``state`` with the batches fetched ahead (not trained yet) given back."""
        if self._yielded:
            state["batches_done"] -= len(self._yielded)
            state["epoch_complete"] = False
        return state

    def _rank_world(self) -> tuple[int, int]:
        """This process's rank and the number of training processes (the trainer's)."""
        trainer = self._trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else rank_world()

    def _gather_rank_states(self, own: dict[str, Any]) -> list | None:
        """Every rank's part, in rank order, on rank 0 (None on the others); None, with a
        warning, when a rank did not come within ``state_timeout``: the group is then given
        up, and later checkpoints hold rank 0's state only."""
        dist = torch.distributed
        group = self._group
        if group is None:  # given up after a timeout (warned then), or no process group
            return None
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        received = [None] * world if rank == 0 else None
        try:
            dist.gather_object(own, received, dst=0, group=group)
        except RuntimeError as error:  # gloo's deadline (DistBackendError is a RuntimeError)
            self._group = None
            warnings.warn(
                f"autoassist: rank {rank}'s checkpoint did not meet the other ranks' within "
                f"state_timeout={self.state_timeout:g} s ({error}); the checkpoint holds rank "
                "0's loader state only, and a resume from it is not bit-identical (every "
                "rank takes rank 0's state). Save checkpoints on every rank at the same point "
                "(trainer.save_checkpoint on all ranks, as ModelCheckpoint does), or raise "
                "AutoAssist(state_timeout=...)", RuntimeWarning, stacklevel=3)
            return None
        return received

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep a checkpoint's loader state for the loader, which is made at the first
        iteration (or load it now into an open one); under DDP each rank takes its own part.

        Raises:
            ValueError: the state cannot be loaded (``ShrinkingLoader.load_state_dict``'s
                checks, when the loader is open already); or a ``UsageError``: it was saved
                in the middle of an epoch by another number of processes, or it is a rank's
                part rather than rank 0's checkpoint (``_state_for_rank``).
        """
        if not state_dict:
            return
        if self.loader is None:
            self._loaded = state_dict
            return
        state = _state_for_rank(state_dict, *self._rank_world())
        if state is not None:
            self.loader.load_state_dict(state)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """Stop the Assistant when ``fit`` fails."""
        self.close()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        """Stop the Assistant and free its shared memory when ``fit`` ends."""
        if stage == "fit":
            self.close()

    def close(self) -> None:
        """Close the loader (its Assistant, shared memory, workers); idempotent. The
        telemetry stays readable."""
        loader, self.loader = self.loader, None
        self._yielded.clear()
        self._current = None
        group, self._group = self._group, None
        if group is not None and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group(group)
        if loader is None:
            return
        try:
            self._held.close()
        finally:
            self._telemetry = list(loader.telemetry)
            loader.close()


def _sharded(dataloader: DataLoader, rank: int, world: int, seed: int) -> DataLoader:
    """``dataloader`` with a ``DistributedSampler`` (the shrinking loader shards the kept set
    by its rule), unless its sampler is one already."""
    sampler = dataloader.sampler
    if isinstance(sampler, DistributedSampler):
        return dataloader
    plain = isinstance(sampler, (RandomSampler, SequentialSampler))
    if type(dataloader.batch_sampler) is not BatchSampler or not plain:
        raise UsageError(
            f"under DDP, AutoAssist shards the kept set with a DistributedSampler, which "
            f"replaces only a plain shuffled or sequential sampler; this DataLoader has "
            f"{type(sampler).__name__} and {type(dataloader.batch_sampler).__name__}. Give a "
            "DataLoader with shuffle=True/False and batch_size, or one whose sampler is your "
            "own DistributedSampler"
        )
    shard = DistributedSampler(dataloader.dataset, num_replicas=world, rank=rank,
                               shuffle=isinstance(sampler, RandomSampler), seed=seed)
    return DataLoader(dataloader.dataset, batch_size=dataloader.batch_size, sampler=shard,
                      drop_last=dataloader.drop_last, **loading_settings(dataloader))


def _state_for_rank(saved: dict[str, Any], rank: int, world: int) -> dict[str, Any] | None:
    """Rank ``rank``'s loader state (of ``world``) from the callback state a checkpoint holds
    (``AutoAssist.state_dict()`` of rank 0); None when it holds none.

    Same world size: rank 0 takes ``loader``, rank r rank 0's with its own part in place
    (``with_rank_state``). Another world size is fine at an epoch's end (shards are cut
    afresh from the next plan; rank 0's Assistant takes the reports the saved ranks had not
    sent yet, and every rank rank 0's records), but not in the middle of an epoch, whose
    position counts batches of the saved ranks' shards.
    """
    shared = saved.get("loader")
    if shared is None:
        if "rank_state" in saved:
            raise UsageError(
                f"this AutoAssist state is rank {saved.get('rank')}'s part of a checkpoint, "
                "for rank 0's; resume from the checkpoint rank 0 wrote (Lightning's "
                "ckpt_path=)")
        return None
    if saved.get("world_size") is None:  # written before per-rank parts: rank 0's for all
        return shared
    saved_world = state_check.integer(saved["world_size"], "AutoAssist state['world_size']",
                                      low=1)
    parts = saved.get("ranks")
    if parts is not None:
        parts = state_check.sequence(parts, "AutoAssist state['ranks']", saved_world - 1)
        for r, part in enumerate(parts, 1):
            state_check.as_dict(part, f"AutoAssist state['ranks'][{r - 1}] (rank {r})")
    if saved_world == world:
        if rank == 0:
            return shared
        if parts is None:
            warnings.warn(
                "autoassist: this checkpoint holds rank 0's loader state only (the other "
                "ranks' did not reach it when it was saved); every rank resumes from rank "
                "0's, so the run goes on but not bit-identically", RuntimeWarning,
                stacklevel=3)
            return shared
        return with_rank_state(shared, parts[rank - 1])
    positions = [shared, *(parts or [])]
    if not all(bool(p.get("epoch_complete")) for p in positions):
        raise UsageError(
            f"this checkpoint was saved in the middle of epoch {shared.get('epoch')} by "
            f"{saved_world} process(es), and this run has {world}: the saved position counts "
            f"batches of {saved_world} shards. Resume it with {saved_world} process(es) "
            "(Trainer(devices=..., num_nodes=...)), or from a checkpoint saved at an epoch's "
            "end (ModelCheckpoint(every_n_epochs=1))")
    if rank != 0 or not parts:
        return shared
    outgoing = []
    for r, part in enumerate(parts, 1):
        where = f"AutoAssist state['ranks'][{r - 1}]['engine']"
        engine = state_check.as_dict(state_check.get(part, "engine", where[:-10]), where)
        outgoing += state_check.sequence(engine.get("outgoing", []), f"{where}['outgoing']")
    engine = state_check.get(shared, "engine", "AutoAssist state['loader']")
    return {**shared, "engine": {**engine, "outgoing": outgoing}}
