"""The staleness probe's yardstick: sampling variance under the proportional keep rule."""

import numpy as np
import pytest

from autoassist.bench.staleness import (
    candidate_scores,
    fit_shrink,
    keep_probabilities,
    sampling_variance,
)


def test_the_rule_fed_current_losses_leaves_the_least_variance_of_any_scores():
    """P = clip(L / tau, floor, 1) minimises sum L^2 (1 - P) / P at a fixed mean P within
    [floor, 1], so no other scores may beat it and noisier scores do worse."""
    rng = np.random.default_rng(0)
    losses = rng.lognormal(-1.0, 1.2, 5000)
    best = sampling_variance(losses, keep_probabilities(losses, 1 / 3, 0.1))
    efficiency = []
    for noise in (0.1, 0.5, 1.5):
        scores = losses * rng.lognormal(0.0, noise, len(losses))
        p = keep_probabilities(scores, 1 / 3, 0.1)
        assert abs(p.mean() - 1 / 3) < 0.01 and p.min() >= 0.1 - 1e-6
        efficiency.append(best / sampling_variance(losses, p))
    uniform = best / sampling_variance(losses, np.full(len(losses), 1 / 3))
    assert 1.0 >= efficiency[0] > efficiency[1] > efficiency[2] > uniform * 0.9
    assert uniform < 0.8
    with pytest.raises(ValueError, match="probabilities"):
        sampling_variance(losses, np.zeros(len(losses)))


def test_fit_shrink_recovers_each_age_groups_line_and_skips_small_groups():
    rng = np.random.default_rng(1)
    old = rng.lognormal(0.0, 1.0, 3000)
    age = np.repeat([1, 2, 12], [1500, 1470, 30])
    b = np.where(age == 1, 0.9, 0.5)
    new = np.exp(-0.2 + b * np.log(old) + rng.normal(0, 0.05, len(old)))
    fits = fit_shrink(old, new, age)
    assert set(fits) == {1, 2}  # the 30 pairs aged >= 10 are too few
    assert fits[1] == pytest.approx((-0.2, 0.9), abs=0.02)
    assert fits[2] == pytest.approx((-0.2, 0.5), abs=0.02)
    current, stale = np.arange(6.0) + 1, np.arange(6.0)[::-1] + 1
    age = np.array([1, 1, 2, 2, 30, 30])
    out = candidate_scores(current, stale, age, fits)
    assert np.array_equal(out["fresh_if_seen_last_epoch"], [1, 2, 4, 3, 2, 1])
    assert np.array_equal(out["fresh_if_older"], [6, 5, 3, 4, 5, 6])
    assert np.array_equal(out["age_bonus_1"], stale * [1, 1, 2, 2, 30, 30])
    assert out["shrunk_by_age"][2] == pytest.approx(np.exp(-0.2 + 0.5 * np.log(4.0)), rel=0.05)
    assert out["shrunk_by_age"][4] == stale[4]  # no fit for its group: left as it was
