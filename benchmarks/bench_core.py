"""hit() per algorithm on the memory backend, beside `limits` on the same work.

Run::

    python -m pytest benchmarks/bench_core.py --benchmark-enable --benchmark-only
Results and ratios are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import itertools

import pytest

from throttlekit import Limiter

STRATEGIES = ["fixed_window", "sliding_window", "sliding_log", "token_bucket"]
LIMITS_STRATEGIES = {
    "limits-fixed_window": "FixedWindowRateLimiter",
    "limits-moving_window": "MovingWindowRateLimiter",
    "limits-sliding_window_counter": "SlidingWindowCounterRateLimiter",
}
RATE = "1000000/second"
KEYS = {"one-hot-key": 1, "100k-keys": 100_000}


def _keys(n: int) -> itertools.cycle[str]:
    return itertools.cycle([f"client:{i}" for i in range(n)])


@pytest.mark.parametrize("keys", KEYS, ids=list(KEYS))
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_throttlekit_hit(benchmark, strategy, keys):
    """throttlekit Limiter.hit on the in-memory default."""
    limiter = Limiter(strategy=strategy)
    hit = limiter.hit
    cycle = _keys(KEYS[keys])
    for _ in range(KEYS[keys]):
        hit(next(cycle), RATE)
    benchmark.group = f"hit {keys}"
    benchmark(lambda: hit(next(cycle), RATE))
    assert hit("probe", RATE).allowed


@pytest.mark.parametrize("keys", KEYS, ids=list(KEYS))
@pytest.mark.parametrize("peer", LIMITS_STRATEGIES)
def test_limits_hit(benchmark, peer, keys):
    """The same work through `limits` on its MemoryStorage."""
    limits = pytest.importorskip("limits")
    from limits import strategies
    from limits.storage import MemoryStorage

    limiter = getattr(strategies, LIMITS_STRATEGIES[peer])(MemoryStorage())
    item = limits.parse(RATE)
    hit = limiter.hit
    cycle = _keys(KEYS[keys])
    for _ in range(KEYS[keys]):
        hit(item, next(cycle))
    benchmark.group = f"hit {keys}"
    benchmark(lambda: hit(item, next(cycle)))
