"""Boss throughput with the Assistant running (keep-all mode) vs the plain DataLoader.

    python -m benchmarks.overhead [--quick] [--threads 2] [--device cuda]

Both loaders feed the same small CNN on Fashion-MNIST; runs alternate (plain, wrapped, plain,
...) so machine noise hits both alike. With ``floor=1`` nothing is shrunk, so any difference is the
engine's cost: the id FIFO, ``report`` (detach, copy, feature projection on first sighting,
queueing), and the Assistant process competing for the CPU. Last stdout line: JSON with
``throughput_ratio`` = wrapped / plain instances per second (goal >= 0.97).

With ``--device cuda`` the Boss trains on the GPU from pinned batches, and a third arm measures
what a report costs when it waits for the GPU (``losses.cpu()`` before ``report``, which is what
``report`` itself did before its copies became asynchronous): ``blocking_ratio``. Results go to
``overhead_cuda.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

import autoassist
from autoassist.bench.datasets import FashionMNIST
from autoassist.bench.models import small_cnn
from benchmarks._common import git_commit, machine_info, thread_info, write_result


def _epoch(model, opt, loader, shrinking: bool, device: torch.device,
           blocking: bool = False) -> tuple[int, float]:
    count = 0
    t0 = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        per_sample = F.cross_entropy(model(x), y, reduction="none")
        if blocking:
            per_sample.detach().cpu()  # a report that waits for the GPU
        loss = loader.report(per_sample) if shrinking else per_sample.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        count += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return count, time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10k instances, 2 rounds (<5 min)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the Boss")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--instances", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu", help="where the Boss trains: cpu or cuda[:N]")
    ap.add_argument("--width", type=int, default=None,
                    help="the CNN's channel width (default: small_cnn's); wider makes a GPU the "
                         "bottleneck, where a report that waits for it costs the most")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: torch sees no CUDA GPU here")
    gpu = device.type == "cuda"
    commit = git_commit()  # the code this run loads (a later commit may land meanwhile)
    rounds = args.rounds or (2 if args.quick else 4)
    n = args.instances or (10000 if args.quick else 30000)
    torch.set_num_threads(args.threads)
    data = Subset(FashionMNIST("train"), range(n))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = (small_cnn() if args.width is None else small_cnn(width=args.width)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    plain = DataLoader(data, batch_size=args.batch_size, shuffle=True, pin_memory=gpu)
    wrapped = autoassist.wrap(DataLoader(data, batch_size=args.batch_size, shuffle=True,
                                         pin_memory=gpu), floor=1.0, warmup_epochs=0)
    # untimed warm-up of both (JIT, allocator, first-sighting features)
    _epoch(model, opt, plain, False, device)
    wrapped.set_epoch(0)
    _epoch(model, opt, wrapped, True, device)
    epoch = 1
    plain_rates, wrapped_rates, blocking_rates = [], [], []
    for r in range(rounds):
        c, s = _epoch(model, opt, plain, False, device)
        plain_rates.append(c / s)
        wrapped.set_epoch(epoch)
        epoch += 1
        c, s = _epoch(model, opt, wrapped, True, device)
        wrapped_rates.append(c / s)
        line = (f"round {r + 1}/{rounds}: plain {plain_rates[-1]:.0f}/s, "
                f"autoassist keep-all {wrapped_rates[-1]:.0f}/s")
        if gpu:
            wrapped.set_epoch(epoch)
            epoch += 1
            c, s = _epoch(model, opt, wrapped, True, device, blocking=True)
            blocking_rates.append(c / s)
            line += f", keep-all with a report that waits for the GPU {blocking_rates[-1]:.0f}/s"
        print(line, flush=True)
    tele = wrapped.telemetry[-1]
    wrapped.close()
    ratio = statistics.median(wrapped_rates) / statistics.median(plain_rates)
    result = {
        "benchmark": "overhead",
        "device": str(device),
        "throughput_ratio": ratio,
        "blocking_ratio": (statistics.median(blocking_rates) / statistics.median(plain_rates)
                           if blocking_rates else None),
        "goal": ">= 0.97",
        "plain_instances_per_s": plain_rates,
        "autoassist_instances_per_s": wrapped_rates,
        "blocking_report_instances_per_s": blocking_rates,
        "instances_per_epoch": n,
        "width": args.width,
        "batch_size": args.batch_size,
        "assistant_cpu_seconds": tele["assistant_cpu_seconds"],
        "queue_drops": tele["queue_drops"],
        "quick": args.quick,
        "threads": thread_info(),
        "commit": commit,
        "machine": machine_info(device),
    }
    name = "overhead" + ("_cuda" if gpu else "") + (f"_w{args.width}" if args.width else "")
    write_result(name, result)
    return result


if __name__ == "__main__":
    main()
