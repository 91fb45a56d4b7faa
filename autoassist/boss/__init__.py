"""Boss training schedules: how the main model trains across stages and processes.

    from autoassist.boss import BossConfig, Stages, fit
    stages = Stages.from_sequential(model, cuts=[4], num_classes=10, example_input=x[:2])
    fit(stages, make_loader, "local_parallel", BossConfig(epochs=3, optimizer=opt_factory))

Multi-process schedules spawn one process per stage, or, started by ``torchrun`` (one process per
stage, on one node or several), run this process as stage ``RANK``; ``docs/boss.md`` has the
commands. Either way ``stages`` comes back trained in place.

``make_loader()`` builds the data loader (any iterable of ``(x, y)`` batches; an
``autoassist.wrap`` loader makes the Boss shrink its data) inside the process that owns stage 0.
Schedules, one file each: ``backprop`` (baseline), ``sequential_greedy`` (local losses, one
process), ``local_parallel`` (local losses, one process per stage), ``async_model_parallel``
(full backprop across stage processes, bounded staleness). All share one checkpoint
layout (``checkpoint.py``).

Auxiliary-variable solvers, over the same launcher: ``hybrid.HybridTrainer`` (paper C: penalty /
augmented Lagrangian, parallel then serial phase) and ``block_admm.BlockADMM`` (paper D,
DeepFacto's ``NMFBlock``), each with ``fit(processes=True)`` for one process per block.
"""

from __future__ import annotations

import os
from typing import Any

from autoassist.boss.config import BossConfig
from autoassist.boss.stages import Stages, aux_head, stage_step

SCHEDULES = ("backprop", "sequential_greedy", "local_parallel", "async_model_parallel")

__all__ = ["SCHEDULES", "BossConfig", "Stages", "aux_head", "fit", "stage_step"]


def fit(stages: Stages, make_loader, schedule: str, cfg: BossConfig, *,
        staleness: int = 1) -> dict[str, Any]:
    """Train ``stages`` in place with ``schedule``; returns per-epoch history and telemetry.

    ``staleness`` (``async_model_parallel`` only): batches a stage may run ahead of its
    backward passes; 0 is synchronous backprop.
    """
    if not callable(make_loader):
        raise TypeError("fit takes make_loader, a function returning the loader (it runs in the "
                        "process that owns stage 0), not a loader")
    if schedule in ("backprop", "sequential_greedy") and cfg.launcher != "spawn":
        from autoassist.boss.launch import under_torchrun

        if under_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
            raise ValueError(f"{schedule} trains in one process: run it with python, not "
                             "torchrun (torchrun is for local_parallel and async_model_parallel)")
    if schedule == "backprop":
        from autoassist.boss.backprop import train
    elif schedule == "sequential_greedy":
        from autoassist.boss.sequential_greedy import train
    elif schedule == "local_parallel":
        from autoassist.boss.local_parallel import train
    elif schedule == "async_model_parallel":
        from autoassist.boss.async_model_parallel import train as train_async

        return train_async(stages, make_loader, cfg, staleness=staleness)
    else:
        raise ValueError(f"unknown schedule {schedule!r}: one of {SCHEDULES}")
    return train(stages, make_loader, cfg)
