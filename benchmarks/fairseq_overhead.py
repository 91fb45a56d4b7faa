"""The fairseq plugin's own cost: stock ``fairseq-train`` vs the plugin keeping everything.

    python -m benchmarks.fairseq_overhead [--quick] [--rounds 2] [--epochs 2]

Both train the translation benchmark's transformer on its bible.db de-en corpus (its ``Setup``:
the full one, or ``--quick``'s), same seed and threads; runs alternate (uniform, plugin,
uniform, ...) so machine noise hits both alike. The plugin runs with ``--aa-floor 1.0``: nothing
is shrunk, but every sentence's loss is still computed per sentence, reported and learnt from by
the Assistant process, and each epoch's batches are built by the plugin; so any difference is
the plugin's cost. Epoch 1 also holds fairseq's data loading and the Assistant's start;
``steady_ratio`` leaves it out. Last stdout line: JSON with ``epoch_ratio`` = plugin / uniform
seconds per epoch (median over rounds) and ``steady_ratio``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from tqdm import tqdm

from autoassist.bench import fairseq_runs as fr
from autoassist.cli import fairseq_user_dir
from benchmarks._common import git_commit, machine_info, thread_info, write_result
from benchmarks.translation import FULL, QUICK, model_args, prepare, run_dir

ARMS = ("uniform", "plugin_keep_all")


def arm_args(arm: str) -> list[str]:
    if arm == "uniform":
        return list(fr.UNIFORM)
    return [*fr.PLUGIN, "--user-dir", fairseq_user_dir(), "--aa-floor", "1.0"]


def per_epoch(seconds: list[float]) -> list[float]:
    """Each epoch's own seconds from the cumulative clock."""
    return [b - a for a, b in zip([0.0, *seconds[:-1]], seconds, strict=True)]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="the translation benchmark's quick corpus and model, 1 round (< 5 min)")
    ap.add_argument("--rounds", type=int, default=None, help="alternating pairs (default 2)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per run")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of each run (default: the translation benchmark's, 1: "
                         "the Assistant gets the other core of a 2-core machine)")
    ap.add_argument("--workdir", default="runs/translation_converged",
                    help="corpus and checkpoints (the corpus is shared with "
                         "benchmarks.translation)")
    args = ap.parse_args(argv)
    commit = git_commit()
    rounds = args.rounds or (1 if args.quick else 2)
    setup = QUICK if args.quick else FULL
    threads = args.threads or setup.threads
    work = Path(args.workdir)
    data_bin, _spec = prepare("de-en", setup, work)
    seconds: dict[str, list[list[float]]] = {arm: [] for arm in ARMS}
    bar = tqdm(total=rounds * len(ARMS), desc="fairseq overhead")
    for r in range(rounds):
        for arm in ARMS:
            save = run_dir("de-en", f"overhead-{arm}", 1, setup, work)
            for old in save.glob("checkpoint*.pt"):
                old.unlink()
            run = fr.train(data_bin, save,
                           [*arm_args(arm), *model_args(setup),
                            *fr.train_args(args.epochs, lr=setup.lr, max_tokens=setup.max_tokens,
                                           seed=1, warmup=setup.warmup)],
                           threads=threads)
            seconds[arm].append(per_epoch(run["epoch_seconds"]))
            tqdm.write(f"round {r + 1}/{rounds} {arm}: epoch seconds "
                       f"{[round(s, 1) for s in seconds[arm][-1]]}")
            bar.update(1)
    bar.close()

    def median_epoch(arm: str, skip_first: bool) -> float:
        return statistics.median(s for run in seconds[arm] for s in run[skip_first:])

    ratio = median_epoch("plugin_keep_all", False) / median_epoch("uniform", False)
    steady = (median_epoch("plugin_keep_all", True) / median_epoch("uniform", True)
              if args.epochs > 1 else None)
    result = {
        "benchmark": "fairseq_overhead", "epoch_ratio": ratio, "steady_ratio": steady,
        "epoch_seconds": seconds, "rounds": rounds, "epochs": args.epochs,
        "train_pairs": setup.train_pairs, "model": model_args(setup), "quick": args.quick,
        "setup_key": setup.key(), "threads": {**thread_info(), "fairseq_threads": threads},
        "commit": commit, "machine": machine_info(),
    }
    headline = {"epoch_ratio": ratio, "steady_ratio": steady, "rounds": rounds,
                "epochs": args.epochs, "quick": args.quick}
    write_result("fairseq_overhead" + ("_quick" if args.quick else ""), result, headline)
    return result


if __name__ == "__main__":
    main()
