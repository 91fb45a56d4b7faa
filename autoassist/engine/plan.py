"""The keep policy, as pure functions: which instances an epoch trains on, and their weights.

Nothing here holds state or talks to the Assistant: the engine hands in the config, the epoch,
the published scores and the Assistant's accuracy, and gets an ``EpochPlan`` back. The selection
itself is ``autoassist.kernels.keep_mask`` (counter-based random numbers, so every rank and
thread count draws the same set), loaded on first use so that importing the engine loads no
Numba.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from autoassist.config import ShrinkConfig


class Reason(str, Enum):
    """Why an epoch keeps what it keeps. A ``str``, so telemetry and state hold the same words
    as before (``record["reason"] == "warmup"``)."""

    WARMUP = "warmup"  # a leading epoch: the Assistant learns meanwhile
    ANNEAL = "anneal"  # a trailing epoch of the budget
    KEEP_ALL = "keep-all"  # floor 1: nothing to shrink
    SHRINK = "shrink"  # kept by the Assistant's scores

    def __str__(self) -> str:  # the word itself in f-strings, on every Python version
        return self.value


@dataclass
class EpochPlan:
    """What one epoch trains on. ``mask is None`` means every instance is kept."""

    epoch: int
    reason: Reason
    mask: np.ndarray | None
    scores: np.ndarray | None
    score_version: int
    floor: float
    mean_keep: float
    kept: int

    # mean(P) / P for all N, made with the plan (P is the selection's): a gather per batch
    all_weights: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.reason = Reason(self.reason)
        if self.mask is not None and self.all_weights is None:
            from autoassist.kernels import keep_probabilities  # the P the selection kernel used

            self.all_weights = loss_weights(keep_probabilities(self.scores, self.floor),
                                            self.mean_keep)

    def weights(self, ids: np.ndarray) -> np.ndarray:
        """``mean(P) / P_i``: unbiased reweighting of kept instances (1 when keeping all)."""
        if self.mask is None:
            return np.ones(len(ids), np.float32)
        return self.all_weights[ids]


def loss_weights(p: np.ndarray, mean_keep: float) -> np.ndarray:
    """``mean(P) / P_i`` for keep probabilities ``p``: the expected weighted gradient of the kept
    instances equals the full epoch's."""
    return (mean_keep / np.maximum(p, 1e-12)).astype(np.float32)


def keep_all_reason(config: ShrinkConfig, epoch: int) -> Reason | None:
    """Why ``epoch`` keeps every instance, or None when it shrinks."""
    if epoch < config.warmup_epochs:
        return Reason.WARMUP
    if (config.epochs is not None and config.anneal_epochs
            and epoch >= config.epochs - config.anneal_epochs):
        return Reason.ANNEAL
    if config.floor >= 1.0:
        return Reason.KEEP_ALL
    return None


def keep_all_plan(epoch: int, reason: Reason | str, num_instances: int) -> EpochPlan:
    return EpochPlan(epoch, Reason(reason), None, None, -1, 1.0, 1.0, num_instances)


def floor(config: ShrinkConfig, accuracy: float) -> float:
    """The floor ``b`` of ``P_i = b + (1 - b) * p_i``; with ``adaptive_floor``, at least the
    Assistant's error rate (the paper's translation rule) once it has an accuracy."""
    b = config.floor
    if config.adaptive_floor and math.isfinite(accuracy):
        b = max(b, 1.0 - accuracy)
    return float(b)


def make_plan(config: ShrinkConfig, epoch: int, scores: np.ndarray, version: int,
              floor: float) -> EpochPlan:
    """Plan from the Assistant's published scores (``rank_power`` turns them into ranks)."""
    if config.rank_power is not None:
        from autoassist.kernels import rank_scores

        scores = rank_scores(scores, config.rank_power)
    return plan_from_keep_scores(config, epoch, scores, version, floor)


def plan_from_keep_scores(config: ShrinkConfig, epoch: int, scores: np.ndarray, version: int,
                          floor: float) -> EpochPlan:
    """Plan from the ``p_i`` of ``P_i = b + (1 - b) * p_i``; the plan keeps them as ``scores``,
    so weights and restarts use exactly the P the selection used."""
    from autoassist.kernels import keep_mask, keep_probabilities

    mask, kept = keep_mask(scores, floor, config.seed, epoch, num_threads=config.kernel_threads)
    p = keep_probabilities(scores, floor)  # once: for the mean and for the loss weights
    mean_keep = float(p.mean(dtype=np.float64))
    return EpochPlan(epoch, Reason.SHRINK, mask, scores, version, floor, mean_keep, kept,
                     loss_weights(p, mean_keep))
