"""What the auxiliary-variable trainers share (``HybridTrainer``, ``BlockADMM``): epochs that
each leave a record in ``history``, an evaluation after them, and the trainer's checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from autoassist.boss import checkpoint as ckpt
from autoassist.engine.safe_state import safe

Evaluate = Callable[[nn.Module], float]


class EpochTrainer:
    """A trainer's epochs and checkpoints; a subclass has ``blocks``, ``epoch``, ``history``,
    its own ``_state()`` and ``load_state_dict``."""

    blocks: nn.Module
    epoch: int
    history: list[dict[str, Any]]

    def state_dict(self) -> dict[str, Any]:
        """The trainer's state as tensors and plain values only, so that ``torch.load`` with
        its default ``weights_only=True`` reads the checkpoint.

        Raises:
            TypeError: the subclass's ``_state()`` holds something else (a bug, named here).
        """
        return safe(self._state(), f"{type(self).__name__} state")

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement _state(), the dict "
                                  "that state_dict() returns")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement load_state_dict()")

    def _epochs_done(self, records: list[dict[str, Any]], epochs: int,
                     evaluate: Evaluate | None, checkpoint: str | Path | None) -> None:
        """``epochs`` epochs ran and left ``records``: the last is evaluated, all join the
        history, and the checkpoint is saved."""
        if evaluate is not None:
            records[-1]["accuracy"] = evaluate(self.blocks)
        self.history.extend(records)
        self.epoch += epochs
        if checkpoint is not None:
            self.save(checkpoint)

    def _run_epochs(self, until: int, desc: str, epoch: Callable[[], dict[str, Any]],
                    evaluate: Evaluate | None, checkpoint: str | Path | None,
                    progress: bool) -> list[dict[str, Any]]:
        """Run ``epoch()`` until ``self.epoch == until``, one record, evaluation and checkpoint
        after each; the whole history."""
        from tqdm.auto import tqdm

        for _ in tqdm(range(self.epoch, until), desc=desc, disable=not progress, leave=False):
            self._epochs_done([epoch()], 1, evaluate, checkpoint)
        return self.history

    def save(self, path: str | Path) -> None:
        ckpt.save_atomic(self.state_dict(), path)

    def load(self, path: str | Path) -> None:
        self.load_state_dict(ckpt.load_own(path))
