"""hit() per algorithm on the memory backend, beside `limits` on the same work.

Run::

    python -m pytest benchmarks/bench_core.py --benchmark-enable -s
    python benchmarks/bench_core.py [ROUNDS]      # the ratios alone, interleaved

(not ``--benchmark-only``: it skips ``test_ratio_to_limits``, which times by itself.)

``test_ratio_to_limits`` is the target of issue 14: on one hot key, ``Limiter.hit`` and the
store's single-check hit (``MemoryStorage.bind``) of every algorithm at least 3x faster than
`limits`' ``FixedWindowRateLimiter(MemoryStorage()).hit``, measured interleaved in the same
run in CPU time of the thread (other processes on a shared machine do not count), best of
the rounds (noise only ever adds time). With ``--benchmark-enable`` a ratio under the
target is reported as an expected failure that names it (the target is not met in pure
Python, see docs/benchmarks.md), so the run flips to a pass when it is met; in every run,
CI's smoke pass included, a ratio under ``LOOSE`` (slower than `limits`) fails.
Results and ratios are recorded in docs/benchmarks.md.

With the optional compiled core installed (``THROTTLEKIT_COMPILE=1 pip install .``, see
docs/index.md; ``throttlekit.COMPILED`` is then true) the same file measures it: run it
outside the checkout's ``src/`` (``-o pythonpath=`` for pytest), or the sources are imported.
The report's first line says which build ran.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable

import pytest

from throttlekit import COMPILED, Limiter

STRATEGIES = ["fixed_window", "sliding_window", "sliding_log", "token_bucket"]
LIMITS_STRATEGIES = {
    "limits-fixed_window": "FixedWindowRateLimiter",
    "limits-moving_window": "MovingWindowRateLimiter",
    "limits-sliding_window_counter": "SlidingWindowCounterRateLimiter",
}
RATE = "1000000/second"
KEYS = {"one-hot-key": 1, "100k-keys": 100_000}
#: issue 14: every algorithm's memory hit at least this many times faster than limits' fixed
#: window on a hot key
TARGET = 3.0
#: what any run asserts, CI's smoke pass included: never slower than limits' fixed window
#: (today 1.6-2.1x through Limiter.hit, 1.9-2.5x the store's hit: a 2x regression fails)
LOOSE = 1.0
BUILD = (f"throttlekit {'compiled core' if COMPILED else 'pure Python'}, "
         f"Python {sys.version.split()[0]}")


def _keys(n: int) -> itertools.cycle[str]:
    return itertools.cycle([f"client:{i}" for i in range(n)])


def _enabled(config: pytest.Config) -> bool:
    # pyproject's addopts always passes --benchmark-disable; --benchmark-enable wins over it
    # (as pytest-benchmark itself decides), so ask both
    return bool(config.getoption("benchmark_enable")
                or not config.getoption("benchmark_disable"))


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


# -- the ratio target ---------------------------------------------------------------------

def _variants() -> dict[str, Callable[[int], float]]:
    """name -> a timer: ``timer(n)`` runs ``n`` hits on one hot key, returns CPU seconds
    each."""
    import limits
    from limits.storage import MemoryStorage
    from limits.strategies import FixedWindowRateLimiter

    def timer(call: Callable[[], object]) -> Callable[[int], float]:
        def run(n: int) -> float:
            rng = range(n)
            t0 = time.thread_time()
            for _ in rng:
                call()
            return (time.thread_time() - t0) / n
        return run

    peer = FixedWindowRateLimiter(MemoryStorage()).hit
    item = limits.parse(RATE)
    out = {"limits fixed window": timer(lambda: peer(item, "client:1"))}
    for strategy in STRATEGIES:
        limiter = Limiter(strategy=strategy)
        hit = limiter.hit
        out[f"{strategy} Limiter.hit"] = timer(lambda hit=hit: hit("client:1", RATE))
        store_hit = limiter.storage.bind(limiter.plan(RATE).algorithms[0])
        out[f"{strategy} store hit"] = timer(lambda f=store_hit: f("client:1", 1, None))
    return out


def ratios(n: int, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Best seconds per hit of each variant over interleaved rounds, and each one's ratio
    to limits' fixed window (how many times faster)."""
    variants = _variants()
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(rounds):
        for name, run in variants.items():
            best[name] = min(best[name], run(n))
    base = best["limits fixed window"]
    return best, {k: base / v for k, v in best.items() if k != "limits fixed window"}


def _report(best: dict[str, float], ratio: dict[str, float]) -> str:
    lines = [f"{'':32s} {'µs/hit':>8s} {'x limits':>9s}"]
    for name, t in best.items():
        r = ratio.get(name)
        lines.append(f"{name:32s} {t * 1e6:8.3f} {'1.00' if r is None else f'{r:.2f}':>9s}")
    return "\n".join(lines)


def test_ratio_to_limits(request: pytest.FixtureRequest) -> None:
    """Every algorithm's memory hit against limits' fixed window, on one hot key."""
    pytest.importorskip("limits")
    enabled = _enabled(request.config)
    n, rounds = (10_000, 25) if enabled else (5_000, 3)
    best, ratio = ratios(n, rounds)
    print(f"\n{BUILD}\n" + _report(best, ratio))
    slow = {k: round(r, 2) for k, r in ratio.items() if r < LOOSE}
    assert not slow, f"more than 2x slower than today against limits: {slow}"
    if enabled:
        short = {k: round(r, 2) for k, r in ratio.items() if r < TARGET}
        if short:
            pytest.xfail(f"target {TARGET}x not met: {short}")


# The pure-Python marks; the compiled core (throttlekit.COMPILED, docs/index.md) has its own:
# it meets 3x for the fixed window, the sliding window and the token bucket (3.1-3.7x), not
# on every run for the sliding log.
#: (none: each pure algorithm's smoke bound is its own, in test_hit_target)
PURE_MARKS: dict[str, pytest.MarkDecorator] = {}
#: (none: every algorithm meets 3x compiled, the sliding log with the least margin:
#: 3.08-3.12x on 3.11, six array item reads a hit, each a generic call)
COMPILED_MARKS: dict[str, pytest.MarkDecorator] = {}


@pytest.mark.parametrize("strategy", [
    pytest.param(s, marks=(COMPILED_MARKS if COMPILED else PURE_MARKS).get(s, ()))
    for s in STRATEGIES
])
def test_hit_target(target, strategy):
    """Every algorithm's hit on one hot key is at least 3x faster than `limits`' fixed
    window on its MemoryStorage (same run, interleaved CPU time); with the compiled core
    too (``throttlekit.COMPILED``: the target of issue 14 it is built for)."""
    limits = pytest.importorskip("limits")
    from limits import strategies
    from limits.storage import MemoryStorage

    ours, item = Limiter(strategy=strategy).hit, limits.parse(RATE)
    peer = strategies.FixedWindowRateLimiter(MemoryStorage()).hit
    fns = {"throttlekit": lambda: ours("client:0", RATE), "limits": lambda: peer(item, "client:0")}
    # (the smoke pass: the best of 9 short rounds; 5 once gave 1.41x against the usual 2.0-2.1x
    # for the pure fixed window on 3.13, every round slowed by whatever ran beside it)
    us = {k: v * 1e6 for k, v in target.cpu_per_call(fns, *target.size((200_000, 7),
                                                                         (20_000, 9))).items()}
    print(f"\nhit, one hot key: throttlekit {strategy} {us['throttlekit']:.2f} µs, "
          f"limits fixed window {us['limits']:.2f} µs")
    # the pure core misses 3x (2.0-2.5x on 3.11): its smoke bound is 1.5x, which its hit made
    # 2x slower (1.0-1.25x) fails; the sliding window's on 3.13 (1.5-1.7x since its faster
    # hit) is 1.2x; the compiled core's (3.1-3.7x) is the slack's, 3 / 1.5 = 2x
    loose = None if COMPILED else 1.2 if (
        strategy == "sliding_window" and sys.version_info >= (3, 13)) else 1.5
    target.at_least(f"{strategy} hit speed-up over limits' fixed window",
                    us["limits"] / us["throttlekit"], 3.0, loose=loose)


if __name__ == "__main__":
    best, ratio = ratios(10_000, int(sys.argv[1]) if len(sys.argv) > 1 else 25)
    print(BUILD)
    print(_report(best, ratio))
