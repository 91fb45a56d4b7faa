"""``backprop``: plain end-to-end backpropagation through all stages, the baseline.

Auxiliary heads are not used. Each stage keeps its own optimiser over its own parameters (for
per-parameter optimisers such as SGD and Adam this is the same as one optimiser over all), so the
checkpoint layout is the one every schedule shares.
"""

from __future__ import annotations

import time
from typing import Any

import torch.nn.functional as F
from tqdm import tqdm

from autoassist.boss import checkpoint as ckpt
from autoassist.boss.config import BossConfig, epoch_loss_sum, is_shrinking, split_batch
from autoassist.boss.launch import finish_loader
from autoassist.boss.stages import Stages


def train(stages: Stages, make_loader, cfg: BossConfig) -> dict[str, Any]:
    device = next(stages.parameters()).device
    optimizers = [cfg.optimizer(list(s.parameters())) for s in stages.stages]
    loader = make_loader()
    start = 0
    if cfg.resume:
        start = min(ckpt.load_stage(cfg.checkpoint_dir, k, stages.stages[k], None, optimizers[k])
                    for k in range(len(stages)))
        ckpt.load_loader(cfg.checkpoint_dir, loader)
    shrinking = is_shrinking(loader)
    history = []
    for epoch in range(start, cfg.epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        t0, seen, sums = time.perf_counter(), 0, []
        for batch in tqdm(loader, desc=f"backprop epoch {epoch}", leave=False,
                          disable=not cfg.progress):
            x, y = split_batch(batch)
            x, y = x.to(device), y.to(device)
            per_sample = F.cross_entropy(stages(x), y, reduction="none")
            loss = loader.report(per_sample) if shrinking else per_sample.mean()
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimizers:
                opt.step()
            seen += len(y)
            sums.append(per_sample.detach().sum())  # no per-batch wait for a GPU
        total = epoch_loss_sum(sums)
        history.append({"epoch": epoch, "seconds": time.perf_counter() - t0, "instances": seen,
                        "loss": total / max(seen, 1)})
        if cfg.checkpoint_dir:
            for k in range(len(stages)):
                ckpt.save_stage(cfg.checkpoint_dir, k, stages.stages[k], None, optimizers[k],
                                epoch)
            ckpt.save_loader(cfg.checkpoint_dir, loader)
    return {"schedule": "backprop", "history": history,
            "loader_telemetry": finish_loader(loader)}
