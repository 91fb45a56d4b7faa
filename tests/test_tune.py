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
    assert err == ("autoassist: error: ShrinkConfig.floor=1.5: must lie in [0, 1] (0.3 is the "
                   "paper's image setting)\n")
    (tmp_path / "typo.toml").write_text("[space]\nflor = [0.5]\n")
    assert "'flor' is not a tunable setting" in _cli_error(
        ["tune", job, "--space", "typo.toml"], capsys)
    (tmp_path / "broken.toml").write_text("[space\nfloor = [0.5]\n")
    assert "broken.toml does not parse as TOML" in _cli_error(
        ["tune", job, "--space", "broken.toml"], capsys)
    assert "base.toml does not exist" in _cli_error(["tune", job, "--base", "base.toml"], capsys)
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
                             floor=0.3, warmup_epochs=1, sync=True, trace_dir=str(out))
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
    job = f"{ROOT / 'tests' / 'tune_jobs.py'}:scripted"
    space = {"floor": [0.3]}
    args = dict(candidates_n=1, min_epochs=4, max_epochs=4, factor=2, cost="instances",
                threads=1, progress=False, n_jobs=1)
    result = tune(job, space, out=tmp_path / "t", tolerance=tolerance, **args)
    seed = result.rungs[-1]["candidates"][0]["seeds"][0]
    if tolerance:  # 0.89 is within 0.02 of 0.90: reached after 1 of uniform's 4 units
        assert seed["reached"] and seed["saving"] == pytest.approx(1 - 1 / 4)
    else:  # 0.90 itself only at the last unit, as uniform: no saving
        assert seed["reached"] and seed["saving"] == pytest.approx(0.0)
    budgeted = tune(job, space, out=tmp_path / "b", objective="metric_at_cost", cost_budget=2,
                    **args)
    at = budgeted.rungs[-1]["candidates"][0]["seeds"][0]
    assert at["metric_at_cost"] == pytest.approx(0.89)  # its metric at cost 2, not 0.95 at 4
    assert at["uniform_metric"] == pytest.approx(0.7)  # uniform's at cost 2 too, not 0.90
    assert budgeted.beats_uniform
