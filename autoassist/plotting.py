"""Figures for reports and benchmarks, made without pyplot.

``pyplot`` would switch the process's global backend and register every figure in the user's
session (a notebook would show, and keep, each one). A ``matplotlib.figure.Figure`` made directly
touches no global state, and ``savefig`` picks the file's renderer by itself. matplotlib is an
optional extra (``plots``): without it, callers write their JSON and tables and skip the picture.
"""

from __future__ import annotations

from typing import Any


def subplots(*args: Any, figsize: tuple[float, float] | None = None,
             **kwargs: Any) -> tuple[Any, Any] | None:
    """``(figure, axes)`` as ``pyplot.subplots`` returns them, or None without matplotlib.

    Args:
        *args, **kwargs: ``Figure.subplots``'s (``nrows``, ``ncols``, ``squeeze``, ``sharey``...).
        figsize: the figure's size in inches.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)
