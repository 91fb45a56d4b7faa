"""The frontier harness: its readings on hand-made frontiers, its data splits, and resuming."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from autoassist.bench import frontier
from autoassist.bench.frontier import (
    accuracy_at_cost,
    analyse,
    budget_epochs,
    flip_labels,
    headline,
    interpolate_cost,
    overhead_ratio,
    run_compute,
    split_validation,
)
from autoassist.errors import UsageError


def _points(method, costs, accs, seeds=(0, 1, 2), jitter=0.0, epochs=None):
    out = []
    epochs = epochs or list(range(1, len(costs) + 1))
    for s in seeds:
        for e, c, a in zip(epochs, costs, accs, strict=True):
            out.append({"method": method, "epochs": e, "seed": s, "cost": c * (1 + 0.01 * s),
                        "accuracy": a + jitter * (s - 1), "wall": c, "backpropagated": 0})
    return out


def test_compute_axis_reads_instance_passes_and_overhead_is_cpu_per_pass():
    # a method that trains on half the passes but pays 20% more CPU per pass
    assert run_compute({"backpropagated": [5, 10], "forwarded": [5, 40]}) == 60
    assert run_compute({"backpropagated": [5, 10]}) == 30  # forward only what it backpropagates
    points = (_points("uniform", [1, 2, 3, 4], [0.80, 0.85, 0.86, 0.855])
              + _points("half", [0.6, 1.2, 1.8, 2.4], [0.80, 0.85, 0.86, 0.855]))
    for p in points:
        per_pass = 1.0 if p["method"] == "uniform" else 1.2
        p["compute"] = p["cost"] / per_pass * 100  # passes
    by_cost = analyse(points, [0, 1, 2], bootstrap=50)
    by_compute = analyse(points, [0, 1, 2], bootstrap=50, axis="compute")
    assert by_compute["axis"] == "compute" and by_cost["axis"] == "cost"
    assert by_cost["methods"]["half"]["saving"] == pytest.approx(0.4)
    assert by_compute["methods"]["half"]["saving"] == pytest.approx(0.5)
    assert overhead_ratio(points, "half") == pytest.approx(1.2)
    assert overhead_ratio(points, "absent") is None
    with pytest.raises(ValueError, match="cost axis"):
        analyse(points, [0, 1, 2], axis="wall")
    h = headline("t", by_cost, by_compute)
    assert h["saving"] is None and h["saving_compute"] is None  # no "autoassist" here


def test_interpolation_reads_between_budgets_and_never_extrapolates():
    assert interpolate_cost([1, 2, 3], [0.5, 0.7, 0.9], 0.8) == pytest.approx(2.5)
    assert interpolate_cost([1, 2, 3], [0.85, 0.7, 0.9], 0.8) == 1.0  # already at the first
    assert interpolate_cost([1, 2, 3], [0.5, 0.7, 0.79], 0.8) is None
    assert accuracy_at_cost([1, 3], [0.5, 0.9], 2.0) == pytest.approx(0.7)
    assert accuracy_at_cost([1, 3], [0.5, 0.9], 0.5) is None
    assert accuracy_at_cost([1, 3], [0.5, 0.9], 3.5) is None


def test_saving_target_and_equal_cost_gain_on_hand_made_frontiers():
    points = (_points("uniform", [1, 2, 3, 4], [0.80, 0.85, 0.86, 0.855])
              + _points("fast", [0.5, 1, 1.5, 2], [0.82, 0.85, 0.86, 0.87], epochs=[2, 4, 6, 8])
              + _points("slow", [1, 2, 3, 4], [0.70, 0.75, 0.80, 0.85], epochs=[2, 4, 6, 8]))
    a = analyse(points, [0, 1, 2], bootstrap=200)
    assert a["target"] == pytest.approx(0.86)
    assert a["reference_epochs"] == 3
    ref = a["reference_cost"]
    assert ref == pytest.approx(3 * 1.01)  # mean over the seeds' costs
    fast = a["methods"]["fast"]
    assert fast["saving"] == pytest.approx(1 - 1.5 * 1.01 / ref)
    assert fast["saving_ci"][0] == pytest.approx(fast["saving"])  # no seed noise in accuracy
    assert fast["reached_fraction"] == 1.0
    # at uniform's 2nd budget (cost 2 per seed) the fast frontier is at 0.87, uniform at 0.85
    gain = fast["gain_equal_cost"]["2"]
    assert gain["mean"] == pytest.approx(0.02) and gain["n"] == 3
    slow = a["methods"]["slow"]
    assert slow["saving"] is None and slow["saving_ci"][0] is None
    assert slow["reached_fraction"] == 0.0
    # the saving to reach uniform's accuracy at each of its budgets, not only at its best
    at = fast["saving_at_budget"]
    assert at["2"]["target"] == pytest.approx(0.85) and not at["2"]["first_point"]
    assert at["2"]["saving"] == pytest.approx(0.5) == at["2"]["ci"][0]
    assert at["4"]["saving"] == pytest.approx(1 - 1.25 / 4)  # between its 0.85 and 0.86
    assert at["1"]["first_point"] and at["1"]["saving"] == pytest.approx(0.5)  # a lower bound
    assert slow["saving_at_budget"]["1"]["saving"] == pytest.approx(1 - 3 / 1)  # costs 3x
    assert slow["saving_at_budget"]["3"]["saving"] is None
    h = headline("t", {**a, "methods": {"uniform": a["methods"]["uniform"],
                                        "autoassist": fast}})
    assert h["saving"] == fast["saving"] and h["gain_equal_time"] == pytest.approx(0.02)
    assert h["best_gap"] == pytest.approx(0.87 - 0.86)
    assert h["saving_sb"] is None


def test_bootstrap_interval_widens_with_seed_noise():
    points = (_points("uniform", [1, 2, 3, 4], [0.80, 0.85, 0.86, 0.855], jitter=0.0)
              + _points("m", [0.5, 1, 1.5, 2], [0.82, 0.85, 0.86, 0.87], jitter=0.01))
    m = analyse(points, [0, 1, 2], bootstrap=400)["methods"]["m"]
    low, high = m["saving_ci"]
    assert low is not None and low < m["saving"] < high


def test_incomplete_uniform_frontier_is_an_error_and_methods_report_incomplete():
    points = _points("uniform", [1, 2], [0.8, 0.9]) + _points("m", [1, 2], [0.8, 0.9])
    points = [p for p in points if not (p["method"] == "m" and p["seed"] == 2)]
    a = analyse(points, [0, 1, 2], bootstrap=10)
    assert a["methods"]["m"]["complete"] is False
    with pytest.raises(ValueError, match="incomplete"):
        analyse([p for p in points if p["method"] == "m"], [0, 1], bootstrap=10)


def test_budgets_span_uniform_range():
    assert budget_epochs(15, 1.0) == [5, 10, 15, 22]
    assert budget_epochs(15, 2.0) == [10, 20, 30, 45]
    assert budget_epochs(1, 1.0) == [1, 2]  # duplicates removed, never 0


def test_label_noise_and_validation_split_on_real_data():
    from autoassist.bench.tasks import get_task

    train, _ = get_task("keel_magic").load(None)
    noisy = flip_labels(train, 0.2)
    x, y = train.tensors()
    nx, ny = noisy.tensors()
    changed = (ny != y)
    assert torch.equal(nx, x)
    assert changed.float().mean().item() == pytest.approx(0.2, abs=1 / len(y))
    assert torch.equal(flip_labels(train, 0.2).tensors()[1], ny)  # seeded
    assert flip_labels(train, 0.0) is train
    fit, val = split_validation(train)
    assert len(fit) + len(val) == len(train)
    assert abs(len(val) - 0.1 * len(train)) <= 1
    rows = {tuple(r.tolist()) for r in val.tensors()[0][:200]}
    assert not rows & {tuple(r.tolist()) for r in fit.tensors()[0]}
    fit2, _ = split_validation(train)
    assert torch.equal(fit2.tensors()[1], fit.tensors()[1])
    with pytest.raises(ValueError, match="label noise"):
        flip_labels(train, 1.0)


@pytest.mark.slow
def test_frontier_runs_are_stored_and_skipped_on_rerun(tmp_path, monkeypatch):
    """A small real frontier (magic slice): outputs written, every run stored; the same command
    again trains nothing; other code (another fingerprint) trains everything again."""
    from autoassist.bench import tasks, time_to_accuracy

    base = tasks.get_task("keel_magic")
    tiny = tasks.Task(name="magic_tiny", description="magic slice", load=lambda limit:
                      base.load(800), model=lambda: tasks.mlp(10, 2, hidden=32, depth=2),
                      epochs=3, batch_size=64, lrs=(0.05,))
    monkeypatch.setitem(tasks.TASKS, "magic_tiny", tiny)
    calls = []
    real = time_to_accuracy.run_one

    def counting(*args, **kwargs):
        calls.append((args[1], kwargs["epochs"], kwargs["seed"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(time_to_accuracy, "run_one", counting)
    kwargs = dict(out=tmp_path, seeds=2, methods=("uniform", "autoassist"), epochs=3,
                  lrs=(0.05,), sweep_seeds=1, fractions=(2 / 3, 1.0), progress=False,
                  log=lambda *_: None)
    result = frontier.run_frontier("magic_tiny", **kwargs)
    # sweep: uniform E=3 on the validation split, 1 seed; frontier: 2 budgets x 2 methods x 2 seeds
    assert len(calls) == 1 + 8
    assert ("autoassist", 4, 1) in calls and ("uniform", 2, 0) in calls
    saved = json.loads((tmp_path / "frontier_magic_tiny.json").read_text())
    assert saved["seeds_done"] == 2 and not saved["partial"]
    assert {p["method"] for p in saved["points"]} == {"uniform", "autoassist"}
    assert all(p["cost"] > 0 for p in saved["points"])
    # uniform's compute is 3 passes per instance per epoch, whatever the machine did
    uniform_compute = {p["epochs"]: p["compute"] for p in saved["points"]
                       if p["method"] == "uniform"}
    assert set(uniform_compute) == {2, 3} and uniform_compute[2] % 6 == 0
    assert uniform_compute[2] // 2 == uniform_compute[3] // 3
    assert saved["analysis_compute"]["axis"] == "compute"
    assert "saving_compute" in saved["headline"]
    assert set(saved["headline"]) >= {"task", "saving", "saving_ci_low", "saving_infobatch",
                                      "saving_sb", "saving_published", "saving_random",
                                      "saving_control", "gain_equal_time", "best_gap"}
    assert saved["headline"]["saving_control"] is None  # the control was not run
    # read again from the file alone: the same savings at each of uniform's budgets
    read = frontier.reanalyse(tmp_path / "frontier_magic_tiny.json")
    assert (read["analysis"]["methods"]["autoassist"]["saving_at_budget"]
            == saved["analysis_compute"]["methods"]["autoassist"]["saving_at_budget"])
    assert "| autoassist |" in read["table"] and "uniform at 3 epochs" in read["table"]
    # and stored, naming the runs' commit and its own, so that a doc can cite the reading
    import autoassist.bench.provenance as provenance

    monkeypatch.setattr(provenance, "git_commit", lambda: "reading-commit")
    written = frontier.write_reanalysis(read, tmp_path / "out")
    stored = json.loads(written.read_text())
    assert written.name == "frontier_magic_tiny_per_budget.json"
    assert stored["source"] == "frontier_magic_tiny.json" and stored["axis"] == "compute"
    assert stored["source_commit"] == saved["commit"] != "reading-commit"
    assert stored["commit"] == "reading-commit"
    # the CPU-seconds reading goes to its own file, never over the compute one
    by_cost = frontier.write_reanalysis(
        frontier.reanalyse(tmp_path / "frontier_magic_tiny.json", axis="cost"), tmp_path / "out")
    assert by_cost.name == "frontier_magic_tiny_per_budget_cost.json"
    # the command line writes the same file
    parser = argparse.ArgumentParser()
    frontier.add_arguments(parser)
    args = parser.parse_args(["--reanalyse", str(tmp_path / "frontier_magic_tiny.json")])
    cli = frontier.run_cli(args, tmp_path / "cli")
    assert cli["headline"]["written"].endswith("frontier_magic_tiny_per_budget.json")
    assert (json.loads((tmp_path / "cli" / "frontier_magic_tiny_per_budget.json").read_text())
            ["analysis"] == stored["analysis"])
    assert (stored["analysis"]["methods"]["autoassist"]["saving_at_budget"]
            == saved["analysis_compute"]["methods"]["autoassist"]["saving_at_budget"])
    assert (tmp_path / "out" / "frontier_magic_tiny_per_budget.md").read_text().strip() \
        == read["table"].strip()
    with pytest.raises(UsageError, match="not a frontier result"):
        frontier.reanalyse(tmp_path / "frontier_runs")
    assert result["headline"] == saved["headline"]
    assert len(list((tmp_path / "frontier_runs").glob("*.json"))) == 9
    # autoassist ran with the library's defaults: wrap(loader) with nothing but the seed
    aa = [json.loads(p.read_text()) for p in (tmp_path / "frontier_runs").glob("*autoassist*")]
    assert all(r["method"] == "autoassist" and r["telemetry"] for r in aa)
    first = list(calls)
    real_training = frontier.code_fingerprint(product=False)
    calls.clear()
    frontier.run_frontier("magic_tiny", **kwargs)
    assert calls == []
    # other product code: autoassist's runs again, uniform's kept (no product code in them)
    monkeypatch.setattr(frontier, "code_fingerprint",
                        lambda product=True: "other-product" if product else real_training)
    calls.clear()
    frontier.run_frontier("magic_tiny", **kwargs)
    assert sorted(calls) == sorted(c for c in first if c[0] == "autoassist")
    # other training code: everything again
    monkeypatch.setattr(frontier, "code_fingerprint", lambda product=True: "other")
    calls.clear()
    frontier.run_frontier("magic_tiny", **kwargs)
    assert len(calls) == 9


def test_frontier_command_line_errors_are_one_line(capsys):
    from autoassist.cli import main

    assert main(["bench", "--frontier", "--methods", "autoassist"]) == 2
    assert "must include 'uniform'" in capsys.readouterr().err
    assert main(["bench", "--frontier", "--label-noise", "1.5"]) == 2
    assert "--label-noise" in capsys.readouterr().err
    assert main(["bench", "--loop", "adam"]) == 2
    assert "--frontier" in capsys.readouterr().err


def test_third_task_is_real_adult_data():
    from autoassist.bench.tasks import get_task

    task = get_task("adult")
    train, (x_test, y_test) = task.load(None)
    x, y = train.tensors()
    assert x.shape == (32561, 109) and len(y_test) == 16281
    assert set(np.unique(y.numpy())) == {0, 1}
    assert task.model()(x[:4]).shape == (4, 2)


def test_recording_thread_facts_leaves_torch_on_its_thread_count():
    """provenance.thread_info() starts Numba's threading layer (OpenMP), which set torch's
    thread count to Numba's: a 1-thread benchmark trained on 2 threads after its first write."""
    import subprocess
    import sys

    code = ("import torch, numba\n"
            "torch.set_num_threads(1)\n"
            "from autoassist.bench.provenance import thread_info\n"
            "info = thread_info()\n"
            "print(torch.get_num_threads(), info['numba_threads'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**__import__("os").environ, "NUMBA_NUM_THREADS": "2",
                                           "OMP_NUM_THREADS": "2"})
    assert out.returncode == 0, out.stderr
    torch_threads, numba_threads = map(int, out.stdout.split())
    assert (torch_threads, numba_threads) == (1, 2)


def test_the_code_fingerprint_ignores_documentation_but_not_code(tmp_path):
    """Correcting a docstring or a comment keeps stored runs; any change to what runs, or a
    renamed file, discards them."""
    path = tmp_path / "select.py"

    def fingerprint(text, name="select.py"):
        target = tmp_path / name
        target.write_text(text)
        return frontier.fingerprint_files([target])

    text = '"""8.7x faster."""\n\ndef f(x):\n    """Why."""\n    return x + 1\n'
    base = fingerprint(text)
    assert fingerprint('"""8.1x faster (re-measured)."""\n\n\ndef f(x):  # a comment\n'
                       '    """Why, said better."""\n    return x + 1\n') == base
    assert fingerprint(text.replace("x + 1", "x + 2")) != base
    assert fingerprint(text.replace("x + 1", '"x + 1"')) != base  # not a docstring: code
    assert fingerprint(text, name="other.py") != base
    path.write_text("def f(:\n")
    with pytest.raises(SyntaxError):
        frontier.fingerprint_files([path])
