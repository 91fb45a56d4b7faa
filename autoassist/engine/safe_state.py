"""States that ``torch.load(path)`` reads with its default ``weights_only=True``.

Every ``state_dict()`` a user can save (loaders, the torchdata node, the fairseq plugin's extra
state, the replay samplers) passes through ``safe``: NumPy arrays become tensors, NumPy scalars
Python numbers, tuple and dict subclasses plain ones, enums their values. Anything else is a
bug in autoassist and raises here, not later in a user's ``torch.load``.

Inside the Assistant process states stay NumPy (that process never imports torch unless its
learner is the torch MLP): ``as_numpy`` turns a loaded state back before it goes there.
"""

from __future__ import annotations

import enum
import sys
from typing import Any

import numpy as np

_PLAIN = (str, int, float, bool, type(None))


def safe(obj: Any, path: str = "state") -> Any:
    """``obj`` with only tensors and plain Python values (dict, list, tuple, str, int, float,
    bool, None), the same numbers bit for bit.

    Raises:
        TypeError: ``obj`` holds something else (named by its ``path``).
    """
    import torch

    if type(obj) in _PLAIN:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"{path} is a NumPy array of dtype {obj.dtype}, which a "
                            "weights_only checkpoint cannot hold")
        return torch.from_numpy(np.array(obj, copy=True, order="C"))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, enum.Enum):
        return safe(obj.value, path)
    if isinstance(obj, dict):
        return {safe(k, f"{path} key"): safe(v, f"{path}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [safe(v, f"{path}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, _PLAIN):  # a subclass of a plain type (an int flag, a str subclass)
        return next(t for t in _PLAIN if isinstance(obj, t))(obj)
    raise TypeError(f"{path} is a {type(obj).__name__}, which a weights_only checkpoint "
                    "cannot hold: autoassist's state should only hold tensors and plain values")


def as_numpy(obj: Any) -> Any:
    """``obj`` with every tensor as a NumPy array (a copy), for code that reads NumPy: the
    Assistant process, the replay buffers. NumPy arrays and other values pass unchanged."""
    torch = sys.modules.get("torch")  # a state holding tensors came with torch imported
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy().copy()
    if isinstance(obj, dict):
        return {k: as_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [as_numpy(v) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    return obj
