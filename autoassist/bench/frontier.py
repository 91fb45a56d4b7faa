"""Accuracy-cost frontiers: every method at several budgets, each with its own decayed schedule.

The question a user asks is not "does the method reach uniform's accuracy on the same epoch
budget" but "to get the accuracy of my usual run, should I train fewer uniform epochs or wrap
my loader?". So each method is trained at several epoch counts, every run's schedule decayed
for its own length, and the final test accuracy is read against the run's cost.

Protocol (``run_frontier``):

- The learning rate is swept for uniform at the full budget ``E`` on a validation split held
  out of the training set (``VAL_FRACTION``, fixed seed); every method then uses it, and trains
  on the rest of the training set. Test accuracy is only reported.
- Budgets: uniform at ``E * {1/3, 2/3, 1, 3/2}`` epochs; a method whose epochs cost about a
  fraction ``c`` of uniform's runs at those fractions times ``1/c`` (``MULTIPLIERS``), so its
  costs span about the same range.
- Seeds are paired: the same initial weights and data order for every method on a seed.
- Cost: CPU seconds of training, the Boss process's (every thread) plus the Assistant's
  process's, so the Assistant's work counts as if it ran on the Boss's cores; evaluation is
  excluded. Wall seconds and backpropagated instances are recorded beside it.
- A second, deterministic cost axis, **compute** (``AXES``): instance passes, a forward counted
  once and a backward twice (``forwarded + 2 * backpropagated``), in uniform epochs. CPU seconds
  of identical runs spread by up to a third on this shared VM when other programs run; compute
  does not move, so its readings are the ones that can separate methods, and the ratio of the
  two says what a method's bookkeeping (report path, Assistant) costs on top of its compute.
- Every finished run is stored at once (``runs/<key>.json``) with a fingerprint of the code that
  trained it; re-running the same command skips runs whose file exists with the same
  fingerprint, so a long frontier can be completed across sittings.

Readings (``analyse``): the **target** is the best mean accuracy on uniform's frontier, its
reference cost the mean cost of the uniform budget that reaches it; a method's **saving** is
``1 - cost(method's mean frontier first reaches the target) / reference``, interpolated linearly
between budget points, with a 90% bootstrap interval over seeds; "not reached within its largest
budget" is reported as such (None). **Gain at equal cost**: at each uniform budget point, the
method's frontier accuracy (interpolated at that cost, per seed) minus uniform's, paired mean and
standard error over seeds.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoassist.bench.tasks import Task, get_task
from autoassist.tuning.frontier_math import (  # shared with `autoassist tune`
    accuracy_at_cost,
    interpolate_cost,
)
from autoassist.tuning.frontier_math import budget_epochs as _budget_epochs

VAL_FRACTION = 0.1
SPLIT_SEED = 20_261_206
NOISE_SEED = 7_321
FRACTIONS = (1 / 3, 2 / 3, 1.0, 3 / 2)
# epochs per unit of uniform's budget, so each method's costs span about uniform's range
MULTIPLIERS = {"uniform": 1.0, "autoassist": 1.5, "autoassist_reweight_anneal": 2.0,
               "published": 2.0, "random_subset": 1.5, "infobatch": 1.5,
               "selective_backprop": 1.5, "aa_floor05_rw": 1.5, "aa_floor05_rw_tail": 1.5,
               "aa_memory_rw": 1.5, "aa_memory_rw_tail": 1.5, "aa_sum": 1.5, "aa_sum_tail": 1.5,
               # the control: uniform again with another data order (same initial weights), so
               # the readings of a method exactly as good as uniform show what noise alone gives
               "uniform_reshuffled": 1.0,
               # bounds: the keep rule fed a perfect Assistant (the Boss's current losses), at
               # the defaults' floor and at a low one; the defaults at that low floor
               "oracle": 1.5, "oracle_floor02": 2.0, "aa_floor02": 2.0,
               "oracle_prop05": 2.0, "oracle_prop033": 3.0, "oracle_prop033_stale": 3.0,
               "aa_prop05": 2.0, "aa_prop033": 3.0, "aa_prop033_sync": 3.0}
# frontier method -> (harness method, its autoassist settings): "autoassist" is exactly
# ``autoassist.wrap(loader)`` with the library's defaults (only the seed is passed)
# (a callable gets the run's epoch count: settings that depend on the budget)
VARIANTS: dict[str, tuple[str, Any]] = {
    "autoassist": ("autoassist", {}),
    "autoassist_reweight_anneal": ("autoassist", None),  # the old harness's AUTOASSIST_SETTINGS
    # candidates for the defaults (issue 26): InfoBatch's pruning level and rescaling, with and
    # without its full-data tail (12.5% of the epochs, which needs the budget)
    "aa_floor05_rw": ("autoassist", {"floor": 0.5, "reweight": True}),
    "aa_floor05_rw_tail": ("autoassist", lambda e: {"floor": 0.5, "reweight": True,
                                                    "anneal_epochs": max(1, round(e / 8)),
                                                    "epochs": e}),
    # the memory Assistant (each instance's last loss against the mean, no learner): InfoBatch's
    # rule computed asynchronously by the library, without and with the full-data tail
    "aa_memory_rw": ("autoassist", {"assistant": "memory", "floor": 0.5, "reweight": True}),
    "aa_memory_rw_tail": ("autoassist", lambda e: {"assistant": "memory", "floor": 0.5,
                                                   "reweight": True, "epochs": e,
                                                   "anneal_epochs": max(1, round(e / 8))}),
    # the defaults with InfoBatch's rescaling (weights 1 / P: a shrunk epoch's summed gradient
    # is a full epoch's), without and with its full-data tail
    "aa_sum": ("autoassist", {"reweight_scale": "sum"}),
    "aa_sum_tail": ("autoassist", lambda e: {"reweight_scale": "sum", "epochs": e,
                                             "anneal_epochs": max(1, round(e / 8))}),
    # what caps the saving: the Assistant (oracle vs the defaults at one floor) or the keep
    # rule (floor 0.5 vs 0.2 under either)
    "oracle": ("oracle", {"floor": 0.5}),
    "oracle_floor02": ("oracle", {"floor": 0.2}),
    "aa_floor02": ("autoassist", {"floor": 0.2}),
    # another keep rule on the same perfect scores: P proportional to the loss (importance
    # sampling), half and a third of the data per epoch
    "oracle_prop05": ("oracle", {"rule": "proportional", "budget": 0.5}),
    "oracle_prop033": ("oracle", {"rule": "proportional", "budget": 1 / 3}),
    # the same rule on each instance's last training loss, in process and synchronously: the
    # price of staleness alone, between the bound and the library's Assistant
    "oracle_prop033_stale": ("oracle", {"rule": "proportional", "budget": 1 / 3,
                                        "scores": "stale"}),
    # the same rule with the library's proportional Assistant (each instance's last reported
    # loss, as stale as the memory Assistant's)
    "aa_prop05": ("autoassist", {"assistant": "proportional", "keep": 0.5, "floor": 0.1}),
    "aa_prop033": ("autoassist", {"assistant": "proportional", "keep": 1 / 3, "floor": 0.1}),
    # the same with the Boss waiting for each epoch's scores (sync): what the asynchrony costs,
    # against the in-process stale control above
    "aa_prop033_sync": ("autoassist", {"assistant": "proportional", "keep": 1 / 3,
                                       "floor": 0.1, "sync": True}),
}
METHODS = ("uniform", "autoassist", "published", "infobatch", "selective_backprop",
           "random_subset")
QUICK_METHODS = ("uniform", "autoassist", "infobatch", "selective_backprop")
# the full budget E of each task's frontier (uniform's usual run) and the quick one
FRONTIER_EPOCHS = {"keel_magic": 20, "fashion_mnist": 12, "adult": 12}
QUICK_EPOCHS = {"keel_magic": 15, "fashion_mnist": 6, "adult": 8}
BOOTSTRAP = 2000
SPIN_RATIO = 1.25  # CPU seconds per wall second per torch thread above which a run is flagged
# the files whose code decides a run's outcome: a stored run is reused only if they are unchanged
_TRAINING_CODE = ("bench/time_to_accuracy.py", "bench/tasks.py", "bench/training.py",
                  "bench/models.py", "bench/datasets.py", "bench/peers", "schedules.py")


# ------------------------------------------------------------------------------------------------
# Data: the validation split and label noise
# ------------------------------------------------------------------------------------------------
def split_validation(train, fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED):
    """``(fit, val)``: a fixed random ``fraction`` of ``train`` held out (both ``TensorPairs``)."""
    from autoassist.bench.datasets import TensorPairs

    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction {fraction}: must lie in (0, 1)")
    x, y = train.tensors()
    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(y))
    n_val = max(1, round(fraction * len(y)))
    val, fit = torch.from_numpy(np.sort(order[:n_val])), torch.from_numpy(np.sort(order[n_val:]))
    classes = getattr(train, "classes", ())
    return TensorPairs(x[fit], y[fit], classes), TensorPairs(x[val], y[val], classes)


def flip_labels(train, fraction: float, seed: int = NOISE_SEED):
    """A copy of ``train`` with ``fraction`` of its labels moved to another class, chosen and
    replaced uniformly at random (seeded); ``fraction = 0`` returns ``train`` itself."""
    from autoassist.bench.datasets import TensorPairs

    if fraction == 0:
        return train
    if not 0 < fraction < 1:
        raise ValueError(f"label noise {fraction}: must lie in [0, 1)")
    x, y = train.tensors()
    classes = int(y.max()) + 1
    rng = np.random.Generator(np.random.PCG64(seed))
    flip = rng.permutation(len(y))[: round(fraction * len(y))]
    labels = y.numpy().copy()
    labels[flip] = (labels[flip] + rng.integers(1, classes, len(flip))) % classes
    return TensorPairs(x, torch.from_numpy(labels).to(y.dtype), getattr(train, "classes", ()))


def budget_epochs(full: int, multiplier: float,
                  fractions: Sequence[float] = FRACTIONS) -> list[int]:
    """Epoch counts ``round(full * f * multiplier)`` (at least 1; duplicates removed): the
    product's ``frontier_math.budget_epochs`` with the harness's ``FRACTIONS``."""
    return _budget_epochs(full, multiplier, fractions)


# ------------------------------------------------------------------------------------------------
# Resumable storage
# ------------------------------------------------------------------------------------------------
# methods whose runs no product code touches: their stored runs survive changes to the library
PRODUCT_FREE = ("uniform", "uniform_reshuffled", "selective_backprop")


# product code no benchmark run executes: changing it leaves stored runs valid
_OFF_THE_TRAINING_PATH = ("bench", "tuning", "boss", "rl", "cli.py", "lightning.py", "hf.py",
                          "plotting.py")


def code_fingerprint(product: bool = True, training_code: Sequence[str] = _TRAINING_CODE) -> str:
    """Hash of the harness files that train (``training_code``, paths under ``autoassist/``)
    and, with ``product``, of the product code a run executes (everything under
    ``autoassist/`` but ``_OFF_THE_TRAINING_PATH``, plus the kernels and pipelines): a stored run
    made by other code is not reused. Other harnesses (``benchmarks.translation``) pass their
    own ``training_code``."""
    package = Path(__file__).resolve().parent.parent
    files: list[Path] = []
    if product:
        import autoassist.kernels
        import autoassist.pipelines

        for root in (package, Path(autoassist.kernels.__file__).parent,
                     Path(autoassist.pipelines.__file__).parent):
            files += [path for path in sorted(root.rglob("*.py"))
                      if not (root == package
                              and path.relative_to(root).parts[0] in _OFF_THE_TRAINING_PATH)]
    for rel in training_code:
        target = package / rel
        files.extend(sorted(target.rglob("*.py")) if target.is_dir() else [target])
    return fingerprint_files(files)


def fingerprint_files(files: Sequence[Path]) -> str:
    """Hash of the names and the *code* of ``files``: comments, docstrings and layout are left
    out, so that correcting documentation (a figure quoted in a docstring) does not discard the
    runs that code made. The tree's text (``ast.dump``) can differ between Python minor versions:
    runs stored under one are stale under another.

    Raises:
        SyntaxError: a file is not valid Python.
    """
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(_code_only(path).encode())
    return digest.hexdigest()[:16]


def _code_only(path: Path) -> str:
    """The file's syntax tree without docstrings, as text (``ast.dump`` omits positions)."""
    tree = ast.parse(path.read_bytes(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def run_key(task: str, loop: str, noise: float, method: str, epochs: int, seed: int,
            lr: float, split: str) -> str:
    return (f"{task}-{loop}-noise{noise:g}-{split}-{method}-e{epochs}-s{seed}-lr{lr:g}")


class RunStore:
    """One JSON file per finished run under ``directory``; a run made by other code is stale.

    Args:
        directory: where the run files live.
        fingerprints: ``{"product": ..., "training": ...}``: a run of a method in
            ``product_free`` is checked against the training code's fingerprint only.
        product_free: the methods no product code touches (default: the frontier's).
    """

    def __init__(self, directory: Path, fingerprints: dict[str, str],
                 product_free: Sequence[str] = PRODUCT_FREE):
        self.directory = Path(directory)
        self.fingerprints = dict(fingerprints)
        self.product_free = tuple(product_free)

    def fingerprint(self, method: str) -> str:
        return self.fingerprints["training" if method in self.product_free else "product"]

    def get(self, key: str, method: str) -> dict[str, Any] | None:
        path = self.directory / f"{key}.json"
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError:
            return None  # a run cut off while writing: run it again
        return record if record.get("fingerprint") == self.fingerprint(method) else None

    def put(self, key: str, method: str, record: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        record = dict(record, fingerprint=self.fingerprint(method), key=key)
        tmp = self.directory / f".{key}.tmp"
        tmp.write_text(json.dumps(record, default=_jsonable) + "\n")
        tmp.replace(self.directory / f"{key}.json")  # atomic: never half a file


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# ------------------------------------------------------------------------------------------------
# Costs and frontiers: pure functions on run records (tested on hand-made ones)
# ------------------------------------------------------------------------------------------------
def run_cost(record: dict[str, Any]) -> float:
    """CPU seconds of training: the Boss process's plus its Assistant's (if any)."""
    cpu = record["cpu_seconds"][-1] if record.get("cpu_seconds") else record["train_seconds"][-1]
    telemetry = record.get("telemetry") or []
    assistant = telemetry[-1].get("assistant_cpu_seconds", 0.0) if telemetry else 0.0
    return float(cpu) + float(assistant or 0.0)


def run_compute(record: dict[str, Any]) -> int:
    """Instance passes of training: a forward counts once, a backward twice (its usual cost)."""
    backpropagated = int(record["backpropagated"][-1])
    forwarded = int(record["forwarded"][-1]) if record.get("forwarded") else backpropagated
    return forwarded + 2 * backpropagated


def point(record: dict[str, Any]) -> dict[str, Any]:
    """A frontier point: one finished run's costs and final test accuracy."""
    return {"method": record["method"], "epochs": len(record["accuracy"]),
            "seed": record["seed"], "cost": run_cost(record), "compute": run_compute(record),
            "wall": float(record["train_seconds"][-1]), "accuracy": record["accuracy"][-1],
            "backpropagated": int(record["backpropagated"][-1]),
            "suspect": record.get("suspect_cpu_ratio") is not None}


# the cost axes a frontier is read on: point key -> what the unit is
AXES = {"cost": "CPU seconds, Boss + Assistant",
        "compute": "instance passes (forward 1, backward 2)"}


def _table(points: list[dict[str, Any]], method: str, seeds: Sequence[int],
           axis: str = "cost") -> np.ndarray | None:
    """``[budgets, seeds, 2]`` of (``axis``, accuracy), budgets in epoch order; None if
    incomplete."""
    mine = [p for p in points if p["method"] == method]
    budgets = sorted({p["epochs"] for p in mine})
    if not budgets:
        return None
    out = np.full((len(budgets), len(seeds), 2), np.nan)
    for p in mine:
        if p["seed"] in seeds:
            out[budgets.index(p["epochs"]), list(seeds).index(p["seed"])] = (p[axis],
                                                                            p["accuracy"])
    return None if np.isnan(out).any() else out


def _saving(uniform: np.ndarray, method: np.ndarray, cols, row: int | None = None
            ) -> tuple[float | None, float, float]:
    """(saving, target, reference cost) of the mean frontiers over seed columns ``cols``; the
    target is uniform's best mean accuracy, or its mean accuracy at budget ``row``."""
    u = uniform[:, cols].mean(axis=1)
    m = method[:, cols].mean(axis=1)
    best = int(np.argmax(u[:, 1])) if row is None else row
    target, reference = float(u[best, 1]), float(u[best, 0])
    reached = interpolate_cost(m[:, 0], m[:, 1], target)
    return (None if reached is None else 1.0 - reached / reference), target, reference


def analyse(points: list[dict[str, Any]], seeds: Sequence[int], *, bootstrap: int = BOOTSTRAP,
            rng_seed: int = 0, equal_cost_budget: int | None = None,
            axis: str = "cost") -> dict[str, Any]:
    """Target, reference cost, each method's saving (with a 90% seed-bootstrap interval) and its
    gain at equal cost at each of uniform's budgets, on the cost ``axis`` (a key of ``AXES``).
    ``equal_cost_budget``: the uniform epoch count whose gain is the headline
    ``gain_equal_time`` (default: the second budget, ⅔ E)."""
    if axis not in AXES:
        raise ValueError(f"cost axis {axis!r}: choose one of {sorted(AXES)}")
    seeds = list(seeds)
    uniform = _table(points, "uniform", seeds, axis)
    if uniform is None:
        raise ValueError("uniform's frontier is incomplete: every budget needs every seed")
    u_budgets = sorted({p["epochs"] for p in points if p["method"] == "uniform"})
    cols_all = np.arange(len(seeds))
    u_mean = uniform.mean(axis=1)
    best = int(np.argmax(u_mean[:, 1]))
    out: dict[str, Any] = {
        "axis": axis, "target": float(u_mean[best, 1]), "reference_cost": float(u_mean[best, 0]),
        "reference_epochs": u_budgets[best], "seeds": seeds, "methods": {},
    }
    rng = np.random.Generator(np.random.PCG64(rng_seed))
    resamples = [rng.integers(0, len(seeds), len(seeds)) for _ in range(bootstrap)]
    for method in sorted({p["method"] for p in points}):
        table = _table(points, method, seeds, axis)
        budgets = sorted({p["epochs"] for p in points if p["method"] == method})
        entry: dict[str, Any] = {"budgets": budgets, "complete": table is not None}
        if table is None:
            out["methods"][method] = entry
            continue
        mean = table.mean(axis=1)
        entry["mean_cost"] = mean[:, 0].tolist()
        entry["mean_accuracy"] = mean[:, 1].tolist()
        entry["se_accuracy"] = (table[:, :, 1].std(axis=1, ddof=1) / math.sqrt(len(seeds))
                                ).tolist() if len(seeds) > 1 else None
        entry["best_accuracy"] = float(mean[:, 1].max())
        saving, _, _ = _saving(uniform, table, cols_all)
        entry["saving"] = saving
        boots = [_saving(uniform, table, cols)[0] for cols in resamples]
        vals = np.array([-np.inf if b is None else b for b in boots])
        entry["reached_fraction"] = float(np.isfinite(vals).mean())
        with np.errstate(invalid="ignore"):  # -inf (not reached) sorts first, as it should
            low, high = np.quantile(vals, [0.05, 0.95], method="lower") if len(vals) \
                else (np.nan, np.nan)
        entry["saving_ci"] = [None if not np.isfinite(low) else float(low),
                              None if not np.isfinite(high) else float(high)]
        entry["saving_at_budget"] = {
            str(budget): _saving_with_interval(uniform, table, cols_all, resamples, row)
            for row, budget in enumerate(u_budgets)}
        gains = {}
        for b, budget in enumerate(u_budgets):
            diffs = []
            for s in range(len(seeds)):
                acc = accuracy_at_cost(table[:, s, 0], table[:, s, 1], uniform[b, s, 0])
                if acc is not None:
                    diffs.append(acc - uniform[b, s, 1])
            gains[str(budget)] = {
                "uniform_cost": float(u_mean[b, 0]),
                "n": len(diffs),
                "mean": statistics.fmean(diffs) if len(diffs) == len(seeds) else None,
                "se": (statistics.stdev(diffs) / math.sqrt(len(diffs))
                       if len(diffs) == len(seeds) and len(diffs) > 1 else None),
            }
        entry["gain_equal_cost"] = gains
        out["methods"][method] = entry
    headline_budget = equal_cost_budget or (u_budgets[1] if len(u_budgets) > 1 else u_budgets[0])
    out["equal_cost_budget"] = headline_budget
    return out


def _saving_with_interval(uniform: np.ndarray, method: np.ndarray, cols, resamples,
                          row: int) -> dict[str, Any]:
    """The saving to reach uniform's mean accuracy at budget ``row`` (not its best): where
    uniform's frontier still rises, the crossing is well defined and noise moves it little.
    ``first_point``: the method's cheapest budget already reaches it, so the saving is a
    lower bound (the frontier is not extrapolated below its first point)."""
    saving, target, _ = _saving(uniform, method, cols, row)
    boots = [_saving(uniform, method, c, row)[0] for c in resamples]
    vals = np.array([-np.inf if b is None else b for b in boots])
    low, high = (np.quantile(vals, [0.05, 0.95], method="lower") if len(vals)
                 else (np.nan, np.nan))
    m = method[:, cols].mean(axis=1)
    return {"target": target, "saving": saving,
            "ci": [None if not np.isfinite(low) else float(low),
                   None if not np.isfinite(high) else float(high)],
            "first_point": bool(saving is not None and m[0, 1] >= target)}


def overhead_ratio(points: list[dict[str, Any]], method: str) -> float | None:
    """CPU seconds per instance pass of ``method``'s runs over uniform's (medians): what its
    bookkeeping costs beyond the compute it trains with (1.0: nothing)."""
    def per_pass(m):
        return [p["cost"] / p["compute"] for p in points if p["method"] == m and p["compute"]]

    mine, base = per_pass(method), per_pass("uniform")
    if not mine or not base:
        return None
    return float(np.median(mine) / np.median(base))


def headline(task: str, analysis: dict[str, Any],
             by_compute: dict[str, Any] | None = None) -> dict[str, Any]:
    """The last stdout line: savings per method (the reshuffle control's too, the reading a
    method exactly as good as uniform gets), the interval's low end, the equal-cost gain (CPU
    seconds), and autoassist's saving and gain on the compute axis when given."""
    methods = analysis["methods"]

    def get(method: str, key: str):
        return methods.get(method, {}).get(key)

    aa = methods.get("autoassist", {})
    gain = (aa.get("gain_equal_cost") or {}).get(str(analysis["equal_cost_budget"]), {})
    best_u = get("uniform", "best_accuracy")
    best_a = get("autoassist", "best_accuracy")
    out = {
        "task": task,
        "saving": get("autoassist", "saving"),
        "saving_ci_low": (aa.get("saving_ci") or [None])[0],
        "saving_infobatch": get("infobatch", "saving"),
        "saving_sb": get("selective_backprop", "saving"),
        "saving_published": get("published", "saving"),
        "saving_random": get("random_subset", "saving"),
        # what noise alone reads: uniform again in another data order (None if not run)
        "saving_control": get("uniform_reshuffled", "saving"),
        "gain_equal_time": gain.get("mean"),
        "gain_equal_time_se": gain.get("se"),
        "best_gap": None if best_u is None or best_a is None else best_a - best_u,
        "target": analysis["target"],
    }
    if by_compute is not None:
        aa_c = by_compute["methods"].get("autoassist", {})
        gain_c = (aa_c.get("gain_equal_cost") or {}).get(str(by_compute["equal_cost_budget"]),
                                                        {})
        out.update(saving_compute=aa_c.get("saving"),
                   saving_compute_ci_low=(aa_c.get("saving_ci") or [None])[0],
                   gain_equal_compute=gain_c.get("mean"), gain_equal_compute_se=gain_c.get("se"))
    return out


# ------------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------------
def _fmt(v, spec=".1%"):
    return "n/a" if v is None else format(v, spec)


def _saving_cell(m: dict[str, Any]) -> str:
    ci = m["saving_ci"]
    return ("not reached" if m["saving"] is None else
            f"{m['saving']:.1%} [{_fmt(ci[0])}, {_fmt(ci[1])}]")


def _budget_saving_cell(cell: dict[str, Any]) -> str:
    if cell["saving"] is None:
        return "not reached"
    ci = cell["ci"]
    return (f"{'≥ ' if cell['first_point'] else ''}{cell['saving']:.0%} "
            f"[{_fmt(ci[0], '.0%')}, {_fmt(ci[1], '.0%')}]")


def _gain_cell(m: dict[str, Any], budget: int) -> str:
    gain = m["gain_equal_cost"].get(str(budget), {})
    return "n/a" if gain.get("mean") is None else f"{gain['mean']:+.4f} ± {gain['se'] or 0:.4f}"


def budget_saving_table(analysis: dict[str, Any]) -> list[str]:
    """Markdown lines: each method's saving to reach uniform's mean accuracy at each of
    uniform's budgets, on ``analysis``'s axis (``analyse(...)["methods"][m]["saving_at_budget"]``).
    """
    budgets = list(analysis["methods"]["uniform"]["budgets"])
    lines = [f"Saving on {analysis['axis']} to reach uniform's mean accuracy at each of its "
             "budgets (a target where uniform's frontier still rises reads a well-defined "
             "crossing; '≥': the method's cheapest budget reaches it already), 90% interval:", "",
             "| method | " + " | ".join(f"uniform at {b} epochs" for b in budgets) + " |",
             "| --- |" + " --- |" * len(budgets)]
    for method, m in analysis["methods"].items():
        if method == "uniform" or not m.get("complete"):
            continue
        cells = [_budget_saving_cell(m["saving_at_budget"][str(b)]) for b in budgets]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def reanalyse(path: Path, axis: str = "compute") -> dict[str, Any]:
    """Read a frontier result file again with today's readings, training nothing: its stored
    points give the savings at each of uniform's budgets, for files that lack
    ``saving_at_budget``.

    Args:
        path: a ``frontier_*.json`` this harness wrote.
        axis: the cost axis (``compute``, or ``cost`` for CPU seconds).

    Returns:
        ``{"file", "commit", "axis", "seeds", "analysis", "table"}`` (``table``: markdown;
        ``commit``: the source file's).

    Raises:
        UsageError: the file is missing or not a frontier result.
    """
    from autoassist.errors import UsageError

    try:
        result = json.loads(Path(path).read_text())
        points = result["points"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"--reanalyse {path}: not a frontier result file ({err})") from None
    seeds = sorted({p["seed"] for p in points if p["method"] == "uniform"})
    analysis = analyse(points, seeds, axis=axis)
    return {"file": str(path), "commit": result.get("commit"), "axis": axis, "seeds": seeds,
            "analysis": analysis, "table": "\n".join(budget_saving_table(analysis))}


def write_reanalysis(read: dict[str, Any], directory: Path) -> Path:
    """Store a ``reanalyse`` reading as ``<source stem>_per_budget.json`` (+ ``.md``) in
    ``directory`` (``_per_budget_cost`` for the CPU-seconds axis), so that the figures it gives
    have a committed file behind them.

    The record names both commits: the source file's (the runs) and this reading's (the
    analysis code), each ``+dirty`` where the tree had uncommitted code.

    Args:
        read: what ``reanalyse`` returned.
        directory: the results folder.

    Returns:
        The JSON file's path.
    """
    from autoassist.bench.provenance import git_commit

    axis = read.get("axis", "compute")
    stem = Path(read["file"]).stem + "_per_budget" + ("" if axis == "compute" else f"_{axis}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": stem, "reading": f"--reanalyse {read['file']}",
              "source": Path(read["file"]).name, "source_commit": read["commit"],
              "commit": git_commit(), "axis": axis,
              "seeds": read["seeds"], "analysis": read["analysis"], "table": read["table"]}
    path = directory / f"{stem}.json"
    (directory / f"{stem}.md").write_text(read["table"] + "\n")
    path.write_text(json.dumps(record, indent=2, default=_jsonable) + "\n")
    return path


def markdown(task: Task, result: dict[str, Any]) -> str:
    a = result["analysis"]
    c = result.get("analysis_compute")
    per_epoch = None  # instance passes of one uniform epoch: the compute column's unit
    if c is not None:
        u = c["methods"]["uniform"]
        per_epoch = u["mean_cost"][0] / u["budgets"][0]
    lines = [
        f"### {task.name}: accuracy-cost frontiers ({result['loop']} loop"
        + (f", {result['label_noise']:.0%} flipped labels" if result["label_noise"] else "")
        + f", E = {result['epochs']}, LR {result['lr']:g} chosen on a validation split, "
        f"seeds {len(a['seeds'])})",
        "",
        f"Target: uniform's best mean test accuracy **{a['target']:.4f}** (at "
        f"{a['reference_epochs']} epochs, {a['reference_cost']:.1f} CPU s). Cost: CPU seconds "
        "of training, Boss + Assistant; compute: instance passes (forward 1, backward 2) in "
        "uniform epochs, the same for every repeat of a run.",
        "",
        "| method | epochs | mean CPU s | mean compute | mean test acc | saving, CPU s [90% CI] "
        "| saving, compute [90% CI] | gain at ⅔E, CPU s | gain at ⅔E, compute | CPU s per pass "
        "vs uniform |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, m in a["methods"].items():
        mc = None if c is None else c["methods"].get(method)
        if not m.get("complete"):
            lines.append(f"| {method} | {m['budgets']} | incomplete | | | | | | | |")
            continue
        compute = ("n/a" if mc is None or per_epoch is None
                   else ", ".join(f"{x / per_epoch:.1f}" for x in mc["mean_cost"]))
        ratio = (result.get("overhead") or {}).get(method)
        lines.append(
            f"| {method} | {','.join(map(str, m['budgets']))} | "
            f"{', '.join(f'{x:.0f}' for x in m['mean_cost'])} | {compute} | "
            f"{', '.join(f'{x:.4f}' for x in m['mean_accuracy'])} | {_saving_cell(m)} | "
            f"{'n/a' if mc is None else _saving_cell(mc)} | "
            f"{_gain_cell(m, a['equal_cost_budget'])} | "
            f"{'n/a' if mc is None else _gain_cell(mc, c['equal_cost_budget'])} | "
            f"{_fmt(ratio, '.2f')} |")
    suspect = [f"{p['method']} e{p['epochs']} s{p['seed']}" for p in result["points"]
               if p.get("suspect")]
    if suspect:
        lines += ["", f"WARNING: {len(suspect)} run(s) used more CPU than their threads allow "
                  f"(a spinning thread): {', '.join(suspect)}; their cost is inflated."]
    if c is not None:
        lines += [""] + budget_saving_table(c)
    lines += ["", "Saving: 1 - cost for the method's mean frontier to first reach the target / "
              "uniform's reference cost (linear between budgets; 'not reached' within the "
              "largest budget is never a number). Interval: 90% bootstrap over seeds."]
    return "\n".join(lines) + "\n"


def plot(task: Task, points: list[dict[str, Any]], result: dict[str, Any],
         path: Path) -> Path | None:
    from autoassist.plotting import subplots

    made = subplots(figsize=(7, 4.5))
    if made is None:
        return None
    fig, ax = made
    a = result["analysis"]
    for method, m in a["methods"].items():
        if not m.get("complete"):
            continue
        cost, acc = np.array(m["mean_cost"]), np.array(m["mean_accuracy"])
        (line,) = ax.plot(cost, acc, marker="o", label=method)
        if m.get("se_accuracy"):
            se = np.array(m["se_accuracy"])
            ax.fill_between(cost, acc - se, acc + se, color=line.get_color(), alpha=0.15)
        for p in points:
            if p["method"] == method:
                ax.plot(p["cost"], p["accuracy"], ".", color=line.get_color(), alpha=0.35)
    ax.axhline(a["target"], color="gray", lw=0.8, ls="--", label="target (uniform's best)")
    ax.set_xlabel("training cost (CPU seconds, Boss + Assistant)")
    ax.set_ylabel("final test accuracy")
    ax.set_title(f"{task.name}: accuracy vs cost, each run's schedule decayed for its budget",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


# ------------------------------------------------------------------------------------------------
# The whole frontier
# ------------------------------------------------------------------------------------------------
def run_frontier(task_name: str, *, out: Path, seeds: int = 5, quick: bool = False,
                 methods: Sequence[str] | None = None, loop: str = "sgd",
                 label_noise: float = 0.0, epochs: int | None = None,
                 lrs: Sequence[float] | None = None, sweep_seeds: int = 2, threads: int = 1,
                 fractions: Sequence[float] = FRACTIONS, progress: bool = True,
                 tag: str | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Sweep uniform's LR on the validation split, then train every (method, budget, seed) not
    stored yet, writing the outputs after each run; return the full record."""
    from autoassist.bench.provenance import git_commit, machine_info, thread_info
    from autoassist.bench.time_to_accuracy import (
        LOOPS,
        _warm_up,
        pick_learning_rate,
        run_one,
    )

    task = get_task(task_name)
    methods = tuple(methods or (QUICK_METHODS if quick else METHODS))
    unknown = [m for m in methods if m not in MULTIPLIERS]
    if unknown or "uniform" not in methods:
        raise ValueError(f"methods must include 'uniform' and come from "
                         f"{tuple(MULTIPLIERS)}; got {methods}")
    if "random_subset" in methods and (
            "autoassist" not in methods
            or methods.index("autoassist") > methods.index("random_subset")):
        raise ValueError("random_subset matches autoassist's kept counts: list 'autoassist' "
                         "before it")
    if loop not in LOOPS:
        raise ValueError(f"loop {loop!r}: choose from {LOOPS}")
    full = epochs or (QUICK_EPOCHS if quick else FRONTIER_EPOCHS).get(task.name, task.epochs)
    sweep = tuple(lrs or (ADAM_LRS if loop == "adam" else task.lrs))
    out = Path(out)
    stem = f"frontier_{task.name}" + ("" if loop == "sgd" else f"_{loop}") + (
        f"_noise{label_noise:g}" if label_noise else "") + ("_quick" if quick else "") + (
        f"_{tag}" if tag else "")
    store = RunStore(out / "frontier_runs", {"product": code_fingerprint(product=True),
                                             "training": code_fingerprint(product=False)})
    commit = git_commit()
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        train, test = task.load(None)
        fit, val = split_validation(flip_labels(train, label_noise))
        val_set = val.tensors()
        _warm_up(task, fit)
        log(f"{task.name}: {len(fit)} train / {len(val)} validation / {len(test[1])} test; "
            f"E = {full} epochs, {loop} loop, label noise {label_noise:g}, seeds {seeds}, "
            f"{threads} torch threads")

        def get_run(method, e, seed, lr, split, matched=None):
            key = run_key(task.name, loop, label_noise, method, e, seed, lr, split)
            record = store.get(key, method)
            if record is None:
                base, settings = VARIANTS.get(method, (method, None))
                if callable(settings):
                    settings = settings(e)
                record = run_one(task, base, fit, val_set if split == "val" else test,
                                 seed=seed, lr=lr, epochs=e, progress=progress, log=log,
                                 matched_run=matched, loop=loop, settings=settings)
                record.update(method=method, commit=commit)
                ratio = record["cpu_seconds"][-1] / max(record["train_seconds"][-1], 1e-9)
                if ratio > SPIN_RATIO * threads:
                    log(f"WARNING: {key} used {ratio:.2f} CPU seconds per wall second on "
                        f"{threads} torch thread(s): a spinning thread (an OpenMP pool larger "
                        "than torch's threads?) inflates its cost; set OMP_NUM_THREADS")
                    record["suspect_cpu_ratio"] = ratio
                store.put(key, method, record)
            return record

        # 1. the learning rate, for uniform at the full budget, on the validation split
        finals: dict[float, list[float]] = {}
        pending = list(sweep)
        while pending:
            for lr in pending:
                for seed in range(min(sweep_seeds, seeds)):
                    finals.setdefault(lr, []).append(
                        get_run("uniform", full, seed, lr, "val")["accuracy"][-1])
            lr, beyond = pick_learning_rate(finals)
            pending = [beyond] if beyond is not None and len(finals) < len(sweep) + 2 else []
        log(f"learning rate {lr:g} (validation accuracy "
            f"{ {k: round(statistics.fmean(v), 4) for k, v in sorted(finals.items())} })")

        # 2. the frontiers, written after every run
        plan = [(m, e) for m in methods for e in budget_epochs(full, MULTIPLIERS[m], fractions)]
        points: list[dict[str, Any]] = []
        result: dict[str, Any] = {}

        def write():
            nonlocal result
            done_seeds = [s for s in range(seeds)
                          if all(any(p["method"] == m and p["epochs"] == e and p["seed"] == s
                                     for p in points) for m, e in plan)]
            analysis = analyse(points, done_seeds) if len(done_seeds) >= 1 else None
            by_compute = (analyse(points, done_seeds, axis="compute")
                          if len(done_seeds) >= 1 else None)
            result = {
                "task": {"name": task.name, "description": task.description,
                         "train_instances": len(fit), "validation_instances": len(val),
                         "test_instances": len(test[1]), "batch_size": task.batch_size,
                         "weight_decay": task.weight_decay},
                "loop": loop, "label_noise": label_noise, "epochs": full, "lr": lr,
                "lr_sweep": {str(k): v for k, v in sorted(finals.items())},
                "budgets": {m: budget_epochs(full, MULTIPLIERS[m], fractions) for m in methods},
                "cost": "CPU seconds of training: Boss process (all threads) + Assistant process",
                "settings": _method_settings(),
                "points": points, "analysis": analysis, "analysis_compute": by_compute,
                "overhead": {m: overhead_ratio(points, m) for m in methods},
                "headline": (None if analysis is None
                             else headline(task.name, analysis, by_compute)),
                "seeds": seeds, "seeds_done": len(done_seeds), "quick": quick,
                "commit": commit, "run_commits": sorted({r.get("commit") or "?" for r in
                                                         runs}),
                "fingerprints": store.fingerprints, "machine": machine_info(),
                "threads": dict(thread_info(), torch_threads=threads),
                "wall_seconds": time.perf_counter() - started,
                "partial": len(done_seeds) < seeds,
            }
            write_outputs(task, result, out, stem)

        runs: list[dict[str, Any]] = []
        for seed in range(seeds):
            for method, e in plan:
                matched = next((r for r in runs if r["method"] == "autoassist"
                                and r["seed"] == seed and len(r["accuracy"]) == e), None)
                runs.append(get_run(method, e, seed, lr, "test", matched))
                points.append(point(runs[-1]))
            write()
    finally:
        torch.set_num_threads(previous_threads)
    return result


ADAM_LRS = (3e-4, 1e-3, 3e-3)


def _method_settings() -> dict[str, Any]:
    from autoassist.bench.time_to_accuracy import AUTOASSIST_SETTINGS, PUBLISHED_SETTINGS
    from autoassist.config import ShrinkConfig

    variants = {name: ("depends on the epoch count" if callable(v) else v)
                for name, (_, v) in VARIANTS.items() if name not in ("autoassist",
                                                                    "autoassist_reweight_anneal")}
    return {"autoassist": ShrinkConfig().to_dict(),
            "autoassist_reweight_anneal": AUTOASSIST_SETTINGS, **variants,
            "published": PUBLISHED_SETTINGS,
            "infobatch": {"ratio": 0.5, "delta": 0.875},
            "selective_backprop": {"beta": 3.0, "history": 1024, "warmup_epochs": 1},
            "random_subset": "autoassist's per-epoch kept counts at the same budget and seed"}


def write_outputs(task: Task, result: dict[str, Any], directory: Path, stem: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if result["analysis"] is not None:
        result["table"] = markdown(task, result)
        if result["partial"]:
            result["table"] += (f"\nPARTIAL: {result['seeds_done']} of {result['seeds']} seeds "
                                "so far; re-run the same command to continue.\n")
        (directory / f"{stem}.md").write_text(result["table"])
        png = plot(task, result["points"], result, directory / f"{stem}.png")
        result["png"] = None if png is None else png.name
    (directory / f"{stem}.json").write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")


# ------------------------------------------------------------------------------------------------
# Command line (``autoassist bench --frontier`` and ``python -m benchmarks.frontier``)
# ------------------------------------------------------------------------------------------------
def add_frontier_arguments(p) -> None:
    """The options only the frontier has (``autoassist bench --frontier`` adds them too)."""
    p.add_argument("--loop", default="sgd", choices=("sgd", "adam"),
                   help="frontier: sgd = one-cycle decayed for each run's budget; adam = "
                        "fixed LR, no schedule")
    p.add_argument("--label-noise", type=float, default=0.0,
                   help="frontier: flip this fraction of training labels to another class "
                        "(seeded; test labels untouched)")


def add_arguments(p) -> None:
    from autoassist.bench.tasks import TASKS

    p.add_argument("--task", default="keel_magic", choices=sorted(TASKS))
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 5; 3 quick)")
    p.add_argument("--quick", action="store_true",
                   help="E=15 epochs on magic, 3 seeds, uniform/autoassist/InfoBatch/SB")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated, from {','.join(MULTIPLIERS)} (default: "
                        f"{','.join(METHODS)}; quick: {','.join(QUICK_METHODS)})")
    add_frontier_arguments(p)
    p.add_argument("--epochs", type=int, default=None, help="the full budget E")
    p.add_argument("--lrs", default=None, help="uniform's LR sweep, e.g. 0.05,0.1,0.2")
    p.add_argument("--sweep-seeds", type=int, default=None, help="default 2")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--tag", default=None,
                   help="suffix of the output files (another set of methods on the same runs)")
    p.add_argument("--reanalyse", default=None, metavar="FILE",
                   help="train nothing: print the savings at each of uniform's budgets (compute) "
                        "read from a frontier result file's stored points, and write them to "
                        "<file stem>_per_budget.json/.md in the results folder")


def check_arguments(args) -> None:
    """Bad options as one-line ``UsageError``s, before anything is loaded or trained."""
    from autoassist.errors import UsageError

    def fail(message):
        raise UsageError(message)

    if args.methods:
        methods = args.methods.split(",")
        if not set(methods) <= set(MULTIPLIERS) or "uniform" not in methods:
            fail(f"--methods {args.methods!r}: must include 'uniform' and come from "
                 f"{','.join(MULTIPLIERS)}")
        if "random_subset" in methods and ("autoassist" not in methods or methods.index(
                "autoassist") > methods.index("random_subset")):
            fail("--methods: random_subset matches autoassist's kept counts; list "
                 "'autoassist' before it")
    tag = getattr(args, "tag", None)
    if tag is not None and not tag.replace("_", "").replace("-", "").isalnum():
        fail(f"--tag {tag!r}: letters, digits, '-' and '_' only (it names files)")
    if not 0 <= args.label_noise < 1:
        fail(f"--label-noise {args.label_noise}: must lie in [0, 1)")
    for name in ("seeds", "epochs", "sweep_seeds", "threads"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            fail(f"--{name.replace('_', '-')} {value}: must be >= 1")
    if args.lrs:
        try:
            lrs = [float(v) for v in args.lrs.split(",")]
        except ValueError:
            fail(f"--lrs {args.lrs!r}: comma-separated numbers, e.g. 0.05,0.1,0.2")
        if not all(lr > 0 for lr in lrs):
            fail(f"--lrs {args.lrs!r}: learning rates must be > 0")


def run_cli(args, directory: Path) -> dict[str, Any]:
    check_arguments(args)
    if getattr(args, "reanalyse", None):
        read = reanalyse(Path(args.reanalyse))
        print(read["table"])
        out = write_reanalysis(read, directory)
        print(f"written: {out} (+ .md)")
        savings = {m: {b: c["saving"] for b, c in e["saving_at_budget"].items()}
                   for m, e in read["analysis"]["methods"].items()
                   if m != "uniform" and e.get("complete")}
        return {"headline": {"file": read["file"], "commit": read["commit"],
                             "seeds": len(read["seeds"]), "saving_at_budget": savings,
                             "written": str(out)}}
    seeds = args.seeds or (3 if args.quick else 5)
    result = run_frontier(
        args.task, out=directory, seeds=seeds, quick=args.quick,
        methods=tuple(args.methods.split(",")) if args.methods else None, loop=args.loop,
        label_noise=args.label_noise, epochs=args.epochs,
        lrs=tuple(float(v) for v in args.lrs.split(",")) if args.lrs else None,
        sweep_seeds=args.sweep_seeds or 2, threads=args.threads or 1,
        progress=not args.no_progress, tag=getattr(args, "tag", None))
    if result.get("table"):
        print()
        print(result["table"])
    return result
