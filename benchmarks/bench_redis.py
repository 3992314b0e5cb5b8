"""Redis: per-check latency beside `limits`' RedisStorage on the same strategies, async
pipelined throughput, and the token bucket against a bare EVALSHA of a trivial script.

Run (against the local Redis on 6379; keys use a random prefix, nothing is flushed)::

    python -m pytest benchmarks/bench_redis.py --benchmark-enable --benchmark-only \
        --benchmark-group-by=group

Ratios, not absolute times, are what matter: every group has its baseline in the same run.
On a busy machine, ``test_interleaved_ratios`` is the steadier figure: it alternates short
blocks of every contender, so load that comes and goes hits them all alike, and prints the
ratios of their medians (also in ``extra_info``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from throttlekit import Limiter, storage_from_url

URL = "redis://127.0.0.1:6379/0"
RATE = "1000000/second"
# throttlekit strategy -> the `limits` strategy doing the same work
PEERS = {
    "fixed_window": "FixedWindowRateLimiter",
    "sliding_log": "MovingWindowRateLimiter",
    "sliding_window": "SlidingWindowCounterRateLimiter",
}
pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def prefix() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"no Redis at {URL}: {exc} (CI=true: a missing server is an error)")
        pytest.skip(f"no Redis at {URL}: {exc}")
    p = f"tk-bench:{uuid.uuid4().hex[:8]}:"
    yield p
    for pattern in (f"{p}*", f"LIMITS:{p}*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
    client.close()


def _keys(prefix: str) -> itertools.cycle[str]:
    return itertools.cycle([f"{prefix}client:{i}" for i in range(1000)])


@pytest.mark.parametrize("strategy", [*PEERS, "token_bucket"])
def test_throttlekit_redis_hit(benchmark: Any, prefix: str, strategy: str) -> None:
    """throttlekit Limiter.hit on Redis: one EVALSHA."""
    limiter = Limiter(storage_from_url(URL, prefix=prefix), strategy=strategy)
    keys = _keys("")
    hit = limiter.hit
    hit("warm", RATE)
    benchmark.group = f"redis hit: {strategy}"
    benchmark(lambda: hit(next(keys), RATE))
    assert hit("probe", RATE).allowed and not hit("probe", RATE).degraded
    limiter.storage.close()


@pytest.mark.parametrize("strategy", list(PEERS))
def test_limits_redis_hit(benchmark: Any, prefix: str, strategy: str) -> None:
    """The same work through `limits` on its RedisStorage."""
    from limits import parse, strategies
    from limits.storage import RedisStorage

    storage = RedisStorage(URL)
    limiter = getattr(strategies, PEERS[strategy])(storage)
    item = parse(RATE)
    keys = _keys(f"{prefix}{strategy}:")  # limits' keys omit the strategy: keep them apart
    benchmark.group = f"redis hit: {strategy}"
    benchmark(lambda: limiter.hit(item, next(keys)))
    assert limiter.hit(item, f"{prefix}{strategy}:probe")


def test_bare_evalsha_trivial_script(benchmark: Any) -> None:
    """Baseline: EVALSHA of `return 1` with one key, through the same client."""
    import redis

    client = redis.Redis.from_url(URL)
    sha = client.script_load("return 1")
    benchmark.group = "redis hit: token_bucket"
    benchmark(lambda: client.execute_command("EVALSHA", sha, 1, "tk-bench:none"))
    client.close()


@pytest.mark.parametrize("concurrency", [1, 64])
def test_throttlekit_async_throughput(benchmark: Any, prefix: str, concurrency: int) -> None:
    """redis.asyncio: `concurrency` ahit calls in flight at once (the client pipelines them
    over its pool); the figure is per batch of 64 hits."""
    storage = storage_from_url(URL, prefix=prefix, max_connections=64)
    limiter = Limiter(storage, strategy="sliding_window")
    keys = _keys("")
    loop = asyncio.new_event_loop()

    async def batch() -> None:
        if concurrency == 1:
            for _ in range(64):
                await limiter.ahit(next(keys), RATE)
        else:
            await asyncio.gather(*(limiter.ahit(next(keys), RATE) for _ in range(64)))

    loop.run_until_complete(batch())
    benchmark.group = "redis async: 64 hits"
    benchmark(lambda: loop.run_until_complete(batch()))
    loop.run_until_complete(storage.aclose())  # type: ignore[attr-defined]
    loop.close()


@pytest.mark.parametrize("cache", [10_000, 0], ids=["denial-cache", "no-cache"])
def test_refused_request(benchmark: Any, prefix: str, cache: int) -> None:
    """A flood of refused requests from one key: with the local denial cache it costs no
    round trip (extra_info["round_trips_per_refused"] says how many EVALSHAs a call made)."""
    import redis

    storage = storage_from_url(URL, prefix=f"{prefix}refused{cache}:")
    limiter = Limiter(storage, denial_cache_size=cache)
    while limiter.hit("flooder", "5/hour").allowed:
        pass
    client = redis.Redis.from_url(URL)

    def evalshas() -> int:
        stats = client.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    before = evalshas()
    for _ in range(200):
        assert not limiter.hit("flooder", "5/hour").allowed
    # other clients of the shared Redis may add calls: an upper bound, exact on a quiet server
    benchmark.extra_info["round_trips_per_refused"] = (evalshas() - before) / 200
    benchmark.group = "refused request"
    benchmark(limiter.hit, "flooder", "5/hour")
    client.close()
    storage.close()


def test_interleaved_ratios(benchmark: Any, target: Any, prefix: str, capsys: Any) -> None:
    """Medians of alternating 100-call blocks: throttlekit and `limits` per strategy, and a
    bare EVALSHA; the targets are tk/limits <= 1 and token_bucket/bare <= 1.5."""
    import redis
    from limits import parse, strategies
    from limits.storage import RedisStorage

    client = redis.Redis.from_url(URL)
    sha = client.script_load("return 1")
    item = parse(RATE)
    contenders: dict[str, Any] = {
        "bare": lambda: client.execute_command("EVALSHA", sha, 1, "tk-bench:none")
    }
    made = []
    for strategy in [*PEERS, "token_bucket"]:
        limiter = Limiter(storage_from_url(URL, prefix=f"{prefix}il:"), strategy=strategy)
        made.append(limiter.storage)
        keys = _keys("")
        contenders[f"throttlekit {strategy}"] = (
            lambda hit=limiter.hit, keys=keys: hit(next(keys), RATE)
        )
        if strategy in PEERS:
            peer = getattr(strategies, PEERS[strategy])(RedisStorage(URL))
            lkeys = _keys(f"{prefix}il:{strategy}:")
            contenders[f"limits {strategy}"] = (
                lambda hit=peer.hit, lkeys=lkeys: hit(item, next(lkeys))
            )
    times: dict[str, list[float]] = {name: [] for name in contenders}

    def rounds() -> None:
        for fn in contenders.values():
            for _ in range(200):
                fn()
        for _ in range(target.size(60, 15)):  # a smoke pass stays short
            for name, fn in contenders.items():
                t = time.perf_counter()
                for _ in range(100):
                    fn()
                times[name].append((time.perf_counter() - t) * 1e4)  # us per call

    benchmark.group = "redis interleaved (see extra_info)"
    benchmark.pedantic(rounds, rounds=1, iterations=1)
    med = {name: statistics.median(v) for name, v in times.items()}
    ratios = {f"{s}: throttlekit/limits": med[f"throttlekit {s}"] / med[f"limits {s}"]
              for s in PEERS}
    ratios["token_bucket: throttlekit/bare"] = med["throttlekit token_bucket"] / med["bare"]
    benchmark.extra_info.update({f"median_us {k}": round(v, 1) for k, v in med.items()})
    benchmark.extra_info.update({k: round(v, 3) for k, v in ratios.items()})
    with capsys.disabled():
        print()
        for k, v in med.items():
            print(f"  median {k:32s} {v:7.1f} us")
        for k, v in ratios.items():
            print(f"  ratio  {k:32s} {v:7.3f}")
    client.close()
    for storage in made:
        storage.close()
    for s in PEERS:
        target.at_most(f"redis {s}: throttlekit/limits", ratios[f"{s}: throttlekit/limits"], 1.0)
    target.at_most("redis token_bucket: throttlekit/bare EVALSHA",
                   ratios["token_bucket: throttlekit/bare"], 1.5)
