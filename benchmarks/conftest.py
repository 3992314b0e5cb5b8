"""Benchmarks run with pytest-benchmark: ``python -m pytest benchmarks --benchmark-enable --benchmark-only``.

They are ratios against baselines measured in the same run (peers, a bare app), never
timed assertions. CI runs them as a smoke pass with ``--benchmark-disable``.
"""
