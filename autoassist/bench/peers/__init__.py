"""Peer methods reimplemented from their papers' descriptions, as benchmark baselines.

Each is a pure rule on NumPy loss vectors (testable on hand-made losses) plus a small stateful
class with ``state_dict`` / ``load_state_dict``. Neither touches global RNG or patches torch.
"""

from .infobatch import InfoBatch, infobatch_plan
from .selective_backprop import SelectiveBackprop, selective_backprop_probabilities

__all__ = ["InfoBatch", "SelectiveBackprop", "infobatch_plan", "selective_backprop_probabilities"]
