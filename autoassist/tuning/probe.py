"""One probe of ``autoassist tune``: run the user's training job once, in its own process.

The job is ``module:function`` or ``path/to/file.py:function``, called as
``job(config=..., epochs=..., seed=...)``. ``config`` is a ``ShrinkConfig`` (pass it to
``autoassist.wrap(loader, config=config)``) or ``None`` for the uniform baseline (the plain
loader). It trains for ``epochs`` and returns its evaluations, one per evaluation point:

- an ``autoassist.bench.training.Curve``, or
- a dict of equal-length lists ``{"seconds": [...], "metric": [...], "instances": [...]}``
  (training wall-clock so far, the validation metric, instances trained on so far), or
- a list of dicts ``{"seconds": s, "metric": m, "instances": n}``.

Each probe is a fresh process: honest timings, no state leaking between probes, and a crashing
job fails one probe instead of the tune. ``python -m autoassist.tuning.probe`` is that process.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoassist.errors import UsageError, UsageFileNotFoundError


def load_job(spec: str) -> Callable[..., Any]:
    """The function named by ``module:function`` or ``file.py:function``.

    A name that leads nowhere raises a ``UsageError`` (``UsageFileNotFoundError`` for a missing
    file) that says how to name the job; an error raised by the job's own module while it is
    imported is the job's, and comes through as it is.
    """
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise UsageError(f"job {spec!r}: name it as module:function or path/to/file.py:function")
    where, name = spec.split(":")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise UsageFileNotFoundError(f"job {spec!r}: file {path} does not exist")
        module_name = f"autoassist_tune_job_{path.stem}"
        loaded = importlib.util.spec_from_file_location(module_name, path.resolve())
        module = importlib.util.module_from_spec(loaded)
        sys.modules[module_name] = module
        loaded.loader.exec_module(module)
    else:
        if str(Path.cwd()) not in sys.path and "" not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (where == exc.name or where.startswith(exc.name + ".")):
                raise  # a module the job imports is missing: the job's error, traced
            raise UsageError(f"job {spec!r}: cannot import module {where!r} ({exc}); run from "
                             "the folder that holds it, or name the file: path/to/file.py:"
                             f"{name}") from None
    job = getattr(module, name, None)
    if job is None:
        raise UsageError(f"job {spec!r}: {where} has no function {name!r}")
    if not callable(job):
        raise UsageError(f"job {spec!r}: {name} is not callable")
    return job


def normalise(result: Any) -> dict[str, list[float]]:
    """The job's evaluations as ``{"seconds", "metric", "instances"}`` lists, validated."""
    if hasattr(result, "train_seconds") and hasattr(result, "accuracy"):
        curve = {"seconds": list(result.train_seconds), "metric": list(result.accuracy),
                 "instances": list(getattr(result, "instances", []) or [])}
    elif isinstance(result, dict):
        curve = {k: list(result.get(k, []) or []) for k in ("seconds", "metric", "instances")}
    elif isinstance(result, (list, tuple)) and all(isinstance(p, dict) for p in result):
        curve = {k: [p.get(k) for p in result] for k in ("seconds", "metric", "instances")}
        if all(v is None for v in curve["instances"]):
            curve["instances"] = []
    else:
        raise TypeError(f"the job returned {type(result).__name__}: return a Curve, a dict of "
                        "lists {seconds, metric, instances} or a list of such dicts")
    n = len(curve["metric"])
    if n == 0:
        raise ValueError("the job returned no evaluations: evaluate at least once (after each "
                         "epoch is best)")
    if len(curve["seconds"]) != n or (curve["instances"] and len(curve["instances"]) != n):
        raise ValueError(f"the job's lists differ in length: {n} metrics, "
                         f"{len(curve['seconds'])} seconds, {len(curve['instances'])} instances")
    for key in ("seconds", "metric", "instances"):
        values = [float(v) for v in curve[key]]
        if any(not math.isfinite(v) for v in values):
            raise ValueError(f"the job reported a non-finite {key}: {values}")
        curve[key] = values
    if any(b < a for a, b in zip(curve["seconds"], curve["seconds"][1:], strict=False)):
        raise ValueError("the job's seconds must be cumulative (never decreasing)")
    return curve


def run_probe(job_spec: str, config: dict[str, Any] | None, epochs: int, seed: int
              ) -> dict[str, list[float]]:
    from autoassist.config import ShrinkConfig

    job = load_job(job_spec)
    cfg = None if config is None else ShrinkConfig.from_dict(config)
    return normalise(job(config=cfg, epochs=epochs, seed=seed))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="run one autoassist tune probe")
    p.add_argument("--job", required=True)
    p.add_argument("--config", required=True, help="ShrinkConfig as JSON, or 'null' (uniform)")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--threads", type=int, default=None, help="torch threads in this process")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # this probe process is ours
    curve = run_probe(args.job, json.loads(args.config), args.epochs, args.seed)
    Path(args.out).write_text(json.dumps(curve))
    return 0


if __name__ == "__main__":
    sys.exit(main())
