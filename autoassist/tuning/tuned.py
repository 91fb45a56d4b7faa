"""``tuned.toml``: what ``autoassist tune`` recommends, in one file.

The ``[autoassist]`` table is a ``ShrinkConfig`` (``ShrinkConfig.from_file``, ``wrap(loader,
config="tuned.toml")`` and fairseq's ``--aa-config`` read it and ignore every other table). The
``[tune]`` table says how to use it:

- ``wrap``: true to wrap the loader with the ``[autoassist]`` settings; false when no setting
  beat the uniform baseline, so the recommendation is the plain loader (``[autoassist]`` then
  holds the best setting found, for reference);
- ``epochs``: the epoch count to train, whichever loader ``wrap`` names (``--objective
  frontier`` chooses it; the other objectives score at ``--max-epochs``, so it is that);
- ``objective``, ``cost``, and the readings behind the choice (``target``, ``saving``, ...).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoassist.config import ShrinkConfig, read_settings_file
from autoassist.errors import UsageError, UsageFileNotFoundError

TABLE = "tune"


@dataclass(frozen=True)
class Tuned:
    """A tuned recommendation: wrap the loader with ``config`` (or not) and train ``epochs``."""

    config: ShrinkConfig
    wrap: bool = True
    epochs: int | None = None
    readings: dict[str, Any] = field(default_factory=dict)


def write_tuned(path: str | os.PathLike, config: ShrinkConfig, *, wrap: bool, epochs: int,
                **readings: Any) -> Path:
    """Write ``config`` as ``[autoassist]`` and the recommendation as ``[tune]``.

    Args:
        path: the ``.toml`` file to write.
        config: the chosen (or best found) settings.
        wrap: whether to wrap the loader with them (False: train the plain loader).
        epochs: the epoch count to train.
        **readings: numbers, strings and booleans recorded beside them (None values and
            non-finite numbers are left out: TOML has no null).

    Returns:
        The path written.

    Raises:
        UsageError: ``path`` is not a ``.toml`` file.
    """
    path = Path(path)
    if path.suffix != ".toml":
        raise UsageError(f"tuned file {path}: use a .toml file")
    config.to_file(path)
    table = {"wrap": bool(wrap), "epochs": int(epochs), **readings}
    lines = ["", f"[{TABLE}]"]
    for key, value in table.items():
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        lines.append(f"{key} = {json.dumps(value)}")
    with path.open("a") as f:
        f.write("\n".join(lines) + "\n")
    return path


def load_tuned(path: str | os.PathLike) -> Tuned:
    """Read a ``tuned.toml``: the settings, whether to wrap, and the epoch count to train.

    A file without a ``[tune]`` table (a plain ``ShrinkConfig`` file, or one written by
    ``autoassist tune --offline``) reads as ``wrap=True`` with ``epochs`` from the config (None
    if it has none).

    Args:
        path: the ``.toml`` (or ``.json``) file.

    Returns:
        A ``Tuned``: ``config`` (a ``ShrinkConfig``), ``wrap``, ``epochs`` and the other
        ``[tune]`` readings.

    Raises:
        UsageFileNotFoundError: the file does not exist.
        UsageError: it does not parse, holds unknown settings, or its ``[tune]`` table's
            ``wrap``/``epochs`` have the wrong type.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageFileNotFoundError(f"tuned file {path} does not exist")
    config = ShrinkConfig.from_file(path)
    raw = read_settings_file(path)
    table = dict(raw.get(TABLE) or {}) if isinstance(raw, dict) else {}
    wrap = table.pop("wrap", True)
    epochs = table.pop("epochs", config.epochs)
    if not isinstance(wrap, bool):
        raise UsageError(f"{path}: [{TABLE}] wrap = {wrap!r}: must be true or false")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int)
                               or epochs < 1):
        raise UsageError(f"{path}: [{TABLE}] epochs = {epochs!r}: must be a positive integer")
    return Tuned(config=config, wrap=wrap, epochs=epochs, readings=table)


__all__ = ["Tuned", "load_tuned", "write_tuned"]
