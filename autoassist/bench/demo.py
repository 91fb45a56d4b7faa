"""``autoassist demo``: uniform training and AutoAssist side by side on Fashion-MNIST.

Same model initialisation, same epoch budget, same one-cycle schedule (driven by progress, so it
decays fully in both runs). Prints accuracy per epoch, a summary table, and saves a PNG of test
accuracy against training wall-clock.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from autoassist.bench.datasets import FashionMNIST
from autoassist.bench.models import small_cnn
from autoassist.bench.training import Curve, saving, train_classifier
from autoassist.plotting import subplots


def plot_curves(curves: list[Curve], path: Path, title: str) -> Path | None:
    """Accuracy against training seconds, one line per method; None if matplotlib is missing."""
    made = subplots(figsize=(7, 4.5))
    if made is None:  # no matplotlib: the JSON and tables say it all
        return None
    fig, ax = made
    for curve in curves:
        ax.plot([0] + curve.train_seconds, [None] + curve.accuracy, marker="o", label=curve.name)
    ax.set_xlabel("training wall-clock (s, evaluation excluded)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def summarize(curves: list[Curve], baseline: Curve) -> list[dict]:
    target = baseline.accuracy[-1]
    base_time = baseline.time_to(target)
    rows = []
    for curve in curves:
        t = curve.time_to(target)
        rows.append({
            "method": curve.name,
            "final_accuracy": curve.accuracy[-1],
            "train_seconds": curve.train_seconds[-1],
            "instances_backpropagated": curve.instances[-1],
            "time_to_uniform_final": t,
            "saving": saving(t, base_time),
            "uniform_accuracy_at_same_time": baseline.accuracy_at(curve.train_seconds[-1]),
        })
    return rows


def format_table(rows: list[dict]) -> str:
    head = (f"{'method':<12} {'final acc':>9} {'train s':>8} {'instances':>10} "
            f"{'s to uniform final':>18} {'saving':>7} {'uniform acc, same s':>19}")
    lines = [head, "-" * len(head)]
    for r in rows:
        t = "never" if r["time_to_uniform_final"] is None else f"{r['time_to_uniform_final']:.1f}"
        s = "-" if r["saving"] is None else f"{100 * r['saving']:.0f}%"
        same = r["uniform_accuracy_at_same_time"]
        same = "-" if same is None else f"{same:.4f}"
        lines.append(f"{r['method']:<12} {r['final_accuracy']:>9.4f} {r['train_seconds']:>8.1f} "
                     f"{r['instances_backpropagated']:>10d} {t:>18} {s:>7} {same:>19}")
    return "\n".join(lines)


def run_demo(epochs: int = 6, batch_size: int = 128, lr: float = 0.1, threads: int = 2,
             seed: int = 0, limit: int | None = None, data_dir: str | None = None,
             out: str = "autoassist-demo", methods: tuple[str, ...] = ("uniform", "autoassist"),
             floor: float | None = None, num_workers: int = 0, progress: bool = True) -> dict:
    import autoassist

    callers_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:  # the caller's torch thread count comes back however the demo ends
        train = FashionMNIST("train", root=data_dir, limit=limit)
        test = FashionMNIST("test", root=data_dir).tensors()
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"Fashion-MNIST: {len(train)} train / {len(test[1])} test instances; {epochs} "
              f"epochs, batch {batch_size}, max lr {lr}, {threads} torch threads")
        curves: list[Curve] = []
        telemetry = None
        for method in methods:
            gen = torch.Generator().manual_seed(seed)
            base = DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen,
                              num_workers=num_workers)
            with torch.random.fork_rng():  # same initial weights for every method, global RNG kept
                torch.manual_seed(seed)
                model = small_cnn(width=32)

            def show(curve: Curve) -> None:
                print(f"  {curve.name:<11} epoch {curve.epochs[-1]:>2}: test acc "
                      f"{curve.accuracy[-1]:.4f}  train {curve.train_seconds[-1]:6.1f}s  "
                      f"instances {curve.instances[-1]}")

            if method == "uniform":
                curve = train_classifier(model, base, test, epochs=epochs, max_lr=lr, name=method,
                                         progress_bar=progress, on_epoch=show)
            elif method == "autoassist":
                # the library's defaults (what the frontier benchmark measures); --floor only
                # when asked
                options = {} if floor is None else {"floor": floor}
                with autoassist.wrap(base, seed=seed, **options) as loader:
                    curve = train_classifier(model, loader, test, epochs=epochs, max_lr=lr,
                                             name=method, progress_bar=progress, on_epoch=show)
                    telemetry = loader.telemetry
            else:
                raise ValueError(f"unknown method {method!r}; choose uniform and/or autoassist")
            curves.append(curve)
        result: dict = {"curves": [c.as_dict() for c in curves], "telemetry": telemetry}
        if "uniform" in methods:
            rows = summarize(curves, curves[list(methods).index("uniform")])
            print()
            print(format_table(rows))
            result["summary"] = rows
        png = plot_curves(curves, out_dir / "accuracy_vs_time.png",
                          f"Fashion-MNIST small CNN, {epochs} epochs")
        (out_dir / "demo.json").write_text(json.dumps(result, indent=2))
        print(f"\nwrote {out_dir / 'demo.json'}" + (f" and {png}" if png else
              " (install autoassist[plots] for the PNG)"))
        return result
    finally:
        torch.set_num_threads(callers_threads)


def main(args) -> int:
    t0 = time.perf_counter()
    run_demo(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, threads=args.threads,
             seed=args.seed, limit=args.limit, data_dir=args.data_dir, out=args.out,
             methods=tuple(args.methods.split(",")), floor=args.floor,
             num_workers=args.num_workers, progress=not args.no_progress)
    print(f"total elapsed {time.perf_counter() - t0:.1f}s")
    return 0
