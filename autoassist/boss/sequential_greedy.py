"""``sequential_greedy``: the single-process reference for local training.

Every batch goes through the stages in order; each stage takes one step on its own auxiliary
loss with gradients stopped at its input (``stages.stage_step``). ``local_parallel`` performs the
same updates with the stages in parallel processes, so the two give identical parameters.
"""

from __future__ import annotations

from typing import Any

from autoassist.boss.config import BossConfig
from autoassist.boss.in_process import train_in_process
from autoassist.boss.stages import Stages, stage_step


def train(stages: Stages, make_loader, cfg: BossConfig) -> dict[str, Any]:
    optimizers = [cfg.optimizer(stages.stage_parameters(k)) for k in range(len(stages))]

    def step(x, y, loader):
        w = loader.loss_weights(x) if loader is not None else None
        h = x
        for k in range(len(stages)):
            h, per_sample = stage_step(stages.stages[k], stages.head(k), optimizers[k], h, y,
                                       None if w is None else w.to(h.dtype))
        if loader is not None:
            loader.report(per_sample)
        return per_sample

    def resume_epoch(starts: list[int]) -> int:
        if len(set(starts)) != 1:
            raise RuntimeError(f"checkpoint {cfg.checkpoint_dir} holds stages from different "
                               f"epochs {starts}: it was not written by one run")
        return starts[0]

    return train_in_process("sequential_greedy", stages, make_loader, cfg, optimizers,
                            [stages.head(k) for k in range(len(stages))], step, resume_epoch)
