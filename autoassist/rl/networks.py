"""Networks for off-policy RL (paper E): plain MLPs, DenseNet-connected MLPs and OFENet.

- ``DenseNetMLP``: layer ``l`` reads the concatenation of the input and every earlier layer's
  output (DenseNet connectivity), so the output has ``in + layers * units`` features. Paper E
  finds that this is what lets *wider/deeper* actor and critic networks train stably.
- ``OFENet`` (Ota et al. 2020): a state encoder ``phi_o(s)`` and a state-action encoder
  ``phi_oa(phi_o(s), a)``, both DenseNet MLPs, trained on an auxiliary task of their own
  (predict the next observation from ``phi_oa``). The RL losses never reach them: actor and
  critic read the features detached (decoupled representation learning).
- ``GaussianActor``/``TwinCritic``: SAC's tanh-squashed Gaussian policy and clipped double Q,
  on top of any torso (plain MLP or DenseNet MLP).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

TORSOS = ("mlp", "densenet")


class MLP(nn.Module):
    """``layers`` fully connected ReLU layers; ``out_features`` is the last width."""

    def __init__(self, in_features: int, layers: int = 2, units: int = 256):
        super().__init__()
        _check_dims(in_features, layers, units)
        dims = [in_features] + [units] * layers
        self.net = nn.Sequential(*[m for a, b in zip(dims[:-1], dims[1:], strict=True)
                                   for m in (nn.Linear(a, b), nn.ReLU())])
        self.out_features = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DenseNetMLP(nn.Module):
    """Each layer sees ``[x, h_1, ..., h_{l-1}]``; the output is ``[x, h_1, ..., h_L]``."""

    def __init__(self, in_features: int, layers: int = 2, units: int = 256,
                 activation: type[nn.Module] = nn.SiLU):
        super().__init__()
        _check_dims(in_features, layers, units)
        self.layers = nn.ModuleList(nn.Linear(in_features + l * units, units)
                                    for l in range(layers))  # noqa: E741
        self.act = activation()
        self.out_features = in_features + layers * units

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for layer in self.layers:
            h = torch.cat([h, self.act(layer(h))], dim=-1)
        return h


def make_torso(kind: str, in_features: int, layers: int, units: int) -> nn.Module:
    if kind == "mlp":
        return MLP(in_features, layers, units)
    if kind == "densenet":
        return DenseNetMLP(in_features, layers, units)
    raise ValueError(f"torso={kind!r}: one of {TORSOS}")


def _check_dims(in_features: int, layers: int, units: int) -> None:
    if in_features < 1 or layers < 1 or units < 1:
        raise ValueError(f"in_features={in_features}, layers={layers}, units={units}: all must "
                         "be >= 1")


class OFENet(nn.Module):
    """Online feature extractor: ``o = phi_o(s)``, ``oa = phi_oa([o, a])``; the auxiliary head
    predicts ``s' - s`` from ``oa`` (the change is easier to fit than the next state itself)."""

    def __init__(self, obs_dim: int, act_dim: int, layers: int = 2, units: int = 32):
        super().__init__()
        self.phi_o = DenseNetMLP(obs_dim, layers, units)
        self.phi_oa = DenseNetMLP(self.phi_o.out_features + act_dim, layers, units)
        self.head = nn.Linear(self.phi_oa.out_features, obs_dim)
        self.obs_features = self.phi_o.out_features
        self.obs_act_features = self.phi_oa.out_features

    def features_o(self, obs: torch.Tensor) -> torch.Tensor:
        return self.phi_o(obs)

    def features_oa(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.phi_oa(torch.cat([self.phi_o(obs), act], dim=-1))

    def aux_loss(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor
                 ) -> torch.Tensor:
        """Mean squared error of the predicted observation change: OFENet's own objective."""
        return F.mse_loss(self.head(self.features_oa(obs, act)), next_obs - obs)


LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class GaussianActor(nn.Module):
    """SAC's policy: a Gaussian in pre-tanh space, squashed into the action box."""

    def __init__(self, in_features: int, act_dim: int, torso: str, layers: int, units: int,
                 act_low, act_high):
        super().__init__()
        self.torso = make_torso(torso, in_features, layers, units)
        self.mean = nn.Linear(self.torso.out_features, act_dim)
        self.log_std = nn.Linear(self.torso.out_features, act_dim)
        low = torch.as_tensor(act_low, dtype=torch.float32)
        high = torch.as_tensor(act_high, dtype=torch.float32)
        self.register_buffer("scale", (high - low) / 2)
        self.register_buffer("centre", (high + low) / 2)

    def forward(self, x: torch.Tensor, deterministic: bool = False,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """An action in the box and its log-probability (change of variables through tanh)."""
        h = self.torso(x)
        mu = self.mean(h)
        log_std = self.log_std(h).clamp(LOG_STD_MIN, LOG_STD_MAX)
        std = log_std.exp()
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        u = mu if deterministic else mu + std * noise
        a = torch.tanh(u)
        log_prob = (-0.5 * ((u - mu) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
        log_prob = log_prob - torch.log(self.scale).sum()
        return a * self.scale + self.centre, log_prob


class TwinCritic(nn.Module):
    """Two independent Q networks (clipped double Q)."""

    def __init__(self, in_features: int, torso: str, layers: int, units: int):
        super().__init__()
        self.q1 = nn.Sequential(make_torso(torso, in_features, layers, units))
        self.q2 = nn.Sequential(make_torso(torso, in_features, layers, units))
        self.q1.append(nn.Linear(self.q1[0].out_features, 1))
        self.q2.append(nn.Linear(self.q2[0].out_features, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)
