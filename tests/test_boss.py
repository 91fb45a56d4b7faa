"""Boss schedules on real Fashion-MNIST: local_parallel (2 gloo processes) equals
sequential_greedy bit for bit, with and without the shrinking loader; resume; a dying stage."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from autoassist.bench.models import small_cnn
from autoassist.boss import BossConfig, Stages, fit

SGD = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9)


def make_stages(seed: int = 0) -> Stages:
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # the test's own model init; the global state is put back
    try:
        model = small_cnn(width=8)
        return Stages.from_sequential(model, cuts=[4], num_classes=10,
                                      example_input=torch.zeros(2, 1, 28, 28))
    finally:
        torch.random.set_rng_state(gen_state)


def make_loader(root, limit=768, shrink=False, die_after=None):
    """Module-level (picklable): runs inside the stage-0 process of multi-process schedules."""
    from autoassist.bench.datasets import FashionMNIST

    data = FashionMNIST("train", root=root, limit=limit)
    loader = DataLoader(data, batch_size=64, shuffle=False)
    if die_after is not None:
        return _Dying(loader, die_after)
    if shrink:
        import autoassist

        return autoassist.wrap(loader, floor=0.3, warmup_epochs=1, sync=True, seed=3)
    return loader


class _Dying:
    """A loader whose process dies abruptly after some batches (a crashed stage)."""

    def __init__(self, loader, after):
        self.loader, self.after = loader, after

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.after:
                os._exit(3)
            yield batch


def _params(stages: Stages) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in stages.state_dict().items()}


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the stage processes run 1 thread: same arithmetic here
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("shrink", [False, True])
def test_local_parallel_equals_sequential_greedy(fmnist_dir, one_thread, shrink):
    cfg = BossConfig(epochs=3 if shrink else 2, optimizer=SGD, progress=False)
    factory = functools.partial(make_loader, str(fmnist_dir), shrink=shrink)
    ref = make_stages()
    before = _params(ref)
    out_ref = fit(ref, factory, "sequential_greedy", cfg)
    par = make_stages()
    out_par = fit(par, factory, "local_parallel", cfg)
    _same(_params(ref), _params(par))
    changed = [k for k in before if not torch.equal(before[k], _params(ref)[k])]
    assert len(changed) > len(before) // 2  # the stages really trained
    assert out_par["history"][-1]["loss"] < 2.0  # below chance-level cross-entropy (2.30)
    if shrink:  # the Assistant learnt from the last stage's losses, in both schedules alike
        tel_ref, tel_par = out_ref["loader_telemetry"], out_par["loader_telemetry"]
        assert [t["kept"] for t in tel_ref] == [t["kept"] for t in tel_par]
        assert tel_par[0]["kept_fraction"] == 1.0 and tel_par[2]["kept_fraction"] < 1.0
        assert tel_par[-1]["assistant_trained_instances"] > 768


@pytest.mark.slow
def test_local_parallel_resumes_from_its_checkpoint(fmnist_dir, one_thread, tmp_path):
    factory = functools.partial(make_loader, str(fmnist_dir), limit=512)
    full = make_stages()
    fit(full, factory, "local_parallel", BossConfig(epochs=3, optimizer=SGD, progress=False))
    part = make_stages()
    ckpt = str(tmp_path / "ckpt")
    fit(part, factory, "local_parallel",
        BossConfig(epochs=2, optimizer=SGD, progress=False, checkpoint_dir=ckpt))
    resumed = make_stages(seed=99)  # different init: everything must come from the checkpoint
    out = fit(resumed, factory, "sequential_greedy",  # any schedule resumes the shared layout
              BossConfig(epochs=3, optimizer=SGD, progress=False, checkpoint_dir=ckpt,
                         resume=True))
    assert [h["epoch"] for h in out["history"]] == [2]
    _same(_params(full), _params(resumed))


@pytest.mark.slow
def test_a_dying_stage_ends_the_run_with_a_clear_error(fmnist_dir):
    factory = functools.partial(make_loader, str(fmnist_dir), limit=512, die_after=3)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="stage process died"):
        fit(make_stages(), factory, "local_parallel",
            BossConfig(epochs=1, optimizer=SGD, progress=False, timeout_s=30))
    assert time.monotonic() - start < 120  # no hang


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown schedule"):
        fit(make_stages(), lambda: [], "pipedream", BossConfig(epochs=1, optimizer=SGD))
    with pytest.raises(TypeError, match="make_loader"):
        fit(make_stages(), [], "backprop", BossConfig(epochs=1, optimizer=SGD))
    with pytest.raises(ValueError, match="resume needs checkpoint_dir"):
        BossConfig(epochs=1, optimizer=SGD, resume=True)
    with pytest.raises(ValueError, match="cuts"):
        Stages.from_sequential(small_cnn(), cuts=[5, 3], num_classes=10,
                               example_input=torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match="at least 2 stages"):
        fit(Stages([small_cnn()], [None]), lambda: [], "local_parallel",
            BossConfig(epochs=1, optimizer=SGD))


@pytest.mark.slow
def test_async_model_parallel_with_staleness_0_is_synchronous_backprop(fmnist_dir, one_thread):
    cfg = BossConfig(epochs=1, optimizer=SGD, progress=False)
    factory = functools.partial(make_loader, str(fmnist_dir), limit=512)
    ref = make_stages()
    fit(ref, factory, "backprop", cfg)
    sync = make_stages()
    fit(sync, factory, "async_model_parallel", cfg, staleness=0)
    stage_params = {k: v for k, v in _params(ref).items() if k.startswith("stages.")}
    _same(stage_params, {k: v for k, v in _params(sync).items() if k.startswith("stages.")})
    stale = make_stages()
    out = fit(stale, factory, "async_model_parallel", cfg, staleness=2)
    assert out["history"][0]["loss"] < 2.0  # trains despite stale gradients
    assert not torch.equal(_params(stale)["stages.0.0.weight"], _params(ref)["stages.0.0.weight"])


@pytest.mark.slow
def test_async_model_parallel_resumes_from_its_checkpoint(fmnist_dir, one_thread, tmp_path):
    factory = functools.partial(make_loader, str(fmnist_dir), limit=512, shrink=True)
    full = make_stages()
    out_full = fit(full, factory, "async_model_parallel",
                   BossConfig(epochs=3, optimizer=SGD, progress=False), staleness=1)
    part = make_stages()
    ckpt = str(tmp_path / "ckpt")
    fit(part, factory, "async_model_parallel",
        BossConfig(epochs=2, optimizer=SGD, progress=False, checkpoint_dir=ckpt), staleness=1)
    resumed = make_stages(seed=99)  # different init: everything must come from the checkpoint
    out = fit(resumed, factory, "async_model_parallel",
              BossConfig(epochs=3, optimizer=SGD, progress=False, checkpoint_dir=ckpt,
                         resume=True), staleness=1)
    assert [h["epoch"] for h in out["history"]] == [2]
    # the loader (and its Assistant) resumed too: epoch 2 keeps exactly what it kept unbroken
    assert out["loader_telemetry"][-1]["kept"] == out_full["loader_telemetry"][-1]["kept"]
    assert out_full["loader_telemetry"][-1]["kept_fraction"] < 1.0
    stage_params = {k: v for k, v in _params(full).items() if k.startswith("stages.")}
    _same(stage_params, {k: v for k, v in _params(resumed).items() if k.startswith("stages.")})


EXAMPLE = ["examples/boss/fashion_mnist.py", "--limit", "1024", "--epochs", "2", "--width", "8"]


def _run(cmd: list[str], cwd) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        outs.append(out)
    return outs


def _epoch_lines(stdout: str) -> list[str]:
    """The example's epoch lines without their wall-clock part."""
    return [line.rsplit(", ", 2)[0] + line.rsplit(", ", 2)[2] if "kept" in line else
            line.rsplit(", ", 1)[0] for line in stdout.splitlines() if line.startswith("epoch ")]


def _same_checkpoints(a, b, world: int = 2) -> None:
    for k in range(world):
        sa = torch.load(a / f"stage{k}.pt", weights_only=True)
        sb = torch.load(b / f"stage{k}.pt", weights_only=True)
        assert sa["epoch"] == sb["epoch"] == 1
        _same(sa["stage"], sb["stage"])


@pytest.mark.slow
def test_torchrun_single_node_equals_spawn(fmnist_dir, tmp_path):
    """``torchrun --standalone``: each process is one stage; same result as spawning them."""
    root = Path(__file__).resolve().parents[1]
    args = [*EXAMPLE, "--schedule", "local_parallel", "--sync"]
    spawned = _finish([_run([sys.executable, *args, "--checkpoint-dir",
                             str(tmp_path / "spawn")], root)])[0]
    launched = _finish([_run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                              "--nproc-per-node", "2", *args, "--checkpoint-dir",
                              str(tmp_path / "torchrun")], root)])[0]
    _same_checkpoints(tmp_path / "spawn", tmp_path / "torchrun")
    assert _epoch_lines(launched) == _epoch_lines(spawned)  # same losses, same kept counts
    assert "kept 100%" not in _epoch_lines(launched)[1]  # the loader shrank in epoch 2
    assert launched.count("test accuracy") == 1  # rank 0 reports, rank 1 stays quiet


@pytest.mark.slow
def test_torchrun_two_nodes_through_rendezvous_equal_spawn(fmnist_dir, tmp_path):
    """Two torchrun 'nodes' (one stage each) meet through the c10d rendezvous on localhost."""
    root = Path(__file__).resolve().parents[1]
    args = [*EXAMPLE, "--schedule", "async_model_parallel", "--staleness", "1", "--no-shrink"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = [_run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                   "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                   f"127.0.0.1:{port}", "--rdzv-id", "autoassist-test", *args,
                   "--checkpoint-dir", str(tmp_path / "nodes")], root) for _ in range(2)]
    outs = _finish(nodes)
    spawned = _finish([_run([sys.executable, *args, "--checkpoint-dir",
                             str(tmp_path / "spawn")], root)])[0]
    _same_checkpoints(tmp_path / "spawn", tmp_path / "nodes")
    report = [o for o in outs if "test accuracy" in o]
    assert len(report) == 1 and _epoch_lines(report[0]) == _epoch_lines(spawned)


def test_torchrun_launcher_outside_torchrun_is_named(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError, match="start the script with torchrun"):
        fit(make_stages(), lambda: [], "local_parallel",
            BossConfig(epochs=1, optimizer=SGD, launcher="torchrun"))
    with pytest.raises(ValueError, match="launcher"):
        BossConfig(epochs=1, optimizer=SGD, launcher="slurm")


def test_torchrun_with_the_wrong_process_count_is_named(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    with pytest.raises(ValueError, match="3 processes for 2 stages"):
        fit(make_stages(), lambda: [], "local_parallel", BossConfig(epochs=1, optimizer=SGD))
    with pytest.raises(ValueError, match="not torchrun"):
        fit(make_stages(), lambda: [], "backprop", BossConfig(epochs=1, optimizer=SGD))


@pytest.mark.slow
def test_three_stages_match_their_single_process_references(fmnist_dir, one_thread):
    """A middle stage both receives and sends: 3 processes, shrinking loader, 2 epochs."""
    def three(seed=0):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return Stages.from_sequential(small_cnn(width=8), cuts=[2, 5], num_classes=10,
                                          example_input=torch.zeros(2, 1, 28, 28))

    factory = functools.partial(make_loader, str(fmnist_dir), limit=256, shrink=True)
    cfg = BossConfig(epochs=2, optimizer=SGD, progress=False)
    ref, par = three(), three()
    fit(ref, factory, "sequential_greedy", cfg)
    out = fit(par, factory, "local_parallel", cfg)
    _same(_params(ref), _params(par))
    assert len(out["history"][0]["stage_seconds"]) == 3
    ref, amp = three(), three()
    fit(ref, factory, "backprop", cfg)
    fit(amp, factory, "async_model_parallel", cfg, staleness=0)
    _same({k: v for k, v in _params(ref).items() if k.startswith("stages.")},
          {k: v for k, v in _params(amp).items() if k.startswith("stages.")})
