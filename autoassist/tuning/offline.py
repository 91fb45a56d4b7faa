"""``autoassist tune --offline TRACE``: choose the Assistant and the floor from a logged run.

No training is repeated. The trace (``autoassist.assistant.trace``) holds every loss the Boss
reported, in order, and the Assistant's input features. From it this module rebuilds exactly the
rows the online Assistant learns from: the "informative" label of each report (loss above the
running mean, ``kernels.ema_stream`` with the run's ``label_ema``) and the loss-memory features
(the instance's previous loss relative to the running mean). Reports are replayed one Boss
report at a time; online they travel in groups of ``send_every``, a small difference.

Each candidate Assistant (kind x learning rate x loss memory on/off) is scored with
scikit-learn's ``cross_validate`` over a ``TimeSeriesSplit``: it learns, in one online pass,
from the past and predicts the future, which is the Assistant's job. Held-out probabilities ``p``
give precision/recall curves and, for the shrinking sampler's keep probability
``P = b + (1 - b) p``, the expected recall of informative instances and the kept fraction as
functions of the floor ``b`` (both linear in ``b``). For a requested recall the smallest ``b``
reaching it is chosen, and the candidate with the smallest kept fraction at that recall wins.
Without any Assistant skill (``p`` constant), recall r costs a kept fraction of r: that is the
line to beat.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from autoassist.assistant.trace import Trace, read_trace
from autoassist.config import ShrinkConfig
from autoassist.errors import UsageError
from autoassist.plotting import subplots

DEFAULT_CANDIDATES = [  # the tiny net's Adam step is capped at 0.01 (assistant/models.py)
    {"assistant": ["logistic", "sgd"], "assistant_lr": [0.03, 0.1, 0.3],
     "loss_history": [True, False]},
    {"assistant": ["mlp"], "assistant_lr": [0.001, 0.003, 0.01], "loss_history": [True, False]},
]
MINIBATCH = 32  # the online Assistant's step size in instances (autoassist.assistant)


class AssistantClassifier(ClassifierMixin, BaseEstimator):
    """An Assistant model as a scikit-learn classifier: ``fit`` is one online pass, in order.

    The last two input columns are the loss-memory features; ``loss_history=False`` drops them.
    """

    def __init__(self, kind: str = "logistic", lr: float = 0.1, loss_history: bool = True,
                 seed: int = 0):
        self.kind, self.lr, self.loss_history, self.seed = kind, lr, loss_history, seed

    def _cols(self, X: np.ndarray) -> np.ndarray:
        return X if self.loss_history else X[:, :-2]

    def fit(self, X, y):
        from autoassist.assistant.models import make_assistant_model

        X = self._cols(np.asarray(X, np.float32))
        y = np.asarray(y)
        self.classes_ = np.array([0, 1])
        self.model_ = make_assistant_model(self.kind, X.shape[1], self.lr, self.seed)
        for start in range(0, len(X), MINIBATCH):
            self.model_.partial_fit(X[start:start + MINIBATCH], y[start:start + MINIBATCH])
        return self

    def predict_proba(self, X):
        p = np.asarray(self.model_.predict_proba(self._cols(np.asarray(X, np.float32))),
                       np.float64)
        return np.stack([1 - p, p], axis=1)

    def predict(self, X):
        return (self.predict_proba(X)[:, 1] > 0.5).astype(int)


def replay(trace: Trace, label_ema: float | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                    np.ndarray]:
    """``(X, y, epoch)``: the online Assistant's training rows, in report order."""
    from autoassist.assistant.loss_memory import LossMemory
    from autoassist.kernels import ema_stream

    alpha = float(label_ema if label_ema is not None else trace.config["label_ema"])
    memory = LossMemory(len(trace.have))
    mean = float("nan")
    xs, ys, es = [], [], []
    for epoch, ids, losses, sizes in zip(trace.epochs, trace.ids, trace.losses, trace.sizes,
                                         strict=True):
        start = 0
        for size in sizes:
            i, lo = ids[start:start + size], losses[start:start + size]
            start += size
            before = mean
            labels, mean = ema_stream(lo.astype(np.float64), mean, alpha)
            have = trace.have[i]
            if have.any():
                xs.append(np.hstack([trace.features[i[have]],
                                     memory.features(i[have], before)]))
                ys.append(np.asarray(labels)[have].astype(np.int64))
                es.append(np.full(int(have.sum()), epoch))
            memory.update(i, lo)
    if not xs:
        raise UsageError("the trace has no reports with features: the Assistant had nothing to "
                         "learn from (pass batch=... to report(), or features=... to wrap)")
    return np.vstack(xs), np.concatenate(ys), np.concatenate(es)


def floor_for_recall(p: np.ndarray, y: np.ndarray, recall: float) -> tuple[float, float]:
    """Smallest floor ``b`` whose expected recall of positives is >= ``recall``; its kept
    fraction. Expected recall ``b + (1-b) mean(p | y=1)``, kept ``b + (1-b) mean(p)``."""
    pos = p[y == 1]
    m_pos = float(pos.mean()) if len(pos) else 1.0
    m_all = float(p.mean())
    b = 0.0 if m_pos >= recall else (recall - m_pos) / (1.0 - m_pos)
    b = min(1.0, math.ceil(b * 1000) / 1000)  # 3 decimals, rounded up: the recall still holds
    return b, b + (1 - b) * m_all


@dataclass
class OfflineResult:
    config: ShrinkConfig
    config_path: Path
    candidates: list[dict[str, Any]]
    headline: dict[str, Any]
    out: Path


def tune_offline(trace_dir: str | os.PathLike, *, recall: float = 0.9,
                 candidates: dict[str, list] | list[dict[str, list]] | None = None,
                 n_splits: int = 4,
                 max_rows: int | None = 200_000, seed: int = 0,
                 out: str | os.PathLike = "autoassist-tune-offline",
                 progress: bool = True) -> OfflineResult:
    """Pick the Assistant and floor for ``recall`` from a trace; write tuned.toml, a PNG, a table.

    ``max_rows``: the most recent rows used (the whole trace when None); older reports come from
    a Boss that has changed since.
    """
    from sklearn.metrics import precision_recall_curve
    from sklearn.model_selection import ParameterGrid, TimeSeriesSplit, cross_validate
    from tqdm.auto import tqdm

    if not 0.0 < recall <= 1.0:
        raise UsageError(f"recall={recall}: must lie in (0, 1]")
    trace = read_trace(trace_dir)
    X, y, _epoch = replay(trace)
    if max_rows is not None and len(X) > max_rows:
        X, y = X[-max_rows:], y[-max_rows:]
    if len(np.unique(y)) < 2:
        raise UsageError("every report in the trace has the same label: nothing to rank")
    if len(X) < 10 * (n_splits + 1):
        raise UsageError(f"the trace has {len(X)} rows: too few for {n_splits} time splits; "
                         "trace a longer run")
    grid = list(ParameterGrid(candidates or DEFAULT_CANDIDATES))
    if not grid:
        raise UsageError("no candidates to try")
    cv = TimeSeriesSplit(n_splits=n_splits)
    rows = []
    for params in tqdm(grid, desc="autoassist tune --offline", disable=not progress):
        est = AssistantClassifier(kind=params.get("assistant", "logistic"),
                                  lr=params.get("assistant_lr", 0.1),
                                  loss_history=params.get("loss_history", True), seed=seed)
        res = cross_validate(est, X, y, cv=cv, scoring=["average_precision", "roc_auc"],
                             return_estimator=True, return_indices=True)
        test_idx = res["indices"]["test"]
        p = np.concatenate([m.predict_proba(X[t])[:, 1] for m, t in
                            zip(res["estimator"], test_idx, strict=True)])
        yt = np.concatenate([y[t] for t in test_idx])
        b, kept = floor_for_recall(p, yt, recall)
        precision, rec, _ = precision_recall_curve(yt, p)
        rows.append({"params": params, "floor": b, "kept_fraction": kept,
                     "average_precision": float(np.mean(res["test_average_precision"])),
                     "roc_auc": float(np.mean(res["test_roc_auc"])),
                     "mean_p_informative": float(p[yt == 1].mean()),
                     "mean_p": float(p.mean()), "positive_rate": float(yt.mean()),
                     "pr_curve": {"precision": precision[::max(1, len(precision) // 200)]
                                  .tolist(), "recall": rec[::max(1, len(rec) // 200)].tolist()}})
    rows.sort(key=lambda r: (r["kept_fraction"], -r["average_precision"]))
    best = rows[0]
    # where the traced run kept its files is that machine's business, not a tuned setting
    base = {k: v for k, v in trace.config.items() if k not in ("trace_dir", "feature_dir")}
    config = ShrinkConfig.from_dict(base).replace(**best["params"], floor=best["floor"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = config.to_file(out / "tuned.toml")
    headline = {"recall": recall, "best": best["params"], "floor": best["floor"],
                "kept_fraction": best["kept_fraction"],
                "kept_without_assistant": recall,  # constant p: recall r keeps a fraction r
                "average_precision": best["average_precision"], "rows": int(len(X)),
                "positive_rate": best["positive_rate"], "candidates": len(rows),
                "config": str(config_path)}
    (out / "offline.json").write_text(json.dumps({"headline": headline, "candidates": rows},
                                                 indent=2) + "\n")
    (out / "offline.md").write_text(_table(rows, recall) + "\n")
    png = _plot(rows, recall, out / "offline.png")
    if png is not None:
        headline["plot"] = str(png)
    return OfflineResult(config, config_path, rows, headline, out)


def _table(rows: list[dict[str, Any]], recall: float) -> str:
    lines = [f"Recall of informative instances requested: {recall:.2f} (without an Assistant "
             f"that keeps {recall:.0%} of the data)", "",
             "| rank | assistant | lr | loss memory | avg precision | ROC AUC | floor b | "
             "kept fraction |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k, r in enumerate(rows, 1):
        p = r["params"]
        lines.append(f"| {k} | {p.get('assistant')} | {p.get('assistant_lr')} | "
                     f"{p.get('loss_history')} | {r['average_precision']:.3f} | "
                     f"{r['roc_auc']:.3f} | {r['floor']:.3f} | {r['kept_fraction']:.3f} |")
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], recall: float, path: Path) -> Path | None:
    made = subplots(1, 2, figsize=(11, 4.5))
    if made is None:  # no matplotlib: the JSON and tables say it all
        return None
    fig, (ax1, ax2) = made
    shown = rows[:6]
    for k, r in enumerate(shown):
        p = r["params"]
        label = f"{p.get('assistant')} lr={p.get('assistant_lr')} mem={p.get('loss_history')}"
        style = dict(lw=2.2, color="tab:red") if k == 0 else dict(lw=1, alpha=0.8)
        ax1.plot(r["pr_curve"]["recall"], r["pr_curve"]["precision"], label=label, **style)
        b = np.linspace(0, 1, 101)
        rec = b + (1 - b) * r["mean_p_informative"]
        kept = b + (1 - b) * r["mean_p"]
        ax2.plot(rec, kept, **style)
    ax1.axhline(rows[0]["positive_rate"], color="k", ls=":", lw=1, label="no skill")
    ax1.set_xlabel("recall (held-out, future reports)")
    ax1.set_ylabel("precision")
    ax1.set_title("Assistant candidates: precision/recall of 'informative'")
    ax1.legend(fontsize=7, loc="upper right")
    ax2.plot([0, 1], [0, 1], "k:", lw=1, label="no Assistant (keep = recall)")
    ax2.axvline(recall, color="gray", lw=0.8, ls="--")
    ax2.plot([recall], [rows[0]["kept_fraction"]], "o", color="tab:red",
             label=f"chosen: floor {rows[0]['floor']:.3f}, keeps {rows[0]['kept_fraction']:.0%}")
    ax2.set_xlabel("expected recall of informative instances (floor b from 0 to 1)")
    ax2.set_ylabel("expected kept fraction")
    ax2.set_title("Shrinking sampler P = b + (1-b) p")
    ax2.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
