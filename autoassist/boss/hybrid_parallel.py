"""The hybrid's parallel phase with one process per block (paper C's layer parallelism).

Process k owns block k, its optimiser and the auxiliary variables at its output (``z_k``,
``lam_k``). Per mini-batch, exactly the Jacobi sweep of ``HybridTrainer.sweep``:

1. k receives ``z_{k-1}[batch]`` from k-1 (the filter's coarse size: what the downsampling
   saves);
2. k takes its parameter steps on its own term (no waiting on anyone);
3. k sends ``z_k`` of the *next* batch to k+1 already (pipelining: batches within an epoch are
   disjoint, so those values are final), so k+1 starts its next batch while k finishes this one;
4. k answers k-1's requests: the gradient of its term with respect to ``z_{k-1}`` at each
   iterate k-1 sends (the first iterate is the one received in 1);
5. k computes its own term's gradient with respect to ``z_k``, then waits for k+1's answer,
   moves ``z_k``, then its multipliers.

Only the order of the work differs from the single-process sweep, never a value read: the
result is bit-identical to it (tested). Without step 3 (the send at the start of each batch),
k+1 sat idle through k's ``z`` step every batch.
Every process draws the same batch order from the same seeded generator, so no ids travel.
Blocking point-to-point sends and receives (gloo on CPU, NCCL on CUDA: untested here) over the
Boss's launcher (``launch.py``: spawn or torchrun, timeouts, errors). The result is bit-identical
to the single-process sweep, and the bytes each process sends are counted.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import torch
import torch.distributed as dist

from autoassist.boss.aux_vars import tensor_bytes
from autoassist.boss.block_processes import SendQueue, epoch_records, launch, restore
from autoassist.boss.config import BossConfig
from autoassist.boss.stages import Stages

TAG_Z, TAG_GRAD, TAG_ITERATE = 10, 11, 12


def _block_process(rank: int, world: int, stages: Stages, cfg: BossConfig,
                   device: torch.device, trainer_state: dict[str, Any], epochs: int):
    from autoassist.boss.hybrid import HybridConfig, HybridTrainer

    hcfg = HybridConfig(**trainer_state["config"])
    blocks = torch.nn.Sequential(*stages.stages)
    me = HybridTrainer.__new__(HybridTrainer)  # a shard: no initial forward pass, no tables
    me.blocks, me.x, me.y, me.cfg, me.K = blocks, trainer_state["x"], trainer_state["y"], hcfg, \
        world
    from autoassist.boss.filters import make_filter

    me.filter = make_filter(hcfg.filter)
    k, K = rank, world
    opt = torch.optim.SGD(blocks[k].parameters(), lr=hcfg.lr, momentum=hcfg.momentum)
    opt.load_state_dict(trainer_state["optimizers"][k])
    gen = torch.Generator()
    gen.set_state(trainer_state["generator"])
    rho = trainer_state["rho"]
    z_own = trainer_state["z"][k] if k < K - 1 else None
    lam_own = (trainer_state["lam"][k] if trainer_state["lam"] is not None and k < K - 1
               else None)
    prev_shape = tuple(trainer_state["z"][k - 1].shape[1:]) if k > 0 else None
    sent, history = 0, []
    for epoch in range(trainer_state["epoch"], trainer_state["epoch"] + epochs):
        me.rho = rho
        t0, losses, residuals = time.perf_counter(), [], []
        order = torch.randperm(len(me.x), generator=gen)
        batches = [order[i:i + hcfg.batch_size] for i in range(0, len(order), hcfg.batch_size)]
        queue = SendQueue()
        if k < K - 1:  # my old z_k of the first batch: block k+1's input
            sent += queue.isend(z_own[batches[0]], k + 1, TAG_Z)
        for b, ids in enumerate(batches):
            B, y = len(ids), me.y[ids]
            target = z_own[ids] if z_own is not None else None
            lam = lam_own[ids] if lam_own is not None else None
            if k > 0:  # 1. block k-1's old z_{k-1}
                z_in = torch.empty((B, *prev_shape))
                dist.recv(z_in, k - 1, tag=TAG_Z)
                inp = me.filter.up(z_in)
            else:
                inp = me.x[ids]
            for step in range(hcfg.inner_steps):  # 2. independent parameter steps
                term = me._term(k, inp, target, lam, y)
                if step == 0:
                    if k == K - 1:
                        losses.append(float(term.detach()) / B)
                    else:
                        with torch.no_grad():
                            r = target - me.filter.down(blocks[k](inp))
                            residuals.append(float((r * r).sum() / (target ** 2).sum()
                                                   .clamp_min(1e-12)))
                scale = B if k == K - 1 else B * target[0].numel()
                opt.zero_grad(set_to_none=True)
                (term / scale).backward()
                opt.step()
            if k < K - 1 and b + 1 < len(batches):  # 3. the next batch's input for k+1
                sent += queue.isend(z_own[batches[b + 1]], k + 1, TAG_Z)
            if k > 0:  # 4. answer block k-1: d(my term)/d z_{k-1} at its iterates
                zi = z_in
                for step in range(hcfg.z_steps):
                    if step > 0:
                        zi = torch.empty((B, *prev_shape))
                        dist.recv(zi, k - 1, tag=TAG_ITERATE)
                    zi = zi.detach().requires_grad_(True)
                    g = torch.autograd.grad(me._term(k, me.filter.up(zi), target, lam, y),
                                            zi)[0].contiguous()
                    dist.send(g, k - 1, tag=TAG_GRAD)
                    sent += tensor_bytes(g)
            if k < K - 1:  # 5. my z_k (own gradient first: k+1 computes its part meanwhile)
                z = target.clone()
                for step in range(hcfg.z_steps):
                    if step > 0:
                        dist.send(z.contiguous(), k + 1, tag=TAG_ITERATE)
                        sent += tensor_bytes(z)
                    z.requires_grad_(True)
                    g_own = torch.autograd.grad(me._term(k, inp, z, lam, y), z)[0]
                    g_next = torch.empty_like(z)
                    dist.recv(g_next, k + 1, tag=TAG_GRAD)
                    with torch.no_grad():
                        z = z - hcfg.z_lr / rho * (g_own + g_next)
                z = z.detach()
                for p in blocks.parameters():
                    p.grad = None
                with torch.no_grad():
                    z_own[ids] = z
                    if lam_own is not None:
                        lam_own[ids] = lam + rho * (z - me.filter.down(blocks[k](inp)))
        queue.wait()
        history.append({"epoch": epoch, "stage": k, "seconds": time.perf_counter() - t0,
                        "instances": len(order),
                        "loss": sum(losses) / len(losses) if losses else float("nan"),
                        "residual": sum(residuals) / len(residuals) if residuals else None,
                        "rho": rho})
        rho *= hcfg.rho_growth
    extra = {"z": z_own, "lam": lam_own, "optimizer": opt.state_dict(), "sent_bytes": sent,
             "generator": gen.get_state(), "rho": rho, "history": history}
    return blocks[k], None, history, None, extra


def run_parallel_phase(trainer, epochs: int, timeout_s: float) -> list[dict[str, Any]]:
    """``epochs`` parallel epochs of ``trainer`` in ``K`` processes; updates it in place."""
    shard = {"config": asdict(trainer.cfg), "x": trainer.x, "y": trainer.y,
             "optimizers": [o.state_dict() for o in trainer.opts],
             "generator": trainer.gen.get_state(), "rho": trainer.rho, "z": trainer.aux.z,
             "lam": trainer.aux.lam, "epoch": trainer.epoch}
    extras, wall = launch("hybrid parallel phase", trainer, _block_process, shard, epochs,
                          timeout_s)
    restore(trainer, extras, tables=True)
    trainer.rho = extras[0]["rho"]
    trainer.ledger.add_bytes(sum(e["sent_bytes"] for e in extras))
    rhos = [h["rho"] for h in extras[0]["history"]]
    records = epoch_records(extras, epochs, wall, phase="parallel")
    for r, rho in zip(records, rhos, strict=True):
        r["rho"] = rho
    return records
