"""``async_model_parallel``: full backprop across stage processes with bounded staleness (AMPNet).

Forward messages (activations) flow from stage k to k+1, backward messages (the loss gradient
with respect to those activations) flow back. Stage k may run the forward pass of batch t once
it has finished the backward pass of batch ``t - staleness - 1``, so up to ``staleness + 1``
batches are in flight and no stage waits for the whole pipeline to drain. Each stage steps its
optimiser after every backward message.

Staleness 0 is synchronous backprop: stage k's forward of batch t uses its parameters after the
step on t - 1, and its backward uses the graph of that same forward (tested equal to
``backprop``). With staleness > 0 the stage has stepped since the forward, so the backward
recomputes the stage's forward from the stored input with the current parameters (AMPNet's
stale-input, current-weight gradient; memory stays one input per batch in flight), without
updating normalisation statistics a second time.

Per-instance losses (the last stage's) go back to stage 0 for the Assistant, as in
``local_parallel``.
"""

from __future__ import annotations

import time
from collections import deque
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from autoassist.boss import checkpoint as ckpt
from autoassist.boss.comm import BATCH, END_EPOCH, TAG_LOSS, Channel, Message
from autoassist.boss.config import BossConfig, is_shrinking, split_batch
from autoassist.boss.launch import run_stage_processes
from autoassist.boss.stages import Stages
from autoassist.engine import single_replica

TAG_GRAD = 5


class _NoStatUpdate:
    """Recompute a forward without moving BatchNorm running statistics a second time."""

    def __init__(self, module: nn.Module):
        self.norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __enter__(self):
        self.saved = [m.momentum for m in self.norms]
        self.counts = [None if m.num_batches_tracked is None else m.num_batches_tracked.clone()
                       for m in self.norms]
        for m in self.norms:
            m.momentum = 0.0
        return self

    def __exit__(self, *exc):
        for m, momentum, count in zip(self.norms, self.saved, self.counts, strict=True):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


class _Stage:
    """One stage's forward/backward bookkeeping for the batches in flight."""

    def __init__(self, stage: nn.Module, optimizer, device, input_grad: bool):
        self.stage, self.optimizer, self.device = stage, optimizer, device
        self.input_grad = input_grad  # stage 0 needs no gradient for the data
        self.steps = 0
        self.inflight: deque = deque()  # (input, output, steps at forward)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h.detach().requires_grad_(self.input_grad and h.is_floating_point())
        out = self.stage(h)
        self.inflight.append((h, out, self.steps))
        return out

    def backward(self, grad_out: torch.Tensor | None, loss: torch.Tensor | None = None
                 ) -> torch.Tensor | None:
        """Backward of the oldest batch in flight, one optimiser step; returns d loss / d input."""
        h, out, steps = self.inflight.popleft()
        if steps != self.steps:  # parameters moved since the forward: recompute at current ones
            with _NoStatUpdate(self.stage):
                out = self.stage(h)
        self.optimizer.zero_grad(set_to_none=True)
        if loss is not None:
            loss.backward()
        else:
            out.backward(grad_out)
        self.optimizer.step()
        self.steps += 1
        return None if h.grad is None else h.grad.detach()


def _stage(rank: int, world: int, stages: Stages, cfg: BossConfig, device: torch.device,
           staleness: int, make_loader):
    """Stage ``rank``'s whole run inside an initialised process group (see ``launch.py``)."""
    module = stages.stages[rank].to(device)
    optimizer = cfg.optimizer(list(module.parameters()))
    start = ckpt.load_stage(cfg.checkpoint_dir, rank, module, None, optimizer) \
        if cfg.resume else 0
    first, last = rank == 0, rank == world - 1
    me = _Stage(module, optimizer, device, input_grad=not first)
    chan = Channel(device)
    loader = None
    if first:
        with single_replica():  # stage processes are not data-parallel replicas
            loader = make_loader()
    if loader is not None and cfg.resume:
        ckpt.load_loader(cfg.checkpoint_dir, loader)
    shrinking = first and is_shrinking(loader)
    history = []
    for epoch in range(start, cfg.epochs):
        t0, seen, total = time.perf_counter(), 0, 0.0
        grad_sends: list = []
        pending: deque = deque()  # stage 0: returned losses to report

        def backward_oldest(sends=grad_sends) -> None:  # the last stage steps at once
            grad = torch.empty_like(me.inflight[0][1])
            dist.recv(grad, rank + 1, tag=TAG_GRAD)
            grad_in = me.backward(grad)
            if not first:
                sends.append((dist.isend(grad_in.contiguous(), rank - 1, tag=TAG_GRAD),
                              grad_in))

        if first:
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            with loader.late_reports() if shrinking else nullcontext():
                batches = loader
                if cfg.progress:
                    from tqdm import tqdm

                    batches = tqdm(loader, desc=f"async_model_parallel epoch {epoch}",
                                   leave=False)
                for batch in batches:
                    if len(me.inflight) > staleness:
                        backward_oldest()
                    x, y = split_batch(batch)
                    ids = (torch.from_numpy(loader.batch_ids) if shrinking
                           else torch.arange(seen, seen + len(y)))
                    w = loader.loss_weights(x) if shrinking else None
                    out = me.forward(x.to(device))
                    chan.send(Message(BATCH, out.detach(), y, ids, w, want_losses=shrinking), 1)
                    if shrinking:
                        losses = torch.empty(len(y), dtype=torch.float32, device=device)
                        pending.append((dist.irecv(losses, world - 1, tag=TAG_LOSS), losses,
                                        ids, batch))
                        while pending and pending[0][0].is_completed():
                            work, lo, i, b = pending.popleft()
                            loader.report(lo, ids=i.numpy(), batch=b)
                    seen += len(y)
                chan.send(Message(END_EPOCH), 1)
                while me.inflight:
                    backward_oldest()
                while pending:
                    work, lo, i, b = pending.popleft()
                    work.wait()
                    loader.report(lo, ids=i.numpy(), batch=b)
        else:
            loss_sends: list = []
            while True:
                if not last and len(me.inflight) > staleness:
                    backward_oldest()
                msg = chan.recv(rank - 1)
                if msg.kind == END_EPOCH:
                    if not last:
                        chan.send(msg, rank + 1)
                    break
                out = me.forward(msg.h)
                if last:
                    per_sample = F.cross_entropy(out, msg.y.to(device), reduction="none")
                    w = msg.weights
                    loss = per_sample.mean() if w is None else \
                        (per_sample * w.to(device)).mean()
                    grad_in = me.backward(None, loss=loss)
                    grad_sends.append((dist.isend(grad_in.contiguous(), rank - 1,
                                                  tag=TAG_GRAD), grad_in))
                    if msg.want_losses:
                        lo = per_sample.detach().float().contiguous()
                        loss_sends.append((dist.isend(lo, 0, tag=TAG_LOSS), lo))
                    total += float(per_sample.detach().sum())
                else:
                    chan.send(Message(BATCH, out.detach(), msg.y, msg.ids, msg.weights,
                                      msg.want_losses), rank + 1)
                seen += len(msg.y)
            while me.inflight:
                backward_oldest()
            for work, _t in loss_sends:
                work.wait()
        for work, _t in grad_sends:
            work.wait()
        chan.close()
        history.append({"epoch": epoch, "stage": rank, "seconds": time.perf_counter() - t0,
                        "instances": seen, "loss": total / max(seen, 1)})
        if cfg.checkpoint_dir:
            ckpt.save_stage(cfg.checkpoint_dir, rank, module, None, optimizer, epoch)
            if first:
                ckpt.save_loader(cfg.checkpoint_dir, loader)
        dist.barrier()
    return module, None, history, loader


def train(stages: Stages, make_loader, cfg: BossConfig, staleness: int = 1) -> dict[str, Any]:
    """Run full backprop over ``len(stages)`` processes; load the trained stages back."""
    if staleness < 0:
        raise ValueError(f"staleness={staleness}: 0 (synchronous) or more batches in flight")
    out = run_stage_processes("async_model_parallel", stages, _stage, cfg, staleness,
                              make_loader)
    return {**out, "staleness": staleness}
