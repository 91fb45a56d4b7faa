"""Run stock fairseq commands and measure them: training with a clock, BLEU per checkpoint.

Shared by ``examples/translation`` and ``benchmarks.translation``. Training runs the real
``fairseq_cli.train`` in a child process started through this module's ``__main__``, which only
adds instrumentation around fairseq's own functions (fairseq rounds its ``wall`` meter to whole
seconds and counts validation in it):

- the **training clock** starts when fairseq has built the model ("training on ..."), so it
  covers loading the training set, starting the Assistant, every epoch's batches and steps;
  it excludes fairseq's validation (its ``--eval-bleu`` generation included) and checkpoint
  writes, which both methods do alike and neither is training. The plugin's end-of-epoch
  bookkeeping, which fairseq calls from inside validation (``begin_valid_epoch``), is counted.
- with ``--eval-bleu`` (``train_args(bleu_every=k)``) each validated epoch's BLEU is recorded,
  and the run can stop when that BLEU has **plateaued** (``plateaued``) instead of fairseq's
  ``--patience``, but not before ``min_seconds`` of training (a method compared with another
  is given at least the other's time to its best before a plateau may stop it); given a
  ``target`` BLEU, the checkpoint of the first epoch that reaches it is
  kept as ``checkpoint_target.pt`` (its test BLEU is what a user stopping there gets).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

UNIFORM = ["--task", "translation", "--criterion", "label_smoothed_cross_entropy"]
PLUGIN = ["--task", "autoassist_translation",
          "--criterion", "autoassist_label_smoothed_cross_entropy"]


def model_args(layers: int = 2, dim: int = 128, ffn: int = 256, heads: int = 4) -> list[str]:
    """A small transformer with shared embeddings (joined dictionary)."""
    return ["--arch", "transformer", "--share-all-embeddings",
            "--encoder-layers", str(layers), "--decoder-layers", str(layers),
            "--encoder-embed-dim", str(dim), "--decoder-embed-dim", str(dim),
            "--encoder-ffn-embed-dim", str(ffn), "--decoder-ffn-embed-dim", str(ffn),
            "--encoder-attention-heads", str(heads), "--decoder-attention-heads", str(heads),
            "--dropout", "0.1"]


# greedy decoding, its length bounded by the source's: an untrained model babbles to the
# 200-token default otherwise (the same bound as ``generate_command``)
EVAL_BLEU_ARGS = {"beam": 1, "max_len_a": 1.5, "max_len_b": 10}


def train_args(epochs: int, *, lr: float = 2e-3, max_tokens: int = 2048, seed: int = 1,
               warmup: int = 200, bleu_every: int | None = None) -> list[str]:
    """fairseq's usual recipe (Adam, inverse-sqrt with warm-up, label smoothing 0.1) on the CPU.

    ``bleu_every=None``: no validation, a checkpoint per epoch. ``bleu_every=k``: stock
    ``--eval-bleu`` validation (greedy) every k epochs, ``checkpoint_best.pt`` by valid BLEU and
    ``checkpoint_last.pt`` only.
    """
    args = ["--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", str(lr),
            "--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(warmup),
            "--label-smoothing", "0.1", "--max-tokens", str(max_tokens),
            "--max-epoch", str(epochs), "--seed", str(seed), "--cpu", "--num-workers", "0",
            "--log-format", "simple", "--log-interval", "50", "--no-progress-bar"]
    if bleu_every is None:
        return [*args, "--disable-validation", "--no-last-checkpoints"]
    if bleu_every < 1:
        raise ValueError(f"bleu_every={bleu_every}: validate every 1 or more epochs")
    return [*args, "--eval-bleu", "--eval-bleu-args", json.dumps(EVAL_BLEU_ARGS),
            "--eval-bleu-remove-bpe", "sentencepiece", "--best-checkpoint-metric", "bleu",
            "--maximize-best-checkpoint-metric", "--validate-interval", str(bleu_every),
            "--save-interval", str(bleu_every), "--no-epoch-checkpoints"]


def plateaued(epochs: list[int], bleus: list[float], patience: int = 5,
              min_gain: float = 0.2) -> bool:
    """Whether validation BLEU has stopped improving: the best BLEU so far exceeds the best of
    the validations up to ``patience`` epochs before the last one by less than ``min_gain``.

    ``epochs``/``bleus``: the validated epochs so far, in order. False until a validation at
    least ``patience`` epochs before the last exists (too early to tell).
    """
    if patience < 1:
        raise ValueError(f"patience={patience}: give 1 or more epochs")
    if not epochs:
        return False
    earlier = [b for e, b in zip(epochs, bleus, strict=True) if e <= epochs[-1] - patience]
    if not earlier:
        return False
    return max(bleus) - max(earlier) < min_gain


def fairseq_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", PYTHONUNBUFFERED="1")
    return env


def train(data_bin, save_dir, args: list[str], *, threads: int = 2, echo=None,
          patience: int | None = None, min_gain: float = 0.2,
          target: float | None = None, min_seconds: float | None = None) -> dict:
    """Run ``fairseq-train data_bin args`` with the training clock; return its measurements.

    ``echo(line)`` receives fairseq's epoch-summary, validation and autoassist lines as they
    come (progress). ``patience``: stop once ``plateaued`` (needs ``--eval-bleu``), and not before
    ``min_seconds`` of training; ``target``:
    keep the first checkpoint whose valid BLEU reaches it as ``checkpoint_target.pt``.
    Returns ``{"epoch_seconds": [...], "epochs": [...], "bleu": {epoch: BLEU}, "stopped": str,
    "train_wall": [...], "log": str}``: training seconds at each epoch's end, the validated
    epochs' BLEU, why it stopped ("plateau" or "max_epoch"), fairseq's own per-epoch
    ``train_wall`` (its train-step time only, whole seconds) as a cross-check.
    """
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    clock = save_dir / "epoch_clock.json"
    clock.unlink(missing_ok=True)
    (save_dir / "checkpoint_target.pt").unlink(missing_ok=True)
    control = save_dir / "clock_control.json"
    control.write_text(json.dumps({"clock": str(clock), "patience": patience,
                                   "min_gain": min_gain, "target": target,
                                   "min_seconds": min_seconds}))
    cmd = [sys.executable, "-m", "autoassist.bench.fairseq_runs", str(control), str(data_bin),
           "--save-dir", str(save_dir), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=fairseq_env(threads))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if echo and ("| train | epoch" in line or "| valid | epoch" in line
                     or "autoassist: epoch" in line):
            echo(line.rstrip())
    code = proc.wait()
    log = "".join(lines)
    if code != 0:
        raise RuntimeError(f"fairseq-train failed ({code}):\n{log[-4000:]}")
    measured = json.loads(clock.read_text())
    return {**measured, "bleu": {int(e): b for e, b in measured["bleu"].items()},
            "train_wall": parse_epoch_stat(log, "train_wall"), "log": log}


def parse_epoch_stat(log: str, stat: str, tag: str = "train") -> list[float]:
    """``stat`` from each of fairseq's end-of-epoch ``| train | epoch NNN | ...`` summaries
    (``tag="valid"``: the validation summaries, e.g. ``bleu``)."""
    values = []
    for line in log.splitlines():
        if f"| {tag} | epoch" in line:
            match = re.search(rf"\| {stat} ([-0-9.e]+)", line)
            if match:
                values.append(float(match.group(1)))
    return values


def generate_command(data_bin, checkpoint, *, subset: str = "valid", beam: int = 1,
                     batch_size: int = 128) -> list[str]:
    """``fairseq-generate`` scoring ``checkpoint`` on ``subset`` with SacreBLEU (SentencePiece
    removed)."""
    return [sys.executable, "-m", "fairseq_cli.generate", str(data_bin), "--path", str(checkpoint),
            "--gen-subset", subset, "--beam", str(beam), "--batch-size", str(batch_size),
            "--remove-bpe", "sentencepiece", "--scoring", "sacrebleu", "--cpu", "--quiet",
            # an untrained model babbles to the 200-token default: bound it by the source
            "--max-len-a", "1.5", "--max-len-b", "10"]


def parse_bleu(output: str) -> float | None:
    match = re.search(r"BLEU = ([0-9.]+)", output)
    return None if match is None else float(match.group(1))


def bleu(data_bin, checkpoint, *, subset: str = "valid", beam: int = 1,
         threads: int = 2, batch_size: int = 128) -> float:
    """SacreBLEU of ``checkpoint`` on ``subset`` (SentencePiece removed), via fairseq-generate."""
    cmd = generate_command(data_bin, checkpoint, subset=subset, beam=beam, batch_size=batch_size)
    done = subprocess.run(cmd, capture_output=True, text=True, env=fairseq_env(threads))
    out = done.stdout + done.stderr
    score = parse_bleu(out)
    if done.returncode != 0 or score is None:
        raise RuntimeError(f"fairseq-generate failed ({done.returncode}):\n{out[-3000:]}")
    return score


class _Clock(logging.Handler):
    """The child's training clock: timestamps fairseq's "end of epoch N" messages, less the
    time spent validating and writing checkpoints (see the module docstring)."""

    def __init__(self, control: dict):
        super().__init__(logging.INFO)
        self.path = Path(control["clock"])
        self.patience, self.min_gain = control.get("patience"), control.get("min_gain", 0.2)
        self.target = control.get("target")
        self.min_seconds = control.get("min_seconds")
        self.start: float | None = None
        self.excluded = 0.0  # validation and checkpoint seconds so far
        self.seconds: list[float] = []
        self.epochs: list[int] = []
        self.bleu: dict[int, float] = {}
        self.stopped = "max_epoch"
        self.target_epoch: int | None = None
        self.write()

    def now(self) -> float:
        return time.perf_counter() - self.start - self.excluded

    def write(self) -> None:
        self.path.write_text(json.dumps({
            "epoch_seconds": self.seconds, "epochs": self.epochs, "bleu": self.bleu,
            "stopped": self.stopped, "target_epoch": self.target_epoch}))

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if self.start is None and msg.startswith("training on"):
            self.start = time.perf_counter()
        elif msg.startswith("end of epoch") and self.start is not None:
            self.seconds.append(self.now())
            self.epochs.append(int(msg.split()[3]))
            self.write()

    def should_stop(self, cfg, valid_metric) -> bool:
        """Replaces fairseq's ``should_stop_early``: the plateau rule on valid BLEU, once
        ``min_seconds`` of training have passed."""
        if valid_metric is None or self.patience is None:
            return False
        if self.min_seconds is not None and self.now() < self.min_seconds:
            return False
        epochs = sorted(self.bleu)
        if plateaued(epochs, [self.bleu[e] for e in epochs], self.patience, self.min_gain):
            self.stopped = "plateau"
            return True
        return False


def _instrument(clock: _Clock) -> None:
    """Wrap fairseq's validation, checkpoint writing and early stopping for ``clock``."""
    import shutil

    from fairseq import checkpoint_utils, trainer
    from fairseq_cli import train as fairseq_train

    counted = [0.0]  # seconds of the task's begin_valid_epoch (the plugin's epoch end)
    validate, begin_valid_epoch = fairseq_train.validate, trainer.Trainer.begin_valid_epoch
    save_checkpoint = checkpoint_utils.save_checkpoint

    def timed_begin_valid_epoch(self, epoch):
        start = time.perf_counter()
        try:
            return begin_valid_epoch(self, epoch)
        finally:
            counted[0] += time.perf_counter() - start

    def timed_validate(cfg, trainer_, task, epoch_itr, subsets):
        start, before = time.perf_counter(), counted[0]
        losses = validate(cfg, trainer_, task, epoch_itr, subsets)
        clock.excluded += time.perf_counter() - start - (counted[0] - before)
        if cfg.checkpoint.best_checkpoint_metric == "bleu" and losses and losses[0] is not None:
            clock.bleu[epoch_itr.epoch] = float(losses[0])
        return losses

    def timed_save(cfg, trainer_, epoch_itr, val_loss):
        start = time.perf_counter()
        try:
            path = save_checkpoint(cfg, trainer_, epoch_itr, val_loss)
            epoch = epoch_itr.epoch
            last = Path(cfg.save_dir) / "checkpoint_last.pt"
            if (clock.target is not None and clock.target_epoch is None
                    and clock.bleu.get(epoch, -1.0) >= clock.target and last.is_file()):
                shutil.copy(last, Path(cfg.save_dir) / "checkpoint_target.pt")
                clock.target_epoch = epoch
            return path
        finally:
            clock.excluded += time.perf_counter() - start

    fairseq_train.validate = timed_validate
    trainer.Trainer.begin_valid_epoch = timed_begin_valid_epoch
    checkpoint_utils.save_checkpoint = timed_save
    fairseq_train.should_stop_early = clock.should_stop


def _child(argv: list[str]) -> None:
    control, fairseq_argv = json.loads(Path(argv[0]).read_text()), argv[1:]
    clock = _Clock(control)
    from fairseq_cli import train as fairseq_train

    logging.getLogger("fairseq_cli.train").addHandler(clock)
    _instrument(clock)
    sys.argv = ["fairseq-train", *fairseq_argv]
    try:
        fairseq_train.cli_main()
    finally:
        clock.write()


if __name__ == "__main__":
    _child(sys.argv[1:])
