"""Time to accuracy: every method against a *tuned* uniform baseline, same run, same seeds.

For each seed the uniform baseline's final test accuracy (best learning rate of a small sweep,
extended while its best is at an end of the grid; one-cycle schedule decaying fully by the end of
the budget) is the target; each method's saving is
``1 - (its training seconds to first reach the target) / (uniform's)``. Training seconds exclude
evaluation (reported apart) and include the method's own set-up (e.g. starting the Assistant).

Methods (same model, epoch budget, learning rate, seeds, thread settings):

- ``uniform``: plain shuffled DataLoader.
- ``autoassist``: this project through ``autoassist.wrap`` with ``AUTOASSIST_SETTINGS``.
- ``random_subset``: the control for the Assistant: each epoch as many instances as autoassist
  kept in that epoch on the same seed, but a fresh uniformly random subset (no scores).
- ``published``: AutoAssist as published (logistic Assistant on raw inputs + class, b = 0.3, no
  reweighting), also through ``autoassist.wrap``.
- ``infobatch``: ``peers.InfoBatch`` (prune half of the below-mean-loss instances, rescale, full
  data for the last 12.5% of epochs).
- ``selective_backprop``: ``peers.SelectiveBackprop`` (forward all, backprop with probability
  CDF(loss)^3; selected instances are pooled into full batches, as in the paper).
- ``uniform_reshuffled`` (opt-in, ``--methods ...,uniform_reshuffled``): uniform again from the
  same initial weights with another data order. Equally accurate by construction, it shows how
  often a method *as good as* uniform reaches the strict per-seed target: the criterion's noise.
- ``oracle`` (opt-in): an upper bound, not a method: the library's keep rule fed a perfect
  Assistant (every instance scored with the Boss's current loss before each epoch, scoring not
  counted). It says whether the Assistant or the keep rule caps what shrinking can save.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from autoassist.bench.tasks import Task, get_task
from autoassist.bench.training import (
    Curve,
    Stopwatch,
    accuracy_at,
    evaluate,
    one_cycle_lr,
    saving,
    time_to_target,
)
from autoassist.plotting import subplots

CPU = torch.device("cpu")
RESHUFFLE_OFFSET = 1_000_003  # uniform_reshuffled's data-order seed is seed + this
METHODS = ("uniform", "autoassist", "random_subset", "published", "infobatch",
           "selective_backprop")
# Opt-in controls (not run by default): ``uniform_reshuffled`` is uniform again with another data
# order, equally accurate by construction, so its "reached" count and paired final difference
# measure the strict criterion's own noise floor.
CONTROLS = ("uniform_reshuffled", "oracle")
ALL_METHODS = METHODS + CONTROLS
LABELS = {"uniform": "uniform (tuned)", "autoassist": "autoassist",
          "random_subset": "random subset (control)",
          "uniform_reshuffled": "uniform, other data order (control)",
          "oracle": "perfect Assistant (bound)",
          "published": "AutoAssist as published", "infobatch": "InfoBatch-style",
          "selective_backprop": "Selective-Backprop-style"}

# This project's recommended settings (what `autoassist.wrap` users are told to start from):
# the paper's floor, unbiased reweighting of kept instances, and one full-data epoch at the end,
# where the learning rate is smallest, to recover what the shrunken epochs missed; the Assistant
# remembers each instance's last loss (loss_history, the default).
AUTOASSIST_SETTINGS: dict[str, Any] = {"floor": 0.3, "reweight": True, "warmup_epochs": 1,
                                       "anneal_epochs": 1, "assistant": "logistic"}
# The paper's image setting: logistic regression on raw inputs + class bias, b = 0.3, no
# reweighting, first epoch keeps all, no loss memory (NOTES.md).
PUBLISHED_SETTINGS: dict[str, Any] = {"floor": 0.3, "reweight": False, "warmup_epochs": 1,
                                      "assistant": "logistic", "anneal_epochs": 0,
                                      "loss_history": False}


# ------------------------------------------------------------------------------------------------
# Methods: each yields an epoch's batches and turns a batch into (loss, forwarded, backpropagated)
# ------------------------------------------------------------------------------------------------
class _Method:
    def __init__(self, train, batch_size: int, seed: int, epochs: int,
                 device: torch.device = CPU):
        self.train, self.batch_size, self.seed, self.epochs = train, batch_size, seed, epochs
        self.pin = device.type == "cuda"  # pinned batches: non-blocking copies to the GPU

    def _loader(self, **kwargs) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(self.seed),
                          pin_memory=self.pin, **kwargs)

    def epoch(self, epoch: int):
        raise NotImplementedError

    def loss(self, model, batch) -> tuple[torch.Tensor | None, int, int]:
        raise NotImplementedError

    def bind(self, model) -> None:
        """The Boss's model, before the first epoch (a method that scores with it keeps it)."""

    def finish(self, model) -> tuple[torch.Tensor | None, int, int]:
        return None, 0, 0

    def info(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


class Uniform(_Method):
    def __init__(self, *args, order_seed: int | None = None):
        super().__init__(*args)
        self.loader = self._loader()
        if order_seed is not None:  # same initial weights (run_one), another shuffle
            self.loader.generator.manual_seed(order_seed)

    def epoch(self, epoch):
        return self.loader

    def loss(self, model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y), len(y), len(y)


class AutoAssist(_Method):
    """Through the public API only: ``autoassist.wrap`` + ``loader.report``."""

    def __init__(self, *args, settings: dict[str, Any], raw_features: bool = False):
        super().__init__(*args)
        import autoassist

        options = dict(settings)
        options.setdefault("seed", self.seed)
        options.setdefault("epochs", self.epochs)
        features = _raw_features(self.train) if raw_features else None
        self.loader = autoassist.wrap(self._loader(), features=features, **options)

    def epoch(self, epoch):
        self.loader.set_epoch(epoch)
        return self.loader

    def loss(self, model, batch):
        x, y = batch
        per_sample = F.cross_entropy(model(x), y, reduction="none")
        return self.loader.report(per_sample), len(y), len(y)

    def info(self):
        return {"telemetry": self.loader.telemetry}

    def close(self):
        self.loader.close()


def _raw_features(train) -> torch.Tensor:
    """The paper's Assistant input: raw (flattened) inputs plus a one-hot class bias."""
    x, y = train.tensors()
    onehot = F.one_hot(y.long(), int(y.max()) + 1).float()
    return torch.cat([x.reshape(len(x), -1).float(), onehot], dim=1)


class _IdBatches:
    """A batch sampler over a precomputed order that remembers the ids of each batch."""

    def __init__(self, order: np.ndarray, batch_size: int):
        self.batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return (b.tolist() for b in self.batches)


def expected_keep_fraction(settings: dict[str, Any]) -> float | None:
    """What a shrinking epoch keeps in expectation when the rule fixes it (``rank_power``:
    ``b + (1 - b) / (k + 1)``); None when it depends on the Assistant's scores."""
    k = settings.get("rank_power")
    if k is None:
        return None
    b = float(settings.get("floor", 0.3))
    return b + (1.0 - b) / (float(k) + 1.0)


class RandomSubsetMethod(_Method):
    """The control that says what the Assistant's choices are worth: each epoch trains on as
    many instances as autoassist's run of the same seed kept in that epoch (its warm-up and
    anneal epochs keep all), chosen uniformly at random, fresh each epoch. Uniform subsets need
    no reweighting."""

    def __init__(self, *args, kept: list[int]):
        super().__init__(*args)
        n = len(self.train)
        if len(kept) < self.epochs or not all(0 < k <= n for k in kept):
            raise ValueError(f"random_subset needs a kept count in (0, {n}] for each of the "
                             f"{self.epochs} epochs; got {kept}")
        self.kept_counts = [int(k) for k in kept]
        self.kept: list[float] = []

    def epoch(self, epoch):
        n = len(self.train)
        order = np.random.default_rng([self.seed, epoch]).permutation(n)
        order = order[: self.kept_counts[epoch]]
        self.kept.append(len(order) / n)
        return DataLoader(self.train, batch_sampler=_IdBatches(order, self.batch_size),
                          pin_memory=self.pin)

    def loss(self, model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y), len(y), len(y)

    def info(self):
        return {"kept_fraction": self.kept}


def matched_kept_counts(n: int, epochs: int, settings: dict[str, Any],
                        autoassist_run: dict[str, Any] | None = None) -> list[int]:
    """The random-subset control's budget: the kept counts of ``autoassist_run`` (its
    telemetry), else the counts ``settings`` fix in advance (``rank_power``), else an error."""
    if autoassist_run is not None:
        kept = [t["kept"] for t in autoassist_run.get("telemetry", [])]
        if len(kept) != epochs:
            raise ValueError(f"the autoassist run has telemetry for {len(kept)} epochs, not "
                             f"{epochs}: cannot match its budget")
        return kept
    fraction = expected_keep_fraction(settings)
    if fraction is None:
        raise ValueError("random_subset matches autoassist's kept counts: run it with "
                         "'autoassist' in --methods (before it), or set rank_power, which "
                         "fixes the kept fraction in advance")
    warmup, anneal = settings.get("warmup_epochs", 1), settings.get("anneal_epochs", 0)
    return [n if e < warmup or e >= epochs - anneal else max(1, round(fraction * n))
            for e in range(epochs)]


class InfoBatchMethod(_Method):
    def __init__(self, *args, ratio: float = 0.5, delta: float = 0.875):
        super().__init__(*args)
        from autoassist.bench.peers import InfoBatch

        self.selector = InfoBatch(len(self.train), self.epochs, ratio=ratio, delta=delta,
                                  seed=self.seed)
        self.kept: list[float] = []

    def epoch(self, epoch):
        ids = _IdBatches(self.selector.epoch_order(epoch), self.batch_size)
        self.kept.append(self.selector.kept_fraction)
        loader = DataLoader(self.train, batch_sampler=ids, pin_memory=self.pin)
        return _Zipped(loader, ids.batches)

    def loss(self, model, batch):
        (x, y), ids = batch
        per_sample = F.cross_entropy(model(x), y, reduction="none")
        self.selector.record(ids, per_sample.detach().cpu().numpy())  # its rule needs them now
        w = torch.from_numpy(self.selector.weights(ids)).to(per_sample.device)
        return (per_sample * w).mean(), len(y), len(y)

    def info(self):
        return {"kept_fraction": self.kept}


class OracleMethod(_Method):
    """The library's keep rule fed a perfect Assistant: an upper bound, not a method.

    Before each shrinking epoch every training instance is scored with the Boss's *current*
    loss (eval mode, no gradients), and ``p_i = 1`` where it lies above the mean loss: exactly
    the label the default (memory) Assistant predicts from each instance's last reported loss,
    without its staleness. Selection, floor and weights are the library's own
    (``plan_from_keep_scores``: ``P_i = b + (1 - b) p_i``, weights ``mean(P) / P_i``), with the
    defaults' one full warm-up epoch. The scoring pass is free for a perfect Assistant, so it is
    not counted in ``forwarded``; ``scoring_forwards`` records it.

    ``rule="proportional"`` swaps the keep rule for importance sampling on the same perfect
    scores: ``P_i = clip(loss_i / tau, min_keep, 1)`` with ``tau`` set so that ``mean(P)`` is
    ``budget`` (the library's ``kernels.proportional_scores``, which
    ``assistant="proportional"`` applies to stale losses), weights ``mean(P) / P_i``. It asks
    whether a rule other than "above the mean, else the floor" could save more on the same task.
    ``min_keep`` bounds the weights at ``budget / min_keep``: at 0.02 (weights up to 25) magic's
    MLP diverged at the one-cycle peak.

    ``scores="stale"`` is the control between this bound and the real Assistant: the same rule
    fed each instance's *last training loss* (recorded in ``loss``, train mode, as the Boss
    reports it), synchronously and in this process. What it loses against ``"current"`` is the
    price of staleness alone; what the library's Assistant loses beyond it is the machinery's.
    """

    RULES = ("mean", "proportional")
    SCORES = ("current", "stale")

    def __init__(self, *args, floor: float = 0.5, warmup_epochs: int = 1, chunk: int = 4096,
                 rule: str = "mean", budget: float = 0.5, min_keep: float = 0.1,
                 scores: str = "current"):
        super().__init__(*args)
        from autoassist.config import ShrinkConfig

        if rule not in self.RULES:
            raise ValueError(f"rule={rule!r}: choose one of {self.RULES}")
        if scores not in self.SCORES:
            raise ValueError(f"scores={scores!r}: choose one of {self.SCORES}")
        if scores == "stale" and warmup_epochs < 1:
            raise ValueError("scores='stale' reads losses from training: it needs "
                             "warmup_epochs >= 1, so every instance has one")
        self.rule, self.budget, self.min_keep = rule, float(budget), float(min_keep)
        self.scores = scores
        self.last = np.full(len(self.train), np.inf)  # stale scores: unseen instances kept
        self.config = ShrinkConfig(floor=floor, warmup_epochs=warmup_epochs, seed=self.seed)
        self.chunk = chunk
        self.model = None
        self.kept: list[float] = []
        self.scoring_forwards = 0
        self._weights = np.ones(len(self.train), np.float32)

    def bind(self, model) -> None:
        self.model = model

    def _current_losses(self) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("OracleMethod scores with the Boss's model: call bind(model) "
                               "before the first epoch")
        x, y = self.train.tensors()
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(y), self.chunk):
                xb, yb = x[i : i + self.chunk].to(device), y[i : i + self.chunk].to(device)
                out.append(F.cross_entropy(self.model(xb), yb, reduction="none").cpu())
        self.model.train(was_training)
        self.scoring_forwards += len(y)
        return torch.cat(out).numpy().astype(np.float64)

    def epoch(self, epoch):
        from autoassist.engine.plan import plan_from_keep_scores
        from autoassist.kernels import proportional_scores, shuffle_kept

        n = len(self.train)
        if epoch < self.config.warmup_epochs:
            kept, self._weights = np.arange(n), np.ones(n, np.float32)
        else:
            losses = self._current_losses() if self.scores == "current" else self.last.copy()
            if self.rule == "mean":
                p, floor = (losses > losses.mean()).astype(np.float32), self.config.floor
            else:  # P = b + (1 - b) p = clip(loss / tau, b, 1) at b = min_keep, mean budget
                # (a diverging Boss's NaN or infinite losses are kept, P = 1)
                p, floor = proportional_scores(np.maximum(losses, 0.0), self.budget,
                                               self.min_keep), self.min_keep
            plan = plan_from_keep_scores(self.config, epoch, p, epoch, floor)
            kept, self._weights = np.flatnonzero(plan.mask), plan.all_weights
        self.kept.append(len(kept) / n)
        ids = _IdBatches(shuffle_kept(kept, self.seed, epoch), self.batch_size)
        return _Zipped(DataLoader(self.train, batch_sampler=ids, pin_memory=self.pin),
                       ids.batches)

    def loss(self, model, batch):
        (x, y), ids = batch
        per_sample = F.cross_entropy(model(x), y, reduction="none")
        if self.scores == "stale":
            self.last[ids] = per_sample.detach().cpu().numpy()
        w = torch.from_numpy(self._weights[ids]).to(per_sample.device)
        return (per_sample * w).mean(), len(y), len(y)

    def info(self):
        return {"kept_fraction": self.kept, "scoring_forwards": self.scoring_forwards}


class _Zipped:
    def __init__(self, loader, ids):
        self.loader, self.ids = loader, ids

    def __len__(self):
        return len(self.ids)

    def __iter__(self):
        return zip(self.loader, self.ids, strict=True)


class SelectiveBackpropMethod(_Method):
    """Score every batch without gradients, pool the selected instances, train on full pools.

    The first ``warmup_epochs`` backpropagate everything (filling the loss window), as every
    other method's first epoch does: selecting the currently-worst instances of a freshly
    initialised CNN made it oscillate and never learn in a trial run.
    """

    def __init__(self, *args, beta: float = 3.0, history: int = 1024, warmup_epochs: int = 1):
        super().__init__(*args)
        self.warmup_epochs = warmup_epochs
        self.current = 0
        from autoassist.bench.peers import SelectiveBackprop

        self.loader = self._loader()
        self.selector = SelectiveBackprop(beta=beta, history=history, seed=self.seed)
        self.pool_x: list[torch.Tensor] = []
        self.pool_y: list[torch.Tensor] = []
        self.pooled = 0

    def epoch(self, epoch):
        self.current = epoch
        return self.loader

    def loss(self, model, batch):
        x, y = batch
        if self.current < self.warmup_epochs:
            per_sample = F.cross_entropy(model(x), y, reduction="none")
            self.selector.observe(per_sample.detach().cpu().numpy())
            return per_sample.mean(), len(y), len(y)
        with torch.no_grad():  # scoring pass in train mode, as in the paper and Composer:
            losses = F.cross_entropy(model(x), y, reduction="none")  # BatchNorm sees every batch
        chosen = torch.from_numpy(self.selector.select(losses.cpu().numpy())).to(x.device)
        self.pool_x.append(x[chosen])
        self.pool_y.append(y[chosen])
        self.pooled += int(chosen.sum())
        if self.pooled < self.batch_size:
            return None, len(y), 0
        loss, fwd, bwd = self._train_pool(model)
        return loss, len(y) + fwd, bwd

    def _train_pool(self, model):
        x, y = torch.cat(self.pool_x), torch.cat(self.pool_y)
        self.pool_x, self.pool_y, self.pooled = [], [], 0
        return F.cross_entropy(model(x), y), len(y), len(y)

    def finish(self, model):
        """End of epoch: train on what is pooled (BatchNorm needs at least 2 instances)."""
        if self.pooled >= 2:
            return self._train_pool(model)
        return None, 0, 0


def make_method(name: str, train, batch_size: int, seed: int, epochs: int,
                settings: dict[str, Any] | None = None, device: torch.device = CPU,
                matched_run: dict[str, Any] | None = None) -> _Method:
    """``matched_run``: for ``random_subset``, the same seed's autoassist run to match."""
    args = (train, batch_size, seed, epochs, device)
    if name == "uniform":
        return Uniform(*args)
    if name == "uniform_reshuffled":
        return Uniform(*args, order_seed=RESHUFFLE_OFFSET + seed)
    if name == "autoassist":
        return AutoAssist(*args, settings=AUTOASSIST_SETTINGS if settings is None else settings)
    if name == "random_subset":
        kept = matched_kept_counts(len(train), epochs,
                                   AUTOASSIST_SETTINGS if settings is None else settings,
                                   matched_run)
        return RandomSubsetMethod(*args, kept=kept)
    if name == "published":
        return AutoAssist(*args, settings=PUBLISHED_SETTINGS, raw_features=True)
    if name == "infobatch":
        return InfoBatchMethod(*args)
    if name == "selective_backprop":
        return SelectiveBackpropMethod(*args)
    if name == "oracle":
        return OracleMethod(*args, **(settings or {}))
    raise ValueError(f"unknown method {name!r}; choose from {ALL_METHODS}")


# ------------------------------------------------------------------------------------------------
# One training run
# ------------------------------------------------------------------------------------------------
LOOPS = ("sgd", "adam")  # the two training loops users write most (see run_one)


def run_one(task: Task, method: str, train, test, *, seed: int, lr: float, epochs: int,
            progress: bool = True, settings: dict[str, Any] | None = None,
            device: str | torch.device = "cpu", log=print,
            matched_run: dict[str, Any] | None = None, loop: str = "sgd",
            runner: Callable[..., _Method] | None = None) -> dict[str, Any]:
    """Train ``task.model()`` (initialised from ``seed``) with ``method``; return its record.

    ``runner``: a method class outside ``make_method``'s (a probe), called with the train set,
    batch size, seed, epochs and device; ``method`` then only names it.

    ``loop``: ``"sgd"`` is SGD with Nesterov momentum and a one-cycle schedule decayed for this
    run's own ``epochs`` (driven by progress, so shrunk epochs still decay fully); ``"adam"`` is
    Adam at the fixed learning rate ``lr`` with no schedule (the usual first loop).
    On a CUDA ``device`` the clock waits for the GPU at each epoch's end, so seconds are real.
    The record has wall ``train_seconds`` and this process's ``cpu_seconds`` (cumulative per
    epoch, setup included); an Assistant's own CPU seconds are in its ``telemetry``.
    """
    if loop not in LOOPS:
        raise ValueError(f"loop {loop!r}: choose from {LOOPS}")
    from tqdm.auto import tqdm

    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):  # same initial weights for every method (on CPU,
        torch.manual_seed(seed)  # so every device starts alike); the global RNG is kept
        model = task.model().to(device)
    test = tuple(t.to(device) for t in test)
    if loop == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                                    weight_decay=task.weight_decay)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    curve = Curve(LABELS.get(method, method))
    cpu_seconds: list[float] = []
    forwarded: list[int] = []
    backpropagated: list[int] = []
    fwd = bwd = 0
    clock = Stopwatch()
    clock.start()
    if runner is None:
        runner = make_method(method, train, task.batch_size, seed, epochs, settings, device,
                             matched_run)
    else:
        runner = runner(train, task.batch_size, seed, epochs, device)
    runner.bind(model)
    setup_seconds = clock.pause()

    def settle():  # queued GPU work belongs to the epoch that queued it
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step(loss, progress_now):
        if loop == "sgd":
            for group in optimizer.param_groups:
                group["lr"] = one_cycle_lr(progress_now, lr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    try:
        for epoch in range(epochs):
            clock.start()
            model.train()
            batches = runner.epoch(epoch)
            steps = max(1, len(batches))
            bar = tqdm(batches, total=steps, leave=False, disable=not progress,
                       desc=f"{method} seed {seed} epoch {epoch + 1}/{epochs}",
                       mininterval=0.1 if sys.stderr.isatty() else 15.0, dynamic_ncols=True)
            for i, batch in enumerate(bar):
                loss, f, b = runner.loss(model, _to_device(batch, device))
                fwd, bwd = fwd + f, bwd + b
                if loss is not None:
                    step(loss, (epoch + min(i / steps, 1.0)) / epochs)
            loss, f, b = runner.finish(model)
            fwd, bwd = fwd + f, bwd + b
            if loss is not None:
                step(loss, (epoch + 1.0) / epochs)
            settle()
            seconds = clock.pause()
            cpu_seconds.append(clock.cpu_total)
            t0 = time.perf_counter()
            acc = evaluate(model, *test)
            curve.eval_seconds += time.perf_counter() - t0
            curve.add(epoch + 1, seconds, acc, bwd)
            forwarded.append(fwd)
            backpropagated.append(bwd)
            log(f"  {method:<18} seed {seed} lr {lr:<5g} epoch {epoch + 1:>2}/{epochs}: "
                f"test acc {acc:.4f}  train {seconds:6.1f}s  backprop {bwd}")
        info = runner.info()
    finally:
        runner.close()
    record = curve.as_dict()
    record.update(method=method, seed=seed, lr=lr, forwarded=forwarded,
                  backpropagated=backpropagated, setup_seconds=setup_seconds,
                  cpu_seconds=cpu_seconds, loop=loop, **info)
    return record


def _to_device(batch, device: torch.device):
    """Tensors of a (nested) batch on ``device``; ids and other values as they are."""
    if device.type == "cpu":
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(b, device) for b in batch)
    return batch


def _warm_up(task: Task, train, batches: int = 20, device: torch.device = CPU) -> None:
    """A few untimed steps first, so no method's clock pays for torch's one-time set-up."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = task.model().to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        loader = DataLoader(train, batch_size=task.batch_size, shuffle=True)
        for i, (x, y) in enumerate(loader):
            if i == batches:
                break
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        x, y = train.tensors()
        evaluate(model, x[:2000].to(device), y[:2000].to(device))


# ------------------------------------------------------------------------------------------------
# Analysis: pure functions on curves (tested on hand-made ones)
# ------------------------------------------------------------------------------------------------
def pick_learning_rate(finals: dict[float, list[float]]) -> tuple[float, float | None]:
    """The LR with the best mean final accuracy (ties: the smaller), and the LR to try next when
    that best is the grid's largest (twice it) or smallest (half it) of two or more; else None."""
    grid = sorted(finals)
    best = max(grid, key=lambda v: (statistics.fmean(finals[v]), -v))
    if len(grid) < 2:
        return best, None
    if best == grid[-1]:
        return best, best * 2
    if best == grid[0]:
        return best, best / 2
    return best, None


TOLERANCE = 0.002  # about one seed-to-seed SD of the tuned baseline on both tasks


def summarize(runs: list[dict[str, Any]], lr: float,
              tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Per-seed targets and savings, and per-method aggregates over seeds.

    A seed on which a method never reaches the target counts as saving 0 in the mean (it saved
    nothing: the user would still need a uniform run); ``reached`` says on how many seeds it did.
    ``acc_at_half_time``: the accuracy each method had after half of uniform's training seconds
    (its last evaluation by then), the equal-time view of the same curves. ``saving_tol``: the
    same saving to ``target - tolerance`` (uniform's time to that lower target too): a method
    as accurate as uniform can still miss the exact target on some seeds (how often, the
    ``uniform_reshuffled`` control measures), so this says how much of a miss is noise.
    ``final_diff``: final accuracy minus the same seed's uniform final (paired: both share the
    initial weights and the test set), with its mean and standard error over seeds, which says
    whether a method ends *systematically* below or above uniform, as the per-seed "reached"
    count cannot.
    """
    main = [r for r in runs if r["method"] == "uniform" and r["lr"] == lr]
    targets = {r["seed"]: r["accuracy"][-1] for r in main}
    t_uniform = {r["seed"]: time_to_target(r["train_seconds"], r["accuracy"], targets[r["seed"]])
                 for r in main}
    half = {r["seed"]: r["train_seconds"][-1] / 2 for r in main}
    t_uniform_tol = {r["seed"]: time_to_target(r["train_seconds"], r["accuracy"],
                                               targets[r["seed"]] - tolerance) for r in main}
    per_method: dict[str, dict[str, Any]] = {}
    for r in runs:
        if r["seed"] not in targets or (r["method"] == "uniform" and r["lr"] != lr):
            continue
        t = time_to_target(r["train_seconds"], r["accuracy"], targets[r["seed"]])
        s = saving(t, t_uniform[r["seed"]])
        r["target"], r["time_to_target"], r["saving"] = targets[r["seed"]], t, s
        m = per_method.setdefault(r["method"], {"seeds": [], "final": [], "train_seconds": [],
                                                "time_to_target": [], "saving": [],
                                                "forwarded": [], "backpropagated": [],
                                                "eval_seconds": [], "acc_at_half_time": [],
                                                "saving_tol": [], "final_diff": []})
        m["seeds"].append(r["seed"])
        m["final"].append(r["accuracy"][-1])
        m["final_diff"].append(r["accuracy"][-1] - targets[r["seed"]])
        m["train_seconds"].append(r["train_seconds"][-1])
        m["time_to_target"].append(t)
        m["saving"].append(s)
        m["forwarded"].append(r["forwarded"][-1])
        m["backpropagated"].append(r["backpropagated"][-1])
        m["eval_seconds"].append(r["eval_seconds"])
        m["acc_at_half_time"].append(accuracy_at(r["train_seconds"], r["accuracy"],
                                                 half[r["seed"]]))
        t_tol = time_to_target(r["train_seconds"], r["accuracy"], targets[r["seed"]] - tolerance)
        m["saving_tol"].append(saving(t_tol, t_uniform_tol[r["seed"]]))
    for m in per_method.values():
        m["final_mean"] = statistics.fmean(m["final"])
        m["final_sd"] = statistics.stdev(m["final"]) if len(m["final"]) > 1 else 0.0
        m["final_diff_mean"] = statistics.fmean(m["final_diff"])
        m["final_diff_se"] = (statistics.stdev(m["final_diff"]) / math.sqrt(len(m["final_diff"]))
                              if len(m["final_diff"]) > 1 else None)
        m["train_seconds_mean"] = statistics.fmean(m["train_seconds"])
        m["saving_mean"] = statistics.fmean(0.0 if s is None else s for s in m["saving"])
        m["reached"] = sum(s is not None for s in m["saving"])
        m["saving_tol_mean"] = statistics.fmean(0.0 if s is None else s for s in m["saving_tol"])
        m["reached_tol"] = sum(s is not None for s in m["saving_tol"])
        halves = [a for a in m["acc_at_half_time"] if a is not None]
        m["acc_at_half_time_mean"] = statistics.fmean(halves) if halves else None
    return {"targets": targets, "uniform_time_to_target": t_uniform, "tolerance": tolerance,
            "methods": per_method}


def markdown_table(summary: dict[str, Any], task: Task, epochs: int, lr: float,
                   sweep: list[float] | None = None) -> str:
    tol = summary.get("tolerance", TOLERANCE)
    swept = f" of {', '.join(f'{v:g}' for v in sweep)}" if sweep else ""
    lines = [
        f"**{task.name}** — {task.description}; {epochs} epochs, batch {task.batch_size}, "
        f"tuned max LR {lr:g}{swept} (one-cycle); target = each seed's tuned-uniform final "
        "accuracy.",
        "",
        "| method | final acc (mean ± sd) | final − uniform's (paired, ± se) | train s "
        "| forwarded | backpropagated "
        f"| s to target | saving | reached | saving to target − {tol:g} (reached) "
        "| acc at ½ uniform's time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in summary["methods"].items():
        times = [t for t in m["time_to_target"] if t is not None]
        t = f"{statistics.fmean(times):.1f}" if times else "never"
        n = len(m["seeds"])
        mid = m.get("acc_at_half_time_mean")
        half = "—" if mid is None else f"{mid:.4f}"
        se = m.get("final_diff_se")
        diff = f"{m['final_diff_mean']:+.4f}" + ("" if se is None else f" ± {se:.4f}")
        lines.append(
            f"| {LABELS.get(name, name)} | {m['final_mean']:.4f} ± {m['final_sd']:.4f} "
            f"| {diff} | {m['train_seconds_mean']:.1f} | {statistics.fmean(m['forwarded']):,.0f} "
            f"| {statistics.fmean(m['backpropagated']):,.0f} | {t} "
            f"| {100 * m['saving_mean']:.0f}% | {m['reached']}/{n} "
            f"| {100 * m['saving_tol_mean']:.0f}% ({m['reached_tol']}/{n}) | {half} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: list[dict[str, Any]], summary: dict[str, Any], path: Path,
         title: str) -> Path | None:
    """Accuracy vs training wall-clock, one panel per seed, the target dashed."""
    seeds = sorted(summary["targets"])
    cols = min(3, len(seeds))  # rows of three panels: six seeds stay readable
    rows = -(-len(seeds) // cols)
    made = subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False,
                    sharey=True)
    if made is None:  # no matplotlib: the JSON and tables say it all
        return None
    fig, axes = made
    for ax in axes.flat[len(seeds):]:
        ax.set_visible(False)
    colors = dict(zip(ALL_METHODS, ("black", "tab:red", "tab:grey", "tab:orange", "tab:blue",
                                    "tab:green", "tab:purple", "tab:brown"), strict=True))
    accs = [a for r in runs for a in r["accuracy"]]
    top = max(accs)
    for ax, seed in zip(axes.flat, seeds, strict=False):
        for r in runs:
            if r["seed"] != seed or "saving" not in r:
                continue
            ax.plot(r["train_seconds"], r["accuracy"], marker="o", ms=3,
                    color=colors.get(r["method"]), label=LABELS.get(r["method"], r["method"]))
        ax.axhline(summary["targets"][seed], ls="--", lw=0.8, color="grey")
        ax.set_title(f"seed {seed}")
        ax.set_xlabel("training wall-clock (s, evaluation excluded)")
        ax.set_ylim(top - 0.05, top + 0.005)
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("test accuracy")
    axes.flat[len(seeds) - 1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


# ------------------------------------------------------------------------------------------------
# The whole benchmark
# ------------------------------------------------------------------------------------------------
def run_benchmark(task_name: str = "fashion_mnist", *, seeds: int = 3, quick: bool = False,
                  methods: tuple[str, ...] = METHODS, threads: int = 2,
                  epochs: int | None = None, lrs: tuple[float, ...] | None = None,
                  sweep_seeds: int = 1, limit: int | None = None, progress: bool = True,
                  device: str = "cpu", max_extend: int = 2, log=print,
                  checkpoint: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the LR sweep, then every method on every seed; return the full record.

    ``checkpoint`` gets the record so far (``"partial": True``, ``seeds_done``) after every seed
    but the last, so a multi-hour run stopped early keeps what it measured.

    The sweep runs uniform at each learning rate on the first ``sweep_seeds`` seeds and keeps the
    best mean final accuracy; that LR is then used by every method on every seed. A best LR at
    either end of the grid means the optimum may lie outside it, so the grid is extended by a
    factor of 2 that way (at most ``max_extend`` times): the baseline must be tuned, not just
    swept ("No Train No Gain").
    """
    from autoassist.bench.provenance import git_commit, machine_info, thread_info

    task = get_task(task_name)
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown or "uniform" not in methods:
        raise ValueError(f"methods must include 'uniform' and come from {ALL_METHODS}; got "
                         f"{methods}")
    if "random_subset" in methods and expected_keep_fraction(AUTOASSIST_SETTINGS) is None and (
            "autoassist" not in methods
            or methods.index("autoassist") > methods.index("random_subset")):
        raise ValueError("random_subset matches autoassist's kept counts on the same seed: "
                         "list 'autoassist' before it in methods")
    if seeds < 1 or not 1 <= sweep_seeds <= seeds:
        raise ValueError(f"need seeds >= 1 and 1 <= sweep_seeds <= seeds; got {seeds}, "
                         f"{sweep_seeds}")
    device_ = torch.device(device)
    if device_.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: torch sees no CUDA GPU here; use --device cpu")
    epochs = epochs or (task.quick_epochs if quick else task.epochs)
    lrs = tuple(lrs or (task.quick_lrs if quick and task.quick_lrs else task.lrs))
    if limit is None and quick:
        limit = task.quick_limit

    def assemble(summary: dict[str, Any], info: dict[str, Any], seeds_done: int) -> dict:
        """The run's record from the seeds so far (all of them at the end)."""
        methods_summary = summary["methods"]

        def key(method: str, field: str):
            return methods_summary[method][field] if method in methods_summary else None

        headline = {
            "task": task.name,
            "saving": key("autoassist", "saving_mean"),
            "saving_published": key("published", "saving_mean"),
            "saving_infobatch": key("infobatch", "saving_mean"),
            "saving_sb": key("selective_backprop", "saving_mean"),
            "saving_random_subset": key("random_subset", "saving_mean"),
            "final_acc_uniform": key("uniform", "final_mean"),
            "final_acc_autoassist": key("autoassist", "final_mean"),
            "final_diff_autoassist": key("autoassist", "final_diff_mean"),
            "final_diff_se_autoassist": key("autoassist", "final_diff_se"),
            "reached_autoassist": key("autoassist", "reached"),
            "reached_uniform_reshuffled": key("uniform_reshuffled", "reached"),
            "saving_within_tolerance": key("autoassist", "saving_tol_mean"),
            "tolerance": TOLERANCE,
            "seeds": seeds,
            "epochs": epochs,
            "lr": lr,
            "quick": quick,
            "device": str(device_),
        }
        return {
            "headline": headline,
            "task": {"name": task.name, "description": task.description, "epochs": epochs,
                     "batch_size": task.batch_size, "lrs": list(lrs), "tuned_lr": lr,
                     "weight_decay": task.weight_decay, "train_instances": len(train),
                     "test_instances": len(test[1]), "sweep_seeds": sweep_seeds,
                     "lr_at_sweep_end": beyond is not None},
            "settings": {"autoassist": AUTOASSIST_SETTINGS, "published": PUBLISHED_SETTINGS,
                         "random_subset": {"kept": "autoassist's per-epoch kept counts, same seed"},
                         "infobatch": {"ratio": 0.5, "delta": 0.875},
                         "selective_backprop": {"beta": 3.0, "history": 1024, "warmup_epochs": 1}},
            "summary": summary,
            "runs": list(runs),  # a snapshot: the run goes on appending
            "commit": commit,
            "machine": machine_info(device_),
            "threads": dict(info, torch_threads=threads),
            "wall_seconds": time.perf_counter() - started,
            "partial": seeds_done < seeds,
            "seeds_done": seeds_done,
        }

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    started, commit = time.perf_counter(), git_commit()  # the code this run loads
    try:
        train, test = task.load(limit)
        _warm_up(task, train, device=device_)
        log(f"{task.name}: {len(train)} train / {len(test[1])} test; {epochs} epochs, batch "
            f"{task.batch_size}, LR sweep {lrs}, seeds {list(range(seeds))}, {threads} threads, "
            f"on {device_}")
        runs: list[dict[str, Any]] = []
        finals: dict[float, list[float]] = {}
        pending = list(lrs)
        while pending:  # the sweep, extended while its best LR sits at an end of the grid
            for lr in pending:
                for seed in range(sweep_seeds):
                    runs.append(run_one(task, "uniform", train, test, seed=seed, lr=lr,
                                        epochs=epochs, progress=progress, device=device_,
                                        log=log))
                    finals.setdefault(lr, []).append(runs[-1]["accuracy"][-1])
            lr, beyond = pick_learning_rate(finals)
            pending = [beyond] if beyond is not None and len(finals) < len(lrs) + max_extend \
                else []
            if pending:
                log(f"best LR {lr:g} is at an end of the sweep: also trying {beyond:g}")
        lrs = tuple(sorted(finals))
        log(f"tuned learning rate: {lr:g} (sweep final accuracies "
            f"{ {k: round(statistics.fmean(v), 4) for k, v in sorted(finals.items())} })"
            + (f"; WARNING: still at an end of the sweep ({beyond:g} untried), so the "
               "baseline may be under-tuned" if beyond is not None else ""))
        for seed in range(seeds):
            for method in methods:
                if method == "uniform" and seed < sweep_seeds:
                    continue  # the sweep already ran it
                matched = next((r for r in runs if r["method"] == "autoassist"
                                and r["seed"] == seed), None)
                runs.append(run_one(task, method, train, test, seed=seed, lr=lr, epochs=epochs,
                                    progress=progress, device=device_, log=log,
                                    matched_run=matched))
            if checkpoint is not None and seed < seeds - 1:
                checkpoint(assemble(summarize(runs, lr), thread_info(), seed + 1))
        summary = summarize(runs, lr)
    finally:
        torch.set_num_threads(previous_threads)
        info = thread_info()
    return assemble(summary, info, seeds)


def write_outputs(result: dict[str, Any], directory: Path, stem: str) -> dict[str, Path | None]:
    """``<stem>.json``, ``<stem>.png`` and ``<stem>.md`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    task = get_task(result["task"]["name"])
    lr, epochs = result["task"]["tuned_lr"], result["task"]["epochs"]
    table = markdown_table(result["summary"], task, epochs, lr, result["task"].get("lrs"))
    if result["task"].get("lr_at_sweep_end"):
        table += (f"\nWARNING: the tuned LR {lr:g} is still at an end of the sweep "
                  f"{result['task']['lrs']}: the baseline may be under-tuned.\n")
    if result.get("partial"):
        table += (f"\nPARTIAL: {result['seeds_done']} of {result['headline']['seeds']} seeds so "
                  "far (the run is still going, or was stopped).\n")
    result["table"] = table
    paths: dict[str, Path | None] = {"json": directory / f"{stem}.json",
                                     "md": directory / f"{stem}.md"}
    paths["png"] = plot(result["runs"], result["summary"], directory / f"{stem}.png",
                        f"{task.name}: test accuracy vs training time ({epochs} epochs)")
    paths["json"].write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")
    paths["md"].write_text(table)
    return paths


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


# ------------------------------------------------------------------------------------------------
# Command line (shared by `autoassist bench` and `python -m benchmarks.time_to_accuracy`)
# ------------------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    """Options shared by ``autoassist bench`` and ``python -m benchmarks.time_to_accuracy``."""
    from autoassist.bench.tasks import TASKS

    p.add_argument("--task", default="fashion_mnist", choices=sorted(TASKS))
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds 0..N-1 (default 3, or 1 with --quick)")
    p.add_argument("--sweep-seeds", type=int, default=None,
                   help="seeds the uniform LR sweep runs on (default 1: the first; "
                        "--frontier: 2)")
    p.add_argument("--quick", action="store_true",
                   help="a few-minute version: fewer epochs, a slice of the data, 1 seed")
    p.add_argument("--methods", default=None, help="comma-separated, from "
                   f"{','.join(ALL_METHODS)} (default: all but the opt-in {','.join(CONTROLS)})")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for every method (default 2; --frontier: 1)")
    p.add_argument("--epochs", type=int, default=None, help="override the task's epoch budget")
    p.add_argument("--lrs", default=None, help="override the LR sweep, e.g. 0.05,0.1,0.2")
    p.add_argument("--max-extend", type=int, default=2,
                   help="times the sweep may be extended (x2 or /2) while its best LR is at an "
                        "end of the grid (default 2; 0: exactly --lrs)")
    p.add_argument("--limit", type=int, default=None, help="use only N training instances")
    p.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")
    p.add_argument("--device", default="cpu",
                   help="where the Boss trains: cpu or cuda[:N] (the Assistant stays on the CPU)")


def result_stem(args) -> str:
    """``time_to_accuracy_<task>``, with ``_cuda`` for GPU runs and ``_quick`` for quick ones, so
    neither overwrites the full CPU results."""
    kind = torch.device(args.device).type
    return (f"time_to_accuracy_{args.task}" + ("" if kind == "cpu" else f"_{kind}")
            + ("_quick" if args.quick else ""))


def run_cli(args, directory: Path, stem: str) -> dict:
    """Run from parsed ``add_arguments`` options; write the outputs; print the table."""
    seeds = args.seeds or (1 if args.quick else 3)
    result = run_benchmark(
        args.task, seeds=seeds, quick=args.quick,
        methods=tuple(args.methods.split(",")) if args.methods else METHODS,
        threads=args.threads or 2, epochs=args.epochs,
        lrs=tuple(float(v) for v in args.lrs.split(",")) if args.lrs else None,
        sweep_seeds=min(args.sweep_seeds or 1, seeds), limit=args.limit,
        progress=not args.no_progress, device=args.device, max_extend=args.max_extend,
        checkpoint=lambda partial: write_outputs(partial, directory, stem),
    )
    paths = write_outputs(result, directory, stem)
    print()
    print(result["table"])
    print("wrote " + ", ".join(str(p) for p in paths.values() if p is not None))
    return result
