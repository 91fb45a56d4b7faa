"""Settings shared by every Boss schedule, and the batch helpers their loops share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class BossConfig:
    """How the Boss trains.

    epochs: the budget. optimizer: ``params -> Optimizer`` (picklable for multi-process
    schedules, e.g. ``functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9)``); each stage
    gets its own. threads: torch intra-op threads in each stage process (multi-process schedules
    set it in their own processes only). device: "cpu" (gloo) or "cuda" (NCCL, one GPU per stage:
    untested here). checkpoint_dir: where every stage saves itself after each epoch; resume: start
    from the epochs finished there. timeout_s: how long a stage waits for a peer before the run
    fails with an error (a dead stage never hangs the others). progress: a tqdm bar on stage 0.
    launcher (multi-process schedules): "spawn" starts one process per stage here; "torchrun"
    makes this process the stage ``RANK`` of a torchrun job; "auto" picks torchrun when its
    environment variables are set.
    """

    epochs: int
    optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
    threads: int = 1
    device: str = "cpu"
    checkpoint_dir: str | None = None
    resume: bool = False
    timeout_s: float = 120.0
    progress: bool = True
    launcher: str = "auto"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"BossConfig.epochs={self.epochs}: train at least one epoch")
        if self.threads < 1:
            raise ValueError(f"BossConfig.threads={self.threads}: must be >= 1")
        if self.resume and not self.checkpoint_dir:
            raise ValueError("BossConfig.resume needs checkpoint_dir (where the run saved itself)")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"BossConfig.device={self.device!r}: 'cpu' or 'cuda'")
        if self.launcher not in ("auto", "spawn", "torchrun"):
            raise ValueError(f"BossConfig.launcher={self.launcher!r}: 'auto', 'spawn' or "
                             "'torchrun'")


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` from a collated batch (tuple/list or a dict with input/label keys)."""
    from autoassist.assistant.features import split_batch as find

    x, y = find(batch)
    if y is None:
        raise TypeError("the Boss schedules train classifiers: batches must carry integer class "
                        "labels (a (x, y) tuple or a dict with a 'label'/'y'/'target' key)")
    return x, y


def epoch_loss_sum(batch_sums: list[torch.Tensor]) -> float:
    """The epoch's summed loss from per-batch sums kept on the device: one transfer at the
    epoch's end instead of a wait for the GPU after every batch (same value as adding the
    batches' ``float`` sums one by one)."""
    return sum(torch.stack(batch_sums).tolist(), 0.0) if batch_sums else 0.0


def is_shrinking(loader: Any) -> bool:
    return hasattr(loader, "report") and hasattr(loader, "loss_weights")
