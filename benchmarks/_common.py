"""What every benchmark records: commit, machine, thread settings; one result file + JSON line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoassist.bench.provenance import git_commit, machine_info, thread_info

__all__ = ["RESULTS", "git_commit", "machine_info", "repo_path", "thread_info",
           "write_result"]

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parent.parent


def repo_path(path: Path | None) -> str | None:
    """``path`` relative to the repository root: results files carry no machine paths."""
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def write_result(name: str, result: dict[str, Any], headline: dict[str, Any] | None = None,
                 plot: Callable[[Path], Path | None] | None = None) -> Path:
    """Write ``benchmarks/results/<name>.json`` (after ``plot(png_path)``, whose repo-relative
    path goes into ``result["png"]``) and print ``headline`` (default: the whole result) as the
    last stdout line."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = plot(RESULTS / f"{name}.png") if plot is not None else None
    if plot is not None:
        result["png"] = repo_path(png)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {repo_path(path)}" + (f" and {repo_path(png)}" if png else ""))
    print(json.dumps(result if headline is None else headline, default=str), flush=True)
    return path
