"""``backprop``: plain end-to-end backpropagation through all stages, the baseline.

Auxiliary heads are not used. Each stage keeps its own optimiser over its own parameters (for
per-parameter optimisers such as SGD and Adam this is the same as one optimiser over all), so the
checkpoint layout is the one every schedule shares.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from autoassist.boss.config import BossConfig
from autoassist.boss.in_process import train_in_process
from autoassist.boss.stages import Stages


def train(stages: Stages, make_loader, cfg: BossConfig) -> dict[str, Any]:
    optimizers = [cfg.optimizer(list(s.parameters())) for s in stages.stages]

    def step(x, y, loader):
        per_sample = F.cross_entropy(stages(x), y, reduction="none")
        loss = loader.report(per_sample) if loader is not None else per_sample.mean()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers:
            opt.step()
        return per_sample

    return train_in_process("backprop", stages, make_loader, cfg, optimizers,
                            [None] * len(stages), step, resume_epoch=min)
