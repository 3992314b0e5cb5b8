"""Resident memory of 1,000,000 live keys on the memory backend (a benchmark, run on demand).

Run: ``python benchmarks/bench_memory_footprint.py [strategy]``; prints the RSS growth.
Under pytest it runs a 100,000-key smoke version so CI keeps it working.
"""

from __future__ import annotations

import resource
import subprocess
import sys

from throttlekit import Limiter


def measure(strategy: str, n: int) -> float:
    """MB of peak RSS growth after ``n`` live keys (each hit once under 100/minute)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    limiter = Limiter(strategy=strategy)
    hit = limiter.hit
    for i in range(n):
        hit(f"client:{i}", "100/hour")
    assert len(limiter.storage) == n  # type: ignore[arg-type]
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def test_footprint_smoke():
    """100k keys in a fresh interpreter stay well under 25 MB per 100k (250 MB per million)."""
    out = subprocess.run(
        [sys.executable, __file__, "fixed_window", "100000"],
        check=True, capture_output=True, text=True,
    ).stdout
    assert float(out.split()[-2]) < 25


if __name__ == "__main__":
    strategy = sys.argv[1] if len(sys.argv) > 1 else "sliding_window"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    print(f"{strategy}: {n} live keys: {measure(strategy, n):.1f} MB")
