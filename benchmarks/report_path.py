"""Report path: the Boss's CPU per batch, plain DataLoader vs ``autoassist.wrap`` (issue 29).

    python -m benchmarks.report_path [--quick] [--batch-size 128] [--rounds 5]

An Adult-shaped task (30k synthetic rows of 109 floats, 2 classes, batch 128, an MLP 256x3, one
torch thread): small enough that the wrapper's per-batch work shows beside the model's. Arms
alternate within each round (plain, wrapped with the defaults, wrapped with ``sync=True``), each
training a fresh model; the first epoch of each run is untimed (the Assistant's start, the
warm-up epoch). Per batch, the Boss's CPU seconds (``time.process_time``: every thread of this
process, the queue's feeder thread included) are split into fetching the batch, ``report`` (a
plain mean for the plain loader) and the rest (forward, backward, step). Last stdout line: JSON
with ``extra_us_per_batch`` (wrapped minus plain, medians over rounds) per wrapped arm; goal
(issue 29): well under 300 us.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from benchmarks._common import git_commit, machine_info, thread_info, write_result

ARMS = {"plain": None, "default": {}, "sync": {"sync": True}}


class Rows(Dataset):
    """``n`` rows of ``d`` standard-normal floats with a linearly separable-ish binary label."""

    def __init__(self, n: int, d: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, d, generator=g)
        w = torch.randn(d, generator=g)
        self.y = ((self.x @ w + 0.5 * torch.randn(n, generator=g)) > 0).long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _mlp(d: int, hidden: int, depth: int) -> torch.nn.Module:
    layers: list[torch.nn.Module] = []
    width = d
    for _ in range(depth):
        layers += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
        width = hidden
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 2))


def _epoch(model, opt, loader, wrapped: bool) -> tuple[int, list[float]]:
    """Batches trained and CPU seconds in [fetch, report, rest]."""
    clock = time.process_time
    seconds = [0.0, 0.0, 0.0]
    batches = 0
    it = iter(loader)
    while True:
        a = clock()
        try:
            x, y = next(it)
        except StopIteration:
            break
        b = clock()
        per_sample = F.cross_entropy(model(x), y, reduction="none")
        c = clock()
        loss = loader.report(per_sample) if wrapped else per_sample.mean()
        d = clock()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        e = clock()
        seconds[0] += b - a
        seconds[1] += d - c
        seconds[2] += (c - b) + (e - d)
        batches += 1
    return batches, seconds


def run(n: int, d: int, batch_size: int, epochs: int, rounds: int) -> dict:
    import autoassist

    data = Rows(n, d)
    runs: dict[str, list[dict]] = {name: [] for name in ARMS}
    for r in range(rounds):
        for name, options in ARMS.items():
            with torch.random.fork_rng():
                torch.manual_seed(r)
                model = _mlp(d, 256, 3)
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            base = DataLoader(data, batch_size=batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(r))
            wrapped = options is not None
            loader = autoassist.wrap(base, seed=r, **options) if wrapped else base
            try:
                batches, seconds = 0, [0.0, 0.0, 0.0]
                for e in range(epochs):
                    if wrapped:
                        loader.set_epoch(e)
                    b, s = _epoch(model, opt, loader, wrapped)
                    if e == 0:  # untimed: the Assistant's start, the warm-up epoch
                        continue
                    batches += b
                    seconds = [u + v for u, v in zip(seconds, s, strict=True)]
                record = {"batches": batches,
                          "us_per_batch": sum(seconds) / batches * 1e6,
                          "fetch_us": seconds[0] / batches * 1e6,
                          "report_us": seconds[1] / batches * 1e6,
                          "rest_us": seconds[2] / batches * 1e6}
                if wrapped:
                    last = loader.telemetry[-1]
                    record.update(kept_fraction=last["kept_fraction"],
                                  queue_drops=last["queue_drops"])
            finally:
                if wrapped:
                    loader.close()
            runs[name].append(record)
            print(f"round {r + 1}/{rounds} {name:<8}: {record['us_per_batch']:7.1f} us/batch "
                  f"(fetch {record['fetch_us']:.1f}, report {record['report_us']:.1f}, rest "
                  f"{record['rest_us']:.1f}), {batches} batches", flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(run_[key] for run_ in runs[name])

    summary = {}
    for name in ARMS:
        summary[name] = {key: median(name, key)
                         for key in ("us_per_batch", "fetch_us", "report_us", "rest_us")}
        if name != "plain":  # paired by round: the same machine state for both
            extra = [w["us_per_batch"] - p["us_per_batch"]
                     for w, p in zip(runs[name], runs["plain"], strict=True)]
            summary[name]["extra_us_per_batch"] = statistics.median(extra)
            summary[name]["ratio"] = statistics.median(
                w["us_per_batch"] / p["us_per_batch"]
                for w, p in zip(runs[name], runs["plain"], strict=True))
    return {"instances": n, "features": d, "batch_size": batch_size, "epochs": epochs,
            "rounds": rounds, "runs": runs, "summary": summary}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report_path",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 rounds of 3 epochs")
    p.add_argument("--instances", type=int, default=30000)
    p.add_argument("--features", type=int, default=109)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=None, help="per run, the first untimed")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the Boss")
    args = p.parse_args(argv)
    epochs = args.epochs or (3 if args.quick else 4)
    rounds = args.rounds or (3 if args.quick else 5)
    if epochs < 2:
        p.error("--epochs must be >= 2 (the first is untimed)")
    commit = git_commit()
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        result = run(args.instances, args.features, args.batch_size, epochs, rounds)
    finally:
        torch.set_num_threads(previous)
    result.update(quick=args.quick, commit=commit, machine=machine_info(),
                  threads=dict(thread_info(), torch_threads=args.threads))
    s = result["summary"]
    wrapped = [k for k in ARMS if k != "plain"]
    headline = {"plain_us_per_batch": s["plain"]["us_per_batch"],
                **{f"{k}_extra_us_per_batch": s[k]["extra_us_per_batch"] for k in wrapped},
                **{f"{k}_ratio": s[k]["ratio"] for k in wrapped},
                "goal": "extra well under 300 us per batch"}
    result["headline"] = headline
    write_result("report_path_quick" if args.quick else "report_path", result, headline)
    return result


if __name__ == "__main__":
    main()
