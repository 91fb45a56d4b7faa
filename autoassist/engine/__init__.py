"""The shrinking engine: per-epoch selection plans, loss reports, telemetry and state.

``ShrinkEngine`` (``engine.py``) composes the parts: ``plan.py`` (the keep policy, pure
functions, and ``EpochPlan``), ``reports.py`` (the report buffer; ``device_losses.py`` for CUDA
losses), ``distributed.py`` (data-parallel replicas) and ``telemetry.py`` (per-epoch records);
``state_check.py`` checks a saved state whole before anything is restored from it.
"""

from autoassist.engine.distributed import single_replica
from autoassist.engine.engine import ShrinkEngine
from autoassist.engine.plan import EpochPlan, Reason

__all__ = ["EpochPlan", "Reason", "ShrinkEngine", "single_replica"]
