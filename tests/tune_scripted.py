"""Scripted jobs for the ``autoassist tune`` tests: no training and no torch, so a probe process
takes a fraction of a second, and curves known exactly, to test how probes are scored."""

from __future__ import annotations


def scripted(config, epochs, seed):
    """No training: curves known exactly, to test how probes are scored. Uniform ends at 0.90
    after ``epochs`` cost units; a shrinking config reaches 0.89 after one unit (within 0.02 of
    uniform's final metric) and stays there until its last unit, where it ends at 0.95."""
    if config is None:
        metric = [0.5 + 0.4 * (e + 1) / epochs for e in range(epochs)]
    else:
        metric = [0.89] * (epochs - 1) + [0.95]
    return {"seconds": [float(e + 1) for e in range(epochs)], "metric": metric,
            "instances": [e + 1 for e in range(epochs)]}


def frontier_scripted(config, epochs, seed):
    """No training: frontier points known exactly, to test the frontier objective. An epoch
    costs 100 instances; uniform's final metric after ``x`` epochs is ``0.9 - 0.4 / x``. A config
    keeps ``floor`` of the data (``100 * floor`` instances an epoch) and ends as uniform would
    after ``x = epochs * floor ** 0.5`` epochs with ``reweight`` (floor 0.25: uniform's metric at
    half the epochs for a quarter of the cost), after ``x = epochs * floor ** 1.5`` without
    (always below uniform's frontier)."""
    if config is None:
        per_epoch, effective = 100.0, float(epochs)
    else:
        per_epoch = 100.0 * config.floor
        effective = epochs * config.floor ** (0.5 if config.reweight else 1.5)
    final = 0.9 - 0.4 / effective
    return {"seconds": [0.01 * (e + 1) for e in range(epochs)],
            "metric": [final - 0.1 * (epochs - 1 - e) / epochs for e in range(epochs)],
            "instances": [per_epoch * (e + 1) for e in range(epochs)]}


def frontier_scripted_loss(config, epochs, seed):
    """``frontier_scripted`` as an error rate (lower is better): ``1 - metric``."""
    curve = frontier_scripted(config, epochs, seed)
    return {**curve, "metric": [1.0 - m for m in curve["metric"]]}
