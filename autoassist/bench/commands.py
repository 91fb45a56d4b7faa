"""The laboratory's sub-commands of ``autoassist``: ``demo`` and ``bench``.

Registered through the ``autoassist.commands`` entry points (``pyproject.toml``); each function
adds its sub-parser. Missing data raises ``DataNotFoundError``, a ``UsageError``: one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autoassist.cli import positive, require
from autoassist.errors import UsageError


def demo(sub) -> None:
    """Train uniform and AutoAssist side by side on Fashion-MNIST.

    ``autoassist demo``; the first line is its help in ``autoassist --help``.
    """
    p = sub.add_parser(
        "demo",
        help="train uniform and AutoAssist side by side on Fashion-MNIST",
        description="Train a small CNN on Fashion-MNIST twice, with uniform sampling and with "
        "AutoAssist's shrinking loader, on the same budget; print accuracy per epoch, a table "
        "(final accuracy, wall-clock, time to uniform's final accuracy) and save a PNG.",
    )
    p.add_argument("--epochs", type=int, default=6, help="epoch budget per method (default 6)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="one-cycle max learning rate")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--floor", type=float, default=None,
                   help="keep-probability floor b (default: the library's, 0.3)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N train images")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--methods", default="uniform,autoassist",
                   help="comma-separated subset of uniform,autoassist")
    p.add_argument("--data-dir", default=None,
                   help="Fashion-MNIST folder (default $AUTOASSIST_FASHION_MNIST or Debian's)")
    p.add_argument("--out", default="autoassist-demo", help="folder for demo.json and the PNG")
    p.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")

    def run(args):
        from autoassist.bench.demo import main

        methods = args.methods.split(",")
        require(bool(methods) and set(methods) <= {"uniform", "autoassist"},
                 f"--methods {args.methods!r}: a comma-separated subset of uniform,autoassist")
        positive(args, "epochs", "batch_size", "threads")
        positive(args, "limit", allow_none=True)
        require(args.floor is None or 0.0 <= args.floor <= 1.0,
                f"--floor {args.floor}: must lie in [0, 1]")
        require(args.num_workers >= 0, f"--num-workers {args.num_workers}: must be >= 0")
        return main(args)

    p.set_defaults(func=run)


def bench(sub) -> None:
    """Time to a tuned baseline's accuracy: autoassist vs its peers.

    ``autoassist bench``; the first line is its help in ``autoassist --help``.
    """
    p = sub.add_parser(
        "bench",
        help="time to a tuned uniform baseline's accuracy: autoassist vs its peers",
        description="Train the task's model with uniform sampling (after a small learning-rate "
        "sweep), autoassist, AutoAssist as published, InfoBatch-style pruning and "
        "Selective-Backprop-style selection on the same budget and seeds; report each method's "
        "wall-clock to the tuned baseline's final accuracy. Writes JSON, PNG and a markdown table.",
    )
    from autoassist.bench.frontier import add_frontier_arguments
    from autoassist.bench.time_to_accuracy import add_arguments

    add_arguments(p)
    p.add_argument("--frontier", action="store_true",
                   help="accuracy-cost frontiers instead: every method at several budgets, each "
                        "run's schedule decayed for its own length; resumable (see "
                        "benchmarks/frontier.py)")
    add_frontier_arguments(p)
    p.add_argument("--out", default="autoassist-bench",
                   help="folder for time_to_accuracy_<task>.json/.png/.md (or frontier_*)")

    def run(args):
        import json

        if args.frontier:
            from autoassist.bench import frontier

            require(args.device == "cpu" and args.limit is None and args.max_extend == 2,
                    "--device, --limit and --max-extend are not options of --frontier")

            result = frontier.run_cli(args, Path(args.out))
            print(json.dumps(result.get("headline")), flush=True)
            return 0
        from autoassist.bench.time_to_accuracy import result_stem, run_cli

        require(args.loop == "sgd" and args.label_noise == 0,
                "--loop and --label-noise belong to --frontier")
        _check_bench(args)
        result = run_cli(args, Path(args.out), result_stem(args))
        print(json.dumps(result["headline"]), flush=True)
        return 0

    p.set_defaults(func=run)


def _check_bench(args: argparse.Namespace) -> None:
    """The ``bench`` arguments, checked before any data is loaded or anything trained."""
    import torch

    from autoassist.bench.time_to_accuracy import ALL_METHODS

    methods = args.methods.split(",") if args.methods else ["uniform"]
    require(set(methods) <= set(ALL_METHODS) and "uniform" in methods,
             f"--methods must include 'uniform' and come from {','.join(ALL_METHODS)}; got "
             f"{args.methods!r}")
    if args.lrs:
        try:
            lrs = [float(v) for v in args.lrs.split(",")]
        except ValueError:
            raise UsageError(f"--lrs {args.lrs!r}: comma-separated numbers, e.g. "
                             "0.05,0.1,0.2") from None
        require(all(lr > 0 for lr in lrs), f"--lrs {args.lrs!r}: learning rates must be > 0")
    positive(args, "seeds", "epochs", "limit", allow_none=True)
    positive(args, "sweep_seeds", "threads", allow_none=True)
    require(args.max_extend >= 0, f"--max-extend {args.max_extend}: must be >= 0")
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise UsageError(f"--device {args.device!r}: {exc}") from None
    require(device.type != "cuda" or torch.cuda.is_available(),
             f"--device {args.device!r}: torch sees no CUDA GPU here; use --device cpu")
