"""Soft Actor-Critic (Haarnoja et al. 2018) with optional OFENet features (paper E).

One ``update(batch, weights)`` is one learner step: the critic's clipped double-Q target with
the entropy bonus, the actor's reparameterised step, the temperature's step towards the target
entropy ``-act_dim``, Polyak-averaged target critics, and (with OFENet) the feature networks'
own auxiliary step. It returns the per-transition TD errors, which a replay sampler uses as the
transitions' losses (priorities for PER, reports for the Assistant). ``weights`` are the
sampler's per-transition loss weights (importance sampling), applied to the critic's loss.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from autoassist.rl.networks import TORSOS, GaussianActor, OFENet, TwinCritic


@dataclass
class SACConfig:
    torso: str = "mlp"  # "mlp" or "densenet"
    layers: int = 2
    units: int = 256
    ofe: bool = False  # OFENet features for actor and critic
    ofe_layers: int = 2
    ofe_units: int = 32
    lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    batch_size: int = 256
    init_alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.torso not in TORSOS:
            raise ValueError(f"torso={self.torso!r}: one of {TORSOS}")
        if not 0 < self.gamma < 1 or not 0 < self.tau <= 1 or self.lr <= 0:
            raise ValueError("need 0 < gamma < 1, 0 < tau <= 1 and lr > 0")
        if self.batch_size < 1 or self.layers < 1 or self.units < 1:
            raise ValueError("batch_size, layers and units must be >= 1")

    @property
    def variant(self) -> str:
        return self.torso + ("+ofenet" if self.ofe else "")


def obs_in_a(ofe: OFENet | None, obs_in: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The critic's input from the actor's input and an action (OFENet: ``phi_oa([o, a])``)."""
    x = torch.cat([obs_in, a], dim=-1)
    return x if ofe is None else ofe.phi_oa(x)


@contextmanager
def _frozen(*modules):
    """No parameter gradients for ``modules`` inside (they still pass gradients through)."""
    params = [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class SAC:
    """Actor, twin critic (+ targets), temperature and, with ``ofe``, OFENet."""

    def __init__(self, obs_dim: int, act_dim: int, act_low, act_high, cfg: SACConfig,
                 seed: int = 0, device: str | torch.device = "cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's RNG untouched
            torch.manual_seed(seed)
            self.ofe = OFENet(obs_dim, act_dim, cfg.ofe_layers, cfg.ofe_units) if cfg.ofe \
                else None
            actor_in = self.ofe.obs_features if self.ofe else obs_dim
            critic_in = self.ofe.obs_act_features if self.ofe else obs_dim + act_dim
            self.actor = GaussianActor(actor_in, act_dim, cfg.torso, cfg.layers, cfg.units,
                                       act_low, act_high)
            self.critic = TwinCritic(critic_in, cfg.torso, cfg.layers, cfg.units)
        self.target = copy.deepcopy(self.critic)
        for p in self.target.parameters():
            p.requires_grad_(False)
        self.target_ofe = copy.deepcopy(self.ofe) if self.ofe else None
        self.log_alpha = torch.tensor(float(np.log(cfg.init_alpha)), requires_grad=True)
        self.to(self.device)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.lr)
        self.ofe_opt = torch.optim.Adam(self.ofe.parameters(), lr=cfg.lr) if self.ofe else None
        self.target_entropy = -float(act_dim)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.updates = 0

    def to(self, device: torch.device) -> SAC:
        for m in (self.actor, self.critic, self.target, self.ofe, self.target_ofe):
            if m is not None:
                m.to(device)
        self.log_alpha = self.log_alpha.detach().to(device).requires_grad_(True)
        return self

    # -- features --------------------------------------------------------------------------------
    def _obs_in(self, obs: torch.Tensor) -> torch.Tensor:
        if self.ofe is None:
            return obs
        with torch.no_grad():  # decoupled: RL losses never train the features
            return self.ofe.features_o(obs)

    def _critic_in(self, obs: torch.Tensor, act: torch.Tensor, ofe=None) -> torch.Tensor:
        ofe = ofe if ofe is not None else self.ofe
        if ofe is None:
            return torch.cat([obs, act], dim=-1)
        with torch.no_grad():
            return ofe.features_oa(obs, act)

    # -- acting ----------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        o = torch.as_tensor(np.asarray(obs, np.float32), device=self.device)
        a, _ = self.actor(self._obs_in(o.reshape(-1, self.obs_dim)), deterministic,
                          generator=self.gen)
        return a.cpu().numpy().reshape(np.shape(obs)[:-1] + (self.act_dim,))

    def policy_state(self) -> dict[str, torch.Tensor]:
        """What an actor process needs to act: the actor's and OFENet's weights (CPU)."""
        state = {f"actor.{k}": v.detach().cpu() for k, v in self.actor.state_dict().items()}
        if self.ofe is not None:
            state.update({f"ofe.{k}": v.detach().cpu() for k, v in self.ofe.state_dict().items()})
        return state

    def load_policy_state(self, state: dict[str, torch.Tensor]) -> None:
        self.actor.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("actor.")})
        if self.ofe is not None:
            self.ofe.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("ofe.")})

    # -- learning --------------------------------------------------------------------------------
    def update(self, batch: dict[str, np.ndarray], weights: np.ndarray | None = None
               ) -> dict[str, Any]:
        t = {k: torch.as_tensor(v, device=self.device) for k, v in batch.items()}
        obs, act, rew, nxt, done = t["obs"], t["act"], t["rew"], t["next_obs"], t["done"]
        out: dict[str, Any] = {}
        if self.ofe is not None:  # the representation's own task, first
            aux = self.ofe.aux_loss(obs, act, nxt)
            self.ofe_opt.zero_grad(set_to_none=True)
            aux.backward()
            self.ofe_opt.step()
            out["ofe_loss"] = float(aux.detach())
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            a2, logp2 = self.actor(self._obs_in(nxt), generator=self.gen)
            q1t, q2t = self.target(self._critic_in(nxt, a2, self.target_ofe))
            y = rew + self.cfg.gamma * (1 - done) * (torch.min(q1t, q2t) - alpha * logp2)
        q1, q2 = self.critic(self._critic_in(obs, act))
        td = (q1 - y).detach()
        per = 0.5 * ((q1 - y) ** 2 + (q2 - y) ** 2)
        if weights is not None:
            per = per * torch.as_tensor(weights, device=self.device)
        critic_loss = per.mean()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()

        obs_in = self._obs_in(obs)
        a, logp = self.actor(obs_in, generator=self.gen)
        with _frozen(self.critic, self.ofe):  # gradients flow into the action only
            q1a, q2a = self.critic(obs_in_a(self.ofe, obs_in, a))
        actor_loss = (alpha * logp - torch.min(q1a, q2a)).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()

        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()

        with torch.no_grad():
            for p, pt in zip(self.critic.parameters(), self.target.parameters(), strict=True):
                pt.lerp_(p, self.cfg.tau)
            if self.ofe is not None:
                for p, pt in zip(self.ofe.parameters(), self.target_ofe.parameters(),
                                 strict=True):
                    pt.lerp_(p, self.cfg.tau)
        self.updates += 1
        out.update(critic_loss=float(critic_loss.detach()), actor_loss=float(actor_loss.detach()),
                   alpha=float(alpha), td=td.abs().cpu().numpy(), q=float(q1.detach().mean()))
        return out

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        mods = {"actor": self.actor, "critic": self.critic, "target": self.target}
        if self.ofe is not None:
            mods.update(ofe=self.ofe, target_ofe=self.target_ofe)
        opts = {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt,
                "alpha_opt": self.alpha_opt}
        if self.ofe_opt is not None:
            opts["ofe_opt"] = self.ofe_opt
        return {"config": asdict(self.cfg), "log_alpha": self.log_alpha.detach().clone(),
                "updates": self.updates, "generator": self.gen.get_state(),
                **{k: m.state_dict() for k, m in mods.items()},
                **{k: o.state_dict() for k, o in opts.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != asdict(self.cfg):
            raise ValueError(f"checkpoint is a {state['config']} agent, this one "
                             f"{asdict(self.cfg)}: resume with the same settings")
        for k in ("actor", "critic", "target", "ofe", "target_ofe"):
            m = getattr(self, k)
            if m is not None:
                m.load_state_dict(state[k])
        for k in ("actor_opt", "critic_opt", "alpha_opt", "ofe_opt"):
            o = getattr(self, k)
            if o is not None:
                o.load_state_dict(state[k])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.updates = state["updates"]
        self.gen.set_state(state["generator"])
