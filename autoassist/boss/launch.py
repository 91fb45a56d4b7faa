"""Start one process per stage, turn a failure into one clear error, collect what they trained.

Each stage process ``worker(rank, world, init_file, stages_file, cfg, *extra, out_dir)`` writes
``final{rank}.pt`` (its stage, and head when it has one) and ``history{rank}.json``; this module
loads them back into the caller's ``Stages`` and merges the per-stage histories.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from autoassist.boss.config import BossConfig
from autoassist.boss.stages import Stages


def finish_loader(loader) -> list[dict[str, Any]]:
    """Close a loader the schedule made; return its epoch telemetry (empty for plain loaders)."""
    telemetry = list(getattr(loader, "telemetry", []) or [])
    if hasattr(loader, "close"):
        loader.close()
    return telemetry


def write_stage_results(out_dir: str, rank: int, stage, head, history: list, loader) -> None:
    """The stage process's side of the protocol: ``final{rank}.pt`` and ``history{rank}.json``."""
    torch.save({"stage": stage.state_dict(), "head": None if head is None else head.state_dict()},
               Path(out_dir) / f"final{rank}.pt")
    record: dict[str, Any] = {"history": history}
    if loader is not None:
        record["loader_telemetry"] = finish_loader(loader)
    (Path(out_dir) / f"history{rank}.json").write_text(json.dumps(record, default=float))


def run_stage_processes(schedule: str, stages: Stages, worker, cfg: BossConfig,
                        *extra: Any) -> dict[str, Any]:
    world = len(stages)
    if world < 2:
        raise ValueError(f"{schedule} needs at least 2 stages (cut the model with cuts=[...])")
    if cfg.device == "cuda" and torch.cuda.device_count() < world:
        raise ValueError(f"{schedule} on cuda needs one GPU per stage: {world} stages, "
                         f"{torch.cuda.device_count()} GPUs")
    with tempfile.TemporaryDirectory(prefix="autoassist-boss-") as tmp:
        stages_file = os.path.join(tmp, "stages.pt")
        torch.save(stages, stages_file)
        try:
            mp.spawn(worker, args=(world, os.path.join(tmp, "init"), stages_file, cfg, *extra,
                                   tmp), nprocs=world, join=True)
        except mp.ProcessRaisedException as exc:
            raise RuntimeError(f"a {schedule} stage process failed:\n{exc}") from None
        except mp.ProcessExitedException as exc:
            raise RuntimeError(f"a {schedule} stage process died ({exc}); the other stages "
                               "were stopped. Resume from checkpoint_dir with resume=True"
                               ) from None
        for k in range(world):
            final = torch.load(os.path.join(tmp, f"final{k}.pt"), weights_only=True)
            stages.stages[k].load_state_dict(final["stage"])
            if final.get("head") is not None:
                stages.heads[k].load_state_dict(final["head"])
        records = [json.loads(Path(tmp, f"history{k}.json").read_text()) for k in range(world)]
    epochs = [[r["history"][i] for r in records] for i in range(len(records[0]["history"]))]
    history = [{"epoch": per_stage[0]["epoch"],
                "seconds": max(s["seconds"] for s in per_stage),
                "instances": per_stage[-1]["instances"], "loss": per_stage[-1]["loss"],
                "stage_seconds": [s["seconds"] for s in per_stage]} for per_stage in epochs]
    return {"schedule": schedule, "history": history,
            "loader_telemetry": records[0].get("loader_telemetry", [])}
