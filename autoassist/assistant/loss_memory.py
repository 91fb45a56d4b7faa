"""The Assistant's memory of each instance's last reported loss, as two extra features.

Whether an instance is still informative is best predicted by how hard it was the last time the
Boss saw it; input features alone (pixels, a projection) only say which *kinds* of instances are
hard. The memory lives in the Assistant process (NumPy only). When a loss arrives, the Assistant
first trains on the *previous* loss as a feature (so it learns to predict, not to copy), then
records the new one; scoring uses the last loss of every instance.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-8
_CLIP = 6.0


def relative_loss(last: np.ndarray, mean: float) -> np.ndarray:
    """How far each loss lies above the running mean: finite and non-decreasing in the loss for
    every finite real input, clipped to ``[-6, 6]``."""
    last = last.astype(np.float64)
    if mean > 0:  # the usual case (non-negative losses): the log ratio; a loss <= 0 is the floor
        out = np.log((np.maximum(last, 0.0) + _EPS) / (mean + _EPS))
    else:  # a mean <= 0 (losses that go negative): a scale-free signed distance
        out = np.arcsinh((last - mean) / (abs(mean) + _EPS))
    return np.clip(out, -_CLIP, _CLIP)


class LossMemory:
    """``[seen, relative last loss]`` per instance.

    The relative loss is ``log(last / mean)`` while the running mean is positive (cross-entropy
    and other non-negative losses), else ``asinh((last - mean) / |mean|)``: any real-valued loss
    (Gaussian NLL, contrastive, regression) gives a finite feature, 0 at the mean and rising
    with the loss either way (``relative_loss``).
    """

    dim = 2

    def __init__(self, num_instances: int):
        self.last = np.zeros(int(num_instances), np.float32)
        self.seen = np.zeros(int(num_instances), np.uint8)

    def features(self, ids: np.ndarray | slice, mean: float) -> np.ndarray:
        last, seen = self.last[ids], self.seen[ids]
        out = np.zeros((len(last), 2), np.float32)
        if not np.isfinite(mean):
            return out
        out[:, 0] = seen
        out[:, 1] = np.where(seen.astype(bool), relative_loss(last, mean), 0.0)
        return out

    def update(self, ids: np.ndarray, losses: np.ndarray) -> None:
        self.last[ids] = losses  # repeated ids: the last occurrence wins, as in time
        self.seen[ids] = 1

    def forget(self, ids: np.ndarray) -> None:
        """The instances changed (a reused replay slot): their last loss no longer applies."""
        self.last[ids] = 0.0
        self.seen[ids] = 0

    def state_dict(self) -> dict:
        return {"last": self.last.copy(), "seen": self.seen.copy()}

    def load_state_dict(self, state: dict) -> None:
        if len(state["last"]) != len(self.last):
            raise ValueError(
                f"loss memory for {len(state['last'])} instances, this data set has "
                f"{len(self.last)}: resume with the data set the run was saved with"
            )
        self.last = np.asarray(state["last"], np.float32).copy()
        self.seen = np.asarray(state["seen"], np.uint8).copy()
