"""The shrinking engine: per-epoch selection plans, loss reports, telemetry and state.

Framework-agnostic: the DataLoader wrapper, the torchdata node and the fairseq plugin all drive
one ``ShrinkEngine``. It owns the shared score/feature tables and the Assistant process, and
turns the newest published scores into an ``EpochPlan`` (which instances this epoch keeps) with
the counter-based selection kernel.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from autoassist.assistant import (
    AssistantProcess,
    AssistantSettings,
    Losses,
    ScoreRequest,
    SharedState,
)
from autoassist.config import ShrinkConfig
from autoassist.device_losses import DeviceLossQueue
from autoassist.features import CallableFeatures, RandomProjectionFeatures


@dataclass
class EpochPlan:
    """What one epoch trains on. ``mask is None`` means every instance is kept."""

    epoch: int
    reason: str  # "warmup", "anneal", "shrink" or "keep-all" (floor 1)
    mask: np.ndarray | None
    scores: np.ndarray | None
    score_version: int
    floor: float
    mean_keep: float
    kept: int

    # mean(P) / P for all N, made with the plan (P is the selection's): a gather per batch
    all_weights: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mask is not None and self.all_weights is None:
            from autoassist.kernels import keep_probabilities  # the P the selection kernel used

            self.all_weights = _loss_weights(keep_probabilities(self.scores, self.floor),
                                             self.mean_keep)

    def weights(self, ids: np.ndarray) -> np.ndarray:
        """``mean(P) / P_i``: unbiased reweighting of kept instances (1 when keeping all)."""
        if self.mask is None:
            return np.ones(len(ids), np.float32)
        return self.all_weights[ids]


def _loss_weights(p: np.ndarray, mean_keep: float) -> np.ndarray:
    return (mean_keep / np.maximum(p, 1e-12)).astype(np.float32)


_SINGLE_REPLICA: ContextVar[bool] = ContextVar("autoassist_single_replica", default=False)


@contextmanager
def single_replica():
    """Engines made inside see no data-parallel world even when torch.distributed is up.

    For process groups that are not data-parallel replicas, such as the Boss's stage processes
    (only stage 0 holds a loader, so there is no score broadcast to share).
    """
    token = _SINGLE_REPLICA.set(True)
    try:
        yield
    finally:
        _SINGLE_REPLICA.reset(token)


def _dist_rank_world() -> tuple[int, int]:
    if _SINGLE_REPLICA.get():
        return 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShrinkEngine:
    """Selection, reporting and Assistant management for a data set of N instances."""

    def __init__(self, num_instances: int, config: ShrinkConfig, *, features=None, inputs=None,
                 tensorboard: str | None = None, external_features: int | None = None):
        """``features``: None (a random projection of each batch's inputs), a callable on the
        batch, or a fixed ``[N, dim]`` table. ``external_features=dim`` instead: the caller
        writes each instance's row with ``renew`` whenever its data changes (replay buffers)."""
        self.n = int(num_instances)
        self.config = config
        self.rank, self.world = _dist_rank_world()
        self._fixed_features: np.ndarray | None = None
        if external_features is not None:
            if features is not None:
                raise ValueError("pass either features=... or external_features=dim, not both")
            if int(external_features) < 1:
                raise ValueError(f"external_features={external_features}: a feature "
                                 "dimension must be >= 1")
            self.extractor = None
            dim = int(external_features)
        elif features is None:
            self.extractor = RandomProjectionFeatures(
                config.feature_dim, config.label_buckets, config.seed, inputs=inputs
            )
            dim = self.extractor.dim
        elif callable(features) and not isinstance(features, (torch.Tensor, np.ndarray)):
            self.extractor = CallableFeatures(features, config.feature_dim)
            dim = config.feature_dim
        else:
            table = np.asarray(torch.as_tensor(features).detach().cpu(), dtype=np.float32)
            if table.ndim != 2 or table.shape[0] != self.n:
                raise ValueError(
                    f"features has shape {table.shape}; expected [num_instances={self.n}, dim]"
                )
            if not np.isfinite(table).all():
                raise ValueError("features contain NaN or inf; clean them before wrapping")
            self.extractor = None
            self._fixed_features = table
            dim = table.shape[1]
        self.dim = dim
        self.state = SharedState(self.n, dim)
        if self._fixed_features is not None:
            self.state.features[:] = self._fixed_features
            self.state.have[:] = 1
        self.assistant: AssistantProcess | None = None
        if self.rank == 0:  # rank 0's Assistant scores for everyone (its snapshot is broadcast)
            self.assistant = AssistantProcess(
                self.state, AssistantSettings.from_config(config),
                queue_size=config.queue_size, max_restarts=config.max_restarts,
            )
            self.assistant.start()
        self.current: EpochPlan | None = None
        self._pending_ids: list[np.ndarray] = []
        self._pending_losses: list[np.ndarray] = []
        self._pending_batches = 0
        self._pending_forget: list[np.ndarray] = []  # renewed ids the Assistant must forget
        self._device_losses = DeviceLossQueue()  # CUDA losses still being copied to the host
        # ranks > 0: reports (and first-seen feature rows) for rank 0's Assistant, gathered at
        # the next plan(); rank 0: how many it received from the others this epoch
        self._outgoing: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._gathered = 0
        self.telemetry: list[dict[str, Any]] = []
        self._epoch_started = time.perf_counter()
        self._last_epoch_seconds = 0.0
        self._features_complete = False
        self.first_scores_waited = 0.0  # seconds plan() waited for the Assistant's first scores
        self._reported = 0
        self._warned_features = False
        self._trace = None
        if config.trace_dir and self.rank == 0:  # the reports the Assistant learns from
            from autoassist.trace import TraceWriter

            self._trace = TraceWriter(config.trace_dir, config.to_dict(), self.n, dim)
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(tensorboard)

    # -- plans -----------------------------------------------------------------------------------
    def _keep_all_reason(self, epoch: int) -> str | None:
        c = self.config
        if epoch < c.warmup_epochs:
            return "warmup"
        if c.epochs is not None and c.anneal_epochs and epoch >= c.epochs - c.anneal_epochs:
            return "anneal"
        if c.floor >= 1.0:
            return "keep-all"
        return None

    def _floor(self) -> float:
        floor = self.config.floor
        if self.config.adaptive_floor:
            acc = self.state.accuracy
            if math.isfinite(acc):
                floor = max(floor, 1.0 - acc)
        return float(floor)

    def plan(self, epoch: int) -> EpochPlan:
        if self.current is not None and self.current.epoch == epoch:
            return self.current
        if self.world > 1:  # every rank plans each epoch once, at the same point: a collective
            self._gather_reports()
        self._epoch_started = time.perf_counter()
        # once every instance has its feature row, reports stop checking for new ones (renew()
        # writes rows itself and never clears one)
        self._features_complete = bool(self.state.have.all())
        reason = self._keep_all_reason(epoch)
        if reason is not None:
            self.current = EpochPlan(epoch, reason, None, None, -1, 1.0, 1.0, self.n)
            return self.current
        if self.assistant is not None:
            self.assistant.check()
        scores, version = self.state.snapshot()
        if version == 0:
            scores, version = self._await_first_scores(scores, version)
        floor = self._floor()
        if self.world > 1:
            scores, floor = self._broadcast(scores, floor)
        self.current = self._make_plan(epoch, scores, version, floor)
        return self.current

    def _await_first_scores(self, scores: np.ndarray, version: int) -> tuple[np.ndarray, int]:
        """The one bounded wait: without any scores this epoch would keep everything (a whole
        epoch of extra work), so give a still-starting Assistant a fraction of an epoch."""
        limit = self.config.first_scores_wait * self._last_epoch_seconds
        if self.assistant is None or self.assistant.failed or limit <= 0:
            return scores, version
        t0 = time.perf_counter()
        deadline = t0 + limit
        while time.perf_counter() < deadline and self.assistant.alive:
            self.assistant.deliver()  # the score request may still be held in the backlog
            if self.state.seq >= 2:  # a version is complete (the seqlock's count says so)
                scores, version = self.state.snapshot()
                break
            time.sleep(0.001)
        self.first_scores_waited += time.perf_counter() - t0
        return scores, version

    def _make_plan(self, epoch, scores, version, floor) -> EpochPlan:
        """Plan from the Assistant's published scores (``rank_power`` turns them into ranks)."""
        if self.config.rank_power is not None:
            from autoassist.kernels import rank_scores

            scores = rank_scores(scores, self.config.rank_power)
        return self._plan_from_keep_scores(epoch, scores, version, floor)

    def _plan_from_keep_scores(self, epoch, scores, version, floor) -> EpochPlan:
        """Plan from the ``p_i`` of ``P_i = b + (1 - b) * p_i``; the plan keeps them as
        ``scores``, so weights and restarts use exactly the P the selection used."""
        from autoassist.kernels import keep_mask, keep_probabilities

        mask, kept = keep_mask(scores, floor, self.config.seed, epoch,
                               num_threads=self.config.kernel_threads)
        p = keep_probabilities(scores, floor)  # once: for the mean and for the loss weights
        mean_keep = float(p.mean(dtype=np.float64))
        return EpochPlan(epoch, "shrink", mask, scores, version, floor, mean_keep, kept,
                         _loss_weights(p, mean_keep))

    def _broadcast(self, scores: np.ndarray, floor: float) -> tuple[np.ndarray, float]:
        """Every rank selects from rank 0's snapshot, so all ranks keep the same set."""
        dist = torch.distributed
        device = "cpu"
        if dist.get_backend() == "nccl":  # NCCL moves CUDA tensors only (untested here: no GPU)
            device = torch.device("cuda", torch.cuda.current_device())
        packed = torch.empty(self.n + 1, dtype=torch.float32)
        if self.rank == 0:
            packed[: self.n] = torch.from_numpy(scores)
            packed[self.n] = floor
        packed = packed.to(device)
        dist.broadcast(packed, src=0)
        packed = packed.cpu()
        return packed[: self.n].numpy().copy(), float(packed[self.n])

    # -- reports ---------------------------------------------------------------------------------
    def report(self, per_sample: torch.Tensor, ids: np.ndarray, batch: Any = None) -> torch.Tensor:
        """Send the losses to the Assistant; return their (re)weighted mean for the backward."""
        self.observe(per_sample, ids, batch)
        weights = self.loss_weights(ids, per_sample)
        return per_sample.mean() if weights is None else (per_sample * weights).mean()

    def observe(self, per_sample: torch.Tensor, ids: np.ndarray, batch: Any = None) -> None:
        """Queue one loss per instance for the Assistant (never blocks unless ``sync``)."""
        if not isinstance(per_sample, torch.Tensor):
            raise TypeError(
                f"report() takes a tensor of per-instance losses, got {type(per_sample)}"
            )
        if per_sample.ndim != 1:
            raise ValueError(
                f"report() takes one loss per instance (a 1-D tensor); got shape "
                f"{tuple(per_sample.shape)}. Compute the loss with reduction='none' and reduce "
                "extra dimensions per instance (e.g. .mean(dim=1))"
            )
        if len(per_sample) != len(ids):
            raise ValueError(
                f"report() got {len(per_sample)} losses for a batch of {len(ids)} instances; "
                "pass one loss per instance of the batch just yielded (or ids=... to match)"
            )
        if self._device_losses.needs_deferral(per_sample):
            # no .cpu() here: it would wait for the GPU on every batch (device_losses.py)
            self._device_losses.push(per_sample, np.asarray(ids).copy(), batch)
            self._take_device_losses(wait=self.config.sync)
            return
        losses = per_sample.detach()
        if losses.dtype != torch.float32 or losses.device.type != "cpu":
            losses = losses.to(torch.float32).cpu()
        self._accept(losses.numpy().copy(), ids, batch)  # few calls: each one costs in a loop

    def _take_device_losses(self, wait: bool) -> None:
        """Accept the device losses whose copies have finished (all of them when ``wait``)."""
        for losses, ids, batch in self._device_losses.ready(wait=wait):
            self._accept(losses, ids, batch)

    def _accept(self, losses: np.ndarray, ids: np.ndarray, batch: Any) -> None:
        if not math.isfinite(float(losses.sum(dtype=np.float64))):  # one call per batch
            finite = np.isfinite(losses)  # (a finite sum means every loss is finite)
            bad = ids[~finite][:5].tolist()
            raise FloatingPointError(
                f"{int((~finite).sum())} non-finite per-instance losses (instance ids {bad}...); "
                "the Boss diverged or the loss is wrong: lower the learning rate or check inputs"
            )
        self._reported += len(ids)
        if self.rank != 0:  # rank 0's Assistant learns from every rank's reports (plan gathers)
            new = self._write_features(ids, batch)
            self._outgoing.append((ids.copy(), losses, ids[new], self.state.features[ids[new]]))
            return
        if self.assistant is not None and not self.assistant.failed:
            self._write_features(ids, batch)
            if self._trace is not None:
                self._trace.add(ids, losses, self.state.features[ids], self.state.have[ids])
            self._queue(ids.copy(), losses)
            if self._pending_batches >= self.config.send_every:
                self.flush()

    def _write_features(self, ids: np.ndarray, batch: Any) -> np.ndarray:
        """Feature rows of the instances this process sees for the first time (from ``batch``);
        returns their positions in ``ids``."""
        if self.extractor is None or self._features_complete:
            return np.zeros(0, np.int64)
        rows = np.flatnonzero(self.state.have[ids] == 0)
        if len(rows) and batch is None:
            self._warn_no_features()
            return np.zeros(0, np.int64)
        if len(rows):
            self.state.features[ids[rows]] = self.extractor(batch, torch.from_numpy(rows))
            self.state.have[ids[rows]] = 1
        return rows

    def _gather_reports(self) -> None:
        """Bring every rank's reports since the last plan to rank 0's Assistant.

        Without this, a data-parallel Assistant learns from 1/world of the losses, and the
        instances only other ranks saw keep the "never seen" score of 1 (always kept).
        """
        dist = torch.distributed
        none = (np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64),
                np.zeros((0, self.dim), np.float32))
        payload = tuple(np.concatenate(part)
                        for part in zip(*(self._outgoing or [none]), strict=True))
        self._outgoing = []
        received = [None] * self.world if self.rank == 0 else None
        dist.gather_object(payload, received, dst=0)
        if self.rank != 0 or self.assistant is None or self.assistant.failed:
            return
        for ids, losses, feature_ids, rows in received[1:]:
            fresh = self.state.have[feature_ids] == 0
            self.state.features[feature_ids[fresh]] = rows[fresh]
            self.state.have[feature_ids[fresh]] = 1
            if len(ids):
                self._queue(ids, losses)
                self._gathered += len(ids)
        self.flush()

    def _queue(self, ids: np.ndarray, losses: np.ndarray) -> None:
        """One report's losses into the next message for the Assistant."""
        self._pending_ids.append(ids)
        self._pending_losses.append(losses)
        self._pending_batches += 1

    def renew(self, ids: np.ndarray, features: np.ndarray) -> None:
        """Instances ``ids`` now hold new data (a replay buffer overwrote their slots): store
        their feature rows and make the Assistant forget their old losses."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        rows = np.asarray(features, np.float32)
        if rows.shape != (len(ids), self.dim):
            raise ValueError(f"renew() got features of shape {rows.shape} for {len(ids)} ids; "
                             f"expected ({len(ids)}, {self.dim})")
        if not np.isfinite(rows).all():
            raise ValueError("renew() got NaN or inf features; clean the transitions first")
        if len(ids) and (ids.min() < 0 or ids.max() >= self.n):
            raise IndexError(f"renew() ids must lie in [0, {self.n})")
        self.state.features[ids] = rows
        self.state.have[ids] = 1
        self._take_device_losses(wait=True)  # losses of the old contents come first
        if self.assistant is not None and not self.assistant.failed:
            if self._pending_ids and np.isin(ids, np.concatenate(self._pending_ids)).any():
                self.flush()  # losses queued for the old contents go first
            self._pending_forget.append(ids.copy())  # sent with the next losses, ahead of them

    def loss_weights(self, ids: np.ndarray, like: torch.Tensor) -> torch.Tensor | None:
        """Per-instance loss weights ``mean(P) / P_i`` (as ``like``'s device and dtype), or None
        when the current epoch needs none (no ``reweight``, or it keeps everything)."""
        plan = self.current
        if not self.config.reweight or plan is None or plan.mask is None:
            return None
        weights = torch.from_numpy(plan.weights(ids))
        if like.device.type == "cpu" and like.dtype == torch.float32:
            return weights
        if like.device.type == "cuda":  # pinned + non-blocking: no wait for the GPU's queue
            return weights.pin_memory().to(like.device, like.dtype, non_blocking=True)
        return weights.to(like.device, like.dtype)

    def _warn_no_features(self) -> None:
        if not self._warned_features:
            self._warned_features = True
            warnings.warn(
                "autoassist: report() got losses without their batch, so the Assistant has no "
                "features for those instances and cannot learn from them; pass batch=... to "
                "report() or give per-instance features=... when wrapping",
                RuntimeWarning, stacklevel=5,
            )

    def flush(self) -> None:
        if (not self._pending_ids and not self._pending_forget) or self.assistant is None:
            return
        empty = np.zeros(0, np.int64)
        forget = np.concatenate(self._pending_forget) if self._pending_forget else empty
        msg = Losses(np.concatenate(self._pending_ids) if self._pending_ids else empty,
                     np.concatenate(self._pending_losses) if self._pending_losses
                     else np.zeros(0, np.float32), forget)
        self._pending_ids, self._pending_losses, self._pending_batches = [], [], 0
        self._pending_forget = []
        self.assistant.send(msg, block=self.config.sync)

    def end_epoch(self, epoch: int, batches: int) -> dict[str, Any]:
        """Ask for fresh scores (async: the Boss does not wait, unless ``sync``); log telemetry."""
        self._take_device_losses(wait=True)  # the epoch's last device losses
        seconds = time.perf_counter() - self._epoch_started
        self._last_epoch_seconds = seconds
        if self.assistant is not None:
            self.assistant.check()  # a dead Assistant restarts here or at plan(), not in report
        if self.assistant is not None and not self.assistant.failed:
            self.flush()
            self.assistant.send(ScoreRequest(epoch), block=self.config.sync)
            if self.config.sync and not self.assistant.wait_processed(timeout=300):
                why = "did not catch up within 300 s" if self.assistant.alive else "died"
                warnings.warn(f"autoassist: the Assistant {why} (sync mode); the next epoch "
                              "selects from the last published scores", RuntimeWarning,
                              stacklevel=3)
        if self._trace is not None:
            self._trace.end_epoch(epoch)
        plan = self.current
        record: dict[str, Any] = {
            "epoch": epoch,
            "reason": plan.reason if plan else "none",
            "kept": plan.kept if plan else self.n,
            "num_instances": self.n,
            "kept_fraction": (plan.kept if plan else self.n) / self.n,
            "floor": plan.floor if plan else 1.0,
            "batches": batches,
            "reported_instances": self._reported,
            "gathered_instances": self._gathered,  # rank 0: reports other ranks sent it
            "epoch_seconds": seconds,
            "first_scores_waited": self.first_scores_waited,
        }
        self._reported = 0
        self._gathered = 0
        if self.assistant is not None:
            record.update(self.assistant.telemetry())
        self.telemetry.append(record)
        if self._writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(f"autoassist/{key}", value, epoch)
            self._writer.flush()
        return record

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        self._take_device_losses(wait=True)  # no report in flight is lost from a checkpoint
        model_state, current = None, self.assistant is None  # ranks > 0 hold no Assistant
        if self.assistant is not None:
            if self.config.sync:
                self.assistant.wait_processed(timeout=300)
            model_state, current = self.assistant.model_state()
        have = np.flatnonzero(self.state.have)
        plan = self.current
        return {
            "config": self.config.to_dict(),
            "dim": self.dim,
            "plan": None if plan is None else {
                "epoch": plan.epoch, "reason": plan.reason, "scores": plan.scores,
                "score_version": plan.score_version, "floor": plan.floor,
            },
            "published": self.state.snapshot(),
            "assistant": model_state,
            "assistant_current": current,  # False: an older state (or none) after a timeout
            "feature_ids": have,
            "features": self.state.features[have].copy(),
            "pending": (list(self._pending_ids), list(self._pending_losses),
                        self._pending_batches),
            "pending_forget": list(self._pending_forget),
            "outgoing": list(self._outgoing),
            "telemetry": list(self.telemetry),
            "drops": self.assistant.drops if self.assistant else 0,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["dim"] != self.dim:
            raise ValueError(
                f"saved Assistant features have {state['dim']} dimensions, this loader "
                f"{self.dim}: use the same feature_dim/label_buckets/features as the saved run"
            )
        if self.assistant is not None:
            self.assistant.stop()
        self.state.have[:] = 0
        self.state.have[state["feature_ids"]] = 1
        self.state.features[state["feature_ids"]] = state["features"]
        self._features_complete = bool(self.state.have.all())
        scores, version = state["published"]
        self.state.load_scores(scores, version)
        p = state["plan"]
        if p is None:
            self.current = None
        elif p["scores"] is None:
            self.current = EpochPlan(p["epoch"], p["reason"], None, None, -1, 1.0, 1.0, self.n)
        else:
            self.current = self._plan_from_keep_scores(p["epoch"], p["scores"],
                                                       p["score_version"], p["floor"])
        ids, losses, batches = state["pending"]
        self._pending_ids, self._pending_losses = list(ids), list(losses)
        self._pending_batches = batches
        self._pending_forget = list(state.get("pending_forget", []))
        self._outgoing = list(state.get("outgoing", []))
        self.telemetry = list(state["telemetry"])
        if self.assistant is not None:
            self.assistant.drops = state["drops"]
            self.assistant.start(model_state=state["assistant"], replace_state=True)

    def close(self) -> None:
        if self.assistant is not None:
            self.assistant.stop()
            self.assistant = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if getattr(self, "state", None) is not None:
            self.state.close()
            self.state = None
