"""Run stock fairseq commands and measure them: training with an epoch clock, BLEU per checkpoint.

Shared by ``examples/translation`` and ``benchmarks.translation``. Training runs the real
``fairseq_cli.train`` in a child process started through this module's ``__main__``, which only
adds a logging handler that timestamps fairseq's own "end of epoch" messages (fairseq rounds its
``wall`` meter to whole seconds). The clock starts when fairseq has built the model, so it covers
loading the training set, starting the Assistant, every epoch and checkpoint saving; it excludes
validation only because the runs use ``--disable-validation`` (BLEU is measured afterwards on the
per-epoch checkpoints, outside the clock).
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


def train_args(epochs: int, *, lr: float = 2e-3, max_tokens: int = 2048, seed: int = 1,
               warmup: int = 200) -> list[str]:
    return ["--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", str(lr),
            "--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(warmup),
            "--label-smoothing", "0.1", "--max-tokens", str(max_tokens),
            "--max-epoch", str(epochs), "--seed", str(seed), "--cpu", "--num-workers", "0",
            "--disable-validation", "--no-last-checkpoints", "--log-format", "simple",
            "--log-interval", "50", "--no-progress-bar"]


def fairseq_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", PYTHONUNBUFFERED="1")
    return env


def train(data_bin, save_dir, args: list[str], *, threads: int = 2,
          echo=None) -> dict:
    """Run ``fairseq-train data_bin args`` with the epoch clock; return its measurements.

    ``echo(line)`` receives fairseq's epoch-summary and autoassist lines as they come (progress).
    Returns ``{"epoch_seconds": [...], "log": str}`` (seconds since model build at each epoch end).
    """
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    clock = save_dir / "epoch_clock.json"
    clock.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "autoassist.bench.fairseq_runs", str(clock), str(data_bin),
           "--save-dir", str(save_dir), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=fairseq_env(threads))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if echo and ("| train | epoch" in line or "autoassist: epoch" in line):
            echo(line.rstrip())
    code = proc.wait()
    log = "".join(lines)
    if code != 0:
        raise RuntimeError(f"fairseq-train failed ({code}):\n{log[-4000:]}")
    return {"epoch_seconds": json.loads(clock.read_text())["epoch_seconds"], "log": log}


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


class _EpochClock(logging.Handler):
    """Timestamps fairseq's "end of epoch N" messages (child-process side)."""

    def __init__(self, path: Path):
        super().__init__(logging.INFO)
        self.path, self.start, self.seconds = path, None, []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if self.start is None and msg.startswith("training on"):
            self.start = time.perf_counter()
        elif msg.startswith("end of epoch") and self.start is not None:
            self.seconds.append(time.perf_counter() - self.start)
            self.path.write_text(json.dumps({"epoch_seconds": self.seconds}))


def _child(argv: list[str]) -> None:
    clock_path, fairseq_argv = Path(argv[0]), argv[1:]
    clock_path.write_text(json.dumps({"epoch_seconds": []}))
    from fairseq_cli import train as fairseq_train

    logging.getLogger("fairseq_cli.train").addHandler(_EpochClock(clock_path))
    sys.argv = ["fairseq-train", *fairseq_argv]
    fairseq_train.cli_main()


if __name__ == "__main__":
    _child(sys.argv[1:])
