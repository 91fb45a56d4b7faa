"""``autoassist.wrap(loader)``: the shrinking DataLoader.

The wrapper rebuilds the user's DataLoader around its own batch sampler and leaves dataset,
collate_fn, workers and pinning untouched. Each epoch:

1. the engine's plan (``autoassist.engine.ShrinkEngine.plan``) takes a snapshot of the
   Assistant's scores and keeps instance i with probability ``b + (1 - b) * p_i``
   (``autoassist.kernels.keep_mask``: counter-based random numbers, so the same seed gives the
   same choice on every rank and at any thread count, from NumPy or the Numba kernel alike);
2. the batch sampler walks the user's sampler order, drops the shrunk instances and batches the
   rest exactly as the user's BatchSampler would (``batch_size``, ``drop_last``);
3. every batch's instance ids go into a FIFO as the sampler emits them. DataLoader delivers batches
   in sampler order (also with workers), so the batch the user holds is the FIFO's head, and
   ``report(per_sample)`` pairs its losses with those ids for the Assistant.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    Sampler,
)

from autoassist.config import ShrinkConfig
from autoassist.engine import ShrinkEngine

_CHUNK = 4096
_ITERABLE_NEEDS_KEY = (
    "this loader's dataset is an IterableDataset: its items have no ids, so pass "
    "key=lambda item: <instance id> and num_instances=N to autoassist.wrap"
)
STATE_VERSION = 1


def _is_default_batching(batch_sampler) -> bool:
    """torch's BatchSampler, or torchdata StatefulDataLoader's (same batching, plus state)."""
    cls = type(batch_sampler)
    return cls is BatchSampler or (
        cls.__name__ == "BatchSampler"
        and cls.__module__.startswith("torchdata.stateful_dataloader")
    )


def _chunked(it: Iterator[int]) -> Iterator[np.ndarray]:
    """The sampler's indices in NumPy chunks: vectorised filtering, and infinite samplers work."""
    while True:
        chunk = np.fromiter(itertools.islice(it, _CHUNK), np.int64)
        if len(chunk) == 0:
            return
        yield chunk


class _ShrinkBatchSampler(Sampler[list[int]]):
    """Filters the user's sampler order by this epoch's keep mask and batches what is kept."""

    def __init__(self, owner: ShrinkingLoader):
        self.owner = owner

    def __len__(self) -> int:
        return self.owner._expected_batches()

    def __iter__(self) -> Iterator[list[int]]:
        owner = self.owner
        fifo, skip = owner._fifo, owner._skip_batches
        owner._skip_batches = 0
        for ids in owner._epoch_batches():
            if skip:
                skip -= 1
                continue
            fifo.append(ids)
            yield ids.tolist()


class _EngineLoader:
    """What every autoassist loader shares: an engine, epochs, ``report``, telemetry, closing."""

    engine: ShrinkEngine
    num_instances: int
    _last_ids: np.ndarray | None = None
    _last_batch: Any = None
    _closed: bool = False
    _epoch: int = 0
    _epoch_set: bool = False
    _epoch_complete: bool = False
    _batches_done: int = 0
    _defer_end: bool = False
    _pending_end: tuple[int, int] | None = None

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

    # -- epochs ----------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` at the next ``iter()`` (as DistributedSampler.set_epoch)."""
        if int(epoch) != epoch or epoch < 0:
            raise ValueError(f"set_epoch takes a non-negative integer, got {epoch!r}")
        epoch = int(epoch)
        if epoch != self._epoch or self._epoch_complete:
            self._epoch = epoch
            self._batches_done = 0
            self._epoch_complete = False
            self._forget_epoch_position()
        self._epoch_set = True

    def _forget_epoch_position(self) -> None:
        """Hook for loaders that keep more per-epoch position state than ``_batches_done``."""

    def _start_epoch(self) -> None:
        """At ``iter()``: a finished epoch not followed by set_epoch advances by one."""
        if self._closed:
            raise RuntimeError("this autoassist loader was closed; wrap the DataLoader again")
        if self._epoch_complete and not self._epoch_set:
            self.set_epoch(self._epoch + 1)
        self._epoch_set = False
        self._epoch_complete = False

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

    def report(self, per_sample: torch.Tensor, ids=None, batch: Any = None) -> torch.Tensor:
        """Send per-instance losses to the Assistant; return the (re)weighted mean loss.

        ``per_sample`` is a 1-D tensor with one loss per instance of the batch most recently
        yielded (or of ``ids``, whose collated ``batch`` lets the default features be computed).
        Only detached copies go to the Assistant.
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
        return self.engine.report(per_sample, _as_ids(ids, self.num_instances), batch)

    @property
    def telemetry(self) -> list[dict[str, Any]]:
        """One dict per finished epoch: kept fraction, Assistant accuracy, drops, times."""
        return self.engine.telemetry

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
        except Exception:  # interpreter shutdown: nothing left to clean
            pass


def _check_state_version(state: dict[str, Any]) -> None:
    if state.get("version") != STATE_VERSION:
        raise ValueError(
            f"loader state version {state.get('version')!r} is not {STATE_VERSION}; it was "
            "saved by an incompatible autoassist"
        )


def _as_ids(ids, n: int) -> np.ndarray:
    """User-given ids (list, array or tensor on any device) as checked int64 NumPy ids."""
    return _check_ids(np.asarray(torch.as_tensor(ids).cpu(), dtype=np.int64).reshape(-1), n)


def _check_ids(ids: np.ndarray, n: int) -> np.ndarray:
    if len(ids) and (ids.min() < 0 or ids.max() >= n):
        bad = ids[(ids < 0) | (ids >= n)][0]
        raise IndexError(
            f"instance id {bad} is out of range: the dataset has {n} instances; "
            "fix the sampler, the dataset's __len__, or the ids passed to report()"
        )
    return ids


class ShrinkingLoader(_EngineLoader):
    """A DataLoader that trains on the instances the Assistant still finds informative.

    Use exactly like the loader it wraps, plus ``set_epoch``, ``report``, ``state_dict``,
    ``load_state_dict`` and ``close`` (also a context manager). See ``autoassist.wrap``.
    """

    def __init__(self, loader: DataLoader, config=None, *, features=None, inputs=None,
                 tensorboard: str | None = None, **options):
        if not isinstance(loader, DataLoader):
            raise TypeError(
                f"autoassist.wrap expects a torch.utils.data.DataLoader, got {type(loader)}; "
                "for torchdata nodes use autoassist.pipelines.nodes.ShrinkSampler"
            )
        if isinstance(loader.dataset, IterableDataset):
            raise TypeError(_ITERABLE_NEEDS_KEY)
        if loader.batch_size is None and loader.batch_sampler is None:
            raise ValueError(
                "autoassist.wrap needs batched loading; this DataLoader has batch_size=None "
                "(automatic batching off). Pass batch_size=... to the DataLoader"
            )
        if getattr(loader, "in_order", True) is False:
            raise ValueError(
                "DataLoader(in_order=False) may deliver batches out of sampler order, so "
                "losses could not be matched to instances; use in_order=True (the default)"
            )
        self.config = ShrinkConfig.coerce(config, **options)
        self.user_loader = loader
        self.num_instances = len(loader.dataset)
        if self.num_instances == 0:
            raise ValueError("the DataLoader's dataset is empty")

        default_batching = _is_default_batching(loader.batch_sampler)
        if default_batching:
            self._sampler = copy.copy(loader.batch_sampler.sampler)
            self._batch_size = loader.batch_sampler.batch_size
            self._drop_last = loader.batch_sampler.drop_last
            self._user_batch_sampler = None
        else:  # a custom batch sampler: filter inside its batches, keep its grouping
            self._sampler = None
            self._batch_size = None
            self._drop_last = False
            self._user_batch_sampler = loader.batch_sampler
        self._owns_generator = (
            self._sampler is not None
            and hasattr(self._sampler, "generator")
            and self._sampler.generator is None
        )

        self.engine = ShrinkEngine(self.num_instances, self.config, features=features,
                                   inputs=inputs, tensorboard=tensorboard)
        self._fifo: deque[np.ndarray] = deque()
        self._skip_batches = 0
        self._generator_state: torch.Tensor | None = None

        kwargs = dict(
            batch_sampler=_ShrinkBatchSampler(self),
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            timeout=loader.timeout,
            worker_init_fn=loader.worker_init_fn,
            multiprocessing_context=loader.multiprocessing_context,
            generator=loader.generator,
            persistent_workers=loader.persistent_workers,
            pin_memory_device=getattr(loader, "pin_memory_device", ""),
        )
        if loader.num_workers > 0:
            kwargs["prefetch_factor"] = loader.prefetch_factor
        self._loader = DataLoader(loader.dataset, **kwargs)

    # -- epochs ----------------------------------------------------------------------------------
    def _forget_epoch_position(self) -> None:
        self._generator_state = None

    def _begin_iteration(self) -> None:
        self._start_epoch()
        if self._batches_done == 0:
            self._generator_state = None
        self._skip_batches = self._batches_done
        self._fifo = deque()
        self.engine.plan(self._epoch)

    def _prepare_sampler(self) -> None:
        sampler = self._sampler
        if sampler is None:
            if hasattr(self._user_batch_sampler, "set_epoch"):
                self._user_batch_sampler.set_epoch(self._epoch)
            return
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self._epoch)
        if self._owns_generator:
            # Our copy of the sampler gets a generator seeded by (seed, epoch): reproducible
            # orders and exact mid-epoch resume, without touching torch's global RNG.
            seed = (self.config.seed * 1_000_003 + self._epoch * 7_919 + 12_345) % (2**63)
            sampler.generator = torch.Generator().manual_seed(seed)
        gen = getattr(sampler, "generator", None)
        if isinstance(gen, torch.Generator):
            if self._generator_state is None:
                self._generator_state = gen.get_state()
            else:
                gen.set_state(self._generator_state)  # resume: replay this epoch's order

    def _epoch_batches(self) -> Iterator[np.ndarray]:
        self._prepare_sampler()
        mask = self.engine.current.mask
        n = self.num_instances
        if self._sampler is None:
            for batch in self._user_batch_sampler:
                ids = _check_ids(np.asarray(batch, dtype=np.int64).reshape(-1), n)
                if mask is not None:
                    ids = ids[mask[ids]]
                if len(ids):
                    yield ids
            return
        if isinstance(self._sampler, DistributedSampler):
            order = self._distributed_order(mask)
            chunks: Iterator[np.ndarray] = iter([order])
        else:
            chunks = _chunked(iter(self._sampler))
        carry = np.empty(0, np.int64)
        bs = self._batch_size
        for chunk in chunks:
            if len(chunk) == 0:
                break
            chunk = _check_ids(chunk, n)
            if mask is not None and not isinstance(self._sampler, DistributedSampler):
                chunk = chunk[mask[chunk]]
            carry = np.concatenate([carry, chunk]) if len(carry) else chunk
            full = len(carry) // bs * bs
            for start in range(0, full, bs):
                yield carry[start : start + bs]
            carry = carry[full:]
        if len(carry) and not self._drop_last:
            yield carry

    def _distributed_order(self, mask: np.ndarray | None) -> np.ndarray:
        """Equal-length, disjoint shards of the *kept* set (DistributedSampler's rule on it)."""
        s = self._sampler
        n = self.num_instances
        if s.shuffle:
            g = torch.Generator().manual_seed(s.seed + self._epoch)
            order = torch.randperm(n, generator=g).numpy()
        else:
            order = np.arange(n, dtype=np.int64)
        if mask is not None:
            order = order[mask[order]]
        world, rank = s.num_replicas, s.rank
        if s.drop_last:
            order = order[: len(order) // world * world]
        else:
            pad = (-len(order)) % world
            if pad:
                order = np.concatenate([order, np.resize(order, pad)])
        return order[rank::world].astype(np.int64)

    def _expected_batches(self) -> int:
        plan = self.engine.plan(self._epoch)
        if self._sampler is None:
            return len(self._user_batch_sampler)
        kept = plan.kept
        if isinstance(self._sampler, DistributedSampler):
            world = self._sampler.num_replicas
            kept = kept // world if self._sampler.drop_last else -(-kept // world)
        elif plan.mask is None:
            kept = len(self._sampler)
        if self._drop_last:
            return kept // self._batch_size
        return -(-kept // self._batch_size)

    def __len__(self) -> int:
        """Batches in the current epoch (fewer than the wrapped loader's when shrinking)."""
        return self._expected_batches()

    # -- iteration --------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        self._begin_iteration()
        for batch in self._loader:
            self._last_ids = self._fifo.popleft()
            self._last_batch = batch
            self._batches_done += 1
            yield batch
        self._finish_epoch()

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "num_instances": self.num_instances,
            "epoch": self._epoch,
            "batches_done": self._batches_done,
            "epoch_complete": self._epoch_complete,
            "generator_state": self._generator_state,
            "engine": self.engine.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state_version(state)
        if state["num_instances"] != self.num_instances:
            raise ValueError(
                f"this state comes from a dataset of {state['num_instances']} instances but the "
                f"wrapped dataset has {self.num_instances}: load it into a loader over the same "
                "dataset"
            )
        self.engine.load_state_dict(state["engine"])
        self._epoch = state["epoch"]
        self._batches_done = state["batches_done"]
        self._epoch_complete = state["epoch_complete"]
        self._generator_state = state["generator_state"]
        self._epoch_set = not self._epoch_complete
        self._last_ids = None
        self._last_batch = None

    def __getattr__(self, name: str) -> Any:
        # dataset, batch_size, num_workers ... read through to the wrapped loader
        if name.startswith("_") or name in ("engine", "config", "user_loader"):
            raise AttributeError(name)
        return getattr(self.user_loader, name)


def wrap(loader: DataLoader, config=None, *, key=None, num_instances: int | None = None,
         **options) -> ShrinkingLoader:
    """Wrap any ``torch.utils.data.DataLoader`` in the shrinking loader.

    Map-style datasets need nothing more. Iterable-style datasets need ``key=fn(item) -> id``
    and ``num_instances=N`` (ids in ``[0, N)``): the stream is filtered by the kept ids.

    ``config``: a ``ShrinkConfig``, a dict, or a .toml/.json file (``autoassist tune`` writes
    one); keyword ``options`` override single settings (``floor=0.3, reweight=True``, ...).
    ``features``: a ``Tensor[N, d]`` of per-instance features, or ``fn(batch) -> Tensor[B, d]``
    with ``feature_dim=d`` (default: a random projection of the input plus the class label).
    ``inputs``: ``fn(batch) -> (x, y)`` when the batch's structure is not (x, y, ...) or a dict.
    ``tensorboard``: a log directory for per-epoch telemetry.
    """
    if isinstance(loader, ShrinkingLoader):
        warnings.warn("loader is already wrapped; returning it unchanged", stacklevel=2)
        return loader
    if key is not None or isinstance(getattr(loader, "dataset", None), IterableDataset):
        if key is None:
            raise TypeError(_ITERABLE_NEEDS_KEY)
        from autoassist.pipelines.keyed import KeyedShrinkingLoader

        return KeyedShrinkingLoader(loader, config, key=key, num_instances=num_instances,
                                    **options)
    if num_instances is not None and num_instances != len(loader.dataset):
        raise ValueError(
            f"num_instances={num_instances} but the map-style dataset has "
            f"{len(loader.dataset)} instances; leave num_instances out for map-style datasets"
        )
    return ShrinkingLoader(loader, config, **options)
