"""Data-parallel replicas: one Assistant (rank 0's) scores for every rank.

Each epoch's plan is the one point where every rank meets: there the other ranks' reports since
the last plan are gathered to rank 0 (one ``gather_object``), and rank 0's score snapshot and
floor are broadcast, so every rank selects the same instances.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
import torch

_SINGLE_REPLICA: ContextVar[bool] = ContextVar("autoassist_single_replica", default=False)

# what a rank > 0 sends rank 0 per report: ids, their losses, and the feature rows it computed
# for instances it saw first (their ids, their rows)
Report = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@contextmanager
def single_replica() -> Iterator[None]:
    """Engines made inside see no data-parallel world even when torch.distributed is up.

    For process groups that are not data-parallel replicas, such as the Boss's stage processes
    (only stage 0 holds a loader, so there is no score broadcast to share).
    """
    token = _SINGLE_REPLICA.set(True)
    try:
        yield
    finally:
        _SINGLE_REPLICA.reset(token)


def rank_world() -> tuple[int, int]:
    """This process's data-parallel rank and the number of replicas ((0, 1) without any)."""
    if _SINGLE_REPLICA.get():
        return 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def broadcast_scores(scores: np.ndarray | None, floor: float, n: int, rank: int
                     ) -> tuple[np.ndarray, float]:
    """Every rank selects from rank 0's snapshot and floor, so all ranks keep the same set."""
    dist = torch.distributed
    device = "cpu"
    if dist.get_backend() == "nccl":  # NCCL moves CUDA tensors only (untested here: no GPU)
        device = torch.device("cuda", torch.cuda.current_device())
    packed = torch.empty(n + 1, dtype=torch.float32)
    if rank == 0:
        packed[:n] = torch.from_numpy(scores)
        packed[n] = floor
    packed = packed.to(device)
    dist.broadcast(packed, src=0)
    packed = packed.cpu()
    return packed[:n].numpy().copy(), float(packed[n])


def gather_reports(outgoing: list[Report], dim: int, rank: int, world: int) -> list[Report]:
    """Every rank's reports since the last plan, brought to rank 0 (a collective: every rank
    calls it at the same point). Rank 0 gets the other ranks' reports, in rank order; the other
    ranks get nothing back.

    Without this, a data-parallel Assistant learns from 1/world of the losses, and the
    instances only other ranks saw keep the "never seen" score of 1 (always kept).
    """
    none = (np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64),
            np.zeros((0, dim), np.float32))
    payload = tuple(np.concatenate(part) for part in zip(*(outgoing or [none]), strict=True))
    received = [None] * world if rank == 0 else None
    torch.distributed.gather_object(payload, received, dst=0)
    return received[1:] if rank == 0 else []
