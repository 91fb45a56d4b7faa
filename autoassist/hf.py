"""Hugging Face ``transformers``: ``AutoAssistTrainer``, a Trainer whose epochs shrink.

    from autoassist.hf import AutoAssistTrainer

    trainer = AutoAssistTrainer(model=model, args=TrainingArguments(..., num_train_epochs=5),
                                train_dataset=train, data_collator=collate,
                                shrink={"floor": 0.5})   # autoassist.wrap's settings
    trainer.train()                     # or train(resume_from_checkpoint=...)

How it meets the Trainer (docs/hf.md has the details):

- The training loader: the Trainer builds and ``accelerator.prepare``s its DataLoader as usual
  (``get_train_dataloader``); the shrinking loader is made from it and has accelerate prepare
  the DataLoader it rebuilds (``wrap(..., prepare=accelerator.prepare)``), so batches keep
  accelerate's device placement. The Trainer iterates a thin adapter whose ``len()`` is the
  full epoch's until training starts (so ``max_steps`` and the LR schedule's length are those
  of full epochs), then each (shrunk) epoch's.
- Ids: a batch's instance ids are the dataset's indices the shrinking sampler chose; the adapter
  puts them in the batch under ``IDS_KEY`` (NumPy, so the Trainer leaves them on the CPU) and
  ``compute_loss`` takes them out again: no id column, whatever ``remove_unused_columns`` does.
- Losses: per-sequence means over the tokens whose label is not -100 (labels shifted for causal
  LMs), reported with those ids; the (re)weighted mean is the loss to backpropagate.
- Epochs: the adapter runs the loader's own epochs whatever number the Trainer passes to
  ``set_epoch`` (the Trainer derives its epoch from the global step and full-epoch lengths),
  and a callback stops training once ``num_train_epochs`` epochs have run. The LR schedule the
  Trainer asks for (``lr_scheduler_type``, warm-up) is read at the run's *progress* (epoch and
  position in the shrunk epoch), so it ends where it should however epochs shrink.
- State: ``autoassist_state.pt`` in each checkpoint folder (tensors and plain values:
  ``torch.load``'s default ``weights_only=True`` reads it); ``train(resume_from_checkpoint=...)``
  continues.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from autoassist.config import ShrinkConfig
from autoassist.errors import UsageError
from autoassist.pipelines.dataloader import ShrinkingLoader

try:
    from transformers import Trainer, TrainerCallback
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
except ImportError as error:  # pragma: no cover - the extra is installed wherever tests run
    raise ImportError(
        "autoassist.hf needs Hugging Face transformers (>= 4.57, < 5) and accelerate: "
        "pip install 'autoassist[hf]'"
    ) from error

__all__ = ["IDS_KEY", "STATE_FILE", "AutoAssistTrainer", "token_features"]

IDS_KEY = "autoassist_ids"  # the batch entry holding its instance ids (taken out before forward)
STATE_FILE = "autoassist_state.pt"  # in each checkpoint folder: the loader's and Assistant's state
_STATE_VERSION = 1


def token_features(dataset, dim: int = 32) -> np.ndarray:
    """Per-instance Assistant features from token ids: a hashed bag of the instance's tokens
    (sublinear TF-IDF, L2-normalised) plus its standardised log length.

    Padding never enters: the tokens are the dataset's own ``input_ids`` (before any collator
    pads them), less those whose ``attention_mask`` is 0 when the item has one.

    Args:
        dataset: a map-style dataset whose items are mappings with ``input_ids``.
        dim: hashed buckets (the table has ``dim + 1`` columns).

    Returns:
        A float32 array ``[len(dataset), dim + 1]``.

    Raises:
        UsageError: an item has no ``input_ids``.
    """
    from autoassist.assistant.text_features import sentence_pair_features

    sequences = []
    for i in range(len(dataset)):
        item = dataset[i]
        if not isinstance(item, Mapping) or "input_ids" not in item:
            raise UsageError(
                f"token_features reads each item's input_ids, and item {i} is "
                f"{type(item).__name__} without one; pass features=... (a [N, d] table or "
                "fn(batch)) to AutoAssistTrainer, or use assistant='memory' (no features)"
            )
        ids = np.asarray(torch.as_tensor(item["input_ids"]).cpu()).reshape(-1)
        mask = item.get("attention_mask")
        if mask is not None:
            ids = ids[np.asarray(torch.as_tensor(mask).cpu()).reshape(-1) != 0]
        sequences.append(ids)
    return sentence_pair_features(sequences, dim=dim)


class _TrainerLoader:
    """What the Trainer iterates in place of its DataLoader: the shrinking loader's epochs,
    each batch with its ids under ``IDS_KEY``.

    ``len()`` is the full epoch's (the Trainer sizes ``max_steps`` and the LR schedule from it)
    until the Trainer's first ``set_epoch``; from then on the current epoch's batches still to
    come. ``set_epoch`` runs the loader's next epoch (or continues a resumed, unfinished one),
    whatever number the Trainer gives.
    """

    def __init__(self, loader: ShrinkingLoader, next_epoch: int):
        self.loader = loader
        self.dataset = loader.user_loader.dataset  # Trainer.num_examples reads it
        self.next_epoch = next_epoch  # the loader's epoch the next set_epoch runs
        self._started = False
        self._length = 0
        self._held = ExitStack()  # the epoch's end, held until its last batch is reported
        self._outstanding = 0  # batches yielded and not yet reported
        self._ran_out = False

    def __len__(self) -> int:
        if not self._started:
            return len(self.loader.user_loader)
        return self._length

    def set_epoch(self, trainer_epoch: int) -> None:
        self.end_held_epoch()
        self._started = True
        self.loader.set_epoch(self.next_epoch)
        self._length = max(len(self.loader) - self.loader.batches_done, 0)

    @property
    def epochs_done(self) -> int:
        """Epochs this run has finished (all their batches trained)."""
        return self.next_epoch

    def __iter__(self) -> Iterator[Any]:
        loader = self.loader
        if not self._started:  # iterated without set_epoch (not the Trainer's way)
            self.set_epoch(0)
        self.end_held_epoch()
        self._held.enter_context(loader.late_reports())
        self._ran_out = False
        batches = iter(loader)
        end = object()
        for batch in batches:
            ids = loader.batch_ids
            if not isinstance(batch, Mapping):
                raise UsageError(
                    f"AutoAssistTrainer needs dict batches (the Trainer's model(**inputs)); the "
                    f"collator returned {type(batch).__name__}"
                )
            if loader.batches_done >= len(loader):  # the epoch's last: let the loader end it
                if next(batches, end) is not end:  # now (held until the batch is reported)
                    raise RuntimeError("the shrinking loader yielded more batches than len()")
                self._ran_out = True
                self.next_epoch = loader.epoch + 1
            batch = dict(batch)  # the collator's own (a BatchEncoding, say) stays untouched
            batch[IDS_KEY] = ids
            self._outstanding += 1
            yield batch
        if not self._ran_out:  # an empty epoch
            self._ran_out = True
            self.next_epoch = loader.epoch + 1
        if self._outstanding == 0:
            self.end_held_epoch()

    def reported(self) -> None:
        """One yielded batch was reported: after the epoch's last, its end goes ahead."""
        self._outstanding = max(self._outstanding - 1, 0)
        if self._ran_out and self._outstanding == 0:
            self.end_held_epoch()

    def end_held_epoch(self) -> None:
        self._outstanding = 0
        self._held.close()


class _EpochBudget(TrainerCallback):
    """Stops training once the loader has run ``num_train_epochs`` epochs (the Trainer's own
    epoch count, derived from global steps of full-length epochs, would run more)."""

    def __init__(self, trainer: AutoAssistTrainer):
        self.trainer = trainer

    def on_epoch_end(self, args, state, control, **kwargs):
        adapter = self.trainer._aa_adapter
        if adapter is not None and adapter.epochs_done >= int(args.num_train_epochs):
            control.should_training_stop = True
        return control


class AutoAssistTrainer(Trainer):
    """A ``transformers.Trainer`` that trains each epoch on the instances the Assistant still
    finds informative.

    Use it as the Trainer; the training loss is the (re)weighted mean of per-sequence losses
    (the mean over each sequence's tokens whose label is not -100, labels shifted for causal
    LMs), which also go to the Assistant with the batch's instance ids (the dataset's indices).
    Evaluation is the Trainer's own. The run is counted in epochs: ``num_train_epochs`` epochs
    run, each shrunk, and the Trainer's LR schedule (``lr_scheduler_type``, warm-up) follows
    the run's progress, ending with the last batch of the last epoch.

    Args:
        *args: the Trainer's.
        shrink: autoassist's settings: a ``ShrinkConfig``, a dict, or a .toml/.json file
            (``autoassist.wrap``'s ``config``); None for the defaults.
        features: the Assistant's per-instance features when it learns from them (assistant
            'logistic', 'sgd' or 'mlp'): a ``[N, d]`` table or ``fn(batch) -> [B, d]``. None:
            ``token_features`` of the training set (hashed bags of its token ids).
        **kwargs: the Trainer's keyword arguments.

    Raises:
        UsageError: (at ``train``) a step budget (``max_steps > 0``), a fractional
            ``num_train_epochs``, ``compute_loss_func`` or label smoothing (the loss is computed
            here: override ``per_sample_loss``), several processes, or gradient accumulation
            where the Trainer fixes the epoch length up front (transformers 5).
    """

    def __init__(self, *args, shrink=None, features=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.shrink_config = ShrinkConfig.coerce(shrink)
        self._aa_features = features
        self._aa_adapter: _TrainerLoader | None = None
        self._aa_state_to_load: dict[str, Any] | None = None
        self._aa_telemetry: list[dict[str, Any]] = []
        # the loss compute_loss returns is a per-sequence mean: the Trainer divides it by the
        # accumulation steps itself (not by a token count across them)
        self.model_accepts_loss_kwargs = False
        self.add_callback(_EpochBudget(self))

    # -- what the user reads -----------------------------------------------------------------
    @property
    def shrinking_loader(self) -> ShrinkingLoader | None:
        """The shrinking loader of the training in progress (None outside ``train``)."""
        return None if self._aa_adapter is None else self._aa_adapter.loader

    @property
    def telemetry(self) -> list[dict[str, Any]]:
        """One dict per finished epoch (``ShrinkingLoader.telemetry``), also after ``train``."""
        loader = self.shrinking_loader
        return loader.telemetry if loader is not None else self._aa_telemetry

    # -- training ------------------------------------------------------------------------------
    def train(self, *args, **kwargs):
        """The Trainer's ``train``; the Assistant is stopped when it returns or raises."""
        self._check_settings()
        try:
            return super().train(*args, **kwargs)
        finally:
            self.close_autoassist()

    def close_autoassist(self) -> None:
        """Stop the Assistant and free its shared memory (idempotent; telemetry stays)."""
        adapter, self._aa_adapter = self._aa_adapter, None
        if adapter is None:
            return
        try:
            adapter.end_held_epoch()
        finally:
            self._aa_telemetry = list(adapter.loader.telemetry)
            adapter.loader.close()

    def _check_settings(self) -> None:
        args = self.args
        if args.max_steps is not None and args.max_steps > 0:
            raise UsageError(
                f"AutoAssistTrainer counts the run in epochs, and max_steps={args.max_steps} "
                "sets a step budget: shrunk epochs have fewer steps, so the run would train "
                "more epochs than planned. Set num_train_epochs and leave max_steps at -1"
            )
        epochs = args.num_train_epochs
        if epochs != int(epochs) or epochs < 1:
            raise UsageError(
                f"num_train_epochs={epochs}: AutoAssistTrainer runs whole epochs (each shrinks "
                "by its own amount); give a positive whole number"
            )
        if self.compute_loss_func is not None or args.label_smoothing_factor > 0:
            raise UsageError(
                "AutoAssistTrainer computes the per-sequence losses itself; instead of "
                "compute_loss_func or label_smoothing_factor, subclass it and override "
                "per_sample_loss(outputs, labels)"
            )
        if args.world_size > 1:
            raise UsageError(
                f"AutoAssistTrainer runs in one process for now (world size {args.world_size}); "
                "for data-parallel training use autoassist.wrap with a DistributedSampler in "
                "your own loop, or the Lightning callback"
            )
        if args.gradient_accumulation_steps > 1 and _epoch_length_fixed():
            raise UsageError(
                f"gradient_accumulation_steps={args.gradient_accumulation_steps}: this "
                "transformers version fixes each epoch's length when training starts, so it "
                "would not step the optimizer after the last batches of a shrunk epoch. Use "
                "gradient_accumulation_steps=1 (a larger per_device_train_batch_size), or "
                "transformers 4.57, which reads each epoch's length"
            )
        if not args.ignore_data_skip:  # the loader's state resumes the data position itself
            args.ignore_data_skip = True

    def get_train_dataloader(self):
        """The Trainer's training DataLoader, shrinking: built and prepared by the Trainer, then
        wrapped, its rebuilt DataLoader prepared by accelerate again (device placement)."""
        prepared = super().get_train_dataloader()
        if self._aa_adapter is not None:  # a retried inner loop (auto_find_batch_size)
            self.close_autoassist()
        features = self._aa_features
        if features is None and self.shrink_config.assistant != "memory":
            features = token_features(prepared.dataset, self.shrink_config.feature_dim)
        loader = ShrinkingLoader(prepared, self.shrink_config, features=features,
                                 prepare=self.accelerator.prepare)
        next_epoch = 0
        state, self._aa_state_to_load = self._aa_state_to_load, None
        if state is not None:
            try:
                loader.load_state_dict(state["loader"])
            except BaseException:
                loader.close()
                raise
            next_epoch = int(state["loader"]["epoch"]) + bool(state["loader"]["epoch_complete"])
        self._aa_adapter = _TrainerLoader(loader, next_epoch)
        return self._aa_adapter

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The training batches' (re)weighted mean per-sequence loss, reported to the Assistant
        with the batch's ids; other batches (evaluation) get the Trainer's own loss."""
        ids = inputs.pop(IDS_KEY, None) if isinstance(inputs, Mapping) else None
        if ids is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        adapter = self._aa_adapter
        if adapter is None:
            raise RuntimeError("a batch of AutoAssistTrainer's loader arrived after training "
                               "ended; call trainer.train() to train")
        labels = inputs.get("labels")
        if labels is None:
            raise UsageError(
                "AutoAssistTrainer needs the batch's labels to compute per-sequence losses; the "
                "collator made none (for causal LMs set labels = input_ids, -100 at padding)"
            )
        # labels go in too: encoder-decoder models make their decoder inputs from them
        outputs = model(**inputs)
        per_sample = self.per_sample_loss(model, outputs, labels)
        loss = adapter.loader.report(per_sample, ids=ids)
        adapter.reported()
        return (loss, outputs) if return_outputs else loss

    def per_sample_loss(self, model, outputs, labels: torch.Tensor) -> torch.Tensor:
        """One loss per instance of the batch: cross-entropy averaged over the tokens whose label
        is not -100 (shifted by one for causal LMs), or per-instance cross-entropy / squared
        error for sequence classification / regression. Override it for other losses.

        Args:
            model: the model (possibly wrapped).
            outputs: the model's outputs (with ``logits``).
            labels: the batch's labels.

        Returns:
            A 1-D float tensor, one loss per instance (a sequence with no labelled token: 0).
        """
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
        if labels.dim() == 1 and logits.dim() == 2 and logits.shape[-1] == 1:  # regression
            return (logits.squeeze(-1).float() - labels.float()) ** 2
        if labels.dim() == 1:  # one class per instance
            return F.cross_entropy(logits.float(), labels, reduction="none")
        if _is_causal_lm(model):
            logits, labels = logits[..., :-1, :], labels[..., 1:]
        tokens = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                 labels.reshape(-1), ignore_index=-100, reduction="none")
        tokens = tokens.view(labels.shape)
        mask = labels.ne(-100)
        return (tokens * mask).sum(-1) / mask.sum(-1).clamp(min=1)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The Trainer's schedule (``lr_scheduler_type``, warm-up) for ``num_training_steps``
        full-epoch steps, read at the run's progress: after an optimizer step at progress p
        (epochs done plus the fraction of the current shrunk epoch trained, over
        ``num_train_epochs``), the rate is the schedule's at step ``p * num_training_steps``.

        A scheduler given to the Trainer (``optimizers=(opt, sched)``) is kept as it is.
        """
        given = self.lr_scheduler is not None
        base = super().create_scheduler(num_training_steps, optimizer)
        if given:
            warnings.warn("autoassist: the lr_scheduler passed to the Trainer is stepped per "
                          "optimizer step, and shrunk epochs have fewer steps: it will not reach "
                          "its end", UserWarning, stacklevel=2)
            return base
        if not isinstance(base, torch.optim.lr_scheduler.LambdaLR):
            raise UsageError(
                f"lr_scheduler_type={self.args.lr_scheduler_type!r} makes a "
                f"{type(base).__name__}, which AutoAssistTrainer cannot drive by progress; use "
                "linear, cosine, constant, constant_with_warmup, polynomial or another "
                "LambdaLR schedule"
            )
        total = float(num_training_steps)
        epochs = int(self.args.num_train_epochs)

        def at_progress(fn):
            def rate(_step: int) -> float:
                return fn(self._progress(epochs) * total)
            return rate

        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            base.optimizer, [at_progress(fn) for fn in base.lr_lambdas])
        return self.lr_scheduler

    def _progress(self, epochs: int) -> float:
        """Training progress in [0, 1]: (epoch + trained / len) / epochs."""
        adapter = self._aa_adapter
        if adapter is None:
            return 0.0
        loader = adapter.loader
        steps = len(loader)
        done = loader.batches_done
        position = loader.epoch + (1.0 if steps == 0 or done >= steps else done / steps)
        return min(position / epochs, 1.0)

    # -- checkpoints ---------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        adapter = self._aa_adapter
        if adapter is None or not self.args.should_save:
            return
        folder = os.path.join(self._get_output_dir(trial=trial),
                              f"checkpoint-{self.state.global_step}")
        state = {"version": _STATE_VERSION, "loader": adapter.loader.state_dict()}
        torch.save(state, os.path.join(folder, STATE_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, STATE_FILE)
        if not os.path.isfile(path):
            raise UsageError(
                f"{resume_from_checkpoint} has no {STATE_FILE}: it was not written by "
                "AutoAssistTrainer, so the shrinking loader's epoch and Assistant cannot be "
                "resumed. Resume from a checkpoint of an AutoAssistTrainer run, or start anew"
            )
        state = torch.load(path, weights_only=True)
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise UsageError(f"{path} is not an autoassist state this version reads "
                             f"(version {_STATE_VERSION})")
        if self._aa_adapter is not None:  # loaded after the loader was made (DeepSpeed, FSDP)
            self._aa_adapter.loader.load_state_dict(state["loader"])
            loader_state = state["loader"]
            self._aa_adapter.next_epoch = (int(loader_state["epoch"])
                                           + bool(loader_state["epoch_complete"]))
        else:
            self._aa_state_to_load = state


def _is_causal_lm(model) -> bool:
    """Whether ``model`` (unwrapped) is a causal LM, whose labels are shifted by one."""
    inner = getattr(model, "module", model)
    return inner.__class__.__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def _epoch_length_fixed() -> bool:
    """Whether this transformers fixes each epoch's batch count when training starts (5.x:
    ``steps_in_epoch`` comes from ``set_initial_training_values``) rather than reading
    ``len(loader)`` after each ``set_epoch`` (4.x)."""
    import transformers

    return int(transformers.__version__.split(".")[0]) >= 5

