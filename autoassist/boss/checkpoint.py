"""One checkpoint layout for every Boss schedule: ``stage{k}.pt`` per stage, ``loader.pt``.

Each stage process writes only its own file, so no process ever holds the whole model; a
checkpoint written by one schedule resumes under another (same stages).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_stage(directory: str | os.PathLike, k: int, stage, head, optimizer, epoch: int) -> Path:
    path = Path(directory) / f"stage{k}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"epoch": epoch, "stage": stage.state_dict(),
                "head": None if head is None else head.state_dict(),
                "optimizer": optimizer.state_dict()}, tmp)
    os.replace(tmp, path)  # a crash mid-save leaves the previous checkpoint whole
    return path


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
        path = Path(directory) / "loader.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(loader.state_dict(), tmp)
        os.replace(tmp, path)


def load_loader(directory: str | os.PathLike, loader) -> None:
    path = Path(directory) / "loader.pt"
    if path.is_file() and hasattr(loader, "load_state_dict"):
        state: Any = torch.load(path, map_location="cpu", weights_only=False)  # our own file
        loader.load_state_dict(state)


def finished_epochs(directory: str | os.PathLike | None, k: int = 0) -> int:
    if directory is None:
        return 0
    path = Path(directory) / f"stage{k}.pt"
    if not path.is_file():
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"]) + 1
