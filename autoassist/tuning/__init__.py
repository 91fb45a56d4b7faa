"""``autoassist tune``: the shrink settings for a user's own training job.

``search.py`` runs successive halving over probe trainings, each against the uniform run of the
same budget (or, ``objective="frontier"``, against uniform's frontier over several budgets:
``frontier_math.py``'s pure functions, shared with the laboratory's frontier harness);
``space.py`` is the search space (and a point -> ``ShrinkConfig``); ``probe.py`` is one probe
process running the user's ``job(config, epochs, seed)``; ``report.py`` the table and figure;
``tuned.py`` writes and reads ``tuned.toml`` (the settings, whether to wrap, the epochs to
train); ``offline.py`` chooses the Assistant and floor from a loss trace, without training.

Names load lazily: a probe process (``python -m autoassist.tuning.probe``) imports this package
first and should not pay for scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TuneResult": "search", "budgets": "search", "probe_key": "search",
    "score_probe": "search", "tune": "search",
    "OfflineResult": "offline", "floor_for_recall": "offline", "tune_offline": "offline",
    "Tuned": "tuned", "load_tuned": "tuned", "score_frontier": "frontier_math",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
