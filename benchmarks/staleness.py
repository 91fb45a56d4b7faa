"""What stale losses cost the proportional keep rule, and whether memory and age can win it back.

    python -m benchmarks.staleness [--task keel_magic] [--seeds 3] [--epochs 30] [--quick]

Trains the rule on each instance's last training loss (``autoassist.bench.staleness``) at the
frontier's ⅔E budget for ``aa_prop033`` (30 epochs on magic, LR 0.2, the validation split held
out as the frontier holds it), and before each shrinking epoch rates candidate scores by the
sampling variance they leave against the Boss's current losses (1 = as good as fresh losses).
Writes ``benchmarks/results/staleness[_quick].json`` and ``.png``; the last stdout line is one
JSON object: each candidate's mean efficiency over shrinking epochs and seeds.
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("OMP_NUM_THREADS", "1")  # as the frontier sets it, before torch loads

import torch  # noqa: E402

from autoassist.bench.frontier import split_validation  # noqa: E402
from autoassist.bench.staleness import StalenessProbe  # noqa: E402
from autoassist.bench.tasks import get_task  # noqa: E402
from autoassist.bench.time_to_accuracy import run_one  # noqa: E402
from autoassist.plotting import subplots  # noqa: E402
from benchmarks._common import git_commit, machine_info, thread_info, write_result  # noqa: E402


def _plot(per_epoch: dict[str, list[float]], epochs: list[int], title: str):
    def plot(path):
        made = subplots(figsize=(7.5, 4.5))
        if made is None:
            return None
        fig, ax = made
        for name, values in per_epoch.items():
            ax.plot(epochs, values, label=name, lw=2 if name == "stale" else 1)
        ax.set_xlabel("epoch")
        ax.set_ylabel("efficiency against current losses")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        return path
    return plot


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="keel_magic")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.2, help="the frontier's (magic, quick)")
    ap.add_argument("--quick", action="store_true", help="1 seed, 10 epochs")
    args = ap.parse_args(argv)
    seeds, epochs = (1, 10) if args.quick else (args.seeds, args.epochs)
    commit = git_commit()
    task = get_task(args.task)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train, test = task.load(None)
        fit, _ = split_validation(train)
        records = [run_one(task, "staleness_probe", fit, test, seed=s, lr=args.lr,
                           epochs=epochs, runner=StalenessProbe, log=lambda _m: None)
                   for s in range(seeds)]
    finally:
        torch.set_num_threads(previous)
    probes = [r["probe"] for r in records]
    names = list(probes[0][0]["efficiency"])
    shrink_epochs = [p["epoch"] for p in probes[0]]
    per_epoch = {k: [statistics.fmean(seed[i]["efficiency"][k] for seed in probes)
                     for i in range(len(shrink_epochs))] for k in names}
    per_seed = {k: [statistics.fmean(p["efficiency"][k] for p in seed) for seed in probes]
                for k in names}
    summary = {k: {"mean": statistics.fmean(v), "min_seed": min(v), "max_seed": max(v)}
               for k, v in per_seed.items()}
    for k, v in summary.items():
        print(f"{k:>26}: {v['mean']:.3f}  (seeds {v['min_seed']:.3f} .. {v['max_seed']:.3f})")
    name = "staleness_quick" if args.quick else "staleness"
    result = {
        "benchmark": "staleness", "task": task.name, "seeds": seeds, "epochs": epochs,
        "lr": args.lr, "keep": 1 / 3, "floor": 0.1, "summary": summary,
        "per_epoch": per_epoch, "shrink_epochs": shrink_epochs,
        "final_accuracy": [r["accuracy"][-1] for r in records],
        "seen_last_epoch": [statistics.fmean(p["seen_last_epoch"] for p in seed)
                            for seed in probes],
        "probes": probes, "commit": commit, "machine": machine_info(),
        "threads": thread_info(), "quick": args.quick,
    }
    headline = {"task": task.name, **{k: round(v["mean"], 4) for k, v in summary.items()}}
    title = (f"{task.name}: proportional rule (keep 1/3, floor 0.1) on stale losses, "
             f"{seeds} seeds, {epochs} epochs, mean over seeds")
    write_result(name, result, headline, plot=_plot(per_epoch, shrink_epochs, title))
    return result


if __name__ == "__main__":
    main()
