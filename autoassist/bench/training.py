"""A small, honest training loop shared by the demo, examples and benchmarks.

Evaluation time is measured and reported apart from training time, so wall-clock comparisons
between methods count only what the method changes.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# the progress-driven one-cycle formula lives in the product (autoassist.lr_scheduler uses it);
# the laboratory's loops set it per batch themselves
from autoassist.schedules import one_cycle_lr


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> float:
    """Accuracy of ``model`` on the tensors ``x``/``y`` (model left in the mode it was in)."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        correct += (logits.argmax(1) == y[start : start + batch_size]).sum().item()
    model.train(was_training)
    return correct / max(1, len(x))


def time_to_target(seconds: list[float], accuracy: list[float], target: float) -> float | None:
    """Training seconds at the first evaluation whose accuracy reaches ``target`` (None: never)."""
    for t, a in zip(seconds, accuracy, strict=True):
        if a >= target:
            return t
    return None


def accuracy_at(seconds: list[float], accuracy: list[float], budget: float) -> float | None:
    """Accuracy of the last evaluation finished within ``budget`` training seconds (None: none)."""
    done = [a for t, a in zip(seconds, accuracy, strict=True) if t <= budget]
    return done[-1] if done else None


def saving(t_method: float | None, t_uniform: float | None) -> float | None:
    """``1 - t_method / t_uniform``; None when the method never reached the target."""
    if t_method is None or not t_uniform:
        return None
    return 1.0 - t_method / t_uniform


@dataclass
class Curve:
    """Accuracy after each epoch against cumulative training wall-clock (evaluation excluded)."""

    name: str
    epochs: list[int] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    instances: list[int] = field(default_factory=list)
    eval_seconds: float = 0.0

    def add(self, epoch: int, train_seconds: float, accuracy: float, instances: int) -> None:
        self.epochs.append(epoch)
        self.train_seconds.append(train_seconds)
        self.accuracy.append(accuracy)
        self.instances.append(instances)

    def time_to(self, target: float) -> float | None:
        """Training seconds at the first epoch whose accuracy reaches ``target`` (None if never)."""
        return time_to_target(self.train_seconds, self.accuracy, target)

    def accuracy_at(self, seconds: float) -> float | None:
        """Accuracy of the last epoch finished within ``seconds`` of training (None if none)."""
        return accuracy_at(self.train_seconds, self.accuracy, seconds)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "epochs": self.epochs,
            "train_seconds": self.train_seconds,
            "accuracy": self.accuracy,
            "instances": self.instances,
            "eval_seconds": self.eval_seconds,
        }


def one_cycle(optimizer, max_lr: float, epochs: int, steps_per_epoch: int):
    """One-cycle schedule that decays fully by the end of the budget (the tuned baseline's)."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, epochs=epochs, steps_per_epoch=max(1, steps_per_epoch)
    )


def per_sample_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target, reduction="none")


class Stopwatch:
    """Accumulates time only while running; ``pause()`` around evaluation.

    Keeps two clocks over the same spans: wall seconds (``total``) and this process's CPU
    seconds, every thread together (``cpu_total``). The CPU clock barely moves when another
    program shares the machine, so it is the steadier cost on a noisy host.
    """

    def __init__(self) -> None:
        self.total = 0.0
        self.cpu_total = 0.0
        self._start: float | None = None
        self._cpu_start = 0.0

    def start(self) -> None:
        self._start = time.perf_counter()
        self._cpu_start = time.process_time()

    def pause(self) -> float:
        if self._start is not None:
            self.total += time.perf_counter() - self._start
            self.cpu_total += time.process_time() - self._cpu_start
            self._start = None
        return self.total


def train_classifier(model: nn.Module, loader, test: tuple[torch.Tensor, torch.Tensor], *,
                     epochs: int, max_lr: float, name: str, weight_decay: float = 5e-4,
                     progress_bar: bool = True, on_epoch=None) -> Curve:
    """Train with SGD + one-cycle LR; works with a plain DataLoader or an autoassist loader.

    With an autoassist loader the per-instance losses go through ``loader.report`` (which returns
    the (re)weighted mean); with a plain loader the mean is taken here. Evaluation after each epoch
    is timed apart from training.
    """
    from tqdm.auto import tqdm

    optimizer = torch.optim.SGD(model.parameters(), lr=max_lr, momentum=0.9, nesterov=True,
                                weight_decay=weight_decay)
    shrinking = hasattr(loader, "report")
    curve = Curve(name)
    clock = Stopwatch()
    seen = 0
    for epoch in range(epochs):
        clock.start()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        steps = max(1, len(loader))
        model.train()
        bar = tqdm(loader, total=steps, desc=f"{name} epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not progress_bar, dynamic_ncols=True,
                   mininterval=0.1 if sys.stderr.isatty() else 15.0)  # quiet logs in CI
        for step, (x, y) in enumerate(bar):
            for group in optimizer.param_groups:
                group["lr"] = one_cycle_lr((epoch + min(step / steps, 1.0)) / epochs, max_lr)
            per_sample = per_sample_cross_entropy(model(x), y)
            loss = loader.report(per_sample) if shrinking else per_sample.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(y)
        train_time = clock.pause()
        t0 = time.perf_counter()
        acc = evaluate(model, *test)
        curve.eval_seconds += time.perf_counter() - t0
        curve.add(epoch + 1, train_time, acc, seen)
        if on_epoch is not None:
            on_epoch(curve)
    return curve
