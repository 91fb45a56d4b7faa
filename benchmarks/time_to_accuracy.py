"""Time to the tuned uniform baseline's final accuracy: autoassist vs its peers, same run.

    python -m benchmarks.time_to_accuracy [--task fashion_mnist|keel_magic] [--seeds 3] [--quick]

Writes ``benchmarks/results/time_to_accuracy_<task>[_cuda][_quick]{.json,.png,.md}`` and prints
the headline (``saving``, ``saving_published``, ``saving_infobatch``, ``saving_sb``,
``saving_random_subset`` (the same-budget random control), final
accuracies, ``saving_within_tolerance``) as one JSON object on the last line. The harness lives
in ``autoassist.bench.time_to_accuracy`` (also behind ``autoassist bench``).
"""

from __future__ import annotations

import argparse
import json

from autoassist.bench.time_to_accuracy import add_arguments, result_stem, run_cli
from benchmarks._common import RESULTS


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.time_to_accuracy",
                                description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    result = run_cli(args, RESULTS, result_stem(args))
    print(json.dumps(result["headline"]), flush=True)
    return result


if __name__ == "__main__":
    main()
