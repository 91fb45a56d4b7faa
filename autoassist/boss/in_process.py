"""The epoch loop the in-process schedules share (``backprop``, ``sequential_greedy``).

What differs between them is one training step on a batch (``step``); resuming, the loader's
epochs, the per-epoch record and the checkpoint every schedule shares are the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from tqdm import tqdm

from autoassist.boss import checkpoint as ckpt
from autoassist.boss.config import BossConfig, epoch_loss_sum, is_shrinking, split_batch
from autoassist.boss.launch import finish_loader
from autoassist.boss.stages import Stages

# step(x, y, loader): one batch's updates of every stage; returns the per-sample losses, already
# reported to ``loader`` when it is a shrinking loader (None otherwise)
Step = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def train_in_process(schedule: str, stages: Stages, make_loader, cfg: BossConfig,
                     optimizers: list[torch.optim.Optimizer], heads: list, step: Step,
                     resume_epoch: Callable[[list[int]], int]) -> dict[str, Any]:
    """Train ``cfg.epochs`` (less those a resumed checkpoint finished) with ``step`` per batch.

    ``heads[k]``: what stage ``k``'s checkpoint holds beside the stage (None: no head);
    ``resume_epoch``: the epoch to resume from, given each stage's finished epochs.
    """
    device = next(stages.parameters()).device
    loader = make_loader()
    start = 0
    if cfg.resume:
        start = resume_epoch([ckpt.load_stage(cfg.checkpoint_dir, k, stages.stages[k], heads[k],
                                              optimizers[k]) for k in range(len(stages))])
        ckpt.load_loader(cfg.checkpoint_dir, loader)
    shrinking = is_shrinking(loader)
    history = []
    for epoch in range(start, cfg.epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        t0, seen, sums = time.perf_counter(), 0, []
        for batch in tqdm(loader, desc=f"{schedule} epoch {epoch}", leave=False,
                          disable=not cfg.progress):
            x, y = split_batch(batch)
            x, y = x.to(device), y.to(device)
            per_sample = step(x, y, loader if shrinking else None)
            seen += len(y)
            sums.append(per_sample.detach().sum())  # no per-batch wait for a GPU
        total = epoch_loss_sum(sums)
        history.append({"epoch": epoch, "seconds": time.perf_counter() - t0, "instances": seen,
                        "loss": total / max(seen, 1)})
        if cfg.checkpoint_dir:
            for k in range(len(stages)):
                ckpt.save_stage(cfg.checkpoint_dir, k, stages.stages[k], heads[k],
                                optimizers[k], epoch)
            ckpt.save_loader(cfg.checkpoint_dir, loader)
    return {"schedule": schedule, "history": history, "loader_telemetry": finish_loader(loader)}
