"""``ShrinkEngine``: one data set's plans, reports, Assistant and state, composed of the parts.

Framework-agnostic: the DataLoader wrapper, the torchdata node, the fairseq plugin and the
replay buffer all drive one engine. It owns the shared score/feature tables and the Assistant
process; the keep policy is ``plan.py``, the report buffer ``reports.py`` (CUDA losses:
``device_losses.py``), the data-parallel collectives ``distributed.py`` and the epoch records
``telemetry.py``.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import torch

from autoassist.assistant import AssistantProcess, AssistantSettings, ScoreRequest, SharedState
from autoassist.assistant.features import CallableFeatures, RandomProjectionFeatures
from autoassist.assistant.loss_ring import default_slots
from autoassist.config import FEATURELESS_ASSISTANTS, ShrinkConfig
from autoassist.engine import distributed, state_check
from autoassist.engine import plan as policy
from autoassist.engine.device_losses import DeviceLossQueue
from autoassist.engine.plan import EpochPlan
from autoassist.engine.reports import ReportBuffer, check_finite, check_losses
from autoassist.engine.safe_state import as_numpy, safe
from autoassist.engine.telemetry import Telemetry


class ShrinkEngine:
    """Selection, reporting and Assistant management for a data set of N instances."""

    def __init__(self, num_instances: int, config: ShrinkConfig, *, features=None, inputs=None,
                 tensorboard: str | None = None, external_features: int | None = None):
        """``features``: None (a random projection of each batch's inputs), a callable on the
        batch, or a fixed ``[N, dim]`` table. ``external_features=dim`` instead: the caller
        writes each instance's row with ``renew`` whenever its data changes (replay buffers)."""
        self.n = int(num_instances)
        self.config = config
        self.rank, self.world = distributed.rank_world()
        self.extractor, fixed, self.dim = self._feature_source(features, inputs,
                                                               external_features)
        self.state = SharedState(self.n, self.dim, feature_dir=config.feature_dir)
        if fixed is not None:
            self.state.features[:] = fixed
        if fixed is not None or self.dim == 0:  # every row is complete from the start
            self.state.have[:] = 1
        self.assistant: AssistantProcess | None = None
        if self.rank == 0:  # rank 0's Assistant scores for everyone (its snapshot is broadcast)
            self.assistant = AssistantProcess(
                self.state, AssistantSettings.from_config(config),
                queue_size=config.queue_size, max_restarts=config.max_restarts,
                ring_slots=default_slots(config.queue_size, config.send_every, self.n),
            )
            self.assistant.start()
        self.current: EpochPlan | None = None
        self._pending = ReportBuffer()
        self._device_losses = DeviceLossQueue()  # CUDA losses still being copied to the host
        # ranks > 0: reports (and first-seen feature rows) for rank 0's Assistant, gathered at
        # the next plan()
        self._outgoing: list[distributed.Report] = []
        self._telemetry = Telemetry(self.n, tensorboard)
        self._features_complete = False
        self.first_scores_waited = 0.0  # seconds plan() waited for the Assistant's first scores
        # a first-scores wait ended without scores: later plans do not wait again (a frozen or
        # silent Assistant would otherwise cost first_scores_wait of every epoch)
        self.first_scores_expired = False
        self._plan_wait = {"first_scores_wait_expired": False, "first_scores_wait_skipped": False}
        self._warned_features = False
        self._trace = None
        if config.trace_dir and self.rank == 0:  # the reports the Assistant learns from
            from autoassist.assistant.trace import TraceWriter

            self._trace = TraceWriter(config.trace_dir, config.to_dict(), self.n, self.dim)

    def _feature_source(self, features, inputs, external_features):
        """(extractor or None, fixed [N, dim] table or None, dim) for the ways features come."""
        config = self.config
        if external_features is not None:
            if features is not None:
                raise ValueError("pass either features=... or external_features=dim, not both")
            if int(external_features) < 1:
                raise ValueError(f"external_features={external_features}: a feature "
                                 "dimension must be >= 1")
            return None, None, int(external_features)
        if config.assistant in FEATURELESS_ASSISTANTS:
            # it scores by the loss memory alone: computing, storing and sending input
            # features would be work (and at 10M instances gigabytes) that nothing reads
            if features is not None:
                warnings.warn(
                    f"autoassist: assistant={config.assistant!r} scores instances by their last "
                    "loss alone, so the features passed are not used; choose a learner "
                    "(assistant='logistic', 'sgd' or 'mlp') to learn from them",
                    UserWarning, stacklevel=4)
            return None, None, 0
        if features is None:
            extractor = RandomProjectionFeatures(config.feature_dim, config.label_buckets,
                                                 config.seed, inputs=inputs)
            return extractor, None, extractor.dim
        if callable(features) and not isinstance(features, (torch.Tensor, np.ndarray)):
            return CallableFeatures(features, config.feature_dim), None, config.feature_dim
        table = np.asarray(torch.as_tensor(features).detach().cpu(), dtype=np.float32)
        if table.ndim != 2 or table.shape[0] != self.n:
            raise ValueError(
                f"features has shape {table.shape}; expected [num_instances={self.n}, dim]"
            )
        if not np.isfinite(table).all():
            raise ValueError("features contain NaN or inf; clean them before wrapping")
        return None, table, table.shape[1]

    @property
    def telemetry(self) -> list[dict[str, Any]]:
        """One record per finished epoch (``end_epoch``'s)."""
        return self._telemetry.records

    @property
    def reported_instances(self) -> int:
        """Instances reported by this process since the current epoch began."""
        return self._telemetry.reported

    # -- plans -----------------------------------------------------------------------------------
    def plan(self, epoch: int) -> EpochPlan:
        """The plan of ``epoch``, made once: later calls for the same epoch return it.

        Making it starts the epoch's clock; with several data-parallel ranks it is a collective
        (every rank plans each epoch once, at the same point).
        """
        if self.current is not None and self.current.epoch == epoch:
            return self.current
        if self.world > 1:
            self._gather_reports()
        self._telemetry.start_epoch()
        self._plan_wait = {"first_scores_wait_expired": False, "first_scores_wait_skipped": False}
        # once every instance has its feature row, reports stop checking for new ones (renew()
        # writes rows itself and never clears one)
        self._features_complete = bool(self.state.have.all())
        reason = policy.keep_all_reason(self.config, epoch)
        if reason is not None:
            self.current = policy.keep_all_plan(epoch, reason, self.n)
            return self.current
        if self.assistant is not None:
            self.assistant.check()
        scores, version = self.state.snapshot()
        if version == 0 and self.first_scores_expired:  # waited once in vain: not again
            self._plan_wait["first_scores_wait_skipped"] = True
        elif version == 0:
            scores, version = self._await_first_scores(scores, version)
        floor = policy.floor(self.config, self.state.accuracy)
        if self.world > 1:
            scores, floor = distributed.broadcast_scores(scores, floor, self.n, self.rank)
        self.current = policy.make_plan(self.config, epoch, scores, version, floor)
        return self.current

    def _await_first_scores(self, scores: np.ndarray, version: int) -> tuple[np.ndarray, int]:
        """The one bounded wait: without any scores this epoch would keep everything (a whole
        epoch of extra work), so give a still-starting Assistant a fraction of an epoch.

        Paid at most once per run: a wait that ends without scores (a frozen, stuck or very
        slow Assistant) sets ``first_scores_expired``, and later plans take what is published
        without waiting (the epoch's record says ``first_scores_wait_skipped``)."""
        limit = self.config.first_scores_wait * self._telemetry.last_epoch_seconds
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
        if version == 0:
            self.first_scores_expired = True
            self._plan_wait["first_scores_wait_expired"] = True
        return scores, version

    # -- reports ---------------------------------------------------------------------------------
    def report(self, per_sample: torch.Tensor, ids: np.ndarray, batch: Any = None) -> torch.Tensor:
        """Send the losses to the Assistant; return their (re)weighted mean for the backward."""
        self.observe(per_sample, ids, batch)
        weights = self.loss_weights(ids, per_sample)
        return per_sample.mean() if weights is None else (per_sample * weights).mean()

    def observe(self, per_sample: torch.Tensor, ids: np.ndarray, batch: Any = None) -> None:
        """Queue one loss per instance for the Assistant (never blocks unless ``sync``)."""
        check_losses(per_sample, len(ids))
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
        """Take one checked report; counted only once it is queued (a report that fails on
        the way, in the feature extractor say, can be retried without counting twice)."""
        check_finite(losses, ids)
        if self.rank != 0:  # rank 0's Assistant learns from every rank's reports (plan gathers)
            new = self._write_features(ids, batch)
            self._outgoing.append((ids.copy(), losses, ids[new], self.state.features[ids[new]]))
            self._telemetry.reported += len(ids)
            return
        if self.assistant is not None and not self.assistant.failed:
            self._write_features(ids, batch)
            if self._trace is not None:
                self._trace.add(ids, losses, self.state.features[ids], self.state.have[ids])
            self._pending.add(ids.copy(), losses)
            self._telemetry.reported += len(ids)
            if self._pending.batches >= self.config.send_every:
                self.flush()
            return
        self._telemetry.reported += len(ids)

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
        """Bring every rank's reports since the last plan to rank 0's Assistant."""
        outgoing, self._outgoing = self._outgoing, []
        received = distributed.gather_reports(outgoing, self.dim, self.rank, self.world)
        if self.rank == 0:
            self._take_reports(received, gathered=True)

    def _take_reports(self, reports: list[distributed.Report], *, gathered: bool) -> None:
        """Other ranks' reports into this (rank 0's) Assistant: feature rows it lacks, then
        the losses; ``gathered`` counts them in the epoch's ``gathered_instances``."""
        if self.assistant is None or self.assistant.failed:
            return
        for ids, losses, feature_ids, rows in reports:
            fresh = self.state.have[feature_ids] == 0
            self.state.features[feature_ids[fresh]] = rows[fresh]
            self.state.have[feature_ids[fresh]] = 1
            if len(ids):
                self._pending.add(ids, losses)
                if gathered:
                    self._telemetry.gathered += len(ids)
        self.flush()

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
            if self._pending.holds_any(ids):
                self.flush()  # losses queued for the old contents go first
            self._pending.add_forget(ids.copy())  # sent with the next losses, ahead of them

    def loss_weights(self, ids: np.ndarray, like: torch.Tensor) -> torch.Tensor | None:
        """Per-instance loss weights ``mean(P) / P_i``, or ``1 / P_i`` with
        ``reweight_scale="sum"`` (as ``like``'s device and dtype), or None when the current epoch
        needs none (no ``reweight``, or it keeps everything)."""
        plan = self.current
        if not self.config.reweight or plan is None or plan.mask is None:
            return None
        weights = torch.from_numpy(plan.weights(ids))
        if self.config.reweight_scale == "sum":
            weights = weights / plan.mean_keep
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
        """Send the buffered reports to the Assistant now (as one message)."""
        if not self._pending or self.assistant is None:
            return
        self.assistant.send(self._pending.take(), block=self.config.sync)

    def end_epoch(self, epoch: int, batches: int,
                  fields: dict[str, Any] | None = None) -> dict[str, Any]:
        """Ask for fresh scores (async: the Boss does not wait, unless ``sync``); log telemetry.

        ``fields``: the caller's own entries of the epoch's record (a loader's counts)."""
        self._take_device_losses(wait=True)  # the epoch's last device losses
        seconds = self._telemetry.stop_clock()
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
        return self._telemetry.end_epoch(
            epoch, self.current, batches, seconds, self.first_scores_waited,
            self.assistant.telemetry() if self.assistant is not None else None,
            fields={**self._plan_wait, **(fields or {})})

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs, as tensors and plain Python values only
        (``safe_state.safe``), so that ``torch.load`` with ``weights_only=True`` reads it."""
        self._take_device_losses(wait=True)  # no report in flight is lost from a checkpoint
        model_state, current = None, self.assistant is None  # ranks > 0 hold no Assistant
        if self.assistant is not None:
            if self.config.sync:
                self.assistant.wait_processed(timeout=300)
            model_state, current = self.assistant.model_state()
        # without features (dim 0) every row is trivially complete: nothing to store
        have = np.flatnonzero(self.state.have) if self.dim else np.zeros(0, np.int64)
        plan = self.current
        return safe({
            # ``extra`` holds the user's free-form notes (any object): not stored, as in files
            "config": {k: v for k, v in self.config.to_dict().items() if k != "extra"},
            "dim": self.dim,
            "plan": None if plan is None else {
                "epoch": plan.epoch, "reason": plan.reason.value, "scores": plan.scores,
                "score_version": plan.score_version, "floor": plan.floor,
            },
            "published": self.state.snapshot(),
            "assistant": model_state,
            "assistant_current": current,  # False: an older state (or none) after a timeout
            "feature_ids": have,
            "features": self.state.features[have],  # fancy indexing: a copy of the table
            **self._pending.state(),
            "outgoing": list(self._outgoing),
            "telemetry": list(self.telemetry),
            "drops": self.assistant.drops if self.assistant else 0,
            "first_scores_expired": self.first_scores_expired,
        }, "engine state")

    def rank_state(self) -> dict[str, Any]:
        """The entries of ``state_dict()`` that are this data-parallel rank's own.

        Every rank's plan, scores and features are rank 0's (broadcast, or gathered to it),
        but its reports not yet gathered to rank 0 (``outgoing``), its telemetry records and
        its report buffer are not. A checkpoint written by rank 0 alone holds them only if
        each rank's ``rank_state()`` travels with it; a rank's state is then rank 0's
        ``state_dict()`` with these entries in place of rank 0's
        (``autoassist.pipelines.base.with_rank_state``). Sends nothing to the Assistant.
        Feature rows need no part: a rank's rows not yet gathered travel in ``outgoing``, and
        rank 0 keeps the first row it gets for an instance, so its table comes out the same.

        Returns:
            A dict of tensors and plain values (``safe_state.safe``).
        """
        self._take_device_losses(wait=True)  # no report in flight is lost from a checkpoint
        return safe({**self._pending.state(), "outgoing": list(self._outgoing),
                     "telemetry": list(self.telemetry),
                     "first_scores_expired": self.first_scores_expired}, "engine rank state")

    def load_state_dict(self, state: dict[str, Any], *, path: str = "engine state") -> None:
        """Restore ``state_dict()``'s result: the whole state is checked first, so a state
        that cannot be loaded changes nothing (the Assistant keeps running).

        Raises:
            StateError: a key is missing or holds a value of the wrong type, shape or range,
                or the Assistant's learner is of another kind or size; the message names the
                key (under ``path``) and the fix. A ``UsageError``, so a ``ValueError``.
        """
        self.restore_state(state, self.check_state(state, path=path))

    def check_state(self, state: Any, *, path: str = "engine state") -> EpochPlan | None:
        """Check every key ``load_state_dict`` reads (``state_check.py``) without changing
        anything; returns the plan the state restores, for ``restore_state``."""
        state_check.check_engine_state(state, n=self.n, dim=self.dim, config=self.config,
                                       path=path)
        p = state["plan"]
        if p is None:
            return None
        if p["scores"] is None:
            return policy.keep_all_plan(int(p["epoch"]), p["reason"], self.n)
        return policy.plan_from_keep_scores(self.config, int(p["epoch"]),
                                            np.asarray(p["scores"], np.float32),
                                            int(p["score_version"]), float(p["floor"]))

    def restore_state(self, state: dict[str, Any], plan: EpochPlan | None) -> None:
        """Load a state ``check_state`` accepted (``plan``: what it returned); nothing here
        can fail halfway."""
        state = as_numpy(state)  # tensors (or a version-1 state's NumPy) as NumPy copies
        if self.assistant is not None:
            self.assistant.stop()
        ids = np.asarray(state["feature_ids"], np.int64)
        self.state.have[:] = 0 if self.dim else 1
        self.state.have[ids] = 1
        self.state.features[ids] = np.asarray(state["features"], np.float32)
        self._features_complete = bool(self.state.have.all())
        scores, version = state["published"]
        self.state.load_scores(np.asarray(scores, np.float32), int(version))
        self.current = plan
        self._pending.load(state)
        outgoing = list(state.get("outgoing", []))
        self._outgoing = [] if self.rank == 0 else outgoing
        self._telemetry.records = list(state["telemetry"])
        self.first_scores_expired = bool(state.get("first_scores_expired", False))
        if self.assistant is not None:
            self.assistant.drops = state["drops"]
            self.assistant.start(model_state=state["assistant"], replace_state=True)
            # reports other ranks had not sent yet, given to rank 0 (a checkpoint resumed with
            # another number of ranks): its Assistant takes them now, as the gather would have
            if outgoing:
                self._take_reports(outgoing, gathered=False)

    def close(self) -> None:
        if self.assistant is not None:
            self.assistant.stop()
            self.assistant = None
        telemetry = getattr(self, "_telemetry", None)
        if telemetry is not None:
            telemetry.close()
        if getattr(self, "state", None) is not None:
            self.state.close()
            self.state = None
