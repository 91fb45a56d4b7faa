"""How much the proportional keep rule loses to stale losses, and whether the memory can say more.

The rule keeps instance ``i`` with ``P_i = clip(s_i / tau, floor, 1)`` (mean ``keep``) and weights
it ``mean(P) / P_i``. Fed the Boss's *current* losses ``L`` it is the bound of
``OracleMethod(rule="proportional")``; fed each instance's last training loss it is what the
library's proportional Assistant can do. Between the two, this module trains the stale version
(``OracleMethod(scores="stale")``) and, before each shrinking epoch, also computes ``L`` (not
counted, not used for training) to rate candidate scores ``s`` by the variance their sampling
leaves in the epoch's loss estimate::

    var(P) = sum_i L_i^2 (1 - P_i) / P_i      (Bernoulli sampling, inverse-P weights)
    efficiency(s) = var(P(L)) / var(P(s))    (1: as good as fresh losses)

Candidates: the stale losses; the stale losses with an age bonus ``1 + a (age - 1)`` (ages in
epochs since last trained on); a shrink of the stale log loss towards its age group's mean,
fitted on the previous epoch's re-seen instances (the best a linear learner on memory and age
could predict); and two halves of a refresh (current losses for the instances seen last epoch,
or for the older ones) that say where the staleness lives. Uniform sampling is the reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autoassist.bench.time_to_accuracy import OracleMethod
from autoassist.kernels import keep_probabilities as scores_to_probabilities
from autoassist.kernels import proportional_scores

AGE_BONUSES = (0.1, 0.3, 1.0)
MAX_AGE = 10  # ages >= this share one group in the fitted shrink


def keep_probabilities(scores: np.ndarray, keep: float, floor: float) -> np.ndarray:
    """``P_i`` of the proportional rule: ``kernels.proportional_scores`` gives ``p``, the
    library's ``kernels.keep_probabilities`` turns it into ``P = floor + (1 - floor) p``."""
    p = proportional_scores(np.maximum(scores, 0.0), keep, floor)
    return scores_to_probabilities(p, floor).astype(np.float64)


def sampling_variance(losses: np.ndarray, keep_p: np.ndarray) -> float:
    """The variance of ``sum_kept L_i / P_i`` under independent keeps with probabilities P.

    Raises:
        ValueError: where a probability is not in (0, 1].
    """
    if not ((keep_p > 0) & (keep_p <= 1)).all():
        raise ValueError("keep probabilities must lie in (0, 1]")
    return float(np.sum(losses * losses * (1.0 - keep_p) / keep_p))


def fit_shrink(old: np.ndarray, new: np.ndarray, age: np.ndarray) -> dict[int, tuple[float, float]]:
    """Per age group (1 .. MAX_AGE, the last open-ended), least squares ``log new = a + b log
    old`` over re-seen instances; groups with under 50 pairs are left out."""
    fits = {}
    lo, ln = np.log(np.maximum(old, 1e-8)), np.log(np.maximum(new, 1e-8))
    group = np.minimum(age, MAX_AGE)
    for g in range(1, MAX_AGE + 1):
        sel = group == g
        if sel.sum() >= 50 and np.var(lo[sel]) > 0:
            b = float(np.cov(lo[sel], ln[sel])[0, 1] / np.var(lo[sel], ddof=1))
            fits[g] = (float(ln[sel].mean() - b * lo[sel].mean()), b)
    return fits


def candidate_scores(current: np.ndarray, stale: np.ndarray, age: np.ndarray,
                     fits: dict[int, tuple[float, float]]) -> dict[str, np.ndarray]:
    """The scores rated against ``current`` (see the module's docstring)."""
    out = {"stale": stale}
    for a in AGE_BONUSES:
        out[f"age_bonus_{a:g}"] = stale * (1.0 + a * np.maximum(age - 1, 0))
    log_stale = np.log(np.maximum(stale, 1e-8))
    shrunk = log_stale.copy()  # as it was where no fit (yet)
    group = np.minimum(age, MAX_AGE)
    for g, (a, b) in fits.items():
        shrunk[group == g] = a + b * log_stale[group == g]
    out["shrunk_by_age"] = np.exp(shrunk)  # (an unseen instance's inf stays inf)
    out["fresh_if_seen_last_epoch"] = np.where(age == 1, current, stale)
    out["fresh_if_older"] = np.where(age > 1, current, stale)
    return out


class StalenessProbe(OracleMethod):
    """``OracleMethod(rule="proportional", scores="stale")`` that also rates candidate scores
    against the current losses before each shrinking epoch (``info()["probe"]``)."""

    def __init__(self, *args, budget: float = 1 / 3, min_keep: float = 0.1):
        super().__init__(*args, rule="proportional", budget=budget, min_keep=min_keep,
                         scores="stale")
        n = len(self.train)
        self.seen_at = np.full(n, -1)
        self._epoch = 0
        self._pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # this epoch's
        self.probe: list[dict[str, Any]] = []

    def epoch(self, epoch):
        if epoch >= self.config.warmup_epochs:
            self._rate(epoch)
        self._epoch = epoch
        return super().epoch(epoch)

    def _rate(self, epoch: int) -> None:
        current = self._current_losses()
        self.scoring_forwards -= len(current)  # the probe's pass, not the method's
        age = epoch - self.seen_at
        fits = {}
        if self._pairs:  # the previous epoch's re-seen instances
            fits = fit_shrink(*(np.concatenate(c) for c in zip(*self._pairs, strict=True)))
        self._pairs = []
        best = sampling_variance(current, keep_probabilities(current, self.budget,
                                                              self.min_keep))
        uniform = np.full(len(current), self.budget)
        efficiency = {"uniform": best / sampling_variance(current, uniform)}
        for name, s in candidate_scores(current, self.last, age, fits).items():
            p = keep_probabilities(s, self.budget, self.min_keep)
            efficiency[name] = best / sampling_variance(current, p)
        self.probe.append({"epoch": epoch, "efficiency": efficiency,
                           "seen_last_epoch": float(np.mean(age == 1)),
                           "shrink_fits": {str(g): list(f) for g, f in fits.items()}})

    def loss(self, model, batch):
        _, ids = batch
        ids = np.asarray(ids)
        old, age = self.last[ids].copy(), self._epoch - self.seen_at[ids]
        out = super().loss(model, batch)  # records the new losses in self.last
        again = np.isfinite(old) & (age > 0)
        if again.any():
            self._pairs.append((old[again], self.last[ids][again], age[again]))
        self.seen_at[ids] = self._epoch
        return out

    def info(self):
        return {**super().info(), "probe": self.probe}
