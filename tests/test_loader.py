"""The shrinking DataLoader on real Fashion-MNIST: batches, selection, resume, failures."""

import os
import signal
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset, TensorDataset, WeightedRandomSampler

import autoassist
from autoassist.bench.models import small_cnn
from autoassist.kernels import ema_stream


@pytest.fixture(scope="module")
def small_train(fmnist_train):
    return Subset(fmnist_train, range(2000))


def _batches(loader, epochs=1):
    out = []
    for epoch in range(epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for x, y in loader:
            out.append((x.clone(), y.clone()))
            if hasattr(loader, "report"):
                loader.report(torch.ones(len(y)))
    return out


@pytest.mark.parametrize("num_workers", [0, 2])
def test_keep_all_batches_identical_to_original(small_train, num_workers):
    def make():
        gen = torch.Generator().manual_seed(7)
        return DataLoader(small_train, batch_size=64, shuffle=True, generator=gen,
                          num_workers=num_workers, drop_last=False)

    plain = []
    base = make()
    for _ in range(3):  # the first epoch checks the one-call draw, the others use it
        plain += [(x.clone(), y.clone()) for x, y in base]
    with autoassist.wrap(make(), floor=1.0) as loader:
        wrapped = _batches(loader, epochs=3)
        assert loader._whole_order_ok is True
    assert len(plain) == len(wrapped) == 3 * 32
    for (x0, y0), (x1, y1) in zip(plain, wrapped, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_an_epoch_order_drawn_otherwise_than_by_the_sampler_falls_back_to_it(small_train,
                                                                           monkeypatch):
    """If the one-call draw of a RandomSampler's order ever differs from the sampler's own
    iteration (another torch), the loader notices on the first epoch and iterates the
    sampler from then on: the user's order, whatever torch does."""
    import autoassist.pipelines.dataloader as dl

    real = dl._whole_order
    monkeypatch.setattr(dl, "_whole_order",
                        lambda sampler, n: None if (o := real(sampler, n)) is None else o[::-1])

    def make():
        return DataLoader(small_train, batch_size=64, shuffle=True,
                          generator=torch.Generator().manual_seed(3))

    base = make()
    plain = [y.clone() for _ in range(2) for _x, y in base]
    with autoassist.wrap(make(), floor=1.0) as loader:
        wrapped = [y for _x, y in _batches(loader, epochs=2)]
        assert loader._whole_order_ok is False
    assert all(torch.equal(a, b) for a, b in zip(plain, wrapped, strict=True))


def test_warmup_epoch_sees_every_instance_once(small_train):
    base = DataLoader(small_train, batch_size=100, shuffle=True)
    with autoassist.wrap(base, warmup_epochs=1) as loader:
        seen = []
        for _x, y in loader:
            seen.append(loader._last_ids.copy())
            loader.report(torch.rand(len(y)))
        seen = np.concatenate(seen)
    assert sorted(seen.tolist()) == list(range(2000))


def _train_epochs(loader, model, epochs, lr=0.05):
    """Train; returns each epoch's reported losses, in the order the Assistant received them."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    reported = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        reported.append([])
        for x, y in loader:
            per_sample = F.cross_entropy(model(x), y, reduction="none")
            reported[-1].append(per_sample.detach().numpy().copy())
            loss = loader.report(per_sample)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return [np.concatenate(r) for r in reported]


def test_assistant_learns_and_selection_accounts_for_every_instance(fmnist_train):
    data = Subset(fmnist_train, range(6000))
    torch.manual_seed(0)
    model = small_cnn(width=8)
    gen = torch.Generator().manual_seed(0)
    base = DataLoader(data, batch_size=100, shuffle=True, generator=gen)
    with autoassist.wrap(base, floor=0.2, sync=True, seed=3, assistant="logistic") as loader:
        reported = _train_epochs(loader, model, epochs=2)
        # epoch 2 is a shrinking epoch: check what it yields against its plan
        loader.set_epoch(2)
        ids = []
        for _x, y in loader:
            ids.append(loader._last_ids.copy())
            loader.report(torch.ones(len(y)))
        ids = np.concatenate(ids)
        plan = loader.engine.current
        assert plan.reason == "shrink"
        kept = np.flatnonzero(plan.mask)
        assert sorted(ids.tolist()) == kept.tolist()  # each kept instance exactly once
        shrunk = np.setdiff1d(np.arange(6000), ids)
        assert len(kept) + len(shrunk) == 6000
        assert 0.2 * 6000 < len(kept) < 0.95 * 6000
        tele = loader.telemetry
        assert [t["epoch"] for t in tele] == [0, 1, 2]
        assert tele[2]["kept"] == len(kept)
        # better than always guessing the more common label: the Assistant's label rule
        # (loss above the running mean) replayed on the same losses gives the majority rate
        labels, mean = ema_stream(np.concatenate(reported), float("nan"),
                                  loader.engine.config.label_ema)
        assert mean == pytest.approx(tele[1]["assistant_loss_mean"], rel=1e-5)  # same replay
        positive = labels[6000:].mean()  # epoch 1: the window the accuracy averages over
        majority = max(positive, 1 - positive)
        assert 0.6 < majority < 0.8  # informative instances are the minority (~0.3)
        assert tele[1]["assistant_accuracy"] > majority + 0.03
        # the Assistant's scores rank truly hard instances (high current loss) higher
        with torch.no_grad():
            x = torch.stack([data[i][0] for i in range(6000)])
            y = torch.stack([data[i][1] for i in range(6000)])
            losses = F.cross_entropy(model.eval()(x), y, reduction="none").numpy()
        scores = plan.scores
        hard = losses > np.median(losses)
        assert scores[hard].mean() > scores[~hard].mean() + 0.05


@pytest.mark.parametrize("rank_power", [None, 3.0])
def test_resume_mid_epoch_is_bit_identical(small_train, rank_power):
    def make():
        return DataLoader(small_train, batch_size=50, shuffle=True)  # no generator: ours is seeded

    def run(loader, epochs_batches, start_epoch=0, skip_set_epoch=False):
        got = []
        for epoch in range(start_epoch, 3):
            if not (skip_set_epoch and epoch == start_epoch):
                loader.set_epoch(epoch)
            for x, y in loader:
                got.append((loader._last_ids.copy(), x.clone()))
                loader.report(x.flatten(1).mean(1) ** 2 + y.float())  # deterministic "losses"
                if epochs_batches is not None and len(got) == epochs_batches:
                    return got, loader.state_dict()
        return got, None

    opts = dict(floor=0.3, sync=True, seed=11, warmup_epochs=1, rank_power=rank_power)
    with autoassist.wrap(make(), **opts) as a:
        full, _ = run(a, None)
    with autoassist.wrap(make(), **opts) as b:
        first, state = run(b, 40 + 17)  # epoch 0 has 40 batches: stop inside epoch 1
    with autoassist.wrap(make(), **opts) as c:
        c.load_state_dict(state)
        rest, _ = run(c, None, start_epoch=1, skip_set_epoch=True)
    resumed = first + rest
    assert len(resumed) == len(full)
    for (i0, x0), (i1, x1) in zip(full, resumed, strict=True):
        assert np.array_equal(i0, i1) and torch.equal(x0, x1)
    assert len(full) < 3 * 40  # shrinking happened


def test_assistant_death_warns_and_restarts(small_train):
    base = DataLoader(small_train, batch_size=100, shuffle=True)
    with autoassist.wrap(base, floor=0.3, sync=True) as loader:
        _batches(loader, epochs=1)
        proc = loader.engine.assistant
        old_pid = proc.pid
        os.kill(old_pid, signal.SIGKILL)  # as the OOM killer would
        proc._proc.join(10)
        assert not proc.alive
        with pytest.warns(RuntimeWarning, match="Assistant process died"):
            loader.set_epoch(1)
            batches = list(loader)
        assert proc.alive and proc.pid != old_pid and proc.restarts == 1
        assert len(batches) > 0


def test_bad_inputs_have_clear_errors(small_train):
    base = DataLoader(small_train, batch_size=10)
    with autoassist.wrap(base) as loader:
        with pytest.raises(RuntimeError, match="before any batch"):
            loader.report(torch.ones(10))
        it = iter(loader)
        _x, y = next(it)
        with pytest.raises(ValueError, match="got 9 losses for a batch of 10"):
            loader.report(torch.ones(9))
        with pytest.raises(ValueError, match="1-D"):
            loader.report(torch.ones(10, 2))
        with pytest.raises(FloatingPointError, match="non-finite"):
            loader.report(torch.tensor([float("nan")] + [1.0] * 9))
        with pytest.raises(IndexError, match="dataset has 2000 instances"):
            loader.report(torch.ones(2), ids=[0, 2000])
        loader.report(torch.ones(10))
        with pytest.raises(RuntimeError, match="twice"):
            loader.report(torch.ones(10))
        state = loader.state_dict()
    other = DataLoader(Subset(small_train, range(1000)), batch_size=10)
    with autoassist.wrap(other) as loader2:
        with pytest.raises(ValueError, match="2000 instances but the wrapped dataset has 1000"):
            loader2.load_state_dict(state)
    with pytest.raises(ValueError, match="floor"):
        autoassist.wrap(base, floor=1.5)
    with pytest.raises(ValueError, match="anneal_epochs"):
        autoassist.wrap(base, anneal_epochs=2)
    with pytest.raises(TypeError, match="DataLoader"):
        autoassist.wrap([1, 2, 3])


def test_weighted_sampler_and_custom_batch_sampler():
    data = TensorDataset(torch.randn(300, 5), torch.randint(0, 3, (300,)))
    weights = torch.ones(300)
    weights[:100] = 0.0  # never drawn
    sampler = WeightedRandomSampler(weights, num_samples=300, replacement=True)
    with autoassist.wrap(DataLoader(data, batch_size=30, sampler=sampler), floor=1.0) as loader:
        ids = []
        for _x, y in loader:
            ids.append(loader._last_ids)
            loader.report(torch.ones(len(y)))
        ids = np.concatenate(ids)
    assert len(ids) == 300 and ids.min() >= 100

    class EvenOdd(torch.utils.data.Sampler):
        def __iter__(self):
            yield list(range(0, 300, 2))
            yield list(range(1, 300, 2))

        def __len__(self):
            return 2

    loader = autoassist.wrap(DataLoader(data, batch_sampler=EvenOdd()), floor=1.0)
    got = []
    for _x, _y in loader:
        got.append(loader._last_ids.copy())
        loader.report(torch.ones(150))
    loader.close()
    assert [g[:3].tolist() for g in got] == [[0, 2, 4], [1, 3, 5]]


def test_custom_batch_sampler_batches_are_filtered_by_the_keep_mask_while_shrinking():
    """A user's own batching (here: buckets of similar "length", as for sequences) keeps its
    grouping and order when shrinking; only the dropped instances leave each batch."""
    gen = torch.Generator().manual_seed(0)
    length = torch.randint(0, 50, (600,), generator=gen)
    data = TensorDataset(torch.randn(600, 5, generator=gen), length)

    class Buckets(torch.utils.data.Sampler):
        def __init__(self):
            self.epoch = 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __iter__(self):
            order = torch.randperm(600, generator=torch.Generator().manual_seed(self.epoch))
            by_length = order[torch.argsort(length[order], stable=True)].tolist()
            batches = [by_length[i : i + 40] for i in range(0, 600, 40)]
            yield from (batches[i] for i in torch.randperm(len(batches)).tolist())

        def __len__(self):
            return 15

    buckets = Buckets()
    with autoassist.wrap(DataLoader(data, batch_sampler=buckets), floor=0.2, sync=True,
                         warmup_epochs=1, seed=4) as loader:
        for epoch in range(3):
            loader.set_epoch(epoch)
            got = []
            for _x, y in loader:
                got.append(loader._last_ids.copy())
                loader.report((y.float() > 25).float() + 0.1)  # long ones stay informative
            plan = loader.engine.current
        users = [np.array(b) for b in buckets]  # epoch 2's buckets, unfiltered ...
    assert plan.reason == "shrink" and 0 < plan.kept < 600
    got_sets = {tuple(sorted(g.tolist())) for g in got}
    want = [b[plan.mask[b]] for b in users]  # ... filtered by the plan's keep mask, in order
    assert got_sets == {tuple(sorted(w.tolist())) for w in want if len(w)}
    for g in got:  # each yielded batch is one bucket's kept instances, in the bucket's order
        match = next(w for w in want if len(w) == len(g) and set(w.tolist()) == set(g.tolist()))
        assert np.array_equal(g, match)
    assert sorted(np.concatenate(got).tolist()) == np.flatnonzero(plan.mask).tolist()
    long = (length > 25).numpy()
    assert plan.mask[long].mean() > plan.mask[~long].mean() + 0.1  # chosen by the Assistant


@pytest.mark.parametrize("rank_power", [None, 3.0])
def test_reweighting_is_unbiased_on_average(rank_power):
    data = TensorDataset(torch.randn(4000, 5), torch.randint(0, 3, (4000,)))
    base = DataLoader(data, batch_size=4000)
    with autoassist.wrap(base, reweight=True, floor=0.3, warmup_epochs=0, sync=True,
                         rank_power=rank_power) as loader:
        # publish uneven scores by hand, then check E[weighted mean] = full-data mean
        scores = np.linspace(0, 1, 4000, dtype=np.float32)
        values = torch.linspace(1, 2, 4000)
        estimates, plain = [], []
        for epoch in range(30):
            loader.engine.state.publish(scores)  # sync: the Assistant published before this
            loader.set_epoch(epoch)
            for _x, _y in loader:
                ids = loader._last_ids
                plain.append(float(values[ids].mean()))
                estimates.append(float(loader.report(values[ids])))
    assert abs(np.mean(estimates) - float(values.mean())) < 0.01
    assert np.mean(plain) > float(values.mean()) + 0.03  # without weights: biased to high scores


def test_rank_power_selects_by_the_assistants_order_not_its_calibration():
    data = TensorDataset(torch.randn(6000, 5), torch.randint(0, 3, (6000,)))
    order = np.random.default_rng(0).permutation(6000)
    kept = {}
    for name, scores in {"spread": order / 6000, "bunched": 0.5 + 0.001 * order / 6000}.items():
        base = DataLoader(data, batch_size=500)
        with autoassist.wrap(base, floor=0.2, rank_power=3, warmup_epochs=0, sync=True) as loader:
            loader.engine.state.publish(scores.astype(np.float32))
            loader.set_epoch(0)
            kept[name] = np.concatenate([loader._last_ids.copy() for _ in loader])
    assert np.array_equal(kept["spread"], kept["bunched"])  # same order, same selection
    top = np.isin(kept["bunched"], np.flatnonzero(order >= 5400)).sum() / 600  # top tenth
    bottom = np.isin(kept["bunched"], np.flatnonzero(order < 600)).sum() / 600
    assert len(kept["bunched"]) / 6000 == pytest.approx(0.2 + 0.8 / 4, abs=0.02)
    assert top > 0.85 and bottom < 0.25  # P ~ 0.2 + 0.8 * u**3: ~0.9 vs ~0.2


def test_close_is_idempotent_and_stops_the_assistant(small_train):
    loader = autoassist.wrap(DataLoader(small_train, batch_size=10))
    proc = loader.engine.assistant
    assert proc.alive
    loader.close()
    loader.close()
    assert not proc.alive
    with pytest.raises(RuntimeError, match="closed"), warnings.catch_warnings():
        iter(loader).__next__()


@pytest.mark.parametrize("persistent", [False, True])
def test_shrinking_with_workers_yields_exactly_the_kept_set(small_train, persistent,
                                                              monkeypatch):
    # the parent runs the parallel selection kernel before the workers fork: they never call it
    # (kernel_threads: the Numba kernel even at 2000 instances, where "auto" would use NumPy)
    import numba

    from autoassist.kernels import select_jit

    kernel_calls = []
    kernel = select_jit.keep_mask

    def counted(*args, **kwargs):
        kernel_calls.append(args[0].shape)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(select_jit, "keep_mask", counted)
    base = DataLoader(small_train, batch_size=64, shuffle=True, num_workers=2,
                      persistent_workers=persistent)
    with autoassist.wrap(base, floor=0.2, sync=True, seed=2,
                         kernel_threads=min(2, numba.config.NUMBA_NUM_THREADS)) as loader:
        for epoch in range(3):
            loader.set_epoch(epoch)
            ids, labels = [], []
            for _x, y in loader:
                ids.append(loader._last_ids.copy())
                labels.append(y)
                loader.report(y.float() + 1.0)  # class-dependent "losses": learnable
            ids = np.concatenate(ids)
            plan = loader.engine.current
            expected = np.arange(2000) if plan.mask is None else np.flatnonzero(plan.mask)
            assert sorted(ids.tolist()) == expected.tolist()
            # the labels delivered by the workers belong to the ids the wrapper recorded
            targets = torch.stack([small_train[int(i)][1] for i in ids])
            assert torch.equal(torch.cat(labels), targets)
        assert plan.reason == "shrink" and plan.kept < 2000
        assert kernel_calls == [(2000,), (2000,)]  # the Numba kernel chose epochs 1 and 2


def test_stateful_dataloader_is_wrapped_and_resumes(small_train):
    from torchdata.stateful_dataloader import StatefulDataLoader

    # StatefulDataLoader's RandomSampler seeds itself from torch's global RNG: each new loader
    # shuffles differently, so the resumed run must restore the order from our state
    opts = dict(floor=0.3, sync=True, seed=5)
    with autoassist.wrap(StatefulDataLoader(small_train, batch_size=100, shuffle=True),
                         **opts) as a:
        assert a._sampler is not None  # its batching is recognised as the default one
        full, state = [], None
        for epoch in range(2):
            a.set_epoch(epoch)
            for x, y in a:
                full.append((a._last_ids.copy(), x.clone()))
                a.report(y.float())
                if len(full) == 7:
                    state = a.state_dict()
    with autoassist.wrap(StatefulDataLoader(small_train, batch_size=100, shuffle=True),
                         **opts) as c:
        c.load_state_dict(state)
        tail = []
        for epoch in (0, 1):
            if epoch:
                c.set_epoch(epoch)
            for x, y in c:
                tail.append((c._last_ids.copy(), x.clone()))
                c.report(y.float())
    assert len(tail) == len(full) - 7 and len(full) < 40  # epoch 1 shrank
    for (i0, x0), (i1, x1) in zip(full[7:], tail, strict=True):
        assert np.array_equal(i0, i1) and torch.equal(x0, x1)


def test_telemetry_goes_to_tensorboard(small_train, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    base = DataLoader(small_train, batch_size=100, shuffle=True)
    with autoassist.wrap(base, floor=0.3, sync=True, tensorboard=str(tmp_path)) as loader:
        _batches(loader, epochs=2)
        tele = loader.telemetry
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    kept = events.Scalars("autoassist/kept_fraction")
    assert [e.step for e in kept] == [0, 1]
    assert [e.value for e in kept] == pytest.approx([t["kept_fraction"] for t in tele])
    assert "autoassist/queue_drops" in events.Tags()["scalars"]


_THREADS_SCRIPT = """
import sys, torch
from torch.utils.data import DataLoader
import autoassist
from autoassist.bench.datasets import FashionMNIST
torch.set_num_threads(1)
loader = autoassist.wrap(DataLoader(FashionMNIST("train", root=sys.argv[1], limit=512),
                                    batch_size=64), floor=0.3, warmup_epochs=1, sync=True, seed=0,
                         kernel_threads=2)  # the Numba kernel (512 < its "auto" threshold)
kept = []
for epoch in range(2):
    loader.set_epoch(epoch)
    for x, y in loader:
        loader.report(torch.rand(len(y)))
    kept.append(loader.telemetry[-1]["kept"])
loader.close()
import numba
print(torch.get_num_threads(), numba.threading_layer(), kept)  # layer: raises if none started
"""


def test_shrinking_leaves_the_users_torch_thread_count_alone(fmnist_dir):
    """Numba's first parallel kernel starts its OpenMP pool, which shares libgomp with torch and
    used to reset ``torch.set_num_threads(1)`` to every core. Fresh process: first launch."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, str(fmnist_dir)],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NUMBA_NUM_THREADS": "2"})
    assert out.returncode == 0, out.stderr[-3000:]
    threads, layer, kept = out.stdout.split(maxsplit=2)
    assert layer in ("omp", "tbb", "workqueue")  # Numba's parallel kernel started its threads
    assert kept.strip() != "[512, 512]"  # and selected in epoch 2
    assert threads == "1"


_UNGUARDED_SCRIPT = """
import os, sys, torch
from torch.utils.data import DataLoader
import autoassist
from autoassist.bench.datasets import FashionMNIST
with open(sys.argv[2], "a") as marker:  # every process that runs this file's top level
    marker.write(f"{os.getpid()}\\n")
loader = autoassist.wrap(DataLoader(FashionMNIST("train", root=sys.argv[1], limit=512),
                                    batch_size=64), floor=0.3, sync=True, seed=0)
for epoch in range(2):
    loader.set_epoch(epoch)
    for x, y in loader:
        loader.report(torch.rand(len(y)))
tele = loader.telemetry[-1]
loader.close()
print(tele["assistant_restarts"], tele["score_version"], tele["kept"])
"""


def test_a_script_without_a_main_guard_works_and_is_not_rerun(fmnist_dir, tmp_path):
    """Spawn re-runs the caller's main module in the child unless it is hidden; an unguarded
    script used to crash the Assistant at start (and run its own top level once per try)."""
    import subprocess
    import sys

    script, marker = tmp_path / "train.py", tmp_path / "ran.txt"
    script.write_text(_UNGUARDED_SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(fmnist_dir), str(marker)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    restarts, version, kept = (int(v) for v in out.stdout.split())
    assert restarts == 0, out.stderr[-3000:]
    assert version >= 1 and kept < 512  # the Assistant scored and epoch 2 shrank
    assert len(marker.read_text().split()) == 1  # only the script's own process ran it


# -- the adapters' base (pipelines/base.py) -----------------------------------------------------
def test_the_loader_base_names_what_a_subclass_forgot():
    from autoassist.config import ShrinkConfig
    from autoassist.pipelines.base import EngineLoader

    class NoEpochs(EngineLoader):  # started its engine, but says nothing of an epoch's batches
        def __init__(self):
            super().__init__(10, ShrinkConfig())

    class NoBase(EngineLoader):
        def __init__(self):  # never started the engine
            pass

    with NoEpochs() as loader, pytest.raises(NotImplementedError, match=r"_iter_epoch\("):
        next(iter(loader))
    with pytest.raises(RuntimeError, match=r"must call EngineLoader.__init__"):
        next(iter(NoBase()))


def test_the_batch_sampler_is_handed_what_it_needs():
    from autoassist.pipelines.dataloader import _ShrinkBatchSampler

    batches = [np.array([0, 1]), np.array([4]), np.array([7, 9])]
    sampler = _ShrinkBatchSampler(lambda: iter(batches), length=lambda: len(batches))
    pushed = []
    sampler.next_iteration(skip=1, push=pushed.append)  # a resumed epoch: one batch done
    assert list(sampler) == [[4], [7, 9]] and [p.tolist() for p in pushed] == [[4], [7, 9]]
    assert len(list(sampler)) == len(sampler) == 3  # the skip was for one iteration only


def test_adapters_import_no_private_names_of_each_other():
    """What the adapters share lives in pipelines/base.py under public names."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "pipelines"
    private = [
        f"{path.name}:{node.lineno} {node.module}.{alias.name}"
        for path in root.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("autoassist.")
        for alias in node.names if alias.name.startswith("_")
    ]
    assert not private, private


def test_len_never_plans_and_after_set_epoch_is_what_the_epoch_yields(monkeypatch):
    """Planning can start collectives (DDP) and starts the epoch's clock, so ``len()`` only
    reads a plan: before ``set_epoch`` it is the unshrunk count, afterwards the shrunk one."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 4, generator=gen)
    base = DataLoader(TensorDataset(x, torch.arange(1000)), batch_size=64, shuffle=True)
    loss = torch.nn.functional.softplus(3 * x[:, 0])
    with autoassist.wrap(base, assistant="logistic", features=x, sync=True, warmup_epochs=1,
                         floor=0.2) as loader:
        planned = []
        real_plan = loader.engine.plan
        monkeypatch.setattr(loader.engine, "plan", lambda e: planned.append(e) or real_plan(e))
        assert len(loader) == len(base) and planned == []  # nothing planned yet: unshrunk
        for epoch in range(3):
            loader.set_epoch(epoch)
            assert planned[-1] == epoch  # planned at set_epoch, as DistributedSampler
            calls = len(planned)
            expected = len(loader)
            assert len(planned) == calls  # len() did not plan
            batches = 0
            for _x, idx in loader:
                loader.report(loss[idx])
                batches += 1
            assert batches == expected
            assert len(loader) == expected  # the finished epoch's count, still without a plan
        assert loader.telemetry[-1]["reason"] == "shrink" and expected < len(base)
    # iter() without set_epoch plans the next epoch itself
    with autoassist.wrap(base, assistant="logistic", features=x, sync=True, warmup_epochs=0,
                         floor=0.2) as loader:
        assert sum(1 for _ in loader) == len(loader) == len(base)  # no scores yet: all kept
