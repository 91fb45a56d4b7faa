"""Accuracy-cost frontiers: every method at several budgets against budget-matched uniform runs.

    python -m benchmarks.frontier [--task keel_magic|fashion_mnist|adult] [--seeds 5] [--quick]
        [--loop sgd|adam] [--label-noise 0.2]

Writes ``benchmarks/results/frontier_<task>[_adam][_noise<f>][_quick]{.json,.png,.md}`` after
every run, stores each finished run in ``benchmarks/results/frontier_runs/`` (re-running the
same command skips them), and prints the headline as one JSON object on the last line:
``task``, ``saving``, ``saving_ci_low``, ``saving_infobatch``, ``saving_sb``,
``saving_published``, ``saving_random``, ``gain_equal_time`` (at uniform's ⅔ budget),
``best_gap``. The harness lives in ``autoassist.bench.frontier`` (also behind
``autoassist bench --frontier``).
"""

from __future__ import annotations

import argparse
import json

from autoassist.bench.frontier import add_arguments, run_cli
from benchmarks._common import RESULTS


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.frontier",
                                description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    result = run_cli(args, RESULTS)
    print(json.dumps(result.get("headline")), flush=True)
    return result


if __name__ == "__main__":
    main()
