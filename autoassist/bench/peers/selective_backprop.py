"""Selective-Backprop-style selection (Jiang et al. 2019), from the paper's description.

Every instance is forwarded; instance i is backpropagated with probability ``CDF(loss_i) ** beta``
where the CDF is the empirical one over a window of recent losses (the batch's own losses are
added to the window first, so the largest loss seen has probability 1). ``beta = 3`` keeps about
a quarter of the instances when losses are stationary.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def selective_backprop_probabilities(losses: np.ndarray, history: np.ndarray,
                                     beta: float = 3.0) -> np.ndarray:
    """``P_i = (#{h in history : h <= loss_i} / len(history)) ** beta`` (1 for an empty history)."""
    if beta <= 0:
        raise ValueError(f"beta={beta} must be > 0 (Selective Backprop uses 3)")
    losses = np.asarray(losses, dtype=np.float64).reshape(-1)
    history = np.sort(np.asarray(history, dtype=np.float64).reshape(-1))
    if len(history) == 0:
        return np.ones(len(losses))
    cdf = np.searchsorted(history, losses, side="right") / len(history)
    return cdf**beta


class SelectiveBackprop:
    """Keeps the recent-loss window and draws which instances of a batch to backpropagate."""

    def __init__(self, *, beta: float = 3.0, history: int = 1024, seed: int = 0):
        if history < 1:
            raise ValueError(f"history={history} must be >= 1")
        self.beta, self.size = float(beta), int(history)
        self.window = np.zeros(self.size, np.float64)
        self.count = 0  # losses ever added (the window is a ring buffer)
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def _add(self, losses: np.ndarray) -> None:
        tail = losses[-self.size :]
        start = self.count + len(losses) - len(tail)
        self.window[(start + np.arange(len(tail))) % self.size] = tail
        self.count += len(losses)

    def observe(self, losses: np.ndarray) -> None:
        """Add losses to the window without selecting (a warm-up that backpropagates all)."""
        self._add(np.asarray(losses, dtype=np.float64).reshape(-1))

    def select(self, losses: np.ndarray) -> np.ndarray:
        """Bool mask over the batch: which instances to backpropagate."""
        losses = np.asarray(losses, dtype=np.float64).reshape(-1)
        self._add(losses)
        p = selective_backprop_probabilities(losses, self.window[: min(self.count, self.size)],
                                             self.beta)
        return self.rng.random(len(losses)) < p

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window.copy(), "count": self.count,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["window"]) != self.size:
            raise ValueError(f"history of {len(state['window'])} losses, expected {self.size}")
        self.window = np.asarray(state["window"], np.float64).copy()
        self.count = int(state["count"])
        self.rng.bit_generator.state = state["rng"]
