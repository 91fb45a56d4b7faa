"""Run one process per stage, by spawning them here or inside a ``torchrun`` job.

A schedule supplies ``body(rank, world, stages, cfg, device, *extra)``: it trains stage ``rank``
in place inside an initialised process group and returns ``(module, head, history, loader)``,
optionally with a fifth element: per-stage state the caller wants back (``result["extras"]``).
This module owns everything around it, for both launchers:

- **spawn** (``python train.py``): ``torch.multiprocessing`` starts ``len(stages)`` processes that
  meet through a file; each writes ``final{rank}.pt`` and ``history{rank}.json``, which are loaded
  back into the caller's ``Stages``. A dead process becomes one clear error.
- **torchrun** (``torchrun --nproc-per-node 2 train.py``, or several nodes through torchrun's
  rendezvous): the caller's process *is* stage ``RANK``. The group comes from the environment
  (``env://``), every stage's trained weights are all-gathered so that ``stages`` ends up trained
  in every process alike, and the histories are merged the same way.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from autoassist.boss.comm import backend_for
from autoassist.boss.config import BossConfig
from autoassist.boss.stages import Stages

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def under_torchrun() -> bool:
    """True inside a process started by ``torchrun`` (or any launcher that sets env:// vars)."""
    return all(v in os.environ for v in TORCHRUN_VARS)


def finish_loader(loader) -> list[dict[str, Any]]:
    """Close a loader the schedule made; return its epoch telemetry (empty for plain loaders)."""
    telemetry = list(getattr(loader, "telemetry", []) or [])
    if hasattr(loader, "close"):
        loader.close()
    return telemetry


def _stage_state(module, head, extra=None) -> dict[str, Any]:
    return {"stage": {k: v.cpu() for k, v in module.state_dict().items()},
            "head": None if head is None else {k: v.cpu() for k, v in head.state_dict().items()},
            "extra": extra}


def _load_stage_state(stages: Stages, k: int, state: dict[str, Any]) -> None:
    stages.stages[k].load_state_dict(state["stage"])
    if state.get("head") is not None:
        stages.heads[k].load_state_dict(state["head"])


def _merge(schedule: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-stage histories -> one per epoch: the slowest stage's time, the last stage's loss."""
    epochs = [[r["history"][i] for r in records] for i in range(len(records[0]["history"]))]
    history = [{"epoch": per_stage[0]["epoch"],
                "seconds": max(s["seconds"] for s in per_stage),
                "instances": per_stage[-1]["instances"], "loss": per_stage[-1]["loss"],
                "stage_seconds": [s["seconds"] for s in per_stage]} for per_stage in epochs]
    return {"schedule": schedule, "history": history,
            "loader_telemetry": records[0].get("loader_telemetry", [])}


def _init_group(rank: int, world: int, device: torch.device, cfg: BossConfig,
                init_method: str) -> None:
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), init_method=init_method, rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=cfg.timeout_s))


def _spawned(rank: int, world: int, init_file: str, stages_file: str, cfg: BossConfig, body,
             extra: tuple, out_dir: str) -> None:
    torch.set_num_threads(cfg.threads)  # this stage process's own setting
    device = torch.device("cuda", rank) if cfg.device == "cuda" else torch.device("cpu")
    _init_group(rank, world, device, cfg, f"file://{init_file}")
    try:
        stages: Stages = torch.load(stages_file, map_location="cpu", weights_only=False)
        out = body(rank, world, stages, cfg, device, *extra)
        module, head, history, loader = out[:4]
        torch.save(_stage_state(module, head, out[4] if len(out) > 4 else None),
                   Path(out_dir) / f"final{rank}.pt")
        record: dict[str, Any] = {"history": history}
        if loader is not None:
            record["loader_telemetry"] = finish_loader(loader)
        (Path(out_dir) / f"history{rank}.json").write_text(json.dumps(record, default=float))
    finally:
        dist.destroy_process_group()


def _spawn(schedule: str, stages: Stages, body, cfg: BossConfig, extra: tuple) -> dict[str, Any]:
    world = len(stages)
    if cfg.device == "cuda" and torch.cuda.device_count() < world:
        raise ValueError(f"{schedule} on cuda needs one GPU per stage: {world} stages, "
                         f"{torch.cuda.device_count()} GPUs")
    with tempfile.TemporaryDirectory(prefix="autoassist-boss-") as tmp:
        stages_file = os.path.join(tmp, "stages.pt")
        torch.save(stages, stages_file)
        try:
            mp.spawn(_spawned, args=(world, os.path.join(tmp, "init"), stages_file, cfg, body,
                                     extra, tmp), nprocs=world, join=True)
        except mp.ProcessRaisedException as exc:
            raise RuntimeError(f"a {schedule} stage process failed:\n{exc}") from None
        except mp.ProcessExitedException as exc:
            raise RuntimeError(f"a {schedule} stage process died ({exc}); the other stages "
                               "were stopped. Resume from checkpoint_dir with resume=True"
                               ) from None
        extras = []
        for k in range(world):
            state = torch.load(os.path.join(tmp, f"final{k}.pt"), weights_only=True)
            _load_stage_state(stages, k, state)
            extras.append(state.get("extra"))
        records = [json.loads(Path(tmp, f"history{k}.json").read_text()) for k in range(world)]
    return {**_merge(schedule, records), "extras": extras}


def _in_torchrun(schedule: str, stages: Stages, body, cfg: BossConfig,
                 extra: tuple) -> dict[str, Any]:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world != len(stages):
        raise ValueError(f"{schedule}: torchrun started {world} processes for {len(stages)} "
                         f"stages; start one process per stage (--nnodes x --nproc-per-node = "
                         f"{len(stages)})")
    local = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device("cuda", local) if cfg.device == "cuda" else torch.device("cpu")
    owns_group = not dist.is_initialized()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)  # for this call only: put back below
    try:
        if owns_group:
            _init_group(rank, world, device, cfg, "env://")
        elif dist.get_world_size() != world or dist.get_rank() != rank:
            raise ValueError("the default process group does not match RANK/WORLD_SIZE")
        try:
            out = body(rank, world, stages, cfg, device, *extra)
            module, head, history, loader = out[:4]
            record: dict[str, Any] = {"history": history}
            if loader is not None:
                record["loader_telemetry"] = finish_loader(loader)
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, (_stage_state(module, head, out[4] if len(out) > 4
                                                           else None), record))
        finally:
            if owns_group:
                dist.destroy_process_group()
    finally:
        torch.set_num_threads(threads)
    for k, (state, _record) in enumerate(gathered):
        _load_stage_state(stages, k, state)
    return {**_merge(schedule, [r for _s, r in gathered]), "rank": rank,
            "extras": [state.get("extra") for state, _r in gathered]}


def run_stage_processes(schedule: str, stages: Stages, body, cfg: BossConfig,
                        *extra: Any) -> dict[str, Any]:
    """Train ``stages`` with one process per stage; ``stages`` comes back trained, in place."""
    if len(stages) < 2:
        raise ValueError(f"{schedule} needs at least 2 stages (cut the model with cuts=[...])")
    launcher = cfg.launcher
    if launcher == "auto":
        launcher = "torchrun" if under_torchrun() else "spawn"
    if launcher == "torchrun":
        if not under_torchrun():
            raise RuntimeError(f"launcher='torchrun' but {', '.join(TORCHRUN_VARS)} are not all "
                               "set: start the script with torchrun (see docs), or use "
                               "launcher='spawn'")
        return _in_torchrun(schedule, stages, body, cfg, extra)
    return _spawn(schedule, stages, body, cfg, extra)
