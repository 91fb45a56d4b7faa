"""The CUDA paths, on a real GPU: loss reports that never wait for the GPU, reweighting on the
device, the Boss's single-process schedules and the time-to-accuracy harness.

Skipped where torch sees no CUDA device (CI and the 2-core development machine); run on a GPU
machine with ``python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import autoassist
from autoassist.assistant.trace import read_trace
from autoassist.bench.datasets import FashionMNIST
from autoassist.bench.models import small_cnn
from autoassist.bench.training import evaluate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def _model(seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return small_cnn(width=16).to(CUDA)


def test_cuda_losses_reach_the_assistant_exactly_and_in_order(fmnist_dir, tmp_path):
    """Deferred pinned copies deliver every loss the Boss computed, in report order, and the
    shrinking still trains the model: kept fractions drop, weights live on the GPU."""
    train = FashionMNIST("train", root=fmnist_dir, limit=6000)
    test_x, test_y = FashionMNIST("test", root=fmnist_dir).tensors()
    loader = autoassist.wrap(
        DataLoader(train, batch_size=128, shuffle=True, pin_memory=True,
                   generator=torch.Generator().manual_seed(0)),
        floor=0.3, warmup_epochs=1, reweight=True, seed=0, sync=True, trace_dir=str(tmp_path))
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sent_ids: list[list[np.ndarray]] = [[] for _ in range(3)]
    sent_losses: list[list[np.ndarray]] = [[] for _ in range(3)]
    weight_devices = set()
    try:
        for epoch in range(3):
            loader.set_epoch(epoch)
            for x, y in loader:
                ids = loader.batch_ids.copy()
                x, y = x.to(CUDA, non_blocking=True), y.to(CUDA, non_blocking=True)
                per_sample = F.cross_entropy(model(x), y, reduction="none")
                weights = loader.loss_weights(per_sample)
                if weights is not None:
                    weight_devices.add(weights.device.type)
                loss = loader.report(per_sample)
                assert loss.device.type == "cuda"
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sent_ids[epoch].append(ids)
                sent_losses[epoch].append(per_sample.detach().cpu().numpy())
        telemetry = loader.telemetry
    finally:
        loader.close()
    trace = read_trace(tmp_path)
    assert trace.epochs == [0, 1, 2]
    for epoch in range(3):
        np.testing.assert_array_equal(trace.ids[epoch], np.concatenate(sent_ids[epoch]))
        np.testing.assert_array_equal(trace.losses[epoch], np.concatenate(sent_losses[epoch]))
        assert telemetry[epoch]["reported_instances"] == sum(map(len, sent_ids[epoch]))
    assert telemetry[0]["kept_fraction"] == 1.0
    assert all(t["kept_fraction"] < 0.95 for t in telemetry[1:])
    assert weight_devices == {"cuda"}
    assert evaluate(model, test_x.to(CUDA), test_y.to(CUDA)) > 0.7


def test_reports_in_flight_are_kept_by_a_checkpoint(fmnist_dir):
    """state_dict() right after asynchronous reports holds every reported id (none lost while
    its copy was still in flight), in order."""
    train = FashionMNIST("train", root=fmnist_dir, limit=2048)
    loader = autoassist.wrap(DataLoader(train, batch_size=256, shuffle=False), floor=0.3,
                             warmup_epochs=1, seed=0, send_every=1000)
    model = _model()
    reported = []
    try:
        loader.set_epoch(0)
        for i, (x, y) in enumerate(loader):
            if i == 5:
                break
            reported.append(loader.batch_ids.copy())
            loader.report(F.cross_entropy(model(x.to(CUDA)), y.to(CUDA), reduction="none"))
        state = loader.state_dict()
    finally:
        loader.close()
    ids, losses, batches = state["engine"]["pending"]
    assert batches == 5
    np.testing.assert_array_equal(np.concatenate(ids), np.concatenate(reported))
    assert all(np.isfinite(v).all() for v in losses)


def test_non_finite_cuda_losses_are_named_by_the_epoch_end(fmnist_dir):
    train = FashionMNIST("train", root=fmnist_dir, limit=512)
    loader = autoassist.wrap(DataLoader(train, batch_size=128), floor=0.3, seed=0)
    try:
        loader.set_epoch(0)
        with pytest.raises(FloatingPointError, match="non-finite per-instance losses"):
            for x, _ in loader:
                loader.report(torch.full((len(x),), float("nan"), device=CUDA))
    finally:
        loader.close()


def make_loader(root, limit):
    """The Boss's stage-0 loader: real images, the shrinking wrapper (sync: reproducible)."""
    data = FashionMNIST("train", root=root, limit=limit)
    return autoassist.wrap(DataLoader(data, batch_size=64, shuffle=False, pin_memory=True),
                           floor=0.3, warmup_epochs=1, sync=True, seed=3)


def test_boss_backprop_schedule_trains_on_the_gpu_with_the_shrinking_loader(fmnist_dir, tmp_path):
    import functools

    from autoassist.boss import BossConfig, Stages, fit

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        stages = Stages.from_sequential(small_cnn(width=8), cuts=[4], num_classes=10,
                                        example_input=torch.zeros(2, 1, 28, 28)).to(CUDA)
    cfg = BossConfig(epochs=3, device="cuda", checkpoint_dir=str(tmp_path), progress=False,
                     optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9))
    out = fit(stages, functools.partial(make_loader, str(fmnist_dir), 2048), "backprop", cfg)
    kept = [t["kept_fraction"] for t in out["loader_telemetry"]]
    assert kept[0] == 1.0 and kept[-1] < 0.95  # the shrinking loader drove the GPU Boss
    assert out["history"][0]["instances"] == 2048
    test_x, test_y = FashionMNIST("test", root=fmnist_dir).tensors()
    assert evaluate(stages, test_x[:2000].to(CUDA), test_y[:2000].to(CUDA)) > 0.6
    # the checkpoint the GPU run wrote resumes on the CPU (map_location), one more epoch
    cpu_stages = Stages.from_sequential(small_cnn(width=8), cuts=[4], num_classes=10,
                                        example_input=torch.zeros(2, 1, 28, 28))
    cfg_cpu = BossConfig(epochs=4, device="cpu", checkpoint_dir=str(tmp_path), resume=True,
                         progress=False,
                         optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9))
    more = fit(cpu_stages, functools.partial(make_loader, str(fmnist_dir), 2048),
               "backprop", cfg_cpu)
    assert [h["epoch"] for h in more["history"]] == [3]


def test_time_to_accuracy_harness_on_the_gpu(tmp_path):
    from autoassist.bench.time_to_accuracy import run_benchmark, write_outputs

    result = run_benchmark("fashion_mnist", seeds=1, epochs=2, lrs=(0.1,), limit=3000,
                           progress=False, device="cuda", log=lambda *_: None)
    assert result["headline"]["device"] == "cuda"
    assert result["machine"]["gpu"] == torch.cuda.get_device_name()
    for run in result["runs"]:
        assert run["train_seconds"] == sorted(run["train_seconds"])
        assert run["accuracy"][-1] > 0.3, run["method"]  # chance is 0.1; SB trains on ~1/4
    assert {r["method"] for r in result["runs"]} == {"uniform", "autoassist", "published",
                                                      "infobatch", "selective_backprop"}
    paths = write_outputs(result, tmp_path, "t2a_cuda")
    assert json.loads(Path(paths["json"]).read_text())["headline"]["device"] == "cuda"
