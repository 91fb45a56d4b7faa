"""Benchmarks: ``python -m benchmarks.<name> [--quick]``; results in ``benchmarks/results/``."""
