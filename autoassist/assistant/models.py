"""The Assistant's learners: very light models that predict "is this instance still informative?".

All share one small interface — ``partial_fit(X, y)``, ``predict_proba(X)`` (probability of label
1), ``state_dict()``/``load_state_dict()`` — so the Assistant process does not care which one runs.
The logistic model is NumPy only, so the Assistant process starts without importing torch.

A learner's state is its parameters as arrays and plain numbers, never a pickled object: the
engine turns the arrays into tensors (``autoassist.engine.safe_state``), so a checkpoint holding
it loads with ``torch.load(path)``'s default ``weights_only=True``; ``load_state_dict`` takes
them as NumPy arrays or tensors and rebuilds the learner exactly.
"""

from __future__ import annotations

import numpy as np


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


class AssistantModel:
    """The interface every learner honours; the Assistant process calls nothing else.

    A learner's scores are ``calibrate(predict_proba(rows))`` over the seen instances and
    ``unseen_score`` for the others. Most learners predict scores directly (``calibrate`` is
    the identity); a rule that needs all scores at once (the proportional Assistant's shared
    ``tau``) predicts raw values and turns them into scores in ``calibrate``.
    """

    kind = ""
    unseen_score: float = 1.0  # an instance never reported is informative

    def partial_fit(self, X: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define partial_fit(X, y)")

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must define predict_proba(X)")

    def calibrate(self, scores: np.ndarray) -> np.ndarray:
        return scores

    def state_dict(self) -> dict:
        raise NotImplementedError(f"{type(self).__name__} must define state_dict()")

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define load_state_dict(state)")


class LogisticAssistant(AssistantModel):
    """Online logistic regression with AdaGrad steps (robust to the scale of the features)."""

    kind = "logistic"

    def __init__(self, dim: int, lr: float = 0.05, l2: float = 1e-4, seed: int = 0):
        self.dim, self.lr, self.l2 = int(dim), float(lr), float(l2)
        self.w = np.zeros(self.dim, np.float64)
        self.b = 0.0
        self.g2 = np.full(self.dim + 1, 1e-8, np.float64)

    def partial_fit(self, X: np.ndarray, y: np.ndarray) -> None:
        if len(X) == 0:
            return
        X = np.asarray(X, np.float64)
        err = _sigmoid(X @ self.w + self.b) - y  # gradient of the mean log-loss
        gw = X.T @ err / len(X) + self.l2 * self.w
        gb = float(err.mean())
        self.g2[:-1] += gw * gw
        self.g2[-1] += gb * gb
        self.w -= self.lr * gw / np.sqrt(self.g2[:-1])
        self.b -= self.lr * gb / np.sqrt(self.g2[-1])

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return _sigmoid(np.asarray(X, np.float64) @ self.w + self.b).astype(np.float32)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "w": self.w.copy(), "b": self.b, "g2": self.g2.copy()}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(state, self.kind)
        w, g2, b = (np.asarray(state["w"], np.float64), np.asarray(state["g2"], np.float64),
                    float(state["b"]))
        if w.shape != self.w.shape:
            raise ValueError(
                f"Assistant state has {w.shape[0]} features, this Assistant "
                f"{self.dim}: use the same feature_dim/label_buckets/loss_history as the run "
                "that saved it"
            )
        if g2.shape != self.g2.shape:
            raise ValueError(f"Assistant state's g2 has shape {g2.shape}, expected "
                             f"{self.g2.shape}")
        if not (np.isfinite(w).all() and np.isfinite(g2).all() and np.isfinite(b)
                and (g2 > 0).all()):
            raise ValueError("Assistant state holds non-finite weights (or non-positive "
                             "AdaGrad sums): the checkpoint is damaged")
        self.w, self.b, self.g2 = w.copy(), b, g2.copy()


class SGDAssistant(AssistantModel):
    """scikit-learn's ``SGDClassifier(loss="log_loss")`` trained with ``partial_fit``."""

    kind = "sgd"

    def __init__(self, dim: int, lr: float = 0.05, l2: float = 1e-4, seed: int = 0):
        self.dim, self._settings = int(dim), {"eta0": lr, "alpha": l2, "random_state": seed}
        self.model = self._new_model()
        self._fitted = False

    def _new_model(self):
        from sklearn.linear_model import SGDClassifier

        return SGDClassifier(loss="log_loss", learning_rate="constant", **self._settings)

    def partial_fit(self, X: np.ndarray, y: np.ndarray) -> None:
        if len(X):
            self.model.partial_fit(X, y.astype(np.int64), classes=np.array([0, 1]))
            self._fitted = True

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if not self._fitted:
            return np.full(len(X), 0.5, np.float32)
        return self.model.predict_proba(X)[:, 1].astype(np.float32)

    # what partial_fit reads of a fitted SGDClassifier (scikit-learn recomputes the rest, such
    # as its class weights and loss object, on every call); the seeded random state is drawn
    # afresh on every call, so nothing of it is carried
    def state_dict(self) -> dict:
        state: dict = {"kind": self.kind, "fitted": self._fitted}
        if self._fitted:
            m = self.model
            state.update(coef=m.coef_.copy(), intercept=m.intercept_.copy(), t=float(m.t_),
                         n_iter=int(m.n_iter_))
        return state

    def load_state_dict(self, state: dict) -> None:
        _check_kind(state, self.kind)
        if "pickle" in state:
            raise ValueError("this sgd Assistant state is a pickled scikit-learn model (state "
                             "version 1), which autoassist no longer unpickles: unpickling "
                             "runs any code the file holds. Resume it with autoassist 0.1.0, or "
                             "set its 'assistant' entry to None to start a fresh Assistant")
        if not state["fitted"]:
            self.model, self._fitted = self._new_model(), False
            return
        # in the dtype it was fitted in (the features'): scikit-learn fits in coef_'s dtype
        coef, intercept = np.asarray(state["coef"]), np.asarray(state["intercept"])
        if coef.dtype.kind != "f" or intercept.dtype.kind != "f":
            raise ValueError(f"Assistant state has weights of dtype {coef.dtype} and "
                             f"{intercept.dtype}: the checkpoint is damaged")
        if coef.shape != (1, self.dim) or intercept.shape != (1,):
            raise ValueError(f"Assistant state has weights of shape {coef.shape}, this "
                             f"Assistant (1, {self.dim}): use the same feature_dim/label_buckets/"
                             "loss_history as the run that saved it")
        if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
            raise ValueError("Assistant state holds non-finite weights: the checkpoint is "
                             "damaged")
        m = self._new_model()
        m.classes_ = np.array([0, 1])
        m.n_features_in_ = self.dim
        m.coef_, m.intercept_ = coef.copy(), intercept.copy()
        m.t_, m.n_iter_ = float(state["t"]), int(state["n_iter"])
        self.model, self._fitted = m, True


class MLPAssistant(AssistantModel):
    """A tiny torch net (d -> hidden -> 1) trained online with Adam; torch loads only if chosen."""

    kind = "mlp"

    def __init__(self, dim: int, lr: float = 0.05, l2: float = 1e-4, seed: int = 0, hidden=32):
        import torch

        gen = torch.Generator().manual_seed(seed)
        self.torch = torch
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
        )
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=min(lr, 0.01), weight_decay=l2)

    def partial_fit(self, X: np.ndarray, y: np.ndarray) -> None:
        if len(X) == 0:
            return
        t = self.torch
        logits = self.net(t.from_numpy(np.asarray(X, np.float32))).squeeze(1)
        loss = t.nn.functional.binary_cross_entropy_with_logits(
            logits, t.from_numpy(y.astype(np.float32))
        )
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        t = self.torch
        with t.no_grad():
            out = t.sigmoid(self.net(t.from_numpy(np.asarray(X, np.float32))).squeeze(1))
        return out.numpy().astype(np.float32)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "net": self.net.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(state, self.kind)
        self.net.load_state_dict(_as_tensors(self.torch, state["net"]))
        self.opt.load_state_dict(_as_tensors(self.torch, state["opt"]))


def _as_tensors(torch, obj):
    """The MLP's state with its arrays as tensors again (the engine hands the Assistant
    process NumPy arrays, ``safe_state.as_numpy``)."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, dict):
        return {k: _as_tensors(torch, v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_as_tensors(torch, v) for v in obj)
    return obj


class MemoryAssistant(AssistantModel):
    """No learner: an instance is informative when its last reported loss was above the running
    mean (InfoBatch's rule), and an instance not reported yet always is.

    It reads the two loss-memory columns the Assistant appends to every row (``[seen, relative
    last loss]``, ``loss_memory.py``), so it needs ``loss_history=True``. Exact for every
    instance the Boss trained on recently; for the others it is as stale as their last loss.
    """

    kind = "memory"

    def __init__(self, dim: int, lr: float = 0.0, seed: int = 0):
        if dim < 2:
            raise ValueError("the memory Assistant reads the loss-memory columns: it needs "
                             "loss_history=True")
        self.dim = int(dim)

    def partial_fit(self, X: np.ndarray, y: np.ndarray) -> None:
        pass  # nothing to learn: the memory is updated by the Assistant itself

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        seen, relative = X[:, -2], X[:, -1]
        return ((seen == 0) | (relative > 0)).astype(np.float32)

    def state_dict(self) -> dict:
        return {"kind": self.kind}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(state, self.kind)


class ProportionalAssistant(MemoryAssistant):
    """No learner: each instance is kept with probability proportional to its last reported
    loss (over the running mean), at least the floor, at most 1, ``keep`` on average.

    Where the memory Assistant keeps every above-mean instance and the floor of the rest, this
    samples by loss (importance sampling, with the Boss's ``mean(P) / P_i`` weights): a rule
    that, fed the Boss's current losses, reached uniform's accuracy with less compute than the
    "above the mean" rule on KEEL magic (docs/results.md section 0). Its scores need the whole
    data set at once (``tau`` is shared), so ``predict_proba`` gives the loss ratio and
    ``calibrate`` turns all of them into scores; an instance not seen yet is always kept.
    """

    kind = "proportional"
    unseen_score = np.inf

    def __init__(self, dim: int, lr: float = 0.0, seed: int = 0, keep: float = 1 / 3,
                 floor: float = 0.1):
        super().__init__(dim, lr=lr, seed=seed)
        if not (0.0 <= floor < keep <= 1.0):
            raise ValueError(f"keep={keep}, floor={floor}: need 0 <= floor < keep <= 1")
        self.keep, self.floor = float(keep), float(floor)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        seen, relative = X[:, -2], X[:, -1]
        return np.where(seen == 0, np.inf, np.exp(relative)).astype(np.float32)

    def calibrate(self, ratios: np.ndarray) -> np.ndarray:
        from autoassist.kernels import proportional_scores

        return proportional_scores(ratios, self.keep, self.floor)


MODELS = {cls.kind: cls for cls in (LogisticAssistant, SGDAssistant, MLPAssistant,
                                    MemoryAssistant, ProportionalAssistant)}


def make_assistant_model(kind: str, dim: int, lr: float, seed: int, **options):
    """``options``: a kind's own settings (the proportional Assistant's ``keep`` and ``floor``,
    ``AssistantSettings.model_options``)."""
    if kind not in MODELS:
        raise ValueError(f"unknown Assistant kind {kind!r}; choose one of {sorted(MODELS)}")
    return MODELS[kind](dim, lr=lr, seed=seed, **options)


def _check_kind(state: dict, kind: str) -> None:
    if state.get("kind") != kind:
        raise ValueError(
            f"Assistant state is for kind {state.get('kind')!r}, this Assistant is {kind!r}: "
            f"pass assistant={state.get('kind')!r} to resume it"
        )
