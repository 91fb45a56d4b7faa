"""The examples run as users run them (a subprocess each, real Fashion-MNIST, small slices)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> list[str]:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return [line for line in out.stdout.splitlines() if line.startswith("epoch ")]


@pytest.mark.slow
def test_fashion_mnist_example_shrinks_learns_and_resumes(fmnist_dir, tmp_path):
    ckpt = str(tmp_path / "ckpt.pt")
    common = ["--limit", "4000", "--batch-size", "100", "--threads", "1"]
    first = _run("fashion_mnist.py", *common, "--epochs", "3", "--checkpoint", ckpt)
    assert [line.split(":")[0] for line in first] == ["epoch 0", "epoch 1", "epoch 2"]
    assert "kept 100% (warmup)" in first[0]
    assert "(shrink)" in first[2] and "kept 100%" not in first[2]
    acc = float(first[2].split("test acc ")[1].split(",")[0])
    assert acc > 0.7  # 10 classes: chance is 0.1
    resumed = _run("fashion_mnist.py", *common, "--epochs", "4", "--resume", ckpt)
    assert [line.split(":")[0] for line in resumed] == ["epoch 3"]


@pytest.mark.slow
def test_torchdata_example_shrinks(fmnist_dir):
    lines = _run("torchdata_nodes.py", "--limit", "4000", "--epochs", "3", "--threads", "1")
    assert len(lines) == 3
    assert "kept 100%" in lines[0] and "kept 100%" not in lines[2]
    assert float(lines[2].split("test acc ")[1].split(",")[0]) > 0.6


def test_examples_are_listed_in_their_readme():
    listed = (ROOT / "examples" / "README.md").read_text()
    for script in (ROOT / "examples").glob("*.py"):
        assert script.name in listed, f"examples/README.md does not mention {script.name}"


@pytest.mark.slow
def test_translation_example_trains_both_ways_and_scores_bleu(tmp_path):
    pytest.importorskip("fairseq", reason="pip install 'autoassist[fairseq]'")
    import json

    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "translation" / "run.py"), "--train-pairs", "300",
         "--max-words", "30", "--vocab-size", "500", "--epochs", "2", "--layers", "1",
         "--dim", "64", "--threads", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    commands = [line for line in out.stdout.splitlines() if line.startswith("$ ")]
    assert len(commands) == 4  # train + generate, twice
    assert "--task translation " in commands[0]
    assert "--user-dir" in commands[2] and "--task autoassist_translation" in commands[2]
    assert "autoassist: epoch 2 kept" in out.stdout and "(shrink)" in out.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in results] == ["uniform", "autoassist"]
    assert all(0.0 <= r["test_bleu"] <= 100.0 and r["seconds"] > 0 for r in results)


@pytest.mark.slow
def test_boss_example_trains_two_stage_processes_on_the_shrinking_loader(fmnist_dir):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "boss" / "fashion_mnist.py"), "--schedule",
         "local_parallel", "--epochs", "2", "--limit", "3000", "--width", "8", "--sync"],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 2 and "kept 100%" in epochs[0] and "kept 100%" not in epochs[1]
    acc = float(lines[-1].split("test accuracy ")[1].split()[0])
    assert acc > 0.6  # 10 classes: chance is 0.1


@pytest.mark.slow
def test_rl_example_trains_checkpoints_and_resumes(tmp_path):
    pytest.importorskip("mujoco")
    import json

    common = ["--env", "InvertedPendulum-v5", "--eval-every", "400", "--units", "32",
              "--start-steps", "200",
              "--batch-size", "64", "--replay", "prioritized", "--out", str(tmp_path / "out"),
              "--checkpoint", str(tmp_path / "run.pt")]
    out = subprocess.run([sys.executable, str(ROOT / "examples/rl/train_sac.py"), *common,
                          "--steps", "800"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert [line.split()[0] for line in out.stdout.splitlines() if "steps" in line
            and "return" in line] == ["400", "800"]
    out = subprocess.run([sys.executable, str(ROOT / "examples/rl/train_sac.py"), *common,
                          "--steps", "1200", "--resume"], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    history = json.loads((tmp_path / "out" / "history.json").read_text())["history"]
    assert [h["env_steps"] for h in history] == [400, 800, 1200]
    assert history[-1]["updates"] == 1200 - 200  # one per transition after the first 200
