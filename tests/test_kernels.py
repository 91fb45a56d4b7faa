"""Kernels: agreement with the NumPy specification, thread-count determinism, statistics."""

import subprocess
import sys

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from autoassist.kernels import (
    batch_by_size,
    ema_stream,
    keep_mask,
    keep_probabilities,
    rank_scores,
    scatter_ema,
    shrink_select,
    shrink_select_numpy,
    shuffle_kept,
    uniforms,
)


def _scores(n, seed=0):
    rng = np.random.default_rng(seed)
    s = rng.random(n, dtype=np.float32) * 1.4 - 0.2  # some outside [0, 1]: clipped
    s[::97] = np.nan  # NaN counts as 1
    return s


@pytest.mark.parametrize("n", [1, 7, 8, 9, 65535, 65536, 65537, 200_003])
@pytest.mark.parametrize("floor", [0.0, 0.3, 1.0])
def test_shrink_select_matches_numpy_spec(n, floor):
    """The Numba kernel (forced: "auto" would take NumPy itself below 2**17) against the spec."""
    s = _scores(n, n)
    kept, mask = shrink_select(s, floor, seed=5, epoch=2, backend="numba")
    ref_kept, ref_mask = shrink_select_numpy(s, floor, seed=5, epoch=2)
    assert np.array_equal(mask, ref_mask) and np.array_equal(kept, ref_kept)
    assert kept.dtype == ref_kept.dtype and np.array_equal(np.flatnonzero(mask), kept)
    mask2, count = keep_mask(s, floor, 5, 2, backend="numba")
    assert count == len(kept) and np.array_equal(mask2, mask)
    if floor == 1.0:
        assert len(kept) == n
    elif n > 1000:  # a real selection, not all or nothing
        assert 0 < len(kept) < n


def test_auto_backend_takes_numpy_below_the_threshold_and_numba_above(monkeypatch):
    from autoassist.kernels import select, select_jit

    calls = []
    for name in ("shrink_select", "keep_mask"):  # count the Numba kernel's calls
        kernel = getattr(select_jit, name)
        monkeypatch.setattr(select_jit, name,
                            lambda *a, _k=kernel, _n=name: calls.append(_n) or _k(*a))
    small, big = select.NUMPY_BELOW - 1, select.NUMPY_BELOW
    assert big == 2**17
    for n, threads, numba_expected in [(9, None, False), (small, None, False),
                                       (big, None, True), (200_003, None, True),
                                       (small, 1, True)]:  # a thread count asks for the kernel
        calls.clear()
        s = _scores(n, n)
        kept, mask = shrink_select(s, 0.3, seed=5, epoch=2, num_threads=threads)
        mask2, count = keep_mask(s, 0.3, 5, 2, num_threads=threads)
        ref_kept, ref_mask = shrink_select_numpy(s, 0.3, seed=5, epoch=2)
        assert np.array_equal(kept, ref_kept) and kept.dtype == ref_kept.dtype
        assert np.array_equal(mask, ref_mask) and np.array_equal(mask2, ref_mask)
        assert count == len(ref_kept)
        assert calls == (["shrink_select", "keep_mask"] if numba_expected else []), (n, threads)


def test_same_selection_for_any_thread_count():
    most = numba.config.NUMBA_NUM_THREADS
    if most < 2:
        pytest.skip("one CPU: Numba cannot run 2 threads here")
    s = _scores(1_000_003)
    runs = [shrink_select(s, 0.3, 11, 4, num_threads=t) for t in range(1, most + 1)]
    for kept, mask in runs[1:]:
        assert np.array_equal(kept, runs[0][0]) and np.array_equal(mask, runs[0][1])
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS  # restored afterwards
    with pytest.raises(ValueError, match="num_threads"):
        shrink_select(s, 0.3, 0, 0, num_threads=numba.config.NUMBA_NUM_THREADS + 1)


def test_selection_depends_on_seed_and_epoch_only():
    s = _scores(50_000)
    a = shrink_select(s, 0.3, 1, 1)[0]
    assert np.array_equal(a, shrink_select(s.copy(), 0.3, 1, 1)[0])
    assert not np.array_equal(a, shrink_select(s, 0.3, 1, 2)[0])
    assert not np.array_equal(a, shrink_select(s, 0.3, 2, 1)[0])


def test_keep_frequencies_match_keep_probabilities_chi_square():
    # 8 groups of 2,000 instances with P = 0.3 ... 1.0, drawn in 50 epochs (fixed seed)
    groups, per_group, epochs = 8, 2000, 50
    scores = np.repeat(np.linspace(0.0, 1.0, groups, dtype=np.float32), per_group)
    p = keep_probabilities(scores, 0.3)
    counts = np.zeros(len(scores))
    for epoch in range(epochs):
        counts += keep_mask(scores, 0.3, seed=123, epoch=epoch)[0]
    kept = counts.reshape(groups, per_group).sum(1)
    expected = p.reshape(groups, per_group).sum(1) * epochs
    inner = expected < per_group * epochs  # P = 1 is deterministic
    total = per_group * epochs
    chi2 = np.sum((kept[inner] - expected[inner]) ** 2 / expected[inner]
                  + (kept[inner] - expected[inner]) ** 2 / (total - expected[inner]))
    assert stats.chi2.sf(chi2, df=int(inner.sum())) > 1e-3
    assert kept[~inner].tolist() == [total]
    # per instance: counts over epochs are Binomial(epochs, P_i), not over/under-dispersed
    q = p[: groups // 2 * per_group]
    c = counts[: len(q)]
    dispersion = np.sum((c - epochs * q) ** 2 / (epochs * q * (1 - q)))
    assert stats.chi2.sf(dispersion, df=len(q)) > 1e-3
    assert stats.chi2.cdf(dispersion, df=len(q)) > 1e-3


def test_rank_scores_are_mid_rank_percentiles_to_the_power():
    rng = np.random.default_rng(5)
    s = rng.integers(0, 50, 3000).astype(np.float32) / 7  # many ties
    s[::11] = np.nan
    finite = np.isfinite(s)
    u = (stats.rankdata(s[finite], method="average") - 0.5) / finite.sum()
    for power in (1.0, 3.0):
        got = rank_scores(s, power)
        assert np.isnan(got[~finite]).all()  # unseen stays "keep for sure"
        np.testing.assert_allclose(got[finite], u ** power, rtol=1e-6)
    # only the ordering matters: a monotone squashing of the scores selects the same way
    np.testing.assert_array_equal(rank_scores(s, 3.0), rank_scores(0.5 + 0.001 * s, 3.0))
    # distinct scores: the kept fraction is b + (1 - b) / (k + 1), whatever the scores
    d = rng.random(100_000).astype(np.float32) * 0.02 + 0.49
    for power in (1.0, 3.0):
        mean_p = keep_probabilities(rank_scores(d, power), 0.2).mean(dtype=np.float64)
        assert mean_p == pytest.approx(0.2 + 0.8 / (power + 1), abs=1e-3)
    with pytest.raises(ValueError, match="power"):
        rank_scores(s, 0.0)
    with pytest.raises(ValueError, match="1-D"):
        rank_scores(np.zeros((2, 2)), 3.0)


def test_uniforms_are_uniform_and_neighbours_uncorrelated():
    u = uniforms(np.arange(200_000), seed=3, epoch=0)
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01
    v = uniforms(np.arange(200_000), seed=3, epoch=1)
    assert abs(np.corrcoef(u, v)[0, 1]) < 0.01


def test_bad_selection_input():
    with pytest.raises(ValueError, match="1-D"):
        shrink_select(np.zeros((2, 2), np.float32), 0.3, 0, 0)
    with pytest.raises(ValueError, match="floor"):
        shrink_select(np.zeros(3, np.float32), 1.5, 0, 0)
    with pytest.raises(ValueError, match=">= 0"):
        shrink_select(np.zeros(3, np.float32), 0.3, -1, 0)
    with pytest.raises(ValueError, match="backend"):
        shrink_select(np.zeros(3, np.float32), 0.3, 0, 0, backend="cuda")


def test_shuffle_is_a_seeded_uniform_permutation():
    ids = np.arange(10, 60, dtype=np.int64)
    a = shuffle_kept(ids, 7, 3)
    assert sorted(a.tolist()) == ids.tolist() and not np.array_equal(a, ids)
    assert np.array_equal(a, shuffle_kept(ids, 7, 3))
    assert not np.array_equal(a, shuffle_kept(ids, 7, 4))
    # where does the first id land? uniform over the 50 positions across 5,000 epochs
    positions = [int(np.flatnonzero(shuffle_kept(ids, 1, e) == 10)[0]) for e in range(5000)]
    observed = np.bincount(positions, minlength=50)
    assert stats.chisquare(observed).pvalue > 1e-3


def test_ema_stream_matches_definition():
    rng = np.random.default_rng(0)
    losses = rng.exponential(size=500)
    labels, mean = ema_stream(losses, float("nan"), 0.1)
    m, want = losses[0], []
    for x in losses:
        want.append(x > m)
        m += 0.1 * (x - m)
    assert labels.tolist() == [int(w) for w in want] and mean == pytest.approx(m)
    labels2, mean2 = ema_stream(losses[250:], ema_stream(losses[:250], float("nan"), 0.1)[1], 0.1)
    assert labels2.tolist() == labels[250:].tolist() and mean2 == pytest.approx(mean)
    with pytest.raises(ValueError, match="alpha"):
        ema_stream(losses, 0.0, 0.0)


def test_ema_stream_compiles_once_enough_small_batches_were_labelled_in_python(monkeypatch):
    """Small batches start in Python; once their total passes COMPILE_AFTER the compiled loop
    takes over (a large data set's Assistant), with the same labels and mean."""
    from autoassist.kernels import stats

    monkeypatch.setattr(stats, "_COMPILED", {})
    monkeypatch.setattr(stats, "_python_losses", [0])
    monkeypatch.setattr(stats, "COMPILE_AFTER", 1000)
    losses = np.random.default_rng(4).random(1800)
    first, mean = ema_stream(losses[:600], float("nan"), 0.05)
    assert stats._ema_stream not in stats._COMPILED and stats._python_losses == [600]
    second, mean = ema_stream(losses[600:1200], mean, 0.05)  # 1200 > 1000: compiled now
    assert stats._ema_stream in stats._COMPILED and stats._python_losses == [600]
    third, mean = ema_stream(losses[1200:], mean, 0.05)
    monkeypatch.setattr(stats, "_COMPILED", {})
    stats.compile_ema_stream()  # what a large data set's Assistant does as it starts
    assert stats._ema_stream in stats._COMPILED
    whole, whole_mean = ema_stream(losses, float("nan"), 0.05)
    assert np.array_equal(np.concatenate([first, second, third]), whole)
    assert mean == whole_mean


def test_ema_stream_python_and_compiled_paths_agree_exactly():
    """Small batches are labelled in plain Python until the compiled loop is loaded (kernels
    stay out of a starting Assistant); both must give the same labels and the same mean."""
    from autoassist.kernels import stats

    rng = np.random.default_rng(1)
    losses = rng.lognormal(size=3000) * 1e-3
    python, compiled = np.empty(len(losses), np.uint8), np.empty(len(losses), np.uint8)
    mean_python = stats._ema_stream(losses, float("nan"), 0.01, python)  # the loop, uncompiled
    mean = stats._compiled(stats._ema_stream)(losses, float("nan"), 0.01, compiled)
    assert mean_python == mean and np.array_equal(python, compiled)
    labels, mean_public = ema_stream(losses, float("nan"), 0.01)  # whichever path it takes
    assert mean_public == mean and np.array_equal(labels, compiled)
    assert 0.2 < compiled.mean() < 0.8  # a real mix of labels, not all one side


def test_scatter_ema_applies_repeated_ids_in_order():
    table = np.zeros(5, np.float32)
    seen = np.zeros(5, np.uint8)
    scatter_ema(table, seen, np.array([1, 1, 3]), np.array([2.0, 4.0, 1.0]), 0.5)
    assert table.tolist() == [0.0, 3.0, 0.0, 1.0, 0.0] and seen.tolist() == [0, 1, 0, 1, 0]
    with pytest.raises(IndexError):
        scatter_ema(table, seen, np.array([5]), np.array([1.0]), 0.5)
    with pytest.raises(ValueError, match="ids but"):
        scatter_ema(table, seen, np.array([1, 2]), np.array([1.0]), 0.5)


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 50), min_size=0, max_size=300),
    max_tokens=st.one_of(st.none(), st.integers(50, 400)),
    max_sentences=st.one_of(st.none(), st.integers(1, 40)),
    multiple=st.sampled_from([1, 2, 8]),
    seed=st.integers(0, 100),
)
def test_batch_by_size_respects_budgets(sizes, max_tokens, max_sentences, multiple, seed):
    if max_tokens is None and max_sentences is None:
        max_sentences = 16
    sizes = np.array(sizes, np.int64)
    order = np.random.default_rng(seed).permutation(len(sizes))
    batches = batch_by_size(order, sizes, max_tokens=max_tokens, max_sentences=max_sentences,
                            multiple=multiple)
    assert np.array_equal(np.concatenate(batches) if batches else np.empty(0, int), order)
    pos = 0
    for k, b in enumerate(batches):
        assert len(b) >= 1
        if max_sentences:
            assert len(b) <= max_sentences
        if max_tokens:
            assert sizes[b].max() * len(b) <= max_tokens
        if multiple == 1 and k < len(batches) - 1:  # maximal: the next instance did not fit
            grown = order[pos : pos + len(b) + 1]
            over_tokens = max_tokens and sizes[grown].max() * len(grown) > max_tokens
            over_count = max_sentences and len(grown) > max_sentences
            assert over_tokens or over_count
        pos += len(b)


def test_batch_by_size_errors():
    with pytest.raises(ValueError, match="instance 2 has 90 tokens"):
        batch_by_size(np.arange(3), np.array([5, 5, 90]), max_tokens=50)
    with pytest.raises(ValueError, match="max_tokens and/or max_sentences"):
        batch_by_size(np.arange(3), np.ones(3, int))


def test_kernels_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np, autoassist.kernels as k\n"
            "print(len(k.shrink_select(np.ones(10, np.float32), 0.5, 0, 0)[0]))\n"
            "assert sys.modules['torch'] is None\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "10"


def test_proportional_scores_sample_by_ratio_within_the_keep_budget():
    """P = b + (1 - b) p is proportional to the ratio between the floor and 1, keep on average;
    unseen (inf/NaN) instances are always kept; no signal gives a uniform P."""
    from autoassist.kernels import proportional_scores

    r = np.random.default_rng(1).exponential(1.0, 200_000)  # larger than the tau sample
    for keep, b in ((1 / 3, 0.1), (0.5, 0.1), (0.9, 0.5), (0.1, 0.1)):
        P = b + (1 - b) * proportional_scores(r, keep, b).astype(np.float64)
        assert abs(P.mean() - keep) < 0.01 * keep and P.min() >= b - 1e-6 and P.max() <= 1
        inside = (P > b + 1e-4) & (P < 1 - 1e-4)
        if inside.any():
            q = P[inside] / r[inside]
            assert q.max() / q.min() < 1 + 1e-4
        assert np.all(np.diff(P[np.argsort(r, kind="stable")]) >= -1e-6)
    unseen = r.copy()
    unseen[:1000] = np.inf
    unseen[1000:1010] = np.nan
    P = 0.1 + 0.9 * proportional_scores(unseen, 1 / 3, 0.1)
    assert np.all(P[:1010] == 1.0) and abs(P.mean() - 1 / 3) < 0.005
    assert np.allclose(0.1 + 0.9 * proportional_scores(np.zeros(50), 0.4, 0.1), 0.4)
    P = 0.1 + 0.9 * proportional_scores(np.r_[np.zeros(90), np.ones(10)], 0.5, 0.1)
    assert np.allclose(P[90:], 1.0) and abs(P.mean() - 0.5) < 1e-6  # zeros share the rest
    P = 0.1 + 0.9 * proportional_scores(np.r_[np.full(80, np.inf), np.ones(20)], 0.5, 0.1)
    assert np.allclose(P[80:], 0.1)  # the unseen alone exceed the budget: the rest at b
    assert np.all(proportional_scores(r, 1.0, 0.5) == 1.0)
    for keep, b in ((0.2, 0.3), (1.2, 0.1), (0.5, 1.0)):
        with pytest.raises(ValueError, match="keep"):
            proportional_scores(r, keep, b)
    with pytest.raises(ValueError, match=">= 0"):
        proportional_scores(np.array([1.0, -1.0]), 0.5, 0.1)
