"""Accuracy-cost frontiers: every method at several budgets against budget-matched uniform runs.

    python -m benchmarks.frontier [--task keel_magic|fashion_mnist|adult] [--seeds 5] [--quick]
        [--loop sgd|adam] [--label-noise 0.2]

Writes ``benchmarks/results/frontier_<task>[_adam][_noise<f>][_quick]{.json,.png,.md}`` after
every run, stores each finished run in ``benchmarks/results/frontier_runs/`` (re-running the
same command skips them), and prints the headline as one JSON object on the last line:
``task``, ``saving``, ``saving_ci_low``, ``saving_infobatch``, ``saving_sb``,
``saving_published``, ``saving_random``, ``gain_equal_time`` (at uniform's ⅔ budget),
``best_gap``. ``--reanalyse FILE`` trains nothing: it prints the savings to reach uniform's
accuracy at each of its budgets, read from a result file's stored points, and writes them to
``<file stem>_per_budget.json`` (+ ``.md``). The harness lives in
``autoassist.bench.frontier`` (also behind ``autoassist bench --frontier``).
"""

from __future__ import annotations

import argparse
import json
import os

# Before torch loads: one OpenMP thread unless asked otherwise. With a pool of two on a loaded
# 2-core machine, an idle OpenMP worker was seen spinning a whole core at its barrier, doubling
# the CPU seconds this benchmark's cost counts (and stealing the Assistant's core).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from autoassist.bench.frontier import add_arguments, run_cli  # noqa: E402 - after the env
from benchmarks._common import RESULTS  # noqa: E402


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
