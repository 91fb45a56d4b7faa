"""Selection policy and Assistant plumbing: schedule, adaptive floor, drop_last, queue, restarts."""

import os
import signal
import threading
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import autoassist
from autoassist.assistant import SharedState

N = 2000


def _data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 6, generator=gen)
    return TensorDataset(x, torch.arange(N)), torch.nn.functional.softplus(3 * x[:, 0])


def _instances_per_epoch(loader, loss, epochs, pause_in_first=0.0):
    """Run ``epochs`` epochs reporting ``loss``; the instances each one trained on."""
    counts = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        n = 0
        for _x, idx in loader:
            loader.report(loss[idx])
            n += len(idx)
            if epoch == 0 and pause_in_first:
                time.sleep(pause_in_first)
        counts.append(n)
    return counts


def test_warmup_shrink_anneal_schedule():
    data, loss = _data()
    base = DataLoader(data, batch_size=100, shuffle=True)
    with autoassist.wrap(base,
                         assistant="logistic", features=data.tensors[0], sync=True, warmup_epochs=1,
                         epochs=4, anneal_epochs=1, floor=0.2) as loader:
        counts = _instances_per_epoch(loader, loss, 4)
        reasons = [t["reason"] for t in loader.telemetry]
    assert reasons == ["warmup", "shrink", "shrink", "anneal"]
    assert counts[0] == counts[3] == N and counts[1] < N and counts[2] < N
    assert all(type(r) is str for r in reasons)  # plain words in telemetry (JSON, pickles)


def test_the_keep_policy_is_pure_functions_of_config_epoch_and_scores():
    import json

    from autoassist.config import ShrinkConfig
    from autoassist.engine.plan import Reason, floor, keep_all_reason, make_plan

    c = ShrinkConfig(warmup_epochs=2, epochs=10, anneal_epochs=3, floor=0.2)
    assert [keep_all_reason(c, e) for e in (0, 1, 2, 6, 7, 9)] == [
        Reason.WARMUP, Reason.WARMUP, None, None, Reason.ANNEAL, Reason.ANNEAL]
    assert keep_all_reason(c.replace(floor=1.0), 3) is Reason.KEEP_ALL
    assert json.dumps([Reason.KEEP_ALL]) == '["keep-all"]' and f"{Reason.SHRINK}" == "shrink"
    assert floor(c, 0.6) == 0.2  # adaptive_floor off: the configured floor
    adaptive = c.replace(adaptive_floor=True)
    assert floor(adaptive, 0.6) == pytest.approx(0.4) and floor(adaptive, 0.9) == 0.2
    assert floor(adaptive, float("nan")) == 0.2  # no accuracy yet
    scores = np.linspace(0, 1, 500, dtype=np.float32)
    a, b = make_plan(c, 4, scores, 3, 0.2), make_plan(c, 4, scores, 3, 0.2)
    assert a.reason is Reason.SHRINK and np.array_equal(a.mask, b.mask)  # seeded by (seed, epoch)
    assert a.kept == int(a.mask.sum()) and 0 < a.kept < 500
    p = 0.2 + 0.8 * scores
    assert np.allclose(a.weights(np.arange(500)), p.mean() / p, rtol=1e-5)


def test_adaptive_floor_rises_when_the_assistant_cannot_predict():
    data, _ = _data()
    gen = torch.Generator().manual_seed(1)
    base = DataLoader(data, batch_size=100, shuffle=True)
    with autoassist.wrap(base, assistant="logistic", features=data.tensors[0], sync=True, floor=0.2,
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
    with autoassist.wrap(base, assistant="logistic", features=data.tensors[0], sync=True,
                         floor=0.3) as loader:
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


def _stalled(proc):
    """SIGSTOP the Assistant (stalled, or still starting) until the block ends."""
    class _Stall:
        def __enter__(self):
            assert proc.wait_processed(60)
            os.kill(proc.pid, signal.SIGSTOP)

        def __exit__(self, *exc):
            os.kill(proc.pid, signal.SIGCONT)

    return _Stall()


def test_a_full_queue_holds_losses_for_later_and_never_blocks():
    data, loss = _data()
    base = DataLoader(data, batch_size=100)
    with autoassist.wrap(base, assistant="logistic", features=data.tensors[0], queue_size=2,
                         send_every=1) as loader:
        proc = loader.engine.assistant
        state = loader.engine.state
        with _stalled(proc):
            def ten_reports():  # ten messages of 10 instances each into a queue of 2
                for k in range(10):
                    ids = np.arange(10 * k, 10 * k + 10)
                    loader.report(loss[ids], ids=ids)

            boss = threading.Thread(target=ten_reports, daemon=True)
            boss.start()
            boss.join(120)  # a blocking put would wait for the stopped Assistant forever
            assert not boss.is_alive(), "report() blocked on a stalled Assistant"
            # the queue took 2 messages; the other 8 wait merged into one held message
            assert proc.backlog_instances == 80 and len(proc._backlog) == 1
        record = loader.engine.end_epoch(7, batches=10)  # its score request follows the losses
        assert proc.wait_processed(60)
        assert state.trained == 100  # every reported loss arrived, in order
        assert record["queue_drops"] == 0 and proc.backlog_instances == 0
        assert state.published_epoch == 7  # nor was the score request


def test_a_backlog_beyond_its_bound_loses_its_oldest_losses_and_counts_them():
    data, loss = _data()
    base = DataLoader(data, batch_size=100)
    with autoassist.wrap(base, assistant="logistic", features=data.tensors[0], queue_size=1,
                         send_every=1) as loader:
        proc = loader.engine.assistant
        proc.backlog_limit = 35
        with _stalled(proc):
            for k in range(10):
                ids = np.arange(10 * k, 10 * k + 10)
                loader.report(loss[ids], ids=ids)
                if k == 4:
                    loader.engine.end_epoch(7, batches=5)  # a score request between losses
            assert proc.backlog_instances <= 35
        assert proc.wait_processed(60)
        assert proc.drops > 0 and proc.dropped_instances > 0
        trained = loader.engine.state.trained
        assert trained == 100 - proc.dropped_instances  # the rest arrived
        assert loader.engine.state.published_epoch == 7  # the request survived


def test_assistant_that_keeps_dying_is_given_up_and_training_goes_on():
    data, loss = _data()
    base = DataLoader(data, batch_size=100, shuffle=True)
    with autoassist.wrap(base,
                         assistant="logistic", features=data.tensors[0], sync=True, max_restarts=0,
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
    with autoassist.wrap(base, assistant="logistic", features=noise, sync=True, floor=0.3,
                         warmup_epochs=1,
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
    from autoassist.assistant.loss_memory import LossMemory

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


@pytest.mark.parametrize("wait", [10.0, 0.0])
def test_first_shrink_epoch_waits_for_the_first_scores_instead_of_keeping_all(wait):
    """A warm-up epoch shorter than the Assistant's start-up: without the bounded wait the first
    shrinking epoch finds no scores and keeps everything (a whole epoch of extra work).

    The Assistant is late on purpose: stopped (once started, so that its start-up is not part
    of the wait) before the warm-up epoch, so nothing is published before the first shrinking
    epoch is planned, and let go only once the Boss is inside the wait."""
    data, loss = _data()
    base = DataLoader(data, batch_size=100, shuffle=True)
    with autoassist.wrap(base,
                         assistant="logistic", features=data.tensors[0], warmup_epochs=1, floor=0.2,
                         first_scores_wait=wait) as loader:
        proc = loader.engine.assistant
        assert proc.model_state(timeout=120)[1]  # answered: its loop is running
        os.kill(proc.pid, signal.SIGSTOP)
        engine, resumed = loader.engine, []

        def resume_then_wait(*args):  # plan() found no scores: the wait begins
            resumed.append(True)
            os.kill(proc.pid, signal.SIGCONT)
            return type(engine)._await_first_scores(engine, *args)

        engine._await_first_scores = resume_then_wait
        try:
            # a warm-up epoch of >= 1 s: the wait's bound (10x that) leaves the Assistant
            # seconds for what takes it milliseconds (train on 2000 losses, score 2000)
            kept = _instances_per_epoch(loader, loss, 2, pause_in_first=0.05 if wait else 0.0)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        waited = loader.telemetry[1]["first_scores_waited"]
        limit = wait * loader.telemetry[0]["epoch_seconds"]
    assert kept[0] == N
    if wait:  # the Boss waited (bounded) and the first shrinking epoch used the first scores
        assert resumed and loader.telemetry[1]["score_version"] >= 1
        assert kept[1] < 0.8 * N and 0 < waited <= limit
    else:  # no wait: no scores yet, so everything, and the Assistant was never waited for
        assert resumed and kept[1] == N and waited == 0.0


class _WriterDuringCopy(SharedState):
    """A reader whose copy of a score buffer is interleaved with the Assistant's writes: the
    writer (a second handle on the same block) runs ``during(k)`` halfway through copy ``k``."""

    def __init__(self, n, during):
        super().__init__(n, 1)
        self.writer = SharedState(n, 1, name=self.name)
        self.during, self.copies = during, 0

    def _copy_buffer(self, buffer):
        half = self.num_instances // 2
        first = self.scores[buffer, :half].copy()
        self.during(self.writer, self.copies)
        self.copies += 1
        return np.concatenate([first, self.scores[buffer, half:]])

    def close(self):
        self.writer.close()
        super().close()


def test_snapshot_never_mixes_two_versions():
    def next_two_versions(writer, k):  # copy 0: v1 completes and v2 is half written meanwhile
        if k == 0:
            writer.publish(np.full(10, 1.0, np.float32))
            writer.seq = writer.seq + 1  # v2's write has begun, into buffer 0 ...
            writer.scores[0, :] = 2.0  # ... which this reader is copying (version 0)

    state = _WriterDuringCopy(10, next_two_versions)
    try:
        scores, version = state.snapshot()
        # the torn copy (half 1.0 from v0, half 2.0 from v2) was retried: the retry copies v1,
        # the newest complete version, while v2 is still being written into the other buffer
        assert state.copies == 2 and version == 1 and scores.tolist() == [1.0] * 10
    finally:
        state.close()


def test_snapshot_taken_while_the_next_version_is_written_needs_no_retry():
    def one_write_begins(writer, k):  # v1's write begins (buffer 1); the reader copies v0's
        writer.seq = 1
        writer.scores[1, :] = 5.0

    state = _WriterDuringCopy(10, one_write_begins)
    try:
        scores, version = state.snapshot()
        assert state.copies == 1 and version == 0 and scores.tolist() == [1.0] * 10
        state.writer.seq = 2  # v1 complete
        state.during = lambda writer, k: None
        scores, version = state.snapshot()
        assert version == 1 and scores.tolist() == [5.0] * 10
    finally:
        state.close()


def test_a_checkpoint_taken_while_the_assistant_is_stalled_says_its_state_is_not_current():
    data, loss = _data()
    base = DataLoader(data, batch_size=100)
    with autoassist.wrap(base, assistant="logistic", features=data.tensors[0], queue_size=1,
                         send_every=1) as loader:
        proc = loader.engine.assistant
        loader.set_epoch(0)
        for _x, idx in loader:
            loader.report(loss[idx])
        first = loader.state_dict()
        assert first["engine"]["assistant_current"] and first["engine"]["assistant"] is not None
        proc.state_timeout = 0.5
        with _stalled(proc):
            for k in range(5):  # more messages than the queue holds: the request waits behind
                ids = np.arange(10 * k, 10 * k + 10)
                loader.report(loss[ids], ids=ids)
            with pytest.warns(RuntimeWarning, match="did not answer within 0.5 s"):
                stale = loader.state_dict()
        assert not stale["engine"]["assistant_current"]
        old, new = first["engine"]["assistant"], stale["engine"]["assistant"]
        assert np.array_equal(old["model"]["w"], new["model"]["w"])  # the last one it reported
        assert proc.wait_processed(60)
        proc.state_timeout = 60.0
        assert loader.state_dict()["engine"]["assistant_current"]  # answered again


def test_a_dead_assistant_restarts_at_the_epoch_end_and_gets_every_loss_reported_meanwhile():
    """Restarts happen where an epoch ends (or is planned), never inside report(); what was
    reported while the process was dead waits in the backlog and reaches the new process."""
    data, loss = _data()
    base = DataLoader(data, batch_size=100)
    with autoassist.wrap(base,
                         assistant="logistic", features=data.tensors[0], sync=True, send_every=1,
                         warmup_epochs=2) as loader:
        proc, state = loader.engine.assistant, loader.engine.state
        loader.set_epoch(0)
        batches = iter(loader)
        for _ in range(5):
            _x, idx = next(batches)
            loader.report(loss[idx])
        assert proc.wait_processed(60) and state.trained == 500
        os.kill(proc.pid, signal.SIGKILL)
        proc._proc.join(30)
        with pytest.warns(RuntimeWarning, match="Assistant process died"):
            for k, (_x, idx) in enumerate(batches):  # 15 batches reported to a dead Assistant
                loader.report(loss[idx])
                assert proc.restarts == 0  # not restarted on the report path: held
                assert proc.backlog_instances == 100 * (k + 1)
        # the loop's end (the epoch's end) restarted it, and the held losses went over
        assert proc.restarts == 1 and proc.alive and proc.wait_processed(60)
        assert state.trained == 500 + 1500 and proc.backlog_instances == 0
        assert state.version >= 1  # and the score request after them was answered


def test_the_backlog_bound_passes_over_forget_only_messages():
    """A held message that only forgets (a replay slot renewed) has no losses to drop: the
    bound trims the next one that has, and stops."""
    from autoassist.assistant import AssistantProcess, AssistantSettings, Losses, ScoreRequest

    state = SharedState(100, 1)
    try:
        proc = AssistantProcess(state, AssistantSettings(), queue_size=1, max_restarts=0)
        proc.backlog_limit = 10  # never started: everything stays held
        ids = np.arange
        proc._hold(Losses(ids(6), np.ones(6, np.float32), np.array([7])))
        proc._hold(ScoreRequest(0))
        proc._hold(Losses(ids(10, 20), np.ones(10, np.float32), ids(0)))
        proc._hold(Losses(ids(20, 25), np.ones(5, np.float32), ids(0)))  # 21 held: cut 11
        assert proc.backlog_instances == 10 and proc.dropped_instances == 11
        first = proc._backlog[0]
        assert len(first.ids) == 0 and first.forget.tolist() == [7]  # its forget still applies
        assert proc.drops == 2
    finally:
        state.close()


def test_a_publish_cut_short_by_a_death_does_not_break_the_seqlock_after_a_restart():
    from autoassist.assistant import AssistantProcess, AssistantSettings

    state = SharedState(10, 1)
    proc = AssistantProcess(state, AssistantSettings(), queue_size=1, max_restarts=0)
    try:
        state.publish(np.full(10, 0.5, np.float32))  # version 1 complete
        state.seq = state.seq + 1  # version 2's write began; the writer died (buffer 0 torn)
        state.scores[0, :5] = 9.0
        proc.start()  # the (re)started process's handle repairs the count before it runs
        assert state.seq == 2
        scores, version = state.snapshot()
        assert version == 1 and scores.tolist() == [0.5] * 10
        state.publish(np.full(10, 0.25, np.float32))  # the next write starts from even
        assert state.seq == 4 and state.snapshot()[1] == 2
    finally:
        proc.stop()
        state.close()


@pytest.mark.parametrize("scale", ["mean", "sum"])
def test_reweighting_scales_each_step_or_each_epoch_like_a_full_one(scale):
    """"mean": weights mean(P) / P_i, each step's expected gradient is uniform's; "sum": weights
    1 / P_i, a shrunk epoch's expected summed gradient is a full epoch's (InfoBatch's)."""
    data, loss = _data()
    with autoassist.wrap(DataLoader(data, batch_size=100, shuffle=True), sync=True, seed=2,
                         reweight_scale=scale) as loader:
        weights, ids = [], []
        for epoch in range(2):
            loader.set_epoch(epoch)
            for _x, idx in loader:
                if epoch == 1:
                    weights.append(loader.engine.loss_weights(idx.numpy(), loss[idx]))
                    ids.append(idx)
                loader.report(loss[idx])
        plan = loader.engine.current
    ids = torch.cat(ids).numpy()
    assert plan.reason == "shrink" and len(ids) == plan.kept < N
    p = 0.5 + 0.5 * plan.scores[ids]  # P_i = b + (1 - b) p_i at the default floor 0.5
    assert set(np.unique(p)) == {0.5, 1.0}  # the memory Assistant's 0/1 scores
    expected = 1 / p if scale == "sum" else plan.mean_keep / p
    np.testing.assert_allclose(torch.cat(weights).numpy(), expected, rtol=1e-6)
