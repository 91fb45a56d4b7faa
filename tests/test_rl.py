"""Deep RL parts (issue 10) on real MuJoCo rollouts: networks, replay samplers, OFENet, actors."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import require

require("gymnasium", "rl")  # skips here without the rl extra; fails under CI=1
require("mujoco", "rl")

from autoassist.kernels import sum_tree  # noqa: E402
from autoassist.rl.envs import env_spec, make_env  # noqa: E402
from autoassist.rl.networks import DenseNetMLP, OFENet  # noqa: E402
from autoassist.rl.prioritized import PrioritizedSampler  # noqa: E402
from autoassist.rl.replay import ReplayBuffer, UniformSampler  # noqa: E402


def rollouts(env_id: str, steps: int, seed: int = 0) -> ReplayBuffer:
    """Random-policy transitions from the real environment."""
    env = make_env(env_id, seed=seed)
    spec = env_spec(env_id)
    buf = ReplayBuffer(steps, spec.obs_dim, spec.act_dim)
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        act = env.action_space.sample()
        nxt, r, term, trunc, _ = env.step(act)
        buf.add(obs, act, r, nxt, float(term))
        obs = nxt if not (term or trunc) else env.reset()[0]
    env.close()
    return buf


@pytest.fixture(scope="module")
def hopper():
    return rollouts("Hopper-v5", 3000)


def test_densenet_mlp_layers_see_the_input_and_every_earlier_layer():
    net = DenseNetMLP(11, layers=3, units=8)
    assert [layer.in_features for layer in net.layers] == [11, 19, 27]
    assert net.out_features == 11 + 3 * 8
    x = torch.randn(5, 11)
    out = net(x)
    assert out.shape == (5, 35)
    assert torch.equal(out[:, :11], x)  # the input passes through unchanged
    # layer 3's output depends on layer 1's output directly, not only through layer 2
    h1 = net.act(net.layers[0](x))
    h2 = net.act(net.layers[1](torch.cat([x, h1], 1)))
    h3 = net.act(net.layers[2](torch.cat([x, h1, h2], 1)))
    assert torch.allclose(out, torch.cat([x, h1, h2, h3], 1))
    with pytest.raises(ValueError, match="must be >= 1"):
        DenseNetMLP(11, layers=0)


def test_ofenet_auxiliary_loss_decreases_on_real_rollouts(hopper):
    torch.manual_seed(0)
    ofe = OFENet(hopper.obs_dim, hopper.act_dim, layers=2, units=16)
    opt = torch.optim.Adam(ofe.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    train_ids, held = np.arange(2500), np.arange(2500, 3000)

    def loss(ids):
        b = {k: torch.as_tensor(v) for k, v in hopper.batch(ids).items()}
        return ofe.aux_loss(b["obs"], b["act"], b["next_obs"])

    with torch.no_grad():
        before = float(loss(held))
    for _ in range(400):
        opt.zero_grad()
        loss(rng.choice(train_ids, 128)).backward()
        opt.step()
    with torch.no_grad():
        after = float(loss(held))
    assert after < 0.5 * before  # held-out transitions: it learnt the dynamics, not the batch
    assert ofe.obs_features == hopper.obs_dim + 2 * 16


def test_sum_tree_draws_match_the_cumulative_sum_specification():
    rng = np.random.default_rng(1)
    p = rng.gamma(0.5, size=1000) + 1e-3
    sums, mins = sum_tree.new_trees(1000)
    sum_tree.update(sums, mins, np.arange(1000), p)
    assert sums[1] == pytest.approx(p.sum())
    assert mins[1] == pytest.approx(p.min())
    u = rng.random(5000)
    assert np.array_equal(sum_tree.sample(sums, u), sum_tree.sample_numpy(p, u))
    with pytest.raises(ValueError, match="> 0"):
        sum_tree.update(sums, mins, np.array([3]), np.array([0.0]))
    with pytest.raises(IndexError):
        sum_tree.update(sums, mins, np.array([1024]), np.array([1.0]))


def test_prioritized_sampler_indices_and_importance_weights():
    n = 500
    per = PrioritizedSampler(n, alpha=0.6, beta=0.4, beta_steps=10**9, seed=0)
    buf = ReplayBuffer(n, 2, 1)
    slots = buf.add(np.zeros((n, 2)), np.zeros((n, 1)), np.zeros(n), np.zeros((n, 2)), np.zeros(n))
    per.inserted(slots, buf)
    td = np.random.default_rng(0).exponential(size=n)
    per.update(slots, td)
    drawn, w = per.sample(20_000, buf.size)
    assert drawn.min() >= 0 and drawn.max() < n
    prio = (np.abs(td) + per.eps) ** 0.6
    P = prio / prio.sum()
    freq = np.bincount(drawn, minlength=n) / len(drawn)
    assert np.corrcoef(freq, P)[0, 1] > 0.95  # drawn in proportion to p^alpha
    expected = (n * P[drawn]) ** -0.4 / ((n * P.min()) ** -0.4)
    assert np.allclose(w, expected, rtol=1e-5)  # Schaul et al.'s normalised weights
    assert w.max() <= 1.0 + 1e-6
    state = per.state_dict()
    a = per.sample(64, n)
    per.load_state_dict(state)
    b = per.sample(64, n)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_uniform_sampler_and_buffer_ring_on_real_rollouts(hopper):
    buf = ReplayBuffer(1000, hopper.obs_dim, hopper.act_dim)
    for start in range(0, 3000, 250):
        ids = np.arange(start, start + 250)
        slots = buf.add(*(hopper.batch(ids)[f] for f in ("obs", "act", "rew", "next_obs",
                                                          "done")))
        assert np.array_equal(slots, ids % 1000)
    assert buf.size == 1000 and buf.added == 3000
    assert np.array_equal(buf.obs, hopper.obs[2000:3000])  # the newest 1000 survive
    s, w = UniformSampler(0).sample(4096, buf.size)
    assert w is None and s.min() >= 0 and s.max() < 1000
    with pytest.raises(ValueError, match="NaN"):
        buf.add(np.full((1, hopper.obs_dim), np.nan), np.zeros((1, hopper.act_dim)), [0.0],
                np.zeros((1, hopper.obs_dim)), [0.0])


def test_environment_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown or unavailable environment 'Hoper-v5'"):
        make_env("Hoper-v5")
    with pytest.raises(ValueError, match="1-D Box"):
        make_env("CartPole-v1")  # discrete actions: SAC cannot take them


def test_assistant_sampler_indices_weights_and_reused_slots(hopper):
    from autoassist.config import ShrinkConfig
    from autoassist.kernels import keep_probabilities
    from autoassist.rl.assistant_replay import AssistantSampler

    n = 2000
    cfg = ShrinkConfig(floor=0.2, warmup_epochs=1, reweight=True, sync=True, seed=0)
    sampler = AssistantSampler(n, hopper.obs_dim, hopper.act_dim, cfg, round_steps=20,
                               beta=0.4, beta_steps=10**12)  # beta stays 0.4 (to 1e-6)
    try:
        buf = ReplayBuffer(n, hopper.obs_dim, hopper.act_dim)
        fields = ("obs", "act", "rew", "next_obs", "done")
        slots = buf.add(*(hopper.batch(np.arange(n))[f] for f in fields))
        sampler.inserted(slots, buf)
        hard = hopper.rew[:n] < np.median(hopper.rew[:n])  # "informative": low-reward steps
        for _ in range(3 * 20):  # warm-up round, then two shrinking rounds
            s, w = sampler.sample(256, buf.size)
            assert s.min() >= 0 and s.max() < n
            sampler.update(s, np.where(hard[s], 2.0, 0.1))
        s, w = sampler.sample(512, buf.size)  # the first batch of a new round
        plan = sampler.engine.current
        assert plan.reason == "shrink" and sampler.round == 3
        assert sampler.kept_fraction < 0.9
        kept = sampler.candidates[: sampler.count]
        assert hard[kept].mean() > 0.6  # the kept set leans to the informative transitions
        p = keep_probabilities(plan.scores[s], plan.floor)
        mean_p = keep_probabilities(plan.scores[:n], plan.floor).mean()
        assert np.allclose(w, (mean_p / p) ** 0.4, rtol=1e-5)  # (mean(P) / P)^beta
        # overwriting slots: kept with P = 1 until scored, weight mean(P)^beta
        new = buf.add(*(hopper.batch(np.arange(2000, 2100))[f] for f in fields))
        sampler.inserted(new, buf)
        assert sampler.fresh[new].all() and sampler.member[new].all()
        s, w = sampler.sample(4096, buf.size)
        fresh = np.isin(s, new)
        assert fresh.any() and np.allclose(w[fresh], mean_p ** 0.4)
        state = sampler.state_dict()
        assert state["round"] == sampler.round
        with pytest.raises(ValueError, match=r"renew\(\) got features of shape \(1, 3\)"):
            sampler.engine.renew(np.array([0]), np.zeros((1, 3)))
    finally:
        sampler.close()


@pytest.mark.slow
def test_a_short_training_run_with_two_actor_processes_uses_both():
    from autoassist.rl.sac import SACConfig
    from autoassist.rl.train import RLConfig, train

    cfg = RLConfig(env_id="InvertedPendulum-v5", steps=800, start_steps=200, update_after=200,
                   actors=2, eval_every=800, eval_episodes=1, threads=1, publish_every=20,
                   sac=SACConfig(units=32, batch_size=64))
    res = train(cfg, progress=False)
    # how the transitions split between the actors depends on which process is faster: the
    # pool test below checks that each one delivers; here, that the learner got them all
    assert len(res.received) == 2 and sum(res.received) >= cfg.steps
    # the replay ratio is exact: one update per transition past update_after
    assert res.agent.updates == int((cfg.steps - cfg.update_after) * cfg.updates_per_step)
    assert {e["actor"] for e in res.episodes} <= {0, 1} and res.episodes
    assert np.isfinite(res.final_return)


@pytest.mark.slow
def test_every_actor_of_a_pool_delivers_transitions_and_episodes():
    """Waits for each actor (bounded by a deadline) instead of racing them: a fast actor blocks
    on the full queue while the learner side drains it, so a slow one still gets its turn."""
    from autoassist.rl.actors import ActorPool
    from autoassist.rl.sac import SAC, SACConfig

    spec = env_spec("InvertedPendulum-v5")
    sac_cfg = SACConfig(units=16)
    agent = SAC(spec.obs_dim, spec.act_dim, spec.act_low, spec.act_high, sac_cfg)
    pool = ActorPool("InvertedPendulum-v5", 2, sac_cfg, agent.policy_state(), chunk=20,
                     queue_size=2)
    try:
        pool.wait(timeout_s=120)
        episodes, deadline = [0, 0], time.monotonic() + 120
        while time.monotonic() < deadline and (min(pool.received) == 0 or min(episodes) == 0):
            for chunk in pool.collect(wait_s=0.2):
                assert len(chunk["rew"]) == 20 and chunk["obs"].shape == (20, spec.obs_dim)
                episodes[chunk["actor"]] += len(chunk["returns"])
        assert min(pool.received) > 0 and min(episodes) > 0, (pool.received, episodes)
    finally:
        pool.close()


@pytest.mark.slow
def test_dead_actors_are_restarted_then_reported_with_their_error():
    from autoassist.rl.actors import ActorPool
    from autoassist.rl.sac import SAC, SACConfig

    spec = env_spec("InvertedPendulum-v5")
    sac_cfg = SACConfig(units=16)
    agent = SAC(spec.obs_dim, spec.act_dim, spec.act_low, spec.act_high, sac_cfg)
    pool = ActorPool("InvertedPendulum-v5", 2, sac_cfg, agent.policy_state(), chunk=20,
                     max_restarts=2)
    try:
        pool.wait(timeout_s=120)
        pool.kill(0)
        with pytest.warns(RuntimeWarning, match="actor process 0 died"):
            pool.check()
        pool.collect()  # what the killed actor sent before it died
        before, deadline = pool.received[0], time.monotonic() + 120
        while time.monotonic() < deadline:  # the restarted actor delivers again
            pool.collect(wait_s=0.2)
            if pool.received[0] > before:
                break
        assert pool.received[0] > before
        # an actor that fails inside: weights it cannot load (its traceback is reported)
        bad = {k: torch.zeros(3) for k in agent.policy_state()}
        for k in pool.shared:  # what the next actor started is handed
            pool.shared[k] = bad[k].share_memory_()
        pool.kill(1)  # the last restart: the new actor 1 gets the bad weights and fails
        with pytest.warns(RuntimeWarning, match="actor process 1 died"):
            pool.check()
        deadline = time.monotonic() + 120  # its spawn and imports take a few seconds
        with pytest.raises(RuntimeError, match=r"actor process 1 died \(exit code 1\) and the 2 "
                           r"restarts are used up") as err:
            while time.monotonic() < deadline:
                pool.collect(wait_s=0.2)
        assert "Traceback" in str(err.value) and "load_state_dict" in str(err.value)
    finally:
        pool.close()


@pytest.mark.slow
def test_training_resumes_from_its_checkpoint_with_assistant_replay(tmp_path):
    from autoassist.rl.sac import SACConfig
    from autoassist.rl.train import RLConfig, train

    def cfg(steps, **kw):
        return RLConfig(env_id="InvertedPendulum-v5", steps=steps, start_steps=300,
                        update_after=300, replay="assistant", round_steps=200, eval_every=400,
                        eval_episodes=1, threads=1, sac=SACConfig(units=32, batch_size=64),
                        **kw)

    ckpt = tmp_path / "run.pt"
    first = train(cfg(800), progress=False, checkpoint=ckpt)
    assert ckpt.exists()
    saved = torch.load(ckpt)  # weights_only=True, torch's default: tensors and plain values
    assert saved["buffer"]["added"] == 800 and saved["agent"]["updates"] == 500
    assert saved["sampler"]["round"] >= 2  # the Assistant's rounds went into the checkpoint
    more = train(cfg(1200), progress=False, checkpoint=ckpt, resume=True)
    assert more.history[: len(first.history)] == first.history  # the past is kept as it was
    assert more.history[-1]["env_steps"] == 1200
    assert more.agent.updates == 900  # 500 before, 400 after: nothing redone, nothing lost
    with pytest.raises(ValueError, match="replay: 'assistant' there, 'uniform' here"):
        train(RLConfig(**{**cfg(1600).to_dict(), "replay": "uniform",
                          "sac": SACConfig(units=32, batch_size=64)}),
              progress=False, checkpoint=ckpt, resume=True)


def test_renewed_slots_are_forgotten_before_their_new_losses():
    from autoassist.config import ShrinkConfig
    from autoassist.engine import ShrinkEngine

    engine = ShrinkEngine(8, ShrinkConfig(sync=True, send_every=1), external_features=3)
    try:
        engine.renew(np.arange(8), np.ones((8, 3)))
        engine.observe(torch.full((8,), 2.0), np.arange(8))  # old contents' losses
        engine.renew(np.array([3, 5]), np.zeros((2, 3)))  # slots 3 and 5 reused
        engine.observe(torch.tensor([7.0]), np.array([5]))  # slot 5's new contents
        engine.flush()
        assert engine.assistant.wait_processed(timeout=60)
        memory = engine.assistant.model_state()[0]["memory"]
        assert memory["seen"].tolist() == [1, 1, 1, 0, 1, 1, 1, 1]  # 3: forgotten
        assert memory["last"][5] == 7.0 and memory["last"][0] == 2.0  # 5: its new loss
        assert np.array_equal(engine.state.features[3], np.zeros(3))
    finally:
        engine.close()
