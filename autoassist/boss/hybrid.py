"""Serial-parallel hybrid training of a layer-parallel ResNet (paper C, Sun et al. 2020).

The network ``F_K o ... o F_1`` is cut into K blocks joined by per-instance auxiliary variables
``z_k ~ P F_k(U z_{k-1})`` (``P``/``U``: the downsampling filter and its upsampling, identity
without filter; ``z_0`` is the input). Two solvers of the constrained problem:

- **penalty**: minimise ``CE(F_K(U z_{K-1}), y) + rho/2 sum_k ||z_k - P F_k(U z_{k-1})||^2``;
- **al** (augmented Lagrangian): add ``<lam_k, z_k - P F_k(U z_{k-1})>`` and, after each sweep,
  ``lam_k += rho * (z_k - P F_k(U z_{k-1}))``.

A block's parameter step divides its penalty term by the state size ``d_k``: the minimiser is
the same, and the step size no longer depends on how large the state is.

One sweep per mini-batch: every block takes ``inner_steps`` SGD steps on its own term (inputs
and targets held fixed: independent sub-problems), then every ``z_k`` takes ``z_steps`` gradient
steps on the two terms it appears in, then the multipliers move. All updates of a sweep read the
values from its start (a Jacobi sweep), so a process per block computes exactly the same numbers
while exchanging only ``z_{k-1}`` forward and ``d/dz_k`` of the next block's term backward; the
``ByteLedger`` counts those bytes. ``rho`` grows by ``rho_growth`` per epoch (the penalty
method's continuation).

The parallel phase trains on fixed inputs (the auxiliary variables belong to them). The serial
phase then corrects all parameters with ordinary end-to-end backprop on the plain network,
where data augmentation (random crops, flips) is possible again: that is the hybrid.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autoassist.boss.aux_vars import AuxTables, ByteLedger
from autoassist.boss.filters import make_filter
from autoassist.boss.trainer import EpochTrainer

SOLVERS = ("penalty", "al")


@dataclass
class HybridConfig:
    solver: str = "penalty"
    parallel_epochs: int = 2
    serial_epochs: int = 1
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    rho: float = 1.0
    rho_growth: float = 1.5
    z_lr: float = 0.5
    z_steps: int = 1
    inner_steps: int = 1
    filter: int | None = 2
    augment: bool = True  # serial phase: random crops (2-pixel shifts)
    flip: bool = False  # ... and horizontal flips: off, Fashion-MNIST's shoes all face left
    clip: float | None = 2.0  # serial phase: gradient-norm clipping (None: off)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"solver={self.solver!r}: one of {SOLVERS}")
        if self.parallel_epochs < 0 or self.serial_epochs < 0:
            raise ValueError("epoch counts must be >= 0")
        for name in ("batch_size", "z_steps", "inner_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.rho <= 0 or self.rho_growth < 1 or self.lr <= 0 or self.z_lr <= 0:
            raise ValueError("rho, lr, z_lr must be > 0 and rho_growth >= 1")


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2, flip: bool = True
            ) -> torch.Tensor:
    """Random ``pad``-pixel shifts (crops) and, with ``flip``, horizontal flips. The border is
    padded by replicating the edge (normalised images have a non-zero background)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])  # [n, h]
    cols = (dx[:, None] + torch.arange(w)[None, :])  # [n, w]
    out = padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    out = out.permute(0, 3, 1, 2)  # advanced indexing put the channel last
    flips = torch.rand(n, generator=gen) < 0.5
    if flip:
        out[flips] = out[flips].flip(-1)
    return out.contiguous()


class HybridTrainer(EpochTrainer):
    """Trains ``blocks`` (an ``nn.Sequential`` of K block modules) on ``(x, y)`` tensors."""

    def __init__(self, blocks: nn.Sequential, x: torch.Tensor, y: torch.Tensor,
                 cfg: HybridConfig):
        if len(blocks) < 1:
            raise ValueError("blocks is empty")
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} labels")
        self.blocks, self.x, self.y, self.cfg = blocks, x, y, cfg
        self.K = len(blocks)
        self.filter = make_filter(cfg.filter)
        self.opts = [torch.optim.SGD(b.parameters(), lr=cfg.lr, momentum=cfg.momentum)
                     for b in blocks]
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.epoch, self.rho = 0, cfg.rho
        self.ledger = ByteLedger()
        self.history: list[dict[str, Any]] = []
        with torch.no_grad():
            shapes, h = [], x[:2]
            for b in list(blocks)[:-1]:
                h = b(h)
                shapes.append(self.filter.coarse_shape(tuple(h.shape[1:])))
        self.aux = AuxTables(len(x), shapes, duals=cfg.solver == "al")
        self._init_aux()

    # -- auxiliary variables --------------------------------------------------------------------
    @torch.no_grad()
    def _init_aux(self) -> None:
        """``z_k`` from one forward pass of the initial network (zero residuals to start)."""
        for start in range(0, len(self.x), 1024):
            h = self.x[start:start + 1024]
            for k in range(self.K - 1):
                z = self.filter.down(self.blocks[k](h))
                self.aux.z[k][start:start + len(z)] = z
                h = self.filter.up(z)

    def _block_input(self, k: int, ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if k == 0:
            return x
        z = self.aux.z[k - 1][ids]
        self.ledger.add(z)  # block k-1 -> block k
        return self.filter.up(z)

    def _term(self, k: int, inp: torch.Tensor, target: torch.Tensor | None,
              lam: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        """Block k's term of the objective, summed over the batch's instances."""
        out = self.blocks[k](inp)
        if k == self.K - 1:
            return F.cross_entropy(out, y, reduction="sum")
        r = target - self.filter.down(out)
        term = 0.5 * self.rho * (r * r).sum()
        if lam is not None:
            term = term + (lam * r).sum()
        return term

    # -- one Jacobi sweep on a batch ------------------------------------------------------------
    def sweep(self, ids: torch.Tensor) -> dict[str, float]:
        x, y, B = self.x[ids], self.y[ids], len(ids)
        inputs = [self._block_input(k, ids, x) for k in range(self.K)]
        targets = [self.aux.z[k][ids] if k < self.K - 1 else None for k in range(self.K)]
        lams = [self.aux.lam[k][ids] if self.aux.lam is not None and k < self.K - 1 else None
                for k in range(self.K)]
        residuals, loss = [], 0.0
        for k in range(self.K):  # independent sub-problems: one process per block
            for step in range(self.cfg.inner_steps):
                term = self._term(k, inputs[k], targets[k], lams[k], y)
                if step == 0:
                    if k == self.K - 1:
                        loss = float(term.detach()) / B
                    else:
                        with torch.no_grad():
                            r = targets[k] - self.filter.down(self.blocks[k](inputs[k]))
                            residuals.append(float((r * r).sum() / (targets[k] ** 2).sum()
                                                   .clamp_min(1e-12)))
                scale = B if k == self.K - 1 else B * targets[k][0].numel()
                self.opts[k].zero_grad(set_to_none=True)
                (term / scale).backward()
                self.opts[k].step()
        new_z = []
        for k in range(self.K - 1):  # z_k moves on its own term and the next block's
            z = targets[k].clone()
            for step in range(self.cfg.z_steps):
                if step > 0:
                    self.ledger.add(z)  # the new iterate, block k -> block k+1
                z.requires_grad_(True)
                own = self._term(k, inputs[k], z, lams[k], y)
                nxt = self._term(k + 1, self.filter.up(z), targets[k + 1], lams[k + 1], y)
                g_own = torch.autograd.grad(own, z)[0]
                g_next = torch.autograd.grad(nxt, z)[0]
                self.ledger.add(g_next)  # block k+1 -> block k
                with torch.no_grad():  # z_lr: the fraction of the way to its own target
                    z = z - self.cfg.z_lr / self.rho * (g_own + g_next)
            new_z.append(z.detach())
        for p in self.blocks.parameters():
            p.grad = None
        with torch.no_grad():
            for k in range(self.K - 1):
                self.aux.z[k][ids] = new_z[k]
                if self.aux.lam is not None:  # multiplier step on the new residual
                    r = new_z[k] - self.filter.down(self.blocks[k](inputs[k]))
                    self.aux.lam[k][ids] = lams[k] + self.rho * r
        return {"loss": loss, "residuals": residuals}

    @torch.no_grad()
    def constraints(self) -> dict[str, Any]:
        """Over every instance, now: each boundary's relative constraint residual and the
        objective (augmented Lagrangian for ``al``, penalty function for ``penalty``)."""
        num = [0.0] * (self.K - 1)
        den = [0.0] * (self.K - 1)
        objective = 0.0
        for start in range(0, len(self.x), 1024):
            ids = torch.arange(start, min(start + 1024, len(self.x)))
            x, y = self.x[ids], self.y[ids]
            for k in range(self.K):
                inp = x if k == 0 else self.filter.up(self.aux.z[k - 1][ids])
                target = self.aux.z[k][ids] if k < self.K - 1 else None
                lam = (self.aux.lam[k][ids] if self.aux.lam is not None and k < self.K - 1
                       else None)
                objective += float(self._term(k, inp, target, lam, y))
                if k < self.K - 1:
                    r = target - self.filter.down(self.blocks[k](inp))
                    num[k] += float((r * r).sum())
                    den[k] += float((target * target).sum())
        return {"objective": objective / len(self.x),
                "residuals_end": [n / max(d, 1e-12) for n, d in zip(num, den, strict=True)]}

    # -- epochs ---------------------------------------------------------------------------------
    def _order(self) -> torch.Tensor:
        return torch.randperm(len(self.x), generator=self.gen)

    def parallel_epoch(self) -> dict[str, Any]:
        t0, before = time.perf_counter(), self.ledger.bytes
        order = self._order()
        losses, res = [], []
        for start in range(0, len(order), self.cfg.batch_size):
            out = self.sweep(order[start:start + self.cfg.batch_size])
            losses.append(out["loss"])
            res.append(out["residuals"])
        record = {"epoch": self.epoch, "phase": "parallel", "rho": self.rho,
                  "loss": sum(losses) / len(losses),
                  "residuals": [sum(r[k] for r in res) / len(res) for k in range(self.K - 1)],
                  "bytes": self.ledger.bytes - before, "seconds": time.perf_counter() - t0}
        record.update(self.constraints())  # measured after the epoch, outside its time
        self.rho *= self.cfg.rho_growth
        return record

    def serial_epoch(self) -> dict[str, Any]:
        """End-to-end backprop on the plain network (no filter), with augmentation.

        The phase starts with fresh optimiser states (momentum gathered on the parallel phase's
        sub-problems points elsewhere) and clips gradient norms: the network the parallel phase
        leaves is sharp, and shifted images gave gradients 20x their usual size, which made the
        first serial epoch diverge without clipping.
        """
        if self.epoch == self.cfg.parallel_epochs:
            self.opts = [torch.optim.SGD(b.parameters(), lr=self.cfg.lr,
                                         momentum=self.cfg.momentum) for b in self.blocks]
        t0 = time.perf_counter()
        order = self._order()
        losses = []
        for start in range(0, len(order), self.cfg.batch_size):
            ids = order[start:start + self.cfg.batch_size]
            x = self.x[ids]
            if self.cfg.augment:
                x = augment(x, self.gen, flip=self.cfg.flip)
            loss = F.cross_entropy(self.blocks(x), self.y[ids])
            for opt in self.opts:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.clip is not None:  # the parallel phase leaves a sharp network:
                torch.nn.utils.clip_grad_norm_(self.blocks.parameters(), self.cfg.clip)
            for opt in self.opts:
                opt.step()
            losses.append(float(loss.detach()))
        return {"epoch": self.epoch, "phase": "serial", "loss": sum(losses) / len(losses),
                "seconds": time.perf_counter() - t0}

    def fit(self, evaluate=None, progress: bool = True, checkpoint: str | Path | None = None,
            processes: bool = False, timeout_s: float = 300.0) -> list[dict[str, Any]]:
        """Run the remaining epochs (parallel phase, then serial); ``evaluate(blocks) -> acc``.

        ``processes=True``: the parallel phase runs with one process per block
        (``hybrid_parallel.py``; identical numbers), as one launch: evaluation and the checkpoint
        follow the whole phase.
        """
        if processes and self.epoch < self.cfg.parallel_epochs and self.K > 1:
            from autoassist.boss.hybrid_parallel import run_parallel_phase

            epochs = self.cfg.parallel_epochs - self.epoch
            records = run_parallel_phase(self, epochs, timeout_s)  # timed: launch, no checks
            rho, self.rho = self.rho, records[-1]["rho"]  # the last epoch's weight
            records[-1].update(self.constraints())
            self.rho = rho
            self._epochs_done(records, epochs, evaluate, checkpoint)

        def epoch() -> dict[str, Any]:
            return (self.parallel_epoch() if self.epoch < self.cfg.parallel_epochs
                    else self.serial_epoch())

        return self._run_epochs(self.cfg.parallel_epochs + self.cfg.serial_epochs,
                                f"hybrid ({self.cfg.solver})", epoch, evaluate, checkpoint,
                                progress)

    # -- state ----------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"config": asdict(self.cfg), "blocks": self.blocks.state_dict(),
                "optimizers": [o.state_dict() for o in self.opts], "aux": self.aux.state_dict(),
                "epoch": self.epoch, "rho": self.rho, "generator": self.gen.get_state(),
                "bytes": self.ledger.bytes, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"]["solver"] != self.cfg.solver:
            raise ValueError(f"checkpoint is a {state['config']['solver']} run, this trainer "
                             f"uses {self.cfg.solver}")
        self.blocks.load_state_dict(state["blocks"])
        for o, s in zip(self.opts, state["optimizers"], strict=True):
            o.load_state_dict(s)
        self.aux.load_state_dict(state["aux"])
        self.epoch, self.rho = state["epoch"], state["rho"]
        self.gen.set_state(state["generator"])
        self.ledger.bytes = state["bytes"]
        self.history = list(state["history"])
