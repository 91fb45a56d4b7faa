"""``autoassist tune`` on a tiny real Fashion-MNIST job: search, reproducibility, outputs,
round trips into ``wrap``, clear errors, and resuming an interrupted tune."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import autoassist
from autoassist.config import ShrinkConfig
from autoassist.errors import UsageError, UsageFileNotFoundError
from autoassist.tuning import budgets, score_probe, tune
from autoassist.tuning.space import load_space, to_config

ROOT = Path(__file__).resolve().parents[1]
JOB = f"{ROOT / 'tests' / 'tune_jobs.py'}:tiny"
SPACE = {"floor": [0.2, 0.5, 0.8], "warmup_epochs": [0, 1], "reweight": [False, True]}
ARGS = dict(candidates_n=3, min_epochs=2, max_epochs=4, factor=2, cost="instances", seed=5,
            threads=1, progress=False)


@pytest.fixture(scope="module")
def tuned(fmnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune")
    return tune(JOB, SPACE, out=out / "a", n_jobs=2, **ARGS), out


@pytest.mark.slow
def test_tune_picks_a_setting_inside_the_space_reproducibly(tuned):
    result, out = tuned
    assert set(result.params) == set(SPACE)
    assert all(result.params[k] in SPACE[k] for k in SPACE)
    assert [r["epochs"] for r in result.rungs] == [2, 4]
    assert len(result.rungs[0]["candidates"]) == 3 and len(result.rungs[1]["candidates"]) == 2
    # the uniform baseline really trained: far above chance (0.1) on held-out images
    assert result.rungs[-1]["uniform"][0]["metric"][-1] > 0.5
    # the headline's saving is what the logged curves say (recomputed here, independently)
    best = result.rungs[-1]["candidates"][0]
    curve, base = best["curves"][0], result.rungs[-1]["uniform"][0]
    target = base["metric"][-1]
    reach = next((c for c, m in zip(curve["instances"], curve["metric"], strict=True)
                  if m >= target), None)
    if reach is None:
        assert result.headline["saving"] is None and not result.beats_uniform
    else:
        base_reach = next(c for c, m in zip(base["instances"], base["metric"], strict=True)
                          if m >= target)
        assert result.headline["saving"] == pytest.approx(1 - reach / base_reach)
        assert result.beats_uniform == (reach < base_reach)
    # the same seed gives the same choice (one probe at a time this time: cost is instances)
    again = tune(JOB, SPACE, out=out / "b", n_jobs=1, **ARGS)
    assert again.params == result.params
    assert [c["score"] for c in again.rungs[-1]["candidates"]] == \
        [c["score"] for c in result.rungs[-1]["candidates"]]
    for name in ("tuned.toml", "tune.json", "tune.md", "tune.png"):
        assert (result.out / name).stat().st_size > 0
    assert len((result.out / "probes.jsonl").read_text().splitlines()) == 7  # 4 + 3 probes


@pytest.mark.slow
def test_tuned_config_round_trips_into_wrap(tuned, fmnist_train):
    result, _ = tuned
    loaded = ShrinkConfig.from_file(result.config_path)
    assert loaded == result.config
    assert {k: getattr(loaded, k) for k in SPACE} == result.params
    loader = autoassist.wrap(DataLoader(torch.utils.data.Subset(fmnist_train, range(256)),
                                        batch_size=64), config=result.config_path)
    try:
        assert loader.config == result.config
    finally:
        loader.close()


def test_anneal_fraction_becomes_anneal_epochs_of_the_budget():
    cfg = to_config({"anneal_fraction": 0.25, "floor": 0.4}, ShrinkConfig(), epochs=8)
    assert (cfg.anneal_epochs, cfg.epochs, cfg.floor) == (2, 8, 0.4)
    assert to_config(None, ShrinkConfig(), epochs=8) is None  # the uniform baseline
    assert budgets(2, 6, 3) == [2, 6] and budgets(1, 9, 3) == [1, 3, 9] and budgets(4, 4, 3) == [4]


def test_scores_compare_with_the_uniform_run_of_the_same_budget():
    base = {"seconds": [10.0, 20.0, 30.0], "metric": [0.5, 0.7, 0.8], "instances": [1, 2, 3]}
    fast = {"seconds": [6.0, 12.0, 18.0], "metric": [0.5, 0.8, 0.82], "instances": [1, 2, 3]}
    slow = {"seconds": [10.0, 20.0, 30.0], "metric": [0.4, 0.6, 0.7], "instances": [1, 2, 3]}
    s = score_probe(fast, base, objective="time_to_target", cost="seconds", mode="max",
                    target=None)
    assert s["reached"] and s["saving"] == pytest.approx(1 - 12 / 30)
    miss = score_probe(slow, base, objective="time_to_target", cost="seconds", mode="max",
                       target=None)
    assert not miss["reached"] and miss["score"] < s["score"] and miss["score"] < -10
    near = score_probe(slow, base, objective="time_to_target", cost="seconds", mode="max",
                       target=None, tolerance=0.15)  # within 0.15 of uniform's 0.8
    assert near["cost_to_target"] == 30.0 and near["saving"] == pytest.approx(1 - 30 / 20)
    at = score_probe(fast, base, objective="metric_at_cost", cost="seconds", mode="max",
                     target=None)
    assert at["metric_at_cost"] == 0.82  # finished within uniform's 30 s
    tight = score_probe(fast, base, objective="metric_at_cost", cost="seconds", mode="max",
                        target=None, budget=12.0)
    assert tight["metric_at_cost"] == 0.8  # a fixed 12 s budget: the epoch done by then
    loss = {k: v for k, v in base.items()}
    loss["metric"] = [1.0, 0.6, 0.5]  # a loss: lower is better
    lower = {**fast, "metric": [1.0, 0.5, 0.45]}
    m = score_probe(lower, loss, objective="time_to_target", cost="seconds", mode="min",
                    target=None)
    assert m["reached"] and m["cost_to_target"] == 12.0


def test_bad_jobs_and_spaces_are_named(tmp_path):
    with pytest.raises(UsageFileNotFoundError, match="does not exist") as missing:
        tune(str(tmp_path / "nope.py") + ":job", SPACE, out=tmp_path)
    assert isinstance(missing.value, FileNotFoundError)  # what it was before
    with pytest.raises(ValueError, match="has no function 'missing'"):
        tune(f"{ROOT / 'tests' / 'tune_jobs.py'}:missing", SPACE, out=tmp_path)
    with pytest.raises(ValueError, match="cannot import module"):
        tune("no_such_module_anywhere:job", SPACE, out=tmp_path)
    with pytest.raises(ValueError, match="module:function"):
        tune("tune_jobs.tiny", SPACE, out=tmp_path)
    with pytest.raises(ValueError, match="search space is empty"):
        tune(JOB, {}, out=tmp_path)
    with pytest.raises(ValueError, match="'prune_ratio' is not a tunable setting"):
        load_space({"prune_ratio": [0.3]})
    with pytest.raises(ValueError, match="floor"):
        load_space({"floor": [0.5, 1.5]})
    with pytest.raises(UsageError, match="low < high"):
        load_space({"floor": {"uniform": [0.9, 0.1]}})
    for bad in ({"floor": [0.5, 1.5]}, {"prune_ratio": [0.3]}, {}):
        with pytest.raises(UsageError):
            load_space(bad)
    with pytest.raises(UsageError, match="min_epochs"):
        budgets(5, 2, 2)


def _cli_error(argv, capsys) -> str:
    from autoassist.cli import main

    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err  # one line
    assert err.startswith("autoassist: error: "), err
    return err


def test_the_cli_says_in_one_line_what_is_wrong_with_a_job_or_a_space(tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written, not even the default out folder
    missing = tmp_path / "missing_job.py"
    err = _cli_error(["tune", f"{missing}:job"], capsys)
    assert err == f"autoassist: error: job '{missing}:job': file {missing} does not exist\n"
    job = f"{ROOT / 'tests' / 'tune_jobs.py'}:tiny"
    (tmp_path / "space.toml").write_text("[space]\nfloor = [0.5, 1.5]\n")
    err = _cli_error(["tune", job, "--space", "space.toml"], capsys)
    assert err == ("autoassist: error: ShrinkConfig.floor=1.5: must lie in [0, 1] (0.5 is the "
                   "default, 0.3 the paper's image setting)\n")
    (tmp_path / "typo.toml").write_text("[space]\nflor = [0.5]\n")
    assert "'flor' is not a tunable setting" in _cli_error(
        ["tune", job, "--space", "typo.toml"], capsys)
    (tmp_path / "broken.toml").write_text("[space\nfloor = [0.5]\n")
    assert "broken.toml does not parse as TOML" in _cli_error(
        ["tune", job, "--space", "broken.toml"], capsys)
    assert "base.toml does not exist" in _cli_error(["tune", job, "--base", "base.toml"], capsys)
    assert "target is not used by objective='frontier'" in _cli_error(
        ["tune", job, "--objective", "frontier", "--target", "0.8"], capsys)
    assert not (tmp_path / "autoassist-tune").exists()  # refused before anything ran


def test_a_job_module_that_fails_to_import_keeps_its_own_traceback(tmp_path, monkeypatch):
    """Only a job *name* that leads nowhere is the user's one-line mistake; a module the job
    imports that is missing is an error in the job, shown with its traceback."""
    from autoassist.tuning.probe import load_job

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "needs_more.py").write_text("import no_such_dependency_anywhere\n")
    with pytest.raises(ModuleNotFoundError) as exc:
        load_job("needs_more:job")
    assert not isinstance(exc.value, UsageError)
    with pytest.raises(UsageError, match="cannot import module 'no_such_job_module'"):
        load_job("no_such_job_module:job")


@pytest.mark.slow
def test_a_broken_job_fails_on_its_baseline_with_its_own_error(tmp_path, fmnist_dir):
    with pytest.raises(RuntimeError, match="cannot find its data"):
        tune(f"{ROOT / 'tests' / 'tune_jobs.py'}:broken", SPACE, out=tmp_path,
             **{**ARGS, "progress": False})
    cli = subprocess.run([sys.executable, "-m", "autoassist.cli", "tune", "nope.py:job",
                          "--out", str(tmp_path / "cli")], capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode == 2 and "nope.py" in cli.stderr and "Traceback" not in cli.stderr


def _cli(out: Path, probe_log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "autoassist.cli", "tune", JOB, "--space",
           str(out.parent / "space.json"), "--candidates", "3", "--min-epochs", "2",
           "--max-epochs", "4", "--factor", "2", "--cost", "instances", "--seed", "5",
           "--threads", "1", "--no-progress", "--out", str(out)]
    env = {**os.environ, "AUTOASSIST_TEST_PROBE_LOG": str(probe_log)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_default_sigint)


def _default_sigint():
    """A shell that starts jobs in the background makes them ignore SIGINT, and children inherit
    that; Ctrl-C must reach the tune as it would from a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_an_interrupted_tune_resumes_without_rerunning_finished_probes(tmp_path, fmnist_dir):
    (tmp_path / "space.json").write_text(json.dumps(SPACE))
    out, probe_log = tmp_path / "run", tmp_path / "invocations.txt"
    first = _cli(out, probe_log)
    log = out / "probes.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert first.poll() is None, first.communicate()[1][-2000:]
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C: the tune and its running probe
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err[-2000:]
    finished = [json.loads(line) for line in log.read_text().splitlines()]
    assert 2 <= len(finished) < 7
    ran_before = probe_log.read_text().splitlines()

    second = _cli(out, probe_log)
    stdout, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    headline = json.loads(stdout.strip().splitlines()[-1])
    assert headline["probes"] == 7 and headline["probes_reused"] == len(finished)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len({r["key"] for r in records}) == 7  # each probe logged once
    ran_after = probe_log.read_text().splitlines()[len(ran_before):]
    for rec in finished:  # a probe finished before the interrupt never ran again
        assert rec["key"] not in ran_after
    assert set(ran_after) == {r["key"] for r in records} - {r["key"] for r in finished}
    assert len(ran_after) == 7 - len(finished)


# -- offline: from a real run's loss trace ---------------------------------------------------
@pytest.fixture(scope="module")
def trace_dir(fmnist_dir, tmp_path_factory):
    """A real run: the Fashion-MNIST CNN, 3,000 images, 3 epochs, writing its loss trace."""
    from torch.utils.data import Subset

    from autoassist.bench.datasets import FashionMNIST
    from autoassist.bench.models import small_cnn
    from autoassist.bench.training import train_classifier

    out = tmp_path_factory.mktemp("trace") / "trace"
    full = FashionMNIST("train", root=fmnist_dir)
    loader = autoassist.wrap(DataLoader(Subset(full, range(3000)), batch_size=100, shuffle=True,
                                        generator=torch.Generator().manual_seed(0)),
                             floor=0.3, warmup_epochs=1, sync=True, trace_dir=str(out),
                             assistant="logistic")
    reported: list[tuple] = []
    real_report = loader.report

    def report(per_sample):  # what the Boss really reported, to compare with the trace
        reported.append((loader.batch_ids, per_sample.detach().numpy().copy()))
        return real_report(per_sample)

    loader.report = report
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = small_cnn(width=8)
    train_classifier(model, loader, (full.images[-2000:], full.labels[-2000:]), epochs=3,
                     max_lr=0.1, name="traced", progress_bar=False)
    kept = [t["kept"] for t in loader.telemetry]
    loader.close()
    return out, reported, kept


@pytest.mark.slow
def test_the_engine_writes_what_the_boss_reported(trace_dir):
    import numpy as np

    from autoassist.assistant.trace import read_trace

    out, reported, kept = trace_dir
    trace = read_trace(out)
    assert trace.epochs == [0, 1, 2]
    assert [len(i) for i in trace.ids] == kept and kept[2] < 3000  # the shrunk epochs, as kept
    ids = np.concatenate([i for i, _ in reported])
    losses = np.concatenate([lo for _, lo in reported])
    assert np.array_equal(np.concatenate(trace.ids), ids)
    assert np.array_equal(np.concatenate(trace.losses), losses.astype(np.float32))
    assert sum(int(s.sum()) for s in trace.sizes) == len(ids)
    assert trace.have.sum() == 3000 and np.abs(trace.features[trace.have]).sum() > 0
    assert trace.config["floor"] == 0.3


@pytest.mark.slow
def test_offline_tune_chooses_an_assistant_and_floor_that_beat_no_skill(trace_dir, tmp_path):
    import numpy as np

    from autoassist.tuning.offline import floor_for_recall, tune_offline

    out, _, _ = trace_dir
    res = tune_offline(out, recall=0.9, out=tmp_path / "off", progress=False,
                       candidates={"assistant": ["logistic", "sgd"], "assistant_lr": [0.1],
                                   "loss_history": [True, False]})
    best = res.candidates[0]
    assert len(res.candidates) == 4
    assert [c["kept_fraction"] for c in res.candidates] == \
        sorted(c["kept_fraction"] for c in res.candidates)
    # the floor keeps the requested recall on held-out (future) reports ...
    b = best["floor"]
    assert b + (1 - b) * best["mean_p_informative"] >= 0.9 - 1e-9
    # ... at a smaller kept fraction than no Assistant (constant scores keep 90% for 90%)
    assert best["kept_fraction"] < 0.88
    assert best["average_precision"] > best["positive_rate"] + 0.05  # real skill
    cfg = ShrinkConfig.from_file(res.config_path)
    assert cfg.floor == b and cfg.assistant == best["params"]["assistant"]
    assert cfg.trace_dir is None  # a tuned config does not trace unless asked
    assert (res.out / "offline.png").stat().st_size > 0
    assert floor_for_recall(np.full(10, 0.5), np.array([1, 0] * 5), 0.9)[1] == \
        pytest.approx(0.9, abs=1e-3)  # no skill: recall r costs a kept fraction r
    with pytest.raises(FileNotFoundError, match="no loss trace"):
        tune_offline(tmp_path, out=tmp_path / "x", progress=False)


@pytest.mark.parametrize("tolerance", [0.0, 0.02])
def test_tolerance_and_cost_budget_reach_the_probes_scores(tmp_path, tolerance):
    job = f"{ROOT / 'tests' / 'tune_scripted.py'}:scripted"
    space = {"floor": [0.3]}
    args = dict(candidates_n=1, min_epochs=4, max_epochs=4, factor=2, cost="instances",
                progress=False, n_jobs=1)  # no threads: the probes never import torch
    result = tune(job, space, out=tmp_path / "t", tolerance=tolerance, **args)
    seed = result.rungs[-1]["candidates"][0]["seeds"][0]
    if tolerance:  # 0.89 is within 0.02 of 0.90: reached after 1 of uniform's 4 units
        assert seed["reached"] and seed["saving"] == pytest.approx(1 - 1 / 4)
    else:  # 0.90 itself only at the last unit, as uniform: no saving
        assert seed["reached"] and seed["saving"] == pytest.approx(0.0)
    from autoassist.tuning import load_tuned

    tuned = load_tuned(result.config_path)  # every objective writes the [tune] table
    assert (tuned.wrap, tuned.epochs) == (result.beats_uniform, 4) and result.epochs == 4
    budgeted = tune(job, space, out=tmp_path / "b", objective="metric_at_cost", cost_budget=2,
                    **args)
    at = budgeted.rungs[-1]["candidates"][0]["seeds"][0]
    assert at["metric_at_cost"] == pytest.approx(0.89)  # its metric at cost 2, not 0.95 at 4
    assert at["uniform_metric"] == pytest.approx(0.7)  # uniform's at cost 2 too, not 0.90
    assert budgeted.beats_uniform


# -- objective "frontier": the setting and the epoch count, against uniform's frontier --------
def _pts(*rows):
    return [{"epochs": e, "cost": c, "metric": m} for e, c, m in rows]


UNIFORM = _pts((2, 200.0, 0.70), (4, 400.0, 0.80), (6, 600.0, 0.84))  # the usual run: 6 epochs


def test_frontier_scores_the_saving_against_uniforms_frontier_and_names_the_epochs():
    from autoassist.tuning.frontier_math import score_frontier

    target = 0.84  # uniform's final metric at 6 epochs
    # reaches the target between its 8- and 12-epoch runs: the cost is interpolated, the epoch
    # count to train is the next measured one (12), which costs more than the interpolated cost
    between = score_frontier(_pts((8, 200.0, 0.80), (12, 300.0, 0.85), (16, 400.0, 0.86)),
                             UNIFORM, target)
    assert between["reached"] and between["beats_uniform"]
    assert between["cost_to_target"] == pytest.approx(200 + 100 * 0.04 / 0.05)
    assert between["saving"] == pytest.approx(1 - 280 / 600) == between["score"]
    assert (between["epochs"], between["epochs_cost"], between["interpolated"]) == (12, 300.0, True)
    assert (between["uniform_epochs"], between["uniform_cost_to_target"]) == (6, 600.0)
    # exactly at a measured run: that run, not interpolated
    exact = score_frontier(_pts((8, 200.0, 0.80), (12, 300.0, 0.84)), UNIFORM, target)
    assert (exact["epochs"], exact["interpolated"]) == (12, False)
    assert exact["saving"] == pytest.approx(0.5)
    # reaches it, but only after uniform's usual cost: a negative saving, still ranked above ...
    late = score_frontier(_pts((8, 500.0, 0.80), (12, 900.0, 0.845)), UNIFORM, target)
    assert late["reached"] and late["saving"] < 0 and not late["beats_uniform"]
    # ... every frontier that never reaches it, and those rank by their margin at equal cost
    near = score_frontier(_pts((8, 400.0, 0.83)), UNIFORM, target)  # +0.03 over uniform's 0.80
    far = score_frontier(_pts((8, 400.0, 0.75)), UNIFORM, target)
    assert not near["reached"] and near["saving"] is None and near["epochs"] is None
    assert near["gain"] == pytest.approx(0.03) and far["gain"] == pytest.approx(-0.05)
    assert late["score"] > near["score"] > far["score"]


def test_frontier_must_beat_fewer_uniform_epochs_not_just_the_usual_run():
    from autoassist.tuning.frontier_math import score_frontier

    # uniform saturates: 4 epochs already give the 6-epoch metric, for 400 instead of 600
    saturated = _pts((2, 200.0, 0.70), (4, 400.0, 0.84), (6, 600.0, 0.84))
    cand = _pts((8, 250.0, 0.80), (12, 500.0, 0.85))  # reaches at 450 < the usual run's 600
    s = score_frontier(cand, saturated, 0.84)
    assert s["uniform_epochs"] == 4 and s["uniform_cost_to_target"] == 400.0
    assert s["saving"] == pytest.approx(1 - 450 / 400) and not s["beats_uniform"]
    # a tolerance lowers the target; uniform's frontier then reaches it between runs too
    t = score_frontier(cand, UNIFORM, 0.82)
    assert t["uniform_cost_to_target"] == pytest.approx(400 + 200 * 0.02 / 0.04)
    assert t["uniform_epochs"] == 6
    with pytest.raises(ValueError, match="never reaches its own target"):
        score_frontier(cand, UNIFORM, 0.9)


def test_frontier_points_budgets_and_shared_functions():
    from autoassist.bench import frontier as bench_frontier
    from autoassist.tuning import frontier_math
    from autoassist.tuning.frontier_math import budget_epochs, mean_frontier

    # the laboratory uses the product's functions, not copies of them
    assert bench_frontier.interpolate_cost is frontier_math.interpolate_cost
    assert bench_frontier.accuracy_at_cost is frontier_math.accuracy_at_cost
    assert budget_epochs(6, 1.0, frontier_math.UNIFORM_FRACTIONS) == [2, 4, 6]
    assert budget_epochs(6, 1 / 0.5, frontier_math.CANDIDATE_FRACTIONS) == [8, 12, 16]
    assert budget_epochs(1, 1.0, frontier_math.UNIFORM_FRACTIONS) == [1]
    runs = {4: [{"instances": [1, 2], "metric": [0.5, 1.0]},
                {"instances": [1, 4], "metric": [0.5, 2.0]}],
            2: [{"instances": [1], "metric": [3.0]}, {"instances": [1], "metric": [5.0]}]}
    assert mean_frontier(runs, "instances", sign=-1.0) == [  # final values, epoch order
        {"epochs": 2, "cost": 1.0, "metric": -4.0, "seeds": 2},
        {"epochs": 4, "cost": 3.0, "metric": -1.5, "seeds": 2}]


SCRIPTED = f"{ROOT / 'tests' / 'tune_scripted.py'}:frontier_scripted"
FRONTIER_ARGS = dict(objective="frontier", min_epochs=2, max_epochs=6, factor=3,
                     cost="instances", grid=True, progress=False)  # no threads: no torch


def test_frontier_tune_chooses_the_setting_and_the_epochs_and_writes_them(tmp_path):
    from autoassist.tuning import load_tuned

    # floor 0.25 with reweighting ends as uniform after half the epochs, at a quarter of the
    # cost per epoch; without, far below (pruned at the first rung)
    res = tune(SCRIPTED, {"floor": [0.25], "reweight": [True, False]}, out=tmp_path / "win",
               **FRONTIER_ARGS)
    assert res.beats_uniform and res.params == {"floor": 0.25, "reweight": True}
    assert [len(r["candidates"]) for r in res.rungs] == [2, 1]
    last = res.rungs[-1]
    assert [p["epochs"] for p in last["uniform_points"]] == [1, 2, 4, 6]
    best = last["candidates"][0]
    assert best["cost_ratio"] == pytest.approx(0.25)  # measured at the first rung, 2 epochs
    assert [p["epochs"] for p in best["points"]] == [2, 16, 24, 32]  # 6 / 0.25 * (2/3, 1, 4/3)
    # the target is uniform's 6-epoch metric 0.9 - 0.4 / 6 (at 600 instances); 16 epochs
    # (effective 8, 400 instances) pass it, 2 epochs (0.5 at 50) do not: the frontier reaches
    # it between the two, and the run to train is the measured 16
    reached = 50 + 350 * (0.9 - 0.4 / 6 - 0.5) / (0.9 - 0.4 / 8 - 0.5)
    assert best["cost_to_target"] == pytest.approx(reached)
    assert res.headline["saving"] == pytest.approx(1 - reached / 600)
    assert res.epochs == 16 and res.headline["epochs_interpolated"]
    assert res.headline["uniform_epochs"] == 6
    tuned = load_tuned(res.config_path)
    assert tuned.wrap and tuned.epochs == 16 and tuned.config.epochs == 16
    assert ShrinkConfig.from_file(res.config_path) == res.config == tuned.config
    assert "train 16 epochs" in (res.out / "tune.md").read_text()

    # without reweighting the setting always trains worse than uniform per instance: the
    # honest answer is uniform, at its cheapest measured budget that reaches the target
    lose = tune(SCRIPTED, {"floor": [0.5], "reweight": [False]}, out=tmp_path / "lose",
                **FRONTIER_ARGS)
    assert not lose.beats_uniform and lose.epochs == 6
    tuned = load_tuned(lose.config_path)
    assert not tuned.wrap and tuned.epochs == 6 and tuned.readings["objective"] == "frontier"
    assert "no setting beat uniform's frontier" in (lose.out / "tune.md").read_text()
    with pytest.raises(UsageError, match="target is not used by objective='frontier'"):
        tune(SCRIPTED, {"floor": [0.5]}, out=tmp_path / "x", target=0.8, **FRONTIER_ARGS)


def test_frontier_tune_of_a_metric_to_minimise(tmp_path):
    """The same job reporting an error rate, with mode="min": the same choice and epochs."""
    res = tune(f"{ROOT / 'tests' / 'tune_scripted.py'}:frontier_scripted_loss",
               {"floor": [0.25], "reweight": [True, False]}, out=tmp_path / "min", mode="min",
               **FRONTIER_ARGS)
    assert res.beats_uniform and res.params == {"floor": 0.25, "reweight": True}
    assert res.epochs == 16 and res.rungs[-1]["target"] == pytest.approx(0.4 / 6 + 0.1)
    best = res.rungs[-1]["candidates"][0]
    assert best["points"][1]["metric"] == pytest.approx(0.4 / 8 + 0.1)  # the error rate


def test_tuned_files_without_a_tune_table_and_with_bad_values(tmp_path):
    from autoassist.tuning import load_tuned

    plain_file = ShrinkConfig(floor=0.4).to_file(tmp_path / "plain.toml")
    tuned = load_tuned(plain_file)  # e.g. tune --offline's file: wrap it, no epoch count
    assert tuned.wrap and tuned.epochs is None and tuned.config.floor == 0.4
    bad = tmp_path / "bad.toml"
    bad.write_text(plain_file.read_text() + "\n[tune]\nwrap = \"yes\"\n")
    with pytest.raises(UsageError, match="wrap"):
        load_tuned(bad)
    bad.write_text(plain_file.read_text() + "\n[tune]\nepochs = 0\n")
    with pytest.raises(UsageError, match="epochs"):
        load_tuned(bad)
    with pytest.raises(UsageFileNotFoundError):
        load_tuned(tmp_path / "missing.toml")


def _frontier_cli(out: Path, probe_log: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "autoassist.cli", "tune", JOB, "--objective", "frontier",
           "--space", str(out.parent / "space.json"), "--grid", "--min-epochs", "3",
           "--max-epochs", "3", "--cost", "instances", "--seed", "5", "--threads", "1",
           "--no-progress", "--out", str(out)]
    env = {**os.environ, "AUTOASSIST_TEST_PROBE_LOG": str(probe_log)}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_frontier_tune_on_a_real_job_from_the_command_line_and_resumed(tmp_path, fmnist_dir):
    """One setting, one rung of 3 epochs: uniform at 1, 2, 3 epochs, the setting at 3 and at
    the budgets its measured cost ratio gives; run again, every probe is reused."""
    (tmp_path / "space.json").write_text(json.dumps({"floor": [0.3], "warmup_epochs": [1]}))
    out, probe_log = tmp_path / "run", tmp_path / "invocations.txt"
    first = _frontier_cli(out, probe_log)
    assert first.returncode == 0, first.stderr[-3000:]
    headline = json.loads(first.stdout.strip().splitlines()[-1])
    rung = json.loads((out / "tune.json").read_text())["rungs"][-1]
    assert [p["epochs"] for p in rung["uniform_points"]] == [1, 2, 3]
    assert rung["uniform_points"][-1]["metric"] > 0.5  # really trained (chance is 0.1)
    best = rung["candidates"][0]
    ratio = best["cost_ratio"]
    assert 1 / 3 < ratio < 1  # warm-up epoch whole, then a shrunk one and more
    expected = sorted({3, *(max(1, round(3 * f / ratio)) for f in (2 / 3, 1, 4 / 3))})
    assert [p["epochs"] for p in best["points"]] == expected
    # the recommendation is what the frontiers say, recomputed here from the points
    target = rung["uniform_points"][-1]["metric"]
    assert headline["target"] == pytest.approx(target)
    reaching = [p for p in best["points"] if p["metric"] >= target]
    u_first = next(p for p in rung["uniform_points"] if p["metric"] >= target)
    assert headline["uniform_epochs"] == u_first["epochs"]
    if headline["beats_uniform"]:
        assert headline["epochs"] == reaching[0]["epochs"]
        assert headline["cost_to_target"] < headline["uniform_cost_to_target"]
        assert "chosen: " in first.stdout
    else:
        assert headline["epochs"] == u_first["epochs"]
        assert "train uniformly" in first.stdout
    text = (out / "tuned.toml").read_text()
    assert f"\n[tune]\nwrap = {str(headline['beats_uniform']).lower()}\n" \
           f"epochs = {headline['epochs']}\n" in text
    ran = probe_log.read_text().splitlines()
    assert len(ran) == headline["probes"] == 3 + len(expected)
    assert (out / "tune.png").stat().st_size > 0

    again = _frontier_cli(out, probe_log)  # the same command: nothing trains again
    assert again.returncode == 0, again.stderr[-3000:]
    repeat = json.loads(again.stdout.strip().splitlines()[-1])
    assert repeat["probes_reused"] == repeat["probes"] == headline["probes"]
    assert probe_log.read_text().splitlines() == ran
    assert {k: repeat[k] for k in ("epochs", "saving", "best")} == \
        {k: headline[k] for k in ("epochs", "saving", "best")}
