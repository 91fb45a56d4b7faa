"""One process of ``tests/test_hf.py``'s data-parallel runs: ``torchrun --standalone
--nproc-per-node 2 tests/hf_ddp_worker.py OUT``, two gloo processes on the CPU.

Each process trains the AutoAssistTrainer twice in one launch (the start-up is the slow part):
an uninterrupted run that saves a checkpoint in the middle of epoch 1 and one at its end, then
a run resumed from the mid-epoch checkpoint. For each run it writes ``OUT/<run>/rank<r>.json``
(the ids of each trained batch by epoch, each epoch's kept set, telemetry, steps) and
``OUT/<run>/rank<r>.pt`` (the final weights). ``sync=True``: what each epoch keeps never
depends on which process is faster.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback, TrainingArguments  # noqa: E402

from autoassist.hf import IDS_KEY, STATE_FILE, AutoAssistTrainer  # noqa: E402


def _example():
    """The example's data and collator (examples/ is no package: loaded from its file)."""
    path = Path(__file__).resolve().parents[1] / "examples" / "hf_trainer.py"
    spec = importlib.util.spec_from_file_location("autoassist_example_hf_trainer_ddp", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_ex = _example()
PAD, Verses, collate, verses = _ex.PAD, _ex.Verses, _ex.collate, _ex.verses

N, MAX_WORDS, BATCH, EPOCHS = 96, 15, 4, 4
SHRINK = {"floor": 0.3, "sync": True, "warmup_epochs": 1, "first_scores_wait": 0}


def model(vocab: int) -> GPT2LMHeadModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return GPT2LMHeadModel(GPT2Config(
            n_layer=1, n_head=2, n_embd=32, vocab_size=vocab, n_positions=MAX_WORDS + 1,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=PAD))


def arguments(out: Path, **kw) -> TrainingArguments:
    base = dict(output_dir=str(out), num_train_epochs=EPOCHS, per_device_train_batch_size=BATCH,
                learning_rate=3e-3, logging_strategy="no", save_strategy="no", report_to=[],
                use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    base.update(kw)
    return TrainingArguments(**base)


class Recorder(AutoAssistTrainer):
    """Records the ids of each batch this process trains, by the loader's epoch."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.trained: dict[int, list[list[int]]] = {}
        self.kept: dict[int, list[int] | None] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if IDS_KEY in inputs:
            epoch = self.shrinking_loader.epoch
            self.trained.setdefault(epoch, []).append(np.asarray(inputs[IDS_KEY]).tolist())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class Watch(TrainerCallback):
    """Notes each epoch's kept set; in the uninterrupted run, saves a checkpoint after the
    second batch of epoch 1 (mid-epoch) and at its end. Every process decides alike: the
    loaders of all processes stand at the same point."""

    def __init__(self, trainer: Recorder, save: bool):
        self.trainer, self.save = trainer, save

    def on_step_end(self, args, state, control, **kw):
        loader = self.trainer.shrinking_loader
        if self.save and loader.epoch == 1 and loader.batches_done == 2:
            control.should_save = True
        return control

    def on_epoch_end(self, args, state, control, **kw):
        loader = self.trainer.shrinking_loader
        mask = loader.engine.current.mask
        self.trainer.kept[loader.epoch] = None if mask is None else np.flatnonzero(mask).tolist()
        if self.save and loader.epoch == 1:
            control.should_save = True
        return control


def run(out: Path, dataset, vocab: int, resume: str | None = None) -> None:
    save = resume is None
    # a collective that hangs fails within ddp_timeout (the test's own deadline is longer)
    args = arguments(out, ddp_backend="gloo", ddp_timeout=120)
    trainer = Recorder(model=model(vocab), args=args, train_dataset=dataset,
                       data_collator=collate, shrink=SHRINK)
    trainer.add_callback(Watch(trainer, save))
    trainer.train(resume_from_checkpoint=resume)
    rank = trainer.args.process_index
    record = {"trained": trainer.trained, "kept": trainer.kept, "telemetry": trainer.telemetry,
              "global_step": trainer.state.global_step, "world_size": trainer.args.world_size}
    with open(out / f"rank{rank}.json", "w") as f:
        json.dump(record, f, default=float)
    torch.save(trainer.model.state_dict(), out / f"rank{rank}.pt")


def mid_epoch_checkpoint(out: Path) -> str:
    """The uninterrupted run's checkpoint inside epoch 1 (process 0's state says where)."""
    for folder in sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        loader = torch.load(folder / STATE_FILE)["loader"]
        if loader["epoch"] == 1 and not loader["epoch_complete"]:
            return str(folder)
    raise AssertionError(f"no mid-epoch checkpoint in {out}")


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    seqs, vocab = verses(N, MAX_WORDS)
    dataset = Verses(seqs)
    run(out / "whole", dataset, vocab)
    dist.barrier()  # every process's checkpoint parts are written
    run(out / "resumed", dataset, vocab, resume=mid_epoch_checkpoint(out / "whole"))
    dist.barrier()


if __name__ == "__main__":
    main()
