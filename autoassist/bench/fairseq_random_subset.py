"""fairseq task ``random_subset_translation``: the control for the plugin's shrinking epochs.

Each epoch trains on a uniformly random subset of the training pairs, of a size given per epoch
(``--kept-fractions``, read from an autoassist run), batched exactly as the plugin batches the
pairs it keeps (stock order and size filter, ``kernels.batch_by_size``) and trained with the stock
criterion at weight 1. Against it, whatever the plugin gains or loses comes from *which* pairs it
keeps, not from how many.

Laboratory code, loaded with ``--user-dir`` at ``LAB_USER_DIR`` (importing this module registers
the task with fairseq); the product never imports it.
"""

# No `from __future__ import annotations`: fairseq builds its argument parser from the
# dataclass field types, which must stay real types.
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from autoassist.pipelines.fairseq_task import num_tokens, stock_order

logger = logging.getLogger(__name__)

LAB_USER_DIR = str(Path(__file__).resolve().parent / "fairseq_lab_user_dir"
                   / "autoassist_lab_fairseq")


def parse_fractions(text: str) -> list[float]:
    """``"1,0.94,0.7"`` -> ``[1.0, 0.94, 0.7]``, each in (0, 1].

    Raises:
        ValueError: empty, not numbers, or a fraction outside (0, 1].
    """
    try:
        fractions = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise ValueError(f"--kept-fractions {text!r}: give comma-separated numbers") from err
    if not fractions or any(not 0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"--kept-fractions {text!r}: give one fraction in (0, 1] per epoch")
    return fractions


def random_subset(indices: np.ndarray, fraction: float, seed: int, epoch: int) -> np.ndarray:
    """``round(fraction * len(indices))`` of ``indices``, uniformly at random without
    replacement, in their given order; its own stream per (seed, epoch)."""
    count = int(round(fraction * len(indices)))
    rng = np.random.default_rng([seed, epoch, 0x5B])
    keep = np.zeros(len(indices), dtype=bool)
    keep[rng.choice(len(indices), size=count, replace=False)] = True
    return indices[keep]


@dataclass
class RandomSubsetTranslationConfig(TranslationConfig):
    kept_fractions: str = field(default="", metadata={
        "help": "comma-separated fraction of the training pairs each epoch trains on, epoch 1 "
                "first (one per epoch up to --max-epoch)"})


@register_task("random_subset_translation", dataclass=RandomSubsetTranslationConfig)
class RandomSubsetTranslationTask(TranslationTask):
    """Translation whose epochs train on random subsets of given sizes."""

    cfg: RandomSubsetTranslationConfig

    def __init__(self, cfg: RandomSubsetTranslationConfig, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self.fractions = parse_fractions(cfg.kept_fractions)
        self._batching: dict = {}
        self._sizes: np.ndarray | None = None

    def get_batch_iterator(self, dataset, max_tokens=None, max_sentences=None,
                           max_positions=None, ignore_invalid_inputs=False,
                           required_batch_size_multiple=1, seed=1, num_shards=1, shard_id=0,
                           num_workers=0, epoch=1, data_buffer_size=0,
                           disable_iterator_cache=False, skip_remainder_batch=False,
                           grouped_shuffling=False, update_epoch_batch_itr=False):
        if dataset is not self.datasets.get(self.cfg.train_subset):
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

        self._batching = {"max_tokens": max_tokens, "max_sentences": max_sentences,
                          "max_positions": max_positions, "seed": seed,
                          "ignore_invalid_inputs": ignore_invalid_inputs,
                          "multiple": required_batch_size_multiple}
        dataset.set_epoch(epoch)
        return iterators.EpochBatchIterator(
            dataset=dataset, collate_fn=dataset.collater, batch_sampler=self.epoch_batches,
            seed=seed, num_shards=num_shards, shard_id=shard_id, num_workers=num_workers,
            epoch=epoch, buffer_size=data_buffer_size, skip_remainder_batch=skip_remainder_batch,
            grouped_shuffling=grouped_shuffling)

    def epoch_batches(self, dataset, epoch: int) -> list[np.ndarray]:
        from autoassist.kernels import batch_by_size

        if epoch > len(self.fractions):
            raise ValueError(f"--kept-fractions gives {len(self.fractions)} epochs, but epoch "
                             f"{epoch} is starting: give one fraction per epoch up to "
                             "--max-epoch")
        b = self._batching
        indices = stock_order(self, dataset, epoch, b)
        indices = random_subset(indices, self.fractions[epoch - 1], b["seed"], epoch)
        if self._sizes is None:
            self._sizes = num_tokens(dataset)
        logger.info(f"random subset: epoch {epoch} trains on {len(indices):,} of "
                    f"{len(dataset):,} pairs")
        return batch_by_size(indices, self._sizes, max_tokens=b["max_tokens"],
                             max_sentences=b["max_sentences"], multiple=b["multiple"])
