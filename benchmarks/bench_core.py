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


@pytest.mark.parametrize("strategy", [
    *STRATEGIES[:1],
    pytest.param("sliding_window", marks=pytest.mark.target_missed(
        python=(3, 13), reason="issue 14: 1.25-1.33x on 3.13, under the 2x loose bound (1.5); "
        "1.6-1.9x on 3.10 and 3.11, where it is asserted")),
    *STRATEGIES[2:],
])
def test_hit_target(target, strategy):
    """Every algorithm's hit on one hot key is at least 3x faster than `limits`' fixed
    window on its MemoryStorage (same run, interleaved CPU time)."""
    limits = pytest.importorskip("limits")
    from limits import strategies
    from limits.storage import MemoryStorage

    ours, item = Limiter(strategy=strategy).hit, limits.parse(RATE)
    peer = strategies.FixedWindowRateLimiter(MemoryStorage()).hit
    fns = {"throttlekit": lambda: ours("client:0", RATE), "limits": lambda: peer(item, "client:0")}
    us = {k: v * 1e6 for k, v in target.cpu_per_call(fns, *target.size((200_000, 7),
                                                                         (20_000, 5))).items()}
    print(f"\nhit, one hot key: throttlekit {strategy} {us['throttlekit']:.2f} µs, "
          f"limits fixed window {us['limits']:.2f} µs")
    target.at_least(f"{strategy} hit speed-up over limits' fixed window",
                    us["limits"] / us["throttlekit"], 3.0)
