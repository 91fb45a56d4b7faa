"""Per-instance auxiliary variables at block boundaries: the state auxiliary-variable solvers keep.

For K blocks there are K-1 boundaries. ``z[k][i]`` stands for instance i's output of block k
(in the filter's coarse space, see ``filters.py``), ``lam[k][i]`` for its multiplier (augmented
Lagrangian / ADMM duals; None for the penalty method). They persist across epochs, which is why
these solvers train on fixed inputs: random augmentation would change the states they track.
Memory is ``N x state size`` per boundary and table, so they run on a data subset here.
"""

from __future__ import annotations

import torch


def tensor_bytes(*tensors: torch.Tensor) -> int:
    """Bytes of the tensors' elements: what sending (or storing) them costs."""
    return sum(t.numel() * t.element_size() for t in tensors)


class AuxTables:
    def __init__(self, n: int, shapes: list[tuple[int, ...]], duals: bool):
        self.n = int(n)
        self.z = [torch.zeros((self.n, *s)) for s in shapes]
        self.lam = [torch.zeros((self.n, *s)) for s in shapes] if duals else None

    @property
    def boundaries(self) -> int:
        return len(self.z)

    def nbytes(self) -> int:
        tables = self.z + (self.lam or [])
        return tensor_bytes(*tables)

    def state_dict(self) -> dict:
        return {"z": [t.clone() for t in self.z],
                "lam": None if self.lam is None else [t.clone() for t in self.lam]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["z"]) != len(self.z) or any(
                a.shape != b.shape for a, b in zip(state["z"], self.z, strict=True)):
            raise ValueError("saved auxiliary variables do not fit this model/data: resume with "
                             "the same blocks, filter and training subset")
        if (state["lam"] is None) != (self.lam is None):
            raise ValueError("saved run used a different solver (multipliers present in one, "
                             "absent in the other)")
        self.z = [t.clone() for t in state["z"]]
        self.lam = None if state["lam"] is None else [t.clone() for t in state["lam"]]


class ByteLedger:
    """Bytes that cross a block boundary: what the process-per-block schedule sends."""

    def __init__(self):
        self.bytes = 0

    def add(self, *tensors: torch.Tensor) -> None:
        self.bytes += tensor_bytes(*tensors)

    def add_bytes(self, n: int) -> None:
        self.bytes += int(n)
