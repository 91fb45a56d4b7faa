"""The ``autoassist`` command.

The product's commands (``tune``, ``fairseq-user-dir``) are defined here; other packages add
theirs through the ``autoassist.commands`` entry-point group: each entry point is a function
``add(subparsers)`` that adds one sub-command (the laboratory's ``demo`` and ``bench`` come that
way, from ``autoassist.bench.commands``), so the product never imports the laboratory.

``autoassist --help`` and ``--version`` stay fast (no torch import): only the command being run
has its ``add`` called (which may import heavy modules for its options); the others are listed
by name with the first line of their ``add`` function's docstring as their help.

Errors: a ``UsageError`` (bad arguments, settings file or input, found by the checks below or
raised by the library's own validators of user input: config and space files, job names,
budgets, traces) prints one line and exits with code 2; any other exception, also one raised by
the user's job while it is imported, propagates with its full traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from autoassist.errors import UsageError

COMMANDS_GROUP = "autoassist.commands"


def require(ok: bool, message: str) -> None:
    """Raise a ``UsageError`` with ``message`` unless ``ok`` (for commands' argument checks)."""
    if not ok:
        raise UsageError(message)


def positive(args: argparse.Namespace, *names: str, allow_none: bool = False) -> None:
    """Each ``--name`` of ``args`` is >= 1 (or None when ``allow_none``), else a UsageError."""
    for name in names:
        value = getattr(args, name)
        if value is None and allow_none:
            continue
        require(value is not None and value >= 1,
                 f"--{name.replace('_', '-')} must be >= 1; got {value}")


def _tune_parser(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="find the shrink settings for your own training job",
        description="Successive halving over shrink settings (floor or adaptive floor, label "
        "smoothing, warm-up, anneal fraction, reweighting, Assistant kind): short probe "
        "trainings of JOB, each against the uniform baseline trained to the same budget; the "
        "best 1/FACTOR go on to FACTOR times the epochs. --objective frontier instead finds the "
        "setting and the epoch count that reach the metric of uniform at --max-epochs (your "
        "usual run) cheapest, against training fewer uniform epochs. Writes tuned.toml (for "
        "autoassist.wrap(loader, config=...) and fairseq's --aa-config; its [tune] table says "
        "whether to wrap and how many epochs to train), tune.json, tune.md and tune.png. "
        "Started again with the same settings, it resumes from OUT/probes.jsonl.",
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
    p.add_argument("--objective", choices=("time_to_target", "metric_at_cost", "frontier"),
                   default="time_to_target",
                   help="time_to_target: saving against the uniform run of each budget; "
                   "metric_at_cost: the metric within uniform's cost; frontier: the setting "
                   "and epoch count reaching uniform's metric at --max-epochs cheapest, "
                   "against uniform trained for fewer epochs too")
    p.add_argument("--target", type=float, default=None,
                   help="metric to reach (default: the uniform baseline's final metric; not "
                   "with --objective frontier, whose target is uniform's at --max-epochs)")
    p.add_argument("--cost", choices=("seconds", "instances"), default="seconds",
                   help="what reaching the target costs: training seconds, or instances "
                   "trained (reproducible, fair when probes run in parallel)")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="time_to_target and frontier: reach uniform's final metric less this "
                   "much (e.g. 0.002 = within 0.2 accuracy points)")
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
            require(args.job is None,
                     "give either JOB (probe trainings) or --offline TRACE, not both")
            require(0.0 < args.recall <= 1.0, f"--recall {args.recall}: must lie in (0, 1]")
            from autoassist.tuning.offline import tune_offline

            off = tune_offline(args.offline, recall=args.recall, seed=args.seed,
                               out=args.out, progress=not args.no_progress)
            print((off.out / "offline.md").read_text())
            print(f"chosen: {off.headline['best']}, floor {off.headline['floor']:.3f} -> "
                  f"{off.config_path}")
            print(json.dumps(off.headline), flush=True)
            return 0
        require(args.job is not None, "autoassist tune needs JOB (module:function or "
                 "file.py:function) or --offline TRACE")
        from autoassist.tuning import tune

        positive(args, "candidates", "seeds", "jobs")
        positive(args, "threads", allow_none=True)
        require(args.tolerance >= 0, f"--tolerance {args.tolerance}: must be >= 0")
        require(args.timeout is None or args.timeout > 0,
                 f"--timeout {args.timeout}: seconds, > 0")
        require(args.cost_budget is None or (args.objective == "metric_at_cost"
                                              and args.cost_budget > 0),
                 "--cost-budget is a positive cost for --objective metric_at_cost")
        # the job, space, base and budgets are checked by tune() before anything runs
        result = tune(args.job, args.space, objective=args.objective, target=args.target,
                      cost=args.cost, mode=args.mode, candidates_n=args.candidates,
                      grid=args.grid, min_epochs=args.min_epochs, max_epochs=args.max_epochs,
                      factor=args.factor, seeds=args.seeds, seed=args.seed, n_jobs=args.jobs,
                      threads=args.threads, base=args.base, out=args.out, fresh=args.fresh,
                      progress=not args.no_progress, timeout_s=args.timeout,
                      cost_budget=args.cost_budget, tolerance=args.tolerance)
        print((result.out / "tune.md").read_text())
        if args.objective == "frontier":
            if result.beats_uniform:
                print(f"chosen: {result.params}, train {result.epochs} epochs -> "
                      f"{result.config_path}")
            else:
                print(f"note: no setting beat uniform's frontier; train uniformly for "
                      f"{result.epochs} epochs ({result.config_path}: wrap = false, "
                      f"epochs = {result.epochs})")
            print(json.dumps(result.headline), flush=True)
            return 0
        if not result.beats_uniform:
            print(f"note: no setting beat the uniform baseline at {result.headline['epochs']} "
                  "epochs; train uniformly, or widen the space or the budget")
        print(f"chosen: {result.params} -> {result.config_path}")
        print(json.dumps(result.headline), flush=True)
        return 0

    p.set_defaults(func=run)


def fairseq_user_dir() -> str:
    """The folder to pass to ``fairseq-train --user-dir`` (the plugin's one home)."""
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


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The ``autoassist`` parser.

    Args:
        commands: the registered commands whose options are built (their ``add`` runs); the
            others are only listed. None: all of them.

    Returns:
        The parser; each sub-command sets ``func`` (``args.func(args)`` runs it).
    """
    from autoassist import __version__

    parser = argparse.ArgumentParser(
        prog="autoassist",
        description="Train deep networks faster on fewer, better-chosen instances.",
    )
    parser.add_argument("--version", action="version", version=__version__,
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _tune_parser(sub)
    _fairseq_user_dir_parser(sub)
    for name, add in _registered_commands():
        if commands is None or name in commands:
            add(sub)
        else:  # listed for --help; its options are built when it is the command run
            sub.add_parser(name, help=_summary(add), add_help=False)
    return parser


def _registered_commands() -> list[tuple[str, Callable[[Any], None]]]:
    """``(name, add(subparsers))`` of the ``autoassist.commands`` entry points, by name."""
    from importlib.metadata import entry_points

    commands = []
    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            commands.append((ep.name, ep.load()))
        except Exception as exc:  # a broken plug-in must not take the other commands down
            import warnings

            warnings.warn(f"autoassist: the command {ep.name!r} ({ep.value}) could not be "
                          f"loaded and is left out: {type(exc).__name__}: {exc}",
                          RuntimeWarning, stacklevel=2)
    return commands


def _summary(add: Callable[[Any], None]) -> str | None:
    """A plug-in command's one-line help: its ``add`` function's docstring's first line."""
    doc = (add.__doc__ or "").strip()
    return doc.splitlines()[0].rstrip(".") if doc else None


def _command_in(argv: list[str]) -> str | None:
    """The sub-command named in ``argv``: its first argument that is not an option (the
    top-level options, ``--help`` and ``--version``, take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_in(argv)
    parser = build_parser(set() if command is None else {command})
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UsageError as exc:  # the user's to fix: one line
        print(f"autoassist: error: {exc}", file=sys.stderr)
        return 2
    # anything else is a bug: its full traceback


if __name__ == "__main__":
    sys.exit(main())
