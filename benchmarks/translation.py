"""Time to uniform's best BLEU when uniform trains to a plateau: stock fairseq vs the plugin.

    python -m benchmarks.translation [--quick] [--pairs de-en,es-en] [--seeds 2]
        [--methods uniform,autoassist,random] [--max-epochs E] [--patience 5]
        [--min-gain 0.2] [--bleu-every 1] [--threads 1]

The regime fairseq users train in: Adam, inverse-sqrt with warm-up, label smoothing 0.1,
dropout, stock ``--eval-bleu`` validation (greedy) every ``--bleu-every`` epochs, and training
until validation BLEU has plateaued (less than ``--min-gain`` BLEU gained over the last
``--patience`` epochs) or ``--max-epochs``. Both methods train the same transformer with stock
``fairseq-train`` on the same bible.db corpus (split by book), seed and threads; uniform uses
``--task translation``, autoassist adds ``--user-dir`` and the plugin's task and criterion with
the library's default settings, under the same stopping rule, except that a plateau stops
it only after uniform's seconds to its best (it is given at least uniform's time). The control
``random`` trains each epoch on a uniformly random subset of the size autoassist kept in that
epoch (``autoassist.bench.fairseq_random_subset``): what autoassist gains or loses against it
comes from which pairs it keeps, not how many.

Training seconds come from this harness's clock in the fairseq process
(``autoassist.bench.fairseq_runs``): wall time from the built model on, less validation
(generation included) and checkpoint writes, for both methods alike; fairseq's ``train_wall``
is stored beside it. **saving** = 1 - (a method's seconds to first reach uniform's best valid
BLEU) / (uniform's seconds to its best), per (pair, seed); "not reached" is None. Test BLEU
(beam 4, unseen books) of uniform's best checkpoint and of the method's checkpoint at that
moment. **BLEU at uniform's time**: the method's best valid BLEU within uniform's seconds to
its best, minus uniform's best (the gain at equal time; negative: behind); **mean gap**: the
method's valid BLEU minus uniform's at equal seconds, averaged from the later of the two first
validations to uniform's best (the whole curve, less noisy than one point); **smoothed
saving**: the saving read on the mean of each 3 consecutive validations (one lucky epoch neither
sets nor reaches the target).

Every finished (pair, method, seed) run is stored in ``benchmarks/results/translation_runs/``
with a fingerprint of the code that trained it (``autoassist.bench.frontier.RunStore``):
rerunning the same command skips them, so a long measurement spans sessions. Writes
``benchmarks/results/translation_converged[_quick].{json,md,png}``; the last stdout line is
JSON with the keys in ``HEADLINE``: autoassist's ``saving``, ``bleu_uniform``,
``bleu_autoassist`` (best valid), ``test_bleu_uniform``, ``test_bleu_autoassist_at_target``,
``reached``, its other readings (``gain_equal_time``, ``mean_gap``, ``saving_smoothed``), the
same readings of the control (``saving_random``, ...), and the **gap to the control**
(``gap_to_control``): the mean gap between autoassist's curve and the same seed's random subset
at equal seconds, up to uniform's best, averaged over (pair, seed) cells with its standard
error (``*_se``): the reading that says whether the choice of pairs, not their number, buys
anything.
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

import numpy as np
from tqdm import tqdm

from autoassist.bench import fairseq_runs as fr
from autoassist.bench.frontier import RunStore, code_fingerprint
from autoassist.bench.training import saving as saving_of
from autoassist.bench.training import time_to_target
from autoassist.plotting import subplots
from benchmarks._common import RESULTS, git_commit, machine_info, repo_path, thread_info

METHODS = ("uniform", "autoassist", "random")  # in run order: each needs the ones before
# the plugin with other settings (its flags), run after autoassist: what a change would do
VARIANTS = {
    "aa_no_reweight": ("--aa-no-reweight",),
    "aa_floor07": ("--aa-floor", "0.7"),
    "aa_adaptive_floor": ("--aa-adaptive-floor",),
}
PAIRS = ("de-en", "es-en")
RUNS_DIR = RESULTS / "translation_runs"
# the harness files whose code decides a run's outcome (the analysis below does not)
TRANSLATION_CODE = ("bench/fairseq_runs.py", "bench/translation_corpus.py",
                    "bench/fairseq_random_subset.py")


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


@dataclass(frozen=True)
class RunPlan:
    """What a run takes from the runs before it (uniform's, then autoassist's).

    Attributes:
        target: uniform's best valid BLEU (None for uniform itself).
        min_seconds: uniform's seconds to that best: no plateau stops the run sooner.
        kept_fractions: the control's fraction of the pairs per epoch, up to ``max_epochs + 1``
            (``kept_fractions``).
    """

    target: float | None = None
    min_seconds: float | None = None
    kept_fractions: tuple[float, ...] | None = None


def method_args(method: str, plan: RunPlan = RunPlan()) -> list[str]:
    if method == "uniform":
        return list(fr.UNIFORM)
    if method == "autoassist" or method in VARIANTS:  # autoassist: the defaults, no --aa-*
        from autoassist.cli import fairseq_user_dir

        return [*fr.PLUGIN, "--user-dir", fairseq_user_dir(), *VARIANTS.get(method, ())]
    if method == "random":
        from autoassist.bench.fairseq_random_subset import LAB_USER_DIR

        if not plan.kept_fractions:
            raise ValueError("the random control needs autoassist's kept fractions")
        return ["--task", "random_subset_translation", "--user-dir", LAB_USER_DIR,
                "--kept-fractions", ",".join(f"{f:.4f}" for f in plan.kept_fractions),
                "--criterion", "label_smoothed_cross_entropy"]
    raise ValueError(f"unknown method {method!r}: use one of {METHODS + tuple(VARIANTS)}")


def kept_fractions(record: dict, epochs: int) -> tuple[float, ...]:
    """Autoassist's fraction kept per epoch, continued with the mean of its shrinking epochs
    (those that kept less than all) to ``epochs + 1``: fairseq builds the batches of the epoch
    after its last before it stops (that one never runs)."""
    kept = [k / 100 for k in record["kept_percent"]]
    shrunk = [k for k in kept if k < 1.0] or [1.0]
    tail = round(statistics.fmean(shrunk), 4)
    return tuple(kept[:epochs + 1] + [tail] * max(0, epochs + 1 - len(kept)))


def run_key(pair: str, method: str, seed: int, setup: Setup, plan: RunPlan = RunPlan()) -> str:
    key = f"{pair}-{method}-s{seed}-{setup.key()}"
    if plan.target is not None:
        key += f"-t{plan.target:.2f}"
    if plan.min_seconds is not None:
        key += f"-m{plan.min_seconds:.0f}"
    if plan.kept_fractions is not None:  # of the epochs that can run (not the built successor)
        ran = plan.kept_fractions[:setup.max_epochs]
        key += "-k" + hashlib.sha256(repr(ran).encode()).hexdigest()[:6]
    return key


# ------------------------------------------------------------------------------------------------
# One run: fairseq-train to the plateau, then test BLEU of the checkpoints that matter
# ------------------------------------------------------------------------------------------------
def corpus_dir(pair: str, setup: Setup, work: Path) -> Path:
    """Where ``prepare`` writes the pair's corpus (its ``data-bin/`` inside)."""
    return work / f"corpus-{pair}-{setup.train_pairs}-{setup.max_words}-{setup.vocab_size}"


def run_dir(pair: str, method: str, seed: int, setup: Setup, work: Path) -> Path:
    """Where ``fairseq_run`` keeps a run's checkpoints (quick and full never share one)."""
    return work / pair / f"{method}-s{seed}-{setup.key()}"


def prepare(pair: str, setup: Setup, work: Path) -> tuple[Path, dict]:
    """The pair's bible.db corpus under ``work`` (reused when prepared): ``data-bin`` and its
    sizes and spec."""
    from autoassist.bench.translation_corpus import CorpusSpec, prepare_corpus

    src, tgt = pair.split("-")
    spec = CorpusSpec(src=src, tgt=tgt, train_pairs=setup.train_pairs,
                      max_words=setup.max_words, valid_pairs=setup.valid_pairs,
                      vocab_size=setup.vocab_size)
    corpus = corpus_dir(pair, setup, work)
    tqdm.write(f"preparing {corpus} ...")
    data_bin = prepare_corpus(corpus, spec)
    return data_bin, json.loads((corpus / "corpus.json").read_text())


def fairseq_run(pair: str, method: str, seed: int, setup: Setup, plan: RunPlan,
                data_bin: Path, work: Path) -> dict[str, Any]:
    """Train one (pair, method, seed) to the plateau or the cap; score its checkpoints."""
    target = plan.target
    save = run_dir(pair, method, seed, setup, work)
    for old in save.glob("checkpoint*.pt"):
        old.unlink()
    out = fr.train(data_bin, save,
                   [*method_args(method, plan), *model_args(setup),
                    *fr.train_args(setup.max_epochs, lr=setup.lr, max_tokens=setup.max_tokens,
                                   seed=seed, warmup=setup.warmup,
                                   bleu_every=setup.bleu_every)],
                   threads=setup.threads, patience=setup.patience, min_gain=setup.min_gain,
                   target=target, min_seconds=plan.min_seconds,
                   echo=lambda line: tqdm.write(f"  {line[-150:]}"))

    def test_bleu(name: str) -> float | None:
        path = save / name
        if not path.is_file():
            return None
        return fr.bleu(data_bin, path, subset="test", beam=setup.test_beam,
                       threads=setup.threads)

    kept = [float(line.split(" kept ")[1].split("%")[0]) for line in out["log"].splitlines()
            if "autoassist: epoch" in line and " kept " in line]
    if method == "random":  # "random subset: epoch E trains on K of N pairs"
        counts = [line.split(" trains on ")[1].split(" pairs")[0].split(" of ")
                  for line in out["log"].splitlines() if "random subset: epoch" in line]
        kept = [100 * int(k.replace(",", "")) / int(n.replace(",", "")) for k, n in counts]
        kept = kept[:len(out["epochs"])]  # the batches of an epoch that never ran are built
    bleu_epochs = sorted(out["bleu"])
    seconds = dict(zip(out["epochs"], out["epoch_seconds"], strict=True))
    return {
        "pair": pair, "method": method, "seed": seed, "target": target,
        "min_seconds": plan.min_seconds, "kept_fractions": plan.kept_fractions,
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


RunFn = Callable[[str, str, int, Setup, RunPlan], dict]


def measure(pairs: list[str], seeds: int, setup: Setup, store: RunStore, run: RunFn,
            methods: tuple[str, ...] = METHODS, commit: str | None = None) -> list[dict]:
    """Every (pair, seed): uniform; then autoassist (and the ``VARIANTS`` asked for) against
    uniform's best valid BLEU, given at least uniform's seconds to it; the random control at
    autoassist's kept fractions. Stored runs are reused, each new one stored as soon as it
    finishes, with ``commit`` (the code it ran) in its record."""
    runs = []
    for pair in pairs:
        for seed in range(1, seeds + 1):
            after_uniform, done = RunPlan(), {}
            for method in methods:
                plan = RunPlan() if method == "uniform" else after_uniform
                if method == "random":
                    plan = replace(plan, kept_fractions=kept_fractions(done["autoassist"],
                                                                       setup.max_epochs))
                key = run_key(pair, method, seed, setup, plan)
                record = store.get(key, method)
                if record is None:
                    tqdm.write(f"{pair} {method} seed {seed}: training (key {key})")
                    record = dict(run(pair, method, seed, setup, plan), commit=commit)
                    store.put(key, method, record)
                else:
                    tqdm.write(f"{pair} {method} seed {seed}: stored ({key}.json), skipped")
                runs.append(record)
                done[method] = record
                if method == "uniform":
                    target, seconds, _ = best(record)
                    after_uniform = RunPlan(target=target, min_seconds=seconds)
    return runs


# ------------------------------------------------------------------------------------------------
# Readings: pure functions on run records (tested on hand-made curves)
# ------------------------------------------------------------------------------------------------
def _mean_of_all(values) -> float | None:
    """The mean, or None when there is none or any is None (a saving averaged over the seeds
    that reached the target would flatter the method)."""
    values = list(values)
    return None if not values or None in values else statistics.fmean(values)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _se(values) -> float | None:
    """The standard error of the mean of the values given (None with fewer than two)."""
    values = [v for v in values if v is not None]
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else None


def bleu_within(record: dict, seconds: float) -> float | None:
    """The run's best valid BLEU among validations at most ``seconds`` into training."""
    within = [b for b, t in zip(record["valid_bleu"], record["bleu_seconds"], strict=True)
              if t <= seconds]
    return max(within) if within else None


def gap_between(base: dict, other: dict, until: float, points: int = 50) -> float:
    """``other``'s valid BLEU minus ``base``'s at equal training seconds, averaged over an even
    grid from the later of the two first validations (before its first, a curve is not known)
    to ``until``, each curve linearly interpolated between validations.

    Args:
        base, other: run records (``bleu_seconds``, ``valid_bleu``).
        until: the grid's end, in training seconds (past a run's last validation its curve is
            held at its last value).
        points: grid points.

    Returns:
        The mean difference, in BLEU.
    """
    grid = np.linspace(max(base["bleu_seconds"][0], other["bleu_seconds"][0]), until, points)
    return float(np.mean(np.interp(grid, other["bleu_seconds"], other["valid_bleu"])
                         - np.interp(grid, base["bleu_seconds"], base["valid_bleu"])))


def mean_gap(uniform: dict, other: dict, points: int = 50) -> float:
    """The method's valid BLEU minus uniform's at equal training seconds, up to uniform's best
    (``gap_between``): the whole curve's gain at equal time, less noisy than any single
    point."""
    return gap_between(uniform, other, best(uniform)[1], points)


def trailing_mean(record: dict, window: int = 3) -> tuple[list[float], list[float]]:
    """``(seconds, BLEU)``: the mean valid BLEU of each validation and the ``window - 1``
    before it, at that validation's seconds (from the ``window``-th validation on)."""
    bleus, seconds = record["valid_bleu"], record["bleu_seconds"]
    means = [statistics.fmean(bleus[i - window + 1:i + 1]) for i in range(window - 1, len(bleus))]
    return list(seconds[window - 1:]), means


def smoothed_saving(uniform: dict, other: dict, window: int = 3) -> float | None:
    """The saving read on ``trailing_mean`` curves: uniform's best trailing mean is the target,
    its seconds the reference; one lucky validation does not set or reach it."""
    t_u, m_u = trailing_mean(uniform, window)
    if not m_u:
        return None
    target = max(m_u)
    t_o, m_o = trailing_mean(other, window)
    return saving_of(time_to_target(t_o, m_o, target), t_u[m_u.index(target)])


def compare(uniform: dict, other: dict, control: dict | None = None) -> dict[str, Any]:
    """One (pair, seed, method) against uniform's run of that pair and seed, and against the
    random control's (``gap_to_control``: the mean gap between the two at equal seconds, up to
    uniform's best; None without a control or for the control itself)."""
    target, t_u, _ = best(uniform)
    t_m = time_to_target(other["bleu_seconds"], other["valid_bleu"], target)
    at_time = bleu_within(other, t_u)
    return {
        "pair": uniform["pair"], "seed": uniform["seed"], "method": other["method"],
        "target_bleu": target, "seconds_uniform": t_u, "seconds_method": t_m,
        "reached": t_m is not None, "saving": saving_of(t_m, t_u),
        "bleu_method": best(other)[0],
        "gain_equal_time": None if at_time is None else at_time - target,
        "mean_gap": mean_gap(uniform, other),
        "gap_to_control": (None if control is None or control is other
                           else gap_between(control, other, t_u)),
        "saving_smoothed": smoothed_saving(uniform, other),
        "test_bleu_uniform": uniform["test_bleu_best"],
        "test_bleu_at_target": other["test_bleu_at_target"] if t_m is not None else None,
        "test_bleu_method_best": other["test_bleu_best"],
        "stopped_uniform": uniform["stopped"], "stopped_method": other["stopped"],
    }


def summarise(rows: list[dict]) -> dict[str, Any]:
    """Means over rows (``*_se``: their standard errors, the rows being paired (pair, seed)
    cells); the savings are None unless every row reached the target."""
    return {
        "saving": _mean_of_all(r["saving"] for r in rows),
        "savings": [r["saving"] for r in rows], "reached": sum(r["reached"] for r in rows),
        "seeds": len(rows),
        "bleu_uniform": _mean(r["target_bleu"] for r in rows),
        "bleu_method": _mean(r["bleu_method"] for r in rows),
        "gain_equal_time": _mean(r["gain_equal_time"] for r in rows),
        "mean_gap": _mean(r["mean_gap"] for r in rows),
        "mean_gap_se": _se(r["mean_gap"] for r in rows),
        "gap_to_control": _mean(r["gap_to_control"] for r in rows),
        "gap_to_control_se": _se(r["gap_to_control"] for r in rows),
        "saving_smoothed": _mean_of_all(r["saving_smoothed"] for r in rows),
        "test_bleu_uniform": _mean(r["test_bleu_uniform"] for r in rows),
        "test_bleu_at_target": _mean(r["test_bleu_at_target"] for r in rows),
        "seconds_uniform": _mean(r["seconds_uniform"] for r in rows),
        "seconds_method": _mean(r["seconds_method"] for r in rows),
    }


def analyse(runs: list[dict]) -> dict[str, Any]:
    """Per (pair, seed, method): uniform's best valid BLEU (the target) and its seconds to it,
    the method's seconds to first reach it, the saving (None: not reached), its BLEU at
    uniform's time, the test BLEUs. Per method, per pair and over everything: ``summarise``.
    The top-level keys are autoassist's (``bleu_autoassist``, ``test_bleu_autoassist_at_target``,
    ``seconds_autoassist`` name its ``bleu_method``...), the other methods' under ``methods``."""
    by = {(r["pair"], r["seed"], r["method"]): r for r in runs}
    rows = [compare(u, by[(pair, seed, method)], by.get((pair, seed, "random")))
            for (pair, seed, m), u in sorted(by.items()) if m == "uniform"
            for method in (*METHODS[1:], *VARIANTS) if (pair, seed, method) in by]
    methods = {}
    for method in (*METHODS[1:], *VARIANTS):
        mine = [r for r in rows if r["method"] == method]
        if mine:
            pairs = sorted({r["pair"] for r in mine})
            methods[method] = {**summarise(mine), "pairs": {
                p: summarise([r for r in mine if r["pair"] == p]) for p in pairs}}
    ours = methods.get("autoassist", summarise([]))
    return {**{k: v for k, v in ours.items() if not k.endswith("_method")},
            "bleu_autoassist": ours["bleu_method"],
            "test_bleu_autoassist_at_target": ours["test_bleu_at_target"],
            "seconds_autoassist": ours["seconds_method"],
            "saving_random": methods.get("random", {}).get("saving"),
            "gain_equal_time_random": methods.get("random", {}).get("gain_equal_time"),
            "mean_gap_random": methods.get("random", {}).get("mean_gap"),
            "mean_gap_random_se": methods.get("random", {}).get("mean_gap_se"),
            "saving_smoothed_random": methods.get("random", {}).get("saving_smoothed"),
            "per_seed": rows, "methods": methods}


COLOURS = {"uniform": "black", "autoassist": "tab:red", "random": "tab:blue"}
HEADLINE = ("saving", "bleu_uniform", "bleu_autoassist", "test_bleu_uniform",
            "test_bleu_autoassist_at_target", "reached", "seeds", "seconds_uniform",
            "seconds_autoassist", "gain_equal_time", "mean_gap", "mean_gap_se",
            "gap_to_control", "gap_to_control_se", "saving_smoothed",
            "saving_random", "gain_equal_time_random", "mean_gap_random", "mean_gap_random_se",
            "saving_smoothed_random")


def _num(value, spec: str = ".2f", none: str = "not reached") -> str:
    return none if value is None else format(value, spec)


def markdown(runs: list[dict], analysis: dict, command: str) -> str:
    lines = [f"`{command}`", "",
             "| pair | seed | method | uniform best valid BLEU (epoch, s) | method's best valid "
             "BLEU | its BLEU at uniform's s, minus uniform's best | mean gap to uniform at "
             "equal s, up to uniform's best | mean gap to the random control at equal s, up "
             "to uniform's best "
             "| its s to uniform's best "
             "| saving | saving, 3-validation means | test BLEU uniform (best ckpt) "
             "| test BLEU method (at target) | stopped (uniform / method) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
             "| --- |"]
    by = {(r["pair"], r["seed"], r["method"]): r for r in runs}
    for s in analysis["per_seed"]:
        u = by[(s["pair"], s["seed"], "uniform")]
        lines.append(
            f"| {s['pair']} | {s['seed']} | {s['method']} | {s['target_bleu']:.2f} "
            f"({best(u)[2]}, {s['seconds_uniform']:.0f}) | {s['bleu_method']:.2f} "
            f"| {_num(s['gain_equal_time'], '+.2f', 'n/a')} | {s['mean_gap']:+.2f} "
            f"| {_num(s['gap_to_control'], '+.2f', '—')} "
            f"| {_num(s['seconds_method'], '.0f')} | {_num(s['saving'], '.0%')} "
            f"| {_num(s['saving_smoothed'], '.0%')} "
            f"| {_num(s['test_bleu_uniform'])} | {_num(s['test_bleu_at_target'])} "
            f"| {s['stopped_uniform']} / {s['stopped_method']} |")
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
                    color=COLOURS.get(r["method"], "tab:grey"),
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
    p.add_argument("--methods", default=None,
                   help="uniform,autoassist first, then any of random (the control at "
                        f"autoassist's kept fractions) and {','.join(VARIANTS)} (default "
                        "uniform,autoassist,random; quick: uniform,autoassist)")
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
    methods = tuple((args.methods or ("uniform,autoassist" if args.quick
                                      else ",".join(METHODS))).split(","))
    unknown = [m for m in methods if m not in METHODS and m not in VARIANTS]
    if unknown:
        p.error(f"--methods {','.join(unknown)}: use {','.join(METHODS)} and any of "
                f"{','.join(VARIANTS)}")
    if methods[:2] != METHODS[:2] or len(set(methods)) != len(methods):
        p.error(f"--methods {','.join(methods)}: start with {','.join(METHODS[:2])}, each "
                "method once (every other method needs their runs)")
    args.methods = methods
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
        def run(pair, method, seed, setup_, plan):
            return fairseq_run(pair, method, seed, setup_, plan, corpus(pair)[0], work)

    runs = measure(args.pairs, args.seeds, setup, store, run, args.methods, commit=commit)
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
        "methods": list(args.methods),
        "corpora": {p: c[1] for p, c in corpora.items()},
        "autoassist": {"flags": "--user-dir \"$(autoassist fairseq-user-dir)\" (no --aa-* flag)",
                       "settings": asdict(ShrinkConfig())},
        "clock": "wall seconds in the fairseq process from the built model on, less "
                 "validation (--eval-bleu generation included) and checkpoint writes",
        # the runs' own commits ("?": the run's record names none)
        "run_commits": sorted({r.get("commit") or "?" for r in runs}),
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
