"""Per-epoch telemetry: one record per finished epoch, optionally to TensorBoard.

An epoch is timed from its plan to its end (the plan, and any wait for the first scores, are
part of what the epoch cost); the previous epoch's time bounds the first-scores wait.
"""

from __future__ import annotations

import math
import time
from typing import Any

from autoassist.engine.plan import EpochPlan


class Telemetry:
    """The epoch clock, this epoch's report counts, and the records of the finished epochs."""

    def __init__(self, num_instances: int, tensorboard: str | None = None):
        self.n = num_instances
        self.records: list[dict[str, Any]] = []
        self.reported = 0  # instances reported this epoch (by this rank)
        self.gathered = 0  # rank 0: instances other ranks reported, gathered at the plan
        self.started = time.perf_counter()
        self.last_epoch_seconds = 0.0
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(tensorboard)

    def start_epoch(self) -> None:
        self.started = time.perf_counter()

    def stop_clock(self) -> float:
        """Seconds since the epoch's plan; also the next first-scores wait's measure."""
        self.last_epoch_seconds = time.perf_counter() - self.started
        return self.last_epoch_seconds

    def end_epoch(self, epoch: int, plan: EpochPlan | None, batches: int, seconds: float,
                  first_scores_waited: float, assistant: dict[str, Any] | None,
                  fields: dict[str, Any] | None = None) -> dict[str, Any]:
        """The epoch's record (with the caller's ``fields`` and the Assistant's own figures,
        when it has one), kept and written; the report counts start again from zero."""
        record: dict[str, Any] = {
            "epoch": epoch,
            "reason": plan.reason.value if plan else "none",
            "kept": plan.kept if plan else self.n,
            "num_instances": self.n,
            "kept_fraction": (plan.kept if plan else self.n) / self.n,
            "floor": plan.floor if plan else 1.0,
            "batches": batches,
            "reported_instances": self.reported,
            "gathered_instances": self.gathered,  # rank 0: reports other ranks sent it
            "epoch_seconds": seconds,
            "first_scores_waited": first_scores_waited,
        }
        if fields:
            record.update(fields)
            if "yielded_instances" in fields:  # a loader's: yielded, but never reported
                record["unreported_instances"] = max(0, fields["yielded_instances"]
                                                     - self.reported)
        self.reported = 0
        self.gathered = 0
        if assistant is not None:
            record.update(assistant)
        self.records.append(record)
        if self._writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(f"autoassist/{key}", value, epoch)
            self._writer.flush()
        return record

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
