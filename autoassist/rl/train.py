"""The learner's loop: collect, store, choose, update, evaluate.

``train(RLConfig)`` runs SAC on a gymnasium task with one replay sampler (uniform, prioritized
or Assistant) and collects either in the learner's own process (``actors=0``: one environment
step, then ``updates_per_step`` updates, the usual SAC loop) or from ``actors`` processes
(``actors.py``), where the learner keeps the same replay ratio by doing ``updates_per_step``
updates per transition received. Evaluation (the deterministic policy on fresh episodes) is
timed apart and excluded from the training clock.

With ``checkpoint=PATH`` the whole run (agent, buffer, sampler with its Assistant, clocks,
history) is saved every ``checkpoint_every`` environment steps and at the end; ``resume=True``
continues from it when it exists (a larger ``steps`` extends the run). Environments cannot be
saved mid-episode, so a resumed run starts fresh episodes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoassist.rl.envs import check_spaces, evaluate, make_env
from autoassist.rl.replay import FIELDS, ReplayBuffer, UniformSampler
from autoassist.rl.sac import SAC, SACConfig

REPLAYS = ("uniform", "prioritized", "assistant")


@dataclass
class RLConfig:
    env_id: str = "InvertedPendulum-v5"
    steps: int = 20_000  # environment steps, all actors together
    start_steps: int = 1_000  # uniform random actions first (exploration)
    update_after: int = 1_000  # transitions stored before the first update
    updates_per_step: float = 1.0  # the replay ratio
    replay: str = "uniform"
    capacity: int = 100_000
    actors: int = 0  # 0: the learner steps one environment itself
    publish_every: int = 50  # learner updates between policy pushes to the actors
    eval_every: int = 2_000  # environment steps between evaluations
    eval_episodes: int = 5
    seed: int = 0
    threads: int | None = None  # torch threads of the learner (None: leave as is)
    # Assistant replay: floor b, rounds, warm-up rounds, learner kind, IS exponent
    floor: float = 0.3
    round_steps: int = 1_000
    warmup_rounds: int = 1
    assistant: str = "logistic"
    assistant_beta: float = 0.4  # annealed to 1, as prioritized replay's beta
    # prioritized replay
    per_alpha: float = 0.6
    per_beta: float = 0.4
    sac: SACConfig = field(default_factory=SACConfig)

    def __post_init__(self) -> None:
        if self.replay not in REPLAYS:
            raise ValueError(f"replay={self.replay!r}: one of {REPLAYS}")
        if self.steps < 1 or self.capacity < 1 or self.actors < 0:
            raise ValueError("steps and capacity must be >= 1, actors >= 0")
        if self.updates_per_step <= 0 or self.eval_every < 1 or self.eval_episodes < 1:
            raise ValueError("updates_per_step must be > 0, eval_every and eval_episodes >= 1")
        if self.update_after < self.sac.batch_size // 4:
            raise ValueError(f"update_after={self.update_after} is too small for batches of "
                             f"{self.sac.batch_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_sampler(cfg: RLConfig, obs_dim: int, act_dim: int):
    if cfg.replay == "uniform":
        return UniformSampler(cfg.seed)
    if cfg.replay == "prioritized":
        from autoassist.rl.prioritized import PrioritizedSampler

        return PrioritizedSampler(cfg.capacity, cfg.per_alpha, cfg.per_beta,
                                  beta_steps=_draws(cfg), seed=cfg.seed)
    from autoassist.config import ShrinkConfig
    from autoassist.rl.assistant_replay import AssistantSampler

    shrink = ShrinkConfig(floor=cfg.floor, warmup_epochs=cfg.warmup_rounds, reweight=True,
                          assistant=cfg.assistant, seed=cfg.seed)
    return AssistantSampler(cfg.capacity, obs_dim, act_dim, shrink, cfg.round_steps,
                            cfg.assistant_beta, beta_steps=_draws(cfg), seed=cfg.seed)


def _draws(cfg: RLConfig) -> int:
    """Transitions drawn over the whole run: the horizon of both samplers' beta annealing."""
    return max(1, int((cfg.steps - cfg.update_after) * cfg.updates_per_step)
               * cfg.sac.batch_size)


@dataclass
class RLResult:
    config: dict[str, Any]
    history: list[dict[str, Any]]  # one row per evaluation
    episodes: list[dict[str, Any]]  # training episodes: return, env steps when it ended
    agent: SAC
    received: list[int] | None = None  # per actor process: transitions the learner got
    sampler: dict[str, Any] | None = None

    @property
    def final_return(self) -> float:
        return self.history[-1]["return"]


def _check_resumable(saved: dict[str, Any], cfg: RLConfig) -> None:
    now = cfg.to_dict()
    diff = sorted(k for k in now if k != "steps" and saved.get(k) != now[k])
    if diff:
        raise ValueError("the checkpoint was written by a run with other settings ("
                         + ", ".join(f"{k}: {saved.get(k)!r} there, {now[k]!r} here"
                                     for k in diff)
                         + "); resume with the same settings (only steps may grow)")


def train(cfg: RLConfig, progress: bool = True, checkpoint: str | Path | None = None,
          checkpoint_every: int | None = None, resume: bool = False) -> RLResult:
    from tqdm.auto import tqdm

    from autoassist.boss.checkpoint import save_atomic
    from autoassist.engine.safe_state import safe

    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=PATH")

    before = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    env = make_env(cfg.env_id, seed=cfg.seed)
    spec = check_spaces(env, cfg.env_id)
    agent = SAC(spec.obs_dim, spec.act_dim, spec.act_low, spec.act_high, cfg.sac, seed=cfg.seed)
    buffer = ReplayBuffer(cfg.capacity, spec.obs_dim, spec.act_dim)
    sampler = make_sampler(cfg, spec.obs_dim, spec.act_dim)
    history: list[dict[str, Any]] = []
    episodes: list[dict[str, Any]] = []
    pool = None
    clock, eval_seconds = 0.0, 0.0
    debt = 0.0  # updates owed for the transitions received
    next_eval = cfg.eval_every
    bar = tqdm(total=cfg.steps, desc=f"SAC {cfg.sac.variant} / {cfg.replay}", unit="step",
               disable=not progress, leave=False)
    stats: dict[str, Any] = {}

    def learn(k: int) -> None:
        nonlocal stats
        for _ in range(k):
            slots, w = sampler.sample(cfg.sac.batch_size, buffer.size)
            stats = agent.update(buffer.batch(slots), w)
            sampler.update(slots, stats["td"])
            if pool is not None and agent.updates % cfg.publish_every == 0:
                pool.publish(agent.policy_state())

    def save() -> None:
        # tensors and plain values only: torch.load's default weights_only=True reads it
        save_atomic(safe({"config": cfg.to_dict(), "agent": agent.state_dict(),
                          "buffer": buffer.state_dict(), "sampler": sampler.state_dict(),
                          "history": history, "episodes": episodes, "clock": clock,
                          "eval_seconds": eval_seconds, "debt": debt, "next_eval": next_eval,
                          "env_rng": env_rng.bit_generator.state}, "RL checkpoint"),
                    checkpoint)

    env_rng = np.random.default_rng(cfg.seed)
    if resume and Path(checkpoint).exists():
        state = torch.load(checkpoint, map_location="cpu")
        _check_resumable(state["config"], cfg)
        agent.load_state_dict(state["agent"])
        buffer.load_state_dict(state["buffer"])
        sampler.load_state_dict(state["sampler"])
        history, episodes = list(state["history"]), list(state["episodes"])
        clock, eval_seconds = state["clock"], state["eval_seconds"]
        debt, next_eval = state["debt"], state["next_eval"]
        env_rng.bit_generator.state = state["env_rng"]
        bar.update(buffer.added)
    next_save = (buffer.added // checkpoint_every + 1) * checkpoint_every \
        if checkpoint is not None and checkpoint_every else None

    def evaluate_now() -> None:
        nonlocal eval_seconds
        t0 = time.perf_counter()
        ret = evaluate(agent, cfg.env_id, cfg.eval_episodes, seed=10_000 + cfg.seed)
        eval_seconds += time.perf_counter() - t0
        row = {"env_steps": buffer.added, "seconds": clock, "return": ret,
               "updates": agent.updates, "eval_seconds": eval_seconds,  # so far, apart
               "train_return": (float(np.mean([e["return"] for e in episodes[-10:]]))
                                if episodes else float("nan")),
               **{k: v for k, v in stats.items() if k != "td"}}
        if cfg.replay == "assistant":
            row["kept_fraction"] = sampler.kept_fraction
        history.append(row)
        bar.set_postfix(ret=f"{ret:.0f}")

    try:
        if cfg.actors:
            env.close()
            from autoassist.rl.actors import ActorPool

            pool = ActorPool(cfg.env_id, cfg.actors, cfg.sac, agent.policy_state(), cfg.seed,
                             random_steps=cfg.start_steps, threads=1)
        else:
            obs, _ = env.reset(seed=cfg.seed + buffer.added)  # resumed: new episodes
            ep_return = 0.0
        while buffer.added < cfg.steps:
            t0 = time.perf_counter()
            if pool is None:
                act = (spec.act_low + (spec.act_high - spec.act_low)
                       * env_rng.random(spec.act_dim).astype(np.float32)
                       if buffer.added < cfg.start_steps else agent.act(obs))
                nxt, r, terminated, truncated, _ = env.step(act)
                slots = buffer.add(obs, act, r, nxt, float(terminated))
                sampler.inserted(slots, buffer)
                ep_return += float(r)
                obs = nxt
                if terminated or truncated:
                    episodes.append({"return": ep_return, "env_steps": buffer.added})
                    ep_return = 0.0
                    obs, _ = env.reset()
                new = 1
            else:
                chunks = pool.collect() if debt >= 1 else pool.wait()
                new = 0
                for c in chunks:
                    take = min(len(c["rew"]), cfg.steps - buffer.added)
                    if take <= 0:
                        break
                    slots = buffer.add(*(c[f][:take] for f in FIELDS))
                    sampler.inserted(slots, buffer)
                    new += take
                    for ret in c["returns"]:
                        episodes.append({"return": ret, "env_steps": buffer.added,
                                         "actor": c["actor"]})
            if buffer.added >= cfg.update_after:  # owed only for transitions past update_after
                debt += min(new, buffer.added - cfg.update_after) * cfg.updates_per_step
                done = buffer.added >= cfg.steps  # actors: pay what is owed before the end
                k = int(debt) if pool is None or done else min(int(debt), 8)  # keep collecting
                learn(k)
                debt -= k
            clock += time.perf_counter() - t0
            bar.update(new)
            if buffer.added >= next_eval or buffer.added >= cfg.steps:
                evaluate_now()
                next_eval += cfg.eval_every
            if next_save is not None and buffer.added >= next_save:
                save()
                next_save += checkpoint_every
        if checkpoint is not None:
            save()
        received = pool.received.tolist() if pool is not None else None
    finally:
        bar.close()
        if pool is not None:
            pool.close()
        env.close()
        sampler_state = getattr(sampler, "history", None)
        sampler.close()
        if cfg.threads is not None:
            torch.set_num_threads(before)
    return RLResult(cfg.to_dict(), history, episodes, agent, received,
                    {"name": sampler.name, "rounds": sampler_state})
