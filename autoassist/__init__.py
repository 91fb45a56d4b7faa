"""autoassist: train deep networks faster on fewer, better-chosen instances.

    import autoassist
    loader = autoassist.wrap(loader)          # any map-style torch DataLoader
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, y in loader:
            loss = loader.report(F.cross_entropy(model(x), y, reduction="none"))
            ...

Names are loaded lazily so that ``import autoassist`` (and the spawned Assistant process, which
imports ``autoassist.assistant``) stays light and has no side effects.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "wrap": "autoassist.pipelines.dataloader",
    "ShrinkingLoader": "autoassist.pipelines.dataloader",
    "ShrinkConfig": "autoassist.config",
    "ShrinkEngine": "autoassist.engine",
    "EpochPlan": "autoassist.engine",
    "tune": "autoassist.tuning",
    "tune_offline": "autoassist.tuning.offline",
    "lr_scheduler": "autoassist.schedules",
    "ProgressLR": "autoassist.schedules",
}

__all__ = [
    "EpochPlan", "ProgressLR", "ShrinkConfig", "ShrinkEngine",
    "ShrinkingLoader", "__version__", "lr_scheduler", "tune", "tune_offline", "wrap",
]

if TYPE_CHECKING:  # pragma: no cover
    from autoassist.config import ShrinkConfig
    from autoassist.engine import EpochPlan, ShrinkEngine
    from autoassist.pipelines.dataloader import ShrinkingLoader, wrap
    from autoassist.schedules import ProgressLR, lr_scheduler
    from autoassist.tuning import tune
    from autoassist.tuning.offline import tune_offline


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'autoassist' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
