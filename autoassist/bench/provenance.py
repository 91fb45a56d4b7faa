"""Where a result came from: commit, machine and thread settings (every benchmark records them)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


def git_commit() -> str | None:
    """HEAD (``+dirty`` with uncommitted changes outside ``benchmarks/results``: results that
    benchmarks themselves wrote, e.g. a resumable store's run files, are not code);
    ``AUTOASSIST_COMMIT`` where the code runs from a copy without git history (e.g. a GPU
    machine that received the working tree)."""
    fallback = os.environ.get("AUTOASSIST_COMMIT") or None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10)
        commit = out.stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ":/", ":(exclude,top)benchmarks/results"],
                               capture_output=True, text=True, cwd=Path(__file__).parent,
                               timeout=10).stdout.strip()
        if not commit:
            return fallback
        return f"{commit}+dirty" if dirty else commit
    except (OSError, subprocess.SubprocessError):
        return fallback


def machine_info(device=None) -> dict[str, Any]:
    """Host facts, plus the accelerator's name when ``device`` is a CUDA device."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "hostname": platform.node(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    if device is not None and str(device).startswith("cuda"):
        import torch

        info["device"] = str(device)
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
    return info


def thread_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS")
    }
    if "torch" in sys.modules:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["torch"] = torch.__version__
    if "numba" in sys.modules:
        import numba

        from autoassist.kernels._threads import numba_threads

        # numba.get_num_threads() starts Numba's threading layer, whose OpenMP start-up sets
        # this thread's OpenMP count, i.e. torch's, to NUMBA_NUM_THREADS: the kernels' own
        # guard puts torch's count back (a 1-thread benchmark trained on 2 threads without it)
        with numba_threads(None) as count:
            info["numba_threads"] = count
            info["numba_threading_layer"] = _numba_layer()
        info["numba"] = numba.__version__
    import numpy

    info["numpy"] = numpy.__version__
    return info


def _numba_layer() -> str | None:
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel ran yet
        return None
