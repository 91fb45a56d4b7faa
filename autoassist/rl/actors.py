"""Distributed data collection (Ape-X style): actor processes feed the learner through a queue.

Each actor process runs its own environment with a copy of the policy and sends transitions in
chunks through its own bounded queue (when the learner falls behind, actors wait: the queues are
the back-pressure). The learner publishes new policy weights into shared memory every few
updates; an actor picks them up before its next chunk.

Nothing an actor holds can stop the others when it is killed (OOM killer, SIGKILL): no lock is
shared between processes. Each actor writes only to its own queue (a writer killed mid-message
would otherwise hold the queue's lock, or leave half a message, for everyone); a restarted actor
gets a new queue and the old one, with whatever it still held, is dropped. The weights are
published under a seqlock: the version count is odd while the learner writes, and an actor
keeps its weights when the count moved during its copy.

Failure is never silent: an actor that raises sends its traceback and exits; the learner's
``ActorPool.collect`` sees the dead process, restarts it (``max_restarts`` times in all) or
raises an error naming the actor, its exit code and its traceback. Waiting for transitions has a
deadline (``TimeoutError`` with every actor's state) instead of hanging.
"""

from __future__ import annotations

import os
import queue
import time
import traceback
import warnings
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp

from autoassist.rl.replay import FIELDS


def _read_policy(agent, shared: dict, version) -> int | None:
    """Load the published weights; their version, or None when the learner was writing."""
    before = version.value
    if before % 2:
        return None
    state = {k: v.clone() for k, v in shared.items()}
    if version.value != before:
        return None
    agent.load_policy_state(state)
    return before


def _actor_main(idx: int, env_id: str, sac_cfg: dict, seed: int, shared: dict, version,
                out, errors, stop, chunk: int, random_steps: int, threads: int,
                ready, go) -> None:
    """One actor process: act, step, send chunks of transitions until told to stop."""
    try:
        torch.set_num_threads(threads)  # this process's own setting
        from autoassist.rl.envs import check_spaces, make_env
        from autoassist.rl.sac import SAC, SACConfig

        env = make_env(env_id, seed=seed)
        spec = check_spaces(env, env_id)
        agent = SAC(spec.obs_dim, spec.act_dim, spec.act_low, spec.act_high,
                    SACConfig(**sac_cfg), seed=seed)
        seen = None  # the first policy too, so no actor's first chunk is slower than another's
        while seen is None:
            seen = _read_policy(agent, shared, version)
        obs, _ = env.reset(seed=seed)
        ready[idx] = 1  # this actor is set up: the pool starts when all of them are
        while not go.wait(timeout=0.1):  # ... and so do the actors: one that began early would
            if stop.is_set():  # fill the queue before a slower-starting one had sent anything
                env.close()
                return
        ep_return, steps = 0.0, 0
        while not stop.is_set():
            if version.value != seen:  # fresh weights from the learner (else: next chunk)
                got = _read_policy(agent, shared, version)
                seen = seen if got is None else got
            rows = {f: [] for f in FIELDS}
            returns = []
            for _ in range(chunk):
                act = (env.action_space.sample() if steps < random_steps
                       else agent.act(obs))
                nxt, r, terminated, truncated, _ = env.step(act)
                for f, v in zip(FIELDS, (obs, act, r, nxt, float(terminated)), strict=True):
                    rows[f].append(v)
                ep_return += float(r)
                steps += 1
                obs = nxt
                if terminated or truncated:
                    returns.append(ep_return)
                    ep_return = 0.0
                    obs, _ = env.reset()
            msg = {f: np.asarray(v, np.float32) for f, v in rows.items()}
            msg.update(actor=idx, returns=returns, policy_version=seen)
            while not stop.is_set():
                try:
                    out.put(msg, timeout=0.5)
                    break
                except queue.Full:
                    continue
        env.close()
    except BaseException:
        errors.put((idx, traceback.format_exc()))
        raise


class ActorPool:
    """``n`` actor processes and the learner's side of their queue."""

    def __init__(self, env_id: str, n: int, sac_cfg, policy_state: dict[str, torch.Tensor],
                 seed: int = 0, chunk: int = 50, queue_size: int = 32, random_steps: int = 0,
                 max_restarts: int = 2, threads: int = 1):
        if n < 1:
            raise ValueError(f"actors={n}: need at least one actor process")
        if chunk < 1 or queue_size < 1:
            raise ValueError("chunk and queue_size must be >= 1")
        self.env_id, self.n, self.seed, self.chunk = env_id, n, seed, chunk
        self.sac_cfg = asdict(sac_cfg)
        self.random_steps = random_steps // n
        self.max_restarts, self.restarts, self.threads = max_restarts, 0, threads
        self.ctx = mp.get_context("spawn")
        self.shared = {k: v.detach().clone().share_memory_() for k, v in policy_state.items()}
        self.version = self.ctx.RawValue("l", 0)  # no lock: a killed reader cannot hold one
        self.queue_size = -(-queue_size // n)  # each actor's share of the bound
        self.queues: list[Any] = [None] * n
        self.errors = self.ctx.Queue()
        self.stop_event = self.ctx.Event()
        self.procs: list[Any] = [None] * n
        self.received = np.zeros(n, np.int64)  # transitions per actor
        self.incarnation = [0] * n
        self.ready = self.ctx.RawArray("b", n)  # one flag per actor: no shared lock
        self.go = self.ctx.Event()  # set once every actor is set up (restarted ones find it set)
        for i in range(n):
            self._start(i)
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 300.0) -> None:
        """Return once every actor has its environment and policy: spawned processes start
        seconds apart on a busy machine, and a learner that began with the first one would
        train on its transitions alone."""
        deadline = time.monotonic() + timeout_s
        while sum(self.ready) < self.n:
            self.check()  # a dead actor: restarted, or its error raised
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError(f"only {sum(self.ready)} of {self.n} actor processes were "
                                   f"set up after {timeout_s:.0f} s; is the machine overloaded?")
            time.sleep(0.05)
        self.go.set()

    def _start(self, i: int) -> None:
        seed = self.seed + 1000 * (i + 1) + 100_000 * self.incarnation[i]
        if self.queues[i] is not None:  # a dead actor's: it may hold half a message
            self._drop_queue(self.queues[i])
        self.queues[i] = self.ctx.Queue(maxsize=self.queue_size)
        p = self.ctx.Process(target=_actor_main, name=f"autoassist-actor-{i}", daemon=True,
                             args=(i, self.env_id, self.sac_cfg, seed, self.shared, self.version,
                                   self.queues[i], self.errors, self.stop_event,
                                   self.chunk, self.random_steps if not self.incarnation[i]
                                   else 0, self.threads, self.ready, self.go))
        p.start()
        self.procs[i] = p

    def publish(self, policy_state: dict[str, torch.Tensor]) -> None:
        """New policy weights for every actor (picked up before its next chunk)."""
        self.version.value += 1  # odd: being written
        for k, v in policy_state.items():
            self.shared[k].copy_(v)
        self.version.value += 1

    def check(self) -> None:
        """Restart dead actors, or raise with their traceback once restarts are used up."""
        for i, p in enumerate(self.procs):
            if p.is_alive():
                continue
            why = self._error_text(i)
            if self.restarts >= self.max_restarts:
                self.close()
                raise RuntimeError(f"actor process {i} died (exit code {p.exitcode}) and the "
                                   f"{self.max_restarts} restarts are used up. Its error:\n"
                                   f"{why or '(no traceback: killed from outside?)'}")
            self.restarts += 1
            self.incarnation[i] += 1
            warnings.warn(f"autoassist: actor process {i} died (exit code {p.exitcode}); "
                          f"restarting it ({self.restarts}/{self.max_restarts}). "
                          f"{why.strip().splitlines()[-1] if why else ''}", RuntimeWarning,
                          stacklevel=3)
            self._start(i)

    def _error_text(self, i: int) -> str:
        texts = []
        while True:
            try:
                idx, text = self.errors.get_nowait()
            except queue.Empty:
                break
            if idx == i:
                texts.append(text)
        return "\n".join(texts)

    def collect(self, wait_s: float = 0.0) -> list[dict[str, Any]]:
        """Every chunk waiting in the queues (waiting up to ``wait_s`` for the first one)."""
        self.check()
        chunks = []
        deadline = time.monotonic() + wait_s
        while True:
            for q in self.queues:  # only live actors' queues: check() replaced the others
                try:
                    while True:
                        chunks.append(q.get_nowait())
                except queue.Empty:
                    pass
            if chunks or time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        for c in chunks:
            self.received[c["actor"]] += len(c["rew"])
        return chunks

    def wait(self, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """At least one chunk, or a TimeoutError that says what every actor is doing."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            chunks = self.collect(wait_s=0.2)
            if chunks:
                return chunks
        states = ", ".join(f"actor {i}: {'alive' if p.is_alive() else f'exit {p.exitcode}'}"
                           for i, p in enumerate(self.procs))
        raise TimeoutError(f"no transitions from the actor processes for {timeout_s:.0f} s "
                           f"({states}); is the environment stuck?")

    def close(self) -> None:
        self.stop_event.set()
        for p in self.procs:
            if p is not None:
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
                    p.join(timeout=5)
        for q in (*self.queues, self.errors):
            if q is not None:
                self._drop_queue(q)

    @staticmethod
    def _drop_queue(q) -> None:
        q.cancel_join_thread()  # never wait on it at exit
        q.close()

    def pids(self) -> list[int | None]:
        return [p.pid if p is not None else None for p in self.procs]

    def kill(self, i: int) -> None:
        """Kill actor ``i`` outright (for tests of the recovery path)."""
        os.kill(self.procs[i].pid, 9)
        self.procs[i].join(timeout=5)
