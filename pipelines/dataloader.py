"""``autoassist.wrap(loader)``: the shrinking DataLoader.

The wrapper rebuilds the user's DataLoader around its own batch sampler and leaves dataset,
collate_fn, workers and pinning untouched. Each epoch:

1. ``set_epoch(e)`` (or else ``iter()``) makes the epoch's plan
   (``autoassist.engine.ShrinkEngine.plan``): from a snapshot of the Assistant's scores it keeps
   instance i with probability ``b + (1 - b) * p_i`` (``autoassist.kernels.keep_mask``:
   counter-based random numbers, so the same seed gives the same choice on every rank and at
   any thread count, from NumPy or the Numba kernel alike); ``len(loader)`` reads the plan;
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
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from autoassist.config import ShrinkConfig
from autoassist.engine import EpochPlan, state_check
from autoassist.pipelines.base import EngineLoader, check_ids

_CHUNK = 4096
_ITERABLE_NEEDS_KEY = (
    "this loader's dataset is an IterableDataset: its items have no ids, so pass "
    "key=lambda item: <instance id> and num_instances=N to autoassist.wrap"
)


def _is_default_batching(batch_sampler) -> bool:
    """torch's BatchSampler, or torchdata StatefulDataLoader's (same batching, plus state)."""
    cls = type(batch_sampler)
    return cls is BatchSampler or (
        cls.__name__ == "BatchSampler"
        and cls.__module__.startswith("torchdata.stateful_dataloader")
    )


def _draws_each_once(sampler, n: int) -> bool:
    """Whether ``sampler`` draws each of the ``n`` instances exactly once per epoch (torch's,
    or StatefulDataLoader's, SequentialSampler, and RandomSampler without replacement over the
    whole data set): then an epoch keeps exactly the plan's count."""
    cls = type(sampler)
    stateful = cls.__module__.startswith("torchdata.stateful_dataloader")
    if isinstance(sampler, SequentialSampler) or (stateful and cls.__name__ == "SequentialSampler"):
        return len(sampler) == n
    if isinstance(sampler, RandomSampler) or (stateful and cls.__name__ == "RandomSampler"):
        return not sampler.replacement and sampler.num_samples == n
    return False


def _whole_order(sampler, n: int) -> np.ndarray | None:
    """The epoch's order of torch's own ``SequentialSampler`` or ``RandomSampler`` (each
    instance once, a ``torch.Generator``) drawn in one call, not an index at a time through the
    sampler's generator (~0.1 s per million instances, as much as a small Boss's epoch); None
    for any other sampler. The RandomSampler draw is the sampler's own calls on its generator,
    which ``ShrinkingLoader`` checks against the sampler once before relying on it."""
    if type(sampler) is SequentialSampler and len(sampler) == n:
        return np.arange(n, dtype=np.int64)
    if (type(sampler) is RandomSampler and not sampler.replacement and sampler.num_samples == n
            and isinstance(sampler.generator, torch.Generator)):
        order = torch.randperm(n, generator=sampler.generator)
        torch.randperm(n, generator=sampler.generator)  # its tail's draw (``num_samples % n``)
        return order.numpy().astype(np.int64, copy=False)
    return None


def _chunked(it: Iterator[int]) -> Iterator[np.ndarray]:
    """The sampler's indices in NumPy chunks: vectorised filtering, and infinite samplers work."""
    while True:
        chunk = np.fromiter(itertools.islice(it, _CHUNK), np.int64)
        if len(chunk) == 0:
            return
        yield chunk


def _weak(method: Callable) -> Callable:
    """``method`` (bound) without a strong reference to its object."""
    ref = weakref.WeakMethod(method)

    def call(*args):
        bound = ref()
        if bound is None:
            raise ReferenceError("the autoassist loader of this batch sampler is gone")
        return bound(*args)

    return call


def _shutdown_workers(loader: DataLoader) -> None:
    """End ``loader``'s persistent worker processes now: DataLoader keeps them in its cached
    iterator, which ends them only when garbage-collected."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is None:
        return
    loader._iterator = None
    shutdown = getattr(iterator, "_shutdown_workers", None)  # torch's own clean-up
    if shutdown is not None:
        shutdown()


def _batched(chunks: Iterator[np.ndarray], mask: np.ndarray | None, n: int, batch_size: int,
             drop_last: bool) -> Iterator[np.ndarray]:
    """Batches of the kept ids of ``chunks`` (the sampler's order), as its BatchSampler
    would cut them."""
    carry = np.empty(0, np.int64)
    for chunk in chunks:
        if len(chunk) == 0:
            break
        chunk = check_ids(chunk, n)
        if mask is not None:
            chunk = chunk[mask[chunk]]
        carry = np.concatenate([carry, chunk]) if len(carry) else chunk
        full = len(carry) // batch_size * batch_size
        for start in range(0, full, batch_size):
            yield carry[start : start + batch_size]
        carry = carry[full:]
    if len(carry) and not drop_last:
        yield carry


def _filter_batches(batches: Iterator, mask: np.ndarray | None, n: int
                    ) -> Iterator[np.ndarray]:
    """A custom batch sampler's batches, less the instances ``mask`` drops (empty ones go)."""
    for batch in batches:
        ids = check_ids(np.asarray(batch, dtype=np.int64).reshape(-1), n)
        if mask is not None:
            ids = ids[mask[ids]]
        if len(ids):
            yield ids


def loading_settings(loader: DataLoader) -> dict[str, Any]:
    """``loader``'s keyword arguments besides its dataset and how it samples and batches
    (workers, collate_fn, pinning, ...): a DataLoader rebuilt with them loads as ``loader``."""
    kwargs = dict(
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
    return kwargs


class _ShrinkBatchSampler(Sampler[list[int]]):
    """Filters the user's sampler order by this epoch's keep mask and batches what is kept.

    It is given what it needs: ``epoch_batches()``, the epoch's id batches; ``length()``, the
    epoch's number of batches; and, before each iteration (``next_iteration``), how many
    leading batches a resumed epoch skips and where each emitted batch's ids go.
    """

    def __init__(self, epoch_batches: Callable[[], Iterator[np.ndarray]],
                 length: Callable[[], int]):
        self._epoch_batches = epoch_batches
        self._length = length
        self._skip = 0
        self._push: Callable[[np.ndarray], Any] | None = None

    def next_iteration(self, skip: int, push: Callable[[np.ndarray], Any]) -> None:
        """The next ``iter()`` leaves out ``skip`` batches and hands each batch's ids to
        ``push`` as it emits the batch."""
        self._skip, self._push = skip, push

    def __len__(self) -> int:
        return self._length()

    def __iter__(self) -> Iterator[list[int]]:
        skip, push = self._skip, self._push
        self._skip = 0
        for ids in self._epoch_batches():
            if skip:
                skip -= 1
                continue
            if push is not None:
                push(ids)
            yield ids.tolist()


def _prepared(prepare: Callable[[DataLoader], DataLoader], loader: DataLoader,
              batch_sampler: Sampler) -> DataLoader:
    """``prepare(loader)``, checked to still draw its batches from ``batch_sampler`` (so that
    each yielded batch's ids are known, in order)."""
    if not callable(prepare):
        raise TypeError(f"prepare must be a function DataLoader -> DataLoader (e.g. "
                        f"accelerator.prepare), got {type(prepare).__name__}")
    out = prepare(loader)
    if not isinstance(out, DataLoader) or out.batch_sampler is not batch_sampler:
        raise ValueError(
            f"prepare({type(loader).__name__}) returned {type(out).__name__} that does not draw "
            "its batches from the shrinking batch sampler it was given (a sharding wrapper, as "
            "accelerate adds with several processes?): the shrinking loader could not tell which "
            "instances each batch holds. Use prepare only where it keeps the batch sampler "
            "(accelerate on one process), or shard the DataLoader with a DistributedSampler "
            "before wrapping"
        )
    return out


class ShrinkingLoader(EngineLoader):
    """A DataLoader that trains on the instances the Assistant still finds informative.

    Use exactly like the loader it wraps, plus ``set_epoch``, ``report``, ``state_dict``,
    ``load_state_dict`` and ``close`` (also a context manager); other attributes (``dataset``,
    ``batch_size``, ...) are the wrapped loader's. Made by ``autoassist.wrap``, whose
    docstring lists the arguments.
    """

    def __init__(self, loader: DataLoader, config=None, *, features=None, inputs=None,
                 tensorboard: str | None = None, on_epoch_end=None,
                 prepare: Callable[[DataLoader], DataLoader] | None = None, **options):
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
        config = ShrinkConfig.coerce(config, **options)
        self.user_loader = loader
        if len(loader.dataset) == 0:
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

        super().__init__(len(loader.dataset), config, features=features, inputs=inputs,
                         tensorboard=tensorboard, on_epoch_end=on_epoch_end)
        self._generator_state: torch.Tensor | None = None
        self._drawn: tuple[int, np.ndarray] | None = None  # (epoch, draws): _drawn_order
        self._whole_order_ok: bool | None = None  # _whole_epoch_order agrees (None: unchecked)
        # weakly: the DataLoader holds the batch sampler, so a strong reference back would make
        # a cycle that keeps this loader (and its persistent workers) alive until a GC
        self._batch_sampler = _ShrinkBatchSampler(_weak(self._epoch_batches),
                                                  _weak(self.__len__))

        self._loader = DataLoader(loader.dataset, batch_sampler=self._batch_sampler,
                                  **loading_settings(loader))
        if prepare is not None:
            try:
                self._loader = _prepared(prepare, self._loader, self._batch_sampler)
            except BaseException:
                self.close()  # the engine has started its Assistant
                raise

    # -- epochs ----------------------------------------------------------------------------------
    def _forget_epoch_position(self) -> None:
        self._generator_state = None
        self._drawn = None

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

    def _counts_by_plan(self) -> bool:
        """Whether the plan's count is this epoch's: the sampler draws every instance once
        (or is a DistributedSampler, whose shards are cut from the kept set)."""
        return isinstance(self._sampler, DistributedSampler) or _draws_each_once(
            self._sampler, self.num_instances)

    def _drawn_order(self) -> np.ndarray | None:
        """The epoch's draws of a sampler that does not draw each instance once (a subset,
        weights, replacement, a sampler of the user's), drawn once per epoch, so that
        ``len()``, the iteration and the telemetry count the same draws; None for a sampler
        without a length (endless)."""
        if self._drawn is not None and self._drawn[0] == self._epoch:
            return self._drawn[1]
        try:
            len(self._sampler)
        except TypeError:
            return None
        self._prepare_sampler()  # the generator as the epoch starts (or a resumed epoch's)
        order = check_ids(np.fromiter(iter(self._sampler), np.int64), self.num_instances)
        self._drawn = (self._epoch, order)
        return order

    def _epoch_batches(self) -> Iterator[np.ndarray]:
        """The current epoch's batches of kept ids, in the user's sampler order (a generator
        that holds no reference to the loader: the DataLoader keeps it while suspended)."""
        mask = self.engine.current.mask
        n = self.num_instances
        if self._sampler is None:
            self._prepare_sampler()
            return _filter_batches(iter(self._user_batch_sampler), mask, n)
        if isinstance(self._sampler, DistributedSampler):
            self._prepare_sampler()
            return _batched(iter([self._distributed_order(mask)]), None, n, self._batch_size,
                            self._drop_last)
        order = None if self._counts_by_plan() else self._drawn_order()
        if order is None and self._whole_order_ok is not False:
            order = self._whole_epoch_order()
        if order is not None:
            return _batched(iter([order]), mask, n, self._batch_size, self._drop_last)
        self._prepare_sampler()
        return _batched(_chunked(iter(self._sampler)), mask, n, self._batch_size,
                        self._drop_last)

    def _whole_epoch_order(self) -> np.ndarray | None:
        """The epoch's order in one draw (``_whole_order``), once it has been seen to equal
        the sampler's own iteration and leave its generator in the same state (checked on the
        first epoch: a torch whose sampler draws otherwise falls back to iterating it)."""
        self._prepare_sampler()
        sampler = self._sampler
        gen = getattr(sampler, "generator", None)
        before = gen.get_state() if isinstance(gen, torch.Generator) else None
        order = _whole_order(sampler, self.num_instances)
        if order is None:
            self._whole_order_ok = False
            return None
        if self._whole_order_ok is None:  # the first time: the sampler's own draw must agree
            after = gen.get_state() if before is not None else None
            if before is not None:
                gen.set_state(before)
            own = np.fromiter(iter(sampler), np.int64)
            same_state = before is None or torch.equal(gen.get_state(), after)
            self._whole_order_ok = bool(same_state and np.array_equal(own, order))
            order = own  # the sampler's own, either way (its generator is where it left it)
        return order

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

    def _kept_draws(self, plan: EpochPlan) -> int:
        """How many instances this process's sampler hands over in the epoch of ``plan``,
        before batching (the draws the plan keeps, repeats included)."""
        kept = plan.kept
        if isinstance(self._sampler, DistributedSampler):
            world = self._sampler.num_replicas
            return kept // world if self._sampler.drop_last else -(-kept // world)
        if self._counts_by_plan():
            return kept if plan.mask is not None else len(self._sampler)
        order = self._drawn_order()
        if order is None:  # an endless sampler: the plan's count is all there is
            return kept if plan.mask is not None else len(self._sampler)
        return len(order) if plan.mask is None else int(np.count_nonzero(plan.mask[order]))

    def _batches_in(self, plan: EpochPlan) -> int:
        """How many batches the epoch of ``plan`` yields."""
        if self._sampler is None:
            return len(self._user_batch_sampler)
        kept = self._kept_draws(plan)
        if self._drop_last:
            return kept // self._batch_size
        return -(-kept // self._batch_size)

    def _epoch_record(self, plan: EpochPlan | None) -> dict[str, Any]:
        """The epoch's counts over what the sampler drew: ``epoch_instances`` (its draws),
        ``kept`` and ``kept_fraction`` of them (a subset or weighted sampler: of its draws,
        not of all N), and ``drop_last_tail``, the kept instances ``drop_last`` left out."""
        if plan is None or self._sampler is None:
            return {}
        kept = self._kept_draws(plan)
        record: dict[str, Any] = {
            "drop_last_tail": kept % self._batch_size if self._drop_last else 0}
        if isinstance(self._sampler, DistributedSampler):
            return record  # kept, kept_fraction: the plan's, over every rank
        order = None if self._counts_by_plan() else self._drawn_order()
        if order is not None:
            record.update(epoch_instances=len(order), kept=kept,
                          kept_fraction=kept / max(len(order), 1))
        else:
            record["epoch_instances"] = self.num_instances
        return record

    def __len__(self) -> int:
        """Batches in the current epoch: fewer than the wrapped loader's when it shrinks.

        Never plans (planning can start a collective under DDP): call ``set_epoch(e)`` before
        ``len(loader)`` to get epoch ``e``'s shrunk length. Before the current epoch is planned
        it is the count of an unshrunk epoch, the wrapped loader's length. With a sampler
        that does not draw every instance once (``SubsetRandomSampler``,
        ``WeightedRandomSampler``, replacement), the epoch's draws are made here, once, and
        counted: ``len()`` is what the epoch yields.
        """
        plan = self.engine.current
        if plan is None or plan.epoch != self._epoch:
            return len(self.user_loader)
        return self._batches_in(plan)

    # -- iteration --------------------------------------------------------------------------------
    def _iter_epoch(self, plan: EpochPlan, skip: int) -> Iterator[tuple[np.ndarray, Any]]:
        if skip == 0 and (self._drawn is None or self._drawn[0] != self._epoch):
            self._generator_state = None  # a fresh epoch: its order starts from its seed
        fifo: deque[np.ndarray] = deque()  # ids of each batch the sampler emitted, in order
        self._batch_sampler.next_iteration(skip, fifo.append)
        for batch in self._loader:  # DataLoader yields batches in the sampler's order
            yield fifo.popleft(), batch

    # -- state -------------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        return {"generator_state": self._generator_state}

    def _check_extra_state(self, state: dict[str, Any]) -> None:
        saved = state_check.get(state, "generator_state", "state")
        if saved is None:
            return
        gen = getattr(self._sampler, "generator", None)
        size = (gen if isinstance(gen, torch.Generator) else torch.Generator()).get_state().numel()
        if not (isinstance(saved, torch.Tensor) and saved.dtype == torch.uint8
                and saved.shape == (size,)):
            got = (f"{saved.dtype} of shape {tuple(saved.shape)}"
                   if isinstance(saved, torch.Tensor) else type(saved).__name__)
            raise state_check.bad("state['generator_state']", f"is {got}, not the sampler "
                                  f"generator's state (uint8 of shape ({size},))")

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        saved = state["generator_state"]  # on the CPU, whatever map_location torch.load had
        self._generator_state = None if saved is None else saved.detach().cpu().clone()
        self._drawn = None  # drawn again from the loaded generator state

    def _max_batches(self, plan: EpochPlan) -> int | None:
        try:
            if self._sampler is None:
                return len(self._user_batch_sampler)
            if self._counts_by_plan():
                return self._batches_in(plan)
            size = len(self._sampler)
        except TypeError:  # no len(): an endless sampler
            return None
        return size // self._batch_size if self._drop_last else -(-size // self._batch_size)

    # -- closing ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the Assistant, free shared memory, and end persistent DataLoader workers
        (idempotent)."""
        loader = self.__dict__.get("_loader")
        if loader is not None:
            _shutdown_workers(loader)
        super().close()

    def __getattr__(self, name: str) -> Any:
        # dataset, batch_size, num_workers ... read through to the wrapped loader
        if name.startswith("_") or name in ("engine", "config", "user_loader"):
            raise AttributeError(name)
        return getattr(self.user_loader, name)


def wrap(loader: DataLoader, config=None, *, key=None, num_instances: int | None = None,
         **options) -> EngineLoader:
    """Wrap a ``torch.utils.data.DataLoader`` so that each epoch trains on the instances the
    Assistant still finds informative.

    Epoch by epoch, instance i is kept with probability ``b + (1 - b) * p_i``, ``p_i`` being
    the Assistant's score, learned in its own process from the losses you ``report``. Your
    dataset, sampler order, collate_fn, workers and pinning stay as they are.

    Args:
        loader: the DataLoader to wrap. Map-style datasets need nothing more; iterable-style
            ones need ``key`` and ``num_instances``.
        config: a ``ShrinkConfig``, a dict of its settings, or a .toml/.json file
            (``autoassist tune`` writes one); None for the defaults.
        key: iterable-style datasets: ``key(item) -> id`` in ``[0, num_instances)``, by which
            the stream is filtered.
        num_instances: with ``key``, the number of distinct ids.
        **options: single settings that win over ``config``'s (``floor=0.3``,
            ``reweight=True``, ...); ``features``: a ``Tensor[N, d]`` of per-instance
            features, or ``fn(batch) -> Tensor[B, d]`` with ``feature_dim=d`` (default: a
            random projection of the input plus the class label); ``inputs``:
            ``fn(batch) -> (x, y)`` when a batch is not ``(x, y, ...)`` or a dict;
            ``tensorboard``: a log directory for the per-epoch telemetry; ``on_epoch_end``:
            ``fn(record)``, called with a copy of each epoch's telemetry record as the epoch
            ends (the dict ``loader.telemetry`` appends), to log it anywhere; ``prepare``:
            ``fn(DataLoader) -> DataLoader`` applied to the DataLoader the shrinking loader
            rebuilds and iterates (``accelerator.prepare``: device placement and accelerate's
            end-of-epoch bookkeeping); it must keep the batch sampler it is given.

    Returns:
        The shrinking loader (a ``KeyedShrinkingLoader`` with ``key``): iterate it as the
        original, and call ``set_epoch``, ``report``, ``state_dict`` / ``load_state_dict`` and
        ``close`` (or use it as a context manager). A wrapped loader comes back unchanged.

    Raises:
        TypeError: ``loader`` is not a DataLoader, or its iterable dataset comes without
            ``key``, or ``on_epoch_end`` is not callable.
        ValueError: an unknown setting or one out of its range, an empty
            dataset, ``num_instances`` that contradicts a map-style dataset, or a loader that
            does not batch, or not in order.
        FileNotFoundError: ``config`` names a file that does not exist.
    """
    if isinstance(loader, EngineLoader):  # either kind
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
