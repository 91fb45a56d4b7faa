"""Shrink settings: one validated dataclass, loadable from TOML or JSON (written by tune)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoassist.errors import UsageError, UsageFileNotFoundError

ASSISTANT_KINDS = ("logistic", "sgd", "mlp", "memory", "proportional")
# Assistants that score by the loss memory alone: no input features are computed or sent
FEATURELESS_ASSISTANTS = ("memory", "proportional")
REWEIGHT_SCALES = ("mean", "sum")


@dataclass
class ShrinkConfig:
    """How the shrinking loader chooses instances, and how its Assistant learns.

    The defaults are the setting the README's frontier results measure (``benchmarks.frontier``,
    docs/results.md section 0): the memory Assistant, floor 0.5, reweighting. Among the settings
    measured there, it was the one that never lost clearly to uniform at equal cost in the
    decayed-SGD, fixed-LR Adam and noisy-label runs; the paper's learned Assistant at floor 0.3
    without reweighting lost on UCI Adult. ``autoassist tune`` finds better ones for a given
    job. Pass one to ``autoassist.wrap(loader, config=...)``, or single settings as keywords.

    Attributes:
        floor: keep probability floor ``b`` in ``P_i = b + (1 - b) * p_i``.
        rank_power: None: ``p_i`` is the Assistant's score. ``k``: ``p_i`` is the score's rank
            percentile to the ``k``-th power, so selection follows the Assistant's ordering,
            not its calibration, and each shrinking epoch keeps ``b + (1 - b) / (k + 1)`` of
            the data whatever the scores (0.4 at ``b = 0.2, k = 3``).
        adaptive_floor: use ``b = max(floor, 1 - assistant accuracy)`` (the paper's
            translation rule).
        warmup_epochs: leading epochs that keep every instance (the Assistant learns
            meanwhile).
        anneal_epochs: trailing epochs that keep every instance (needs ``epochs``).
        epochs: the training budget in epochs, only needed for ``anneal_epochs``.
        first_scores_wait: when a shrinking epoch starts before the Assistant has published
            any scores (it is still starting, on a fast Boss), wait up to this fraction of the
            previous epoch's duration for them; otherwise that epoch keeps everything, which
            costs a whole epoch's worth of extra work. Paid at most once per run: after a
            wait that ended without scores, later epochs do not wait (telemetry:
            ``first_scores_wait_expired``, ``first_scores_wait_skipped``). 0 = never wait (the
            Boss then never waits for the Assistant).
        reweight: weight kept instances by ``mean(P) / P_i`` so the expected gradient is
            unbiased.
        reweight_scale: with ``reweight``, "mean": weights ``mean(P) / P_i``, so each step's
            expected gradient is uniform's and a shrunk epoch moves ``mean(P)`` as far as a
            full one; "sum": weights ``1 / P_i`` (InfoBatch's rescaling), so a shrunk epoch's
            summed gradient is a full epoch's (larger steps, fewer of them).
        assistant: "logistic" (online logistic regression), "sgd" (scikit-learn
            SGDClassifier), "mlp" (a tiny torch net), "memory" (no learner: informative
            while the instance's last loss was above the running mean, InfoBatch's rule;
            needs ``loss_history``), or "proportional" (no learner: ``P_i`` proportional to
            the instance's last loss, at least ``floor``, at most 1, ``keep`` on average:
            importance sampling by loss; needs ``keep`` and a ``floor`` below it).
        keep: with ``assistant="proportional"``, the mean keep probability of a shrinking
            epoch (the fraction of the data it trains on), e.g. 1/3 with ``floor=0.1``.
        loss_history: give the Assistant each instance's last reported loss (relative to the
            running mean) as two extra features; off = the paper's Assistant, on input
            features only.
        label_ema: smoothing of the running mean loss that defines "informative" (loss above
            it).
        feature_dim: size of the fixed random projection of the input used as Assistant
            features.
        label_buckets: one-hot buckets for the instance's class label in the features
            (0 = none).
        assistant_lr: learning rate of the Assistant's online updates.
        assistant_threads: CPU threads the Assistant process may use (keeps the Boss's cores
            free).
        kernel_threads: Numba threads for the selection kernel in the Boss process
            (None = Numba's).
        queue_size: Boss -> Assistant messages in flight at most (the loss ring's frames and
            the control queue's bound); when full, messages wait in a merged backlog (the Boss
            never blocks; only losses beyond ~4N held are dropped, and counted). With
            ``send_every`` it also sizes the loss ring in /dev/shm: queue_size x send_every x
            256 losses of 12 bytes, or a quarter epoch's where that is more, within 4096 to
            2**20 (768 KiB at the defaults up to 262k instances).
        send_every: batches of losses grouped into one message (fewer, larger messages are
            cheaper).
        sync: wait for the Assistant at every epoch boundary: reproducible, slower. For
            tests/debug.
        seed: seed of the selection stream, the projection and the Assistant.
        max_restarts: how often a dead Assistant process is restarted before running without
            it.
        trace_dir: write every epoch's reported ids, losses and Assistant features there
            (rank 0), for ``autoassist tune --offline``; None writes nothing.
        feature_dir: an existing directory for the Assistant's feature table (a memory-mapped
            file of ``4 * dim`` bytes per instance, removed on ``close``); None:
            ``$AUTOASSIST_FEATURE_DIR``, else the temp folder. Only the scores live in
            ``/dev/shm``.
        extra: free-form notes carried along (not read by autoassist).

    Raises:
        UsageError: a setting out of its range, named with the reason, when the config is
            made (a ``ValueError``).
    """

    floor: float = 0.5
    rank_power: float | None = None
    adaptive_floor: bool = False
    warmup_epochs: int = 1
    anneal_epochs: int = 0
    epochs: int | None = None
    first_scores_wait: float = 0.25
    reweight: bool = True
    reweight_scale: str = "mean"
    assistant: str = "memory"
    keep: float | None = None
    loss_history: bool = True
    label_ema: float = 0.01
    feature_dim: int = 32
    label_buckets: int = 16
    assistant_lr: float = 0.1
    assistant_threads: int = 1
    kernel_threads: int | None = None
    queue_size: int = 64
    send_every: int = 4
    sync: bool = False
    seed: int = 0
    max_restarts: int = 3
    trace_dir: str | None = None
    feature_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def bad(name: str, why: str) -> UsageError:
            return UsageError(f"ShrinkConfig.{name}={getattr(self, name)!r}: {why}")

        if not (0.0 <= self.floor <= 1.0) or math.isnan(self.floor):
            raise bad("floor", "must lie in [0, 1] (0.5 is the default, 0.3 the paper's image "
                      "setting)")
        if self.rank_power is not None and not (math.isfinite(self.rank_power)
                                                 and self.rank_power > 0):
            raise bad("rank_power", "must be a positive number (3 mirrors Selective Backprop's "
                      "CDF ** 3) or None for the raw scores")
        for name in ("warmup_epochs", "anneal_epochs", "max_restarts"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 0:
                raise bad(name, "must be a non-negative integer")
        if not (0.0 <= self.first_scores_wait <= 10.0) or math.isnan(self.first_scores_wait):
            raise bad("first_scores_wait", "must lie in [0, 10] (a fraction of an epoch's time; "
                      "0 never waits)")
        if self.reweight_scale not in REWEIGHT_SCALES:
            raise bad("reweight_scale", f"must be one of {REWEIGHT_SCALES}")
        if self.anneal_epochs and self.epochs is None:
            raise bad("anneal_epochs", "needs the training budget: pass epochs=<total epochs>")
        if self.epochs is not None and self.epochs <= 0:
            raise bad("epochs", "must be a positive integer or None")
        if self.assistant not in ASSISTANT_KINDS:
            raise bad("assistant", f"must be one of {ASSISTANT_KINDS}")
        if self.assistant in FEATURELESS_ASSISTANTS and not self.loss_history:
            raise bad("assistant", f"{self.assistant!r} scores by each instance's last loss: "
                      "it needs loss_history=True")
        if self.assistant == "proportional":
            if self.keep is None or not (self.floor < self.keep <= 1.0):
                raise bad("keep", "the proportional Assistant's mean keep probability: pass "
                          f"keep in (floor, 1], with floor={self.floor} below it (for example "
                          "keep=1/3, floor=0.1)")
            if self.rank_power is not None or self.adaptive_floor:
                raise bad("assistant", "'proportional' sets each P_i itself: drop rank_power "
                          "and adaptive_floor")
        elif self.keep is not None:
            raise bad("keep", "only the proportional Assistant reads it: pass "
                      "assistant='proportional', or drop keep")
        if not (0.0 < self.label_ema <= 1.0):
            raise bad("label_ema", "must lie in (0, 1]")
        if self.feature_dim < 1:
            raise bad("feature_dim", "must be >= 1")
        if self.label_buckets < 0:
            raise bad("label_buckets", "must be >= 0")
        if self.assistant_lr <= 0:
            raise bad("assistant_lr", "must be > 0")
        if self.assistant_threads < 1:
            raise bad("assistant_threads", "must be >= 1")
        if self.kernel_threads is not None and self.kernel_threads < 1:
            raise bad("kernel_threads", "must be >= 1 or None")
        if self.queue_size < 1 or self.send_every < 1:
            raise bad("queue_size" if self.queue_size < 1 else "send_every", "must be >= 1")
        if not (0 <= int(self.seed) < 2**63):
            raise bad("seed", "must lie in [0, 2**63)")
        if self.feature_dir is not None:
            self.feature_dir = os.fspath(self.feature_dir)
            if not os.path.isdir(self.feature_dir):
                raise bad("feature_dir", "must be an existing directory (the Assistant's "
                          "feature table is a file there); None uses $AUTOASSIST_FEATURE_DIR, "
                          "else the temp folder")

    # -- persistence ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShrinkConfig:
        data = dict(data.get("autoassist", data))  # accept a file with an [autoassist] table
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(
                f"unknown shrink setting(s) {unknown}; known settings are {sorted(known)}"
            )
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ShrinkConfig:
        path = Path(path)
        if not path.is_file():
            raise UsageFileNotFoundError(f"shrink config {path} does not exist")
        if path.suffix not in (".json", ".toml"):
            raise UsageError(f"shrink config {path}: use a .toml or .json file")
        return cls.from_dict(read_settings_file(path))

    def to_file(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        data = {k: v for k, v in self.to_dict().items() if v is not None and k != "extra"}
        if path.suffix == ".json":
            path.write_text(json.dumps({"autoassist": data}, indent=2) + "\n")
        elif path.suffix == ".toml":
            lines = ["[autoassist]"]
            for key, value in data.items():
                lines.append(f"{key} = {json.dumps(value)}")
            path.write_text("\n".join(lines) + "\n")
        else:
            raise UsageError(f"shrink config {path}: use a .toml or .json file")
        return path

    def replace(self, **changes: Any) -> ShrinkConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def coerce(cls, config: ShrinkConfig | dict | str | os.PathLike | None = None,
               **overrides: Any) -> ShrinkConfig:
        """The one place a config given in any accepted form is resolved (``wrap``, the other
        adapters, ``tune`` and the fairseq task all call it, so a config means the same
        everywhere).

        Args:
            config: None (the defaults), a ``ShrinkConfig``, a dict of settings (optionally
                under an ``autoassist`` key), or a .toml/.json file written by ``to_file``.
            **overrides: settings that win over ``config``'s.

        Returns:
            The validated ``ShrinkConfig``.

        Raises:
            TypeError: ``config`` is of another type.
            UsageError: an unknown setting, a value out of its range, or a file that is not
                .toml/.json or does not parse (``UsageError`` is a ``ValueError``).
            UsageFileNotFoundError: the file does not exist (a ``FileNotFoundError``).
        """
        if config is None:
            base = cls()
        elif isinstance(config, ShrinkConfig):
            base = config
        elif isinstance(config, (str, os.PathLike)):
            base = cls.from_file(config)
        elif isinstance(config, dict):
            base = cls.from_dict(config)
        else:
            raise TypeError(f"config must be a ShrinkConfig, a dict of settings or a .toml/.json "
                            f"file path, got {type(config).__name__}")
        return base.replace(**overrides) if overrides else base


def read_settings_file(path: Path) -> dict[str, Any]:
    """The table in a .toml or .json file the user wrote; a parse error is theirs to fix."""
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10: the same parser, as the tomli package
                import tomli as tomllib

            return tomllib.loads(text)
        return json.loads(text)
    except ValueError as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise UsageError(f"{path} does not parse as {path.suffix[1:].upper()}: {exc}") from None
