"""Checkpoints load with ``torch.load(path)``'s default (``weights_only=True``) and resume exactly.

Every state a user saves holds tensors and plain Python values only; the Assistant's learners
are stored as their parameters and rebuilt on load, never pickled.
"""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import autoassist
from autoassist.engine.safe_state import as_numpy, safe
from autoassist.engine.state_check import StateError

N = 1200
PLAIN = (str, int, float, bool, type(None))


def _data():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(N, 8, generator=gen)
    return TensorDataset(x, (x[:, 0] > 0).long())


def _plain_or_tensor(obj, path="state"):
    """Fails naming the first value that is neither a tensor nor a plain Python value."""
    if isinstance(obj, torch.Tensor) or type(obj) in PLAIN:
        return
    assert type(obj) in (dict, list, tuple), f"{path} is a {type(obj).__name__}"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for k, v in items:
        _plain_or_tensor(v, f"{path}[{k!r}]")


def _make(kind, data):
    loader = DataLoader(data, batch_size=50, shuffle=True)
    return autoassist.wrap(loader, assistant=kind, floor=0.3, sync=True, seed=5,
                           warmup_epochs=1)


def _run(loader, stop_after=None, start_epoch=0, skip_set_epoch=False):
    """Batches' ids (and the state after ``stop_after`` batches); losses depend on the data
    only, so two runs differ only where the loader does."""
    got = []
    for epoch in range(start_epoch, 3):
        if not (skip_set_epoch and epoch == start_epoch):
            loader.set_epoch(epoch)
        for x, y in loader:
            got.append(loader.batch_ids)
            loader.report(x[:, 1] ** 2 + 0.5 * y.float())
            if stop_after is not None and len(got) == stop_after:
                return got, loader.state_dict()
    return got, None


@pytest.mark.parametrize("kind", ["logistic", "sgd", "mlp", "memory"])
def test_checkpoint_loads_with_default_torch_load_and_resumes_exactly(tmp_path, kind):
    data = _data()
    with _make(kind, data) as a:
        full, _ = _run(a)
    model = torch.nn.Linear(8, 2)
    with _make(kind, data) as b:
        head, state = _run(b, stop_after=24 + 9)  # epoch 0 has 24 batches: stop in epoch 1
    _plain_or_tensor(state)
    assert state["version"] == 2 and state["engine"]["assistant"]["model"]["kind"] == kind
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "epoch": 1, "loader": state}, path)
    loaded = torch.load(path)  # torch's default: weights_only=True
    with _make(kind, data) as c:
        c.load_state_dict(loaded["loader"])
        tail, _ = _run(c, start_epoch=1, skip_set_epoch=True)
    assert len(full) == len(head) + len(tail) < 3 * 24  # the run shrank
    assert all(np.array_equal(p, q) for p, q in zip(full, head + tail, strict=True))
    if kind in ("logistic", "sgd"):  # the learner came back with the same weights
        assert len(state["engine"]["assistant"]["model"]) > 2


def test_version_1_states_load_but_never_unpickle(tmp_path):
    """A version-1 state (NumPy arrays, loaded with weights_only=False) still resumes; its
    pickled sgd learner is refused by name, and so is an unknown version."""
    data = _data()
    with _make("logistic", data) as a:
        full, _ = _run(a)
    with _make("logistic", data) as b:
        head, state = _run(b, stop_after=30)
    old = {**state, "version": 1, "engine": as_numpy(state["engine"])}  # as 0.1.0 saved it
    assert isinstance(old["engine"]["features"], np.ndarray)
    with _make("logistic", data) as c:
        with pytest.raises(StateError, match="state version 7 is not one this autoassist reads"):
            c.load_state_dict({**state, "version": 7})
        c.load_state_dict(old)
        tail, _ = _run(c, start_epoch=1, skip_set_epoch=True)
    assert all(np.array_equal(p, q) for p, q in zip(full, head + tail, strict=True))

    with _make("sgd", data) as d:
        _, sgd_state = _run(d, stop_after=30)
        pickled = {**sgd_state, "version": 1}
        pickled["engine"] = {**sgd_state["engine"], "assistant": {
            **sgd_state["engine"]["assistant"], "model": {"kind": "sgd", "pickle": b"\x80"}}}
        with pytest.raises(StateError, match=r"\['pickle'\] is a scikit-learn model pickled"):
            d.load_state_dict(pickled)
        pickled["engine"]["assistant"] = None  # the fix the error names: a fresh Assistant
        d.load_state_dict(pickled)
        assert d.epoch == 1


def test_node_and_replay_states_load_with_weights_only(tmp_path):
    from autoassist.config import ShrinkConfig
    from autoassist.pipelines.nodes import ShrinkSampler
    from autoassist.rl.assistant_replay import AssistantSampler
    from autoassist.rl.prioritized import PrioritizedSampler
    from autoassist.rl.replay import ReplayBuffer, UniformSampler

    node = ShrinkSampler(100, sync=True, assistant="logistic", features=torch.randn(100, 4))
    try:
        node.reset()
        ids = [node.next() for _ in range(10)]
        node.report(torch.arange(10.0), ids)
        states = {"node": node.get_state()}
    finally:
        node.close()
    buffer = ReplayBuffer(64, 3, 2)
    rng = np.random.default_rng(0)
    slots = buffer.add(rng.normal(size=(20, 3)), rng.normal(size=(20, 2)), rng.normal(size=20),
                       rng.normal(size=(20, 3)), np.zeros(20))
    states["buffer"] = buffer.state_dict()
    config = ShrinkConfig(floor=0.3, warmup_epochs=1, reweight=True, sync=True)
    samplers = [UniformSampler(), PrioritizedSampler(64),
                AssistantSampler(64, 3, 2, config, round_steps=3)]
    try:
        for sampler in samplers:
            sampler.inserted(slots, buffer)
            for _ in range(4):
                drawn, _ = sampler.sample(8, buffer.size)
                sampler.update(drawn, rng.random(8))
            states[sampler.name] = sampler.state_dict()
        _plain_or_tensor(states)
        torch.save(states, tmp_path / "s.pt")
        back = torch.load(tmp_path / "s.pt")  # weights_only=True
        fresh = ReplayBuffer(64, 3, 2)
        fresh.load_state_dict(back["buffer"])
        assert np.array_equal(fresh.obs, buffer.obs) and fresh.size == 20
        again = [UniformSampler(1), PrioritizedSampler(64, seed=1),
                 AssistantSampler(64, 3, 2, config, round_steps=3, seed=1)]
        try:
            for sampler, other in zip(samplers, again, strict=True):
                other.load_state_dict(back[sampler.name])
                a, wa = sampler.sample(8, buffer.size)
                b, wb = other.sample(8, buffer.size)
                assert np.array_equal(a, b), sampler.name  # the same draws from here on
                assert (wa is None) == (wb is None) and (wa is None or np.array_equal(wa, wb))
        finally:
            again[-1].close()
    finally:
        samplers[-1].close()


def test_safe_names_what_a_checkpoint_cannot_hold():
    converted = safe({"a": np.arange(3), "b": (np.float32(0.5), [np.int64(2)])})
    assert isinstance(converted["a"], torch.Tensor) and converted["a"].tolist() == [0, 1, 2]
    assert converted["b"] == (0.5, [2]) and type(converted["b"][1][0]) is int
    with pytest.raises(TypeError, match=r"state\['x'\] is a object"):
        safe({"x": object()})
