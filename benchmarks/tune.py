"""Does ``autoassist tune`` pay off? Tune the Fashion-MNIST job, then check on fresh seeds.

    python -m benchmarks.tune [--quick]

1. ``autoassist.tune`` on ``examples/tune/fashion_mnist_job.py:job`` (successive halving,
   objective: time to the uniform baseline's final validation accuracy).
2. On seeds the tune never saw, at the full budget: uniform, the library's default settings and
   the tuned settings, one after another in the same run. Each run's time to its seed's uniform
   final accuracy gives the saving ``1 - t / t_uniform`` (a run that never gets there saves 0).

Last stdout line: JSON with ``saving_tuned``, ``saving_default`` (means over the fresh seeds),
``tuned`` (the chosen settings) and the tune's cost (probes, seconds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from autoassist.plotting import subplots
from benchmarks._common import (
    RESULTS,
    git_commit,
    machine_info,
    thread_info,
    write_result,
)

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "examples" / "tune" / "fashion_mnist_job.py"


def _job():
    sys.path.insert(0, str(JOB.parent))
    from fashion_mnist_job import job

    return job


def _first(run: dict, target: float) -> float | None:
    """Training seconds when ``run`` first reaches ``target`` (None: never)."""
    return next((s for s, a in zip(run["seconds"], run["accuracy"], strict=True)
                 if a >= target), None)


def plot(validation: dict, path: Path) -> Path | None:
    seeds = sorted({r["seed"] for rs in validation.values() for r in rs})
    made = subplots(1, len(seeds), figsize=(5.5 * len(seeds), 4), squeeze=False)
    if made is None:  # no matplotlib: the JSON is the result
        return None
    fig, axes = made
    colors = {"uniform": "k", "default": "tab:blue", "tuned": "tab:red"}
    for ax, seed in zip(axes[0], seeds, strict=True):
        for name, runs in validation.items():
            r = next(r for r in runs if r["seed"] == seed)
            ax.plot(r["seconds"], r["accuracy"], marker="o", color=colors[name], label=name)
        ax.set_title(f"fresh seed {seed}")
        ax.set_xlabel("training seconds")
        ax.set_ylabel("validation accuracy")
        ax.legend(loc="lower right")
    fig.suptitle("benchmarks.tune: uniform vs default vs tuned settings, on unseen seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tune",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="4,000 images, 4 candidates, 2 -> 4 epochs, 1 fresh seed (~5 min)")
    p.add_argument("--images", type=int, default=12_000)
    p.add_argument("--candidates", type=int, default=9)
    p.add_argument("--min-epochs", type=int, default=2)
    p.add_argument("--max-epochs", type=int, default=6)
    p.add_argument("--fresh-seeds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", type=int, default=1, help="tune probes per candidate and budget")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="the tune's target: uniform's final accuracy less this")
    p.add_argument("--workdir", default="runs/tune", help="the tune's folder (its probe log)")
    args = p.parse_args(argv)
    commit = git_commit()  # the code this run loads (a later commit may land meanwhile)
    if args.quick:
        args.images, args.candidates, args.min_epochs, args.max_epochs = 4000, 4, 2, 4
        args.fresh_seeds = 1
    from autoassist.config import ShrinkConfig
    from autoassist.tuning import tune

    os.environ["FMNIST_TUNE_IMAGES"] = str(args.images)  # read by the job in each probe
    name = "tune_quick" if args.quick else "tune"
    start = time.perf_counter()
    result = tune(f"{JOB}:job", None, candidates_n=args.candidates, min_epochs=args.min_epochs,
                  max_epochs=args.max_epochs, factor=3, threads=args.threads, seed=0,
                  seeds=args.seeds, tolerance=args.tolerance,
                  out=Path(args.workdir) / name)
    tune_seconds = time.perf_counter() - start
    print(f"tuned: {result.params} ({result.headline['probes']} probes, {tune_seconds:.0f} s)")

    job = _job()
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # this benchmark process's own setting
    try:
        configs = {"uniform": None, "default": ShrinkConfig(),
                   "tuned": result.config}
        validation: dict[str, list[dict]] = {k: [] for k in configs}
        for seed in range(1000, 1000 + args.fresh_seeds):  # never seen by the tune (seed 0)
            for label, cfg in configs.items():
                curve = job(cfg, args.max_epochs, seed, images=args.images, progress=True)
                validation[label].append({"seed": seed, "seconds": curve.train_seconds,
                                          "accuracy": curve.accuracy,
                                          "instances": curve.instances})
                print(f"  seed {seed} {label:<8} final {curve.accuracy[-1]:.4f} in "
                      f"{curve.train_seconds[-1]:.1f} s, {curve.instances[-1]} instances")
    finally:
        torch.set_num_threads(threads)
    savings: dict[str, list[float]] = {"default": [], "tuned": []}
    near: dict[str, list[float]] = {"default": [], "tuned": []}  # within 0.002 of uniform
    for i, base in enumerate(validation["uniform"]):
        for out, slack in ((savings, 0.0), (near, 0.002)):
            target = base["accuracy"][-1] - slack
            t_uniform = _first(base, target)
            for label in out:
                t = _first(validation[label][i], target)
                out[label].append(0.0 if t is None else 1.0 - t / t_uniform)
    RESULTS.mkdir(parents=True, exist_ok=True)
    headline = {
        "saving_tuned": statistics.mean(savings["tuned"]),
        "saving_default": statistics.mean(savings["default"]),
        "saving_tuned_within_0.002": statistics.mean(near["tuned"]),
        "saving_default_within_0.002": statistics.mean(near["default"]),
        "tuned": result.params, "tune_beats_uniform_in_probes": result.beats_uniform,
        "probes": result.headline["probes"], "tune_seconds": round(tune_seconds, 1),
        "fresh_seeds": args.fresh_seeds, "images": args.images, "epochs": args.max_epochs,
    }
    out = {**headline, "savings": savings, "savings_within_0.002": near,
           "validation": validation,
           "tune": result.headline, "rungs_table": (result.out / "tune.md").read_text(),
           "commit": commit,
           "machine": machine_info(), "threads": {**thread_info(), "set": args.threads}}
    write_result(name, out, headline, lambda path: plot(validation, path))
    return out


if __name__ == "__main__":
    main()
