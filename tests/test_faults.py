"""Faults and misuse: each case runs under a deadline, so a hang fails the test instead of
stalling CI, and each asserts what the user sees (a clear error, a warning, or correct work)."""

from __future__ import annotations

import signal
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import autoassist
from autoassist.assistant.loss_memory import LossMemory, relative_loss

DEADLINE_SECONDS = 180


@pytest.fixture(autouse=True)
def deadline():
    """Fail (with the stack) instead of hanging past ``DEADLINE_SECONDS``."""
    def expired(signum, frame):
        raise TimeoutError(f"test exceeded its {DEADLINE_SECONDS} s deadline (a hang?)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(DEADLINE_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _magic(limit=1200):
    from autoassist.bench.tasks import get_task

    train, _ = get_task("keel_magic").load(limit)
    return train


def _linear_boss():
    """The tests' Boss for magic's 10 features: a seeded linear model and its optimiser."""
    torch.manual_seed(0)
    model = torch.nn.Linear(10, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.05)


# -- 1. any real-valued loss; a non-finite scoring is never published --------------------------
def test_relative_loss_is_finite_for_any_real_loss_and_unchanged_for_positive_ones():
    last = np.array([-3.0, -0.01, 0.0, 0.5, 2.0, 1e30, -1e30], np.float32)
    for mean in (-2.0, -1e-9, 0.0, 0.7, 1e6):
        out = relative_loss(last, mean)
        assert np.isfinite(out).all() and (np.abs(out) <= 6).all()
        assert np.all(np.diff(relative_loss(np.sort(last), mean)) >= 0)  # monotone in the loss
    positive = np.array([0.1, 0.7, 3.0], np.float32)
    np.testing.assert_allclose(relative_loss(positive, 0.7),
                               np.log((positive.astype(np.float64) + 1e-8) / (0.7 + 1e-8)))
    memory = LossMemory(3)
    memory.update(np.array([0, 1]), np.array([-5.0, -0.01], np.float32))
    feats = memory.features(np.arange(3), -1.0)
    assert np.isfinite(feats).all() and feats[2].tolist() == [0.0, 0.0]


def test_negative_losses_keep_shrinking_with_finite_scores():
    """Gaussian-NLL-like losses below zero: the Assistant still learns and selection shrinks."""
    train = _magic()
    model, opt = _linear_boss()
    loader = autoassist.wrap(DataLoader(train, batch_size=64, shuffle=True), sync=True, seed=1)
    with loader, warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no NaN warning, no withheld scores
        for epoch in range(4):
            loader.set_epoch(epoch)
            for x, y in loader:
                per_sample = F.cross_entropy(model(x), y, reduction="none") - 3.0
                assert (per_sample < 0).all()
                opt.zero_grad()
                loader.report(per_sample).backward()
                opt.step()
        scores, version = loader.engine.state.snapshot()
        tele = loader.telemetry
    assert version >= 3 and np.isfinite(scores).all()
    assert tele[-1]["assistant_bad_scores"] == 0
    assert tele[-1]["kept_fraction"] < 0.95  # shrinking, not stuck keeping everything


def test_a_non_finite_scoring_is_withheld_the_learner_restarts_and_the_boss_is_told():
    from autoassist.assistant.process import AssistantProcess
    from autoassist.assistant.protocol import AssistantSettings, SharedState
    from autoassist.assistant.worker import _Worker
    from autoassist.config import ShrinkConfig

    state = SharedState(50, 4)
    try:
        state.features[:] = np.random.default_rng(0).normal(size=(50, 4))
        state.have[:] = 1
        settings = AssistantSettings.from_config(ShrinkConfig(sync=True, loss_history=False,
                                                                        assistant="logistic"))
        worker = _Worker(state, settings, None, outbox=None)
        worker.model.w[:] = np.nan  # a learner that diverged
        worker.publish(epoch=0)
        assert state.version == 0 and state.bad_scores == 1  # nothing published
        assert np.isfinite(worker.model.w).all()  # started afresh
        worker.publish(epoch=1)
        scores, version = state.snapshot()
        assert version == 1 and np.isfinite(scores).all()
        handle = AssistantProcess(state, settings, queue_size=4, max_restarts=0)
        with pytest.warns(RuntimeWarning, match="non-finite scores"):
            handle.check()
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            handle.check()  # told once per occurrence, not every epoch
        assert handle.telemetry()["assistant_bad_scores"] == 1
    finally:
        state.close()


# -- 2. a frozen Assistant: training goes on, checkpoints say so, close and exit never hang -----
def _train_epochs(loader, model, opt, epochs):
    for epoch in epochs:
        loader.set_epoch(epoch)
        for x, y in loader:
            opt.zero_grad()
            loader.report(F.cross_entropy(model(x), y, reduction="none")).backward()
            opt.step()


def _gone(pid: int) -> bool:
    import os

    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] in ("Z", "X")  # a zombie is dead
    except FileNotFoundError:
        return not os.path.exists(f"/proc/{pid}")


def test_frozen_assistant_checkpoint_close_and_process_state():
    import os

    train = _magic(2000)
    model, opt = _linear_boss()
    loader = autoassist.wrap(DataLoader(train, batch_size=32, shuffle=True), seed=2,
                             queue_size=2, send_every=1)
    try:
        _train_epochs(loader, model, opt, [0])
        handle = loader.engine.assistant
        pid = handle.pid
        os.kill(pid, signal.SIGSTOP)  # frozen from here on, whatever its speed
        handle.state_timeout = 1.0
        _train_epochs(loader, model, opt, [1, 2])  # the Boss goes on; messages wait, held
        assert handle.backlog_instances > 0
        with pytest.warns(RuntimeWarning, match="did not answer"):
            state = loader.state_dict()
        assert state["engine"]["assistant_current"] is False
        loader.close()
        assert _gone(pid), "close() left the frozen Assistant behind"
    finally:
        loader.close()


def test_interpreter_exit_with_a_frozen_assistant_does_not_hang(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "frozen.py"
    script.write_text(
        "import os, signal, torch, torch.nn.functional as F\n"
        "from torch.utils.data import DataLoader, TensorDataset\n"
        "import autoassist\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x, y = torch.randn(512, 6, generator=g), torch.randint(0, 2, (512,), generator=g)\n"
        "loader = autoassist.wrap(DataLoader(TensorDataset(x, y), batch_size=32), seed=0)\n"
        "model = torch.nn.Linear(6, 2)\n"
        "for b in loader:\n"
        "    loader.report(F.cross_entropy(model(b[0]), b[1], reduction='none'))\n"
        "pid = loader.engine.assistant.pid\n"
        "os.kill(pid, signal.SIGSTOP)\n"
        "print(pid, flush=True)\n"  # exits with the loader open and its Assistant frozen
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)  # a hang fails here
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout.split()[-1])
    assert _gone(pid), "the frozen Assistant outlived the interpreter"


def test_a_silent_assistant_costs_one_first_scores_wait_per_run():
    """A frozen Assistant never publishes: the first shrinking epoch waits for its first scores
    (bounded), and once that wait ended in vain no later epoch waits again."""
    import os

    train = _magic(1500)
    model, opt = _linear_boss()
    loader = autoassist.wrap(DataLoader(train, batch_size=64, shuffle=True), seed=3,
                             warmup_epochs=1, first_scores_wait=0.25,
                             queue_size=2, send_every=1)  # a ring of 2 messages: a backlog soon
    with loader:
        engine, handle = loader.engine, loader.engine.assistant
        assert handle.model_state(timeout=120)[1]  # its loop runs; no losses: nothing published
        os.kill(handle.pid, signal.SIGSTOP)  # silent from here on, whatever its speed
        waits = []
        real_wait = engine._await_first_scores

        def spy(*args):
            waits.append(loader.epoch)
            return real_wait(*args)

        engine._await_first_scores = spy
        handle.backlog_limit = 2000  # what the frozen Assistant cannot take soon goes: ~epoch 2
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _train_epochs(loader, model, opt, range(5))
        finally:
            os.kill(handle.pid, signal.SIGCONT)
        tele = loader.telemetry
        assert engine.state_dict()["first_scores_expired"] is True  # a resumed run waits no more
    said = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    # each said once, naming what happened and what to do
    assert sum("published no scores" in m and "epoch 1 trained on every instance" in m
               and "Leave a core free" in m for m in said) == 1
    dropped = [m for m in said if "falling behind" in m]
    first_drop = next(t for t in tele if t["dropped_instances"] > 0)
    assert len(dropped) == 1 and f"{first_drop['dropped_instances']} losses of epoch " \
        f"{first_drop['epoch']} were dropped" in dropped[0]
    assert waits == [1]  # the first shrinking epoch only (was: every epoch)
    assert [t["first_scores_wait_expired"] for t in tele] == [False, True, False, False, False]
    assert [t["first_scores_wait_skipped"] for t in tele] == [False, False, True, True, True]
    assert all(t["score_version"] == 0 and t["kept"] == len(train) for t in tele)


# -- 3. shared memory: 9 bytes per instance in /dev/shm; no room is a clear error --------------
def test_dev_shm_holds_only_the_scores_and_flags():
    import os

    from autoassist.assistant.protocol import SHM_BYTES_PER_INSTANCE, SharedState

    n = 1_000_000
    state = SharedState(n, 48)
    try:
        shm_bytes = os.stat(f"/dev/shm/{state.name.lstrip('/')}").st_size
        assert shm_bytes <= 16 * n and SHM_BYTES_PER_INSTANCE <= 16
        assert shm_bytes == SHM_BYTES_PER_INSTANCE * n + 16 * 8
        assert os.path.getsize(state.feature_path) == n * 48 * 4  # the features: a file
        state.features[n - 1] = 7.0  # both sides see the same rows
        other = SharedState(n, 48, name=state.name, feature_dir=state.feature_dir)
        assert float(other.features[n - 1, 5]) == 7.0
        other.close()
        path = state.feature_path
    finally:
        state.close()
    assert not os.path.exists(path)


def test_no_room_in_dev_shm_is_a_clear_error_before_anything_is_made(monkeypatch):
    import shutil

    from autoassist.assistant import protocol
    from autoassist.errors import UsageError

    usage = shutil.disk_usage("/")
    monkeypatch.setattr(protocol.shutil, "disk_usage", lambda path: usage._replace(
        free=64 * 2**20 if path == protocol.SHM_DIR else usage.free))
    with pytest.raises(protocol.SharedMemoryTooSmall, match=r"--shm-size") as info:
        protocol.SharedState(10_000_000, 48)
    assert isinstance(info.value, UsageError) and isinstance(info.value, MemoryError)
    assert "85.8 MB" in str(info.value) and "64.0 MB" in str(info.value)


def _can_mount_tmpfs() -> bool:
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /dev/shm"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root and unshare to mount a tmpfs")
def test_a_million_instances_train_in_a_64_mb_dev_shm(tmp_path):
    """Docker's default /dev/shm: 1M instances train an epoch; 10M get the clear error."""
    import subprocess
    import sys

    script = tmp_path / "big.py"
    script.write_text(
        "import sys, torch, torch.nn.functional as F\n"
        "from torch.utils.data import DataLoader, TensorDataset\n"
        "import autoassist\n"
        "from autoassist.assistant.protocol import SharedMemoryTooSmall\n"
        "n = int(sys.argv[1])\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x, y = torch.randn(n, 4, generator=g), torch.randint(0, 2, (n,), generator=g)\n"
        "try:\n"
        "    loader = autoassist.wrap(DataLoader(TensorDataset(x, y), batch_size=8192), seed=0,\n"
        "                             sync=True)\n"
        "except SharedMemoryTooSmall as e:\n"
        "    print('TOO SMALL', e); sys.exit(0)\n"
        "model = torch.nn.Linear(4, 2)\n"
        "with loader:\n"
        "    for b in loader:\n"
        "        loader.report(F.cross_entropy(model(b[0]), b[1], reduction='none'))\n"
        "    print('reported', loader.telemetry[-1]['reported_instances'])\n"
    )
    for n, expect in ((1_000_000, "reported 1000000"), (10_000_000, "TOO SMALL")):
        done = subprocess.run(
            ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64m tmpfs /dev/shm && "
             f"exec {sys.executable} {script} {n}"],
            capture_output=True, text=True, timeout=170)
        assert done.returncode == 0, done.stderr[-2000:]
        assert expect in done.stdout, (done.stdout, done.stderr[-2000:])


def test_feature_dir_setting_places_the_feature_table_and_must_exist(tmp_path):
    import os

    from autoassist.errors import UsageError

    x, y = torch.randn(64, 3), torch.randint(0, 2, (64,))
    loader = autoassist.wrap(DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16),
                             feature_dir=tmp_path, assistant="logistic")
    with loader:
        path = loader.engine.state.feature_path
        assert os.path.dirname(path) == str(tmp_path) and os.path.exists(path)
        assert loader.config.feature_dir == str(tmp_path)  # a path-like is kept as a str
    assert not os.path.exists(path)  # removed on close
    with pytest.raises(UsageError, match="feature_dir.*existing directory"):
        autoassist.ShrinkConfig(feature_dir=str(tmp_path / "missing"))


# -- 8. a report of the wrong dtype is refused before anything is queued -----------------------
def test_integer_losses_are_refused_before_queuing_so_a_retry_counts_once():
    x, y = torch.randn(64, 3), torch.randint(0, 2, (64,))
    loader = autoassist.wrap(DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16),
                             sync=True, send_every=8)
    with loader:
        _xb, yb = next(iter(loader))
        for bad in (yb, yb.bool(), yb.to(torch.complex64)):
            with pytest.raises(TypeError, match=r"floating-point losses, got dtype torch\."):
                loader.report(bad)
            assert loader.engine.reported_instances == 0 and not loader.engine._pending
        loss = loader.report(yb.float())  # the retry, as the error says
        assert loss.dtype == torch.float32
        assert loader.engine.reported_instances == 16 and loader.engine._pending.batches == 1


# -- 4. a state that cannot be loaded is refused before anything changes -----------------------
def _set(path, value):
    def corrupt(state):
        *keys, last = path
        for key in keys:
            state = state[key]
        state[last] = value(state[last]) if callable(value) else value
    return corrupt


def _nan_at(index):
    def nan(a):
        a = np.array(a, copy=True)
        a[index] = np.nan
        return a
    return nan


_BAD_STATES = [  # (what is wrong, corruption, what the error names)
    ("a corrupted score", _set(["engine", "published"], lambda p: (_nan_at(5)(p[0]), p[1])),
     r"state\['engine'\]\['published'\]\[0\] \(scores\) holds NaN"),
    ("features of the wrong shape", _set(["engine", "features"], lambda f: f[:, :-1]),
     r"state\['engine'\]\['features'\] has shape .*expected"),
    ("an out-of-range instance id", _set(["engine", "feature_ids"],
                                         lambda i: np.append(i[:-1], 10**6)),
     r"state\['engine'\]\['feature_ids'\] holds 1000000, out of range"),
    ("an out-of-range position", _set(["batches_done"], 10**6),
     r"state\['batches_done'\] is 1000000, but epoch 2 has at most \d+ batches"),
    ("a negative epoch", _set(["epoch"], -1), r"state\['epoch'\] is -1, out of range"),
    ("another Assistant kind", _set(["engine", "assistant", "model", "kind"], "sgd"),
     r"state\['engine'\]\['assistant'\]\['model'\]\['kind'\] is 'sgd'.*pass assistant='sgd'"),
    ("a damaged learner", _set(["engine", "assistant", "model", "w"], _nan_at(0)),
     r"\['assistant'\]\['model'\] does not load into this loader's 'logistic' Assistant"),
    ("plan scores of the wrong size", _set(["engine", "plan", "scores"], lambda a: a[:-1]),
     r"state\['engine'\]\['plan'\]\['scores'\] has shape"),
    ("a damaged generator state", _set(["generator_state"], torch.zeros(3, dtype=torch.uint8)),
     r"state\['generator_state'\] is torch.uint8 of shape \(3,\)"),
    ("a missing key", lambda s: s["engine"].pop("features"),
     r"state\['engine'\]\['features'\] is missing"),
    ("a missing loader key", lambda s: s.pop("epoch_complete"),
     r"state\['epoch_complete'\] is missing"),
]


def test_a_state_that_cannot_be_loaded_changes_nothing_and_training_goes_on():
    import copy

    from autoassist.errors import UsageError

    train = _magic(1200)
    model, opt = _linear_boss()
    loader = autoassist.wrap(DataLoader(train, batch_size=64, shuffle=True), seed=4, sync=True,
                             assistant="logistic")  # a learner: the states hold its features
    with loader:
        _train_epochs(loader, model, opt, [0, 1])
        loader.set_epoch(2)
        for done, (x, y) in enumerate(loader, 1):
            loader.report(F.cross_entropy(model(x), y, reduction="none"))
            if done == 3:
                break
        good = loader.state_dict()
        assert good["engine"]["plan"]["reason"] == "shrink"
        pid = loader.engine.assistant.pid
        position = {k: good[k] for k in ("epoch", "batches_done", "epoch_complete")}
        for what, corrupt, message in _BAD_STATES:
            state = copy.deepcopy(good)
            corrupt(state)
            with pytest.raises(UsageError, match=message):
                loader.load_state_dict(state)
            assert loader.engine.assistant.pid == pid and loader.engine.assistant.alive, what
            now = loader.state_dict()
            assert {k: now[k] for k in position} == position, what
            assert now["engine"]["published"][1] == good["engine"]["published"][1], what
        _train_epochs(loader, model, opt, [3])  # training goes on, with the same Assistant
        tele = loader.telemetry
        assert tele[-1]["epoch"] == 3 and tele[-1]["assistant_restarts"] == 0
        assert loader.engine.assistant.pid == pid
        loader.load_state_dict(good)  # and the good state still loads


def test_keyed_loader_and_engine_refuse_a_bad_state_before_changing_anything():
    import copy

    from torch.utils.data import IterableDataset

    from autoassist.errors import UsageError

    class Stream(IterableDataset):
        def __iter__(self):
            g = torch.Generator().manual_seed(0)
            for i in range(300):
                yield torch.randn(4, generator=g), i % 2, i

    loader = autoassist.wrap(DataLoader(Stream(), batch_size=32), key=lambda item: item[2],
                             num_instances=300, sync=True, seed=1)
    with loader:
        for epoch in range(2):
            loader.set_epoch(epoch)
            for x, y, _ in loader:
                loader.report(x.pow(2).sum(1) + y)
        good = loader.state_dict()
        pid = loader.engine.assistant.pid
        for corrupt, message in [
            (_set(["engine", "assistant", "model", "kind"], "mlp"), "pass assistant='mlp'"),
            (lambda s: s["engine"].pop("plan"), r"state\['engine'\]\['plan'\] is missing"),
            (_set(["engine", "pending"], ([np.array([0, 1])], [np.ones(3)], 1)),
             r"state\['engine'\]\['pending'\]\[1\]\[0\] has shape \(3,\), expected \(2\)"),
        ]:
            state = copy.deepcopy(good)
            corrupt(state)
            with pytest.raises(UsageError, match=message):
                loader.load_state_dict(state)
            assert loader.engine.assistant.pid == pid and loader.engine.assistant.alive
        engine_state = copy.deepcopy(good["engine"])
        engine_state["published"] = (engine_state["published"][0][:10], 1)
        with pytest.raises(ValueError, match=r"engine state\['published'\]\[0\] \(scores\) has"):
            loader.engine.load_state_dict(engine_state)  # the engine checks on its own too
        assert loader.engine.assistant.pid == pid
        loader.set_epoch(2)
        batches = sum(1 for x, y, _ in loader if loader.report(x.pow(2).sum(1) + y) is not None)
        assert batches > 0 and loader.telemetry[-1]["assistant_restarts"] == 0


# -- 5, 7, 10. misuse of the iteration: peeks, two at once, skipped reports, odd epochs --------
def _ids_loader(n=100, batch_size=10, **options):
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(n, 3, generator=g), torch.arange(n))
    base = DataLoader(data, batch_size=batch_size, shuffle=True, **options.pop("dl", {}))
    return autoassist.wrap(base, sync=True, seed=5, **options)


def _epoch(loader, report=lambda xb, idx: True, stop_after=None):
    seen = []
    for xb, idx in loader:
        seen.append(idx)
        if report(xb, idx):
            loader.report(xb.pow(2).sum(1))
        if stop_after is not None and len(seen) == stop_after:
            break
    return seen


def test_peeking_a_batch_before_training_does_not_drop_it_from_the_epoch():
    with _ids_loader() as loader:
        peek = next(iter(loader))  # a look at one batch; that iteration is dropped at once
        seen = _epoch(loader)
        record = loader.telemetry[-1]
    assert sorted(torch.cat(seen).tolist()) == list(range(100))  # was: the peeked batch missing
    assert torch.equal(peek[1], seen[0])  # the epoch started again from its first batch
    assert record["epoch"] == 0 and record["batches"] == 10
    assert record["abandoned_batches"] == 1 and record["reported_instances"] == 100
    assert record["yielded_instances"] == 100 and record["unreported_instances"] == 0


def test_two_iterations_at_once_are_a_clear_error_and_the_loader_goes_on():
    with _ids_loader() as loader:
        with pytest.raises(RuntimeError, match="already being iterated.*wrong instances"):
            for _ in zip(loader, loader, strict=True):  # was: IndexError (empty deque)
                pass
        first = iter(loader)
        next(first)
        with pytest.raises(RuntimeError, match="already being iterated"):
            next(iter(loader))
        del first
        seen = _epoch(loader)
        assert sorted(torch.cat(seen).tolist()) == list(range(100))
        assert loader.telemetry[-1]["batches"] == 10
        from tqdm.auto import tqdm  # makes an iterator it never starts, then iterates afresh

        seen = []
        for xb, idx in tqdm(loader, disable=True):  # epoch 1: shrinking
            seen.append(idx)
            loader.report(xb.pow(2).sum(1))
        record = loader.telemetry[-1]
        assert record["epoch"] == 1 and record["batches"] == len(seen) > 0
        assert record["kept"] == record["yielded_instances"] == len(torch.cat(seen))


def test_skipped_reports_are_recorded_and_warned_once():
    with _ids_loader() as loader:
        skip = iter(range(1))  # the first batch goes unreported
        with pytest.warns(RuntimeWarning, match=r"10 instances of epoch 0 were yielded but"):
            _epoch(loader, report=lambda xb, idx: next(skip, None) is None)
        assert loader.telemetry[-1]["unreported_instances"] == 10
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # once per loader
            skip = iter(range(2))
            _epoch(loader, report=lambda xb, idx: next(skip, None) is None)
        assert loader.telemetry[-1]["unreported_instances"] == 20


def test_an_epoch_number_set_twice_is_recorded_and_warned():
    with _ids_loader() as loader:
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            _epoch(loader)
        with pytest.warns(RuntimeWarning, match=r"set_epoch\(1\) for an epoch that already ran"):
            loader.set_epoch(1)
        _epoch(loader)
        tele = loader.telemetry
    assert [t["epoch"] for t in tele] == [0, 1, 1]
    assert [t["repeated_epoch"] for t in tele] == [False, False, True]


def test_a_broken_off_epoch_is_ended_recorded_and_warned():
    with _ids_loader(warmup_epochs=1, floor=0.3) as loader:
        loader.set_epoch(0)
        _epoch(loader)
        loader.set_epoch(1)
        _epoch(loader, stop_after=2)  # a step budget per epoch
        with pytest.warns(RuntimeWarning, match=r"epoch 1 ended after 2 batches"):
            loader.set_epoch(2)
        _epoch(loader)
        tele = loader.telemetry
    assert [t["epoch"] for t in tele] == [0, 1, 2]  # was: epoch 1 had no record at all
    assert [t["broken_off"] for t in tele] == [False, True, False]
    assert tele[1]["batches"] == 2 and tele[1]["reported_instances"] == 20
    assert tele[1]["unreported_instances"] == 0


# -- 6, 10. what a sampler draws is what len() and the telemetry count --------------------------
@pytest.mark.parametrize("kind", ["subset", "weighted"])
def test_subset_and_weighted_samplers_count_what_they_draw(kind):
    from torch.utils.data import SubsetRandomSampler, TensorDataset, WeightedRandomSampler

    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 3, generator=g)
    loss = F.softplus(3 * x[:, 0])
    if kind == "subset":
        sampler, size = SubsetRandomSampler(range(0, 100, 2)), 50
    else:
        weights = torch.ones(100)
        weights[:40] = 0.0  # never drawn
        sampler, size = WeightedRandomSampler(weights, num_samples=60, replacement=True), 60
    base = DataLoader(TensorDataset(x, torch.arange(100)), batch_size=10, sampler=sampler)
    with autoassist.wrap(base,
                         assistant="logistic", features=x, sync=True, warmup_epochs=1, floor=0.2,
                         seed=1) as loader:
        for epoch in range(4):
            loader.set_epoch(epoch)
            expected = len(loader)
            drawn = []
            for _, idx in loader:
                drawn.append(idx)
                loader.report(loss[idx])
            drawn = torch.cat(drawn)
            record = loader.telemetry[-1]
            assert -(-len(drawn) // 10) == expected  # was: counted over all 100 (len 10 vs 6)
            assert record["epoch_instances"] == size and record["kept"] == len(drawn)
            assert record["kept_fraction"] == pytest.approx(len(drawn) / size)
            if kind == "subset":
                assert (drawn % 2 == 0).all() and len(set(drawn.tolist())) == len(drawn)
            else:
                assert (drawn >= 40).all()
        assert record["reason"] == "shrink" and record["kept"] < size  # it did shrink


@pytest.mark.parametrize("keyed", [False, True])
def test_the_drop_last_tail_is_recorded_not_counted_as_trained(keyed):
    from torch.utils.data import IterableDataset, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 3, generator=g)

    class Stream(IterableDataset):
        def __iter__(self):
            for i in range(100):
                yield x[i], i

    if keyed:
        base = DataLoader(Stream(), batch_size=32, drop_last=True)
        options = dict(key=lambda item: item[1], num_instances=100)
    else:
        base = DataLoader(TensorDataset(x, torch.arange(100)), batch_size=32, shuffle=True,
                          drop_last=True)
        options = {}
    with autoassist.wrap(base, assistant="logistic", features=x, sync=True, warmup_epochs=1,
                         floor=0.2, seed=1,
                         **options) as loader:
        for epoch in range(3):
            loader.set_epoch(epoch)
            yielded = 0
            for xb, idx in loader:
                yielded += len(idx)
                loader.report(F.softplus(3 * xb[:, 0]))
            record = loader.telemetry[-1]
            assert record["drop_last_tail"] == record["kept"] - yielded < 32
            assert record["yielded_instances"] == yielded == 32 * record["batches"]
        assert record["reason"] == "shrink" and record["kept"] < 100
    assert loader.telemetry[0]["drop_last_tail"] == 4  # 100 = 3 x 32 + 4


# -- 9. persistent workers end with the loader ---------------------------------------------------
@pytest.mark.parametrize("how", ["close", "del", "del after a peek"])
def test_persistent_workers_end_with_close_and_with_del(how):
    import gc

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(200, 3, generator=g), torch.arange(200))
    loader = autoassist.wrap(DataLoader(data, batch_size=20, shuffle=True, num_workers=2,
                                        persistent_workers=True), sync=True, seed=1)
    for epoch in range(2):
        loader.set_epoch(epoch)
        for xb, _ in loader:
            loader.report(xb.pow(2).sum(1))
    if how == "del after a peek":
        next(iter(loader))  # the workers' iterator stays suspended mid-epoch
    workers = [w.pid for w in loader._loader._iterator._workers]
    pids = [*workers, loader.engine.assistant.pid]
    assert len(workers) == 2 and not any(_gone(pid) for pid in pids)
    gc.collect()
    gc.disable()  # only reference counting: a cycle would keep everything alive
    try:
        if how == "close":
            loader.close()
        else:
            del loader  # no close(): nothing may keep the loader alive
        left = [pid for pid in pids if not _gone(pid)]
    finally:
        gc.enable()
    assert not left, f"processes outlived the loader: {left} of workers {workers}"
