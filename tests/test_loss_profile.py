"""The loss profile: how concentrated a trained model's training loss is (what a loss-based keep
rule can skip). The fairseq source is tested in test_fairseq_plugin.py, beside its corpus."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import repo_module

from autoassist.bench.loss_profile import classifier_losses, profile


def test_equal_losses_give_the_diagonal_and_a_half_share():
    p = profile(np.full(10, 2.0))
    assert p["easy_half_share"] == pytest.approx(0.5)
    np.testing.assert_allclose(p["lorenz_share"], p["lorenz_q"], atol=1e-12)
    assert p["below_mean_fraction"] == 0.0 and p["below_mean_share"] == 0.0
    assert p["mean"] == pytest.approx(2.0) and p["instances"] == 10


def test_concentrated_losses_read_as_such():
    # 8 learned instances (loss 0.01) and 2 hard ones (loss 4): the lower half carries 5 * 0.01
    losses = np.array([4.0, 0.01, 0.01, 4.0, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01])
    p = profile(losses)
    total = losses.sum()
    assert p["easy_half_share"] == pytest.approx(0.05 / total)
    assert p["below_mean_fraction"] == pytest.approx(0.8)
    assert p["below_mean_share"] == pytest.approx(0.08 / total)
    assert p["quantiles"]["50"] == pytest.approx(0.01)
    assert p["lorenz_share"][0] == 0.0 and p["lorenz_share"][-1] == pytest.approx(1.0)
    assert all(np.diff(p["lorenz_share"]) >= 0)


def test_bad_losses_are_refused_by_name():
    for bad, match in (([], "no losses"), ([1.0, -0.5], ">= 0"), ([1.0, np.nan], "finite"),
                       ([0.0, 0.0], "every loss is 0")):
        with pytest.raises(ValueError, match=match):
            profile(bad)


def test_a_trained_classifier_has_its_loss_in_fewer_instances_than_at_start():
    """Real data (KEEL magic), the frontier's own loop: after training, the lower-loss half
    carries much less than half of the loss, and one loss per training instance comes back."""
    losses, record = classifier_losses("keel_magic", epochs=2, lr=0.2, seed=0)
    from autoassist.bench.frontier import split_validation
    from autoassist.bench.tasks import get_task

    fit, _ = split_validation(get_task("keel_magic").load(None)[0])
    assert losses.shape == (len(fit),) and np.isfinite(losses).all()
    assert record["accuracy"][-1] > 0.8 and "train_losses" not in record
    assert profile(losses)["easy_half_share"] < 0.25


def test_the_command_names_bad_tasks_and_missing_checkpoints(tmp_path, capsys):
    loss_profile = repo_module("benchmarks.loss_profile")  # benchmarks/ is not installed

    with pytest.raises(SystemExit):
        loss_profile.parse_args(["--tasks", "cifar"])
    assert "use tasks from keel_magic,fashion_mnist,adult" in capsys.readouterr().err
    # no classifier asked for and no translation checkpoint stored: nothing to write, and why
    with pytest.raises(SystemExit, match="nothing to profile"):
        loss_profile.main(["--tasks", "", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "de-en seed 1: no stored uniform checkpoint" in out
    assert "es-en seed 1: no stored uniform checkpoint" in out
