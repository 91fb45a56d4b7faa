"""Loss reports on their way to the Assistant: checked, buffered, sent as one ``Losses`` message.

Sending a message per batch would cost more than the report itself, so reports wait here until
``send_every`` batches are in (or the epoch ends), then go as one message. Ids the Assistant must
forget (a replay slot got new contents) travel in the same message, ahead of its losses. CUDA
losses are copied without a wait first (``device_losses.py``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from autoassist.assistant import Losses


def check_losses(per_sample: Any, num_ids: int) -> None:
    """A report holds a 1-D tensor with one loss per instance; say how to fix it otherwise."""
    if not isinstance(per_sample, torch.Tensor):
        raise TypeError(
            f"report() takes a tensor of per-instance losses, got {type(per_sample)}"
        )
    if not per_sample.is_floating_point():  # checked before anything is queued: a retry
        raise TypeError(                     # after this error counts the batch once
            f"report() takes floating-point losses, got dtype {per_sample.dtype}; compute "
            "the loss in floating point (e.g. per_sample.float())"
        )
    if per_sample.ndim != 1:
        raise ValueError(
            f"report() takes one loss per instance (a 1-D tensor); got shape "
            f"{tuple(per_sample.shape)}. Compute the loss with reduction='none' and reduce "
            "extra dimensions per instance (e.g. .mean(dim=1))"
        )
    if len(per_sample) != num_ids:
        raise ValueError(
            f"report() got {len(per_sample)} losses for a batch of {num_ids} instances; "
            "pass one loss per instance of the batch just yielded (or ids=... to match)"
        )


def check_finite(losses: np.ndarray, ids: np.ndarray) -> None:
    """A diverged Boss must not teach the Assistant: refuse NaN/inf losses, naming instances."""
    # np.add.reduce, not losses.sum(): the same float64 sum without numpy's Python-level
    # wrapper, which cost several times the sum itself on every batch
    if not math.isfinite(np.add.reduce(losses, dtype=np.float64)):
        finite = np.isfinite(losses)  # (a finite sum means every loss is finite)
        bad = ids[~finite][:5].tolist()
        raise FloatingPointError(
            f"{int((~finite).sum())} non-finite per-instance losses (instance ids {bad}...); "
            "the Boss diverged or the loss is wrong: lower the learning rate or check inputs"
        )


class ReportBuffer:
    """Reports (and forgotten ids) not yet sent, in the order they came."""

    def __init__(self) -> None:
        self.ids: list[np.ndarray] = []
        self.losses: list[np.ndarray] = []
        self.batches = 0
        self.forget: list[np.ndarray] = []  # renewed ids the Assistant must forget

    def add(self, ids: np.ndarray, losses: np.ndarray) -> None:
        """One report's losses into the next message."""
        self.ids.append(ids)
        self.losses.append(losses)
        self.batches += 1

    def add_forget(self, ids: np.ndarray) -> None:
        self.forget.append(ids)

    def holds_any(self, ids: np.ndarray) -> bool:
        """Whether a loss of any of ``ids`` waits here."""
        return bool(self.ids) and bool(np.isin(ids, np.concatenate(self.ids)).any())

    def __bool__(self) -> bool:
        return bool(self.ids or self.forget)

    def take(self) -> Losses:
        """Everything held, as one message; the buffer is empty afterwards."""
        empty = np.zeros(0, np.int64)
        msg = Losses(np.concatenate(self.ids) if self.ids else empty,
                     np.concatenate(self.losses) if self.losses else np.zeros(0, np.float32),
                     np.concatenate(self.forget) if self.forget else empty)
        self.ids, self.losses, self.batches, self.forget = [], [], 0, []
        return msg

    # -- state (the engine's checkpoint keys: "pending", "pending_forget") ----------------------
    def state(self) -> dict[str, Any]:
        return {"pending": (list(self.ids), list(self.losses), self.batches),
                "pending_forget": list(self.forget)}

    def load(self, state: dict[str, Any]) -> None:
        ids, losses, batches = state["pending"]
        self.ids, self.losses, self.batches = list(ids), list(losses), batches
        self.forget = list(state.get("pending_forget", []))
