"""Boss schedules: throughput against plain backprop and the measured parallel ceiling.

    python -m benchmarks.boss [--quick] [--epochs E] [--limit N]

A Fashion-MNIST CNN is cut into 2 stages at the layer that best balances their measured step
times. With 1 torch thread per process, in one run:

* throughput (instances/s of training, start-up excluded) of ``backprop``,
  ``sequential_greedy``, ``local_parallel`` and ``async_model_parallel`` (staleness 1);
* the **parallel ceiling**: 2 independent processes, each doing only its stage's local steps on
  the same batches, started together; ceiling speedup = sequential time / slowest of the two.
  On 2 shared vCPUs two busy processes slow each other down, so raw speedup means little;
  ``ceiling_fraction`` = local_parallel speedup / ceiling speedup is the figure of merit;
* whether local_parallel equals sequential_greedy bit for bit (one epoch, same init);
* test accuracy after each epoch against training wall-clock, local (local_parallel) vs global
  (backprop) training.

Writes ``benchmarks/results/boss.json`` (+ ``.png``); last stdout line: JSON with
``ceiling_fraction``, ``equal_to_sequential``, ``acc_local``, ``acc_backprop``.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader

from autoassist.bench.datasets import FashionMNIST
from autoassist.boss import BossConfig, Stages, fit
from autoassist.boss.stages import stage_step
from autoassist.plotting import subplots
from benchmarks._common import RESULTS, git_commit, machine_info, thread_info


def balanced_cnn(width: int = 32) -> nn.Sequential:
    """Four conv blocks: enough layers that a cut can balance two stages."""
    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(*block(1, width), *block(width, width), nn.MaxPool2d(2),
                         *block(width, 2 * width), *block(2 * width, 2 * width), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(2 * width * 7 * 7, 10))


def make_model(seed: int, cut: int) -> Stages:
    with torch.random.fork_rng():
        torch.random.manual_seed(seed)  # inside fork_rng: the caller's RNG state is kept
        return Stages.from_sequential(balanced_cnn(), cuts=[cut], num_classes=10,
                                      example_input=torch.zeros(2, 1, 28, 28))


def make_loader(limit: int, batch_size: int):
    return DataLoader(FashionMNIST("train", limit=limit), batch_size=batch_size, shuffle=False)


SGD = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9)


def best_cut(batch: torch.Tensor, labels: torch.Tensor) -> tuple[int, dict]:
    """The cut minimising the slower stage's local-step time (measured here, 1 thread)."""
    times = {}
    for cut in range(3, len(balanced_cnn()) - 1):
        stages = make_model(0, cut)
        opts = [SGD(stages.stage_parameters(k)) for k in range(2)]
        per_stage = [0.0, 0.0]
        for rep in range(4):
            h = batch
            for k in range(2):
                t0 = time.perf_counter()
                h, _ = stage_step(stages.stages[k], stages.head(k), opts[k], h, labels)
                if rep:  # the first repetition warms up
                    per_stage[k] += time.perf_counter() - t0
        times[cut] = per_stage
    cut = min(times, key=lambda c: max(times[c]))
    return cut, times


def _ceiling_worker(k: int, cut: int, limit: int, batch_size: int, epochs: int, start_at,
                    out: str) -> None:
    torch.set_num_threads(1)
    stages = make_model(0, cut)
    opt = SGD(stages.stage_parameters(k))
    # stage k's inputs, computed before the clock starts (the ceiling is stage k's work only)
    inputs = []
    with torch.no_grad():
        for x, y in make_loader(limit, batch_size):
            h = x
            for j in range(k):
                h = stages.stages[j](h)
            inputs.append((h, y))
    start_at.wait()
    t0 = time.perf_counter()
    for _ in range(epochs):
        for h, y in inputs:
            stage_step(stages.stages[k], stages.head(k), opt, h, y)
    Path(out, f"ceiling{k}.json").write_text(json.dumps(time.perf_counter() - t0))


def ceiling_seconds(cut: int, limit: int, batch_size: int, epochs: int) -> list[float]:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        barrier = ctx.Barrier(2)
        procs = [ctx.Process(target=_ceiling_worker,
                             args=(k, cut, limit, batch_size, epochs, barrier, tmp))
                 for k in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
            if p.exitcode != 0:
                raise RuntimeError(f"ceiling process exited with {p.exitcode}")
        return [json.loads(Path(tmp, f"ceiling{k}.json").read_text()) for k in range(2)]


@torch.no_grad()
def test_accuracy(stages: Stages, test: FashionMNIST) -> float:
    stages.eval()
    correct = sum(int((stages(x).argmax(1) == y).sum())
                  for x, y in DataLoader(test, batch_size=1000))
    stages.train()
    return correct / len(test)


def accuracy_curve(schedule: str, cut: int, factory, epochs: int, test) -> dict:
    """Train epoch by epoch (resuming from the shared checkpoint layout) and test after each."""
    stages = make_model(1, cut)
    seconds, acc = [], []
    with tempfile.TemporaryDirectory() as ckpt:
        for epoch in range(epochs):
            cfg = BossConfig(epochs=epoch + 1, optimizer=SGD, checkpoint_dir=ckpt,
                             resume=epoch > 0, progress=False)
            out = fit(stages, factory, schedule, cfg)
            seconds.append((seconds[-1] if seconds else 0.0) + out["history"][-1]["seconds"])
            acc.append(test_accuracy(stages, test))
    return {"schedule": schedule, "train_seconds": seconds, "accuracy": acc}


def plot(curves: list[dict], path: Path) -> Path | None:
    made = subplots(figsize=(6.0, 4.0))
    if made is None:  # no matplotlib: the JSON is the result
        return None
    fig, ax = made
    for c in curves:
        ax.plot(c["train_seconds"], c["accuracy"], marker="o", label=c["schedule"])
    ax.set_xlabel("training wall-clock (s, evaluation excluded)")
    ax.set_ylabel("Fashion-MNIST test accuracy")
    ax.set_title("local (per-stage losses, 2 processes) vs global backprop")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.boss",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="10k images, 2 epochs (<= 5 min)")
    p.add_argument("--epochs", type=int, default=None, help="default 5; quick 2")
    p.add_argument("--limit", type=int, default=None, help="training images (default 60000)")
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args(argv)
    commit = git_commit()  # the code this run loads (a later commit may land meanwhile)
    epochs = args.epochs or (2 if args.quick else 5)
    limit = args.limit or (10000 if args.quick else 60000)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the in-process schedules run 1 thread, like each stage process
    try:
        x, y = next(iter(make_loader(1024, args.batch_size)))
        cut, cut_times = best_cut(x, y)
        print(f"cut before layer {cut}: stage step times {cut_times[cut]}", flush=True)
        factory = functools.partial(make_loader, limit, args.batch_size)
        throughput, histories = {}, {}
        for schedule in ("backprop", "sequential_greedy", "local_parallel",
                         "async_model_parallel"):
            stages = make_model(0, cut)
            out = fit(stages, factory, schedule,
                      BossConfig(epochs=epochs, optimizer=SGD, progress=False))
            seconds = sum(h["seconds"] for h in out["history"])
            throughput[schedule] = limit * epochs / seconds
            histories[schedule] = out["history"]
            print(f"{schedule}: {throughput[schedule]:.0f} instances/s", flush=True)
        ceiling = ceiling_seconds(cut, limit, args.batch_size, epochs)
        seq_seconds = limit * epochs / throughput["sequential_greedy"]
        ceiling_speedup = seq_seconds / max(ceiling)
        local_speedup = throughput["local_parallel"] / throughput["sequential_greedy"]
        # bit-identity, one epoch on the first 2048 images
        small = functools.partial(make_loader, 2048, args.batch_size)
        ref, par = make_model(2, cut), make_model(2, cut)
        one = BossConfig(epochs=1, optimizer=SGD, progress=False)
        fit(ref, small, "sequential_greedy", one)
        fit(par, small, "local_parallel", one)
        equal = all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(),
                                                      par.state_dict().values(), strict=True))
        test = FashionMNIST("test")
        curves = [accuracy_curve(s, cut, factory, epochs, test)
                  for s in ("local_parallel", "backprop")]
    finally:
        torch.set_num_threads(before)
    name = "boss_quick" if args.quick else "boss"
    png = plot(curves, RESULTS / f"{name}.png")
    headline = {
        "ceiling_fraction": local_speedup / ceiling_speedup,
        "equal_to_sequential": equal,
        "acc_local": curves[0]["accuracy"][-1],
        "acc_backprop": curves[1]["accuracy"][-1],
        "local_speedup": local_speedup,
        "ceiling_speedup": ceiling_speedup,
        "async_speedup_vs_backprop": throughput["async_model_parallel"] / throughput["backprop"],
    }
    result = {
        "benchmark": name, "commit": commit, "machine": machine_info(),
        "threads": {**thread_info(), "per_process": 1}, "epochs": epochs, "images": limit,
        "batch_size": args.batch_size, "cut": cut, "cut_step_seconds": cut_times,
        "throughput": throughput, "histories": histories, "ceiling_seconds": ceiling,
        "sequential_seconds": seq_seconds, "curves": curves, "headline": headline,
        "plot": None if png is None else png.name,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(headline), flush=True)
    return result


if __name__ == "__main__":
    main()
