"""The Assistant: a light model in its own process that learns which instances are still
informative from the losses the Boss reports.

``protocol.py`` is the contract between the two processes (messages, settings, shared memory);
``process.py`` is the Boss's handle; ``worker.py`` is the process's loop; ``models.py`` the
learners; ``loss_memory.py`` the per-instance loss history the learners see. What the Assistant
learns from, computed in the Boss: ``features.py`` (instance features from batches),
``text_features.py`` (a sentence-pair table for translation) and ``trace.py`` (reports written to
disk for ``autoassist tune --offline``). Those three import torch or scikit-learn and are loaded
only by their users, never by the Assistant process.
"""

from .process import AssistantProcess
from .protocol import (
    AssistantSettings,
    Losses,
    ScoreRequest,
    SharedState,
    StateReply,
    StateRequest,
    Stop,
)

__all__ = ["AssistantProcess", "AssistantSettings", "Losses", "ScoreRequest", "SharedState",
           "StateReply", "StateRequest", "Stop"]
