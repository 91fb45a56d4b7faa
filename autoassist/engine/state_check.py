"""A saved state is checked whole before anything is restored from it.

``load_state_dict`` stops the Assistant, rewrites the shared tables and starts the Assistant
again from the saved learner: a state that fails halfway (a damaged file, another data set's
checkpoint, another Assistant kind) would leave a loader with no Assistant and half a state.
So every key is checked first (presence, type, shape, dtype, range, Assistant kind), the error
names the key and the fix, and a loader that refuses a state is left exactly as it was.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from autoassist.errors import UsageError

DAMAGED = ("the state is damaged or was saved by a loader over other data or settings: load "
           "what state_dict() returned for a loader over the same data and settings")


class StateError(UsageError):
    """A saved state that cannot be loaded; the message names the key and the fix (a
    ``ValueError``, as before)."""


def bad(path: str, problem: str, fix: str = DAMAGED) -> StateError:
    return StateError(f"{path} {problem}; {fix}")


def as_dict(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise bad(path, f"is a {type(value).__name__}, not a dict")
    return value


def get(state: dict, key: str, path: str) -> Any:
    """``state[key]``, or an error naming the missing key."""
    as_dict(state, path)
    if key not in state:
        raise bad(f"{path}[{key!r}]", "is missing")
    return state[key]


def integer(value: Any, path: str, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise bad(path, f"must be an integer, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        where = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise bad(path, f"is {int(value)}, out of range (must be {where})")
    return int(value)


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise bad(path, f"must be True or False, got {value!r}")
    return bool(value)


def real(value: Any, path: str, low: float = -math.inf, high: float = math.inf,
         allow_nan: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise bad(path, f"must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        if allow_nan:
            return value
        raise bad(path, "is NaN")
    if not low <= value <= high:
        raise bad(path, f"is {value!r}, out of range (must lie in [{low}, {high}])")
    return value


def array(value: Any, path: str, kind: str, shape: tuple[int | None, ...],
          low: float | None = None, high: float | None = None) -> np.ndarray:
    """``value`` as a NumPy array of ``kind`` ("int" or "float"; floats must be finite) and
    ``shape`` (None: any length), with every element in ``[low, high]``. A tensor may lie on any
    device (``torch.load(..., map_location="cuda")``)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        value = value.detach().cpu()
    try:
        a = np.asarray(value)
    except Exception:  # noqa: BLE001 - whatever it is, it is not an array
        raise bad(path, f"is not an array ({type(value).__name__})") from None
    if kind == "int" and not (a.dtype.kind in "iu" or (a.size == 0 and a.dtype.kind == "f")):
        raise bad(path, f"must hold integer ids, got dtype {a.dtype}")
    if kind == "float" and a.dtype.kind not in "fiu":
        raise bad(path, f"must hold numbers, got dtype {a.dtype}")
    if a.ndim != len(shape) or any(s is not None and s != got
                                   for s, got in zip(shape, a.shape, strict=True)):
        want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
        raise bad(path, f"has shape {a.shape}, expected {want}")
    if a.size:
        if kind == "float" and not np.isfinite(a).all():
            raise bad(path, "holds NaN or infinite values")
        lo, hi = a.min(), a.max()
        if (low is not None and lo < low) or (high is not None and hi > high):
            out = (lo if low is not None and lo < low else hi).item()
            raise bad(path, f"holds {out!r}, out of range (must lie in [{low}, {high}])")
    return a


def sequence(value: Any, path: str, length: int | None = None) -> list | tuple:
    if not isinstance(value, (list, tuple)):
        raise bad(path, f"must be a list or tuple, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise bad(path, f"has {len(value)} entries, expected {length}")
    return value


def check_engine_state(state: Any, *, n: int, dim: int, config, path: str) -> None:
    """Every key ``ShrinkEngine.load_state_dict`` reads, checked; raises ``StateError``."""
    from autoassist.engine.plan import Reason

    as_dict(state, path)
    saved_dim = integer(get(state, "dim", path), f"{path}['dim']", low=0)
    if saved_dim != dim:
        raise bad(f"{path}['dim']", f"is {saved_dim}: saved Assistant features have "
                  f"{saved_dim} dimensions, this loader {dim} (the memory Assistant uses none)",
                  "use the same assistant/feature_dim/label_buckets/features as the saved run")
    ids = array(get(state, "feature_ids", path), f"{path}['feature_ids']", "int", (None,),
                0, n - 1)
    if len(np.unique(ids)) != len(ids):
        raise bad(f"{path}['feature_ids']", "repeats an instance id")
    array(get(state, "features", path), f"{path}['features']", "float", (len(ids), dim))

    published = sequence(get(state, "published", path), f"{path}['published']", 2)
    array(published[0], f"{path}['published'][0] (scores)", "float", (n,), 0.0, 1.0)
    integer(published[1], f"{path}['published'][1] (version)", low=0)

    plan = get(state, "plan", path)
    if plan is not None:
        where = f"{path}['plan']"
        integer(get(plan, "epoch", where), f"{where}['epoch']", low=0)
        reason = get(plan, "reason", where)
        if reason not in {r.value for r in Reason}:
            raise bad(f"{where}['reason']", f"is {reason!r}, not one of "
                      f"{sorted(r.value for r in Reason)}")
        scores = get(plan, "scores", where)
        if (scores is None) != (reason != Reason.SHRINK.value):
            raise bad(f"{where}['scores']", "must be None exactly when the plan keeps "
                      f"everything (reason {reason!r})")
        if scores is not None:
            array(scores, f"{where}['scores']", "float", (n,), 0.0, 1.0)
        integer(get(plan, "score_version", where), f"{where}['score_version']", low=-1)
        real(get(plan, "floor", where), f"{where}['floor']", 0.0, 1.0)

    assistant = get(state, "assistant", path)
    if assistant is not None:
        check_assistant_state(assistant, n=n, dim=dim, config=config,
                              path=f"{path}['assistant']")

    pending = sequence(get(state, "pending", path), f"{path}['pending']", 3)
    pids = sequence(pending[0], f"{path}['pending'][0] (ids)")
    plosses = sequence(pending[1], f"{path}['pending'][1] (losses)", len(pids))
    for k, (i, lo) in enumerate(zip(pids, plosses, strict=True)):
        got = array(i, f"{path}['pending'][0][{k}]", "int", (None,), 0, n - 1)
        array(lo, f"{path}['pending'][1][{k}]", "float", (len(got),))
    integer(pending[2], f"{path}['pending'][2] (batches)", low=0)
    for k, i in enumerate(sequence(state.get("pending_forget", []), f"{path}['pending_forget']")):
        array(i, f"{path}['pending_forget'][{k}]", "int", (None,), 0, n - 1)
    for k, item in enumerate(sequence(state.get("outgoing", []), f"{path}['outgoing']")):
        where = f"{path}['outgoing'][{k}]"
        i, lo, fi, rows = sequence(item, where, 4)
        got = array(i, f"{where}[0] (ids)", "int", (None,), 0, n - 1)
        array(lo, f"{where}[1] (losses)", "float", (len(got),))
        fids = array(fi, f"{where}[2] (feature ids)", "int", (None,), 0, n - 1)
        array(rows, f"{where}[3] (features)", "float", (len(fids), dim))
    for k, record in enumerate(sequence(get(state, "telemetry", path), f"{path}['telemetry']")):
        as_dict(record, f"{path}['telemetry'][{k}]")
    integer(get(state, "drops", path), f"{path}['drops']", low=0)
    boolean(state.get("first_scores_expired", False), f"{path}['first_scores_expired']")


def check_assistant_state(state: Any, *, n: int, dim: int, config, path: str) -> None:
    """The Assistant's saved learner, loaded into a throw-away learner of this loader's kind
    and size here, so that the Assistant process never starts from a state it cannot load."""
    from autoassist.assistant.loss_memory import LossMemory
    from autoassist.assistant.models import make_assistant_model
    from autoassist.assistant.protocol import AssistantSettings
    from autoassist.engine.safe_state import as_numpy

    model = as_dict(get(state, "model", path), f"{path}['model']")
    kind = model.get("kind")
    if kind != config.assistant:
        raise bad(f"{path}['model']['kind']", f"is {kind!r} but this loader's Assistant is "
                  f"{config.assistant!r}", f"pass assistant={kind!r} to resume that Assistant")
    if kind == "sgd" and "pickle" in model:
        raise bad(f"{path}['model']['pickle']", "is a scikit-learn model pickled by autoassist "
                  "0.1.0 (loader state version 1), which autoassist no longer unpickles "
                  "(unpickling runs any code the file holds)",
                  f"resume it with autoassist 0.1.0, or set {path} to None to go on with a "
                  "fresh Assistant")
    real(get(state, "loss_mean", path), f"{path}['loss_mean']", allow_nan=True)
    real(get(state, "accuracy", path), f"{path}['accuracy']", 0.0, 1.0, allow_nan=True)
    memory = get(state, "memory", path)
    if memory is not None:
        array(get(memory, "last", f"{path}['memory']"), f"{path}['memory']['last']", "float",
              (n,))
        array(get(memory, "seen", f"{path}['memory']"), f"{path}['memory']['seen']", "int",
              (n,), 0, 1)
    width = dim + (LossMemory.dim if config.loss_history else 0)
    try:  # as the Assistant process will get it: NumPy on the CPU
        options = AssistantSettings.from_config(config).model_options()  # the process's own
        make_assistant_model(kind, width, config.assistant_lr, config.seed,
                             **options).load_state_dict(as_numpy(model))
    except Exception as exc:  # noqa: BLE001 - any failure here would kill the Assistant
        raise bad(f"{path}['model']", f"does not load into this loader's {kind!r} Assistant "
                  f"of {width} inputs ({type(exc).__name__}: {exc})",
                  "resume with the saved run's feature_dim, label_buckets, features and "
                  "loss_history") from None
