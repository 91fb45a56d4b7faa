"""``torchdata.nodes`` adapter: a source node that yields the instance ids each epoch keeps.

    from torchdata import nodes
    from autoassist.pipelines.nodes import ShrinkSampler

    sampler = ShrinkSampler(len(dataset), floor=0.3)          # yields kept ids, shuffled
    batches = nodes.Batcher(sampler, batch_size=64)
    batches = nodes.ParallelMapper(batches, map_fn=lambda ids: (ids, collate(dataset, ids)),
                                   num_workers=2, method="thread")
    loader = nodes.Loader(batches)                            # each iter() is one epoch
    for epoch in range(epochs):
        for ids, (x, y) in loader:
            loss = sampler.report(F.cross_entropy(model(x), y, reduction="none"), ids)

Building batches stays separate from choosing instances: the node only chooses. Each ``reset()``
(``Loader`` calls it once per epoch) starts the next epoch; ``reset(state)`` resumes mid-epoch,
bit-identically, because the order is a counter-based shuffle of the kept set.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchdata.nodes import BaseNode

from autoassist.config import ShrinkConfig
from autoassist.engine import ShrinkEngine, state_check
from autoassist.pipelines.base import as_ids


class ShrinkSampler(BaseNode[int]):
    """Yields the ids of the instances kept this epoch, in a seeded shuffled order."""

    EPOCH, POSITION, ENGINE = "epoch", "position", "engine"

    def __init__(self, num_instances: int, config: ShrinkConfig | dict | str | None = None, *,
                 shuffle: bool = True, features=None, inputs=None, **options):
        super().__init__()
        if int(num_instances) <= 0:
            raise ValueError(f"num_instances must be positive, got {num_instances}")
        self.num_instances = int(num_instances)
        self.config = ShrinkConfig.coerce(config, **options)
        self.shuffle = shuffle
        self.engine = ShrinkEngine(self.num_instances, self.config, features=features,
                                   inputs=inputs)
        self._epoch = -1
        self._order = np.empty(0, np.int64)
        self._position = 0
        self._finished_epoch: int | None = None

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        if initial_state is not None:  # checked whole before anything changes
            epoch = state_check.integer(state_check.get(initial_state, self.EPOCH, "state"),
                                        f"state[{self.EPOCH!r}]", low=0)
            position = state_check.integer(
                state_check.get(initial_state, self.POSITION, "state"),
                f"state[{self.POSITION!r}]", low=0)
            plan = self.engine.check_state(state_check.get(initial_state, self.ENGINE, "state"),
                                           path=f"state[{self.ENGINE!r}]")
            if plan is not None and plan.epoch == epoch and position > plan.kept:
                raise state_check.bad(f"state[{self.POSITION!r}]", f"is {position}, but epoch "
                                      f"{epoch} keeps {plan.kept} instances")
            self.engine.restore_state(initial_state[self.ENGINE], plan)
            self._epoch = epoch
            self._position = position
        else:
            if self._epoch >= 0 and self._finished_epoch != self._epoch:
                self.engine.end_epoch(self._epoch, batches=-1)  # an epoch abandoned midway
            self._epoch += 1
            self._position = 0
        self._order = self._epoch_order(self._epoch)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        from autoassist.kernels import shuffle_kept

        plan = self.engine.plan(epoch)
        kept = np.arange(self.num_instances) if plan.mask is None else np.flatnonzero(plan.mask)
        kept = kept.astype(np.int64)
        return shuffle_kept(kept, self.config.seed, epoch) if self.shuffle else kept

    @property
    def epoch_length(self) -> int:
        """Instances the current epoch yields (known once ``reset()`` started it)."""
        return len(self._order)

    def next(self) -> int:
        if self._position >= len(self._order):
            if self._finished_epoch != self._epoch:
                self._finished_epoch = self._epoch
                self.engine.end_epoch(self._epoch, batches=-1)
            raise StopIteration
        idx = int(self._order[self._position])
        self._position += 1
        return idx

    def get_state(self) -> dict[str, Any]:
        return {self.EPOCH: self._epoch, self.POSITION: self._position,
                self.ENGINE: self.engine.state_dict()}

    def report(self, per_sample: torch.Tensor, ids, batch: Any = None) -> torch.Tensor:
        """Feed per-instance losses of the instances ``ids``; returns the (re)weighted mean."""
        return self.engine.report(per_sample, as_ids(ids, self.num_instances), batch)

    @property
    def telemetry(self) -> list[dict[str, Any]]:
        return self.engine.telemetry

    def close(self) -> None:
        self.engine.close()
