"""The translation benchmark's harness logic on hand-made runs: no fairseq, no timing."""

from __future__ import annotations

import json

import pytest
from conftest import repo_module

from autoassist.bench.fairseq_runs import parse_epoch_stat, plateaued
from autoassist.bench.frontier import RunStore

tr = repo_module("benchmarks.translation")  # benchmarks/ is not installed


def test_plateau_needs_a_full_window_and_less_than_min_gain():
    # too early to tell: no validation 5 epochs before the last
    assert not plateaued([1, 2, 3, 4], [1.0, 1.0, 1.0, 1.0], patience=5)
    # 6 epochs, flat: the best gained 0 over the last 5
    assert plateaued([1, 2, 3, 4, 5, 6], [5.0, 9.0, 9.0, 9.0, 9.0, 9.1], patience=5,
                     min_gain=0.2) is False  # 9.1 - 5.0 (best up to epoch 1) >= 0.2
    assert plateaued([1, 2, 3, 4, 5, 6, 7], [5.0, 9.0, 9.0, 9.1, 9.0, 9.15, 8.0], patience=5,
                     min_gain=0.2)  # best 9.15 vs 9.0 up to epoch 2
    # a dip and a new best: still going
    assert not plateaued([1, 2, 3, 4, 5, 6, 7], [5.0, 9.0, 8.0, 8.0, 8.0, 8.0, 9.5])
    # BLEU every 2 epochs: the window counts epochs, not validations
    assert not plateaued([2, 4], [3.0, 3.0], patience=3)
    assert plateaued([2, 4, 6], [3.0, 3.1, 3.0], patience=3)  # vs epoch 2
    with pytest.raises(ValueError, match="patience"):
        plateaued([1], [1.0], patience=0)


def test_epoch_stats_are_read_from_fairseq_summaries():
    log = ("x | train_inner | epoch 001:  50 / 81 loss=9 | train_wall 3 | wall 4\n"
           "x | INFO | train | epoch 001 | loss 9.5 | train_wall 17 | wall 24\n"
           "x | INFO | valid | epoch 001 | valid on 'valid' subset | loss 8.6 | bleu 0.01 |\n"
           "x | INFO | train | epoch 002 | loss 8.1 | train_wall 16 | wall 48\n")
    assert parse_epoch_stat(log, "train_wall") == [17.0, 16.0]
    assert parse_epoch_stat(log, "bleu", tag="valid") == [0.01]


def _run(pair, method, seed, bleus, seconds, test=10.0, at_target=None, target=None):
    return {"pair": pair, "method": method, "seed": seed, "target": target,
            "epochs": list(range(1, len(bleus) + 1)), "epoch_seconds": seconds,
            "train_wall": seconds, "stopped": "plateau", "bleu_epochs":
            list(range(1, len(bleus) + 1)), "bleu_seconds": seconds, "valid_bleu": bleus,
            "kept_percent": [100.0] * len(bleus), "test_bleu_best": test,
            "target_epoch": None, "test_bleu_at_target": at_target}


def test_saving_is_read_at_uniforms_best_and_not_reached_is_none():
    runs = [
        # seed 1: uniform's best 18.0 first at 30 s (later epochs do not beat it)
        _run("de-en", "uniform", 1, [10.0, 15.0, 18.0, 17.9, 18.0], [10, 20, 30, 40, 50],
             test=16.0),
        # autoassist first reaches 18.0 at 24 s: saving 1 - 24/30
        _run("de-en", "autoassist", 1, [9.0, 14.0, 17.0, 18.2, 18.4], [6, 12, 18, 24, 30],
             test=16.5, at_target=15.8),
        # seed 2: autoassist peaks at 17.9 < 18.5: not reached
        _run("de-en", "uniform", 2, [12.0, 18.5, 18.4], [10, 20, 30], test=16.2),
        _run("de-en", "autoassist", 2, [11.0, 17.9, 17.0], [8, 16, 24], test=15.0,
             at_target=None),
    ]
    a = tr.analyse(runs)
    s1, s2 = a["per_seed"]
    assert s1["target_bleu"] == 18.0 and s1["seconds_uniform"] == 30
    assert s1["seconds_method"] == 24 and s1["saving"] == pytest.approx(1 - 24 / 30)
    assert s1["test_bleu_at_target"] == 15.8
    # at uniform's 30 s autoassist had reached 18.4: +0.4 at equal time
    assert s1["gain_equal_time"] == pytest.approx(0.4)
    assert s2["reached"] is False and s2["saving"] is None
    assert s2["seconds_method"] is None and s2["test_bleu_at_target"] is None
    assert s2["gain_equal_time"] == pytest.approx(17.9 - 18.5)  # its best by 20 s
    # one seed missed: the overall saving is not a number, the count says why
    assert a["saving"] is None and a["reached"] == 1 and a["seeds"] == 2
    assert a["savings"] == [pytest.approx(0.2), None]
    assert a["bleu_uniform"] == pytest.approx((18.0 + 18.5) / 2)
    assert a["bleu_autoassist"] == pytest.approx((18.4 + 17.9) / 2)
    assert a["test_bleu_autoassist_at_target"] == 15.8  # over the seeds that reached it
    # both seeds reached: the mean saving; JSON keeps None as null, never a number
    only = tr.analyse(runs[:2])
    assert only["saving"] == pytest.approx(0.2) and only["pairs"]["de-en"]["reached"] == 1
    assert json.loads(json.dumps(a))["saving"] is None
    text = tr.markdown(runs, a, "cmd")
    assert "not reached" in text


def test_mean_gap_averages_the_curves_difference_up_to_uniforms_best():
    uniform = _run("de-en", "uniform", 1, [10.0, 14.0, 18.0, 17.0], [10, 20, 30, 40])
    # one BLEU above uniform all along (validated at other seconds): +1 over 10..30 s
    ahead = _run("de-en", "autoassist", 1, [11.0, 13.0, 17.0, 19.0], [10, 15, 25, 30])
    assert tr.mean_gap(uniform, ahead) == pytest.approx(1.0)
    # level until 20 s, then 2 behind at 30 s: a gap growing linearly from 0 to -2 over the
    # second half of the grid, -0.5 on average
    behind = _run("de-en", "autoassist", 1, [10.0, 14.0, 16.0], [10, 20, 30])
    assert tr.mean_gap(uniform, behind) == pytest.approx(-0.5, abs=0.03)


def test_gap_to_control_pairs_each_method_with_the_same_seeds_random_subset():
    uniform = _run("de-en", "uniform", 1, [10.0, 14.0, 18.0, 17.0], [10, 20, 30, 40])
    random = _run("de-en", "random", 1, [10.0, 13.0, 17.0, 17.0], [10, 20, 30, 40])
    # +1 on random up to uniform's best (30 s), level after it: the reading stops at 30 s
    ahead = _run("de-en", "autoassist", 1, [11.0, 14.0, 18.0, 17.0], [10, 20, 30, 40])
    uniform2 = _run("de-en", "uniform", 2, [10.0, 14.0, 18.0], [10, 20, 30])
    random2 = _run("de-en", "random", 2, [10.0, 14.0, 18.0], [10, 20, 30])
    level = _run("de-en", "autoassist", 2, [10.0, 14.0, 18.0], [10, 20, 30])  # +0 on random
    a = tr.analyse([uniform, random, ahead, uniform2, random2, level])
    rows = {(r["seed"], r["method"]): r for r in a["per_seed"]}
    assert rows[(1, "autoassist")]["gap_to_control"] == pytest.approx(1.0)
    assert rows[(2, "autoassist")]["gap_to_control"] == pytest.approx(0.0)
    assert rows[(1, "random")]["gap_to_control"] is None  # the control against itself
    # the paired cells' mean and standard error: (1 + 0) / 2, sd 0.707 / sqrt(2)
    assert a["gap_to_control"] == pytest.approx(0.5)
    assert a["gap_to_control_se"] == pytest.approx(0.5)
    assert a["mean_gap_random_se"] is not None and a["mean_gap_se"] is not None
    # without a control the reading is absent, not zero
    assert tr.analyse([uniform, ahead])["gap_to_control"] is None


def test_smoothed_saving_is_read_on_three_validation_means():
    # uniform's one lucky epoch (20.0) sets the raw target; its best 3-mean is 17 (at 40 s)
    uniform = _run("de-en", "uniform", 1, [10.0, 14.0, 20.0, 17.0, 14.0],
                   [10, 20, 30, 40, 50])
    assert tr.trailing_mean(uniform) == ([30, 40, 50], [pytest.approx(44 / 3), 17.0, 17.0])
    # the method never touches 20 but holds 17 from its 3rd validation (24 s): 1 - 24/40
    steady = _run("de-en", "autoassist", 1, [17.0, 17.0, 17.0, 17.0], [8, 16, 24, 32])
    assert tr.smoothed_saving(uniform, steady) == pytest.approx(0.4)
    assert tr.analyse([uniform, steady])["per_seed"][0]["saving"] is None  # raw: not reached
    lucky = _run("de-en", "autoassist", 1, [10.0, 20.0, 10.0], [8, 16, 24])
    assert tr.smoothed_saving(uniform, lucky) is None


def test_a_second_invocation_skips_stored_runs(tmp_path):
    calls = []

    def fake(pair, method, seed, setup, plan):
        calls.append((pair, method, seed, plan))
        bleus = {"uniform": [5.0, 8.0, 9.0], "autoassist": [6.0, 9.0, 9.1],
                 "random": [5.0, 7.0, 8.5]}[method]
        record = _run(pair, method, seed, bleus, [10, 20, 30] if method == "uniform"
                      else [8, 16, 24], target=plan.target, at_target=7.0)
        if method == "autoassist":
            record["kept_percent"] = [100.0, 60.0, 70.0]
        return record

    store = RunStore(tmp_path / "runs", {"product": "p", "training": "t"},
                     product_free=("uniform",))
    argv = ["--quick", "--seeds", "2", "--name", "t", "--methods", "uniform,autoassist,random"]
    first = tr.main(argv, run=fake, store=store, results=tmp_path)
    # uniform first; then autoassist against uniform's best (9.0), not stopped before uniform's
    # 30 s to it; then the control at autoassist's kept fractions, continued to the 10-epoch
    # cap with the mean of its shrinking epochs
    plan = tr.RunPlan(target=9.0, min_seconds=30)
    control = tr.RunPlan(target=9.0, min_seconds=30,
                         kept_fractions=(1.0, 0.6, 0.7) + (0.65,) * 8)  # 10 epochs + 1
    assert calls == [("de-en", "uniform", 1, tr.RunPlan()), ("de-en", "autoassist", 1, plan),
                     ("de-en", "random", 1, control),
                     ("de-en", "uniform", 2, tr.RunPlan()), ("de-en", "autoassist", 2, plan),
                     ("de-en", "random", 2, control)]
    a = first["analysis"]
    assert a["saving"] == pytest.approx(1 - 16 / 30)
    assert a["saving_random"] is None and a["methods"]["random"]["reached"] == 0
    assert a["gain_equal_time_random"] == pytest.approx(8.5 - 9.0)
    assert len(list((tmp_path / "runs").glob("*.json"))) == 6
    calls.clear()
    second = tr.main(argv, run=fake, store=store, results=tmp_path)
    assert calls == [] and second["analysis"] == first["analysis"]
    # other code for the plugin: autoassist's and the control's runs are stale, uniform's not
    changed = RunStore(tmp_path / "runs", {"product": "p2", "training": "t"},
                       product_free=("uniform",))
    tr.main(argv, run=fake, store=changed, results=tmp_path)
    assert [c[1] for c in calls] == ["autoassist", "random", "autoassist", "random"]
    assert (tmp_path / "t.json").is_file() and (tmp_path / "t.md").is_file()
    assert "| de-en | 1 | random |" in (tmp_path / "t.md").read_text()


def test_a_variant_runs_against_uniform_and_the_control_follows_autoassist(tmp_path):
    plans = {}

    def fake(pair, method, seed, setup, plan):
        plans[method] = plan
        record = _run(pair, method, seed, [5.0, 8.0, 9.0], [10, 20, 30], target=plan.target)
        record["kept_percent"] = {"autoassist": [100.0, 50.0], "aa_floor07": [100.0, 80.0]}.get(
            method, [100.0] * 3)
        return record

    store = RunStore(tmp_path, {"product": "p", "training": "t"}, product_free=("uniform",))
    runs = tr.measure(["de-en"], 1, tr.QUICK, store, fake,
                      ("uniform", "autoassist", "aa_floor07", "random"), commit="abc")
    assert [r["method"] for r in runs] == ["uniform", "autoassist", "aa_floor07", "random"]
    assert {r["commit"] for r in runs} == {"abc"}  # each stored run names the code it ran
    assert plans["aa_floor07"] == tr.RunPlan(target=9.0, min_seconds=30)
    assert plans["random"].kept_fractions[:3] == (1.0, 0.5, 0.5)  # autoassist's, not the variant's
    assert set(tr.analyse(runs)["methods"]) == {"autoassist", "aa_floor07", "random"}


def test_methods_must_be_run_in_order(capsys):
    with pytest.raises(SystemExit):
        tr.parse_args(["--methods", "uniform,random"])
    assert "start with uniform,autoassist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tr.parse_args(["--methods", "uniform,autoassist,fast"])
    assert "--methods fast: use uniform,autoassist,random and any of" in capsys.readouterr().err
    assert tr.parse_args([]).methods == tr.METHODS
    assert tr.parse_args(["--quick"]).methods == ("uniform", "autoassist")
    assert tr.method_args("aa_no_reweight")[-1] == "--aa-no-reweight"


def test_bad_pairs_are_refused_with_the_choices(capsys):
    with pytest.raises(SystemExit):
        tr.parse_args(["--pairs", "de-fr"])
    assert "use pairs from de-en,es-en" in capsys.readouterr().err


def test_a_plateau_stops_a_run_only_after_min_seconds(tmp_path):
    import time

    from autoassist.bench.fairseq_runs import _Clock

    def clock(min_seconds):
        c = _Clock({"clock": str(tmp_path / "clock.json"), "patience": 2, "min_gain": 0.2,
                    "min_seconds": min_seconds})
        c.start = time.perf_counter() - 100.0  # 100 s of training so far
        c.bleu = {1: 5.0, 2: 5.1, 3: 5.1}  # plateaued: +0.1 over the last 2 epochs
        return c

    free = clock(None)
    assert free.should_stop(None, 5.1) and free.stopped == "plateau"
    assert clock(10.0).should_stop(None, 5.1)  # past its minimum
    early = clock(1000.0)  # uniform took 1000 s to its best: go on
    assert not early.should_stop(None, 5.1) and early.stopped == "max_epoch"
