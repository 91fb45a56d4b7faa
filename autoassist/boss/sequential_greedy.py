"""``sequential_greedy``: the single-process reference for local training.

Every batch goes through the stages in order; each stage takes one step on its own auxiliary
loss with gradients stopped at its input (``stages.stage_step``). ``local_parallel`` performs the
same updates with the stages in parallel processes, so the two give identical parameters.
"""

from __future__ import annotations

import time
from typing import Any

from tqdm import tqdm

from autoassist.boss import checkpoint as ckpt
from autoassist.boss.config import BossConfig, epoch_loss_sum, is_shrinking, split_batch
from autoassist.boss.launch import finish_loader
from autoassist.boss.stages import Stages, stage_step


def train(stages: Stages, make_loader, cfg: BossConfig) -> dict[str, Any]:
    device = stages.stages[0].parameters().__next__().device
    optimizers = [cfg.optimizer(stages.stage_parameters(k)) for k in range(len(stages))]
    loader = make_loader()
    start = 0
    if cfg.resume:
        starts = [ckpt.load_stage(cfg.checkpoint_dir, k, stages.stages[k], stages.head(k),
                                  optimizers[k]) for k in range(len(stages))]
        if len(set(starts)) != 1:
            raise RuntimeError(f"checkpoint {cfg.checkpoint_dir} holds stages from different "
                               f"epochs {starts}: it was not written by one run")
        start = starts[0]
        ckpt.load_loader(cfg.checkpoint_dir, loader)
    history = []
    shrinking = is_shrinking(loader)
    for epoch in range(start, cfg.epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        t0, seen, sums = time.perf_counter(), 0, []
        for batch in tqdm(loader, desc=f"sequential_greedy epoch {epoch}", leave=False,
                          disable=not cfg.progress):
            x, y = split_batch(batch)
            x, y = x.to(device), y.to(device)
            w = loader.loss_weights(x) if shrinking else None
            h = x
            for k in range(len(stages)):
                h, per_sample = stage_step(stages.stages[k], stages.head(k), optimizers[k], h, y,
                                           None if w is None else w.to(h.dtype))
            if shrinking:
                loader.report(per_sample)
            seen += len(y)
            sums.append(per_sample.detach().sum())  # no per-batch wait for a GPU
        total = epoch_loss_sum(sums)
        history.append({"epoch": epoch, "seconds": time.perf_counter() - t0, "instances": seen,
                        "loss": total / max(seen, 1)})
        if cfg.checkpoint_dir:
            for k in range(len(stages)):
                ckpt.save_stage(cfg.checkpoint_dir, k, stages.stages[k], stages.head(k),
                                optimizers[k], epoch)
            ckpt.save_loader(cfg.checkpoint_dir, loader)
    return {"schedule": "sequential_greedy", "history": history,
            "loader_telemetry": finish_loader(loader)}
