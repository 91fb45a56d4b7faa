"""Stochastic Block-ADMM with one process per block (paper D's parallel blocks).

Process k owns block k, its optimiser and, in batch mode, the states and duals at its output
(``z_k``, ``u_k``). Per ADMM iteration on a mini-batch, the same pieces ``BlockADMM.iteration``
calls, in the same order for each block:

1. k sends its current ``z_k`` to k+1 and receives ``z_{k-1}`` (its input) from k-1;
2. k's own update (SGD step, or the NMF block's multiplicative ``W`` step); in batch mode, after
   a batch's last iteration k already sends the *next* batch's ``z_k`` (batches within an epoch
   are disjoint, so it is final): k+1 starts that batch while k finishes this one;
3. k answers k-1: the gradient of its term with respect to its input, at each iterate of
   ``z_{k-1}`` (an NMF block's iterates always travel: they change before the first gradient);
4. k computes its own term's gradient, then takes k+1's answer and moves ``z_k``, then ``u_k``.

Online mode first runs the batch forward through the processes to initialise the states.
Every process draws the same batch order from the same seeded generator. Bit-identical to the
single-process ``BlockADMM`` (tested).
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

TAG_Z, TAG_GRAD, TAG_ITERATE, TAG_FORWARD = 20, 21, 22, 23


def _block_process(rank: int, world: int, stages: Stages, cfg: BossConfig,
                   device: torch.device, state: dict[str, Any], epochs: int):
    from autoassist.boss.block_admm import ADMMConfig, BlockADMM, NMFBlock

    acfg = ADMMConfig(**state["config"])
    me = BlockADMM.__new__(BlockADMM)  # a shard: no tables of its own beyond its boundary
    me.blocks, me.cfg, me.K = torch.nn.Sequential(*stages.stages), acfg, world
    k, K = rank, world
    x, y = state["x"], state["y"]
    opt = None
    if any(p.requires_grad for p in me.blocks[k].parameters()):
        opt = torch.optim.SGD(me.blocks[k].parameters(), lr=acfg.lr, momentum=acfg.momentum)
        opt.load_state_dict(state["optimizers"][k])
    me.opts = [opt if j == k else None for j in range(K)]
    gen = torch.Generator()
    gen.set_state(state["generator"])
    batch = acfg.mode == "batch"
    z_tab = state["z"][k] if batch and k < K - 1 else None
    u_tab = state["lam"][k] if batch and k < K - 1 else None
    in_shape = tuple(state["shapes"][k - 1]) if k > 0 else None
    my_shape = tuple(state["shapes"][k]) if k < K - 1 else None
    dual_shape = tuple(state["dual_shapes"][k]) if k < K - 1 else None
    nmf_prev = k > 0 and isinstance(me.blocks[k - 1], NMFBlock)
    nmf_me = isinstance(me.blocks[k], NMFBlock)
    sent, history = 0, []

    def send(t: torch.Tensor, dst: int, tag: int) -> None:
        nonlocal sent
        dist.send(t.contiguous(), dst, tag=tag)
        sent += tensor_bytes(t)

    for epoch in range(state["epoch"], state["epoch"] + epochs):
        t0, losses, residuals = time.perf_counter(), [], []
        order = torch.randperm(len(x), generator=gen)
        batches = [order[i:i + acfg.batch_size] for i in range(0, len(order), acfg.batch_size)]
        queue = SendQueue()  # batch mode: my stored z_k of a batch, block k+1's first input
        if batch and z_tab is not None:
            sent += queue.isend(z_tab[batches[0]], k + 1, TAG_Z)
        for b, ids in enumerate(batches):
            B, yb = len(ids), y[ids]
            if batch:
                zk = z_tab[ids] if z_tab is not None else None
                uk = u_tab[ids] if u_tab is not None else None
            else:  # online: the batch's forward pass through the processes, duals at zero
                with torch.no_grad():
                    if k == 0:
                        h = x[ids]
                    else:
                        h = torch.empty((B, *in_shape))
                        dist.recv(h, k - 1, tag=TAG_FORWARD)
                    zk = me.blocks[k](h) if k < K - 1 else None
                if zk is not None:
                    send(zk, k + 1, TAG_FORWARD)
                    uk = torch.zeros((B, *dual_shape))
                else:
                    uk = None
            last_loss, last_r = None, None  # per batch: its last iteration's (as BlockADMM)
            for it_n in range(acfg.iters):
                if k < K - 1 and not (batch and it_n == 0):  # 1. my current z_k (batch
                    send(zk, k + 1, TAG_Z)  # mode's first iteration: prefetched)
                if k > 0:
                    inp = torch.empty((B, *in_shape))
                    dist.recv(inp, k - 1, tag=TAG_Z)
                else:
                    inp = x[ids]
                out = me.block_step(k, inp, zk, uk, yb)  # 2. my own update
                if out is not None:
                    last_loss = out
                if (batch and z_tab is not None and it_n == acfg.iters - 1
                        and b + 1 < len(batches)):
                    sent += queue.isend(z_tab[batches[b + 1]], k + 1, TAG_Z)
                if k > 0:  # 3. answer block k-1 at each of its iterates
                    for step in range(acfg.z_steps):
                        it = inp
                        if step > 0 or nmf_prev:
                            it = torch.empty((B, *in_shape))
                            dist.recv(it, k - 1, tag=TAG_ITERATE)
                        send(me.input_grad(k, it, zk, uk, yb).contiguous(), k - 1, TAG_GRAD)
                if k < K - 1:  # 4. my z_k, then my duals
                    z_new = zk.clone()
                    for step in range(acfg.z_steps):
                        z_new = me.pre_step(k, inp, z_new, uk)
                        if step > 0 or nmf_me:
                            send(z_new, k + 1, TAG_ITERATE)
                        g_own = me.own_grad(k, inp, z_new, uk, yb)  # while k+1 computes
                        g_next = torch.empty((B, *my_shape))
                        dist.recv(g_next, k + 1, tag=TAG_GRAD)
                        z_new = me.z_step(k, inp, z_new, uk, yb, g_next, g_own)
                    for p in me.blocks.parameters():
                        p.grad = None
                    uk, last_r = me.dual_step(k, inp, z_new, uk)
                    zk = z_new
            if last_loss is not None:
                losses.append(last_loss)
            if last_r is not None:
                residuals.append(last_r)
            if batch and z_tab is not None:
                z_tab[ids], u_tab[ids] = zk, uk
        queue.wait()
        history.append({"epoch": epoch, "stage": k, "seconds": time.perf_counter() - t0,
                        "instances": len(order),
                        "loss": sum(losses) / len(losses) if losses else float("nan"),
                        "residual": sum(residuals) / len(residuals) if residuals else None})
    extra = {"z": z_tab, "lam": u_tab, "optimizer": None if opt is None else opt.state_dict(),
             "sent_bytes": sent, "generator": gen.get_state(), "history": history}
    return me.blocks[k], None, history, None, extra


def run_parallel(admm, epochs: int, timeout_s: float) -> list[dict[str, Any]]:
    """``epochs`` epochs of ``admm`` with one process per block; updates it in place."""
    shapes = [tuple(t.shape[1:]) for t in admm.aux.z]  # (online mode: empty tables, shapes)
    shard = {"config": asdict(admm.cfg), "x": admm.x, "y": admm.y,
             "optimizers": [None if o is None else o.state_dict() for o in admm.opts],
             "generator": admm.gen.get_state(), "z": admm.aux.z, "lam": admm.aux.lam,
             "epoch": admm.epoch, "shapes": shapes,
             "dual_shapes": [admm._dual_shape(k) for k in range(admm.K - 1)]}
    extras, wall = launch("block-admm", admm, _block_process, shard, epochs, timeout_s)
    restore(admm, extras, tables=admm.cfg.mode == "batch")
    return epoch_records(extras, epochs, wall, mode=admm.cfg.mode)
