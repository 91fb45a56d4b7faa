"""fairseq task ``autoassist_translation``: stock translation whose training epochs shrink.

Each epoch the training batch sampler (i) orders and size-filters instances exactly as fairseq's
translation task does, (ii) keeps the instances the shrinking engine's plan selects, and (iii)
batches them under the token budget with ``kernels.batch_by_size``. Choosing instances and
building batches stay separate, as in fairseq's ``data/iterators.py``.

Loaded with ``--user-dir "$(autoassist fairseq-user-dir)" --task autoassist_translation``; needs
``pip install 'autoassist[fairseq]'``. Importing this module registers the task with fairseq.

Notes a user should know (also in the README):

* fairseq does not restore task state on resume. The engine's state (the Assistant, its scores,
  the epoch's plan) goes into the checkpoint's extra state (``get_checkpoint_dict``) and is
  restored by ``set_checkpoint_dict``. fairseq calls that only after it has built the resumed
  epoch's batches, so the task rebuilds them from the restored plan.
* Distributed training: every rank selects from rank 0's score snapshot (broadcast), so all
  ranks keep the same instances, and the batches are then sharded the usual way. The Assistant
  runs beside rank 0 and learns from every rank's sentence losses: rank 0's as they come, the
  other ranks' when the next epoch is planned (``engine.plan`` gathers them to rank 0 in
  ``get_batch_iterator``, where every rank already meets for the score broadcast), so those
  reach the scores one epoch later than rank 0's.
* Settings: an ``--aa-*`` flag given on the command line wins over the ``--aa-config`` file,
  which wins over ``ShrinkConfig``'s defaults (a flag given with the default's value still
  wins; an on/off flag not given leaves the file's value).
* fairseq's own ``batch_by_size`` drops the last batch when ``--required-batch-size-multiple``
  does not divide it (fairseq issue #5036). This task keeps it: no instance is silently lost.
"""

# No `from __future__ import annotations`: fairseq builds its argument parser from the
# dataclass field types, which must stay real types.
import atexit
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from fairseq.data import data_utils
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from omegaconf import II

from autoassist.config import ASSISTANT_KINDS, FEATURELESS_ASSISTANTS, ShrinkConfig

logger = logging.getLogger(__name__)

_DEFAULTS = ShrinkConfig()
# 2: tensors and plain values only (the engine's state loads under weights_only=True); 1 held
# NumPy arrays and pickled the sgd Assistant, and still loads except that pickle
STATE_FORMAT = 2
READS_FORMATS = (1, 2)


def _or_file(default) -> str:
    return f" (default {default}, or the --aa-config file's value)"


# Precedence of every shrink setting: a flag given on the command line, else the --aa-config
# file's value, else ShrinkConfig's default. The value flags therefore default to None ("not
# given"), so that a flag given with the default's value still overrides the file; the on/off
# flags (store_true) can only switch a setting on: not given, the file's value (or the default)
# stands.
@dataclass
class AutoAssistTranslationConfig(TranslationConfig):
    aa_config: Optional[str] = field(default=None, metadata={  # noqa: UP045
        "help": "shrink settings file (.toml/.json, e.g. written by `autoassist tune`): the base "
                "of every setting; an --aa-* flag given on the command line overrides it"})
    aa_floor: Optional[float] = field(default=None, metadata={  # noqa: UP045
        "help": "keep-probability floor b in P_i = b + (1 - b) p_i; 1 keeps everything"
                + _or_file(_DEFAULTS.floor)})
    aa_keep: Optional[float] = field(default=None, metadata={  # noqa: UP045
        "help": "with --aa-assistant proportional: the mean keep probability of a shrinking "
                "epoch (e.g. 0.33 with --aa-floor 0.1)"})
    aa_adaptive_floor: bool = field(default=False, metadata={
        "help": "floor = max(b, 1 - Assistant accuracy), the paper's translation rule "
                "(not given: the --aa-config file's value, else off)"})
    aa_warmup_epochs: Optional[int] = field(default=None, metadata={  # noqa: UP045
        "help": "leading epochs that train on every instance" + _or_file(_DEFAULTS.warmup_epochs)})
    aa_anneal_epochs: Optional[int] = field(default=None, metadata={  # noqa: UP045
        "help": "trailing epochs (before --max-epoch) that train on every instance"
                + _or_file(_DEFAULTS.anneal_epochs)})
    aa_reweight: bool = field(default=False, metadata={
        "help": "weight kept sentences by mean(P)/P_i: unbiased gradient "
                "(not given: the --aa-config file's value, else "
                + ("on" if _DEFAULTS.reweight else "off") + ")"})
    aa_no_reweight: bool = field(default=False, metadata={
        "help": "train kept sentences at weight 1 (a biased gradient towards hard ones)"})
    aa_assistant: Optional[ChoiceEnum(list(ASSISTANT_KINDS))] = field(  # noqa: UP045
        default=None, metadata={"help": "Assistant model" + _or_file(_DEFAULTS.assistant)})
    aa_no_loss_history: bool = field(default=False, metadata={
        "help": "the paper's Assistant: text features only, not each sentence's last loss "
                "(not given: the --aa-config file's loss_history, else the last loss is used)"})
    aa_feature_dim: Optional[int] = field(default=None, metadata={  # noqa: UP045
        "help": "hashed TF-IDF buckets per side (source, target) of the Assistant's features"
                + _or_file(_DEFAULTS.feature_dim)})
    aa_label_ema: Optional[float] = field(default=None, metadata={  # noqa: UP045
        "help": "smoothing of the mean loss that defines 'informative'"
                + _or_file(_DEFAULTS.label_ema)})
    aa_assistant_lr: Optional[float] = field(default=None, metadata={  # noqa: UP045
        "help": "Assistant step size" + _or_file(_DEFAULTS.assistant_lr)})
    aa_sync: bool = field(default=False, metadata={
        "help": "wait for the Assistant at epoch ends (reproducible runs, tests; not given: the "
                "--aa-config file's value, else off)"})
    aa_seed: int = II("common.seed")
    aa_max_epoch: int = II("optimization.max_epoch")


def _shrink_config(cfg: AutoAssistTranslationConfig) -> ShrinkConfig:
    """The run's ShrinkConfig: command-line flags over the --aa-config file over the defaults."""
    base = ShrinkConfig.coerce(cfg.aa_config or None)
    given = {  # None: the flag was not given
        "floor": cfg.aa_floor, "keep": cfg.aa_keep, "warmup_epochs": cfg.aa_warmup_epochs,
        "anneal_epochs": cfg.aa_anneal_epochs, "feature_dim": cfg.aa_feature_dim,
        "label_ema": cfg.aa_label_ema, "assistant_lr": cfg.aa_assistant_lr,
        "assistant": None if cfg.aa_assistant is None else str(cfg.aa_assistant),
        # store_true flags: False is "not given"
        "adaptive_floor": True if cfg.aa_adaptive_floor else None,
        "reweight": True if cfg.aa_reweight else (False if cfg.aa_no_reweight else None),
        "loss_history": False if cfg.aa_no_loss_history else None,
        "sync": True if cfg.aa_sync else None,
    }
    if cfg.aa_reweight and cfg.aa_no_reweight:
        raise ValueError("--aa-reweight and --aa-no-reweight contradict each other: give one")
    changes = {k: v for k, v in given.items() if v is not None}
    changes["seed"] = int(cfg.aa_seed)
    anneal = changes.get("anneal_epochs", base.anneal_epochs)
    if anneal:
        if not cfg.aa_max_epoch:
            raise ValueError("--aa-anneal-epochs needs the training budget: pass --max-epoch")
        changes["epochs"] = int(cfg.aa_max_epoch)
    return base.replace(**changes)


@register_task("autoassist_translation", dataclass=AutoAssistTranslationConfig)
class AutoAssistTranslationTask(TranslationTask):
    """Translation whose training set shrinks each epoch to the instances still informative."""

    cfg: AutoAssistTranslationConfig

    def __init__(self, cfg: AutoAssistTranslationConfig, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self.shrink_config = _shrink_config(cfg)
        self.engine = None  # autoassist.engine.ShrinkEngine, made when the train set loads
        self._train_len: int | None = None
        self._train_itr = None
        self._batching: dict[str, Any] = {}
        self._sizes: np.ndarray | None = None
        self._finished: set[int] = set()
        self._built_epoch: int | None = None  # the epoch whose batches were built last
        self._batches_message: tuple[int, str] | None = None  # logged when that epoch begins
        self._batches_reported = 0
        self._reporting = False

    # -- data ------------------------------------------------------------------------------------
    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        if split != self.cfg.train_subset:
            return
        if len(self.cfg.data.split(":")) > 1:
            raise ValueError(
                "autoassist_translation needs one training set for the whole run, but --data "
                f"names {len(self.cfg.data.split(':'))} shards: merge them into one data-bin"
            )
        dataset = self.datasets[split]
        if self.engine is not None:
            if len(dataset) != self._train_len:
                raise ValueError(
                    f"the training set changed size ({self._train_len} -> {len(dataset)}) "
                    "during the run; autoassist_translation needs a fixed training set"
                )
            return
        self._start_engine(dataset)

    def _start_engine(self, dataset) -> None:
        from autoassist.assistant.text_features import sentence_pair_features
        from autoassist.engine import ShrinkEngine

        n = len(dataset)
        sources = [dataset.src[i] for i in range(n)]
        targets = None if dataset.tgt is None else [dataset.tgt[i] for i in range(n)]
        features = None  # the memory Assistants read none: skip the hashing pass
        if self.shrink_config.assistant not in FEATURELESS_ASSISTANTS:
            features = sentence_pair_features(sources, targets,
                                              dim=self.shrink_config.feature_dim)
        self.engine = ShrinkEngine(n, self.shrink_config, features=features)
        self._train_len = n
        atexit.register(self.close)
        logger.info(
            f"autoassist: shrinking {n:,} training pairs (floor {self.shrink_config.floor}, "
            f"warm-up {self.shrink_config.warmup_epochs} epoch(s), "
            f"Assistant {self.shrink_config.assistant!r}, "
            f"{0 if features is None else features.shape[1]} features per pair)"
        )

    def _is_train(self, dataset) -> bool:
        return self.engine is not None and dataset is self.datasets.get(self.cfg.train_subset)

    def get_batch_iterator(self, dataset, max_tokens=None, max_sentences=None,
                           max_positions=None, ignore_invalid_inputs=False,
                           required_batch_size_multiple=1, seed=1, num_shards=1, shard_id=0,
                           num_workers=0, epoch=1, data_buffer_size=0,
                           disable_iterator_cache=False, skip_remainder_batch=False,
                           grouped_shuffling=False, update_epoch_batch_itr=False):
        if not self._is_train(dataset):
            return super().get_batch_iterator(
                dataset, max_tokens=max_tokens, max_sentences=max_sentences,
                max_positions=max_positions, ignore_invalid_inputs=ignore_invalid_inputs,
                required_batch_size_multiple=required_batch_size_multiple, seed=seed,
                num_shards=num_shards, shard_id=shard_id, num_workers=num_workers, epoch=epoch,
                data_buffer_size=data_buffer_size, disable_iterator_cache=disable_iterator_cache,
                skip_remainder_batch=skip_remainder_batch, grouped_shuffling=grouped_shuffling,
                update_epoch_batch_itr=update_epoch_batch_itr,
            )
        from fairseq.data import iterators

        if self._built_epoch is not None and self._built_epoch < epoch:
            self._finish_epoch(self._built_epoch)  # it ended without a validation pass
        self._batching = {
            "max_tokens": max_tokens, "max_sentences": max_sentences,
            "max_positions": max_positions, "ignore_invalid_inputs": ignore_invalid_inputs,
            "multiple": required_batch_size_multiple, "seed": seed,
        }
        dataset.set_epoch(epoch)
        # every rank at the same point: the gather of other ranks' reports, the broadcast
        self.engine.plan(epoch - 1)
        itr = iterators.EpochBatchIterator(
            dataset=dataset, collate_fn=dataset.collater, batch_sampler=self.epoch_batches,
            seed=seed, num_shards=num_shards, shard_id=shard_id, num_workers=num_workers,
            epoch=epoch, buffer_size=data_buffer_size, skip_remainder_batch=skip_remainder_batch,
            grouped_shuffling=grouped_shuffling,
            reuse_dataloader=getattr(self.cfg, "reuse_dataloader", True),
            persistent_workers=getattr(self.cfg, "persistent_workers", True),
        )
        self._train_itr = itr
        return itr

    def epoch_batches(self, dataset, epoch: int) -> list[np.ndarray]:
        """The training batches of ``epoch`` (1-based): stock order and filter, shrink, batch."""
        from autoassist.kernels import batch_by_size

        b = self._batching
        indices = stock_order(self, dataset, epoch, b)
        plan = self.engine.plan(epoch - 1)
        if plan.mask is not None:
            indices = indices[plan.mask[indices]]
        if self._sizes is None:
            self._sizes = num_tokens(dataset)
        batches = batch_by_size(indices, self._sizes, max_tokens=b["max_tokens"],
                                max_sentences=b["max_sentences"], multiple=b["multiple"])
        # logged when the epoch begins (begin_epoch): fairseq builds the next epoch's batches
        # before it checks --max-epoch, so the last epoch's successor is built but never runs
        self._batches_message = (
            epoch, f"autoassist: epoch {epoch} trains on {len(indices):,} of {len(dataset):,} "
                   f"pairs ({plan.reason}) in {len(batches):,} batches")
        self._batches_reported = 0
        self._built_epoch = epoch
        return batches

    # -- training hooks --------------------------------------------------------------------------
    def begin_epoch(self, epoch, model):
        super().begin_epoch(epoch, model)
        if self._batches_message is not None and self._batches_message[0] == epoch:
            logger.info(self._batches_message[1])
            self._batches_message = None

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        self._reporting = not ignore_grad  # fairseq's dummy batches (ignore_grad) are not news
        try:
            return super().train_step(sample, model, criterion, optimizer, update_num,
                                      ignore_grad=ignore_grad)
        finally:
            self._reporting = False

    def report_losses(self, per_sentence, ids: np.ndarray):
        """Called by the criterion in training: queue the losses; return the weights or None."""
        if self.engine is None or not self._reporting:
            return None
        self.engine.observe(per_sentence, ids)
        self._batches_reported += 1
        return self.engine.loss_weights(ids, per_sentence)

    def begin_valid_epoch(self, epoch, model):
        super().begin_valid_epoch(epoch, model)
        itr = self._train_itr
        if itr is not None and itr.epoch == epoch and itr.iterations_in_epoch >= len(itr):
            self._finish_epoch(epoch)

    def _finish_epoch(self, epoch: int) -> None:
        """Ask the Assistant for fresh scores and log the epoch's telemetry (once per epoch)."""
        if self.engine is None or epoch in self._finished:
            return
        self._finished.add(epoch)
        record = self.engine.end_epoch(epoch - 1, self._batches_reported)
        logger.info(
            "autoassist: epoch {} kept {:.1%} ({}); Assistant trained on {} losses, accuracy {}, "
            "{} messages dropped".format(
                epoch, record["kept_fraction"], record["reason"],
                record.get("assistant_trained_instances", 0),
                _fmt(record.get("assistant_accuracy")), record.get("queue_drops", 0))
        )

    # -- checkpoints -----------------------------------------------------------------------------
    def get_checkpoint_dict(self) -> dict[str, Any]:
        if self.engine is None:
            return {}
        return {type(self).__name__: {
            "format": STATE_FORMAT, "num_instances": self._train_len,
            "engine": self.engine.state_dict(), "finished": sorted(self._finished),
        }}

    def set_checkpoint_dict(self, state: dict[str, Any]) -> None:
        if not state or self.engine is None:
            return
        if state.get("format") not in READS_FORMATS:
            raise ValueError(f"autoassist checkpoint state has format {state.get('format')!r}, "
                             f"this version reads {READS_FORMATS}: resume with the autoassist "
                             "that saved it")
        if state["num_instances"] != self._train_len:
            raise ValueError(
                f"the checkpoint's training set had {state['num_instances']} pairs, this one "
                f"{self._train_len}: resume with the same data-bin"
            )
        self.engine.load_state_dict(state["engine"])
        self._finished = set(state["finished"])
        self._rebuild_train_batches()

    def _rebuild_train_batches(self) -> None:
        """fairseq built the resumed epoch's batches before handing us our state: redo them."""
        itr = self._train_itr
        if itr is None:
            return
        offset = itr.iterations_in_epoch
        itr._frozen_batches = None  # recomputed from the restored plan on next use
        itr._next_epoch_itr = None
        if offset > 0:
            itr.load_state_dict({"version": 2, "epoch": itr.epoch,
                                 "iterations_in_epoch": offset, "shuffle": itr.shuffle})

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


def stock_order(task, dataset, epoch: int, batching: dict[str, Any]) -> np.ndarray:
    """The instances of ``epoch`` (1-based) in stock ``translation``'s order, size-filtered as
    it filters them: what a shrinking epoch selects from. ``batching`` holds
    ``get_batch_iterator``'s ``seed``, ``max_positions`` and ``ignore_invalid_inputs``."""
    with data_utils.numpy_seed(batching["seed"] + epoch):
        indices = dataset.ordered_indices()
    if batching["max_positions"] is not None:
        indices = task.filter_indices_by_size(indices, dataset, batching["max_positions"],
                                              batching["ignore_invalid_inputs"])
    return indices


def num_tokens(dataset) -> np.ndarray:
    every = np.arange(len(dataset), dtype=np.int64)
    try:
        return np.asarray(dataset.num_tokens_vec(every), dtype=np.int64)
    except NotImplementedError:
        return np.fromiter((dataset.num_tokens(i) for i in every), np.int64, count=len(every))


def _fmt(value) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"
