"""Accuracy-cost frontiers as pure functions: shared by ``autoassist tune --objective frontier``
and the laboratory's frontier harness (``autoassist.bench.frontier`` imports them from here, so
the product never imports the laboratory).

A *frontier* is a list of points, one per finished run of a method, each run trained for its own
epoch count with its schedule decayed for that count: ``{"epochs", "cost", "metric"}`` with the
run's total cost and its *final* metric, in epoch order. The question it answers is the user's:
to get the metric of my usual run (uniform, ``E`` epochs), should I train fewer uniform epochs
or wrap my loader and train some number of epochs, and how many?

Metrics here are "higher is better"; for a loss, pass the negated values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: uniform's budgets in the tune, as fractions of the usual run's ``E`` epochs: the user's free
#: alternative to wrapping the loader is to train fewer uniform epochs
UNIFORM_FRACTIONS = (1 / 3, 2 / 3, 1.0)
#: a candidate's budgets, as fractions of ``E / cost_ratio`` (its cost per epoch relative to
#: uniform's): its costs then lie about ⅔, 1 and 4/3 of the usual run's
CANDIDATE_FRACTIONS = (2 / 3, 1.0, 4 / 3)
#: a measured cost ratio is clipped to this range before it scales a candidate's epochs (a
#: candidate keeping 10% is not trained for 10 times the usual epochs)
RATIO_BOUNDS = (0.25, 2.0)
#: score of a candidate whose frontier never reaches the target: below every one that does
NOT_REACHED = -10.0


def budget_epochs(full: int, multiplier: float, fractions: Sequence[float]) -> list[int]:
    """Epoch counts ``round(full * f * multiplier)`` for each fraction ``f``.

    Args:
        full: the usual run's epoch count ``E``.
        multiplier: epochs per unit of ``E`` (``1 / cost_ratio`` for a method whose epochs cost
            ``cost_ratio`` of uniform's, so its costs span uniform's range).
        fractions: the budgets as fractions of ``full``.

    Returns:
        The epoch counts in the order of ``fractions``, each at least 1, duplicates removed.
    """
    out: list[int] = []
    for f in fractions:
        e = max(1, round(full * f * multiplier))
        if e not in out:
            out.append(e)
    return out


def interpolate_cost(costs: Sequence[float], accs: Sequence[float], target: float) -> float | None:
    """The cost at which the piecewise-linear frontier (points in budget order) first reaches
    ``target``: the first point's cost if it already does, None if no point does."""
    for i, (c, a) in enumerate(zip(costs, accs, strict=True)):
        if a >= target:
            if i == 0:
                return float(c)
            c0, a0 = costs[i - 1], accs[i - 1]
            return float(c0 + (c - c0) * (target - a0) / (a - a0))
    return None


def accuracy_at_cost(costs: Sequence[float], accs: Sequence[float], cost: float) -> float | None:
    """The frontier's accuracy at ``cost``, linear between points in cost order; None outside
    the measured range (no extrapolation)."""
    order = np.argsort(costs, kind="stable")
    c, a = np.asarray(costs, float)[order], np.asarray(accs, float)[order]
    if len(c) == 0 or cost < c[0] - 1e-12 or cost > c[-1] + 1e-12:
        return None
    return float(np.interp(cost, c, a))


def reach(frontier: Sequence[dict[str, Any]], target: float) -> dict[str, Any]:
    """Where a frontier first reaches ``target``.

    Args:
        frontier: points ``{"epochs", "cost", "metric"}`` in epoch order.
        target: the metric to reach (higher is better).

    Returns:
        ``{"reached", "cost", "epochs", "epochs_cost", "interpolated"}``: ``cost`` is where the
        piecewise-linear frontier first reaches the target (``interpolate_cost``); ``epochs``
        the smallest measured epoch count that reaches it (the run to train) and
        ``epochs_cost`` that run's cost; ``interpolated`` is True when ``cost`` lies between
        two measured points, so training ``epochs`` costs more than ``cost``. All None/False
        when no point reaches the target.
    """
    costs = [p["cost"] for p in frontier]
    metrics = [p["metric"] for p in frontier]
    cost = interpolate_cost(costs, metrics, target)
    if cost is None:
        return {"reached": False, "cost": None, "epochs": None, "epochs_cost": None,
                "interpolated": False}
    first = next(p for p in frontier if p["metric"] >= target)
    return {"reached": True, "cost": cost, "epochs": int(first["epochs"]),
            "epochs_cost": float(first["cost"]),
            "interpolated": bool(cost < first["cost"] - 1e-12 * max(1.0, abs(first["cost"])))}


def best_gain(frontier: Sequence[dict[str, Any]],
              uniform: Sequence[dict[str, Any]]) -> float | None:
    """The largest margin of a frontier's points over uniform's frontier at equal cost (uniform
    linear between its points and held at its end values outside them: a candidate point
    cheaper than uniform's cheapest run is compared with that run). None for no points."""
    if not frontier or not uniform:
        return None
    ordered = sorted(uniform, key=lambda p: p["cost"])
    uc = [p["cost"] for p in ordered]
    um = [p["metric"] for p in ordered]
    return max(float(p["metric"] - np.interp(p["cost"], uc, um)) for p in frontier)


def score_frontier(frontier: Sequence[dict[str, Any]], uniform: Sequence[dict[str, Any]],
                   target: float) -> dict[str, Any]:
    """A candidate's frontier against uniform's, both reaching for ``target`` (higher is better).

    Args:
        frontier: the candidate's points ``{"epochs", "cost", "metric"}`` in epoch order.
        uniform: uniform's points, the same way.
        target: the metric to reach: uniform's final metric at the usual epoch count, less the
            tolerance.

    Returns:
        ``score``: the saving ``1 - cost(frontier reaches target) / cost(uniform's frontier
        reaches it)`` when the candidate reaches it; otherwise ``NOT_REACHED`` plus its best
        margin over uniform at equal cost relative to the target (clipped to ±1), so every
        candidate that reaches ranks above every one that does not, and those by how close they
        came. Also ``reached``, ``saving`` (None if not reached), ``cost_to_target``,
        ``epochs`` (the smallest measured epoch count reaching the target), ``epochs_cost``,
        ``interpolated``, ``uniform_cost_to_target``, ``uniform_epochs`` (uniform's smallest
        measured epoch count reaching it), ``gain`` (``best_gain``) and ``beats_uniform``
        (a positive saving).

    Raises:
        ValueError: uniform's own frontier does not reach the target (it is taken from
            uniform's run, so the caller passed mismatched points).
    """
    base = reach(uniform, target)
    if not base["reached"]:
        raise ValueError(f"uniform's frontier never reaches its own target {target}: the target "
                         "must come from one of its points")
    mine = reach(frontier, target)
    gain = best_gain(frontier, uniform)
    out = {"reached": mine["reached"], "cost_to_target": mine["cost"],
           "epochs": mine["epochs"], "epochs_cost": mine["epochs_cost"],
           "interpolated": mine["interpolated"], "uniform_cost_to_target": base["cost"],
           "uniform_epochs": base["epochs"], "gain": gain, "target": target}
    if mine["reached"]:
        saving = 1.0 - mine["cost"] / base["cost"] if base["cost"] > 0 else 0.0
        return {**out, "score": saving, "saving": saving, "beats_uniform": saving > 0}
    relative = 0.0 if gain is None else gain / max(abs(target), 1e-12)
    return {**out, "score": NOT_REACHED + max(-1.0, min(1.0, relative)), "saving": None,
            "beats_uniform": False}


def mean_frontier(runs: dict[int, Sequence[dict[str, Sequence[float]]]], cost: str,
                  sign: float = 1.0) -> list[dict[str, Any]]:
    """The seed-mean frontier of a method's finished runs.

    Args:
        runs: epoch count -> that budget's curves (one per seed), each a dict of lists
            ``{"seconds", "metric", "instances"}`` as a job returns them.
        cost: the key of the cost series (``"seconds"`` or ``"instances"``).
        sign: 1 for a metric to maximise, -1 for one to minimise (the points then carry the
            negated metric, so higher is better).

    Returns:
        Points ``{"epochs", "cost", "metric", "seeds"}`` in epoch order: the mean over seeds of
        each run's final cost and final metric.
    """
    out = []
    for epochs in sorted(runs):
        curves = runs[epochs]
        out.append({"epochs": int(epochs),
                    "cost": float(np.mean([c[cost][-1] for c in curves])),
                    "metric": float(np.mean([sign * c["metric"][-1] for c in curves])),
                    "seeds": len(curves)})
    return out


__all__ = ["CANDIDATE_FRACTIONS", "NOT_REACHED", "RATIO_BOUNDS", "UNIFORM_FRACTIONS",
           "accuracy_at_cost", "best_gain", "budget_epochs", "interpolate_cost",
           "mean_frontier", "reach", "score_frontier"]
