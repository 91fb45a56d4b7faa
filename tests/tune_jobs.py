"""Tiny real training jobs for the ``autoassist tune`` tests (imported by the probe processes)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "tune"))

from fashion_mnist_job import job as fashion_job  # noqa: E402


def tiny(config, epochs, seed):
    """1,024 images, a narrow CNN, a reproducible Assistant (sync): seconds per probe."""
    log = os.environ.get("AUTOASSIST_TEST_PROBE_LOG")
    if log:  # the resume test counts which probes really ran, by the tune's own probe key
        from autoassist.tuning import probe_key

        with open(log, "a") as f:
            f.write(probe_key(None if config is None else config.to_dict(), epochs, seed) + "\n")
    if config is not None:
        config = config.replace(sync=True)
    return fashion_job(config, epochs, seed, images=1024, width=4, max_lr=0.05)


def broken(config, epochs, seed):
    raise RuntimeError("this job cannot find its data")
