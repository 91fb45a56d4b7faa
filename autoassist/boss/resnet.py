"""A ResNet (and a WideResNet) for 28x28 images, cut into blocks for auxiliary-variable training.

Paper C reads a ResNet as a discretised optimal-control problem: ``x_{t+1} = x_t + h f(x_t;
theta_t)``, one residual unit per time step. Blocks of consecutive units are what the
auxiliary variables decouple. There is no BatchNorm: batch statistics would couple the
instances that auxiliary-variable solvers treat one by one (the units use a step ``h = 1/units``
instead, which keeps the forward map well conditioned). All units share one state shape
(``width x 14 x 14``), so every block boundary carries the same kind of state.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualUnit(nn.Module):
    """``x + h * conv(relu(conv(x)))``: one forward-Euler step of the network's ODE."""

    def __init__(self, width: int, h: float):
        super().__init__()
        self.h = h
        self.f = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                               nn.Conv2d(width, width, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.h * self.f(x)


def resnet_blocks(blocks: int = 3, units_per_block: int = 2, width: int = 16,
                  num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """``blocks`` modules: [stem + units], [units], ..., [units + classifier head].

    ``width=16`` is the ResNet, a larger ``width`` (e.g. 48) the WideResNet variant.
    """
    if blocks < 1 or units_per_block < 1:
        raise ValueError("need at least one block of at least one residual unit")
    h = 1.0 / (blocks * units_per_block)
    out = []
    for k in range(blocks):
        layers: list[nn.Module] = []
        if k == 0:  # 28x28 -> width x 14 x 14
            layers += [nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.ReLU()]
        layers += [ResidualUnit(width, h) for _ in range(units_per_block)]
        if k == blocks - 1:
            layers += [nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                       nn.Linear(width * 7 * 7, num_classes)]
        out.append(nn.Sequential(*layers))
    return nn.Sequential(*out)


def wide_resnet_blocks(blocks: int = 3, units_per_block: int = 2, widen: int = 3,
                       num_classes: int = 10) -> nn.Sequential:
    """The WideResNet variant: the same blocks, ``widen`` times the channels."""
    return resnet_blocks(blocks, units_per_block, 16 * widen, num_classes)
