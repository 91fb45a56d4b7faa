"""The replay buffer (storage) and the sampler protocol, with uniform replay.

Storage and choice are separate (as fairseq separates building batches from choosing
instances): ``ReplayBuffer`` is a ring of transitions whose slot ids are the instances; a sampler
decides which slots each learner step trains on. Every sampler honours one small protocol:

- ``inserted(slots, buffer)``: these slots now hold new transitions;
- ``sample(batch_size, size) -> (slots, weights | None)``: the next batch (``weights``: per
  transition loss weights, e.g. importance-sampling corrections);
- ``update(slots, td_errors)``: the learner's TD errors for the batch it just trained on;
- ``state_dict()`` / ``load_state_dict()``; ``close()`` for samplers that own a process.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autoassist.engine.safe_state import as_numpy, safe

FIELDS = ("obs", "act", "rew", "next_obs", "done")


class ReplayBuffer:
    """A ring of ``capacity`` transitions ``(obs, act, rew, next_obs, done)`` as NumPy arrays."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int):
        if capacity < 1:
            raise ValueError(f"capacity={capacity}: must be >= 1")
        self.capacity, self.obs_dim, self.act_dim = int(capacity), int(obs_dim), int(act_dim)
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.act = np.zeros((capacity, act_dim), np.float32)
        self.rew = np.zeros(capacity, np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.done = np.zeros(capacity, np.float32)
        self.cursor = 0  # the next slot to write
        self.size = 0
        self.added = 0  # transitions ever added

    def add(self, obs, act, rew, next_obs, done) -> np.ndarray:
        """Append a batch of transitions (oldest overwritten when full); returns their slots."""
        obs = np.asarray(obs, np.float32).reshape(-1, self.obs_dim)
        n = len(obs)
        act = np.asarray(act, np.float32).reshape(n, self.act_dim)
        rew = np.asarray(rew, np.float32).reshape(n)
        next_obs = np.asarray(next_obs, np.float32).reshape(n, self.obs_dim)
        done = np.asarray(done, np.float32).reshape(n)
        for name, a in (("obs", obs), ("act", act), ("rew", rew), ("next_obs", next_obs)):
            if not np.isfinite(a).all():
                raise ValueError(f"transition field {name!r} holds NaN or inf: the environment "
                                 "or the policy diverged")
        if n > self.capacity:
            raise ValueError(f"{n} transitions at once exceed the capacity {self.capacity}")
        slots = (self.cursor + np.arange(n)) % self.capacity
        self.obs[slots], self.act[slots], self.rew[slots] = obs, act, rew
        self.next_obs[slots], self.done[slots] = next_obs, done
        self.cursor = int((self.cursor + n) % self.capacity)
        self.size = min(self.capacity, self.size + n)
        self.added += n
        return slots

    def batch(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        return {f: getattr(self, f)[slots] for f in FIELDS}

    def state_dict(self) -> dict[str, Any]:
        return safe({"capacity": self.capacity, "cursor": self.cursor, "size": self.size,
                     "added": self.added, **{f: getattr(self, f)[: self.size] for f in FIELDS}},
                    "replay buffer state")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = as_numpy(state)
        if state["capacity"] != self.capacity or state["obs"].shape[1:] != (self.obs_dim,):
            raise ValueError(f"saved buffer: capacity {state['capacity']}, observation shape "
                             f"{state['obs'].shape[1:]}; this one: {self.capacity}, "
                             f"({self.obs_dim},). Resume with the same settings")
        self.cursor, self.size, self.added = state["cursor"], state["size"], state["added"]
        for f in FIELDS:
            getattr(self, f)[: self.size] = state[f]


class UniformSampler:
    """Every stored transition equally likely (with replacement): the baseline."""

    name = "uniform"

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def inserted(self, slots: np.ndarray, buffer: ReplayBuffer) -> None:
        pass

    def sample(self, batch_size: int, size: int) -> tuple[np.ndarray, np.ndarray | None]:
        _check_size(size)
        return self.rng.integers(0, size, batch_size), None

    def update(self, slots: np.ndarray, td_errors: np.ndarray) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return safe({"rng": self.rng.bit_generator.state})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    def close(self) -> None:
        pass


def _check_size(size: int) -> None:
    if size < 1:
        raise ValueError("the replay buffer is empty: collect transitions before sampling")
