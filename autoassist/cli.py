"""The ``autoassist`` command."""

from __future__ import annotations

import argparse
import sys


def _demo_parser(sub) -> None:
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
    p.add_argument("--floor", type=float, default=0.3, help="keep-probability floor b")
    p.add_argument("--limit", type=int, default=None, help="use only the first N train images")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--methods", default="uniform,autoassist",
                   help="comma-separated subset of uniform,autoassist")
    p.add_argument("--data-dir", default=None,
                   help="Fashion-MNIST folder (default $AUTOASSIST_FASHION_MNIST or Debian's)")
    p.add_argument("--out", default="autoassist-demo", help="folder for demo.json and the PNG")
    p.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")

    def run(args):
        from autoassist.demo import main

        return main(args)

    p.set_defaults(func=run)


def _bench_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="time to a tuned uniform baseline's accuracy: autoassist vs its peers",
        description="Train the task's model with uniform sampling (after a small learning-rate "
        "sweep), autoassist, AutoAssist as published, InfoBatch-style pruning and "
        "Selective-Backprop-style selection on the same budget and seeds; report each method's "
        "wall-clock to the tuned baseline's final accuracy. Writes JSON, PNG and a markdown table.",
    )
    from autoassist.time_to_accuracy import add_arguments

    add_arguments(p)
    p.add_argument("--out", default="autoassist-bench",
                   help="folder for time_to_accuracy_<task>.json/.png/.md")

    def run(args):
        import json
        from pathlib import Path

        from autoassist.time_to_accuracy import result_stem, run_cli

        result = run_cli(args, Path(args.out), result_stem(args))
        print(json.dumps(result["headline"]), flush=True)
        return 0

    p.set_defaults(func=run)


def _tune_parser(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="find the shrink settings for your own training job",
        description="Successive halving over shrink settings (floor or adaptive floor, label "
        "smoothing, warm-up, anneal fraction, reweighting, Assistant kind): short probe "
        "trainings of JOB, each against the uniform baseline trained to the same budget; the "
        "best 1/FACTOR go on to FACTOR times the epochs. Writes tuned.toml (for "
        "autoassist.wrap(loader, config=...) and fairseq's --aa-config), tune.json, tune.md "
        "and tune.png. Started again with the same settings, it resumes from OUT/probes.jsonl.",
    )
    p.add_argument("job", nargs="?", help="module:function or path/to/file.py:function, called "
                   "as job(config=ShrinkConfig|None, epochs=E, seed=S) -> evaluations")
    p.add_argument("--offline", metavar="TRACE", default=None,
                   help="no training: choose the Assistant and floor from a loss trace written "
                   "by a real run (ShrinkConfig trace_dir)")
    p.add_argument("--recall", type=float, default=0.9, help="--offline: recall of informative "
                   "instances the floor must keep (expected)")
    p.add_argument("--space", default=None, help=".toml/.json search space (default: the "
                   "built-in space over every tunable setting)")
    p.add_argument("--objective", choices=("time_to_target", "metric_at_cost"),
                   default="time_to_target")
    p.add_argument("--target", type=float, default=None,
                   help="metric to reach (default: the uniform baseline's final metric)")
    p.add_argument("--cost", choices=("seconds", "instances"), default="seconds",
                   help="what reaching the target costs: training seconds, or instances "
                   "trained (reproducible, fair when probes run in parallel)")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="time_to_target: reach uniform's final metric less this much "
                   "(e.g. 0.002 = within 0.2 accuracy points)")
    p.add_argument("--cost-budget", type=float, default=None,
                   help="metric_at_cost: compare at this cost (seconds or instances at "
                   "--max-epochs; scaled down for shorter rungs) instead of uniform's")
    p.add_argument("--mode", choices=("max", "min"), default="max",
                   help="max for accuracy/BLEU, min for a loss or error rate")
    p.add_argument("--candidates", type=int, default=8, help="settings sampled from the space")
    p.add_argument("--grid", action="store_true", help="every point of a list-only space")
    p.add_argument("--min-epochs", type=int, default=2)
    p.add_argument("--max-epochs", type=int, default=6)
    p.add_argument("--factor", type=int, default=3)
    p.add_argument("--seeds", type=int, default=1, help="probes per candidate and budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="probes run at once")
    p.add_argument("--threads", type=int, default=None, help="torch threads per probe")
    p.add_argument("--base", default=None, help="ShrinkConfig file the candidates start from")
    p.add_argument("--timeout", type=float, default=None, help="seconds per probe")
    p.add_argument("--out", default="autoassist-tune")
    p.add_argument("--fresh", action="store_true", help="ignore an earlier tune in OUT")
    p.add_argument("--no-progress", action="store_true")

    def run(args):
        import json

        if args.offline is not None:
            if args.job is not None:
                raise ValueError("give either JOB (probe trainings) or --offline TRACE, not both")
            from autoassist.tune_offline import tune_offline

            off = tune_offline(args.offline, recall=args.recall, seed=args.seed,
                               out=args.out, progress=not args.no_progress)
            print((off.out / "offline.md").read_text())
            print(f"chosen: {off.headline['best']}, floor {off.headline['floor']:.3f} -> "
                  f"{off.config_path}")
            print(json.dumps(off.headline), flush=True)
            return 0
        if args.job is None:
            raise ValueError("autoassist tune needs JOB (module:function or file.py:function) "
                             "or --offline TRACE")
        from autoassist.tuning import tune

        result = tune(args.job, args.space, objective=args.objective, target=args.target,
                      cost=args.cost, mode=args.mode, candidates_n=args.candidates,
                      grid=args.grid, min_epochs=args.min_epochs, max_epochs=args.max_epochs,
                      factor=args.factor, seeds=args.seeds, seed=args.seed, n_jobs=args.jobs,
                      threads=args.threads, base=args.base, out=args.out, fresh=args.fresh,
                      progress=not args.no_progress, timeout_s=args.timeout,
                      cost_budget=args.cost_budget, tolerance=args.tolerance)
        print((result.out / "tune.md").read_text())
        if not result.beats_uniform:
            print(f"note: no setting beat the uniform baseline at {result.headline['epochs']} "
                  "epochs; train uniformly, or widen the space or the budget")
        print(f"chosen: {result.params} -> {result.config_path}")
        print(json.dumps(result.headline), flush=True)
        return 0

    p.set_defaults(func=run)


def fairseq_user_dir() -> str:
    """The folder to pass to ``fairseq-train --user-dir`` (the plugin's one home)."""
    from pathlib import Path

    import autoassist.pipelines as pipelines

    folder = Path(pipelines.__file__).resolve().parent / "fairseq_user_dir" / "autoassist_fairseq"
    return str(folder)


def _fairseq_user_dir_parser(sub) -> None:
    p = sub.add_parser(
        "fairseq-user-dir",
        help="print the folder for fairseq-train --user-dir",
        description="Print the plugin folder that registers the autoassist_translation task and "
        "the autoassist_label_smoothed_cross_entropy criterion: fairseq-train DATA --user-dir "
        '"$(autoassist fairseq-user-dir)" --task autoassist_translation ...',
    )

    def run(args):
        print(fairseq_user_dir())
        return 0

    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoassist",
        description="Train deep networks faster on fewer, better-chosen instances.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _demo_parser(sub)
    _bench_parser(sub)
    _tune_parser(sub)
    _fairseq_user_dir_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from autoassist import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # user-facing errors: one clear line, not a traceback
        from autoassist.datasets import DataNotFoundError

        if isinstance(exc, (DataNotFoundError, ValueError, FileNotFoundError, RuntimeError)):
            print(f"autoassist: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
