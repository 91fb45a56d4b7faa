"""Point-to-point messages between stage processes: one batch's activations, labels, ids, weights.

A message is a fixed-size int64 header (kind, batch size, activation shape) followed, for a batch,
by the activation tensor and a float/int payload. Sends are non-blocking (``isend``) and a sender
waits on its previous message only before reusing the slot, so stage k computes batch t+1 while
stage k+1 receives batch t. gloo moves CPU tensors; NCCL needs CUDA tensors: ``device`` decides
(NCCL is untested here: no GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

HEADER = 9  # kind, batch size, ndim, up to 5 activation dims, flags
BATCH, END_EPOCH, STOP = 0, 1, 2
TAG_HEADER, TAG_ACT, TAG_META, TAG_LOSS = 1, 2, 3, 4


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@dataclass
class Message:
    kind: int
    h: torch.Tensor | None = None        # activations [B, ...]
    y: torch.Tensor | None = None        # labels [B] (int64)
    ids: torch.Tensor | None = None      # instance ids [B] (int64)
    weights: torch.Tensor | None = None  # loss weights [B] (float32), None = plain mean
    want_losses: bool = False            # the last stage returns per-instance losses to stage 0


class Channel:
    """Sends to ``dst`` / receives from ``src``; keeps the in-flight sends alive until done."""

    def __init__(self, device: torch.device):
        self.device = device
        self._inflight: list = []

    def _wait_sends(self) -> None:
        for work, _tensor in self._inflight:  # the tensor stays alive until its send is done
            work.wait()
        self._inflight = []

    def send(self, msg: Message, dst: int) -> None:
        self._wait_sends()
        header = torch.zeros(HEADER, dtype=torch.int64)
        header[0] = msg.kind
        tensors = []
        if msg.kind == BATCH:
            shape = tuple(msg.h.shape)
            if len(shape) > HEADER - 4:
                raise ValueError(f"activations with {len(shape)} dims: at most {HEADER - 4}")
            header[HEADER - 1] = int(msg.want_losses)
            header[1], header[2] = shape[0], len(shape)
            header[3:3 + len(shape)] = torch.tensor(shape)
            # y, ids and (weights or NaN) travel together as one float64 tensor [3, B]
            w = msg.weights if msg.weights is not None else torch.full((shape[0],), float("nan"))
            meta = torch.stack([msg.y.double().cpu(), msg.ids.double().cpu(),
                                w.double().cpu()])
            tensors = [(msg.h.contiguous(), TAG_ACT), (meta, TAG_META)]
        for t, tag in [(header, TAG_HEADER), *tensors]:
            t = t.to(self.device)
            self._inflight.append((dist.isend(t, dst, tag=tag), t))

    def recv(self, src: int, dtype: torch.dtype = torch.float32) -> Message:
        header = torch.empty(HEADER, dtype=torch.int64, device=self.device)
        dist.recv(header, src, tag=TAG_HEADER)
        header = header.cpu()
        kind = int(header[0])
        if kind != BATCH:
            return Message(kind)
        ndim = int(header[2])
        shape = tuple(int(s) for s in header[3:3 + ndim])
        h = torch.empty(shape, dtype=dtype, device=self.device)
        dist.recv(h, src, tag=TAG_ACT)
        meta = torch.empty((3, shape[0]), dtype=torch.float64, device=self.device)
        dist.recv(meta, src, tag=TAG_META)
        meta = meta.cpu()
        w = meta[2].float()
        return Message(BATCH, h, meta[0].long(), meta[1].long(),
                       None if torch.isnan(w).any() else w, bool(header[HEADER - 1]))

    def close(self) -> None:
        self._wait_sends()
