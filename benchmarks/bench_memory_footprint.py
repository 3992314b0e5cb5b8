"""Memory per live key on the memory backend, against the targets of issue 14.

Run::

    python -m pytest benchmarks/bench_memory_footprint.py --benchmark-enable -s
    python benchmarks/bench_memory_footprint.py            # the table, 100,000 keys
    python benchmarks/bench_memory_footprint.py rss STRATEGY [N] [ENTRIES]   # peak RSS

``per_key`` counts, with ``tracemalloc``, the bytes the store allocates while ``n`` fresh
keys are each hit ``entries`` times (a millisecond apart, under 100/hour, on a FakeClock) and
divides by ``n``: the key as stored, its dict and LRU entries and its state. The caller's key
strings are built before counting (they are the request's, not the store's). Allocation
counts do not depend on the machine's speed, so the targets are asserted on every run (CI
included, at 20,000 keys; 100,000 with ``--benchmark-enable``).

Targets: ``sliding_log`` at most 400 bytes a key with five entries in its log; the counters
(fixed and sliding window, token bucket) at most 250.
"""

from __future__ import annotations

import gc
import resource
import sys
import tracemalloc

import pytest

from throttlekit import Limiter
from throttlekit.testing import FakeClock

#: (strategy, entries per key) -> the most bytes per live key
TARGETS = {
    ("fixed_window", 1): 250,
    ("sliding_window", 1): 250,
    ("token_bucket", 1): 250,
    ("sliding_log", 1): 400,
    ("sliding_log", 5): 400,
}
RATE = "100/hour"


def _fill(strategy: str, keys: list[str], entries: int) -> Limiter:
    clock = FakeClock(1_700_000_000.0)
    limiter = Limiter(strategy=strategy, clock=clock)
    hit = limiter.hit
    for _ in range(entries):
        for k in keys:
            hit(k, RATE)
        clock.advance(0.001)
    return limiter


def per_key(strategy: str, n: int, entries: int = 1) -> float:
    """Bytes the memory store holds per live key, ``n`` keys hit ``entries`` times each."""
    keys = [f"client:{i}" for i in range(n)]
    warm = Limiter(strategy=strategy)  # parse the rate, bind the plan: not per key
    warm.hit("warm", RATE)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        limiter = _fill(strategy, keys, entries)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(limiter.storage) == n  # type: ignore[arg-type]
    return (after - before) / n


def rss_mb(strategy: str, n: int, entries: int = 1) -> float:
    """MB of peak RSS growth while ``n`` live keys are hit ``entries`` times each."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    limiter = _fill(strategy, [f"client:{i}" for i in range(n)], entries)
    assert len(limiter.storage) == n  # type: ignore[arg-type]
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


@pytest.mark.parametrize(("strategy", "entries"), list(TARGETS),
                         ids=[f"{s}-{e}" for s, e in TARGETS])
def test_bytes_per_live_key(request: pytest.FixtureRequest, strategy: str,
                            entries: int) -> None:
    """Each strategy's live key stays within its target (issue 14)."""
    # pyproject's addopts always passes --benchmark-disable; --benchmark-enable wins
    enabled = bool(request.config.getoption("benchmark_enable")
                   or not request.config.getoption("benchmark_disable"))
    n = 100_000 if enabled else 20_000
    got = per_key(strategy, n, entries)
    print(f"\n{strategy}, {entries} entries: {got:.0f} bytes per live key ({n} keys)")
    assert got <= TARGETS[strategy, entries]


def main(argv: list[str]) -> None:
    if argv[:1] == ["rss"]:
        strategy = argv[1] if len(argv) > 1 else "sliding_window"
        n = int(argv[2]) if len(argv) > 2 else 1_000_000
        entries = int(argv[3]) if len(argv) > 3 else 1
        print(f"{strategy}: {n} live keys, {entries} entries: "
              f"{rss_mb(strategy, n, entries):.1f} MB")
        return
    n = int(argv[0]) if argv else 100_000
    print(f"bytes per live key, {n} keys (target)")
    for (strategy, entries), target in TARGETS.items():
        print(f"{strategy:15s} {entries} entries: {per_key(strategy, n, entries):6.0f} "
              f"({target})")


if __name__ == "__main__":
    main(sys.argv[1:])
