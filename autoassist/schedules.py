"""Learning-rate schedules driven by training progress, not by a step count.

A shrinking loader's epochs have fewer batches than the data set, and each a different number:
a schedule counted in steps (``OneCycleLR(total_steps=...)``) either stops short of its decay
or fails with "tried to step N times". Here the learning rate is a function of *progress*
in [0, 1], ``(epoch + position within the epoch) / epochs``, read from the loader each step, so
a run decays fully by the end of its budget however its epochs shrink (the "well-tuned
baseline" rule of No Train No Gain).

``one_cycle_lr`` and ``cosine_lr`` are the formulas; ``lr_scheduler`` makes a
``torch.optim.lr_scheduler.LRScheduler`` of them for a loop that steps it once per batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

KINDS = ("one_cycle", "cosine")


def cosine_lr(progress: float, max_lr: float, min_lr: float = 0.0) -> float:
    """Half a cosine from ``max_lr`` at progress 0 down to ``min_lr`` at 1 (clipped to [0, 1])."""
    progress = min(max(progress, 0.0), 1.0)
    return min_lr + (max_lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2


def one_cycle_lr(progress: float, max_lr: float, pct_start: float = 0.3,
                 div_factor: float = 25.0, final_div_factor: float = 1e4) -> float:
    """One-cycle learning rate as a function of training progress in [0, 1].

    Rises (half a cosine) from ``max_lr / div_factor`` to ``max_lr`` over the first
    ``pct_start`` of training, then falls to ``max_lr / div_factor / final_div_factor``, as
    ``torch.optim.lr_scheduler.OneCycleLR`` with its cosine annealing does over steps.
    """
    progress = min(max(progress, 0.0), 1.0)
    start, end = max_lr / div_factor, max_lr / div_factor / final_div_factor
    if progress < pct_start:
        t = progress / pct_start
        return start + (max_lr - start) * (1 - math.cos(math.pi * t)) / 2
    return cosine_lr((progress - pct_start) / (1 - pct_start), max_lr, end)


class ProgressLR(torch.optim.lr_scheduler.LRScheduler):
    """A learning-rate scheduler whose rate is a function of the loader's training progress.

    Step it once per batch, after ``optimizer.step()``, like any scheduler. Each step sets the
    rate of the batch the loader yields next: batch ``k`` of an epoch of ``S`` batches (the
    epoch's shrunk length, ``len(loader)``) has progress ``(epoch + k / (S - 1)) / epochs``,
    so the first batch of a run trains at the schedule's start and the last batch of the last
    epoch at its end, however many batches each epoch kept. Past ``epochs`` the rate stays at
    the end value. Made by ``autoassist.lr_scheduler``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, loader: Any, kind: str, *,
                 max_lr: float | Sequence[float], epochs: int, pct_start: float = 0.3,
                 div_factor: float = 25.0, final_div_factor: float = 1e4,
                 min_lr: float = 0.0, last_epoch: int = -1):
        _check_loader(loader)
        if kind not in KINDS:
            raise ValueError(f"unknown schedule kind {kind!r}; choose one of {list(KINDS)}")
        if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1:
            raise ValueError(f"epochs must be a positive integer (the run's budget), got "
                             f"{epochs!r}")
        groups = len(optimizer.param_groups)
        max_lrs = [float(m) for m in max_lr] if isinstance(max_lr, Sequence) else \
            [float(max_lr)] * groups
        if len(max_lrs) != groups:
            raise ValueError(f"max_lr has {len(max_lrs)} values for the optimizer's {groups} "
                             "parameter groups: give one value, or one per group")
        if not all(math.isfinite(m) and m > 0 for m in max_lrs):
            raise ValueError(f"max_lr must be positive and finite, got {max_lr!r}")
        if not 0.0 < pct_start < 1.0 or div_factor <= 0 or final_div_factor <= 0 or min_lr < 0:
            raise ValueError("need 0 < pct_start < 1, div_factor > 0, final_div_factor > 0 "
                             f"and min_lr >= 0; got pct_start={pct_start}, div_factor="
                             f"{div_factor}, final_div_factor={final_div_factor}, "
                             f"min_lr={min_lr}")
        self.loader = loader
        self.kind, self.epochs, self.max_lrs = kind, int(epochs), max_lrs
        self.pct_start, self.div_factor = float(pct_start), float(div_factor)
        self.final_div_factor, self.min_lr = float(final_div_factor), float(min_lr)
        self._length: tuple[int, Any, int] | None = None  # (epoch, its plan, len) cache
        super().__init__(optimizer, last_epoch)

    def progress(self) -> float:
        """Training progress in [0, 1] at the batch the loader yields next."""
        loader = self.loader
        epoch, done = loader.epoch, loader.batches_done
        steps = self._epoch_length(epoch)
        position = epoch + 1 if done >= steps else epoch + done / max(steps - 1, 1)
        return min(position / self.epochs, 1.0)

    def _epoch_length(self, epoch: int) -> int:
        """``len(loader)``, counted once per planned epoch (a sampler's draws may be counted)."""
        plan = getattr(getattr(self.loader, "engine", None), "current", None)
        if self._length is None or self._length[0] != epoch or self._length[1] is not plan:
            self._length = (epoch, plan, len(self.loader))
        return self._length[2]

    def rate(self, progress: float, max_lr: float) -> float:
        """The schedule's learning rate at ``progress`` for a group whose peak is ``max_lr``."""
        if self.kind == "cosine":
            return cosine_lr(progress, max_lr, self.min_lr)
        return one_cycle_lr(progress, max_lr, self.pct_start, self.div_factor,
                            self.final_div_factor)

    def get_lr(self) -> list[float]:
        progress = self.progress()
        return [self.rate(progress, m) for m in self.max_lrs]

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's settings and counters (plain values; the loader is not in it: the
        loader's own state holds the position the rate is read from)."""
        return {k: v for k, v in self.__dict__.items()
                if k not in ("optimizer", "loader", "_length")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore ``state_dict()``'s result (the loader stays the one this scheduler reads)."""
        self.__dict__.update({k: v for k, v in state_dict.items()
                              if k not in ("optimizer", "loader", "_length")})
        self._length = None


def lr_scheduler(optimizer: torch.optim.Optimizer, loader: Any, kind: str = "one_cycle", *,
                 max_lr: float | Sequence[float], epochs: int, **options: Any) -> ProgressLR:
    """A learning-rate scheduler that follows training progress through a shrinking loader.

    Step it once per batch, after ``optimizer.step()``; it reads the epoch and the position in
    it from ``loader`` (``len(loader)``: the epoch's shrunk length), so the schedule warms up
    and decays fully over ``epochs`` epochs however many batches each keeps: never the
    "tried to step N times" of a step-counted ``OneCycleLR``.

    Args:
        optimizer: the optimizer whose learning rates it sets.
        loader: the autoassist loader the run iterates (``autoassist.wrap``'s result).
        kind: ``"one_cycle"`` (warm-up to ``max_lr``, then down to
            ``max_lr / div_factor / final_div_factor``) or ``"cosine"`` (from ``max_lr`` down
            to ``min_lr``).
        max_lr: the peak rate, or one per parameter group.
        epochs: the run's budget in epochs; the schedule ends with the last batch of the last.
        **options: ``pct_start`` (0.3), ``div_factor`` (25), ``final_div_factor`` (1e4) for
            one-cycle, ``min_lr`` (0) for cosine, as torch's ``OneCycleLR`` and
            ``CosineAnnealingLR`` name them; ``last_epoch``.

    Returns:
        A ``ProgressLR`` (a ``torch.optim.lr_scheduler.LRScheduler``, with ``state_dict`` /
        ``load_state_dict``).

    Raises:
        TypeError: ``loader`` is not an autoassist loader with a length.
        ValueError: an unknown ``kind``, a non-positive ``epochs`` or ``max_lr``, a ``max_lr``
            list that does not match the parameter groups, or a setting out of its range.
    """
    return ProgressLR(optimizer, loader, kind, max_lr=max_lr, epochs=epochs, **options)


def _check_loader(loader: Any) -> None:
    if not (hasattr(loader, "batches_done") and hasattr(loader, "epoch")):
        raise TypeError(
            f"lr_scheduler needs the autoassist loader the run iterates (autoassist.wrap's "
            f"result), which knows its epoch and position; got {type(loader).__name__}. For a "
            "plain DataLoader use torch's own schedulers"
        )
    try:
        len(loader)
    except TypeError:
        raise TypeError(
            "lr_scheduler reads each epoch's length from len(loader), and this loader has "
            "none (an iterable dataset's stream): set the rate yourself from progress with "
            "autoassist.schedules.one_cycle_lr or cosine_lr"
        ) from None
