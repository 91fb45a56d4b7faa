"""Scale: a 10M-instance data set of small rows through ``autoassist.wrap``.

    python -m benchmarks.scale [--quick] [--instances 10000000] [--epochs 3]

Measures what a large data set costs: bytes per instance in ``/dev/shm`` (the scores' block
and the fixed-size loss ring) and in the feature file, the peak resident memory of the Boss
and of the Assistant, and seconds per epoch against the plain DataLoader, keeping everything
(``floor=1``: every loss still goes to the Assistant) and shrinking (the defaults). Plain,
keep-all and shrinking runs alternate, ``--rounds`` times, so the machine's drift hits them
alike. Goals (issue 29): <= 16 bytes per instance in /dev/shm, keep-all within 5% of plain.
Writes ``benchmarks/results/scale[_quick].json`` and a plot.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from benchmarks._common import git_commit, machine_info, thread_info, write_result


class Rows(Dataset):
    """N rows of ``width`` floats and a binary label, fetched a batch at a time."""

    def __init__(self, n: int, width: int = 8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, width, generator=g)
        w = torch.randn(width, generator=g)
        self.y = ((self.x @ w + 0.5 * torch.randn(n, generator=g)) > 0).long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __getitems__(self, indices):  # one tensor gather per batch, not N Python calls
        idx = torch.as_tensor(indices)
        return self.x[idx], self.y[idx]


def _collate(batch):
    return batch


def _peak_rss_mb(pid: int | None = None) -> float | None:
    """Peak resident set (VmHWM) of ``pid`` (default: this process), in MB."""
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _epoch(loader, model, opt, wrapped: bool) -> float:
    t0 = time.perf_counter()
    for x, y in loader:
        per_sample = F.cross_entropy(model(x), y, reduction="none")
        loss = loader.report(per_sample) if wrapped else per_sample.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def run(n: int, epochs: int, rounds: int, batch_size: int) -> dict:
    import autoassist

    data = Rows(n)
    out: dict = {"plain": [], "keep_all": [], "shrink": [], "kept_fraction": []}
    memory: dict = {}
    for r in range(rounds):
        for kind in ("plain", "keep_all", "shrink"):
            torch.manual_seed(r)
            model = torch.nn.Linear(data.x.shape[1], 2)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            base = DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=_collate,
                              generator=torch.Generator().manual_seed(r))
            if kind == "plain":
                seconds = [_epoch(base, model, opt, False) for _ in range(epochs)]
                out["plain"].append(seconds)
                continue
            options = {"floor": 1.0} if kind == "keep_all" else {}
            t0 = time.perf_counter()
            loader = autoassist.wrap(base, seed=r, **options)
            wrap_seconds = time.perf_counter() - t0
            with loader:
                seconds = []
                for e in range(epochs):
                    loader.set_epoch(e)
                    seconds.append(_epoch(loader, model, opt, True))
                state = loader.engine.state
                shm = sum(os.stat(f"/dev/shm/{name.lstrip('/')}").st_size  # + the loss ring
                          for name in (state.name, loader.engine.assistant.ring_name))
                memory[kind] = {
                    "dev_shm_bytes_per_instance": shm / n,
                    # the default memory Assistant reads no features: no feature file at all
                    "feature_file_bytes_per_instance": (
                        os.path.getsize(state.feature_path) / n
                        if hasattr(state, "feature_path") else 0.0),
                    "assistant_peak_rss_mb": _peak_rss_mb(loader.engine.assistant.pid),
                    "wrap_seconds": wrap_seconds,
                }
                if kind == "shrink":
                    out["kept_fraction"].append([t["kept_fraction"] for t in loader.telemetry])
                out[kind].append(seconds)
            print(f"round {r + 1}/{rounds} {kind:<8}: " + ", ".join(f"{s:.2f}s" for s in seconds),
                  flush=True)
    memory["boss_peak_rss_mb"] = _peak_rss_mb()

    def per_epoch(kind, first=1):  # the first epoch holds one-time start-up (Numba, imports)
        return statistics.fmean(s for run_ in out[kind] for s in run_[first:])

    return {
        "instances": n, "epochs": epochs, "rounds": rounds, "batch_size": batch_size,
        "seconds": {k: out[k] for k in ("plain", "keep_all", "shrink")},
        "kept_fraction": out["kept_fraction"],
        "keep_all_over_plain": per_epoch("keep_all") / per_epoch("plain"),
        "shrink_over_plain": per_epoch("shrink") / per_epoch("plain"),
        "memory": memory,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1M instances, 2 rounds")
    p.add_argument("--instances", type=int, default=None)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    n = args.instances or (1_000_000 if args.quick else 10_000_000)
    rounds = args.rounds or 2
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        result = run(n, args.epochs, rounds, args.batch_size)
    finally:
        torch.set_num_threads(previous)
    result.update(commit=git_commit(), machine=machine_info(),
                  threads=dict(thread_info(), torch_threads=args.threads))
    mem = result["memory"]
    headline = {
        "instances": n,
        "dev_shm_bytes_per_instance": mem["keep_all"]["dev_shm_bytes_per_instance"],
        "keep_all_over_plain": result["keep_all_over_plain"],
        "shrink_over_plain": result["shrink_over_plain"],
        "boss_peak_rss_mb": mem["boss_peak_rss_mb"],
        "assistant_peak_rss_mb": mem["keep_all"]["assistant_peak_rss_mb"],
    }
    result["headline"] = headline

    def plot(path):
        from autoassist.plotting import subplots

        made = subplots(figsize=(6, 3.5))
        if made is None:
            return None
        fig, ax = made
        kinds = ("plain", "keep_all", "shrink")
        values = [[s for run_ in result["seconds"][k] for s in run_[1:]] for k in kinds]
        ax.boxplot(values, tick_labels=kinds)
        ax.set_ylabel("seconds per epoch (after the first)")
        ax.set_title(f"{n:,} instances, batch {args.batch_size}", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        return path

    write_result("scale_quick" if args.quick else "scale", result, headline, plot)
    return result


if __name__ == "__main__":
    main()
