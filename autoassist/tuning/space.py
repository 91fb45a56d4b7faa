"""The search space of ``autoassist tune``: which shrink settings vary, and how a point becomes a
``ShrinkConfig`` for a given epoch budget.

A space maps setting names to a list of values or a scipy.stats distribution (anything with
``rvs``), exactly what scikit-learn's ``ParameterSampler`` takes. In a TOML/JSON file a
distribution is written ``{uniform = [low, high]}``, ``{loguniform = [low, high]}`` or
``{randint = [low, high]}`` (high exclusive).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from autoassist.config import ShrinkConfig, read_settings_file
from autoassist.errors import UsageError, UsageFileNotFoundError

#: What a user comes to tune (see the issue's list): the floor b or the adaptive floor, the label
#: rule's smoothing, warm-up epochs, the anneal fraction, reweighting and the Assistant's kind.
TUNABLE = ("floor", "adaptive_floor", "label_ema", "warmup_epochs", "anneal_fraction",
           "reweight", "assistant", "loss_history", "assistant_lr", "feature_dim")


def default_space() -> dict[str, Any]:
    from scipy.stats import loguniform, uniform

    return {
        "floor": uniform(0.1, 0.8),  # b in [0.1, 0.9]
        "adaptive_floor": [False, True],
        "label_ema": loguniform(0.003, 0.1),
        "warmup_epochs": [0, 1, 2],
        "anneal_fraction": [0.0, 0.1, 0.2],
        "reweight": [False, True],
        "assistant": ["logistic", "sgd"],
    }


def _distribution(name: str, spec: dict[str, Any]):
    from scipy import stats

    if len(spec) != 1:
        raise UsageError(f"space[{name!r}] = {spec}: a distribution is one of "
                         "{uniform = [low, high]}, {loguniform = [low, high]}, "
                         "{randint = [low, high]}")
    (kind, bounds), = spec.items()
    if not (isinstance(bounds, list) and len(bounds) == 2 and bounds[0] < bounds[1]):
        raise UsageError(f"space[{name!r}]: {kind} takes [low, high] with low < high, got "
                         f"{bounds!r}")
    low, high = bounds
    if kind == "uniform":
        return stats.uniform(low, high - low)
    if kind == "loguniform":
        return stats.loguniform(low, high)
    if kind == "randint":
        return stats.randint(low, high)
    raise UsageError(f"space[{name!r}]: unknown distribution {kind!r} (uniform, loguniform, "
                     "randint)")


def load_space(space: dict[str, Any] | str | os.PathLike | None) -> dict[str, Any]:
    """A validated space from a dict, a .toml/.json file, or None (the default space).

    Raises ``UsageError`` (``UsageFileNotFoundError`` for a missing file) naming what is wrong:
    the space is the user's input, and every listed value must make a valid config.
    """
    if space is None:
        return default_space()
    if isinstance(space, (str, os.PathLike)):
        path = Path(space)
        if not path.is_file():
            raise UsageFileNotFoundError(f"search space {path} does not exist")
        if path.suffix not in (".toml", ".json"):
            raise UsageError(f"search space {path}: use a .toml or .json file")
        raw = read_settings_file(path)
        space = raw.get("space", raw) if isinstance(raw, dict) else raw
    if not isinstance(space, dict) or not space:
        raise UsageError("the search space is empty: give at least one setting to vary, e.g. "
                         "{'floor': [0.2, 0.4, 0.6]} (or leave it out for the default space)")
    out: dict[str, Any] = {}
    for name, values in space.items():
        if name not in TUNABLE:
            raise UsageError(f"space: {name!r} is not a tunable setting; tunable: "
                             f"{', '.join(TUNABLE)}")
        if isinstance(values, dict):
            values = _distribution(name, values)
        elif isinstance(values, (list, tuple)):
            if not values:
                raise UsageError(f"space[{name!r}] is an empty list: give at least one value")
            values = list(values)
        elif not hasattr(values, "rvs"):
            raise UsageError(f"space[{name!r}] = {values!r}: give a list of values or a "
                             "distribution")
        out[name] = values
    for point in _corners(out):  # every listed value must make a valid config
        to_config(point, ShrinkConfig(), epochs=10)
    return out


def _corners(space: dict[str, Any]) -> list[dict[str, Any]]:
    points = []
    for name, values in space.items():
        for v in values if isinstance(values, list) else [values.rvs(random_state=0)]:
            points.append({name: plain(v)})
    return points


def plain(value: Any) -> Any:
    """NumPy scalars -> Python (for JSON logs and config files)."""
    return value.item() if hasattr(value, "item") else value


def to_config(point: dict[str, Any] | None, base: ShrinkConfig, epochs: int) -> ShrinkConfig | None:
    """The ShrinkConfig of one point of the space for a run of ``epochs`` (None: uniform)."""
    if point is None:
        return None
    changes = {k: plain(v) for k, v in point.items()}
    fraction = changes.pop("anneal_fraction", None)
    if fraction is not None:
        if not 0.0 <= fraction < 1.0:
            raise UsageError(f"anneal_fraction={fraction}: must lie in [0, 1)")
        changes["anneal_epochs"] = int(round(fraction * epochs))
    if changes.get("anneal_epochs", base.anneal_epochs):
        changes["epochs"] = epochs
    known = {f.name for f in dataclasses.fields(ShrinkConfig)}
    unknown = set(changes) - known
    if unknown:
        raise UsageError(f"unknown setting(s) {sorted(unknown)}")
    return base.replace(**changes)
