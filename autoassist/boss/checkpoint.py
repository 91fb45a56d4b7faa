"""One checkpoint layout for every Boss schedule: ``stage{k}.pt`` per stage, ``loader.pt``.

Each stage process writes only its own file, so no process ever holds the whole model; a
checkpoint written by one schedule resumes under another (same stages).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch


def save_atomic(state: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through a temporary file: a crash mid-save leaves the previous one whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_own(path: str | os.PathLike) -> Any:
    """A trainer's checkpoint, read with ``weights_only=True`` (it holds tensors and plain
    values only).

    Raises:
        ValueError: the file holds other objects (a checkpoint written by an older
            autoassist); the message names the fix.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds objects other than tensors and plain values (a checkpoint written "
            "by an older autoassist), which torch.load refuses with weights_only=True. If you "
            "wrote it yourself and trust it, load it with torch.load(path, weights_only=False) "
            "and pass the result to load_state_dict(), then save() it again.") from err


def save_stage(directory: str | os.PathLike, k: int, stage, head, optimizer, epoch: int) -> Path:
    return save_atomic({"epoch": epoch, "stage": stage.state_dict(),
                        "head": None if head is None else head.state_dict(),
                        "optimizer": optimizer.state_dict()}, Path(directory) / f"stage{k}.pt")


def load_stage(directory: str | os.PathLike, k: int, stage, head, optimizer) -> int:
    """Restore stage ``k``; returns the number of finished epochs (0 when there is no file)."""
    path = Path(directory) / f"stage{k}.pt"
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    stage.load_state_dict(state["stage"])
    if head is not None and state["head"] is not None:
        head.load_state_dict(state["head"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"]) + 1


def save_loader(directory: str | os.PathLike, loader) -> None:
    if hasattr(loader, "state_dict"):
        save_atomic(loader.state_dict(), Path(directory) / "loader.pt")


def load_loader(directory: str | os.PathLike, loader) -> None:
    path = Path(directory) / "loader.pt"
    if path.is_file() and hasattr(loader, "load_state_dict"):
        # a loader's state holds tensors and plain values only
        loader.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def finished_epochs(directory: str | os.PathLike | None, k: int = 0) -> int:
    if directory is None:
        return 0
    path = Path(directory) / f"stage{k}.pt"
    if not path.is_file():
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"]) + 1
