"""Redis: per-check latency beside `limits`' RedisStorage on the same strategies, async
pipelined throughput, the token bucket against a bare EVALSHA of a trivial script, and
(``test_redis_cpu_per_check``) the time Redis itself spends per check, against `limits`
and a reference GCRA, on a redis-server of our own.

Run (against the local Redis on 6379; keys use a random prefix, nothing is flushed; the
CPU test starts its own redis-server on a spare port)::

    python -m pytest benchmarks/bench_redis.py --benchmark-enable --benchmark-only \
        --benchmark-group-by=group

    python -m pytest benchmarks/bench_redis.py -o addopts="" -s -k cpu

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
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
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
    hour = time.time() // 3600  # (the window: an hour of the real clock)
    while limiter.hit("flooder", "5/hour").allowed:
        pass
    client = redis.Redis.from_url(URL)

    def evalshas() -> int:
        stats = client.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    before = evalshas()
    admitted = [limiter.hit("flooder", "5/hour").allowed for _ in range(200)]
    # refused, unless a new hour's window began meanwhile (a fixed window resets then)
    assert not any(admitted) or time.time() // 3600 != hour
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


# -- Redis CPU per check (issue 14): server time, on a redis-server of our own ---------------

#: throttlekit's Redis time per check <= this times the peer's for the same algorithm
REDIS_CPU_TARGET = 1.2
#: CI's smoke bound for those ratios: 2x the target, not the default 1.5x (their reference,
#: `limits`' fixed window, moves by 1.7x between runs on a shared machine: 13.5 and 7.9 µs
#: in two CI runs an hour apart, 2026-12-07, which put a 1.05 ratio at 1.8)
REDIS_CPU_LOOSE = 2.4
# The cheapest correct GCRA we could write, the token bucket's reference: integer
# microseconds on the caller's clock, one key (the theoretical arrival time), GET and
# SET .. PX; answers the remaining tokens (>= 0) or minus the retry time (< 0).
GCRA = """local now, T, capT, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new = tat + cost * T
if new - now > capT then return capT - (new - now) end
redis.call('SET', KEYS[1], new, 'PX', math.floor((new - now + 999) / 1000))
return math.floor((capT - (new - now)) / T)"""


#: Every contender's checks are sent at this pace (seconds per check, longer than any
#: contender's own client time on an idle machine): how often a check starts a new window,
#: and how warm Redis is when it comes (a slower client alone made the same script cost
#: 1.14x the Redis time per check here), must not depend on how fast the client is.
PACE = 300e-6


def _paced(fn: Any, n: int) -> None:
    """``fn(0)``, ..., ``fn(n - 1)``, one every PACE seconds (busy-waiting: a sleep's
    wake-up is coarser than that; a call that took longer delays the next, no burst)."""
    clock = time.perf_counter
    due = clock()
    for i in range(n):
        fn(i)
        due += PACE
        if clock() > due:
            due = clock()
        while clock() < due:
            pass


def _server_usec(client: Any) -> tuple[int, int]:
    """Total usec and calls of the top-level script commands (what a check costs Redis:
    a script's inner commands are inside its EVALSHA's time)."""
    stats = client.info("commandstats")
    usec = calls = 0
    for name in ("cmdstat_evalsha", "cmdstat_eval"):
        usec += stats.get(name, {}).get("usec", 0)
        calls += stats.get(name, {}).get("calls", 0)
    return usec, calls


def _cpu_contenders(url: str, client: Any, n: int) -> dict[str, Any]:
    """name -> a function of the check's number: one check each, ``n`` keys in turn."""
    from limits import parse, strategies
    from limits.storage import RedisStorage

    from throttlekit import WSGIMiddleware

    item = parse(RATE)
    keys = [f"client:{i}" for i in range(n)]
    out: dict[str, Any] = {}
    # (throttlekit's 0.25 s socket timeout, not limits': on a loaded machine a stalled
    # server would answer some checks locally, and a block would not be all scripts)
    url = f"{url}?socket_timeout=5"
    for strategy in ("fixed_window", "sliding_window", "token_bucket", "sliding_log"):
        hit = Limiter(storage_from_url(url, prefix=f"tk-{strategy}:"), strategy=strategy).hit
        out[f"throttlekit {strategy}"] = lambda i, hit=hit: hit(keys[i % n], RATE)
    for strategy, peer in PEERS.items():
        lhit = getattr(strategies, peer)(RedisStorage(url.partition("?")[0],
                                                     key_prefix=f"L{strategy}")).hit
        out[f"limits {strategy}"] = lambda i, lhit=lhit: lhit(item, keys[i % n])
    sha = client.script_load(GCRA)
    ex = client.execute_command
    out["GCRA reference"] = lambda i: ex(
        "EVALSHA", sha, 1, f"gcra:{{{keys[i % n]}}}", int(time.time() * 1e6), 1, 1_000_000, 1
    )
    mw_storage = storage_from_url(url, prefix="tk-mw:", watch_blocks=True)  # the watch (opt-in)
    limiter = Limiter(mw_storage)
    limiter.throttle("per-ip", RATE, strategy="fixed_window")
    app = WSGIMiddleware(lambda environ, start_response: start_response("200 OK", []) or [b""],
                         limiter)
    envs = [{"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": f"10.0.{i // 250}.{i % 250}",
             "wsgi.url_scheme": "http", "SERVER_NAME": "x", "SERVER_PORT": "80"}
            for i in range(n)]
    out[MIDDLEWARE] = lambda i: app(
        dict(envs[i % n]), lambda *a: None  # (the middleware marks the environ it saw)
    )
    # the default, without the watch: every request looks its block key up (one EXISTS in
    # the fixed window's own script)
    unwatched = Limiter(storage_from_url(url, prefix="tk-mw0:", watch_blocks=False))
    unwatched.throttle("per-ip", RATE, strategy="fixed_window")
    app0 = WSGIMiddleware(lambda environ, start_response: start_response("200 OK", [])
                          or [b""], unwatched)
    out[f"{MIDDLEWARE}, watch_blocks=False"] = lambda i: app0(dict(envs[i % n]),
                                                               lambda *a: None)
    out[MIDDLEWARE](0)  # starts the blocklist watch: measured once it is live
    deadline = time.monotonic() + 10
    while not (mw_storage._watch is not None and mw_storage._watch.live):  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the blocklist watch never became live"
        time.sleep(0.01)
    return out


MIDDLEWARE = "throttlekit middleware, one fixed_window throttle"
#: (throttlekit, its reference) pairs held to REDIS_CPU_TARGET
CPU_PAIRS = {
    "fixed_window": ("throttlekit fixed_window", "limits fixed_window"),
    "sliding_window": ("throttlekit sliding_window", "limits sliding_window"),
    "token_bucket": ("throttlekit token_bucket", "GCRA reference"),
    "middleware, one throttle": (MIDDLEWARE, "limits fixed_window"),
    "middleware, one throttle, default": (f"{MIDDLEWARE}, watch_blocks=False",
                                          "limits fixed_window"),
}


def test_redis_cpu_per_check(benchmark: Any, target: Any, capsys: Any) -> None:
    """Redis time per check (``INFO commandstats``: total usec of EVALSHA over N checks / N)
    on a redis-server of our own, blocks of every contender interleaved; medians and their
    ratios. Targets: throttlekit <= REDIS_CPU_TARGET x `limits`' same algorithm (fixed window:
    its INCRBY path; sliding window: its counter), the token bucket x the GCRA reference,
    and a middleware request with one throttle x `limits`' fixed window, with the opt-in
    blocklist watch and by default (its block key looked up in the same script)."""
    import redis

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from servers import RedisServer, start_or_skip

    # every key checked 4 times per block on average (a block takes 1.2 s at PACE)
    rounds, block, nkeys = target.size((11, 4000, 1000), (3, 1000, 250))
    with start_or_skip(RedisServer()) as server:
        client = redis.Redis.from_url(server.url)
        contenders = _cpu_contenders(server.url, client, nkeys)
        per_call: dict[str, list[float]] = {name: [] for name in contenders}

        def run() -> None:
            for fn in contenders.values():  # scripts loaded, keys made
                for i in range(nkeys):
                    fn(i)
            for _ in range(rounds):
                for name, fn in contenders.items():
                    u0, c0 = _server_usec(client)
                    _paced(fn, block)
                    u1, c1 = _server_usec(client)
                    # one script per check, and now and then the fixed window's id
                    # registry (register.lua: a few a minute), charged to the checks
                    assert block <= c1 - c0 <= block + block // 500, (name, c1 - c0)
                    per_call[name].append((u1 - u0) / block)

        benchmark.group = "redis CPU per check (see extra_info)"
        benchmark.pedantic(run, rounds=1, iterations=1)
        client.close()
    med = {name: statistics.median(v) for name, v in per_call.items()}
    ratios = {k: med[a] / med[b] for k, (a, b) in CPU_PAIRS.items()}
    benchmark.extra_info.update({f"usec {k}": round(v, 2) for k, v in med.items()})
    benchmark.extra_info.update({f"ratio {k}": round(v, 3) for k, v in ratios.items()})
    with capsys.disabled():
        print()
        for k, v in med.items():
            print(f"  Redis usec/check {k:52s} {v:6.2f}")
        for k, v in ratios.items():
            print(f"  ratio            {k:52s} {v:6.3f}  (target <= {REDIS_CPU_TARGET})")
    _CPU_RATIOS.update(ratios)
    _CPU_BOUND[0] = REDIS_CPU_TARGET * target.slack if target.measuring else REDIS_CPU_LOOSE
    # (here too: --benchmark-only skips test_redis_cpu_target, which checks the misses;
    # the smoke pass asserts at the loose bound)
    for k, v in ratios.items():
        if k not in _CPU_MISSES:
            target.at_most(f"redis CPU per check {k}", v, REDIS_CPU_TARGET,
                           loose=REDIS_CPU_LOOSE)


_CPU_RATIOS: dict[str, float] = {}  # test_redis_cpu_per_check's, for the target tests below
_CPU_BOUND = [REDIS_CPU_TARGET]  # and the bound of its run (the target, or the smoke's)
#: pairs that do not meet the target yet, and why (xfails, not strict: the smoke pass's short
#: runs sometimes land under the target by noise)
_CPU_MISSES: dict[str, str] = {}


@pytest.mark.parametrize(
    "pair",
    [pytest.param(k, marks=pytest.mark.xfail(reason=_CPU_MISSES[k], strict=False))
     if k in _CPU_MISSES else k for k in CPU_PAIRS],
)
def test_redis_cpu_target(pair: str) -> None:
    """throttlekit's Redis time per check <= REDIS_CPU_TARGET x its reference's (measured by
    test_redis_cpu_per_check in the same run; the smoke pass: at its loose bound)."""
    if pair not in _CPU_RATIOS:
        pytest.skip("run with test_redis_cpu_per_check (it measures the ratios)")
    ratio, bound = _CPU_RATIOS[pair], _CPU_BOUND[0]
    assert ratio <= bound, f"{pair}: {ratio:.3f} x its reference's Redis time (<= {bound:g})"
