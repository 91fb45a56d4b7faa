"""Iterable-style datasets: ``autoassist.wrap(loader, key=fn, num_instances=N)``.

A stream has no sampler to steer, so the stream itself is filtered: ``key(item)`` gives each
item's instance id in ``[0, N)``, and items whose id is not kept this epoch are skipped before
collation (in the workers, when there are workers). The ids travel beside each item through a
collate wrapper, so the user's collate_fn still sees exactly the items it would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from autoassist.config import ShrinkConfig
from autoassist.engine import EpochPlan
from autoassist.pipelines.base import EngineLoader, check_ids


class _KeyedStream(IterableDataset):
    """The user's stream, minus this epoch's shrunk items, each item paired with its id."""

    def __init__(self, dataset: IterableDataset, key: Callable[[Any], int], n: int):
        self.dataset, self.key, self.n = dataset, key, n
        self.mask: np.ndarray | None = None  # set per epoch, before workers copy the dataset
        self.streamed = 0  # items kept by the last pass (seen here only without workers)

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        mask, key, n = self.mask, self.key, self.n
        self.streamed = 0
        for item in self.dataset:
            idx = int(key(item))
            if not 0 <= idx < n:
                raise IndexError(
                    f"key(item) returned {idx}, outside [0, num_instances={n}): make key map "
                    "every item to a distinct id below num_instances, or raise num_instances"
                )
            if mask is None or mask[idx]:
                self.streamed += 1
                yield idx, item


class _KeyedCollate:
    def __init__(self, collate_fn: Callable[[list], Any]):
        self.collate_fn = collate_fn

    def __call__(self, pairs: list[tuple[int, Any]]):
        ids = torch.tensor([p[0] for p in pairs], dtype=torch.int64)
        return ids, self.collate_fn([p[1] for p in pairs])


class KeyedShrinkingLoader(EngineLoader):
    """The shrinking loader for iterable-style datasets (see module docstring)."""

    def __init__(self, loader: DataLoader, config=None, *, key: Callable[[Any], int],
                 num_instances: int, features=None, inputs=None, tensorboard=None,
                 on_epoch_end=None, **options):
        if not isinstance(loader.dataset, IterableDataset):
            raise TypeError("key= is for iterable-style datasets; map-style ones need no key")
        if loader.batch_size is None:
            raise ValueError("autoassist needs batched loading: pass batch_size=... to DataLoader")
        if loader.num_workers > 0 and loader.persistent_workers:
            raise ValueError(
                "persistent_workers=True keeps the workers' copy of the stream, so they would "
                "never see a new epoch's selection; use persistent_workers=False with key="
            )
        if num_instances is None or int(num_instances) <= 0:
            raise ValueError("key= needs num_instances=N, the number of distinct instance ids")
        self.user_loader = loader
        super().__init__(int(num_instances), ShrinkConfig.coerce(config, **options),
                         features=features, inputs=inputs, tensorboard=tensorboard,
                         on_epoch_end=on_epoch_end)
        self._stream = _KeyedStream(loader.dataset, key, self.num_instances)
        kwargs = dict(
            batch_size=loader.batch_size, drop_last=loader.drop_last,
            num_workers=loader.num_workers, collate_fn=_KeyedCollate(loader.collate_fn),
            pin_memory=loader.pin_memory, timeout=loader.timeout,
            worker_init_fn=loader.worker_init_fn,
            multiprocessing_context=loader.multiprocessing_context,
            generator=loader.generator,
        )
        if loader.num_workers > 0:
            kwargs["prefetch_factor"] = loader.prefetch_factor
        self._loader = DataLoader(self._stream, **kwargs)

    def _epoch_record(self, plan: EpochPlan | None) -> dict[str, Any]:
        """``drop_last_tail``: the kept items ``drop_last`` left out, counted in the stream
        when it runs in this process (no workers) and the epoch ran to its end."""
        if not self._loader.drop_last:
            return {"drop_last_tail": 0}
        if self._loader.num_workers or not self._epoch_complete:
            return {}  # each worker drops its own tail, out of sight
        return {"drop_last_tail": self._stream.streamed
                - self._batches_done * self._loader.batch_size}

    def _iter_epoch(self, plan: EpochPlan, skip: int) -> Iterator[tuple[np.ndarray, Any]]:
        self._stream.mask = plan.mask  # before the workers copy the stream
        for ids, batch in self._loader:
            if skip:  # resume: the stream is replayed, done batches are skipped
                skip -= 1
                continue
            yield check_ids(ids.numpy(), self.num_instances), batch
