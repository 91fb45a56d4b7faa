"""A model cut into stages, each with a small auxiliary head: the unit every Boss schedule trains.

Local parallelism (Laskin et al., arXiv:2012.03837) trains stage k on its own loss, computed by a
light head on the stage's output, with gradients stopped at the stage's input. The last stage
needs no head: its output is the model's. ``stage_step`` is the one update every local schedule
performs, so the sequential reference and the multi-process schedule run the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def aux_head(example_output: torch.Tensor, num_classes: int) -> nn.Module:
    """Pool-and-classify head for a stage output of shape ``[B, C, H, W]`` or ``[B, D]``."""
    if example_output.ndim == 4:
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(example_output.shape[1], num_classes))
    if example_output.ndim == 2:
        return nn.Linear(example_output.shape[1], num_classes)
    return nn.Sequential(nn.Flatten(), nn.Linear(example_output[0].numel(), num_classes))


class Stages(nn.Module):
    """``K`` stages (``nn.Module`` each) and their auxiliary heads (``None`` for the last)."""

    def __init__(self, stages: Sequence[nn.Module], heads: Sequence[nn.Module | None]):
        super().__init__()
        if len(stages) != len(heads) or not stages:
            raise ValueError(f"{len(stages)} stages but {len(heads)} heads: give one head per "
                             "stage (None for the last)")
        if heads[-1] is not None:
            raise ValueError("the last stage is trained by the model's own loss: its head is None")
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleList([h if h is not None else nn.Identity() for h in heads])

    @classmethod
    def from_sequential(cls, model: nn.Sequential, cuts: Sequence[int], num_classes: int,
                        example_input: torch.Tensor) -> Stages:
        """Cut ``model`` before the layer indices in ``cuts`` (e.g. ``[4]``: layers 0-3 | 4-).

        Heads are sized by running ``example_input`` (one small batch) through the stages.
        """
        if not isinstance(model, nn.Sequential):
            raise TypeError("from_sequential takes an nn.Sequential; build Stages(...) yourself "
                            "for other models")
        layers = list(model)
        bounds = [0, *cuts, len(layers)]
        if any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)):
            raise ValueError(f"cuts {list(cuts)} must be increasing and inside (0, {len(layers)})")
        stages = [nn.Sequential(*layers[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
        heads: list[nn.Module | None] = []
        h = example_input
        with torch.no_grad():
            for stage in stages[:-1]:
                h = stage(h)
                heads.append(aux_head(h, num_classes))
        heads.append(None)
        return cls(stages, heads)

    def __len__(self) -> int:
        return len(self.stages)

    def head(self, k: int) -> nn.Module | None:
        return None if k == len(self.stages) - 1 else self.heads[k]

    def stage_parameters(self, k: int) -> list[nn.Parameter]:
        """Stage ``k``'s parameters and its head's: what stage ``k``'s optimiser updates."""
        return [*self.stages[k].parameters(), *self.heads[k].parameters()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


def stage_step(stage: nn.Module, head: nn.Module | None, optimizer: torch.optim.Optimizer,
               h: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One local update of one stage; returns its detached output and per-instance loss.

    The input is detached: no gradient crosses a stage boundary.
    """
    out = stage(h.detach())
    logits = out if head is None else head(out)
    per_sample = F.cross_entropy(logits, y, reduction="none")
    loss = per_sample.mean() if weights is None else (per_sample * weights).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return out.detach(), per_sample.detach()
