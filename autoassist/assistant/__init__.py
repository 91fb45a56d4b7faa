"""The Assistant: a light model in its own process that learns which instances are still
informative from the losses the Boss reports.

``protocol.py`` is the contract between the two processes (messages, settings, shared memory);
``process.py`` is the Boss's handle; ``worker.py`` is the process's loop; ``models.py`` the
learners; ``loss_memory.py`` the per-instance loss history the learners see.
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
