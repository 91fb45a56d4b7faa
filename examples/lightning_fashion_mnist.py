"""PyTorch Lightning with AutoAssist: the ``AutoAssist`` callback (lines marked ``# autoassist``).

    .venv/bin/python examples/lightning_fashion_mnist.py --epochs 6
    .venv/bin/python examples/lightning_fashion_mnist.py --sync --epochs 4 --stop-after 2 \
        --checkpoint ckpts/                                  # an interrupted run
    .venv/bin/python examples/lightning_fashion_mnist.py --sync --epochs 4 \
        --resume ckpts/last.ckpt                             # = one uninterrupted --sync run
    .venv/bin/python examples/lightning_fashion_mnist.py --devices 2   # DDP, 2 CPU processes

A small CNN on Fashion-MNIST (Debian's dataset-fashion-mnist), trained by a Lightning Trainer on
the instances the Assistant still finds informative. Each epoch prints test accuracy, its mean
training loss, how many instances were kept and the Assistant's accuracy; Lightning's CSV logger
gets the same telemetry (``autoassist/kept_fraction``, ...). The learning rate follows training
progress (epoch + position in the shrunk epoch), so it decays fully however much epochs shrink.
"""

from __future__ import annotations

import argparse
import time

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Subset

from autoassist.bench.datasets import FashionMNIST
from autoassist.bench.models import small_cnn
from autoassist.bench.training import evaluate, one_cycle_lr
from autoassist.lightning import AutoAssist


class FashionMNISTModel(L.LightningModule):
    def __init__(self, aa: AutoAssist, epochs: int, lr: float, seed: int):
        super().__init__()
        self.aa = aa  # autoassist
        self.epochs, self.lr = epochs, lr
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = small_cnn()
        self.x_test, self.y_test = FashionMNIST("test").tensors()
        self._losses: list[torch.Tensor] = []
        self._t0 = 0.0

    def on_train_epoch_start(self):
        self._losses, self._t0 = [], time.perf_counter()

    def training_step(self, batch, batch_idx):
        x, y = batch
        steps = max(1, len(self.aa.loader))  # this epoch's (shrunk) number of batches
        for group in self.optimizers().optimizer.param_groups:  # schedule by progress
            group["lr"] = one_cycle_lr((self.current_epoch + batch_idx / steps) / self.epochs,
                                       self.lr)
        per_sample = F.cross_entropy(self.model(x), y, reduction="none")
        loss = self.aa.report(per_sample)  # autoassist
        self._losses.append(loss.detach())
        return loss

    def on_train_epoch_end(self):
        if self.global_rank != 0:
            return
        seconds = time.perf_counter() - self._t0
        acc = evaluate(self.model, self.x_test.to(self.device), self.y_test.to(self.device))
        mean_loss = float(torch.stack(self._losses).mean())
        tele = self.aa.telemetry[-1]
        print(f"epoch {self.current_epoch}: test acc {acc:.4f}, train loss {mean_loss:.6f}, "
              f"{seconds:.1f}s, kept {tele['kept_fraction']:.0%} ({tele['reason']}), "
              f"{tele['kept']} of {tele['num_instances']} instances, Assistant accuracy "
              f"{tele['assistant_accuracy']:.2f}", flush=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, nesterov=True,
                               weight_decay=5e-4)


class StopAfter(L.Callback):
    """Ends fit after epoch ``epoch`` (its checkpoint written), as an interrupted run would."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--floor", type=float, default=0.3)
    ap.add_argument("--limit", type=int, default=None, help="first N training images only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--devices", type=int, default=1,
                    help="CPU processes; 2 or more train with DDP (strategy ddp_spawn, gloo)")
    ap.add_argument("--sync", action="store_true",
                    help="deterministic: wait for the Assistant at every epoch boundary")
    ap.add_argument("--checkpoint", default=None, metavar="DIR",
                    help="write DIR/last.ckpt after every epoch")
    ap.add_argument("--resume", default=None, metavar="CKPT", help="resume from this checkpoint")
    ap.add_argument("--stop-after", type=int, default=None, metavar="EPOCH",
                    help="stop once epoch EPOCH is done (and checkpointed); --epochs still sets "
                         "the schedule")
    ap.add_argument("--logs", default="lightning_logs", help="CSVLogger's folder")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    train = FashionMNIST("train")
    if args.limit:
        train = Subset(train, range(args.limit))
    aa = AutoAssist(floor=args.floor, seed=args.seed, sync=args.sync)  # autoassist
    model = FashionMNISTModel(aa, args.epochs, args.lr, args.seed)
    callbacks = [aa]  # autoassist
    if args.checkpoint:
        callbacks.append(ModelCheckpoint(dirpath=args.checkpoint, save_last=True, save_top_k=0))
    if args.stop_after is not None:
        callbacks.append(StopAfter(args.stop_after))
    trainer = L.Trainer(
        max_epochs=args.epochs, accelerator="cpu", devices=args.devices,
        strategy="ddp_spawn" if args.devices > 1 else "auto", callbacks=callbacks,
        logger=CSVLogger(args.logs, name="fashion_mnist"), enable_checkpointing=bool(
            args.checkpoint), enable_progress_bar=False, enable_model_summary=False)
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True)
    trainer.fit(model, train_dataloaders=aa.wrap(loader), ckpt_path=args.resume)  # autoassist


if __name__ == "__main__":  # the Assistant (and ddp_spawn's ranks) start with spawn
    main()
