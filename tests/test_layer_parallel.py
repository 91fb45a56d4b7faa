"""Auxiliary-variable Boss solvers on real Fashion-MNIST: the serial-parallel hybrid (penalty and
augmented Lagrangian, paper C) and Stochastic Block-ADMM with DeepFacto's NMF block (paper D)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoassist.boss.block_admm import ADMMConfig, BlockADMM, NMFBlock
from autoassist.boss.filters import AvgPoolFilter
from autoassist.boss.hybrid import HybridConfig, HybridTrainer, augment
from autoassist.boss.resnet import resnet_blocks


@pytest.fixture(scope="module")
def data(fmnist_dir):
    from autoassist.bench.datasets import FashionMNIST

    train = FashionMNIST("train", root=fmnist_dir, limit=1536)
    test = FashionMNIST("test", root=fmnist_dir, limit=2000)
    return train.images, train.labels, test.images, test.labels


def _blocks(seed=0, **kw):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return resnet_blocks(**{"blocks": 3, "units_per_block": 1, "width": 8, **kw})


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_downsampling_filter_and_its_adjoint_pass_the_dot_product_test():
    gen = torch.Generator().manual_seed(0)
    P = AvgPoolFilter(2)
    a = torch.randn(3, 4, 14, 14, generator=gen, dtype=torch.float64)
    z = torch.randn(3, 4, 7, 7, generator=gen, dtype=torch.float64)
    lhs, rhs = (P.down(a) * z).sum(), (a * P.adjoint(z)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-12)
    assert P.coarse_shape((4, 14, 14)) == (4, 7, 7) and P.up(z).shape == a.shape
    assert torch.equal(P.down(P.up(z)), z)  # upsampling is a right inverse of pooling
    with pytest.raises(ValueError, match="divisible"):
        P.down(torch.zeros(1, 1, 7, 7))


@pytest.mark.parametrize("solver", ["penalty", "al"])
def test_constraint_residuals_shrink_over_sweeps(data, one_thread, solver):
    x, y, _, _ = data
    cfg = HybridConfig(solver=solver, batch_size=256, filter=2, rho=1.0, lr=0.05, seed=0)
    trainer = HybridTrainer(_blocks(), x[:256], y[:256], cfg)
    ids = torch.arange(256)
    curve = []
    for _ in range(30):  # repeated sweeps on one real batch
        out = trainer.sweep(ids)
        curve.append(out["residuals"])
        if solver == "penalty":
            trainer.rho *= 1.1  # the penalty method's continuation
    early = [max(c[k] for c in curve[1:6]) for k in range(2)]
    late = [curve[-1][k] for k in range(2)]
    assert all(lt < 0.5 * e for lt, e in zip(late, early, strict=True)), (early, late)
    assert all(e > 0 for e in early)  # the sweeps did open residuals first


def test_block_admm_with_one_block_is_plain_sgd(data, one_thread):
    x, y, _, _ = data
    x, y = x[:512], y[:512]

    def model():
        with torch.random.fork_rng():
            torch.manual_seed(1)
            return nn.Sequential(nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(),
                                               nn.Linear(64, 10)))

    admm = BlockADMM(model(), x, y, ADMMConfig(epochs=2, batch_size=64, lr=0.05, seed=4))
    admm.fit(progress=False)
    ref = model()
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(4)
    for _ in range(2):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), 64):
            ids = order[start:start + 64]
            loss = F.cross_entropy(ref(x[ids]), y[ids])
            opt.zero_grad()
            loss.backward()
            opt.step()
    for (name, a), b in zip(admm.blocks.state_dict().items(), ref.state_dict().values(),
                            strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    assert not admm.aux.z  # one block: no auxiliary variables at all


@pytest.mark.parametrize("mode", ["batch", "online"])
def test_deepfacto_nmf_block_stays_non_negative_and_the_network_learns(data, one_thread, mode):
    x, y, xt, yt = data
    with torch.random.fork_rng():
        torch.manual_seed(0)
        blocks = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten()),  # 8 x 7 x 7, non-negative
            NMFBlock(392, 24, seed=0),
            nn.Sequential(nn.Linear(24, 10)))
    cfg = ADMMConfig(epochs=4, mode=mode, iters=1 if mode == "batch" else 3, batch_size=64,
                     lr=0.05, rho=1.0, seed=0)
    admm = BlockADMM(blocks, x, y, cfg)
    hist = admm.fit(progress=False)
    nmf = blocks[1]
    assert float(nmf.W.min()) >= 0.0 and all(h["nmf_min_code"] >= 0 for h in hist)
    errors = [h["nmf_reconstruction_error"] for h in hist]
    assert max(errors) < 0.3, errors  # codes x W rebuild the conv features (relative error)
    acc = _accuracy(blocks, xt, yt)
    assert acc > 0.5, (acc, hist)  # classified from the non-negative codes alone; chance 0.1


@pytest.mark.parametrize("solver", ["penalty", "al"])
def test_hybrid_runs_resume_from_checkpoints(data, one_thread, tmp_path, solver):
    x, y, _, _ = data
    x, y = x[:512], y[:512]
    cfg = HybridConfig(solver=solver, parallel_epochs=2, serial_epochs=1, batch_size=128)
    full = HybridTrainer(_blocks(), x, y, cfg)
    full.fit(progress=False)
    first = HybridTrainer(_blocks(), x, y,
                          HybridConfig(**{**cfg.__dict__, "parallel_epochs": 2,
                                          "serial_epochs": 0}))
    first.fit(progress=False, checkpoint=tmp_path / "half.pt")  # stops after the parallel phase
    assert torch.load(tmp_path / "half.pt")["epoch"] == 2  # torch's default: weights_only
    resumed = HybridTrainer(_blocks(seed=7), x, y, cfg)  # other init: all from the checkpoint
    resumed.load(tmp_path / "half.pt")
    resumed.fit(progress=False)
    for a, b in zip(full.blocks.state_dict().values(), resumed.blocks.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    assert [h["phase"] for h in resumed.history] == ["parallel", "parallel", "serial"]
    with pytest.raises(ValueError, match="solver|run"):
        other = HybridTrainer(_blocks(), x, y, HybridConfig(
            solver="al" if solver == "penalty" else "penalty"))
        other.load(tmp_path / "half.pt")


def test_an_unsafe_trainer_checkpoint_is_refused_with_the_fix(tmp_path):
    torch.save({"epoch": np.int64(2)}, tmp_path / "old.pt")  # a NumPy scalar: not weights_only
    trainer = HybridTrainer(_blocks(), torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long),
                            HybridConfig())
    with pytest.raises(ValueError, match="weights_only=False"):
        trainer.load(tmp_path / "old.pt")


def test_hybrid_learns_with_filters_and_a_serial_correction(data, one_thread):
    x, y, xt, yt = data
    cfg = HybridConfig(solver="al", parallel_epochs=3, serial_epochs=1, batch_size=64, filter=2)
    trainer = HybridTrainer(_blocks(), x, y, cfg)
    hist = trainer.fit(evaluate=lambda m: _accuracy(m, xt, yt), progress=False)
    assert hist[2]["accuracy"] > 0.4 and hist[-1]["accuracy"] > 0.6
    nofilter = HybridTrainer(_blocks(), x, y, HybridConfig(**{**cfg.__dict__, "filter": None,
                                                              "parallel_epochs": 1,
                                                              "serial_epochs": 0}))
    nofilter.fit(progress=False)
    assert hist[0]["bytes"] * 4 == nofilter.history[0]["bytes"]  # 2x2 pooling: a quarter


def test_augmentation_shifts_and_flips_real_images(data):
    x = data[0][:64]
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.equal(out, x)
    assert torch.equal(augment(x, torch.Generator().manual_seed(0)), out)  # seeded


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["penalty", "al"])
def test_one_process_per_block_equals_the_layer_serial_sweeps(data, one_thread, solver):
    """3 blocks in 3 gloo processes, 2 gradient round trips per z-step: the same numbers as the
    single-process Jacobi sweeps, and the same bytes."""
    x, y, _, _ = data
    x, y = x[:384], y[:384]
    cfg = HybridConfig(solver=solver, parallel_epochs=2, serial_epochs=0, batch_size=64,
                       z_steps=2, filter=2)
    serial = HybridTrainer(_blocks(), x, y, cfg)
    serial.fit(progress=False)
    parallel = HybridTrainer(_blocks(), x, y, cfg)
    parallel.fit(progress=False, processes=True, timeout_s=120)
    for a, b in zip(serial.blocks.state_dict().values(), parallel.blocks.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    for a, b in zip(serial.aux.z + (serial.aux.lam or []),
                    parallel.aux.z + (parallel.aux.lam or []), strict=True):
        assert torch.equal(a, b)
    assert serial.ledger.bytes == parallel.ledger.bytes > 0
    assert [h["residuals"] for h in serial.history] == \
        [h["residuals"] for h in parallel.history]
    assert parallel.history[-1]["processes"] == 3 and parallel.rho == serial.rho


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["batch", "online"])
def test_block_admm_with_one_process_per_block_equals_one_process(data, one_thread, mode):
    """3 processes (conv block, NMF block, classifier): the same numbers as BlockADMM."""
    x, y, _, _ = data
    x, y = x[:256], y[:256]

    def facto():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return nn.Sequential(
                nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
                              nn.MaxPool2d(2), nn.Flatten()),
                NMFBlock(196, 12, seed=0), nn.Sequential(nn.Linear(12, 10)))

    cfg = ADMMConfig(epochs=2, mode=mode, iters=2, z_steps=2, batch_size=64, seed=3)
    one = BlockADMM(facto(), x, y, cfg)
    one.fit(progress=False)
    many = BlockADMM(facto(), x, y, cfg)
    many.fit(progress=False, processes=True, timeout_s=120)
    for (name, a), b in zip(one.blocks.state_dict().items(),
                            many.blocks.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for a, b in zip(one.aux.z + one.aux.lam, many.aux.z + many.aux.lam, strict=True):
        assert torch.equal(a, b)
    assert [h["residuals"] for h in one.history] == [h["residuals"] for h in many.history]
    assert many.history[-1]["processes"] == 3 and many.history[-1]["bytes"] > 0


def test_class_selectivity_separates_class_features_from_class_blind_ones(data):
    from autoassist.boss.disentangling import class_selectivity, sparsity

    _, _, xt, yt = data
    onehot = F.one_hot(yt, 10).float()  # each feature fires for one class only
    brightness = xt.flatten(1).clamp_min(0)[:, ::49]  # pixels: shared by every class
    sel = class_selectivity(torch.cat([onehot, brightness], 1), yt)
    assert torch.allclose(sel[:10], torch.ones(10))
    assert float(sel[10:].mean()) < 0.7
    perm = torch.randperm(len(yt), generator=torch.Generator().manual_seed(0))
    shuffled = class_selectivity(onehot[perm], yt)  # the same features, labels unrelated:
    assert float(shuffled.max()) < 0.3  # only sampling noise (200 instances a class) is left
    assert sparsity(onehot) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="non-negative"):
        class_selectivity(xt.flatten(1), yt)
    with pytest.raises(ValueError, match="no instance"):
        class_selectivity(onehot[yt < 9], yt[yt < 9], num_classes=10)
