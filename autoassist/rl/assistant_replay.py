"""Assistant-prioritised replay: the shrinking sampler over a replay buffer's slots.

A replay buffer is a data set whose instances (transitions) differ in value, so the product's
engine applies as it is: the slots are the instances, the critic's |TD error| is the loss the
Boss reports, and the Assistant (its own process, never waited for) learns which transitions
are still informative (TD error above the running mean) from their features and their last TD
error. Replay runs in *rounds* of ``round_steps`` learner steps (the engine's epochs):

- at the start of a round, ``ShrinkEngine.plan`` draws the kept set from the newest published
  scores with the Numba kernel: slot i is kept with probability ``P_i = b + (1 - b) p_i``;
- during the round, batches are drawn uniformly (with replacement) from the kept slots plus
  every slot written since the round began (new transitions are kept with ``P = 1`` until
  the Assistant has scored them);
- with ``reweight``, a transition's loss weight is ``(mean(P) / P_i)^beta``. ``beta = 1`` is the
  engine's unbiased correction, and it makes the *expected* update exactly uniform replay's
  (only its variance changes). So, as in prioritised replay, ``beta`` starts lower
  (default 0.4) and is annealed linearly to 1 over ``beta_steps`` draws: early learning leans on
  the informative transitions, and the end is unbiased;
- at the end of a round, the engine asks the Assistant for fresh scores.

Transition features for the Assistant: ``[obs, act, rew, done, next_obs - obs]``, squashed by
``sign(x) log(1 + |x|)`` (no running statistics to go stale). When a slot is overwritten the
engine stores the new row and the Assistant forgets the slot's old TD error (``renew``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from autoassist.config import ShrinkConfig
from autoassist.engine.safe_state import as_numpy, safe
from autoassist.rl.replay import ReplayBuffer, _check_size


def transition_features(batch: dict[str, np.ndarray]) -> np.ndarray:
    x = np.concatenate([batch["obs"], batch["act"], batch["rew"][:, None],
                        batch["done"][:, None], batch["next_obs"] - batch["obs"]], axis=1)
    return (np.sign(x) * np.log1p(np.abs(x))).astype(np.float32)


def feature_dim(obs_dim: int, act_dim: int) -> int:
    return 2 * obs_dim + act_dim + 2


class AssistantSampler:
    name = "assistant"

    def __init__(self, capacity: int, obs_dim: int, act_dim: int,
                 config: ShrinkConfig | None = None, round_steps: int = 1000, beta: float = 0.4,
                 beta_steps: int = 100_000, seed: int = 0):
        from autoassist.engine import ShrinkEngine

        if round_steps < 1:
            raise ValueError(f"round_steps={round_steps}: must be >= 1")
        if not 0.0 <= beta <= 1.0 or beta_steps < 1:
            raise ValueError(f"beta={beta}, beta_steps={beta_steps}: need 0 <= beta <= 1 and "
                             "beta_steps >= 1")
        # a learner, not the memory: a fresh transition is scored from its features before
        # it has any loss of its own (the setting the RL results measure)
        self.config = config or ShrinkConfig(floor=0.3, warmup_epochs=1, reweight=True,
                                             assistant="logistic", seed=seed)
        if self.config.anneal_epochs:
            raise ValueError("anneal_epochs has no meaning for replay (rounds never end); "
                             "set it to 0")
        self.capacity, self.round_steps = capacity, round_steps
        self.beta0, self.beta_steps, self.draws = beta, beta_steps, 0
        self.engine = ShrinkEngine(capacity, self.config,
                                   external_features=feature_dim(obs_dim, act_dim))
        self.rng = np.random.default_rng(seed)
        self.round, self.steps = -1, 0
        self.candidates = np.zeros(capacity, np.int64)  # kept slots + slots written this round
        self.count = 0
        self.member = np.zeros(capacity, bool)
        self.fresh = np.zeros(capacity, bool)  # written since the round's plan
        self.size = 0
        self._mean_keep = 1.0  # mean keep probability over the stored slots, this round

    @property
    def beta(self) -> float:
        return min(1.0, self.beta0 + (1.0 - self.beta0) * self.draws / self.beta_steps)

    # -- protocol --------------------------------------------------------------------------------
    def inserted(self, slots: np.ndarray, buffer: ReplayBuffer) -> None:
        self.engine.renew(slots, transition_features(buffer.batch(slots)))
        self.size = buffer.size
        self.fresh[slots] = True
        new = slots[~self.member[slots]]
        new = np.unique(new)
        self.candidates[self.count:self.count + len(new)] = new
        self.count += len(new)
        self.member[new] = True

    def sample(self, batch_size: int, size: int) -> tuple[np.ndarray, np.ndarray | None]:
        _check_size(size)
        self.size = size
        if self.round < 0 or self.steps >= self.round_steps:
            self._next_round()
        self.steps += 1
        beta = self.beta
        self.draws += batch_size
        slots = self.candidates[self.rng.integers(0, self.count, batch_size)]
        plan = self.engine.current
        if not self.config.reweight or plan.mask is None:
            return slots, None
        from autoassist.kernels import keep_probabilities

        p = keep_probabilities(plan.scores[slots], plan.floor)
        p = np.where(self.fresh[slots], 1.0, p)
        w = (self._mean_keep / np.maximum(p, 1e-12)) ** beta
        return slots, w.astype(np.float32)

    def update(self, slots: np.ndarray, td_errors: np.ndarray) -> None:
        self.engine.observe(torch.as_tensor(np.abs(td_errors), dtype=torch.float32),
                            np.asarray(slots, np.int64))

    # -- rounds ----------------------------------------------------------------------------------
    def _next_round(self) -> None:
        if self.round >= 0:
            record = self.engine.end_epoch(self.round, self.steps)
            record["candidates"] = self.count  # the record is in engine.telemetry
        self.round += 1
        self.steps = 0
        plan = self.engine.plan(self.round)
        filled = np.arange(self.size)
        if plan.mask is None:
            kept = filled
            self._mean_keep = 1.0
        else:
            from autoassist.kernels import keep_probabilities

            kept = filled[plan.mask[: self.size]]
            self._mean_keep = float(keep_probabilities(plan.scores[: self.size], plan.floor)
                                    .mean(dtype=np.float64))
        self.member[:] = False
        self.member[kept] = True
        self.candidates[: len(kept)] = kept
        self.count = len(kept)
        self.fresh[:] = False
        if self.count == 0:  # nothing kept (tiny buffer): fall back to every stored slot
            self.candidates[: self.size] = filled
            self.count = self.size
            self.member[filled] = True

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per finished round (the engine's telemetry, with the candidate count)."""
        return self.engine.telemetry

    @property
    def kept_fraction(self) -> float:
        return self.count / max(1, self.size)

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return safe({"engine": self.engine.state_dict(), "rng": self.rng.bit_generator.state,
                     "round": self.round, "steps": self.steps, "size": self.size,
                     "draws": self.draws, "candidates": self.candidates[: self.count],
                     "fresh": self.fresh, "mean_keep": self._mean_keep},
                    "Assistant replay state")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = as_numpy(state)
        if len(state["fresh"]) != self.capacity:
            raise ValueError("saved Assistant replay is for another buffer capacity")
        self.engine.load_state_dict(state["engine"])
        self.rng.bit_generator.state = state["rng"]
        self.round, self.steps, self.size = state["round"], state["steps"], state["size"]
        self.draws = state["draws"]
        self.count = len(state["candidates"])
        self.candidates[: self.count] = state["candidates"]
        self.member[:] = False
        self.member[state["candidates"]] = True
        self.fresh[:] = state["fresh"]
        self._mean_keep = state["mean_keep"]

    def close(self) -> None:
        self.engine.close()
