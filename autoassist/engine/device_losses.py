"""Loss reports from an accelerator without stalling it.

``losses.cpu()`` on a CUDA tensor waits for every kernel queued before it, so a report per batch
would stop the Boss from running ahead of the host (the data loader, the next launches). Instead
each batch's losses are copied into pinned host memory with a non-blocking copy and a CUDA event
marks when the copy is done; the engine takes them once the event has fired (usually by the next
batch) and only waits where it must: at the end of an epoch, for a checkpoint, or in ``sync``
mode. CPU tensors are passed through at once, as before.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch


class DeviceLossQueue:
    """FIFO of in-flight device-to-host loss copies; ``ready()`` yields finished ones in order."""

    def __init__(self) -> None:
        self._in_flight: deque[tuple[Any, torch.Tensor, np.ndarray, Any]] = deque()

    @staticmethod
    def needs_deferral(per_sample: torch.Tensor) -> bool:
        return per_sample.device.type == "cuda"

    def push(self, per_sample: torch.Tensor, ids: np.ndarray, batch: Any) -> None:
        """Start the copy of ``per_sample`` (a CUDA tensor) to pinned host memory."""
        host = torch.empty(per_sample.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(per_sample.detach(), non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(per_sample.device))
        self._in_flight.append((done, host, ids, batch))

    def ready(self, wait: bool = False):
        """Yield ``(losses float32[n], ids, batch)`` whose copies have finished, oldest first.

        Stops at the first unfinished copy (order matters to the Assistant's labels) unless
        ``wait``, which waits for each in turn.
        """
        while self._in_flight:
            done, host, ids, batch = self._in_flight[0]
            if not wait and not done.query():
                return
            done.synchronize()
            self._in_flight.popleft()
            yield host.numpy().copy(), ids, batch
