"""Gymnasium environments for the RL Boss, with the checks a network needs.

The agents here take a flat continuous observation (a 1-D ``Box``) and a bounded continuous
action (a 1-D ``Box`` with finite limits): the MuJoCo locomotion tasks (InvertedPendulum,
Hopper, HalfCheetah, ...). Anything else gets an error that says what the environment has and
what the agent needs, instead of a shape error deep inside a network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EnvSpec:
    env_id: str
    obs_dim: int
    act_dim: int
    act_low: np.ndarray
    act_high: np.ndarray
    max_episode_steps: int | None


def _gym():
    try:
        import gymnasium
    except ImportError as exc:  # the rl extra is optional
        raise ImportError("deep RL needs gymnasium and mujoco: pip install 'autoassist[rl]'"
                          ) from exc
    return gymnasium


def make_env(env_id: str, seed: int | None = None):
    """``gymnasium.make(env_id)`` with a clear error for unknown ids and unusable spaces."""
    gym = _gym()
    try:
        env = gym.make(env_id)
    except gym.error.Error as exc:
        mujoco = sorted(k for k, v in gym.registry.items()
                        if "mujoco" in str(v.entry_point) and k.endswith("-v5"))
        raise ValueError(f"unknown or unavailable environment {env_id!r} ({exc}). MuJoCo "
                         f"tasks registered here: {', '.join(mujoco) or 'none'}") from exc
    except ImportError as exc:  # e.g. mujoco missing for a MuJoCo id
        raise ImportError(f"environment {env_id!r} needs a package that is not installed "
                          f"({exc}); pip install 'autoassist[rl]'") from exc
    check_spaces(env, env_id)
    if seed is not None:
        env.action_space.seed(seed)
    return env


def check_spaces(env, env_id: str) -> EnvSpec:
    """The spaces this project's agents can take, or a ValueError naming the mismatch."""
    gym = _gym()
    obs, act = env.observation_space, env.action_space
    if not isinstance(obs, gym.spaces.Box) or len(obs.shape) != 1:
        raise ValueError(f"{env_id}: observation space {obs} is not a flat vector; the MLP "
                         "agents need a 1-D Box (wrap image or dict observations with "
                         "gymnasium.wrappers.FlattenObservation or a feature encoder first)")
    if not isinstance(act, gym.spaces.Box) or len(act.shape) != 1:
        raise ValueError(f"{env_id}: action space {act} is not a 1-D Box; SAC needs continuous "
                         "actions (use a discrete-action agent for this task)")
    if not (np.isfinite(act.low).all() and np.isfinite(act.high).all()):
        raise ValueError(f"{env_id}: action bounds {act.low}..{act.high} are not finite; the "
                         "squashed Gaussian policy needs a bounded box (wrap it with "
                         "gymnasium.wrappers.ClipAction and finite bounds)")
    steps = env.spec.max_episode_steps if env.spec is not None else None
    return EnvSpec(env_id, int(obs.shape[0]), int(act.shape[0]), act.low.astype(np.float32),
                   act.high.astype(np.float32), steps)


def env_spec(env_id: str) -> EnvSpec:
    env = make_env(env_id)
    try:
        return check_spaces(env, env_id)
    finally:
        env.close()


def evaluate(agent, env_id: str, episodes: int, seed: int) -> float:
    """Mean undiscounted return of the deterministic policy over ``episodes`` fresh episodes."""
    env = make_env(env_id)
    try:
        total = 0.0
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed + ep)
            done = False
            while not done:
                obs, r, terminated, truncated, _ = env.step(agent.act(obs, deterministic=True))
                total += float(r)
                done = terminated or truncated
        return total / episodes
    finally:
        env.close()
