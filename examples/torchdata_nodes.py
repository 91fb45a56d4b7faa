"""AutoAssist in a ``torchdata.nodes`` pipeline: the sampler node chooses, your nodes batch.

    .venv/bin/python examples/torchdata_nodes.py --epochs 4 --limit 20000

``ShrinkSampler`` yields the ids each epoch keeps (shuffled, seeded); ``Batcher`` groups them;
a thread ``ParallelMapper`` collates each batch from the dataset. ``Loader`` calls ``reset()``
once per epoch, which starts the sampler's next epoch; ``loader.state_dict()`` resumes mid-epoch.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torchdata import nodes

from autoassist.bench.datasets import FashionMNIST
from autoassist.bench.models import small_cnn
from autoassist.bench.training import evaluate, one_cycle_lr
from autoassist.pipelines.nodes import ShrinkSampler


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sync", action="store_true",
                    help="wait for the Assistant at each epoch boundary (deterministic; "
                         "slower, for tests)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train = FashionMNIST("train", limit=args.limit)
    x_test, y_test = FashionMNIST("test").tensors()

    sampler = ShrinkSampler(len(train), floor=0.3, seed=0, sync=args.sync)
    batches = nodes.Batcher(sampler, batch_size=args.batch_size)
    batches = nodes.ParallelMapper(
        batches, map_fn=lambda ids: (torch.tensor(ids), train.images[ids], train.labels[ids]),
        num_workers=1, method="thread",
    )
    loader = nodes.Loader(batches)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True)
    history = []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        seen = 0
        for ids, x, y in loader:  # one epoch per iter(): Loader resets the sampler
            progress = (epoch + seen / max(1, sampler.epoch_length)) / args.epochs
            for group in opt.param_groups:  # schedule by progress: decays fully
                group["lr"] = one_cycle_lr(progress, args.lr)
            loss = sampler.report(F.cross_entropy(model(x), y, reduction="none"), ids,
                                  batch=(x, y))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(ids)
        tele = sampler.telemetry[-1]
        acc = evaluate(model, x_test, y_test)
        history.append({"epoch": epoch, "accuracy": acc, **tele})
        print(f"epoch {epoch}: test acc {acc:.4f}, {time.perf_counter() - t0:.1f}s, kept "
              f"{tele['kept_fraction']:.0%}", flush=True)
    sampler.close()
    return history


if __name__ == "__main__":
    main()
