"""Time to uniform's best BLEU when uniform trains to a plateau: stock fairseq vs the plugin.

    python -m benchmarks.translation [--quick] [--pairs de-en,es-en] [--seeds 2]
        [--max-epochs E] [--patience 5] [--min-gain 0.2] [--bleu-every 1] [--threads 1]

The regime fairseq users train in: Adam, inverse-sqrt with warm-up, label smoothing 0.1,
dropout, stock ``--eval-bleu`` validation (greedy) every ``--bleu-every`` epochs, and training
until validation BLEU has plateaued (less than ``--min-gain`` BLEU gained over the last
``--patience`` epochs) or ``--max-epochs``. Both methods train the same transformer with stock
``fairseq-train`` on the same bible.db corpus (split by book), seed and threads; uniform uses
``--task translation``, autoassist adds ``--user-dir`` and the plugin's task and criterion with
the library's default settings, under the same stopping rule.

Training seconds come from this harness's clock in the fairseq process
(``autoassist.bench.fairseq_runs``): wall time from the built model on, less validation
(generation included) and checkpoint writes, for both methods alike; fairseq's ``train_wall``
is stored beside it. **saving** = 1 - (autoassist's seconds to first reach uniform's best valid
BLEU) / (uniform's seconds to its best), per (pair, seed); "not reached" is None. Test BLEU
(beam 4, unseen books) of uniform's best checkpoint and of autoassist's checkpoint at that
moment.

Every finished (pair, method, seed) run is stored in ``benchmarks/results/translation_runs/``
with a fingerprint of the code that trained it (``autoassist.bench.frontier.RunStore``):
rerunning the same command skips them, so a long measurement spans sessions. Writes
``benchmarks/results/translation_converged[_quick].{json,md,png}``; the last stdout line is
JSON: ``saving``, ``bleu_uniform``, ``bleu_autoassist`` (best valid), ``test_bleu_uniform``,
``test_bleu_autoassist_at_target``, ``reached``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from autoassist.bench import fairseq_runs as fr
from autoassist.bench.frontier import RunStore, code_fingerprint
from autoassist.bench.training import saving as saving_of
from autoassist.bench.training import time_to_target
from autoassist.plotting import subplots
from benchmarks._common import RESULTS, git_commit, machine_info, repo_path, thread_info

METHODS = ("uniform", "autoassist")
PAIRS = ("de-en", "es-en")
RUNS_DIR = RESULTS / "translation_runs"
# the harness files whose code decides a run's outcome (the analysis below does not)
TRANSLATION_CODE = ("bench/fairseq_runs.py", "bench/translation_corpus.py")


@dataclass(frozen=True)
class Setup:
    """Everything that decides a run's outcome besides code, pair, method and seed: hashed into
    each stored run's key, so another setup never reuses it."""

    train_pairs: int = 8000
    max_words: int = 40
    valid_pairs: int = 400
    vocab_size: int = 4000
    layers: int = 2
    dim: int = 128
    ffn: int = 256
    heads: int = 4
    dropout: float = 0.1
    lr: float = 2e-3
    warmup: int = 400
    max_tokens: int = 2048
    max_epochs: int = 40
    patience: int = 5
    min_gain: float = 0.2
    bleu_every: int = 1
    test_beam: int = 4
    threads: int = 1

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]


FULL = Setup()
# <= 15 min on an idle 2-core machine for one pair and two seeds: a small corpus and model,
# smaller batches (more updates per epoch), a low epoch cap
QUICK = Setup(train_pairs=2000, max_words=30, valid_pairs=150, vocab_size=1500, layers=1,
              warmup=100, max_tokens=1024, max_epochs=10, patience=3)


def model_args(setup: Setup) -> list[str]:
    args = fr.model_args(setup.layers, setup.dim, setup.ffn, setup.heads)
    return [*args[:-2], "--dropout", str(setup.dropout)]  # model_args ends with its dropout


def method_args(method: str) -> list[str]:
    if method == "uniform":
        return list(fr.UNIFORM)
    if method == "autoassist":  # the library's defaults: no --aa-* flag
        from autoassist.cli import fairseq_user_dir

        return [*fr.PLUGIN, "--user-dir", fairseq_user_dir()]
    raise ValueError(f"unknown method {method!r}: use one of {METHODS}")


def run_key(pair: str, method: str, seed: int, setup: Setup, target: float | None) -> str:
    key = f"{pair}-{method}-s{seed}-{setup.key()}"
    return key if target is None else f"{key}-t{target:.2f}"


# ------------------------------------------------------------------------------------------------
# One run: fairseq-train to the plateau, then test BLEU of the checkpoints that matter
# ------------------------------------------------------------------------------------------------
def prepare(pair: str, setup: Setup, work: Path) -> tuple[Path, dict]:
    """The pair's bible.db corpus under ``work`` (reused when prepared): ``data-bin`` and its
    sizes and spec."""
    from autoassist.bench.translation_corpus import CorpusSpec, prepare_corpus

    src, tgt = pair.split("-")
    spec = CorpusSpec(src=src, tgt=tgt, train_pairs=setup.train_pairs,
                      max_words=setup.max_words, valid_pairs=setup.valid_pairs,
                      vocab_size=setup.vocab_size)
    corpus = work / f"corpus-{pair}-{setup.train_pairs}-{setup.max_words}-{setup.vocab_size}"
    tqdm.write(f"preparing {corpus} ...")
    data_bin = prepare_corpus(corpus, spec)
    return data_bin, json.loads((corpus / "corpus.json").read_text())


def fairseq_run(pair: str, method: str, seed: int, setup: Setup, target: float | None,
                data_bin: Path, work: Path) -> dict[str, Any]:
    """Train one (pair, method, seed) to the plateau or the cap; score its checkpoints."""
    save = work / pair / f"{method}-s{seed}-{setup.key()}"  # quick and full never share one
    for old in save.glob("checkpoint*.pt"):
        old.unlink()
    out = fr.train(data_bin, save,
                   [*method_args(method), *model_args(setup),
                    *fr.train_args(setup.max_epochs, lr=setup.lr, max_tokens=setup.max_tokens,
                                   seed=seed, warmup=setup.warmup,
                                   bleu_every=setup.bleu_every)],
                   threads=setup.threads, patience=setup.patience, min_gain=setup.min_gain,
                   target=target, echo=lambda line: tqdm.write(f"  {line[-150:]}"))

    def test_bleu(name: str) -> float | None:
        path = save / name
        if not path.is_file():
            return None
        return fr.bleu(data_bin, path, subset="test", beam=setup.test_beam,
                       threads=setup.threads)

    kept = [float(line.split(" kept ")[1].split("%")[0]) for line in out["log"].splitlines()
            if "autoassist: epoch" in line and " kept " in line]
    bleu_epochs = sorted(out["bleu"])
    seconds = dict(zip(out["epochs"], out["epoch_seconds"], strict=True))
    return {
        "pair": pair, "method": method, "seed": seed, "target": target,
        "epochs": out["epochs"], "epoch_seconds": out["epoch_seconds"],
        "train_wall": out["train_wall"], "stopped": out["stopped"],
        "bleu_epochs": bleu_epochs, "bleu_seconds": [seconds[e] for e in bleu_epochs],
        "valid_bleu": [out["bleu"][e] for e in bleu_epochs],
        "kept_percent": kept or [100.0] * len(out["epochs"]),
        "test_bleu_best": test_bleu("checkpoint_best.pt"),
        "target_epoch": out.get("target_epoch"),
        "test_bleu_at_target": None if target is None else test_bleu("checkpoint_target.pt"),
    }


def best(record: dict) -> tuple[float, float, int]:
    """``(best valid BLEU, training seconds at its first epoch, that epoch)``."""
    bleus = record["valid_bleu"]
    i = bleus.index(max(bleus))
    return bleus[i], record["bleu_seconds"][i], record["bleu_epochs"][i]


RunFn = Callable[[str, str, int, Setup, "float | None"], dict]


def measure(pairs: list[str], seeds: int, setup: Setup, store: RunStore,
            run: RunFn) -> list[dict]:
    """Every (pair, seed): uniform, then autoassist against uniform's best valid BLEU; stored
    runs are reused, each new one stored as soon as it finishes."""
    runs = []
    for pair in pairs:
        for seed in range(1, seeds + 1):
            target = None
            for method in METHODS:
                key = run_key(pair, method, seed, setup, target)
                record = store.get(key, method)
                if record is None:
                    tqdm.write(f"{pair} {method} seed {seed}: training (key {key})")
                    record = run(pair, method, seed, setup, target)
                    store.put(key, method, record)
                else:
                    tqdm.write(f"{pair} {method} seed {seed}: stored ({key}.json), skipped")
                runs.append(record)
                if method == "uniform":
                    target = best(record)[0]
    return runs


# ------------------------------------------------------------------------------------------------
# Readings: pure functions on run records (tested on hand-made curves)
# ------------------------------------------------------------------------------------------------
def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def analyse(runs: list[dict]) -> dict[str, Any]:
    """Per (pair, seed): uniform's best valid BLEU (the target) and its seconds to it,
    autoassist's seconds to first reach it, the saving (None: not reached), the test BLEUs.
    Per pair and over everything: means; ``saving`` is None unless every seed reached the
    target (a mean over the seeds that did would flatter the method)."""
    by = {(r["pair"], r["seed"], r["method"]): r for r in runs}
    seeds = []
    for (pair, seed, method), u in sorted(by.items()):
        if method != "uniform" or (pair, seed, "autoassist") not in by:
            continue
        a = by[(pair, seed, "autoassist")]
        target, t_u, _ = best(u)
        t_a = time_to_target(a["bleu_seconds"], a["valid_bleu"], target)
        seeds.append({
            "pair": pair, "seed": seed, "target_bleu": target, "seconds_uniform": t_u,
            "seconds_autoassist": t_a, "reached": t_a is not None,
            "saving": saving_of(t_a, t_u),
            "bleu_autoassist": best(a)[0],
            "test_bleu_uniform": u["test_bleu_best"],
            "test_bleu_autoassist_at_target": a["test_bleu_at_target"] if t_a is not None
            else None,
            "test_bleu_autoassist_best": a["test_bleu_best"],
            "stopped_uniform": u["stopped"], "stopped_autoassist": a["stopped"],
        })

    def summary(rows: list[dict]) -> dict[str, Any]:
        reached = sum(r["reached"] for r in rows)
        return {
            "saving": _mean(r["saving"] for r in rows) if rows and reached == len(rows)
            else None,
            "savings": [r["saving"] for r in rows], "reached": reached, "seeds": len(rows),
            "bleu_uniform": _mean(r["target_bleu"] for r in rows),
            "bleu_autoassist": _mean(r["bleu_autoassist"] for r in rows),
            "test_bleu_uniform": _mean(r["test_bleu_uniform"] for r in rows),
            "test_bleu_autoassist_at_target": _mean(r["test_bleu_autoassist_at_target"]
                                                    for r in rows),
            "seconds_uniform": _mean(r["seconds_uniform"] for r in rows),
            "seconds_autoassist": _mean(r["seconds_autoassist"] for r in rows),
        }

    pairs = sorted({r["pair"] for r in seeds})
    return {**summary(seeds), "per_seed": seeds,
            "pairs": {p: summary([r for r in seeds if r["pair"] == p]) for p in pairs}}


HEADLINE = ("saving", "bleu_uniform", "bleu_autoassist", "test_bleu_uniform",
            "test_bleu_autoassist_at_target", "reached", "seeds", "seconds_uniform",
            "seconds_autoassist")


def _num(value, spec: str = ".2f") -> str:
    return "not reached" if value is None else format(value, spec)


def markdown(runs: list[dict], analysis: dict, command: str) -> str:
    lines = [f"`{command}`", "",
             "| pair | seed | uniform best valid BLEU (epoch, s) | autoassist best valid BLEU "
             "| autoassist s to uniform's best | saving | test BLEU uniform (best ckpt) "
             "| test BLEU autoassist (at target) | stopped (uniform / autoassist) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    by = {(r["pair"], r["seed"], r["method"]): r for r in runs}
    for s in analysis["per_seed"]:
        u = by[(s["pair"], s["seed"], "uniform")]
        lines.append(
            f"| {s['pair']} | {s['seed']} | {s['target_bleu']:.2f} ({best(u)[2]}, "
            f"{s['seconds_uniform']:.0f}) | {s['bleu_autoassist']:.2f} "
            f"| {_num(s['seconds_autoassist'], '.0f')} | {_num(s['saving'], '.0%')} "
            f"| {_num(s['test_bleu_uniform'])} | {_num(s['test_bleu_autoassist_at_target'])} "
            f"| {s['stopped_uniform']} / {s['stopped_autoassist']} |")
    lines += ["", "Valid BLEU at training seconds, and kept % per epoch:", ""]
    for r in runs:
        curve = " ".join(f"{b:.1f}@{t:.0f}" for b, t in zip(r["valid_bleu"], r["bleu_seconds"],
                                                            strict=True))
        kept = " ".join(f"{k:.0f}" for k in r["kept_percent"])
        lines.append(f"- {r['pair']} {r['method']} seed {r['seed']}: {curve} (kept: {kept})")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], analysis: dict, path: Path) -> Path | None:
    pairs = sorted({r["pair"] for r in runs})
    made = subplots(1, len(pairs), figsize=(6.4 * len(pairs), 4.2), squeeze=False)
    if made is None:  # no matplotlib: the JSON is the result
        return None
    fig, axes = made
    for ax, pair in zip(axes[0], pairs, strict=True):
        for r in (r for r in runs if r["pair"] == pair):
            ax.plot(r["bleu_seconds"], r["valid_bleu"], marker="o", ms=3,
                    color="black" if r["method"] == "uniform" else "tab:red",
                    ls=("-", "--", ":", "-.")[(r["seed"] - 1) % 4],
                    label=f"{r['method']} (seed {r['seed']})")
        for s in (s for s in analysis["per_seed"] if s["pair"] == pair):
            ax.axhline(s["target_bleu"], ls="--", lw=0.8, color="grey")
        ax.set_xlabel("training seconds (validation and checkpoints excluded)")
        ax.set_ylabel("valid BLEU (greedy)")
        ax.set_title(f"fairseq transformer, bible.db {pair.replace('-', '->')}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


# ------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------
def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.translation",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small corpus and model, one pair, a 10-epoch cap (<= 15 min idle)")
    p.add_argument("--pairs", default=None,
                   help=f"comma-separated, from {PAIRS} (default both; quick de-en)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--train-pairs", type=int, default=None, help="training verses")
    p.add_argument("--max-epochs", type=int, default=None, help="the epoch cap")
    p.add_argument("--patience", type=int, default=None,
                   help="plateau window in epochs (default 5; quick 3)")
    p.add_argument("--min-gain", type=float, default=None,
                   help="BLEU the best must gain over the window to go on (default 0.2)")
    p.add_argument("--bleu-every", type=int, default=None, help="validate every k epochs")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of each fairseq run (default 1: the Assistant gets "
                        "the other core of a 2-core machine)")
    p.add_argument("--name", default=None, help="results file stem (default "
                   "translation_converged, translation_converged_quick)")
    p.add_argument("--workdir", default="runs/translation_converged",
                   help="corpora and checkpoints (reused between invocations)")
    args = p.parse_args(argv)
    pairs = (args.pairs or ("de-en" if args.quick else ",".join(PAIRS))).split(",")
    unknown = [x for x in pairs if x not in PAIRS]
    if unknown:
        p.error(f"--pairs {','.join(unknown)}: use pairs from {','.join(PAIRS)}")
    if args.seeds < 1:
        p.error(f"--seeds {args.seeds}: give 1 or more")
    args.pairs = pairs
    return args


def setup_of(args) -> Setup:
    setup = QUICK if args.quick else FULL
    changes = {k: v for k, v in (("train_pairs", args.train_pairs),
                                 ("max_epochs", args.max_epochs), ("patience", args.patience),
                                 ("min_gain", args.min_gain), ("bleu_every", args.bleu_every),
                                 ("threads", args.threads)) if v is not None}
    return replace(setup, **changes)


def main(argv=None, *, run: RunFn | None = None, store: RunStore | None = None,
         results: Path = RESULTS) -> dict:
    """The benchmark; ``run``, ``store`` and ``results`` replace fairseq and the results
    folders in tests."""
    args = parse_args(argv)
    setup = setup_of(args)
    commit = git_commit()  # the code this run loads (a later commit may land meanwhile)
    work = Path(args.workdir)
    store = store or RunStore(RUNS_DIR, {
        "product": code_fingerprint(True, TRANSLATION_CODE),
        "training": code_fingerprint(False, TRANSLATION_CODE)}, product_free=("uniform",))
    corpora: dict[str, tuple[Path, dict]] = {}

    def corpus(pair: str) -> tuple[Path, dict]:
        if pair not in corpora:
            corpora[pair] = prepare(pair, setup, work)
        return corpora[pair]

    if run is None:
        def run(pair, method, seed, setup_, target):
            return fairseq_run(pair, method, seed, setup_, target, corpus(pair)[0], work)

    runs = measure(args.pairs, args.seeds, setup, store, run)
    analysis = analyse(runs)
    name = args.name or ("translation_converged_quick" if args.quick
                         else "translation_converged")
    command = "python -m benchmarks." + " ".join(
        ["translation", *(argv if argv is not None else sys.argv[1:])])
    from autoassist.config import ShrinkConfig

    result = {
        "benchmark": name, "command": command, "commit": commit, "machine": machine_info(),
        "threads": {**thread_info(), "fairseq_threads": setup.threads},
        "setup": asdict(setup), "pairs": args.pairs, "seeds": args.seeds,
        "corpora": {p: c[1] for p, c in corpora.items()},
        "autoassist": {"flags": "--user-dir \"$(autoassist fairseq-user-dir)\" (no --aa-* flag)",
                       "settings": asdict(ShrinkConfig())},
        "clock": "wall seconds in the fairseq process from the built model on, less "
                 "validation (--eval-bleu generation included) and checkpoint writes",
        "runs": runs, "analysis": analysis,
    }
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.md").write_text(markdown(runs, analysis, command))
    png = plot(runs, analysis, results / f"{name}.png")
    result["plot"] = repo_path(png)
    (results / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    tqdm.write(f"wrote {repo_path(results / f'{name}.json')}")
    print(json.dumps({k: analysis[k] for k in HEADLINE}), flush=True)
    return result


if __name__ == "__main__":
    main()
