"""``autoassist.lr_scheduler``: a real LRScheduler driven by progress through shrinking epochs."""

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import autoassist
from autoassist.schedules import cosine_lr, one_cycle_lr

EPOCHS = 4


def _loader():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(600, 6, generator=gen)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    return autoassist.wrap(DataLoader(data, batch_size=20, shuffle=True), floor=0.3, sync=True,
                           seed=2, warmup_epochs=1)


def _optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=1.0)


def _train(loader, opt, sched, start_epoch=0, stop_after=None, resumed=False):
    """Per batch: (epoch, index in the epoch, the epoch's length, the rate it trained at)."""
    seen = []
    for epoch in range(start_epoch, EPOCHS):
        if not (resumed and epoch == start_epoch):
            loader.set_epoch(epoch)
        steps = len(loader)
        for x, y in loader:
            seen.append((epoch, loader.batches_done - 1, steps, opt.param_groups[0]["lr"]))
            loader.report(x[:, 1] ** 2 + y.float())
            opt.step()
            sched.step()
            if stop_after is not None and len(seen) == stop_after:
                return seen
    return seen


def test_one_cycle_follows_progress_and_ends_at_its_end_value():
    max_lr = 0.1
    with _loader() as loader:
        opt = _optimizer()
        sched = autoassist.lr_scheduler(opt, loader, max_lr=max_lr, epochs=EPOCHS)
        assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)
        seen = _train(loader, opt, sched)
        lengths = {e: s for e, _, s, _ in seen}
        assert lengths[0] == 30 and max(lengths[e] for e in (1, 2, 3)) < 30  # it shrank
        for epoch, k, steps, lr in seen:  # each batch at its own progress
            assert lr == one_cycle_lr((epoch + k / (steps - 1)) / EPOCHS, max_lr)
        rates = [lr for *_, lr in seen]
        assert rates[0] == max_lr / 25  # the start ...
        assert rates[-1] == max_lr / 25 / 1e4  # ... and the end, at the last batch
        peak = rates.index(max(rates))
        assert max(rates) == pytest.approx(max_lr, rel=1e-2)
        assert all(a <= b for a, b in zip(rates[:peak], rates[1:peak + 1], strict=True))
        assert all(a >= b for a, b in zip(rates[peak:], rates[peak + 1:], strict=False))
        sched.step()  # stepping past the budget holds the end value (no "tried to step")
        assert sched.get_last_lr() == [max_lr / 25 / 1e4]


def test_cosine_per_group_rates():
    with _loader() as loader:
        opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))]},
                               {"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=1.0)
        sched = autoassist.lr_scheduler(opt, loader, "cosine", max_lr=[0.2, 0.02],
                                        epochs=EPOCHS, min_lr=1e-4)
        assert [g["lr"] for g in opt.param_groups] == [0.2, 0.02]
        seen = _train(loader, opt, sched)
        assert seen[-1][-1] == 1e-4 and opt.param_groups[1]["lr"] == 1e-4
        epoch, k, steps, lr = seen[len(seen) // 2]
        assert lr == cosine_lr((epoch + k / (steps - 1)) / EPOCHS, 0.2, 1e-4)


def test_resume_mid_run_gives_the_same_rates(tmp_path):
    with _loader() as a:
        opt = _optimizer()
        full = _train(a, opt, autoassist.lr_scheduler(opt, a, max_lr=0.1, epochs=EPOCHS))
    with _loader() as b:
        opt = _optimizer()
        sched = autoassist.lr_scheduler(opt, b, max_lr=0.1, epochs=EPOCHS)
        head = _train(b, opt, sched, stop_after=30 + 7)  # inside epoch 1, which shrank
        torch.save({"opt": opt.state_dict(), "sched": sched.state_dict(),
                    "loader": b.state_dict()}, tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt")  # weights_only=True: plain values only
    with _loader() as c:
        c.load_state_dict(ckpt["loader"])
        opt = _optimizer()
        sched = autoassist.lr_scheduler(opt, c, max_lr=0.1, epochs=EPOCHS)
        opt.load_state_dict(ckpt["opt"])
        sched.load_state_dict(ckpt["sched"])
        tail = _train(c, opt, sched, start_epoch=1, resumed=True)
    assert head + tail == full
    assert sched.last_epoch == len(full)  # its step count went on from the checkpoint's


def test_bad_arguments_are_named():
    opt = _optimizer()
    plain = DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2)
    with pytest.raises(TypeError, match="autoassist loader"):
        autoassist.lr_scheduler(opt, plain, max_lr=0.1, epochs=2)
    with _loader() as loader:
        with pytest.raises(ValueError, match="unknown schedule kind 'linear'"):
            autoassist.lr_scheduler(opt, loader, "linear", max_lr=0.1, epochs=2)
        with pytest.raises(ValueError, match="epochs must be a positive integer"):
            autoassist.lr_scheduler(opt, loader, max_lr=0.1, epochs=0)
        with pytest.raises(ValueError, match="2 values for the optimizer's 1 parameter"):
            autoassist.lr_scheduler(opt, loader, max_lr=[0.1, 0.2], epochs=2)
        with pytest.raises(ValueError, match="max_lr must be positive"):
            autoassist.lr_scheduler(opt, loader, max_lr=math.nan, epochs=2)


def test_formulas_clip_progress():
    assert one_cycle_lr(-1.0, 1.0) == one_cycle_lr(0.0, 1.0) == 1.0 / 25
    assert one_cycle_lr(0.3, 1.0) == 1.0 and one_cycle_lr(2.0, 1.0) == 1.0 / 25 / 1e4
    assert cosine_lr(0.5, 1.0, 0.0) == pytest.approx(0.5) and cosine_lr(1.5, 1.0, 0.1) == 0.1
