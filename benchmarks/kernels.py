"""Shrink-select on 10M scores: our Numba kernel vs NumPy and vs ``np.copy`` of the same bytes.

    python -m benchmarks.kernels [--quick] [--threads 2] [--n 10000000]

All timings come from one run, interleaved round by round (this machine is shared and noisy), and
each is the median over rounds. Methods:

- ``ours``: ``kernels.shrink_select`` (kept indices + mask) at ``--threads`` threads, and at 1;
- ``ours_mask``: ``kernels.keep_mask`` (mask + count: what the DataLoader wrapper uses);
- ``numpy``: the usual vectorised NumPy selection, ``Generator.random(n) < P`` + ``flatnonzero``;
- ``numpy_same_rng``: NumPy computing our counter-based hash (the kernel's specification);
- ``copy``: ``np.copy`` of the 10M float32 scores (the physical floor: read N*4 bytes, write them).

Last stdout line: JSON with ``numpy_ratio`` (numpy / ours, goal >= 5), ``copy_ratio`` (ours / copy,
goal <= 2) and the thread count. Writes ``benchmarks/results/kernels.json`` and ``kernels.png``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numba
import numpy as np

from autoassist.kernels import keep_mask, keep_probabilities, shrink_select, shrink_select_numpy
from autoassist.plotting import subplots
from benchmarks._common import RESULTS, git_commit, machine_info, thread_info, write_result


def _numpy_select(scores: np.ndarray, floor: float, rng: np.random.Generator):
    mask = rng.random(len(scores), dtype=np.float32) < keep_probabilities(scores, floor)
    return np.flatnonzero(mask), mask


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _plot(medians: dict[str, float], path, title: str) -> None:
    names = list(medians)
    made = subplots(figsize=(7, 3.6))
    if made is None:  # no matplotlib: the JSON is the result
        return
    fig, ax = made
    ax.barh(names, [1e3 * medians[k] for k in names], color="tab:blue")
    for i, k in enumerate(names):
        ax.text(1e3 * medians[k], i, f" {1e3 * medians[k]:.1f} ms", va="center")
    ax.set_xlabel("median wall-clock (ms), lower is better")
    ax.set_title(title)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (well under a minute)")
    ap.add_argument("--n", type=int, default=10_000_000, help="number of scores")
    ap.add_argument("--threads", type=int, default=min(2, numba.config.NUMBA_NUM_THREADS),
                    help="Numba threads for our kernel")
    ap.add_argument("--floor", type=float, default=0.3)
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args(argv)
    commit = git_commit()  # the code this run loads (a later commit may land meanwhile)
    rounds = args.rounds or (5 if args.quick else 25)
    rng = np.random.default_rng(0)
    scores = rng.beta(0.7, 0.7, args.n).astype(np.float32)  # Assistant-like: mass near 0 and 1
    floor = args.floor

    # compile + check once (untimed): same answer as the spec and for any thread count
    kept, mask = shrink_select(scores, floor, 0, 1, num_threads=args.threads)
    kept1, _ = shrink_select(scores, floor, 0, 1, num_threads=1)
    ref, _ = shrink_select_numpy(scores[: 1_000_000], floor, 0, 1)
    assert np.array_equal(kept, kept1), "selection differs between thread counts"
    assert np.array_equal(kept[kept < 1_000_000], ref), "selection differs from the spec"
    keep_mask(scores, floor, 0, 1, num_threads=args.threads)

    methods = {
        "ours": lambda e: shrink_select(scores, floor, 0, e, num_threads=args.threads),
        "ours_1thread": lambda e: shrink_select(scores, floor, 0, e, num_threads=1),
        "ours_mask": lambda e: keep_mask(scores, floor, 0, e, num_threads=args.threads),
        "numpy": lambda e: _numpy_select(scores, floor, np.random.default_rng(e)),
        "numpy_same_rng": lambda e: shrink_select_numpy(scores, floor, 0, e),
        "copy": lambda e: np.copy(scores),
    }
    times: dict[str, list[float]] = {k: [] for k in methods}
    for r in range(rounds):
        for name, fn in methods.items():
            if name == "numpy_same_rng" and r % 5:  # slow and only a reference: every 5th round
                continue
            times[name].append(_time(lambda fn=fn, r=r: fn(r + 2)))
    med = {k: statistics.median(v) for k, v in times.items()}
    png = RESULTS / "kernels.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    _plot(med, png, f"shrink-select, {args.n / 1e6:g}M scores, {args.threads} Numba threads")
    result = {
        "benchmark": "kernels",
        "numpy_ratio": med["numpy"] / med["ours"],
        "copy_ratio": med["ours"] / med["copy"],
        "threads": args.threads,
        "goals": {"numpy_ratio": ">= 5", "copy_ratio": "<= 2"},
        "mask_only_copy_ratio": med["ours_mask"] / med["copy"],
        "thread_speedup": med["ours_1thread"] / med["ours"],
        "numpy_same_rng_ratio": med["numpy_same_rng"] / med["ours"],
        "median_seconds": med,
        "rounds": rounds,
        "n": args.n,
        "floor": floor,
        "kept_fraction": len(kept) / args.n,
        "index_dtype": str(kept.dtype),
        "quick": args.quick,
        "thread_info": thread_info(),
        "commit": commit,
        "machine": machine_info(),
        "plot": os.path.relpath(png),
    }
    for k, v in med.items():
        print(f"{k:>15}: {1e3 * v:8.2f} ms")
    write_result("kernels", result)
    return result


if __name__ == "__main__":
    main()
