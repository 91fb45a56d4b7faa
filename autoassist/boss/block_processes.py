"""The parent's side of running an auxiliary-variable trainer with one process per block.

``hybrid_parallel.py`` and ``block_admm_parallel.py`` differ in what a block process computes;
launching the processes, putting their state back into the trainer and turning their
per-process histories into per-epoch records is the same for both, and lives here, with the
small send queue both block processes use to pipeline the next batch's state.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from autoassist.boss.aux_vars import tensor_bytes
from autoassist.boss.config import BossConfig
from autoassist.boss.launch import run_stage_processes
from autoassist.boss.stages import Stages


class SendQueue:
    """Non-blocking sends in flight; each tensor stays referenced until its send completes."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, torch.Tensor]] = []

    def isend(self, t: torch.Tensor, dst: int, tag: int) -> int:
        """Start sending ``t`` to ``dst``; returns the bytes sent."""
        import torch.distributed as dist

        t = t.contiguous()
        self.pending.append((dist.isend(t, dst, tag=tag), t))
        while len(self.pending) > 1 and self.pending[0][0].is_completed():
            self.pending.pop(0)
        return tensor_bytes(t)

    def wait(self) -> None:
        for handle, _ in self.pending:
            handle.wait()
        self.pending.clear()


def launch(name: str, trainer, body, shard: dict[str, Any], epochs: int,
           timeout_s: float) -> tuple[list[dict[str, Any]], float]:
    """Run ``body`` in one process per block of ``trainer``; returns the per-block extras and
    the wall-clock (launch included). The blocks come back trained, in place."""
    boss = BossConfig(epochs=epochs, optimizer=torch.optim.SGD, threads=1, timeout_s=timeout_s,
                      progress=False)
    stages = Stages(list(trainer.blocks), [None] * len(trainer.blocks))
    t0 = time.perf_counter()
    out = run_stage_processes(name, stages, body, boss, shard, epochs)
    return out["extras"], time.perf_counter() - t0


def restore(trainer, extras: list[dict[str, Any]], tables: bool) -> None:
    """Optimiser states, (with ``tables``) each boundary's states and multipliers, and the
    shared batch-order generator, from the block processes back into ``trainer``."""
    for k, extra in enumerate(extras):
        if trainer.opts[k] is not None:
            trainer.opts[k].load_state_dict(extra["optimizer"])
        if tables and k < trainer.K - 1:
            trainer.aux.z[k] = extra["z"]
            if trainer.aux.lam is not None:
                trainer.aux.lam[k] = extra["lam"]
    trainer.gen.set_state(extras[0]["generator"])


def epoch_records(extras: list[dict[str, Any]], epochs: int, wall: float,
                  **fields: Any) -> list[dict[str, Any]]:
    """One record per epoch: the last block's loss, every boundary's residual, the slowest
    block's time, and the bytes all blocks sent (spread evenly: epochs send alike)."""
    sent = sum(e["sent_bytes"] for e in extras)
    records = []
    for i in range(epochs):
        per = [e["history"][i] for e in extras]
        records.append({"epoch": per[0]["epoch"], **fields, "loss": per[-1]["loss"],
                        "residuals": [p["residual"] for p in per[:-1]],
                        "seconds": max(p["seconds"] for p in per),
                        "stage_seconds": [p["seconds"] for p in per], "processes": len(per),
                        "bytes": sent // epochs, "phase_wall_seconds": wall})
    return records
