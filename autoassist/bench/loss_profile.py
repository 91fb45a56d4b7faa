"""How a trained model's training loss is spread over the instances: what a loss-based keep
rule can skip.

Skipping low-loss instances saves compute only where they carry little of the learning signal.
At the point where uniform training peaks, this module reads every training instance's loss
and summarises how concentrated it is: the share of the total loss carried by the
lower-loss half (``easy_half_share``; 0.5 if every instance had the same loss), the share
carried by the instances below the mean (what the library's default rule marks "not
informative" and keeps at the floor), and the Lorenz curve (the share carried by the lowest
``q`` of instances, for ``q`` from 0 to 1). The loss stands in for the gradient: for cross
entropy, an instance's gradient on the logits shrinks with its loss.

Two sources:
- classification tasks of the lab (``classifier_losses``): uniform trained with the frontier
  harness's own loop (``run_one``), then every training instance's cross entropy in eval mode;
- a fairseq translation checkpoint (``translation_losses``): every training pair's per-token
  NLL (and label-smoothed loss, what the plugin reports), in a child process that loads
  fairseq.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

LORENZ_POINTS = 21  # the Lorenz curve at q = 0, 0.05, ..., 1


def profile(losses) -> dict[str, Any]:
    """Summary of how ``losses`` (one per instance, >= 0) are concentrated.

    Args:
        losses: per-instance losses.

    Returns:
        ``{"instances", "mean", "quantiles": {"10": ..., "25", "50", "75", "90"},
        "easy_half_share", "below_mean_fraction", "below_mean_share", "lorenz_q",
        "lorenz_share"}``: shares are fractions of the total loss.

    Raises:
        ValueError: no loss, a negative or non-finite one, or all zero.
    """
    losses = np.sort(np.asarray(losses, dtype=np.float64).ravel())
    if losses.size == 0:
        raise ValueError("no losses to profile")
    if not np.isfinite(losses).all() or losses[0] < 0:
        raise ValueError("losses must be finite and >= 0")
    total = float(losses.sum())
    if total <= 0:
        raise ValueError("every loss is 0: nothing to profile")
    n = losses.size
    cumulative = np.concatenate([[0.0], np.cumsum(losses)]) / total
    whole = np.arange(n + 1)  # the share of the lowest q of instances, linear between whole ones
    q = np.linspace(0.0, 1.0, LORENZ_POINTS)
    share = np.interp(q * n, whole, cumulative)
    mean = total / n
    below = losses < mean
    return {
        "instances": int(n), "mean": mean,
        "quantiles": {str(p): float(np.quantile(losses, p / 100)) for p in (10, 25, 50, 75, 90)},
        "easy_half_share": float(np.interp(n / 2, whole, cumulative)),
        "below_mean_fraction": float(below.mean()),
        "below_mean_share": float(losses[below].sum() / total),
        "lorenz_q": q.tolist(), "lorenz_share": share.tolist(),
    }


# ------------------------------------------------------------------------------------------------
# Classification: uniform trained by the frontier's loop, then every training loss
# ------------------------------------------------------------------------------------------------
def classifier_losses(task_name: str, *, epochs: int, lr: float, seed: int = 0,
                      loop: str = "sgd", progress: bool = False) -> tuple[np.ndarray, dict]:
    """Train uniform on the frontier's training split (validation held out) and return every
    training instance's cross entropy at the end, in eval mode, with the run's record.

    Args:
        task_name: a lab task (``keel_magic``, ``fashion_mnist``, ``adult``).
        epochs: the run's budget (its one-cycle schedule decays over it).
        lr: the learning rate (the frontier's, chosen on the validation split).
        seed: initial weights and data order.
        loop: ``sgd`` or ``adam``, as in the frontier harness.
        progress: per-batch progress bars.

    Returns:
        ``(losses, record)``: losses in the training split's order; ``record`` is
        ``run_one``'s (test accuracy per epoch, seconds), without the losses.
    """
    import torch

    from autoassist.bench.frontier import split_validation
    from autoassist.bench.tasks import get_task
    from autoassist.bench.time_to_accuracy import Uniform, run_one
    from autoassist.bench.training import per_sample_cross_entropy

    class _UniformThenLosses(Uniform):
        """Uniform; after the last epoch, every training instance's loss."""

        def bind(self, model) -> None:
            self.model = model

        def info(self) -> dict[str, Any]:
            x, y = self.train.tensors()
            self.model.eval()
            with torch.no_grad():
                losses = torch.cat([
                    per_sample_cross_entropy(self.model(x[i:i + 2048]), y[i:i + 2048])
                    for i in range(0, len(y), 2048)])
            return {"train_losses": losses.numpy()}

    task = get_task(task_name)
    train, test = task.load(None)
    fit, _ = split_validation(train)
    record = run_one(task, "uniform", fit, test, seed=seed, lr=lr, epochs=epochs,
                     progress=progress, loop=loop, runner=_UniformThenLosses,
                     log=lambda _line: None)
    losses = np.asarray(record.pop("train_losses"), dtype=np.float64)
    return losses, record


# ------------------------------------------------------------------------------------------------
# Translation: a fairseq checkpoint's per-pair losses on its training set
# ------------------------------------------------------------------------------------------------
def translation_losses(data_bin, checkpoint, *, threads: int = 1,
                       max_tokens: int = 4096) -> dict[str, np.ndarray]:
    """Every training pair's per-token NLL and label-smoothed loss (epsilon 0.1, what the
    plugin reports) under ``checkpoint``, in eval mode (no dropout), in nats.

    Runs in a child process (fairseq is imported there only), like the harness's training.

    Args:
        data_bin: the corpus's fairseq ``data-bin``.
        checkpoint: a ``checkpoint_*.pt`` trained on it.
        threads: torch threads of the child.
        max_tokens: tokens per forward batch.

    Returns:
        ``{"nll": ..., "smoothed": ..., "tokens": ...}``, arrays indexed by pair id.

    Raises:
        FileNotFoundError: the checkpoint or data-bin is missing.
        RuntimeError: the child failed (its output's tail is in the message).
    """
    from autoassist.bench.fairseq_runs import fairseq_env

    for path in (Path(data_bin), Path(checkpoint)):
        if not path.exists():
            raise FileNotFoundError(f"{path}: not found (train the run first: "
                                    "python -m benchmarks.translation)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "losses.npz"
        done = subprocess.run(
            [sys.executable, "-m", "autoassist.bench.loss_profile", str(data_bin),
             str(checkpoint), str(out), str(max_tokens)],
            capture_output=True, text=True, env=fairseq_env(threads))
        if done.returncode != 0 or not out.is_file():
            raise RuntimeError(f"loss profile of {checkpoint} failed ({done.returncode}):\n"
                               f"{(done.stdout + done.stderr)[-3000:]}")
        with np.load(out) as arrays:
            return {k: arrays[k] for k in ("nll", "smoothed", "tokens")}


def _translation_child(data_bin: str, checkpoint: str, out: str, max_tokens: int) -> None:
    import torch
    from fairseq import checkpoint_utils

    from autoassist.pipelines.fairseq_criterion import per_sentence_label_smoothed

    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [checkpoint], arg_overrides={"data": data_bin})
    model = models[0].eval()
    task.load_dataset("train")
    dataset = task.dataset("train")
    n = len(dataset)
    nll = np.full(n, np.nan)
    smoothed = np.full(n, np.nan)
    tokens = np.zeros(n, dtype=np.int64)
    batches = task.get_batch_iterator(dataset, max_tokens=max_tokens, seed=1,
                                      ignore_invalid_inputs=True).next_epoch_itr(shuffle=False)
    pad = task.target_dictionary.pad()
    with torch.no_grad():
        for sample in batches:
            output = model(**sample["net_input"])
            lprobs = model.get_normalized_probs(output, log_probs=True)
            # the plugin's own per-sentence sums (pipelines.fairseq_criterion)
            loss, nll_sum, count = per_sentence_label_smoothed(lprobs, sample["target"], 0.1, pad)
            count = count.clamp(min=1)
            ids = sample["id"].numpy()
            nll[ids] = (nll_sum / count).numpy()
            smoothed[ids] = (loss / count).numpy()
            tokens[ids] = count.numpy()
    seen = ~np.isnan(nll)  # pairs fairseq filtered out by size keep no loss
    np.savez(out, nll=nll[seen], smoothed=smoothed[seen], tokens=tokens[seen])


if __name__ == "__main__":
    _translation_child(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
    print(json.dumps({"written": sys.argv[3]}))
