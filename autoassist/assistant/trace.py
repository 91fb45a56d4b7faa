"""Loss traces: what the Boss reported, written to disk so the Assistant can be tuned offline.

``ShrinkConfig(trace_dir=...)`` makes the engine (rank 0) write, at the end of each epoch,
``epoch{E:04d}.npz`` with the reported instance ids, their losses and the size of every report,
in report order, plus the Assistant features of instances seen for the first time
(``features{E:04d}.npz``; an instance's features never change once computed). ``meta.json``
holds the run's ShrinkConfig and table sizes. ``read_trace`` puts it back together for
``autoassist tune --offline``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoassist.errors import UsageError, UsageFileNotFoundError

FORMAT = 1


class TraceWriter:
    def __init__(self, directory: str, config: dict[str, Any], num_instances: int, dim: int):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "meta.json").write_text(json.dumps(
            {"format": FORMAT, "num_instances": int(num_instances), "feature_dim": int(dim),
             "config": config}, indent=2) + "\n")
        self.written = np.zeros(int(num_instances), bool)
        self._ids: list[np.ndarray] = []
        self._losses: list[np.ndarray] = []
        self._new_ids: list[np.ndarray] = []
        self._new_rows: list[np.ndarray] = []

    def add(self, ids: np.ndarray, losses: np.ndarray, features: np.ndarray,
            have: np.ndarray) -> None:
        """One report: ``features``/``have`` are the feature rows of ``ids`` at report time."""
        self._ids.append(np.asarray(ids, np.int64).copy())
        self._losses.append(np.asarray(losses, np.float32).copy())
        new = have.astype(bool) & ~self.written[ids]
        if new.any():
            new_ids, first = np.unique(ids[new], return_index=True)
            self._new_ids.append(new_ids)
            self._new_rows.append(np.asarray(features[new][first], np.float32))
            self.written[new_ids] = True

    def end_epoch(self, epoch: int) -> None:
        sizes = np.array([len(i) for i in self._ids], np.int64)
        ids = np.concatenate(self._ids) if self._ids else np.empty(0, np.int64)
        losses = np.concatenate(self._losses) if self._losses else np.empty(0, np.float32)
        np.savez(self.dir / f"epoch{epoch:04d}.npz", ids=ids, losses=losses, sizes=sizes)
        if self._new_ids:
            np.savez(self.dir / f"features{epoch:04d}.npz", ids=np.concatenate(self._new_ids),
                     rows=np.concatenate(self._new_rows))
        self._ids, self._losses, self._new_ids, self._new_rows = [], [], [], []


@dataclass
class Trace:
    """A whole run's reports in order, and the feature table (``have`` marks filled rows)."""

    config: dict[str, Any]
    epochs: list[int]
    ids: list[np.ndarray]
    losses: list[np.ndarray]
    sizes: list[np.ndarray]
    features: np.ndarray
    have: np.ndarray


def read_trace(directory: str | Path) -> Trace:
    """The trace in ``directory``; a folder without one is the user's to fix (``UsageError``)."""
    d = Path(directory)
    meta_path = d / "meta.json"
    if not meta_path.is_file():
        raise UsageFileNotFoundError(f"{d} holds no loss trace (meta.json is missing): train with "
                                "autoassist.wrap(loader, trace_dir=...) to write one")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise UsageError(f"{d}: trace format {meta.get('format')}, this version reads {FORMAT}")
    files = sorted(d.glob("epoch*.npz"))
    if not files:
        raise UsageError(f"{d} holds no finished epoch: a trace is written at each epoch's end")
    n, dim = meta["num_instances"], meta["feature_dim"]
    features, have = np.zeros((n, dim), np.float32), np.zeros(n, bool)
    for f in sorted(d.glob("features*.npz")):
        with np.load(f) as z:
            features[z["ids"]] = z["rows"]
            have[z["ids"]] = True
    epochs, ids, losses, sizes = [], [], [], []
    for f in files:
        with np.load(f) as z:
            epochs.append(int(f.stem[len("epoch"):]))
            ids.append(z["ids"])
            losses.append(z["losses"])
            sizes.append(z["sizes"])
    return Trace(meta["config"], epochs, ids, losses, sizes, features, have)
