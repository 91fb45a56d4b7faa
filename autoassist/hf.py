"""Hugging Face ``transformers``: ``AutoAssistTrainer``, a Trainer whose epochs shrink.

    from autoassist.hf import AutoAssistTrainer

    trainer = AutoAssistTrainer(model=model, args=TrainingArguments(..., num_train_epochs=5),
                                train_dataset=train, data_collator=collate,
                                shrink={"floor": 0.5})   # autoassist.wrap's settings
    trainer.train()                     # or train(resume_from_checkpoint=...)

How it meets the Trainer (docs/hf.md has the details):

- The training loader: in one process the Trainer builds and ``accelerator.prepare``s its
  DataLoader as usual (``get_train_dataloader``); the shrinking loader is made from it and has
  accelerate prepare the DataLoader it rebuilds (``wrap(..., prepare=accelerator.prepare)``),
  so batches keep accelerate's device placement. With several processes (DDP) accelerate's
  prepare would shard batches behind the shrinking sampler's back, so each process builds its
  DataLoader with a ``DistributedSampler`` instead (the Trainer's collator, column removal and
  worker settings) and the shrinking loader cuts equal, disjoint shards of the kept set; the
  Trainer's ``_prepare_inputs`` moves each batch to the device. The Trainer iterates a thin
  adapter whose ``len()`` is the full epoch's until training starts (so the LR schedule's
  length is that of full epochs), then each (shrunk) epoch's. transformers 4 reads it after
  each ``set_epoch``; transformers >= 5.3 fixes every epoch's counts at the start and passes
  them to ``Trainer._run_epoch``, overridden here to plan the epoch first and pass its own.
- Ids: a batch's instance ids are the dataset's indices the shrinking sampler chose; the adapter
  puts them in the batch under ``IDS_KEY`` (NumPy, so the Trainer leaves them on the CPU) and
  ``compute_loss`` takes them out again: no id column, whatever ``remove_unused_columns`` does.
- Losses: per-sequence means over the tokens whose label is not -100 (labels shifted for causal
  LMs), reported with those ids; the (re)weighted mean is the loss to backpropagate.
- Epochs: the adapter runs the loader's own epochs whatever number the Trainer passes to
  ``set_epoch`` (the Trainer derives its epoch from the global step and full-epoch lengths),
  and a callback stops training once ``num_train_epochs`` epochs have run; ``state.epoch`` is
  the loader's position, ``state.max_steps`` and the progress bar's total the steps the run
  will take, counting epochs not yet planned as full ones. The LR schedule the
  Trainer asks for (``lr_scheduler_type``, warm-up) is read at the run's *progress* (epoch and
  position in the shrunk epoch), so it ends where it should however epochs shrink.
- State: ``autoassist_state.pt`` in each checkpoint folder (tensors and plain values:
  ``torch.load``'s default ``weights_only=True`` reads it), written by process 0; with several
  processes each other process r adds its own part, ``autoassist_state_rank{r}.pt``.
  ``train(resume_from_checkpoint=...)`` continues.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from autoassist.config import FEATURELESS_ASSISTANTS, ShrinkConfig
from autoassist.engine import state_check
from autoassist.engine.distributed import rank_world
from autoassist.errors import UsageError
from autoassist.pipelines.base import with_rank_state
from autoassist.pipelines.dataloader import ShrinkingLoader

try:
    import transformers
    from transformers import ProgressCallback, Trainer, TrainerCallback
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    from transformers.trainer_utils import seed_worker
except ImportError as error:  # pragma: no cover - the extra is installed wherever tests run
    raise ImportError(
        "autoassist.hf needs Hugging Face transformers (4.57, or >= 5.3) and accelerate: "
        "pip install 'autoassist[hf]'"
    ) from error

__all__ = ["IDS_KEY", "RANK_STATE_FILE", "STATE_FILE", "AutoAssistTrainer", "token_features"]

IDS_KEY = "autoassist_ids"  # the batch entry holding its instance ids (taken out before forward)
STATE_FILE = "autoassist_state.pt"  # in each checkpoint folder: the loader's and Assistant's state
# with several processes, process r's own part of the state (its position, its reports not yet
# gathered to process 0, its telemetry), next to process 0's STATE_FILE
RANK_STATE_FILE = "autoassist_state_rank{rank}.pt"
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
    whatever number the Trainer gives; once ``epochs`` epochs have run (a run resumed from its
    last checkpoint), an empty one.
    """

    def __init__(self, loader: ShrinkingLoader, next_epoch: int, epochs: int,
                 on_plan=None):
        self.loader = loader
        self.on_plan = on_plan  # called after each set_epoch, the epoch's length known
        self.dataset = loader.user_loader.dataset  # Trainer.num_examples reads it
        self.next_epoch = next_epoch  # the loader's epoch the next set_epoch runs
        self.epochs = epochs  # num_train_epochs
        self._finished = False  # every epoch has run: nothing is left to train
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
        # the Trainer counts its epochs in full-epoch steps, so after a resume from the end of
        # the last epoch it still runs one: without this, a loader epoch past the run's end
        self._finished = self.next_epoch >= self.epochs
        if self._finished:
            self._length = 0
        else:
            self.loader.set_epoch(self.next_epoch)
            self._length = max(len(self.loader) - self.loader.batches_done, 0)
        if self.on_plan is not None:
            self.on_plan()

    @property
    def epochs_done(self) -> int:
        """Epochs this run has finished (all their batches trained)."""
        return self.next_epoch

    @property
    def position(self) -> float:
        """The loader's epochs done plus the fraction of its current (shrunk) epoch's batches
        yielded: the run's true epoch count, whatever the Trainer counts."""
        loader = self.loader
        steps, done = len(loader), loader.batches_done
        return loader.epoch + (1.0 if steps == 0 or done >= steps else done / steps)

    def __iter__(self) -> Iterator[Any]:
        loader = self.loader
        if not self._started:  # iterated without set_epoch (not the Trainer's way)
            self.set_epoch(0)
        if self._finished:
            return
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


class _PlannedEpoch:
    """The adapter's epoch, planned already, as transformers 5's ``_run_epoch`` iterates it:
    without ``set_epoch``, which would plan the next one."""

    def __init__(self, adapter: _TrainerLoader):
        self.adapter = adapter

    def __len__(self) -> int:
        return len(self.adapter)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.adapter)


class _EpochBudget(TrainerCallback):
    """Counts the run in the loader's epochs: ``state.epoch`` after each step is the loader's
    position (the Trainer's own counts full-length epochs), and training stops once the loader
    has run ``num_train_epochs`` epochs (the Trainer's count, derived from global steps of
    full-length epochs, would run more). First of the callbacks, so that the others see it."""

    def __init__(self, trainer: AutoAssistTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        adapter = self.trainer._aa_adapter
        if adapter is not None:
            state.epoch = adapter.position
        return control

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

    With several processes (DDP: ``torchrun``, ``accelerate launch``) every process trains an
    equal, disjoint shard of the epoch's kept set, which process 0's Assistant chooses from all
    processes' losses; checkpoints hold every process's part (docs/hf.md).

    Raises:
        UsageError: (at ``train``) a step budget (``max_steps > 0``), a fractional
            ``num_train_epochs``, ``compute_loss_func`` or label smoothing (the loss is computed
            here: override ``per_sample_loss``), transformers 5.0 - 5.2 (they fix each epoch's
            step count where a shrunk epoch cannot change it); with several processes also a
            ``train_sampling_strategy`` other than random (4.x: ``group_by_length``) or
            accelerate's ``split_batches`` / ``dispatch_batches``.
    """

    def __init__(self, *args, shrink=None, features=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.shrink_config = ShrinkConfig.coerce(shrink)
        self._aa_features = features
        self._aa_adapter: _TrainerLoader | None = None
        self._aa_state_to_load: dict[str, Any] | None = None
        self._aa_resumed_steps: int | None = None  # the checkpoint's global step, until loaded
        self._aa_telemetry: list[dict[str, Any]] = []
        # the loss compute_loss returns is a per-sequence mean: the Trainer divides it by the
        # accumulation steps itself (not by a token count across them)
        self.model_accepts_loss_kwargs = False
        # first: the other callbacks' on_step_end see the loader's epoch in state.epoch
        self.callback_handler.callbacks.insert(0, _EpochBudget(self))

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

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """The Trainer's ``log`` (its documented override point). Its end-of-training
        ``train_samples_per_second`` (and token estimate) count full epochs; here, the
        instances the shrunk epochs trained, over the same runtime (``count_trained``)."""
        count_trained(logs, self.telemetry)
        super().log(logs, *args, **kwargs)

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
            self._check_parallel_settings()
        problem = _unsupported_transformers()
        if problem is not None:
            raise UsageError(problem)
        if not args.ignore_data_skip:  # the loader's state resumes the data position itself
            args.ignore_data_skip = True

    def _check_parallel_settings(self) -> None:
        """Several processes: refuse what the per-process DataLoader cannot honour (it is not
        accelerate's), and a process group that is not the Trainer's (the epoch's plan is a
        collective on torch.distributed's default group)."""
        args = self.args
        # transformers 5: train_sampling_strategy; 4.x: group_by_length
        strategy = getattr(args, "train_sampling_strategy", None) or (
            "group_by_length" if getattr(args, "group_by_length", False) else "random")
        if strategy != "random":
            raise UsageError(
                f"train_sampling_strategy={strategy!r} (transformers 4: group_by_length=True) "
                "with several processes: AutoAssistTrainer shards each epoch's kept set in "
                "DistributedSampler's shuffled order. Leave the default, random order, or train "
                "in one process"
            )
        config = args.accelerator_config
        for name in ("split_batches", "dispatch_batches"):
            if getattr(config, name, None):
                raise UsageError(
                    f"accelerator_config {name}=True with several processes: AutoAssistTrainer "
                    "gives each process its own shard of the kept set (a DistributedSampler), "
                    f"not accelerate's batch sharding. Leave {name} unset; "
                    "per_device_train_batch_size is then each process's batch"
                )
        rank, world = rank_world()
        if (rank, world) != (args.process_index, args.world_size):
            raise UsageError(
                f"AutoAssistTrainer is process {args.process_index} of {args.world_size}, but "
                f"torch.distributed's default process group makes it rank {rank} of {world}: "
                "the processes plan each epoch together on that group. Launch with torchrun or "
                "accelerate launch and let the Trainer set up the process group"
            )

    def get_train_dataloader(self):
        """The Trainer's training DataLoader, shrinking. One process: built and prepared by the
        Trainer, then wrapped, its rebuilt DataLoader prepared by accelerate again (device
        placement). Several: this process's DataLoader over a ``DistributedSampler``
        (``_sharded_train_dataloader``), wrapped without accelerate's prepare."""
        if self.args.world_size > 1:
            source, prepare = self._sharded_train_dataloader(), None
        else:
            source, prepare = super().get_train_dataloader(), self.accelerator.prepare
        if self._aa_adapter is not None:  # a retried inner loop (auto_find_batch_size)
            self.close_autoassist()
        features = self._aa_features
        if features is None and self.shrink_config.assistant not in FEATURELESS_ASSISTANTS:
            features = token_features(source.dataset, self.shrink_config.feature_dim)
        state, self._aa_state_to_load = self._aa_state_to_load, None
        steps, self._aa_resumed_steps = self._aa_resumed_steps, None
        if state is not None and steps is not None:
            self._check_resumed_steps(state, steps, len(source))
        loader = ShrinkingLoader(source, self.shrink_config, features=features, prepare=prepare)
        next_epoch = 0
        if state is not None:
            try:
                loader.load_state_dict(state)
            except BaseException:
                loader.close()
                raise
            next_epoch = int(state["epoch"]) + bool(state["epoch_complete"])
        self._aa_adapter = _TrainerLoader(loader, next_epoch, int(self.args.num_train_epochs),
                                          on_plan=self._epoch_planned)
        return self._aa_adapter

    def _run_epoch(self, model, epoch, train_dataloader, steps_in_epoch,
                   num_update_steps_per_epoch, **kwargs):
        """transformers >= 5.3's one epoch, given the batch and optimizer-step counts it fixed
        when training started (full epochs): the epoch is planned here first and runs with its
        own (shrunk) counts, so gradient accumulation steps after its last, short window."""
        adapter = self._aa_adapter
        if adapter is None or train_dataloader is not adapter:
            return super()._run_epoch(model=model, epoch=epoch, train_dataloader=train_dataloader,
                                      steps_in_epoch=steps_in_epoch,
                                      num_update_steps_per_epoch=num_update_steps_per_epoch,
                                      **kwargs)
        adapter.set_epoch(epoch)
        steps = len(adapter)
        return super()._run_epoch(
            model=model, epoch=epoch, train_dataloader=_PlannedEpoch(adapter),
            steps_in_epoch=steps,
            num_update_steps_per_epoch=-(-steps // self.args.gradient_accumulation_steps),
            **kwargs)

    def _epoch_planned(self) -> None:
        """An epoch's length is known: ``state.max_steps`` (and the progress bar's total)
        become the steps done, this epoch's and full epochs' for those still to plan. An upper
        bound (a shrunk epoch is never longer than a full one), so the Trainer, which stops at
        ``max_steps``, never stops early; exact from the last epoch's plan on."""
        adapter = self._aa_adapter
        if adapter is None:
            return
        accumulation = self.args.gradient_accumulation_steps
        full = max(math.ceil(len(adapter.loader.user_loader) / accumulation), 1)
        later = max(adapter.epochs - adapter.loader.epoch - 1, 0)  # epochs still to plan
        total = (self.state.global_step + math.ceil(len(adapter) / accumulation)
                 + later * full)
        self.state.max_steps = total
        for callback in self.callback_handler.callbacks:
            bar = getattr(callback, "training_bar", None)
            if isinstance(callback, ProgressCallback) and bar is not None:
                bar.total = total
                bar.refresh()

    def _check_resumed_steps(self, state: dict[str, Any], steps: int, batches: int) -> None:
        """Refuse a resume the Trainer would count as further along than the loader is.

        The Trainer derives its first epoch from the checkpoint's global step over a full
        epoch's optimizer steps, and stops at ``num_train_epochs`` full epochs' steps. Shrunk
        epochs keep both in range while a full epoch is as long as when the checkpoint was
        written; with more processes (shorter shards) it can be shorter, and the run would
        stop before its last epochs.
        """
        accumulation = self.args.gradient_accumulation_steps
        full = max(-(-batches // accumulation), 1)  # optimizer steps per full epoch, as counted
        epochs_done = int(state["epoch"]) + bool(state["epoch_complete"])
        within = 0 if state["epoch_complete"] else -(-int(state["batches_done"]) // accumulation)
        most = epochs_done * full + within
        if steps > most:
            raise UsageError(
                f"this checkpoint was saved after {steps} optimizer steps, but {epochs_done} "
                f"full epochs of this run take {epochs_done * full} ({full} per epoch with "
                f"{self.args.world_size} process(es)): the Trainer would count the run as "
                "further along than it is and stop before its last epochs. Resume with as many "
                "processes as the run that saved it (or, at an epoch's end, fewer)"
            )

    def _sharded_train_dataloader(self) -> DataLoader:
        """This process's training DataLoader under DDP, as the Trainer would build it (its
        collator after its column removal, batch size, workers, pinning, worker seeding) but
        over a ``DistributedSampler`` and not prepared by accelerate: accelerate would shard
        the shrinking loader's batches again, hiding which instances each one holds. The
        shrinking loader cuts the sampler's shards from each epoch's kept set (equal lengths,
        so every process runs the same number of steps); the Trainer's ``_prepare_inputs``
        moves each batch to ``args.device``."""
        args = self.args
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        dataset, collator = self.train_dataset, self.data_collator
        if _is_datasets_dataset(dataset):
            dataset = self._remove_unused_columns(dataset, description="Training")
        else:
            collator = self._get_collator_with_removed_columns(collator, description="Training")
        seed = args.data_seed if args.data_seed is not None else args.seed
        sampler = DistributedSampler(dataset, num_replicas=args.world_size,
                                     rank=args.process_index, shuffle=True, seed=seed,
                                     drop_last=args.dataloader_drop_last)
        return DataLoader(
            dataset, batch_size=self._train_batch_size, sampler=sampler, collate_fn=collator,
            drop_last=args.dataloader_drop_last, num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers,
            prefetch_factor=args.dataloader_prefetch_factor,
            worker_init_fn=partial(seed_worker, num_workers=args.dataloader_num_workers,
                                   rank=args.process_index))

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
        return min(adapter.position / epochs, 1.0)

    # -- checkpoints ---------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial):
        """The Trainer's checkpoint, plus the shrinking loader's state: process 0 writes
        ``STATE_FILE`` (the whole state, Assistant included); with several processes each other
        process r writes its own part (``RANK_STATE_FILE``: ``ShrinkingLoader.rank_state()``),
        as the Trainer's own RNG states are written, one file per process."""
        super()._save_checkpoint(model, trial)
        adapter = self._aa_adapter
        if adapter is None:
            return
        folder = os.path.join(self._get_output_dir(trial=trial),
                              f"checkpoint-{self.state.global_step}")
        rank, world = self.args.process_index, self.args.world_size
        os.makedirs(folder, exist_ok=True)  # process r may come before process 0 made it
        if rank == 0:
            state = {"version": _STATE_VERSION, "world_size": world,
                     "loader": adapter.loader.state_dict()}
            torch.save(state, os.path.join(folder, STATE_FILE))
        else:
            part = {"version": _STATE_VERSION, "rank": rank, "world_size": world,
                    "loader": adapter.loader.rank_state()}
            torch.save(part, os.path.join(folder, RANK_STATE_FILE.format(rank=rank)))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        state = _checkpoint_state(resume_from_checkpoint, self.args.process_index,
                                  self.args.world_size)
        if self._aa_adapter is not None:  # loaded after the loader was made (DeepSpeed, FSDP)
            self._aa_adapter.loader.load_state_dict(state)
            self._aa_adapter.next_epoch = int(state["epoch"]) + bool(state["epoch_complete"])
        else:
            self._aa_state_to_load = state
            self._aa_resumed_steps = _saved_global_step(resume_from_checkpoint)


    def _load_optimizer_and_scheduler(self, checkpoint):
        """The Trainer's, except on the CPU with several processes. There transformers (4.57)
        loads the optimizer state with ``map_location=args.device``, which is ``cpu:0``, a
        location ``torch.load`` cannot restore ("don't know how to restore data location ...
        tagged with cpu:0"), so no CPU run of several processes could resume; the optimizer
        and scheduler states are loaded to the CPU here instead."""
        from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME

        device = self.args.device
        if (checkpoint is None or self.args.world_size <= 1 or device.type != "cpu"
                or device.index is None or self.is_deepspeed_enabled or self.is_fsdp_enabled):
            return super()._load_optimizer_and_scheduler(checkpoint)
        optimizer = os.path.join(checkpoint, OPTIMIZER_NAME)
        scheduler = os.path.join(checkpoint, SCHEDULER_NAME)
        if not (os.path.isfile(optimizer) and os.path.isfile(scheduler)):
            return super()._load_optimizer_and_scheduler(checkpoint)
        self.optimizer.load_state_dict(torch.load(optimizer, map_location="cpu",
                                                  weights_only=True))
        self.lr_scheduler.load_state_dict(torch.load(scheduler, weights_only=True))


def count_trained(logs: dict[str, float], telemetry: list[dict[str, Any]]) -> None:
    """Rescale the Trainer's end-of-training rates in ``logs`` (in place) from full epochs to
    the instances the shrunk epochs trained.

    The Trainer computes ``train_samples_per_second`` from ``num_examples x num_train_epochs``
    and its ``train_tokens_per_second`` estimate from full epochs' tokens; both are scaled by
    the kept fraction of the epochs in ``telemetry``. ``train_steps_per_second`` needs nothing:
    the Trainer's ``max_steps`` is the shrunk run's (``_epoch_planned``). Logs without
    ``train_runtime`` (those during training) are left alone.
    """
    full = sum(record["num_instances"] for record in telemetry)
    if not logs.get("train_runtime") or not full:
        return
    kept = sum(record["kept"] for record in telemetry)
    for key in ("train_samples_per_second", "train_tokens_per_second"):
        if key in logs:
            logs[key] = round(logs[key] * kept / full, 3)


def _read_state(path: str, what: str) -> dict[str, Any]:
    """One of the checkpoint's autoassist files, checked to be a state this version reads."""
    state = torch.load(path, weights_only=True)
    if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
        raise UsageError(f"{path} is not {what} this version reads (version {_STATE_VERSION})")
    return state


def _checkpoint_state(folder: str, rank: int, world: int) -> dict[str, Any]:
    """Process ``rank``'s (of ``world``) loader state from an AutoAssistTrainer checkpoint.

    Saved by as many processes: process 0 takes ``STATE_FILE``'s, process r that with its own
    part in place of process 0's (``with_rank_state``), so each resumes exactly where it was.
    Saved by another number of processes: only at an epoch's end (a position mid-epoch counts
    batches of the saved shards); every process then takes process 0's state, process 0 with
    the reports the saved processes had not yet sent it (its Assistant takes them on loading).

    Raises:
        UsageError: no ``STATE_FILE`` or a rank's part missing, a file this version does not
            read, or another number of processes in the middle of an epoch.
    """
    path = os.path.join(folder, STATE_FILE)
    if not os.path.isfile(path):
        raise UsageError(
            f"{folder} has no {STATE_FILE}: it was not written by AutoAssistTrainer, so the "
            "shrinking loader's epoch and Assistant cannot be resumed. Resume from a checkpoint "
            "of an AutoAssistTrainer run, or start anew"
        )
    saved = _read_state(path, "an autoassist state")
    shared = state_check.as_dict(state_check.get(saved, "loader", path), f"{path}['loader']")
    saved_world = state_check.integer(saved.get("world_size", 1), f"{path}['world_size']",
                                      low=1)

    def part(r: int) -> dict[str, Any]:
        name = RANK_STATE_FILE.format(rank=r)
        where = os.path.join(folder, name)
        if not os.path.isfile(where):
            raise UsageError(
                f"{folder} was saved by {saved_world} processes but lacks {name}, process "
                f"{r}'s part of the autoassist state (every process writes its own): was the "
                "checkpoint folder shared by all processes? Resume from a complete checkpoint"
            )
        own = _read_state(where, f"process {r}'s autoassist state")
        if own.get("rank") != r or own.get("world_size") != saved_world:
            raise UsageError(f"{where} is process {own.get('rank')}'s of "
                             f"{own.get('world_size')}, not process {r}'s of {saved_world}")
        return state_check.as_dict(state_check.get(own, "loader", where), f"{where}['loader']")

    if saved_world == world:
        return shared if rank == 0 else with_rank_state(shared, part(rank))
    parts = [part(r) for r in range(1, saved_world)]
    if not all(bool(p.get("epoch_complete")) for p in (shared, *parts)):
        raise UsageError(
            f"{folder} was saved in the middle of epoch {shared.get('epoch')} by "
            f"{saved_world} process(es), and this run has {world}: the saved position counts "
            f"batches of {saved_world} shards. Resume it with {saved_world} process(es) "
            f"(torchrun --nproc_per_node {saved_world}, or accelerate launch --num_processes "
            f"{saved_world}), or from a checkpoint saved at an epoch's end "
            '(save_strategy="epoch")'
        )
    if rank != 0 or not parts:
        return shared
    engine = state_check.as_dict(state_check.get(shared, "engine", path),
                                 f"{path}['loader']['engine']")
    outgoing = list(engine.get("outgoing", []))
    for r, own in enumerate(parts, 1):
        theirs = state_check.as_dict(own.get("engine"), f"process {r}'s ['loader']['engine']")
        outgoing += list(theirs.get("outgoing", []))
    return {**shared, "engine": {**engine, "outgoing": outgoing}}


def _saved_global_step(folder: str) -> int | None:
    """The Trainer's global step in the checkpoint ``folder`` (None without its state file)."""
    from transformers.trainer import TRAINER_STATE_NAME

    path = os.path.join(folder, TRAINER_STATE_NAME)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return int(json.load(f).get("global_step", 0))


def _is_datasets_dataset(dataset) -> bool:
    """Whether ``dataset`` is a Hugging Face ``datasets.Dataset`` (its unused columns are
    removed from the dataset; other datasets' by the collator)."""
    from transformers.utils import is_datasets_available

    if not is_datasets_available():
        return False
    import datasets

    return isinstance(dataset, datasets.Dataset)


def _is_causal_lm(model) -> bool:
    """Whether ``model`` (unwrapped) is a causal LM, whose labels are shifted by one."""
    inner = getattr(model, "module", model)
    return inner.__class__.__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def _unsupported_transformers(version: str | None = None, trainer: type | None = None
                              ) -> str | None:
    """Why this transformers (``version``, its ``Trainer``) cannot train shrunk epochs, or None.

    4.x reads each epoch's batch count after its ``set_epoch``. 5.x fixes it when training
    starts; from 5.3 on it hands it to ``Trainer._run_epoch``, which ``AutoAssistTrainer``
    overrides to plan the epoch first and pass its own count. 5.0 - 5.2 read it inline,
    before the epoch is planned.
    """
    version = transformers.__version__ if version is None else version
    if int(version.split(".")[0]) < 5:
        return None
    run_epoch = getattr(Trainer if trainer is None else trainer, "_run_epoch", None)
    needed = {"model", "epoch", "train_dataloader", "steps_in_epoch",
              "num_update_steps_per_epoch"}
    if run_epoch is not None and needed <= set(inspect.signature(run_epoch).parameters):
        return None
    return (
        f"transformers {version} fixes each epoch's step count when training "
        "starts, outside Trainer._run_epoch(steps_in_epoch=...) where AutoAssistTrainer "
        "gives each shrunk epoch its own (transformers 5.0 - 5.2 have no such method), so "
        "shrunk epochs would be cut or run short. Install transformers >= 5.3 or 4.57: "
        "pip install 'autoassist[hf]'"
    )

