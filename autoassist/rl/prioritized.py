"""Proportional prioritised replay (Schaul et al. 2016), the usual rival of Assistant replay.

Transition i is drawn with probability ``P(i) = p_i^alpha / sum_j p_j^alpha``, where
``p_i = |TD error_i| + eps`` from the last time the learner trained on it (new transitions get
the largest priority so far, so each is seen at least once soon). The bias is corrected by
importance-sampling weights ``w_i = (N P(i))^-beta / max_j w_j``, ``beta`` annealed linearly to 1
over ``beta_steps`` draws. The tree work is ``kernels.sum_tree`` (Numba, O(log N) per op).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autoassist.engine.safe_state import as_numpy, safe
from autoassist.kernels import sum_tree
from autoassist.rl.replay import ReplayBuffer, _check_size


class PrioritizedSampler:
    name = "prioritized"

    def __init__(self, capacity: int, alpha: float = 0.6, beta: float = 0.4,
                 beta_steps: int = 100_000, eps: float = 1e-3, seed: int = 0):
        if not 0.0 <= alpha <= 1.0 or not 0.0 <= beta <= 1.0:
            raise ValueError(f"alpha={alpha}, beta={beta}: both must lie in [0, 1]")
        if eps <= 0 or beta_steps < 1:
            raise ValueError("eps must be > 0 and beta_steps >= 1")
        self.capacity, self.alpha, self.beta0, self.beta_steps = capacity, alpha, beta, beta_steps
        self.eps = eps
        self.sums, self.mins = sum_tree.new_trees(capacity)
        self.max_priority = 1.0  # in p^alpha units
        self.draws = 0
        self.rng = np.random.default_rng(seed)

    @property
    def beta(self) -> float:
        return min(1.0, self.beta0 + (1.0 - self.beta0) * self.draws / self.beta_steps)

    def inserted(self, slots: np.ndarray, buffer: ReplayBuffer) -> None:
        sum_tree.update(self.sums, self.mins, slots, np.full(len(slots), self.max_priority))

    def sample(self, batch_size: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        _check_size(size)
        u = (np.arange(batch_size) + self.rng.random(batch_size)) / batch_size  # stratified
        slots = sum_tree.sample(self.sums, u)
        total = self.sums[1]
        p = self.sums[len(self.sums) // 2 + slots] / total
        beta = self.beta
        w = (size * p) ** -beta
        w_max = (size * self.mins[1] / total) ** -beta  # the smallest priority's weight
        self.draws += batch_size
        return slots, (w / w_max).astype(np.float32)

    def update(self, slots: np.ndarray, td_errors: np.ndarray) -> None:
        p = (np.abs(np.asarray(td_errors, np.float64)) + self.eps) ** self.alpha
        if not np.isfinite(p).all():
            raise FloatingPointError("non-finite TD errors: the critic diverged (lower its "
                                     "learning rate or clip rewards)")
        sum_tree.update(self.sums, self.mins, slots, p)
        self.max_priority = max(self.max_priority, float(p.max()))

    def state_dict(self) -> dict[str, Any]:
        return safe({"sums": self.sums, "mins": self.mins, "max_priority": self.max_priority,
                     "draws": self.draws, "rng": self.rng.bit_generator.state},
                    "prioritized replay state")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = as_numpy(state)
        if state["sums"].shape != self.sums.shape:
            raise ValueError("saved priorities are for another buffer capacity")
        self.sums[:], self.mins[:] = state["sums"], state["mins"]
        self.max_priority, self.draws = state["max_priority"], state["draws"]
        self.rng.bit_generator.state = state["rng"]

    def close(self) -> None:
        pass
