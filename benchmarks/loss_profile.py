"""How concentrated the training loss is where uniform training peaks: what a loss-based keep
rule can skip, per task.

    python -m benchmarks.loss_profile [--tasks keel_magic,fashion_mnist]
        [--translation-pairs de-en,es-en] [--translation-seeds 1]
        [--workdir runs/translation_converged]

Classification tasks: uniform trained with the frontier harness's loop at the setting its quick
frontier chose (``--epochs``/``--lr`` override), then every training instance's loss.
Translation: the best checkpoint (by valid BLEU) of each stored uniform run of
``python -m benchmarks.translation`` found under ``--workdir``, every training pair's per-token
NLL and label-smoothed loss (the latter is what the plugin reports); a pair whose checkpoint is
gone is named and skipped. Readings per source (``autoassist.bench.loss_profile.profile``):
``easy_half_share`` (the share of the total loss carried by the lower-loss half; 0.5 for equal
losses), ``below_mean_share``, quantiles and the Lorenz curve. Writes
``benchmarks/results/loss_profile.json`` and a plot of the Lorenz curves; the last stdout line
is JSON ``{source: easy_half_share}``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Before torch loads: one OpenMP thread (see benchmarks.frontier).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from autoassist.plotting import subplots  # noqa: E402
from benchmarks._common import git_commit, machine_info, thread_info, write_result  # noqa: E402

# the quick frontiers' settings (E, LR chosen on the validation split): docs/results.md §0
CLASSIFIERS = {"keel_magic": (15, 0.2), "fashion_mnist": (6, 0.05), "adult": (8, 0.2)}


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loss_profile",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="keel_magic,fashion_mnist",
                   help=f"classification tasks, from {','.join(CLASSIFIERS)} ('' for none)")
    p.add_argument("--epochs", type=int, default=None, help="override each task's budget")
    p.add_argument("--lr", type=float, default=None, help="override each task's LR")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--translation-pairs", default="de-en,es-en", help="'' for none")
    p.add_argument("--translation-seeds", type=int, default=1, help="seeds 1..N")
    p.add_argument("--workdir", default="runs/translation_converged",
                   help="the translation benchmark's --workdir (its checkpoints)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--name", default="loss_profile")
    args = p.parse_args(argv)
    args.tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in args.tasks if t not in CLASSIFIERS]
    if unknown:
        p.error(f"--tasks {','.join(unknown)}: use tasks from {','.join(CLASSIFIERS)}")
    args.translation_pairs = [t for t in args.translation_pairs.split(",") if t]
    return args


def translation_sources(pairs: list[str], seeds: int, workdir: Path):
    """``(name, data_bin, checkpoint)`` of each stored uniform run's best checkpoint, and the
    names of those whose files are gone."""
    from benchmarks.translation import PAIRS, Setup, corpus_dir, run_dir

    setup, found, missing = Setup(), [], []
    for pair in pairs:
        if pair not in PAIRS:
            raise SystemExit(f"--translation-pairs {pair}: use pairs from {','.join(PAIRS)}")
        corpus = corpus_dir(pair, setup, workdir) / "data-bin"
        for seed in range(1, seeds + 1):
            checkpoint = run_dir(pair, "uniform", seed, setup, workdir) / "checkpoint_best.pt"
            name = f"{pair} seed {seed}"
            (found.append((name, corpus, checkpoint)) if checkpoint.is_file() and corpus.is_dir()
             else missing.append(name))
    return found, missing


def plot(profiles: dict, path: Path) -> Path | None:
    made = subplots(figsize=(6.4, 4.6))
    if made is None:
        return None
    fig, ax = made
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="every loss equal")
    for name, p in profiles.items():
        ax.plot(p["lorenz_q"], p["lorenz_share"], marker="o", ms=2.5,
                label=f"{name} (lower half: {p['easy_half_share']:.1%})")
    ax.set_xlabel("fraction of training instances, lowest loss first")
    ax.set_ylabel("their share of the total training loss")
    ax.set_title("where uniform training peaks: how concentrated the loss is")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None) -> dict:
    import torch

    from autoassist.bench.loss_profile import classifier_losses, profile, translation_losses

    args = parse_args(argv)
    commit = git_commit()
    profiles: dict[str, dict] = {}
    runs: dict[str, dict] = {}
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        for task in args.tasks:
            epochs, lr = CLASSIFIERS[task]
            epochs, lr = args.epochs or epochs, args.lr or lr
            print(f"{task}: uniform, {epochs} epochs, LR {lr:g}, seed {args.seed} ...",
                  flush=True)
            losses, record = classifier_losses(task, epochs=epochs, lr=lr, seed=args.seed,
                                               progress=sys.stderr.isatty())
            profiles[task] = profile(losses)
            runs[task] = {"epochs": epochs, "lr": lr, "seed": args.seed,
                          "test_accuracy": record["accuracy"][-1],
                          "loss": "cross entropy, eval mode"}
    finally:
        torch.set_num_threads(previous)
    found, missing = translation_sources(args.translation_pairs, args.translation_seeds,
                                         Path(args.workdir))
    for name in missing:
        print(f"{name}: no stored uniform checkpoint under {args.workdir}, skipped "
              "(python -m benchmarks.translation trains it)", flush=True)
    for name, data_bin, checkpoint in found:
        print(f"{name}: per-pair losses of {checkpoint.parent.name}'s best checkpoint ...",
              flush=True)
        losses = translation_losses(data_bin, checkpoint, threads=args.threads)
        profiles[f"{name}, NLL per token"] = profile(losses["nll"])
        profiles[f"{name}, label-smoothed per token (the plugin's)"] = profile(
            losses["smoothed"])
        runs[name] = {"checkpoint": f"{checkpoint.parent.name}/{checkpoint.name}",
                      "loss": "per-token mean over each pair's target, eval mode, nats"}
    if not profiles:
        raise SystemExit("nothing to profile: give --tasks, or train the translation runs first")
    result = {"benchmark": args.name, "command": "python -m benchmarks.loss_profile "
              + " ".join(argv if argv is not None else sys.argv[1:]),
              "commit": commit, "machine": machine_info(),
              "threads": dict(thread_info(), torch_threads=args.threads),
              "runs": runs, "missing": missing, "profiles": profiles}
    write_result(args.name, result,
                 headline={k: round(p["easy_half_share"], 4) for k, p in profiles.items()},
                 plot=lambda path: plot(profiles, path))
    return result


if __name__ == "__main__":
    main()
