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
from autoassist.tuning.probe import load_job
from autoassist.tuning.space import load_space, plain, to_config

OBJECTIVES = ("time_to_target", "metric_at_cost")
COSTS = ("seconds", "instances")
LOG = "probes.jsonl"
SETTINGS = "tune_settings.json"


@dataclass
class TuneResult:
    """The chosen setting, its file, and everything measured on the way."""

    config: ShrinkConfig
    params: dict[str, Any]
    config_path: Path
    beats_uniform: bool
    rungs: list[dict[str, Any]]
    headline: dict[str, Any]
    out: Path


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
        objective: ``"time_to_target"`` (the cost of reaching the target) or
            ``"metric_at_cost"`` (the metric reached within uniform's cost, or
            ``cost_budget``).
        target: the metric to reach; default: the uniform run's final metric.
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
        tolerance: ``time_to_target``: the target is uniform's final metric less this.

    Returns:
        A ``TuneResult``: the chosen ``config`` and its file ``tuned.toml`` (for
        ``autoassist.wrap(loader, config=...)`` or fairseq's ``--aa-config``), whether it
        ``beats_uniform``, and every rung's probes and scores. ``tune.json``, ``tune.md`` and
        ``tune.png`` are written to ``out`` too.

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
    _check_settings(out, {
        "job": job, "objective": objective, "target": target, "cost": cost, "mode": mode,
        "cost_budget": cost_budget, "tolerance": tolerance,
        "budgets": plan, "factor": factor, "seeds": seed_list, "base": base.to_dict(),
        "candidates": points}, fresh)
    log = _Log(out / LOG, fresh)

    alive = list(range(len(points)))
    sizes, n = [], len(points)
    for _ in plan:
        sizes.append(n)
        n = max(1, math.ceil(n / factor))
    total = sum((s + 1) * len(seed_list) for s in sizes)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="autoassist tune", disable=not progress, dynamic_ncols=True)
    rungs: list[dict[str, Any]] = []
    runner = _Runner(job, threads, timeout_s)
    pool = ThreadPoolExecutor(max_workers=n_jobs)
    try:
        for r, epochs in enumerate(plan):
            bar.set_description(f"autoassist tune: rung {r + 1}/{len(plan)}, {epochs} epochs")
            configs = {i: to_config(points[i], base, epochs) for i in alive}

            def run(config, epochs=epochs):
                cdict = None if config is None else config.to_dict()
                todo = [(s, probe_key(cdict, epochs, s)) for s in seed_list]
                fresh_runs = [(s, k, pool.submit(runner, cdict, epochs, s))
                              for s, k in todo if k not in log.done or
                              log.done[k]["status"] != "ok"]
                return todo, cdict, fresh_runs

            def collect(todo, cdict, fresh_runs, who, epochs=epochs):
                for s, k, fut in fresh_runs:
                    rec = fut.result()
                    log.add({"key": k, "who": who, "epochs": epochs, "seed": s,
                             "config": cdict, **rec})
                    bar.update(1)
                reused = len(todo) - len(fresh_runs)
                log.reused += reused
                bar.update(reused)
                return [log.done[k] for _s, k in todo]

            base_recs = collect(*run(None), who="uniform")  # first: a broken job fails fast
            bad = [rec for rec in base_recs if rec["status"] != "ok"]
            if bad:
                raise RuntimeError(f"the job failed on its uniform baseline ({epochs} epochs, "
                                   f"seed {bad[0]['seed']}):\n{bad[0]['error']}")
            _check_cost(base_recs, cost)
            submitted = {i: run(configs[i]) for i in alive}
            scored = []
            for i in alive:
                recs = collect(*submitted[i], who=f"candidate {i}")
                per_seed = []
                for rec, brec in zip(recs, base_recs, strict=True):
                    if rec["status"] != "ok":
                        per_seed.append({"score": -1e12, "reached": False,
                                         "error": rec["error"]})
                        continue
                    if cost == "instances" and not rec["curve"]["instances"]:
                        raise ValueError("cost='instances' but the job reported no "
                                         "instances: return them with each evaluation")
                    per_seed.append(score_probe(
                        rec["curve"], brec["curve"], objective=objective, cost=cost,
                        mode=mode, target=target, tolerance=tolerance,
                        budget=None if cost_budget is None
                        else cost_budget * epochs / max_epochs))  # the rung's share
                scored.append({"index": i, "params": points[i],
                               "score": sum(p["score"] for p in per_seed) / len(per_seed),
                               "seeds": per_seed,
                               "curves": [rec.get("curve") for rec in recs]})
            scored.sort(key=lambda c: -c["score"])
            keep = 1 if r == len(plan) - 1 else sizes[r + 1]
            alive = [c["index"] for c in scored[:keep]]
            rungs.append({"epochs": epochs, "uniform": [b["curve"] for b in base_recs],
                          "candidates": scored, "kept": alive})
    except BaseException:  # Ctrl-C or an error: stop the probes in flight, run no more
        runner.stop_all()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return _finish(out, rungs, points, base, plan, objective, cost, mode, log)


def _check_cost(base_recs, cost: str) -> None:
    if cost == "instances" and not base_recs[0]["curve"]["instances"]:
        raise ValueError("cost='instances' but the job reported no instances: return them with "
                         "each evaluation (instances trained on so far)")


def _finish(out: Path, rungs, points, base: ShrinkConfig, plan, objective, cost, mode,
            log: _Log) -> TuneResult:
    from autoassist.tuning.report import plot, table

    last = rungs[-1]
    best = last["candidates"][0]
    if best["score"] <= -1e11:
        raise RuntimeError("every candidate failed at the last rung; first error:\n"
                           f"{best['seeds'][0].get('error')}")
    config = to_config(points[best["index"]], base, plan[-1])
    config_path = config.to_file(out / "tuned.toml")
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
        "config": str(config_path),
    }
    if objective == "time_to_target":
        savings = [s.get("saving") for s in best["seeds"]]
        headline["saving"] = None if None in savings else sum(savings) / len(savings)
    (out / "tune.json").write_text(json.dumps(
        {"headline": headline, "rungs": rungs, "config": config.to_dict()}, indent=2,
        default=float) + "\n")
    (out / "tune.md").write_text(table(rungs, objective) + "\n")
    png = plot(rungs, out / "tune.png", cost=cost, objective=objective)
    if png is not None:
        headline["plot"] = str(png)
    return TuneResult(config=config, params=best["params"], config_path=config_path,
                      beats_uniform=beats, rungs=rungs, headline=headline, out=out)


__all__ = ["OBJECTIVES", "TuneResult", "budgets", "candidates", "score_probe", "tune"]
