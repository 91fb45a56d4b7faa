"""The laboratory: what measures the product, not what users import to train.

The time-to-accuracy harness behind ``autoassist bench`` and ``python -m benchmarks.<name>``, its
tasks, data sets, reference models and training loop, the peers' selection rules (InfoBatch,
Selective Backprop) as baselines, provenance of results, the demo, and the translation corpus and
fairseq runs. It imports the product; the product never imports it (the ``autoassist`` command
finds the ``bench`` and ``demo`` commands through the ``autoassist.commands`` entry points).
"""
