"""Fashion-MNIST CNN trained by each Boss schedule, on the shrinking loader.

    python examples/boss/fashion_mnist.py --schedule local_parallel [--epochs 3] [--no-shrink]
    torchrun --standalone --nproc-per-node 2 examples/boss/fashion_mnist.py

The CNN is cut into two stages after its first conv block. ``local_parallel`` and
``async_model_parallel`` run one process per stage (gloo on CPU); ``sequential_greedy`` and
``backprop`` run here. Under ``torchrun`` this process is one stage (one process per stage, on
one node or several: see docs/boss.md); only rank 0 prints. Stage 0's process builds the loader
(``make_loader``) and wraps it with ``autoassist.wrap``, so the Boss trains on fewer,
better-chosen images; the Assistant learns from the last stage's losses. Checkpoints go to
``--checkpoint-dir`` after every epoch; ``--resume`` continues from there (under any schedule).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import torch
from torch.utils.data import DataLoader

from autoassist.bench.datasets import FashionMNIST
from autoassist.bench.models import small_cnn
from autoassist.boss import SCHEDULES, BossConfig, Stages, fit


def make_loader(limit, batch_size, shrink, seed, sync=False):
    """Runs in the process that owns stage 0 (module-level, so it pickles)."""
    data = FashionMNIST("train", limit=limit)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen)
    if not shrink:
        return loader
    import autoassist

    return autoassist.wrap(loader, floor=0.3, warmup_epochs=1, seed=seed, sync=sync)


@torch.no_grad()
def accuracy(stages: Stages, test: FashionMNIST) -> float:
    stages.eval()
    correct = sum(int((stages(x).argmax(1) == y).sum())
                  for x, y in DataLoader(test, batch_size=1000))
    stages.train()
    return correct / len(test)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--schedule", choices=SCHEDULES, default="local_parallel")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit", type=int, default=None, help="first N training images")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--staleness", type=int, default=1, help="async_model_parallel only")
    p.add_argument("--no-shrink", action="store_true", help="plain DataLoader")
    p.add_argument("--sync", action="store_true",
                   help="wait for the Assistant at epoch ends (reproducible; short runs)")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    init = torch.Generator().manual_seed(args.seed)
    with torch.random.fork_rng():
        torch.random.manual_seed(int(torch.randint(0, 2**31, (1,), generator=init)))
        stages = Stages.from_sequential(small_cnn(width=args.width), cuts=[4], num_classes=10,
                                        example_input=torch.zeros(2, 1, 28, 28))
    cfg = BossConfig(epochs=args.epochs,
                     optimizer=functools.partial(torch.optim.SGD, lr=args.lr, momentum=0.9),
                     checkpoint_dir=args.checkpoint_dir, resume=args.resume)
    factory = functools.partial(make_loader, args.limit, args.batch_size, not args.no_shrink,
                                args.seed, args.sync)
    start = time.perf_counter()
    out = fit(stages, factory, args.schedule, cfg, staleness=args.staleness)
    seconds = time.perf_counter() - start
    if out.get("rank", 0) != 0:  # under torchrun: rank 0 reports for the whole run
        return 0
    for h, t in zip(out["history"], out["loader_telemetry"] or [{}] * len(out["history"]),
                    strict=False):
        kept = f", kept {t['kept_fraction']:.0%}" if t else ""
        print(f"epoch {h['epoch']}: {h['instances']} images, last-stage loss {h['loss']:.3f}, "
              f"{h['seconds']:.1f} s{kept}")
    acc = accuracy(stages, FashionMNIST("test"))
    print(f"{args.schedule}: test accuracy {acc:.4f} after {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
