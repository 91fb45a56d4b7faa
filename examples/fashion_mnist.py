"""Your own training loop, with AutoAssist added in a few lines (marked ``# autoassist``).

    .venv/bin/python examples/fashion_mnist.py --epochs 6
    .venv/bin/python examples/fashion_mnist.py --epochs 6 --resume ckpt.pt   # resumes mid-run
    .venv/bin/python examples/fashion_mnist.py --sync --stop-after 2 --checkpoint ckpt.pt
    .venv/bin/python examples/fashion_mnist.py --sync --resume ckpt.pt  # = one --sync run
    python examples/fashion_mnist.py --device cuda     # the same loop on a GPU

A small CNN on Fashion-MNIST (Debian's dataset-fashion-mnist). Each epoch prints test accuracy, its
mean training loss, how many instances the shrinking loader kept and the Assistant's accuracy; the
one-cycle learning rate follows progress through the shrinking epochs
(``autoassist.lr_scheduler``). A checkpoint holds model, optimiser, scheduler and loader state
(tensors and plain values: ``torch.load``'s default reads it), so an interrupted run resumes where
it stopped. With ``--sync`` (and the same ``--threads``) a run is deterministic, so a resumed run
prints exactly the numbers of an uninterrupted one.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

import autoassist
from autoassist.bench.datasets import FashionMNIST
from autoassist.bench.models import small_cnn
from autoassist.bench.training import evaluate


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--floor", type=float, default=None,
                    help="keep-probability floor (default: the library's)")
    ap.add_argument("--limit", type=int, default=None, help="first N training images only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None, help="save model+loader state here each epoch")
    ap.add_argument("--resume", default=None, help="resume from this checkpoint")
    ap.add_argument("--stop-after", type=int, default=None, metavar="EPOCH",
                    help="stop once epoch EPOCH is done (and checkpointed), as an interrupted "
                         "run would; --epochs still sets the schedule")
    ap.add_argument("--sync", action="store_true",
                    help="deterministic: the loader waits for the Assistant at every epoch "
                         "boundary (autoassist.wrap(..., sync=True)); slower, for tests")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where the model trains")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: torch sees no CUDA GPU; use --device cpu")

    torch.set_num_threads(args.threads)
    train = FashionMNIST("train")
    if args.limit:
        train = Subset(train, range(args.limit))
    x_test, y_test = (t.to(device) for t in FashionMNIST("test").tensors())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = small_cnn().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    base = DataLoader(train, batch_size=args.batch_size, shuffle=True,
                      pin_memory=device.type == "cuda")
    options = {} if args.floor is None else {"floor": args.floor}
    loader = autoassist.wrap(base, seed=args.seed, sync=args.sync, **options)  # autoassist
    # autoassist: a one-cycle rate that decays fully however the epochs shrink (step per batch)
    sched = autoassist.lr_scheduler(opt, loader, "one_cycle", max_lr=args.lr, epochs=args.epochs)
    start = 0
    if args.resume:
        ckpt = torch.load(args.resume, map_location=device)  # tensors and plain values only
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        loader.load_state_dict(ckpt["loader"])
        sched.load_state_dict(ckpt["sched"])
        start = ckpt["epoch"] + 1
    history = []
    with loader:
        for epoch in range(start, args.epochs):
            loader.set_epoch(epoch)
            t0 = time.perf_counter()
            total, batches = torch.zeros((), device=device), 0  # summed on the device: no wait
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                per_sample = F.cross_entropy(model(x), y, reduction="none")
                loss = loader.report(per_sample)  # autoassist (a CUDA tensor: no GPU wait)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()  # autoassist's scheduler: the rate of the next batch
                total += loss.detach()
                batches += 1
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # the epoch's queued GPU work, in its seconds
            seconds = time.perf_counter() - t0
            acc = evaluate(model, x_test, y_test)
            mean_loss = float(total) / max(1, batches)
            tele = loader.telemetry[-1]
            history.append({"epoch": epoch, "accuracy": acc, "loss": mean_loss,
                            "seconds": seconds, **tele})
            print(f"epoch {epoch}: test acc {acc:.4f}, train loss {mean_loss:.6f}, "
                  f"{seconds:.1f}s, kept {tele['kept_fraction']:.0%} ({tele['reason']}), "
                  f"{tele['kept']} of {tele['num_instances']} instances, Assistant accuracy "
                  f"{tele['assistant_accuracy']:.2f}", flush=True)
            if args.checkpoint:
                Path(args.checkpoint).parent.mkdir(parents=True, exist_ok=True)
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                            "sched": sched.state_dict(), "loader": loader.state_dict(),
                            "epoch": epoch}, args.checkpoint)
            if epoch == args.stop_after:
                break
    return {"history": history}


if __name__ == "__main__":  # the Assistant is spawned: guard the entry point
    main()
