"""``autoassist tune``: find the shrink settings for a user's own training job.

Successive halving over points of a search space. scikit-learn's ``ParameterSampler`` (or
``ParameterGrid`` with ``grid=True``) draws the candidates; every candidate trains for a small
epoch budget, the best ``1/factor`` go on to ``factor`` times the budget, until one is left at
``max_epochs``. This is the schedule of scikit-learn's ``HalvingRandomSearchCV``, but its scores
are per candidate, while ours compare each probe with the *uniform baseline trained to the same
budget* (the target a shrinking run has to reach, and the clock it has to beat), so the rung loop
is written here over sklearn's samplers.

Objectives (``higher metric is better`` unless ``mode="min"``):

- ``time_to_target`` (default): cost to reach the target metric (default: the uniform baseline's
  final metric at that budget, less ``tolerance``); the score is the saving
  ``1 - cost / uniform's cost``. A probe that never reaches the target ranks below every one
  that does, by how far it fell short.
- ``metric_at_cost``: the metric a probe has reached by the cost the uniform run spent, or by
  ``cost_budget`` (the cost allowed at ``max_epochs``; a rung of E epochs gets
  ``cost_budget * E / max_epochs``): "the best accuracy within my time budget".
- ``frontier``: the setting *and the epoch count* that reach the metric of the user's usual run
  (uniform for ``max_epochs``, less ``tolerance``) at the least cost, against uniform's own
  frontier, since training fewer uniform epochs is the user's free alternative. Every run is
  decayed for its own epoch count (the job gets ``epochs``), and only its final metric and
  total cost count: a frontier point. At each rung of ``E`` epochs uniform trains for
  ``E * UNIFORM_FRACTIONS`` (⅓, ⅔, 1) epochs and the target is its final metric at ``E``;
  every candidate trains for ``E`` at the first rung (which measures its cost per epoch
  relative to uniform's, the *cost ratio*), and at later rungs (or a single one) for
  ``E / ratio * CANDIDATE_FRACTIONS`` (⅔, 1, 4/3) epochs, so its costs span the usual run's.
  The score is the saving ``1 - cost(the candidate's frontier reaches the target) /
  cost(uniform's frontier reaches it)``, both interpolated between points
  (``frontier_math.score_frontier``); a candidate that never reaches it ranks below every one
  that does. The result names the epoch count to train: the smallest measured one that
  reaches the target; if no setting beats uniform's frontier, uniform at its smallest such
  count.

``cost`` is ``"seconds"`` (training wall-clock, what users care about) or ``"instances"``
(instances trained on: immune to a noisy machine and to probes sharing cores, reproducible).

Every finished probe is appended to ``probes.jsonl`` in ``out``; a tune started again with the
same settings reuses them (an interrupted tune resumes where it stopped).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoassist.config import ShrinkConfig
from autoassist.errors import UsageError
from autoassist.tuning.frontier_math import (
    CANDIDATE_FRACTIONS,
    RATIO_BOUNDS,
    UNIFORM_FRACTIONS,
    budget_epochs,
    mean_frontier,
    reach,
    score_frontier,
)
from autoassist.tuning.probe import load_job
from autoassist.tuning.space import load_space, plain, to_config
from autoassist.tuning.tuned import write_tuned

OBJECTIVES = ("time_to_target", "metric_at_cost", "frontier")
COSTS = ("seconds", "instances")
LOG = "probes.jsonl"
TUNED = "tuned.toml"
SETTINGS = "tune_settings.json"


@dataclass
class TuneResult:
    """The chosen setting, its file, and everything measured on the way. ``beats_uniform``
    False means the tune recommends the plain loader (``config`` is then the best setting found,
    for reference)."""

    config: ShrinkConfig
    params: dict[str, Any]
    config_path: Path
    beats_uniform: bool
    rungs: list[dict[str, Any]]
    headline: dict[str, Any]
    out: Path
    #: the epoch count to train (``frontier``: the chosen point's, uniform's when
    #: ``beats_uniform`` is False; the other objectives: ``max_epochs``)
    epochs: int | None = None


def budgets(min_epochs: int, max_epochs: int, factor: int) -> list[int]:
    """Epoch budget per rung: ``max_epochs / factor**k`` rounded up, down to ``min_epochs``."""
    if not 1 <= min_epochs <= max_epochs:
        raise UsageError(f"min_epochs={min_epochs}, max_epochs={max_epochs}: need "
                         "1 <= min_epochs <= max_epochs")
    if factor < 2:
        raise UsageError(f"factor={factor}: successive halving keeps 1/factor, so factor >= 2")
    out = [max_epochs]
    while True:
        nxt = max(min_epochs, math.ceil(out[0] / factor))
        if nxt >= out[0]:
            return out
        out.insert(0, nxt)


def candidates(space: dict[str, Any], n: int, seed: int, grid: bool) -> list[dict[str, Any]]:
    from sklearn.model_selection import ParameterGrid, ParameterSampler

    if grid:
        if any(not isinstance(v, list) for v in space.values()):
            raise UsageError("grid=True needs lists of values only (no distributions): give "
                             "a space whose settings are lists")
        points = list(ParameterGrid(space))
    else:
        if n < 1:
            raise UsageError(f"candidates={n}: sample at least one setting")
        with warnings.catch_warnings():  # "grid smaller than n_iter": then it is the grid, fine
            warnings.simplefilter("ignore", UserWarning)
            points = list(ParameterSampler(space, n_iter=n, random_state=seed))
    return [{k: plain(v) for k, v in sorted(p.items())} for p in points]


def probe_key(config: dict[str, Any] | None, epochs: int, seed: int) -> str:
    blob = json.dumps({"config": config, "epochs": epochs, "seed": seed}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


# -- scoring -------------------------------------------------------------------------------------
def first_reach(costs: list[float], metric: list[float], target: float) -> float | None:
    for c, m in zip(costs, metric, strict=True):
        if m >= target:
            return c
    return None


def score_probe(curve: dict[str, list[float]], baseline: dict[str, list[float]], *,
                objective: str, cost: str, mode: str, target: float | None,
                budget: float | None = None, tolerance: float = 0.0) -> dict[str, Any]:
    """One probe against the uniform run of the same budget and seed (higher score is better).

    ``budget`` (``metric_at_cost``): the cost at which metrics are compared; default: what the
    uniform run spent. ``tolerance`` (``time_to_target``): the target is uniform's final metric
    minus this much (in the metric's units; worse-by for ``mode="min"``).
    """
    sign = 1.0 if mode == "max" else -1.0
    metric = [sign * m for m in curve["metric"]]
    base_metric = [sign * m for m in baseline["metric"]]
    costs, base_costs = curve[cost], baseline[cost]
    if objective == "time_to_target":
        goal = (base_metric[-1] if target is None else sign * target) - tolerance
        base_cost = first_reach(base_costs, base_metric, goal) or base_costs[-1]
        reached = first_reach(costs, metric, goal)
        if reached is not None:
            saving = 1.0 - reached / base_cost if base_cost > 0 else 0.0
            return {"score": saving, "reached": True, "cost_to_target": reached,
                    "saving": saving, "final_metric": curve["metric"][-1]}
        shortfall = (goal - metric[-1]) / max(abs(goal), 1e-12)
        return {"score": -10.0 - shortfall, "reached": False, "cost_to_target": None,
                "saving": None, "final_metric": curve["metric"][-1]}
    budget = (base_costs[-1] if budget is None else budget) * (1 + 1e-9)
    within = [m for c, m in zip(costs, metric, strict=True) if c <= budget]
    value = within[-1] if within else None
    base_within = [m for c, m in zip(base_costs, baseline["metric"], strict=True) if c <= budget]
    return {"score": -1e9 if value is None else value, "reached": value is not None,
            "metric_at_cost": None if value is None else sign * value,
            # uniform at the same cost (None: it had no evaluation that cheap)
            "uniform_metric": base_within[-1] if base_within else None,
            "final_metric": curve["metric"][-1]}


# -- probes --------------------------------------------------------------------------------------
class _Runner:
    """Runs probe processes; on an interrupt, stops the ones still running (nothing is logged
    for them, so a resumed tune runs them again)."""

    def __init__(self, job: str, threads: int | None, timeout_s: float | None):
        self.job, self.threads, self.timeout_s = job, threads, timeout_s
        self.live: set[subprocess.Popen] = set()
        self.lock = threading.Lock()

    def stop_all(self) -> None:
        with self.lock:
            for proc in self.live:
                proc.kill()

    def __call__(self, config: dict[str, Any] | None, epochs: int, seed: int) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="autoassist-probe-") as tmp:
            out = Path(tmp) / "curve.json"
            cmd = [sys.executable, "-m", "autoassist.tuning.probe", "--job", self.job,
                   "--config", json.dumps(config), "--epochs", str(epochs), "--seed", str(seed),
                   "--out", str(out)]
            if self.threads:
                cmd += ["--threads", str(self.threads)]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                [str(Path.cwd()), *filter(None, [os.environ.get("PYTHONPATH")])])}
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=env)
            with self.lock:
                self.live.add(proc)
            try:
                stdout, stderr = proc.communicate(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                return {"status": "failed", "error": f"probe exceeded {self.timeout_s} s"}
            finally:
                with self.lock:
                    self.live.discard(proc)
            record: dict[str, Any] = {"wall_seconds": time.perf_counter() - start}
            if proc.returncode != 0 or not out.is_file():
                tail = (stderr or stdout).strip().splitlines()[-15:]
                return {**record, "status": "failed", "error": "\n".join(tail)}
            return {**record, "status": "ok", "curve": json.loads(out.read_text())}


class _Log:
    """``probes.jsonl``: one finished probe per line, appended as soon as it finishes."""

    def __init__(self, path: Path, fresh: bool):
        self.path = path
        self.done: dict[str, dict[str, Any]] = {}
        if fresh and path.exists():
            path.unlink()
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    self.done[rec["key"]] = rec
        self.reused = 0

    def add(self, record: dict[str, Any]) -> None:
        self.done[record["key"]] = record
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class _Probes:
    """Submits probes (one per seed) to the pool, skipping those ``probes.jsonl`` holds as
    finished, and logs each as it finishes."""

    def __init__(self, runner: _Runner, pool: ThreadPoolExecutor, log: _Log, bar, seeds):
        self.runner, self.pool, self.log, self.bar, self.seeds = runner, pool, log, bar, seeds

    def submit(self, config: dict[str, Any] | None, epochs: int, *, grow: bool = False):
        """Start the probes of ``config`` at ``epochs`` (``grow``: add them to the bar's
        total, for searches whose probe count is not known up front)."""
        todo = [(s, probe_key(config, epochs, s)) for s in self.seeds]
        done = self.log.done
        fresh = [(s, k, self.pool.submit(self.runner, config, epochs, s)) for s, k in todo
                 if k not in done or done[k]["status"] != "ok"]
        if grow:
            self.bar.total = (self.bar.total or 0) + len(todo)
            self.bar.refresh()
        return todo, config, epochs, fresh

    def collect(self, handle, who: str) -> list[dict[str, Any]]:
        """Wait for the probes ``submit`` started; their records, one per seed."""
        todo, config, epochs, fresh = handle
        for s, k, fut in fresh:
            rec = fut.result()
            self.log.add({"key": k, "who": who, "epochs": epochs, "seed": s, "config": config,
                          **rec})
            self.bar.update(1)
        reused = len(todo) - len(fresh)
        self.log.reused += reused
        self.bar.update(reused)
        return [self.log.done[k] for _s, k in todo]


def _check_settings(out: Path, settings: dict[str, Any], fresh: bool) -> None:
    path = out / SETTINGS
    if path.exists() and not fresh:
        before = json.loads(path.read_text())
        differ = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if differ:
            raise UsageError(f"{out} holds a tune with different settings ({', '.join(differ)}); "
                             "resume it with the same settings, choose another out folder, or "
                             "start over with fresh=True (--fresh)")
    path.write_text(json.dumps(settings, indent=2, default=str) + "\n")


# -- the search ----------------------------------------------------------------------------------
def tune(job: str, space=None, *, objective: str = "time_to_target",
         target: float | None = None, cost: str = "seconds", mode: str = "max",
         candidates_n: int = 8, grid: bool = False, min_epochs: int = 2, max_epochs: int = 6,
         factor: int = 3, seeds: int = 1, seed: int = 0, n_jobs: int = 1,
         threads: int | None = None, base: ShrinkConfig | dict | str | None = None,
         out: str | os.PathLike = "autoassist-tune", fresh: bool = False,
         progress: bool = True, timeout_s: float | None = None,
         cost_budget: float | None = None, tolerance: float = 0.0) -> TuneResult:
    """Find the shrink settings for your own training job, by successive halving.

    Each candidate setting trains ``job`` for a few epochs, in a process of its own, and is
    scored against the uniform run of the same budget and seed: what a shrinking run has to
    beat is the plain loader on the same job. The best ``1/factor`` go on to ``factor`` times
    the epochs, up to ``max_epochs``. The objectives are described in this module's docstring,
    the job's contract in ``autoassist.tuning.probe``.

    Args:
        job: ``module:function`` or ``path/to/file.py:function``, called as
            ``job(config=ShrinkConfig | None, epochs=E, seed=S)`` and returning its
            evaluations (None: the uniform baseline, the plain loader).
        space: the settings to vary: a dict of lists or scipy distributions, a .toml/.json
            file, or None for the built-in space over every tunable setting.
        objective: ``"time_to_target"`` (the cost of reaching the target),
            ``"metric_at_cost"`` (the metric reached within uniform's cost, or
            ``cost_budget``) or ``"frontier"`` (the setting and epoch count that reach the
            metric of uniform at ``max_epochs`` cheapest, against uniform's own frontier).
        target: the metric to reach; default: the uniform run's final metric (not with
            ``"frontier"``, whose target is uniform's at ``max_epochs``).
        cost: ``"seconds"`` of training, or ``"instances"`` trained on (reproducible, fair
            when probes share the CPU).
        mode: ``"max"`` for accuracy or BLEU, ``"min"`` for a loss or an error rate.
        candidates_n: settings sampled from ``space``; ``grid``: every point of a list-only
            space instead.
        min_epochs, max_epochs, factor: the rungs' epoch budgets (see ``budgets``).
        seeds, seed: probes per candidate and budget, and the first seed.
        n_jobs, threads, timeout_s: probes run at once, torch threads of each, seconds each.
        base: the ``ShrinkConfig`` (or dict, or file) the candidates start from.
        out, fresh: the output folder; a tune started again with the same settings resumes
            from its ``probes.jsonl`` unless ``fresh``.
        progress: show a progress bar.
        cost_budget: ``metric_at_cost``: compare at this cost (at ``max_epochs``) instead of
            uniform's.
        tolerance: ``time_to_target`` and ``frontier``: the target is uniform's final metric
            less this.

    Returns:
        A ``TuneResult``: the chosen ``config`` and its file ``tuned.toml`` (for
        ``autoassist.wrap(loader, config=...)`` or fairseq's ``--aa-config``), whether it
        ``beats_uniform``, the ``epochs`` to train, and every rung's probes and scores.
        ``tune.json``, ``tune.md`` and ``tune.png`` are written to ``out`` too;
        ``tuned.toml``'s ``[tune]`` table holds ``wrap`` and ``epochs`` (read it with
        ``autoassist.tuning.load_tuned``).

    Raises:
        UsageError: a bad argument, job name, space, base config or budget, or an ``out``
            holding a tune with other settings, found before any probe runs (a
            ``ValueError``; the ``autoassist`` command prints it as one line).
        UsageFileNotFoundError: the job's, the space's or the base's file does not exist (a
            ``FileNotFoundError``).
        RuntimeError: the job failed on its uniform baseline, or every candidate failed.
    """
    # the user's arguments, job, space and base are checked before anything runs or is written
    if objective not in OBJECTIVES:
        raise UsageError(f"objective={objective!r}: one of {OBJECTIVES}")
    if cost not in COSTS:
        raise UsageError(f"cost={cost!r}: one of {COSTS}")
    if mode not in ("max", "min"):
        raise UsageError(f"mode={mode!r}: 'max' (accuracy, BLEU) or 'min' (loss, error)")
    if cost_budget is not None and (objective != "metric_at_cost" or cost_budget <= 0):
        raise UsageError("cost_budget is a positive cost for objective='metric_at_cost'")
    if tolerance < 0:
        raise UsageError(f"tolerance={tolerance}: must be >= 0")
    if objective == "frontier" and target is not None:
        raise UsageError("target is not used by objective='frontier': its target is uniform's "
                         "final metric at max_epochs (your usual run); aim lower with tolerance")
    if seeds < 1 or n_jobs < 1:
        raise UsageError("seeds and n_jobs must be >= 1")
    if timeout_s is not None and timeout_s <= 0:
        raise UsageError(f"timeout_s={timeout_s}: seconds, > 0")
    load_job(job)
    space = load_space(space)
    base = ShrinkConfig.coerce(base)
    if cost == "seconds" and n_jobs > 1:
        warnings.warn("cost='seconds' with n_jobs > 1: probes share the CPU, so their "
                      "wall-clock times are inflated unevenly; prefer cost='instances'",
                      RuntimeWarning, stacklevel=2)
    points = candidates(space, candidates_n, seed, grid)
    plan = budgets(min_epochs, max_epochs, factor)
    seed_list = [seed + k for k in range(seeds)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "job": job, "objective": objective, "target": target, "cost": cost, "mode": mode,
        "cost_budget": cost_budget, "tolerance": tolerance,
        "budgets": plan, "factor": factor, "seeds": seed_list, "base": base.to_dict(),
        "candidates": points}
    if objective == "frontier":  # the frontiers' shape decides which probes run
        settings.update(uniform_fractions=list(UNIFORM_FRACTIONS),
                        candidate_fractions=list(CANDIDATE_FRACTIONS),
                        ratio_bounds=list(RATIO_BOUNDS))
    _check_settings(out, settings, fresh)
    log = _Log(out / LOG, fresh)

    sizes, n = [], len(points)
    for _ in plan:
        sizes.append(n)
        n = max(1, math.ceil(n / factor))
    from tqdm.auto import tqdm

    # frontier: the probe count depends on what the first rung measures; the bar grows
    total = 0 if objective == "frontier" else sum((s + 1) * len(seed_list) for s in sizes)
    bar = tqdm(total=total, desc="autoassist tune", disable=not progress, dynamic_ncols=True)
    runner = _Runner(job, threads, timeout_s)
    pool = ThreadPoolExecutor(max_workers=n_jobs)
    probes = _Probes(runner, pool, log, bar, seed_list)
    try:
        if objective == "frontier":
            rungs = _frontier_rungs(probes, points, base, plan, sizes, cost=cost, mode=mode,
                                    tolerance=tolerance)
        else:
            rungs = _halving_rungs(probes, points, base, plan, sizes, objective=objective,
                                   cost=cost, mode=mode, target=target, tolerance=tolerance,
                                   cost_budget=cost_budget)
    except BaseException:  # Ctrl-C or an error: stop the probes in flight, run no more
        runner.stop_all()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    if objective == "frontier":
        return _finish_frontier(out, rungs, points, base, plan, cost, tolerance, log)
    return _finish(out, rungs, points, base, plan, objective, cost, mode, log)


def _halving_rungs(probes: _Probes, points, base: ShrinkConfig, plan: list[int],
                   sizes: list[int], *, objective: str, cost: str, mode: str,
                   target: float | None, tolerance: float, cost_budget: float | None
                   ) -> list[dict[str, Any]]:
    """``time_to_target`` and ``metric_at_cost``: one probe per candidate and seed at each
    rung's budget, scored against the uniform run of that budget."""
    alive = list(range(len(points)))
    rungs: list[dict[str, Any]] = []
    for r, epochs in enumerate(plan):
        probes.bar.set_description(f"autoassist tune: rung {r + 1}/{len(plan)}, "
                                   f"{epochs} epochs")
        configs = {i: to_config(points[i], base, epochs).to_dict() for i in alive}
        base_recs = _uniform(probes, probes.submit(None, epochs), cost)  # a broken job: fast
        submitted = {i: probes.submit(configs[i], epochs) for i in alive}
        scored = []
        for i in alive:
            recs = probes.collect(submitted[i], who=f"candidate {i}")
            per_seed = []
            for rec, brec in zip(recs, base_recs, strict=True):
                if rec["status"] != "ok":
                    per_seed.append({"score": -1e12, "reached": False, "error": rec["error"]})
                    continue
                _check_candidate_cost(rec, cost)
                per_seed.append(score_probe(
                    rec["curve"], brec["curve"], objective=objective, cost=cost,
                    mode=mode, target=target, tolerance=tolerance,
                    budget=None if cost_budget is None
                    else cost_budget * epochs / plan[-1]))  # the rung's share
            scored.append({"index": i, "params": points[i],
                           "score": sum(p["score"] for p in per_seed) / len(per_seed),
                           "seeds": per_seed,
                           "curves": [rec.get("curve") for rec in recs]})
        scored.sort(key=lambda c: -c["score"])
        keep = 1 if r == len(plan) - 1 else sizes[r + 1]
        alive = [c["index"] for c in scored[:keep]]
        rungs.append({"epochs": epochs, "uniform": [b["curve"] for b in base_recs],
                      "candidates": scored, "kept": alive})
    return rungs


def _frontier_rungs(probes: _Probes, points, base: ShrinkConfig, plan: list[int],
                    sizes: list[int], *, cost: str, mode: str, tolerance: float
                    ) -> list[dict[str, Any]]:
    """``frontier``: each rung of ``E`` epochs is a frontier question at that scale (see the
    module docstring); the best ``1/factor`` of the candidates go on."""
    sign = 1.0 if mode == "max" else -1.0
    uniform: dict[int, list[dict[str, Any]]] = {}  # epochs -> curves (one per seed)
    runs: dict[int, dict[int, list[dict[str, Any]]]] = {i: {} for i in range(len(points))}
    ratios: dict[int, float] = {}
    failed: dict[int, str] = {}
    alive = list(range(len(points)))
    rungs: list[dict[str, Any]] = []

    def train(todo: dict[int, list[int]]) -> None:
        """Run the candidates' missing budgets (all at once, the pool decides how many run)."""
        handles = [(i, e, probes.submit(_frontier_config(points[i], base, e), e, grow=True))
                   for i, eps in todo.items() for e in eps if e not in runs[i]]
        for i, e, handle in handles:
            recs = probes.collect(handle, who=f"candidate {i}")
            bad = [rec for rec in recs if rec["status"] != "ok"]
            if bad:
                failed.setdefault(i, f"{e} epochs, seed {bad[0]['seed']}: {bad[0]['error']}")
                continue
            for rec in recs:
                _check_candidate_cost(rec, cost)
            runs[i][e] = [rec["curve"] for rec in recs]

    for r, full in enumerate(plan):
        last = r == len(plan) - 1
        probes.bar.set_description(f"autoassist tune: rung {r + 1}/{len(plan)}, usual run "
                                   f"{full} epochs")
        # uniform's frontier at this scale, the usual run first (a broken job fails fast)
        handles = [(e, probes.submit(None, e, grow=True))
                   for e in sorted(budget_epochs(full, 1.0, UNIFORM_FRACTIONS), reverse=True)
                   if e not in uniform]
        for e, handle in handles:
            uniform[e] = [rec["curve"] for rec in _uniform(probes, handle, cost)]
        u_front = mean_frontier({e: c for e, c in uniform.items() if e <= full}, cost, sign)
        target = next(p["metric"] for p in u_front if p["epochs"] == full) - tolerance
        # every candidate first trains the first rung's budget: its cost per epoch vs uniform's
        train({i: [plan[0]] for i in alive if i not in failed})
        for i in alive:
            if i not in ratios and i in runs and plan[0] in runs[i]:
                ratios[i] = _cost_ratio(runs[i][plan[0]], uniform[plan[0]], cost)
        if r > 0 or last:  # then budgets spanning the usual run's cost (cheap pruning first)
            train({i: budget_epochs(full, 1.0 / ratios[i], CANDIDATE_FRACTIONS)
                   for i in alive if i not in failed})
        scored = []
        for i in alive:
            entry: dict[str, Any] = {"index": i, "params": points[i],
                                     "cost_ratio": ratios.get(i)}
            if i in failed:
                entry.update(score=-1e12, reached=False, saving=None, failed=True,
                             error=failed[i], points=[])
            else:
                front = mean_frontier(runs[i], cost, sign)
                score = score_frontier(front, u_front, target)
                score.pop("target")  # signed for mode="min"; the rung holds it in real units
                entry.update(score, failed=False, points=_real(front, sign))
            scored.append(entry)
        scored.sort(key=lambda c: (not c["failed"], c["reached"], c["score"]), reverse=True)
        keep = 1 if last else sizes[r + 1]
        alive = [c["index"] for c in scored[:keep]]
        rungs.append({"epochs": full, "target": sign * target, "tolerance": tolerance,
                      "uniform_points": _real(u_front, sign),
                      "uniform_epochs": reach(u_front, target)["epochs"],
                      "uniform_cost_to_target": reach(u_front, target)["cost"],
                      "candidates": scored, "kept": alive})
    return rungs


def _frontier_config(point: dict[str, Any], base: ShrinkConfig, epochs: int) -> dict[str, Any]:
    """The probe's config: the point for ``epochs``, with ``epochs`` set (the run's budget, as
    ``tuned.toml`` will hold it)."""
    return to_config(point, base, epochs).replace(epochs=epochs).to_dict()


def _cost_ratio(curves, uniform_curves, cost: str) -> float:
    """A candidate's cost over uniform's at the same epoch count (seed means), clipped to
    ``RATIO_BOUNDS``."""
    mine = sum(c[cost][-1] for c in curves) / len(curves)
    theirs = sum(c[cost][-1] for c in uniform_curves) / len(uniform_curves)
    ratio = mine / theirs if theirs > 0 else 1.0
    return min(max(ratio, RATIO_BOUNDS[0]), RATIO_BOUNDS[1])


def _real(front: list[dict[str, Any]], sign: float) -> list[dict[str, Any]]:
    """Frontier points with the metric in its own units again (``mode="min"``: un-negated)."""
    return [{**p, "metric": sign * p["metric"]} for p in front]


def _uniform(probes: _Probes, handle, cost: str) -> list[dict[str, Any]]:
    """The uniform baseline's records; a job that fails on its baseline stops the tune."""
    recs = probes.collect(handle, who="uniform")
    bad = [rec for rec in recs if rec["status"] != "ok"]
    if bad:
        raise RuntimeError(f"the job failed on its uniform baseline ({bad[0]['epochs']} "
                           f"epochs, seed {bad[0]['seed']}):\n{bad[0]['error']}")
    _check_cost(recs, cost)
    return recs


def _check_cost(base_recs, cost: str) -> None:
    if cost == "instances" and not base_recs[0]["curve"]["instances"]:
        raise ValueError("cost='instances' but the job reported no instances: return them with "
                         "each evaluation (instances trained on so far)")


def _check_candidate_cost(rec: dict[str, Any], cost: str) -> None:
    if cost == "instances" and not rec["curve"]["instances"]:
        raise ValueError("cost='instances' but the job reported no instances: return them with "
                         "each evaluation")


def _finish(out: Path, rungs, points, base: ShrinkConfig, plan, objective, cost, mode,
            log: _Log) -> TuneResult:
    from autoassist.tuning.report import plot, table

    last = rungs[-1]
    best = last["candidates"][0]
    if best["score"] <= -1e11:
        raise RuntimeError("every candidate failed at the last rung; first error:\n"
                           f"{best['seeds'][0].get('error')}")
    config = to_config(points[best["index"]], base, plan[-1])
    if objective == "time_to_target":
        beats = all(s.get("reached") and (s.get("saving") or 0.0) > 0 for s in best["seeds"])
    else:  # better than uniform's final metric, within the (uniform's or given) cost
        sign = 1.0 if mode == "max" else -1.0
        beats = all(s.get("reached") and (s["uniform_metric"] is None or
                                          sign * s["metric_at_cost"] > sign * s["uniform_metric"])
                    for s in best["seeds"])
    headline = {
        "best": best["params"], "score": best["score"], "objective": objective, "cost": cost,
        "beats_uniform": beats, "epochs": plan[-1], "budgets": plan,
        "candidates": len(points), "probes": len(log.done), "probes_reused": log.reused,
    }
    if objective == "time_to_target":
        savings = [s.get("saving") for s in best["seeds"]]
        headline["saving"] = None if None in savings else sum(savings) / len(savings)
    config_path = write_tuned(out / TUNED, config, wrap=beats, epochs=plan[-1],
                              objective=objective, cost=cost, saving=headline.get("saving"))
    headline["config"] = str(config_path)
    (out / "tune.json").write_text(json.dumps(
        {"headline": headline, "rungs": rungs, "config": config.to_dict()}, indent=2,
        default=float) + "\n")
    (out / "tune.md").write_text(table(rungs, objective) + "\n")
    png = plot(rungs, out / "tune.png", cost=cost, objective=objective)
    if png is not None:
        headline["plot"] = str(png)
    return TuneResult(config=config, params=best["params"], config_path=config_path,
                      beats_uniform=beats, rungs=rungs, headline=headline, out=out,
                      epochs=plan[-1])


def _finish_frontier(out: Path, rungs, points, base: ShrinkConfig, plan, cost: str,
                     tolerance: float, log: _Log) -> TuneResult:
    """The last rung's best candidate, the epoch count to train, and the files."""
    from autoassist.tuning.report import frontier_plot, frontier_table

    last = rungs[-1]
    best = last["candidates"][0]
    if best["failed"]:
        raise RuntimeError(f"every candidate failed at the last rung; first error:\n"
                           f"{best['error']}")
    beats = bool(best["beats_uniform"])
    # the setting's own epochs: where it first reaches the target (else its largest budget)
    own = best["epochs"] if best["reached"] else max(p["epochs"] for p in best["points"])
    config = to_config(points[best["index"]], base, own).replace(epochs=own)
    epochs = own if beats else last["uniform_epochs"]
    headline = {
        "best": best["params"], "objective": "frontier", "cost": cost,
        "beats_uniform": beats, "train": "autoassist" if beats else "uniform",
        "epochs": epochs, "epochs_interpolated": bool(beats and best["interpolated"]),
        "target": last["target"], "tolerance": tolerance, "max_epochs": plan[-1],
        "saving": best["saving"], "score": best["score"], "reached": best["reached"],
        "cost_to_target": best["cost_to_target"], "cost_at_epochs": best["epochs_cost"],
        "setting_epochs": own, "cost_ratio": best["cost_ratio"],
        "uniform_epochs": last["uniform_epochs"],
        "uniform_cost_to_target": last["uniform_cost_to_target"],
        "budgets": plan, "candidates": len(points), "probes": len(log.done),
        "probes_reused": log.reused,
    }
    config_path = write_tuned(
        out / TUNED, config, wrap=beats, epochs=epochs, objective="frontier", cost=cost,
        target=last["target"], saving=best["saving"],
        epochs_interpolated=headline["epochs_interpolated"], max_epochs=plan[-1],
        uniform_epochs=last["uniform_epochs"])
    headline["config"] = str(config_path)
    (out / "tune.json").write_text(json.dumps(
        {"headline": headline, "rungs": rungs, "config": config.to_dict()}, indent=2,
        default=float) + "\n")
    (out / "tune.md").write_text(frontier_table(rungs, headline, cost) + "\n")
    png = frontier_plot(rungs, headline, out / "tune.png", cost=cost)
    if png is not None:
        headline["plot"] = str(png)
    return TuneResult(config=config, params=best["params"], config_path=config_path,
                      beats_uniform=beats, rungs=rungs, headline=headline, out=out,
                      epochs=epochs)


__all__ = ["OBJECTIVES", "TuneResult", "budgets", "candidates", "score_probe", "tune"]
