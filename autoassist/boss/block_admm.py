"""Stochastic Block-ADMM (paper D, Khorram et al. 2021), with DeepFacto's NMF block.

The network is split into any number K of blocks; auxiliary variables ``z_k`` stand for block
outputs and scaled dual variables ``u_k`` for the constraints ``z_k = F_k(z_{k-1})``. The
augmented Lagrangian of a batch is

    CE(F_K(z_{K-1}), y) + rho/2 sum_k ( ||z_k - F_k(z_{k-1}) + u_k||^2 - ||u_k||^2 ).

One ADMM iteration: every block takes a stochastic gradient step on its own term (backprop
only *inside* a block; the blocks are independent, so they can run in parallel processes), every
``z_k`` takes gradient steps on the two terms it appears in, then ``u_k += z_k - F_k(z_{k-1})``.
A block's step divides its term by the state size (same minimiser, a step size that does not
depend on the state's size). An NMF block's codes take multiplicative NMF updates on their own
term (warm-started, non-negative by construction), then a projected gradient step on the next
block's term.

- ``mode="batch"``: ``z`` and ``u`` are kept per training instance across epochs (one iteration
  per mini-batch visit).
- ``mode="online"``: streaming; each mini-batch gets fresh ``z`` (a forward pass) and ``u = 0``,
  ``iters`` iterations, then both are dropped: nothing is stored per instance.

With one block there are no auxiliary variables and an iteration is exactly one SGD step on the
loss (tested). A block may be an ``NMFBlock`` (DeepFacto): its constraint is a non-negative
factorisation, trained by multiplicative updates, where backprop does not apply.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autoassist.boss.aux_vars import AuxTables
from autoassist.boss.trainer import EpochTrainer

MODES = ("batch", "online")


@dataclass
class ADMMConfig:
    epochs: int = 3
    mode: str = "batch"
    iters: int = 1  # ADMM iterations per mini-batch (online mode: usually several)
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    rho: float = 1.0
    z_lr: float = 0.5
    z_steps: int = 1
    nmf_code_iters: int = 5  # multiplicative code updates per z-step of an NMF block
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: one of {MODES}")
        for name in ("epochs", "iters", "batch_size", "z_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.rho <= 0 or self.lr <= 0 or self.z_lr <= 0:
            raise ValueError("rho, lr and z_lr must be > 0")


class NMFBlock(nn.Module):
    """DeepFacto's factorisation layer: codes ``c >= 0`` with ``a ~ c W``, ``W >= 0`` (r x d).

    ``forward(a)`` solves for the codes of a non-negative input with ``W`` fixed (multiplicative
    updates from a positive start): what the next block reads. Inside Block-ADMM its constraint
    is ``z_{k-1} ~ z_k W`` (z_{k-1}: this block's input, z_k: its codes), and ``W`` follows the
    Lee-Seung multiplicative update, which keeps it non-negative by construction.
    """

    def __init__(self, in_features: int, rank: int, code_iters: int = 30, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        W = torch.rand(rank, in_features, generator=gen) + 0.1
        W = W / W.norm(dim=1, keepdim=True)  # unit rows: codes carry the input's scale
        self.W = nn.Parameter(W, requires_grad=False)
        self.code_iters = code_iters

    def codes(self, a: torch.Tensor, c: torch.Tensor | None = None,
              iters: int | None = None) -> torch.Tensor:
        a = a.clamp_min(0)
        W = self.W
        if c is None:
            c = torch.full((len(a), W.shape[0]), float(a.mean().clamp_min(1e-3)) /
                           float(W.sum(1).mean().clamp_min(1e-6)))
        for _ in range(self.code_iters if iters is None else iters):
            c = c * (a @ W.T) / (c @ (W @ W.T)).clamp_min(1e-12)
        return c

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.codes(a.flatten(1))

    @torch.no_grad()
    def update_W(self, a: torch.Tensor, c: torch.Tensor) -> None:
        """One multiplicative step on ``||a - c W||^2`` over W >= 0."""
        a = a.flatten(1).clamp_min(0)
        self.W.mul_((c.T @ a) / ((c.T @ c) @ self.W).clamp_min(1e-12))

    def reconstruction_error(self, a: torch.Tensor, c: torch.Tensor) -> float:
        a = a.flatten(1).clamp_min(0)
        return float(((a - c @ self.W) ** 2).sum() / (a ** 2).sum().clamp_min(1e-12))


class BlockADMM(EpochTrainer):
    """Trains ``blocks`` (an ``nn.Sequential`` of K modules) on ``(x, y)`` tensors."""

    def __init__(self, blocks: nn.Sequential, x: torch.Tensor, y: torch.Tensor,
                 cfg: ADMMConfig):
        if len(blocks) < 1:
            raise ValueError("blocks is empty")
        if isinstance(blocks[-1], NMFBlock):
            raise ValueError("the last block computes the loss: put a classifier after the "
                             "NMF block")
        self.blocks, self.x, self.y, self.cfg = blocks, x, y, cfg
        self.K = len(blocks)
        self.opts = [torch.optim.SGD(b.parameters(), lr=cfg.lr, momentum=cfg.momentum)
                     if any(p.requires_grad for p in b.parameters()) else None for b in blocks]
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        with torch.no_grad():
            shapes, h = [], x[:2]
            for b in list(blocks)[:-1]:
                h = b(h)
                shapes.append(tuple(h.shape[1:]))
        self.aux = AuxTables(len(x) if cfg.mode == "batch" else 0, shapes, duals=True)
        for k in range(self.K - 1):  # an NMF block's dual lives in its input space
            self.aux.lam[k] = torch.zeros((self.aux.n, *self._dual_shape(k)))
        if cfg.mode == "batch":
            with torch.no_grad():
                for start in range(0, len(x), 1024):
                    zs = self._forward_states(x[start:start + 1024])
                    for k, z in enumerate(zs):
                        self.aux.z[k][start:start + len(z)] = z

    def _forward_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        zs, h = [], x
        for b in list(self.blocks)[:-1]:
            h = b(h)
            zs.append(h)
        return zs

    # -- the augmented Lagrangian, term by term -------------------------------------------------
    def _term(self, k: int, inp: torch.Tensor, z: torch.Tensor | None, u: torch.Tensor | None,
              y: torch.Tensor) -> torch.Tensor:
        """Block k's term, summed over the batch (NMF blocks: ||z_{k-1} - z_k W||^2)."""
        block = self.blocks[k]
        if k == self.K - 1:
            return F.cross_entropy(block(inp), y, reduction="sum")
        if isinstance(block, NMFBlock):
            r = inp.flatten(1).clamp_min(0) - z @ block.W
            r = r + u
        else:
            r = z - block(inp) + u
        return 0.5 * self.cfg.rho * (r * r).sum()

    def _residual(self, k: int, inp: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        block = self.blocks[k]
        if isinstance(block, NMFBlock):
            return inp.flatten(1).clamp_min(0) - z @ block.W
        return z - block(inp)

    # -- one iteration, block by block (the process-per-block schedule calls the same pieces) --
    def block_step(self, k: int, inp: torch.Tensor, zk, uk, y: torch.Tensor) -> float | None:
        """Block k's own update (SGD step, or the NMF block's multiplicative W step); the last
        block returns its mean loss."""
        block, B = self.blocks[k], len(y)
        if isinstance(block, NMFBlock):  # multiplicative step: W stays >= 0
            block.update_W((inp.flatten(1).clamp_min(0) + uk).clamp_min(0), zk)
            return None
        term = self._term(k, inp, zk, uk, y)
        scale = B if k == self.K - 1 else B * zk[0].numel()  # step size free of state size
        self.opts[k].zero_grad(set_to_none=True)
        (term / scale).backward()
        self.opts[k].step()
        return float(term.detach()) / B if k == self.K - 1 else None

    def input_grad(self, k: int, iterate: torch.Tensor, zk, uk, y: torch.Tensor) -> torch.Tensor:
        """d(block k's term)/d(its input) at ``iterate``: what block k tells block k-1."""
        iterate = iterate.detach().requires_grad_(True)
        return torch.autograd.grad(self._term(k, iterate, zk, uk, y), iterate)[0]

    def pre_step(self, k: int, inp: torch.Tensor, zk: torch.Tensor, uk) -> torch.Tensor:
        """NMF codes: multiplicative steps on their own term (>= 0, fast); others: unchanged."""
        if not isinstance(self.blocks[k], NMFBlock):
            return zk
        with torch.no_grad():
            target = (inp.flatten(1).clamp_min(0) + uk).clamp_min(0)
            return self.blocks[k].codes(target, c=zk.clamp_min(1e-8),
                                        iters=self.cfg.nmf_code_iters)

    def own_grad(self, k: int, inp: torch.Tensor, zk: torch.Tensor, uk, y: torch.Tensor
                 ) -> torch.Tensor | None:
        """d(block k's own term)/d z_k (None for an NMF block: its codes are projected)."""
        if isinstance(self.blocks[k], NMFBlock):
            return None
        zk = zk.detach().requires_grad_(True)
        return torch.autograd.grad(self._term(k, inp, zk, uk, y), zk)[0]

    def z_step(self, k: int, inp: torch.Tensor, zk: torch.Tensor, uk, y: torch.Tensor,
               g_next: torch.Tensor, g_own: torch.Tensor | None = None) -> torch.Tensor:
        """``z_k``'s gradient step: its own term's gradient (NMF: projection instead) plus the
        next block's ``g_next``. ``g_own``: ``own_grad``, if already computed."""
        step = self.cfg.z_lr / self.cfg.rho
        if isinstance(self.blocks[k], NMFBlock):
            return (zk - step * g_next).clamp_min(0).detach()  # projected: codes stay >= 0
        if g_own is None:
            g_own = self.own_grad(k, inp, zk, uk, y)
        return (zk.detach() - step * (g_own + g_next)).detach()

    @torch.no_grad()
    def dual_step(self, k: int, inp: torch.Tensor, zk: torch.Tensor, uk
                  ) -> tuple[torch.Tensor, float]:
        r = self._residual(k, inp, zk)
        ref = inp.flatten(1) if isinstance(self.blocks[k], NMFBlock) else zk
        return uk + r, float((r * r).sum() / (ref ** 2).sum().clamp_min(1e-12))

    def iteration(self, x, y, z: list[torch.Tensor], u: list[torch.Tensor]
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor], float, list[float]]:
        """One ADMM iteration on a batch; returns the new ``z``, ``u``, loss and residuals."""
        K = self.K
        inputs = [x] + z
        own = [(z[k], u[k]) if k < K - 1 else (None, None) for k in range(K)]
        loss = 0.0
        for k in range(K):  # block updates: independent of each other
            out = self.block_step(k, inputs[k], *own[k], y)
            if out is not None:
                loss = out
        new_z = []
        for k in range(K - 1):  # auxiliary variables: steps on the two terms of each
            zk = z[k].clone()
            for _ in range(self.cfg.z_steps):
                zk = self.pre_step(k, inputs[k], zk, u[k])
                g_next = self.input_grad(k + 1, zk, *own[k + 1], y)
                zk = self.z_step(k, inputs[k], zk, u[k], y, g_next)
            new_z.append(zk)
        for p in self.blocks.parameters():
            p.grad = None
        new_u, residuals = [], []
        for k in range(K - 1):  # dual ascent on the new residuals
            uk, r = self.dual_step(k, inputs[k], new_z[k], u[k])
            new_u.append(uk)
            residuals.append(r)
        return new_z, new_u, loss, residuals

    @torch.no_grad()
    def constraints(self) -> dict[str, Any]:
        """Batch mode, over every instance: relative residuals and the augmented Lagrangian."""
        if self.cfg.mode != "batch" or self.K == 1:
            return {}
        num, den, lagrangian = [0.0] * (self.K - 1), [0.0] * (self.K - 1), 0.0
        for start in range(0, len(self.x), 1024):
            ids = torch.arange(start, min(start + 1024, len(self.x)))
            inputs = [self.x[ids]] + [t[ids] for t in self.aux.z]
            for k in range(self.K):
                if k == self.K - 1:
                    lagrangian += float(self._term(k, inputs[k], None, None, self.y[ids]))
                    continue
                u = self.aux.lam[k][ids]
                r = self._residual(k, inputs[k], inputs[k + 1])
                lagrangian += float(0.5 * self.cfg.rho * (((r + u) ** 2).sum() - (u * u).sum()))
                ref = inputs[k].flatten(1) if isinstance(self.blocks[k], NMFBlock) \
                    else inputs[k + 1]
                num[k] += float((r * r).sum())
                den[k] += float((ref * ref).sum())
        return {"lagrangian": lagrangian / len(self.x),
                "residuals_end": [n / max(d, 1e-12) for n, d in zip(num, den, strict=True)]}

    # -- epochs ---------------------------------------------------------------------------------
    def _dual_shape(self, k: int) -> tuple[int, ...]:
        if isinstance(self.blocks[k], NMFBlock):  # the NMF residual lives in input space
            return (self.blocks[k].W.shape[1],)
        return tuple(self.aux.z[k].shape[1:])

    def epoch_pass(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        order = torch.randperm(len(self.x), generator=self.gen)
        losses, res = [], []
        for start in range(0, len(order), self.cfg.batch_size):
            ids = order[start:start + self.cfg.batch_size]
            x, y = self.x[ids], self.y[ids]
            if self.cfg.mode == "batch":
                z = [t[ids] for t in self.aux.z]
                u = [t[ids] for t in self.aux.lam]
            else:  # online: fresh states for this batch only
                with torch.no_grad():
                    z = self._forward_states(x)
                u = [torch.zeros((len(ids), *self._dual_shape(k))) for k in range(self.K - 1)]
            for _ in range(self.cfg.iters):
                z, u, loss, r = self.iteration(x, y, z, u)
            if self.cfg.mode == "batch":
                for k in range(self.K - 1):
                    self.aux.z[k][ids], self.aux.lam[k][ids] = z[k], u[k]
            losses.append(loss)
            res.append(r)
        record = {"epoch": self.epoch, "mode": self.cfg.mode,
                  "loss": sum(losses) / len(losses),
                  "residuals": [sum(r[k] for r in res) / len(res) for k in range(self.K - 1)],
                  "seconds": time.perf_counter() - t0}
        record.update(self.constraints())  # measured after the epoch, outside its time
        nmf = [k for k, b in enumerate(self.blocks) if isinstance(b, NMFBlock)]
        if nmf:
            with torch.no_grad():
                k = nmf[0]
                a = self.x[:1024]
                for b in list(self.blocks)[:k]:
                    a = b(a)
                c = self.blocks[k](a)
                record["nmf_reconstruction_error"] = self.blocks[k].reconstruction_error(a, c)
                record["nmf_min_W"] = float(self.blocks[k].W.min())
                record["nmf_min_code"] = float(c.min())
        return record

    def fit(self, evaluate=None, progress: bool = True, checkpoint: str | Path | None = None,
            processes: bool = False, timeout_s: float = 300.0) -> list[dict[str, Any]]:
        """Run the remaining epochs. ``processes=True``: one process per block
        (``block_admm_parallel.py``; identical numbers), as one launch: evaluation, constraints
        and the checkpoint follow the whole run."""
        if processes and self.K > 1 and self.epoch < self.cfg.epochs:
            from autoassist.boss.block_admm_parallel import run_parallel

            epochs = self.cfg.epochs - self.epoch
            records = run_parallel(self, epochs, timeout_s)  # timed: launch, no checks
            records[-1].update(self.constraints())
            self._epochs_done(records, epochs, evaluate, checkpoint)
            return self.history
        return self._run_epochs(self.cfg.epochs, f"block-admm ({self.cfg.mode})",
                                self.epoch_pass, evaluate, checkpoint, progress)

    # -- state ----------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"config": asdict(self.cfg), "blocks": self.blocks.state_dict(),
                "optimizers": [None if o is None else o.state_dict() for o in self.opts],
                "aux": self.aux.state_dict(), "epoch": self.epoch,
                "generator": self.gen.get_state(), "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"]["mode"] != self.cfg.mode:
            raise ValueError(f"checkpoint is a {state['config']['mode']}-mode run, this one is "
                             f"{self.cfg.mode}")
        self.blocks.load_state_dict(state["blocks"])
        for o, s in zip(self.opts, state["optimizers"], strict=True):
            if o is not None:
                o.load_state_dict(s)
        self.aux.load_state_dict(state["aux"])
        self.epoch = state["epoch"]
        self.gen.set_state(state["generator"])
        self.history = list(state["history"])
