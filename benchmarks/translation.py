"""Time to uniform's final BLEU: stock fairseq translation vs the autoassist plugin, same run.

    python -m benchmarks.translation [--quick] [--train-pairs N] [--epochs E] [--seeds S]

Both methods train the same small transformer with stock ``fairseq-train`` on the same bible.db
corpus (German Elberfelder -> World English Bible, split by book), the same budget, seed and
threads; uniform uses ``--task translation``, autoassist adds ``--user-dir`` and the plugin's
task and criterion. Wall-clock per epoch is measured in the fairseq process (validation off);
BLEU on the valid books is computed afterwards from each epoch's checkpoint (greedy, outside the
clock), test BLEU from the last checkpoint. Writes ``benchmarks/results/translation.{json,png,md}``;
the last stdout line is JSON with ``bleu_uniform``, ``bleu_autoassist`` and ``saving``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from tqdm import tqdm

from autoassist.bench import fairseq_runs as fr
from autoassist.bench.training import accuracy_at, saving, time_to_target
from autoassist.bench.translation_corpus import CorpusSpec, prepare_corpus
from autoassist.cli import fairseq_user_dir
from autoassist.plotting import subplots
from benchmarks._common import RESULTS, git_commit, machine_info, thread_info

AUTOASSIST = ["--aa-floor", "0.3", "--aa-reweight", "--aa-warmup-epochs", "1",
              "--aa-anneal-epochs", "1"]  # the recommended settings (issue 5's harness)


def benchmark_corpus(work: Path, src: str, tgt: str, train_pairs: int,
                     quick: bool) -> tuple[Path, Path]:
    """The benchmark's bible.db corpus under ``work`` (reused when prepared): its folder and
    its ``data-bin``."""
    spec = CorpusSpec(src=src, tgt=tgt, train_pairs=train_pairs, max_words=40,
                      valid_pairs=200 if quick else 400, vocab_size=2000 if quick else 4000)
    corpus = work / f"corpus-{src}-{tgt}-{train_pairs}"
    print(f"preparing {corpus} ...", flush=True)
    return corpus, prepare_corpus(corpus, spec)


def method_args(method: str) -> list[str]:
    if method == "uniform":
        return list(fr.UNIFORM)
    return [*fr.PLUGIN, "--user-dir", fairseq_user_dir(), *AUTOASSIST]


def run_method(method: str, seed: int, data_bin: Path, work: Path, args) -> dict:
    save = work / f"{method}-seed{seed}"
    for old in save.glob("checkpoint*.pt"):
        old.unlink()
    train = fr.train(data_bin, save,
                     [*method_args(method), *fr.model_args(),
                      *fr.train_args(args.epochs, seed=seed, warmup=args.warmup)],
                     threads=args.threads, echo=lambda line: tqdm.write(f"  {line[-150:]}"))
    seconds = train["epoch_seconds"]
    bleus = [fr.bleu(data_bin, save / f"checkpoint{e}.pt", threads=args.threads)
             for e in tqdm(range(1, len(seconds) + 1), desc=f"{method} valid BLEU",
                           leave=False)]
    kept = [line.split(" kept ")[1].split("%")[0] for line in train["log"].splitlines()
            if "autoassist: epoch" in line and " kept " in line]
    return {
        "method": method, "seed": seed, "epoch_seconds": seconds, "valid_bleu": bleus,
        "test_bleu": fr.bleu(data_bin, save / f"checkpoint{len(seconds)}.pt", subset="test",
                             beam=4, threads=args.threads),
        "kept_percent": [float(k) for k in kept] or [100.0] * len(seconds),
    }


BLEU_TOLERANCE = 0.5  # about the epoch-to-epoch wobble of greedy valid BLEU on 388 verses


def summarize(runs: list[dict], tolerance: float = BLEU_TOLERANCE) -> dict:
    """Per seed: uniform's final valid BLEU is the target; autoassist's saving to reach it, to
    reach it less ``tolerance`` (uniform's own time to that lower target too), and both methods'
    BLEU after half of uniform's training seconds (the equal-time reading of the same curves).
    A seed where autoassist never reaches a target counts as no saving."""
    by_seed: dict[int, dict[str, dict]] = {}
    for r in runs:
        by_seed.setdefault(r["seed"], {})[r["method"]] = r
    savings, savings_tol, reached, reached_tol = [], [], 0, 0
    for pair in by_seed.values():
        u, a = pair["uniform"], pair["autoassist"]
        target = u["valid_bleu"][-1]
        t_u = time_to_target(u["epoch_seconds"], u["valid_bleu"], target)
        t_a = time_to_target(a["epoch_seconds"], a["valid_bleu"], target)
        s = saving(t_a, t_u)
        s_tol = saving(time_to_target(a["epoch_seconds"], a["valid_bleu"], target - tolerance),
                       time_to_target(u["epoch_seconds"], u["valid_bleu"], target - tolerance))
        a["target_bleu"], a["time_to_target"], a["saving"] = target, t_a, s
        u["target_bleu"], u["time_to_target"], u["saving"] = target, t_u, 0.0
        a["saving_tol"], u["saving_tol"] = s_tol, 0.0
        half = u["epoch_seconds"][-1] / 2
        for r in (u, a):
            r["bleu_at_half_time"] = accuracy_at(r["epoch_seconds"], r["valid_bleu"], half)
        reached += s is not None
        reached_tol += s_tol is not None
        savings.append(s if s is not None else 0.0)  # never reaching the target saves nothing
        savings_tol.append(s_tol if s_tol is not None else 0.0)
    mean = statistics.fmean

    def final(method, key):
        return mean(r[key][-1] if isinstance(r[key], list) else r[key]
                    for r in runs if r["method"] == method)

    def at_half(method):
        values = [r["bleu_at_half_time"] for r in runs
                  if r["method"] == method and r["bleu_at_half_time"] is not None]
        return mean(values) if values else None

    return {
        "saving": mean(savings), "reached": reached, "seeds": len(by_seed),
        "saving_within_tolerance": mean(savings_tol), "reached_within_tolerance": reached_tol,
        "tolerance_bleu": tolerance,
        "bleu_uniform": final("uniform", "valid_bleu"),
        "bleu_autoassist": final("autoassist", "valid_bleu"),
        "bleu_at_half_time_uniform": at_half("uniform"),
        "bleu_at_half_time_autoassist": at_half("autoassist"),
        "test_bleu_uniform": final("uniform", "test_bleu"),
        "test_bleu_autoassist": final("autoassist", "test_bleu"),
        "seconds_uniform": final("uniform", "epoch_seconds"),
        "seconds_autoassist": final("autoassist", "epoch_seconds"),
    }


def markdown(runs: list[dict], command: str, tolerance: float = BLEU_TOLERANCE) -> str:
    rows = ["| method | seed | valid BLEU per epoch | final valid BLEU | test BLEU (beam 4) | "
            "training s | time to uniform's final BLEU (s) | saving "
            f"| saving to final − {tolerance:g} | BLEU at ½ uniform's time | kept % per epoch |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        t = r.get("time_to_target")
        half = r.get("bleu_at_half_time")
        rows.append(
            f"| {r['method']} | {r['seed']} | {' '.join(f'{b:.1f}' for b in r['valid_bleu'])} "
            f"| {r['valid_bleu'][-1]:.2f} | {r['test_bleu']:.2f} | {r['epoch_seconds'][-1]:.0f} "
            f"| {'never' if t is None else f'{t:.0f}'} "
            f"| {_percent(r.get('saving'))} | {_percent(r.get('saving_tol'))} "
            f"| {'-' if half is None else f'{half:.2f}'} "
            f"| {' '.join(f'{k:.0f}' for k in r['kept_percent'])} |")
    return f"`{command}`\n\n" + "\n".join(rows) + "\n"


def _percent(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def plot(runs: list[dict], path: Path) -> Path | None:
    made = subplots(figsize=(6.4, 4.2))
    if made is None:  # no matplotlib: the JSON is the result
        return None
    fig, ax = made
    for r in runs:
        ax.plot(r["epoch_seconds"], r["valid_bleu"], marker="o", ms=3,
                color="black" if r["method"] == "uniform" else "tab:red",
                ls=("-", "--", ":", "-.")[(r["seed"] - 1) % 4],
                label=f"{r['method']} (seed {r['seed']})")
        if r["method"] == "uniform":
            ax.axhline(r["valid_bleu"][-1], ls="--", lw=0.8, color="grey")
    ax.set_xlabel("training wall-clock (s, validation excluded)")
    ax.set_ylabel("valid BLEU (greedy)")
    ax.set_title("fairseq transformer, bible.db de->en: uniform vs autoassist")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.translation",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small corpus, 4 epochs (<= 5 min)")
    p.add_argument("--train-pairs", type=int, default=None,
                   help="training verses (default 10000; quick 2000)")
    p.add_argument("--epochs", type=int, default=None, help="epoch budget (default 10; quick 4)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch threads of each fairseq run")
    p.add_argument("--src", default="de")
    p.add_argument("--tgt", default="en")
    p.add_argument("--name", default=None,
                   help="results file stem (default translation, translation_quick)")
    p.add_argument("--workdir", default="runs/translation",
                   help="corpus and checkpoints (reused between runs)")
    args = p.parse_args(argv)
    commit = git_commit()  # the code this run loads (a later commit may land meanwhile)
    args.train_pairs = args.train_pairs or (2000 if args.quick else 10000)
    args.epochs = args.epochs or (4 if args.quick else 10)
    args.warmup = 50 if args.quick else 200  # inverse-sqrt warm-up updates
    work = Path(args.workdir)
    corpus, data_bin = benchmark_corpus(work, args.src, args.tgt, args.train_pairs, args.quick)
    runs = []
    for seed in range(1, args.seeds + 1):
        for method in ("uniform", "autoassist"):
            tqdm.write(f"{method}, seed {seed}: {args.epochs} epochs on {args.train_pairs} pairs")
            runs.append(run_method(method, seed, data_bin, work, args))
    summary = summarize(runs)
    name = args.name or ("translation_quick" if args.quick else "translation")
    command = "python -m benchmarks." + " ".join(["translation", *(argv if argv is not None
                                                                   else sys.argv[1:])])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(markdown(runs, command))
    png = plot(runs, RESULTS / f"{name}.png")
    result = {
        "benchmark": name, "command": command, "commit": commit,
        "machine": machine_info(), "threads": {**thread_info(), "fairseq_threads": args.threads},
        "corpus": json.loads((corpus / "corpus.json").read_text()),
        "model": fr.model_args(), "train": fr.train_args(args.epochs, warmup=args.warmup),
        "autoassist": AUTOASSIST, "runs": runs, "summary": summary,
        "plot": None if png is None else png.name,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    headline = {k: summary[k] for k in ("bleu_uniform", "bleu_autoassist", "saving", "reached",
                                        "saving_within_tolerance", "bleu_at_half_time_uniform",
                                        "bleu_at_half_time_autoassist", "test_bleu_uniform",
                                        "test_bleu_autoassist")}
    print(json.dumps(headline), flush=True)
    return result


if __name__ == "__main__":
    main()
