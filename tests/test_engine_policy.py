"""Selection policy and Assistant plumbing: schedule, adaptive floor, drop_last, queue, restarts."""

import os
import signal
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import autoassist
from autoassist import shared_state as ss

N = 2000


def _data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 6, generator=gen)
    return TensorDataset(x, torch.arange(N)), torch.nn.functional.softplus(3 * x[:, 0])


def test_warmup_shrink_anneal_schedule():
    data, loss = _data()
    base = DataLoader(data, batch_size=100, shuffle=True)
    with autoassist.wrap(base, features=data.tensors[0], sync=True, warmup_epochs=1,
                         epochs=4, anneal_epochs=1, floor=0.2) as loader:
        counts = []
        for epoch in range(4):
            loader.set_epoch(epoch)
            n = 0
            for _x, idx in loader:
                loader.report(loss[idx])
                n += len(idx)
            counts.append(n)
        reasons = [t["reason"] for t in loader.telemetry]
    assert reasons == ["warmup", "shrink", "shrink", "anneal"]
    assert counts[0] == counts[3] == N and counts[1] < N and counts[2] < N


def test_adaptive_floor_rises_when_the_assistant_cannot_predict():
    data, _ = _data()
    gen = torch.Generator().manual_seed(1)
    base = DataLoader(data, batch_size=100, shuffle=True)
    with autoassist.wrap(base, features=data.tensors[0], sync=True, floor=0.2,
                         adaptive_floor=True, warmup_epochs=1, seed=3) as loader:
        for epoch in range(3):
            loader.set_epoch(epoch)
            for _x, idx in loader:
                # a fresh random loss each time: "informative" is unpredictable from features
                loader.report(torch.rand(len(idx), generator=gen))
        plan = loader.engine.current
        accuracy = loader.telemetry[-2]["assistant_accuracy"]
    assert plan.reason == "shrink"
    assert accuracy < 0.65
    assert plan.floor == pytest.approx(max(0.2, 1 - accuracy))  # b = max(floor, 1 - accuracy)
    assert plan.floor > 0.3  # not the configured 0.2


def test_drop_last_batches_are_full_while_shrinking():
    data, loss = _data()
    base = DataLoader(data, batch_size=64, shuffle=True, drop_last=True)
    with autoassist.wrap(base, features=data.tensors[0], sync=True, floor=0.3) as loader:
        for epoch in range(2):
            loader.set_epoch(epoch)
            expected = len(loader)
            sizes = []
            for _x, idx in loader:
                sizes.append(len(idx))
                loader.report(loss[idx])
            plan = loader.engine.current
            assert len(sizes) == expected == plan.kept // 64
            assert set(sizes) == {64}
        assert plan.reason == "shrink"


def test_full_queue_drops_the_oldest_message_never_blocks():
    data, loss = _data()
    base = DataLoader(data, batch_size=100)
    with autoassist.wrap(base, features=data.tensors[0], queue_size=2, send_every=1) as loader:
        proc = loader.engine.assistant
        state = loader.engine.state
        assert proc.wait_processed(60)
        os.kill(proc.pid, signal.SIGSTOP)  # a stalled Assistant
        try:
            t0 = time.perf_counter()
            for k in range(10):  # ten messages of 10 instances each into a queue of 2
                ids = np.arange(10 * k, 10 * k + 10)
                loader.report(loss[ids], ids=ids)
            assert time.perf_counter() - t0 < 5  # the Boss did not wait for the Assistant
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert proc.wait_processed(60)
        assert proc.drops == 8
        assert int(state.header[ss.TRAINED]) == 20  # only the two newest messages arrived
        assert loader.engine.end_epoch(0, batches=10)["queue_drops"] == 8


def test_assistant_that_keeps_dying_is_given_up_and_training_goes_on():
    data, loss = _data()
    base = DataLoader(data, batch_size=100, shuffle=True)
    with autoassist.wrap(base, features=data.tensors[0], sync=True, max_restarts=0,
                         floor=0.3) as loader:
        loader.set_epoch(0)
        for _x, idx in loader:
            loader.report(loss[idx])
        last_scores, _ = loader.engine.state.snapshot()
        os.kill(loader.engine.assistant.pid, signal.SIGKILL)
        loader.engine.assistant._proc.join(10)
        with pytest.warns(RuntimeWarning, match="training continues on the last published"):
            loader.set_epoch(1)
            seen = 0
            for _x, idx in loader:
                loader.report(loss[idx])
                seen += len(idx)
        plan = loader.engine.current
        assert loader.engine.assistant.failed
        assert np.array_equal(plan.scores, last_scores) and seen == plan.kept < N


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    p = positive.sum()
    return float((ranks[positive].sum() - p * (p + 1) / 2) / (p * (len(scores) - p)))


@pytest.mark.parametrize("loss_history", [True, False])
def test_loss_memory_finds_persistently_hard_instances_features_cannot(loss_history):
    gen = torch.Generator().manual_seed(5)
    noise = torch.randn(N, 6, generator=gen)  # features carry no information about hardness
    hard = torch.rand(N, generator=gen) < 0.3
    data = TensorDataset(noise, torch.arange(N))
    base = DataLoader(data, batch_size=100, shuffle=True, generator=gen)
    with autoassist.wrap(base, features=noise, sync=True, floor=0.3, warmup_epochs=1,
                         seed=2, loss_history=loss_history) as loader:
        for epoch in range(3):
            loader.set_epoch(epoch)
            for _x, idx in loader:
                jitter = 0.05 * torch.rand(len(idx), generator=gen)
                loader.report(torch.where(hard[idx], 2.0, 0.2) + jitter)
        scores, _ = loader.engine.state.snapshot()
    auc = _auc(scores, hard.numpy())
    if loss_history:  # the last loss says which instances are hard
        assert auc > 0.95
    else:  # features alone cannot
        assert 0.35 < auc < 0.65


def test_loss_memory_features_and_state():
    from autoassist.loss_memory import LossMemory

    m = LossMemory(4)
    m.update(np.array([0, 2, 2]), np.array([1.0, 4.0, 0.5], np.float32))  # last occurrence wins
    f = m.features(np.arange(4), mean=1.0)
    assert f[:, 0].tolist() == [1, 0, 1, 0]
    assert f[0, 1] == pytest.approx(0.0, abs=1e-6) and f[2, 1] == pytest.approx(np.log(0.5))
    assert f[1, 1] == 0 and not m.features(np.arange(4), float("nan")).any()
    other = LossMemory(4)
    other.load_state_dict(m.state_dict())
    assert np.array_equal(other.features(np.arange(4), 2.0), m.features(np.arange(4), 2.0))
    with pytest.raises(ValueError, match="instances"):
        LossMemory(5).load_state_dict(m.state_dict())
