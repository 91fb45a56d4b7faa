"""``local_parallel``: one process per stage, pipelined over batches (Laskin et al. 2020).

Stage 0 owns the data loader. For each batch it takes its local step and sends its detached
output (with labels, instance ids and loss weights) to stage 1 without waiting; stage k receives,
steps, forwards. No backward pass crosses a process boundary and only activations travel, so
stage k works on batch t while stage k-1 already works on batch t+1.

The Assistant learns from the *final* stage's per-instance losses: they are what the model's
prediction costs, the quantity shrinking should track, whereas early auxiliary heads mostly
measure how linearly separable an instance is at that depth. The last stage sends them back to
stage 0 (non-blocking), which reports them to the loader with their ids.

The updates equal ``sequential_greedy``'s exactly: stage k's step on batch t uses stage k-1's
output computed before stage k-1's own step on t, in both schedules.
"""

from __future__ import annotations

import time
from collections import deque
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist

from autoassist.boss import checkpoint as ckpt
from autoassist.boss.comm import BATCH, END_EPOCH, TAG_LOSS, Channel, Message
from autoassist.boss.config import BossConfig, is_shrinking, split_batch
from autoassist.boss.launch import run_stage_processes
from autoassist.boss.stages import Stages, stage_step
from autoassist.engine import single_replica


def _drain(pending: deque, loader, block: bool) -> None:
    """Report returned final-stage losses to the loader, in batch order."""
    while pending and (block or pending[0][0].is_completed()):
        work, losses, ids, batch = pending.popleft()
        work.wait()
        loader.report(losses, ids=ids.numpy(), batch=batch)


def _stage(rank: int, world: int, stages: Stages, cfg: BossConfig, device: torch.device,
           make_loader):
    """Stage ``rank``'s whole run inside an initialised process group (see ``launch.py``)."""
    stage, head = stages.stages[rank].to(device), stages.head(rank)
    head = None if head is None else head.to(device)
    optimizer = cfg.optimizer(stages.stage_parameters(rank))
    start = 0
    if cfg.resume:
        start = ckpt.load_stage(cfg.checkpoint_dir, rank, stage, head, optimizer)
    chan = Channel(device)
    last = rank == world - 1
    loader = None
    if rank == 0:
        with single_replica():  # stage processes are not data-parallel replicas
            loader = make_loader()
    if loader is not None and cfg.resume:
        ckpt.load_loader(cfg.checkpoint_dir, loader)
    shrinking = rank == 0 and is_shrinking(loader)
    history = []
    loss_sends: list = []
    for epoch in range(start, cfg.epochs):
        t0, seen, total = time.perf_counter(), 0, 0.0
        if rank == 0:
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            with loader.late_reports() if shrinking else nullcontext():
                pending: deque = deque()
                bar = loader
                if cfg.progress:
                    from tqdm import tqdm

                    bar = tqdm(loader, desc=f"local_parallel epoch {epoch}", leave=False)
                for batch in bar:
                    x, y = split_batch(batch)
                    ids = (torch.from_numpy(loader.batch_ids) if shrinking
                           else torch.arange(seen, seen + len(y)))
                    w = loader.loss_weights(x) if shrinking else None
                    h, per_sample = stage_step(
                        stage, head, optimizer, x.to(device), y.to(device),
                        None if w is None else w.to(device))
                    chan.send(Message(BATCH, h, y, ids, w, want_losses=shrinking), 1)
                    if shrinking:
                        losses = torch.empty(len(y), dtype=torch.float32, device=device)
                        work = dist.irecv(losses, world - 1, tag=TAG_LOSS)
                        pending.append((work, losses, ids, batch))
                        _drain(pending, loader, block=False)
                    seen += len(y)
                    total += float(per_sample.sum())
                chan.send(Message(END_EPOCH), 1)
                if shrinking:
                    _drain(pending, loader, block=True)
        else:
            while True:
                msg = chan.recv(rank - 1)
                if msg.kind == END_EPOCH:
                    if not last:
                        chan.send(msg, rank + 1)
                    break
                w = None if msg.weights is None else msg.weights.to(device)
                h, per_sample = stage_step(stage, head, optimizer, msg.h, msg.y.to(device),
                                           w)
                if not last:
                    chan.send(Message(BATCH, h, msg.y, msg.ids, msg.weights,
                                      msg.want_losses), rank + 1)
                elif msg.want_losses:
                    out = per_sample.float().contiguous()
                    loss_sends.append((dist.isend(out, 0, tag=TAG_LOSS), out))
                seen += len(msg.y)
                total += float(per_sample.sum())
        chan.close()
        for work, _tensor in loss_sends:
            work.wait()
        loss_sends = []
        history.append({"epoch": epoch, "stage": rank,
                        "seconds": time.perf_counter() - t0, "instances": seen,
                        "loss": total / max(seen, 1)})
        if cfg.checkpoint_dir:
            ckpt.save_stage(cfg.checkpoint_dir, rank, stage, head, optimizer, epoch)
            if rank == 0:
                ckpt.save_loader(cfg.checkpoint_dir, loader)
        dist.barrier()
    return stage, head, history, loader


def train(stages: Stages, make_loader, cfg: BossConfig) -> dict[str, Any]:
    """Run the stages in ``len(stages)`` spawned processes; load the trained stages back."""
    return run_stage_processes("local_parallel", stages, _stage, cfg, make_loader)
