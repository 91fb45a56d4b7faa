"""Package layout, data loading on the real Fashion-MNIST files, and the CLI."""

import gzip
import subprocess
import sys

import numpy as np
import pytest
import torch

from autoassist.bench.datasets import (
    DataNotFoundError,
    FashionMNIST,
    load_fashion_mnist_arrays,
    read_idx,
)


def test_import_names():
    import autoassist
    import autoassist.kernels
    import autoassist.pipelines
    import autoassist.pipelines.dataloader

    assert autoassist.wrap is autoassist.pipelines.dataloader.wrap
    assert callable(autoassist.kernels.shrink_select)
    assert autoassist.ShrinkConfig().floor == 0.5


_IMPORT_SIDE_EFFECTS = """
import os, pickle, random, sys
import numpy as np, torch

def facts():  # the global random states (what a draw consumes) and the thread settings
    return {"torch rng": torch.get_rng_state().tolist(),
            "numpy rng": pickle.dumps(np.random.get_state()),
            "python rng": random.getstate(), "torch threads": torch.get_num_threads(),
            "torch interop threads": torch.get_num_interop_threads(),
            "environment": dict(os.environ)}

before = facts()
{imports}
after = facts()
changed = sorted(k for k in before if before[k] != after[k])
print("changed:", ", ".join(changed) or "nothing")
print("numba imported:", "numba" in sys.modules)
"""


def _import_side_effects(imports: str) -> str:
    code = _IMPORT_SIDE_EFFECTS.replace("{imports}", imports)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout


def test_import_has_no_torch_side_effects():
    """Importing the package draws no random number (torch's, NumPy's or Python's global
    generator), sets no thread count and no environment variable, and loads no Numba."""
    out = _import_side_effects(
        "import autoassist, autoassist.kernels, autoassist.pipelines.dataloader")
    assert out.splitlines() == ["changed: nothing", "numba imported: False"]
    # the probe sees each effect: one draw from each generator, a thread count
    probe = _import_side_effects("torch.rand(1); np.random.rand(); random.random(); "
                                 "torch.set_num_threads(torch.get_num_threads() + 1)")
    assert probe.splitlines()[0] == "changed: numpy rng, python rng, torch rng, torch threads"


def test_fashion_mnist_train_real_files(fmnist_dir):
    arrays = load_fashion_mnist_arrays("train", fmnist_dir)
    assert arrays.images.shape == (60000, 28, 28) and arrays.images.dtype == np.uint8
    assert arrays.labels.shape == (60000,) and arrays.labels.dtype == np.int64
    assert arrays.labels.min() == 0 and arrays.labels.max() == 9
    assert np.bincount(arrays.labels).tolist() == [6000] * 10  # balanced by construction
    # the first training label stored in the file is 9 (ankle boot)
    with gzip.open(fmnist_dir / "train-labels-idx1-ubyte.gz", "rb") as f:
        assert f.read(9)[8] == arrays.labels[0] == 9


def test_fashion_mnist_dataset(fmnist_dir):
    test = FashionMNIST("test", root=fmnist_dir)
    assert len(test) == 10000
    x, y = test[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and int(y) == 9
    images, labels = test.tensors()
    # normalised with the training statistics: the test mean is close to 0
    assert abs(float(images.mean())) < 0.05
    assert FashionMNIST("train", root=fmnist_dir, limit=100).images.shape == (100, 1, 28, 28)


def test_env_var_overrides_location(fmnist_dir, monkeypatch):
    monkeypatch.setenv("AUTOASSIST_FASHION_MNIST", str(fmnist_dir))
    assert len(FashionMNIST("test")) == 10000


def test_missing_data_error_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOASSIST_FASHION_MNIST", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        FashionMNIST("train")
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist_arrays("valid", tmp_path)


def test_corrupt_idx_is_rejected(tmp_path):
    bad = tmp_path / "x-idx1-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(bad)
    bad.write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(bad)


@pytest.mark.parametrize("args", [["--help"], ["demo", "--help"]])
def test_cli_help(args):
    out = subprocess.run([sys.executable, "-m", "autoassist.cli", *args], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage: autoassist" in out.stdout
    if args[0] == "demo":
        assert "--epochs" in out.stdout and "Fashion-MNIST" in out.stdout


def test_cli_help_and_version_import_no_torch():
    """``autoassist --help`` / ``--version`` build only the product's parsers: the lab's
    commands (whose options import torch) are listed, and built only when they are run."""
    code = ("import sys\nfrom autoassist.cli import main\n"
            "for argv in (['--help'], ['--version']):\n"
            "    try:\n        main(argv)\n    except SystemExit as exc:\n"
            "        assert exc.code == 0, exc.code\n"
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "[]"  # neither imported
    assert any(line.split()[:1] == ["bench"] and "Time to a tuned" in line for line in lines)
    assert lines[-2] == __import__("autoassist").__version__


def test_console_script_installed():
    import shutil

    exe = shutil.which("autoassist") or str(
        __import__("pathlib").Path(sys.executable).with_name("autoassist"))
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == __import__("autoassist").__version__


def test_cli_demo_missing_data_is_one_clear_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "autoassist.cli", "demo", "--data-dir", str(tmp_path),
         "--epochs", "1", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert "autoassist: error:" in out.stderr and "dataset-fashion-mnist" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_regular_install_ships_kernels_and_pipelines(tmp_path):
    """A built wheel (not the editable install) holds and imports the mapped packages."""
    import shutil
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    # build from a copy of the tracked files: an in-tree build/ left by an earlier build would
    # ship modules that no longer exist
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True,
                             check=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        if (root / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, src / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("autoassist-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("autoassist/kernels/select.py", "autoassist/pipelines/dataloader.py",
                   "autoassist/engine/engine.py"):
        assert module in names
    expected = {prefix + source.relative_to(src / folder).as_posix()
                for folder, prefix in (("autoassist", "autoassist/"),
                                       ("kernels", "autoassist/kernels/"),
                                       ("pipelines", "autoassist/pipelines/"))
                for source in (src / folder).rglob("*.py")}
    # every subpackage is listed in pyproject, and nothing else is shipped
    assert {n for n in names if n.endswith(".py")} == expected
    assert not any(n.startswith(("kernels/", "pipelines/")) for n in names)  # no top-level names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    code = ("import sys; sys.path.insert(0, sys.argv[1]);"
            "import autoassist.kernels as k, autoassist.pipelines.dataloader as d;"
            "print(k.__file__); print(d.__file__)")
    out = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert all(line.startswith(str(target)) for line in out.stdout.split())


def test_demo_summary_compares_time_to_target_and_same_time_accuracy():
    from autoassist.bench.demo import format_table, summarize
    from autoassist.bench.training import Curve

    uniform = Curve("uniform", [1, 2, 3], [10.0, 20.0, 30.0], [0.80, 0.88, 0.90], [1, 2, 3])
    fast = Curve("autoassist", [1, 2, 3], [10.0, 15.0, 19.0], [0.82, 0.90, 0.91], [1, 2, 3])
    slow = Curve("other", [1, 2, 3], [12.0, 24.0, 36.0], [0.70, 0.80, 0.85], [1, 2, 3])
    rows = {r["method"]: r for r in summarize([uniform, fast, slow], uniform)}
    assert rows["autoassist"]["time_to_uniform_final"] == 15.0
    assert rows["autoassist"]["saving"] == pytest.approx(0.5)
    assert rows["autoassist"]["uniform_accuracy_at_same_time"] == 0.80  # uniform at 19 s
    assert rows["other"]["time_to_uniform_final"] is None and rows["other"]["saving"] is None
    table = format_table(list(rows.values()))
    assert "never" in table and "50%" in table


# -- CLI errors: the user's mistakes are one line (exit 2), bugs keep their traceback -----------
def test_cli_user_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    from autoassist.cli import main

    (tmp_path / "job.py").write_text("def job(config=None, epochs=1, seed=0):\n    return []\n")
    job = f"{tmp_path / 'job.py'}:job"
    cases = [
        (["bench", "--methods", "autoassist", "--out", str(tmp_path)], "must include 'uniform'"),
        (["bench", "--lrs", "0.1,fast", "--out", str(tmp_path)], "--lrs"),
        (["demo", "--methods", "uniform,bogus", "--out", str(tmp_path)], "uniform,autoassist"),
        (["tune", "nope.py:job", "--out", str(tmp_path / "t")], "nope.py"),
        (["tune", f"{tmp_path / 'job.py'}:missing", "--out", str(tmp_path / "t")], "missing"),
        (["tune", job, "--space", str(tmp_path / "none.toml"), "--out", str(tmp_path / "t")],
         "none.toml"),
        (["tune", job, "--min-epochs", "5", "--max-epochs", "2"], "min_epochs"),
        (["tune", "--offline", str(tmp_path), "--out", str(tmp_path / "t")], "meta.json"),
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("autoassist: error:") and words in err, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "t").exists()  # refused before anything ran


def test_cli_internal_errors_keep_their_traceback(tmp_path, monkeypatch, capsys):
    import autoassist.bench.time_to_accuracy as tta
    from autoassist.cli import main

    for error in (RuntimeError("boom"), ValueError("boom inside")):  # bugs, not user errors
        def broken(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(tta, "run_cli", broken)
        with pytest.raises(type(error), match="boom"):
            main(["bench", "--out", str(tmp_path)])
        assert "autoassist: error" not in capsys.readouterr().err
    # an error raised by the user's own job module while it is imported keeps its traceback too
    (tmp_path / "bad_job.py").write_text("raise ValueError('broken at import')\n")
    with pytest.raises(ValueError, match="broken at import"):
        main(["tune", f"{tmp_path / 'bad_job.py'}:job", "--out", str(tmp_path / "t")])
    # what the user sees from the command: the traceback, and a failing exit code
    code = ("import sys, autoassist.bench.time_to_accuracy as t\n"
            "def boom(*args, **kwargs):\n    raise RuntimeError('boom')\n"
            "t.run_cli = boom\n"
            "from autoassist.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    out = subprocess.run([sys.executable, "-c", code, "bench", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "Traceback (most recent call last)" in out.stderr
    assert "RuntimeError: boom" in out.stderr and "autoassist: error" not in out.stderr


def test_demo_gives_the_callers_torch_thread_count_back(fmnist_dir, tmp_path, capsys):
    """The real demo, made small (one method, one epoch, 256 images; evaluating on the 10k test
    images is most of its time)."""
    from autoassist.bench.demo import run_demo
    from autoassist.cli import main

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the caller's, different from the demo's --threads 2
        assert main(["demo", "--epochs", "1", "--limit", "256", "--threads", "2", "--methods",
                     "uniform", "--data-dir", str(fmnist_dir), "--out", str(tmp_path),
                     "--no-progress"]) == 0
        assert "2 torch threads" in capsys.readouterr().out  # the demo trained with its own
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="unknown method"):  # and when it fails midway
            run_demo(epochs=1, limit=64, threads=2, data_dir=str(fmnist_dir),
                     out=str(tmp_path), methods=("bogus",), progress=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_every_autoassist_name_in_the_package_text_exists():
    """Docstrings and messages name only modules and objects that exist (no stale names)."""
    import importlib
    import importlib.util
    import re
    from pathlib import Path

    def exists(dotted: str) -> bool:
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):  # the longest prefix that is a module
            try:
                spec = importlib.util.find_spec(".".join(parts[:i]))
            except ModuleNotFoundError:
                spec = None
            if spec is not None:
                break
        if i == len(parts):
            return True
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError as exc:  # an optional dependency (fairseq, ...) is not installed
            return not (exc.name or "").startswith("autoassist")
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True

    from autoassist.cli import COMMANDS_GROUP

    root = Path(__file__).resolve().parents[1]
    stale = sorted(
        f"{path.relative_to(root)}: {name}"
        for folder in ("autoassist", "kernels", "pipelines")
        for path in (root / folder).rglob("*.py")
        for name in set(re.findall(r"\bautoassist(?:\.[A-Za-z_]\w*)+", path.read_text()))
        if not exists(name.rstrip(".")) and name != COMMANDS_GROUP  # an entry-point group
    )
    assert not stale, stale


def test_the_selection_kernels_speed_claim_is_the_measured_one():
    """kernels/select.py quotes the NumPy speed-up that benchmarks/results/kernels.json holds."""
    import json
    import re
    from pathlib import Path

    from autoassist.kernels import select

    measured = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "results"
                           / "kernels.json").read_text())
    claims = re.findall(r"([\d.]+)x faster than (?:the usual vectorised )?NumPy",
                        " ".join(select.__doc__.split()))
    assert claims, select.__doc__
    for claim in claims:  # within rounding of a measured ratio
        assert any(abs(float(claim) - measured[key]) <= 0.05 * measured[key]
                   for key in ("numpy_ratio", "numpy_same_rng_ratio")), (claim, measured)


def test_the_product_never_imports_the_laboratory():
    """``autoassist/bench/`` measures the product; no product module may depend on it (the
    ``autoassist`` command finds the lab's sub-commands through entry points instead)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for folder in ("autoassist", "kernels", "pipelines"):
        for path in (root / folder).rglob("*.py"):
            if path.is_relative_to(root / "autoassist" / "bench"):
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                offenders += [f"{path.relative_to(root)}:{node.lineno} {n}" for n in names
                              if n == "autoassist.bench" or n.startswith("autoassist.bench.")]
                if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                        and node.value.startswith("autoassist.bench"):  # importlib strings
                    offenders.append(f"{path.relative_to(root)}:{node.lineno} {node.value!r}")
    assert not offenders, offenders


def test_the_laboratory_commands_come_from_entry_points(capsys):
    from autoassist.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"tune", "fairseq-user-dir", "demo", "bench"} <= set(commands)


def test_figures_touch_no_global_matplotlib_state(tmp_path):
    """Reports draw without pyplot: a user's backend and open figures stay theirs."""
    pytest.importorskip("matplotlib")
    code = ("import sys; from autoassist.plotting import subplots;"
            "fig, axes = subplots(1, 2, figsize=(4, 2), squeeze=False);"
            "axes[0, 1].plot([0, 1], [1, 0]); fig.savefig(sys.argv[1]);"
            "print('matplotlib.pyplot' in sys.modules, type(axes).__name__)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "f.png")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "ndarray"]  # no pyplot: no backend switched
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_command_plugin_that_fails_to_load_leaves_the_others_working(monkeypatch, capsys):
    import importlib.metadata as md

    from autoassist.cli import COMMANDS_GROUP, main

    real = md.entry_points()
    broken = md.EntryPoint(name="broken", value="autoassist_no_such_module:add",
                           group=COMMANDS_GROUP)
    monkeypatch.setattr(md, "entry_points",
                        lambda group: [*real.select(group=group), broken])
    with pytest.warns(RuntimeWarning, match="'broken'.*could not be loaded"):
        assert main(["fairseq-user-dir"]) == 0
    assert capsys.readouterr().out.strip().endswith("autoassist_fairseq")


def test_every_benchmark_module_imports():
    """A benchmark that cannot even import fails only when someone runs it, and results.md goes
    on citing its old file: ``benchmarks.fairseq_overhead`` imported a helper that a rework of
    ``benchmarks.translation`` had removed. An optional extra that is not installed is skipped,
    not failed."""
    from pathlib import Path

    from conftest import repo_module

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    names = sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")
    assert "fairseq_overhead" in names and "translation" in names
    missing = []
    for name in names:
        try:
            repo_module(f"benchmarks.{name}")
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] in ("benchmarks", "autoassist"):
                raise
            missing.append(f"benchmarks.{name} needs {e.name}")
    if missing:
        pytest.skip("; ".join(missing) + ": not installed")
