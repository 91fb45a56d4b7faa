"""InfoBatch-style pruning (Qin et al., ICLR 2024), from the paper's description.

Each epoch, among instances whose last loss is below the mean of last losses, a random fraction
``ratio`` is dropped; the kept low-loss instances have their loss scaled by ``1 / (1 - ratio)``
so the expected gradient is unchanged. The last ``1 - delta`` of the epochs use all the data.
Instances never seen have no loss yet and are always kept.

Unlike the published code this needs no DataLoader patch and no global seeding: randomness comes
from the project's counter-based stream (``kernels.uniforms``), keyed by (seed, epoch).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from autoassist.kernels import shuffle_kept, uniforms

STREAM_INFOBATCH = 0x1B  # its own random stream, independent of the shrinking sampler's


def full_data_from(epochs: int, delta: float) -> int:
    """First epoch (0-based) that trains on the full data: ``ceil(delta * epochs)``."""
    return min(epochs, math.ceil(delta * epochs - 1e-9))


def infobatch_plan(losses: np.ndarray, seen: np.ndarray, epoch: int, epochs: int, *,
                   ratio: float = 0.5, delta: float = 0.875,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(keep mask bool[N], loss weights float32[N])`` for ``epoch`` of ``epochs``.

    ``losses[i]`` is instance i's last loss, meaningful where ``seen[i]``. Well-learned means
    ``seen and loss < mean(loss over seen)``; each is dropped with probability ``ratio`` and,
    if kept, weighted ``1 / (1 - ratio)``. From epoch ``ceil(delta * epochs)`` on, all are kept
    with weight 1.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio={ratio} must lie in [0, 1) (InfoBatch's default is 0.5)")
    if not 0.0 < delta <= 1.0:
        raise ValueError(f"delta={delta} must lie in (0, 1] (InfoBatch's default is 0.875)")
    losses = np.asarray(losses, dtype=np.float64)
    seen = np.asarray(seen, dtype=bool)
    if losses.shape != seen.shape or losses.ndim != 1:
        raise ValueError(f"losses {losses.shape} and seen {seen.shape} must be equal 1-D shapes")
    n = len(losses)
    keep = np.ones(n, bool)
    weights = np.ones(n, np.float32)
    if epoch >= full_data_from(epochs, delta) or not seen.any() or ratio == 0.0:
        return keep, weights
    well_learned = seen & (losses < losses[seen].mean())
    u = uniforms(np.arange(n, dtype=np.int64), seed, epoch, STREAM_INFOBATCH)
    keep[well_learned & (u < ratio)] = False
    weights[well_learned & keep] = 1.0 / (1.0 - ratio)
    return keep, weights


class InfoBatch:
    """Per-epoch InfoBatch selection over N instances; ``record`` feeds it the losses seen.

    ``epoch_order(epoch)`` gives the shuffled kept ids; ``weights(ids)`` the loss weights of the
    current epoch. Use the ids in a batch sampler and weight the per-instance loss.
    """

    def __init__(self, num_instances: int, epochs: int, *, ratio: float = 0.5,
                 delta: float = 0.875, seed: int = 0):
        self.n, self.epochs = int(num_instances), int(epochs)
        self.ratio, self.delta, self.seed = float(ratio), float(delta), int(seed)
        self.losses = np.zeros(self.n, np.float32)
        self.seen = np.zeros(self.n, bool)
        self._weights = np.ones(self.n, np.float32)
        self.kept_fraction = 1.0

    def epoch_order(self, epoch: int) -> np.ndarray:
        keep, self._weights = infobatch_plan(self.losses, self.seen, epoch, self.epochs,
                                             ratio=self.ratio, delta=self.delta, seed=self.seed)
        kept = np.flatnonzero(keep)
        self.kept_fraction = len(kept) / max(1, self.n)
        return shuffle_kept(kept, self.seed, epoch)

    def record(self, ids: np.ndarray, losses: np.ndarray) -> None:
        """The latest loss of each instance (InfoBatch scores by the last loss, not an average)."""
        self.losses[ids] = losses
        self.seen[ids] = True

    def weights(self, ids: np.ndarray) -> np.ndarray:
        return self._weights[ids]

    def state_dict(self) -> dict[str, Any]:
        return {"losses": self.losses.copy(), "seen": self.seen.copy(),
                "weights": self._weights.copy(), "kept_fraction": self.kept_fraction}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("losses", "seen", "weights"):
            if len(state[key]) != self.n:
                raise ValueError(f"InfoBatch state for {len(state[key])} instances, not {self.n}")
        self.losses = np.asarray(state["losses"], np.float32).copy()
        self.seen = np.asarray(state["seen"], bool).copy()
        self._weights = np.asarray(state["weights"], np.float32).copy()
        self.kept_fraction = float(state["kept_fraction"])
