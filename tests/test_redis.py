"""The Redis backend against a real server: exact agreement with the in-memory arithmetic,
key layout and TTLs, reset without KEYS, the blocklist, script reloading, URLs and errors."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends import redis as redis_backend
from servers import RedisServer, start_or_skip
from throttlekit import (
    ConfigError,
    Decision,
    Limiter,
    MemoryStorage,
    StorageError,
    storage_from_url,
)
from throttlekit._algorithms import make_algorithm
from throttlekit._rates import Rate
from throttlekit.storage import RedisStorage
from throttlekit.storage.base import Check
from throttlekit.storage.redis._scripts import script as _script
from throttlekit.testing import FakeClock

pytestmark = pytest.mark.redis
T0 = 1_700_000_000_000_000
STRATEGIES = ["fixed_window", "sliding_window", "sliding_log", "token_bucket"]


@pytest.fixture(scope="module")
def ctx() -> Iterator[redis_backend.Context]:
    with redis_backend.session() as c:
        yield c


@pytest.fixture
def storage(ctx: redis_backend.Context) -> Iterator[RedisStorage]:
    s = ctx.storage()
    yield s
    s.close()


@pytest.fixture
def raw(ctx: redis_backend.Context) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(ctx.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="module")
def own_server() -> Iterator[RedisServer]:
    with start_or_skip(RedisServer()) as server:
        yield server


# -- exactness ------------------------------------------------------------------------------

RATES = [Rate(3, 1.0), Rate(5, 2.5), Rate(10, 60.0), Rate(1_000_000, 86400.0 * 30)]
steps = st.sampled_from([0, 1, 999, 250_000, 333_333, 1_000_000, 2_500_000, 61_000_000])
batch = st.lists(
    st.tuples(
        st.integers(0, len(RATES) - 1),  # rate
        st.sampled_from(["a", "b", "{a}"]),  # key
        st.sampled_from([0, 1, 1, 1, 2, 4, 11]),  # cost
        st.booleans(),  # independent
    ),
    min_size=1,
    max_size=4,
    unique_by=lambda t: (t[0], t[1]),  # the memory backend's charge of a repeated check differs
)


@given(
    strategy=st.sampled_from(STRATEGIES),
    ops=st.lists(st.tuples(steps, batch, st.booleans()), min_size=1, max_size=30),
)
def test_decisions_equal_the_memory_backend(ctx: Any, strategy: str, ops: Any) -> None:
    """Any sequence of batches gives exactly the memory backend's Decisions, to the microsecond."""
    redis_storage, memory = ctx.storage(), MemoryStorage()
    algs = [make_algorithm(strategy, r) for r in RATES]
    now = T0 + 123_457
    try:
        for step, items, consume in ops:
            now += step
            checks = [
                Check(algs[i], key, cost if strategy != "sliding_log" else min(cost, 3), ind)
                for i, key, cost, ind in items
            ]
            want = memory.apply(checks, consume=consume, now=now).decisions
            assert redis_storage.apply(checks, consume=consume, now=now).decisions == want
    finally:
        redis_storage.reset(["a", "b", "{a}"])
        redis_storage.close()


single = st.lists(
    st.tuples(
        steps,
        st.integers(0, len(RATES) - 1),  # rate
        st.sampled_from([0, 1, 1, 1, 2, 4, 11]),  # cost
        st.sampled_from([True, True, True, False]),  # consume
        st.sampled_from([False, False, False, True]),  # probe
    ),
    min_size=1,
    max_size=30,
)


def _state(raw: Any, storage: RedisStorage, key: str, algs: list[Any]) -> tuple[Any, ...]:
    h = storage.family(key)
    logs = [raw.lrange(f"{h}:l:{a.id}", 0, -1) for a in algs]
    windows = [raw.get(f"{h}:w:{a.id}") for a in algs]  # fixed windows' string keys
    ttls = [raw.pttl(h), *(raw.pttl(f"{h}:{t}:{a.id}") for a in algs for t in "lw")]
    return raw.hgetall(h), (logs, windows), ttls


@pytest.mark.parametrize("name", ["batch", *STRATEGIES])
def test_scripts_define_no_strategy_function_per_run(name: str) -> None:
    """Each strategy's Lua is written once but pasted in place: a script run defines no
    function but the exact-arithmetic helpers the scripts always had (Redis CPU per check)."""
    source = _script(name).source
    assert not [line for line in source.splitlines() if line.startswith("--#")]
    defined = set(re.findall(r"\bfunction\s*(\w*)\s*\(", source))  # "" for function(...)
    assert defined <= {"idiv", "muldiv", "drain"}


@pytest.mark.parametrize("clock", ["client", "server"])
@pytest.mark.parametrize("strategy", STRATEGIES)
@given(ops=single)
def test_single_check_scripts_match_the_batch_script(
    ctx: Any, raw: Any, strategy: str, clock: str, ops: Any
) -> None:
    """A lone check runs its strategy's own small script (on the client clock, one that
    answers the state it found): same Decisions, state and TTLs as the batch script gives
    the same check (forced here by a block-key lookup)."""
    storage = ctx.storage(clock=clock)
    algs = [make_algorithm(strategy, r) for r in RATES]
    now = T0 + 123_457
    worst = 0.0
    try:
        for step, i, cost, consume, probe in ops:
            now += step
            cost = cost if strategy != "sliding_log" else min(cost, 3)
            check = Check(algs[i], "one", cost, False, probe)
            started = time.monotonic()
            one = storage.apply([check], consume=consume, now=now)
            both = storage.apply(
                [check._replace(key="bat")],
                consume=consume, now=now, block_keys=["nobody"],
            )
            assert one.decisions == both.decisions and one.blocked == []
            fields, logs, ttls = _state(raw, storage, "one", algs)
            b_fields, b_logs, b_ttls = _state(raw, storage, "bat", algs)
            assert (fields, logs) == (b_fields, b_logs)
            # ms apart: the calls' own delay (on the server's clock, however long they took),
            # this op's or an earlier one's (a TTL compared may have been set by an earlier op)
            worst = max(worst, (time.monotonic() - started) * 1000)
            slack = 250 + worst
            for t, b in zip(ttls, b_ttls, strict=True):
                assert (t < 0) == (b < 0) and abs(t - b) < slack, (ttls, b_ttls, slack)
    finally:
        storage.reset(["one", "bat"])
        storage.close()


def test_batch_is_all_or_nothing_in_one_call(storage: RedisStorage) -> None:
    """A denied rate charges none of the others; an independent check is charged on its own."""
    small, big = make_algorithm("fixed_window", Rate(1, 10)), make_algorithm(
        "fixed_window", Rate(100, 10)
    )
    audit = make_algorithm("sliding_window", Rate(100, 10))
    assert storage.apply([Check(small, "k"), Check(big, "k")], now=T0).decisions[0].allowed
    d = storage.apply(
        [Check(small, "k"), Check(big, "k"), Check(audit, "k", 1, True)], now=T0 + 1
    ).decisions
    assert [x.allowed for x in d] == [False, True, True]
    # big was not charged by the refused batch; audit was.
    after = storage.apply([Check(big, "k", 0), Check(audit, "k", 0)], now=T0 + 2).decisions
    assert [after[0].remaining, after[1].remaining] == [99, 99]


@pytest.mark.parametrize("strategy", ["sliding_window", "token_bucket"])
def test_large_rates_stay_exact(storage: RedisStorage, strategy: str) -> None:
    """A billion a month: products beyond 2^53 (Lua's exact range) are still exact."""
    alg = make_algorithm(strategy, Rate(1_000_000_000, 86400 * 30))
    memory = MemoryStorage()
    now = T0
    for cost in (600_000_000, 300_000_000, 200_000_000, 99_999_999, 1, 3, 7 * 10**8):
        now += 86400 * 10 * 1_000_000 + 7
        c = [Check(alg, "big", cost)]
        assert storage.apply(c, now=now).decisions == memory.apply(c, now=now).decisions


# -- time ------------------------------------------------------------------------------------


def _stamp(raw: Any, storage: RedisStorage, alg: Any, key: str, last: Decision) -> int:
    """The time (microseconds) the state of ``alg`` under ``key`` was written at (``last``:
    the Decision of that write): a sliding log's newest entry, a bucket's last update (a
    bucket kept as GCRA holds when it is full again), a window's start."""
    h = storage.family(key)
    if alg.name == "sliding_log":
        return int(raw.lindex(f"{h}:l:{alg.id}", -1).split()[0])
    if alg.name == "token_bucket":
        parts = raw.hget(h, alg.id).split()
        if len(parts) == 1:
            return int(parts[0]) - round(last.reset_after * 1e6)
        return int(parts[0])
    if alg.name == "fixed_window":  # (window mod 2^19) << 33 | count: the window's start,
        # taken to be the latest window with those low bits (the test runs within 2^19 s)
        low = int(raw.get(f"{h}:w:{alg.id}")) >> 33
        now_win = int(raw.time()[0]) * 1_000_000 // alg.period_us + 1
        win = now_win - (now_win - low) % (1 << 19)
        return win * alg.period_us
    return int(raw.hget(h, alg.id).split()[0]) * alg.period_us  # a sliding window's


def _ttl(raw: Any, storage: RedisStorage, alg: Any, key: str) -> int:
    """The TTL (ms) of the key holding ``alg``'s state under ``key``: a fixed window's
    string key, else the family's hash."""
    h = storage.family(key)
    return int(raw.pttl(f"{h}:w:{alg.id}" if alg.name == "fixed_window" else h))


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
def test_server_clock_when_asked(
    ctx: Any, raw: Any, strategy: str, batch: bool
) -> None:
    """clock="server": without a limiter's time the window is the server's (Redis TIME), and
    TTLs get no slack (the server's clock needs none)."""
    storage = ctx.storage(clock="server")
    alg = make_algorithm(strategy, Rate(10, 1))
    block_keys = ["nobody"] if batch else []

    def server_us() -> int:
        sec, usec = raw.time()
        return int(sec) * 1_000_000 + int(usec)

    # The exact figures below hold when both calls fall in one second of the server's clock
    # and within 0.1 s (a token of this bucket comes back every 0.1 s). A second may turn
    # between them, or a busy host pause this process longer: then try again on a fresh key
    # (a precondition, not a timing).
    for attempt in range(20):
        key = f"t{attempt}"
        began = server_us()
        ds = [storage.apply([Check(alg, key)], block_keys=block_keys).decisions[0]
              for _ in range(2)]
        ended = server_us()
        if ended - began < 100_000 and began // 1_000_000 == ended // 1_000_000:
            break
    else:
        pytest.fail("no try of 20 made two calls within 0.1 s and one second of the server")
    assert [(d.allowed, d.remaining) for d in ds] == [(True, 9), (True, 8)]
    d = ds[-1]
    sec, usec = raw.time()
    assert 0 <= sec * 1_000_000 + usec - _stamp(raw, storage, alg, key, d) < 2_000_000
    assert 0 < _ttl(raw, storage, alg, key) <= 2000
    storage.close()


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
def test_client_clock_is_the_default(
    storage: RedisStorage, raw: Any, strategy: str, batch: bool
) -> None:
    """By default the time is this process's (time.time), passed to the script; TTLs get
    ttl_slack more, since Redis cannot check that clock."""
    import time

    assert storage.clock == "client"
    alg = make_algorithm(strategy, Rate(10, 1))
    block_keys = ["nobody"] if batch else []
    # The exact figures below hold when both calls and the TTL read fall in one window and
    # within 0.1 s (a token of this bucket comes back every 0.1 s). A busy host may pause
    # this process longer: then try again on a fresh key (a precondition, not a timing).
    for attempt in range(20):
        key = f"t{attempt}"
        began = time.time()
        ds = [storage.apply([Check(alg, key)], block_keys=block_keys).decisions[0]
              for _ in range(2)]
        pttl = _ttl(raw, storage, alg, key)
        ended = time.time()
        if ended - began < 0.1 and int(began) == int(ended):  # one 1 s window
            break
    else:
        pytest.fail("no try of 20 made two calls within 0.1 s and one window")
    assert [(d.allowed, d.remaining) for d in ds] == [(True, 9), (True, 8)]
    before = int(began * 1_000_000) // alg.period_us * alg.period_us
    assert before <= _stamp(raw, storage, alg, key, ds[-1]) <= int(ended * 1_000_000)
    assert 5000 < pttl <= 7000


def test_limiter_clock_is_passed_to_the_script(ctx: Any) -> None:
    """Limiter(clock=FakeClock()) drives Redis: advancing the fake clock refills the limit."""
    clock = FakeClock()
    limiter = Limiter(ctx.storage(), clock=clock, strategy="fixed_window")
    assert [limiter.hit("c", "2/minute").allowed for _ in range(3)] == [True, True, False]
    clock.advance(60)
    assert limiter.hit("c", "2/minute").allowed
    limiter.storage.close()


# -- keys and TTLs -----------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_key_has_a_ttl_no_longer_than_needed(
    ctx: Any, raw: Any, strategy: str
) -> None:
    """Each written key expires, within the period (+ the client-clock slack when one is used;
    a sliding window: two periods; a token bucket: at the end of the period in which it is
    full again, here 720 s after the hit). (An hour: a fixed window's key written in the last
    milliseconds of a short window would be gone before the scan.)"""
    alg = make_algorithm(strategy, Rate(5, 3600))
    storage = ctx.storage(clock="server")
    storage.hit(alg, "ttl", 1, None)  # server time: no slack
    keys = list(raw.scan_iter(match=f"{storage.prefix}*"))
    assert keys
    limit_ms = {"sliding_window": 7_200_000, "token_bucket": 4_320_000}.get(strategy, 3_600_000)
    registry = f"{storage.prefix}{{%w}}"  # the fixed-window ids in use (see reset): it
    # lives a minute to the next registration, a minute for hosts' clocks, the slack and an
    # hour (for clocks off by less) longer than their windows
    for key in keys:
        bound = limit_ms + 3_725_000 if key == registry else limit_ms
        assert 0 < raw.pttl(key) <= bound, key
    storage.hit(alg, "ttl2", 1, T0)  # client time: the slack on top
    for key in raw.scan_iter(match=f"{storage.family('ttl2')}*"):
        assert 0 < raw.pttl(key) <= limit_ms + 5000
    storage.close()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_hash_of_several_rates_keeps_its_longest_ttl(
    storage: RedisStorage, raw: Any, strategy: str
) -> None:
    """Hits on a short rate never shorten the TTL a longer rate of the same key needs."""
    long, short = make_algorithm(strategy, Rate(5, 3600)), make_algorithm(strategy, Rate(100, 1))
    storage.hit(long, "k", 1, T0)
    first = _ttl(raw, storage, long, "k")
    assert first > 700_000  # at least a token's refill time, 720 s
    for i in range(3):
        storage.hit(short, "k", 1, T0 + i * 2_000_000)
        assert _ttl(raw, storage, long, "k") > first - 1000


def test_a_longer_need_extends_the_ttl(storage: RedisStorage, raw: Any) -> None:
    """A bucket emptied further needs longer to refill: its key's TTL always covers the
    refill (Decision.reset_after) and runs at most to the end of the period it ends in."""
    alg = make_algorithm("token_bucket", Rate(5, 3600))
    period_ms, slack_ms = 3_600_000, 5000
    ttls = []
    for i in range(5):
        now = T0 + i * 1000
        d = storage.hit(alg, "k", 1, now)
        ttl = raw.pttl(storage.family("k"))
        refill_ms = d.reset_after * 1000
        end_of_period_ms = ((now + d.reset_after * 1e6) // (period_ms * 1000) + 1) * period_ms
        # (+ 50 ms: the fake clock moves 1 ms per hit, real time less; PTTL rounds)
        assert refill_ms <= ttl <= end_of_period_ms - now / 1000 + slack_ms + 50
        ttls.append(ttl)
    assert ttls[-1] > ttls[0]  # the need crossed a period's end: the TTL was extended


def test_keys_are_hash_tagged_and_escaped(storage: RedisStorage) -> None:
    """Braces and percent signs in user keys are escaped, so distinct keys never share a tag."""
    import redis.crc

    assert storage.family("a{b}") != storage.family("a%7Bb%7D")
    assert storage.family("") != storage.family("%")
    for key in ["user:1", "a{b}", "}", "{", "%", "", "é ü"]:
        fam = storage.family(key)
        tag = fam[fam.index("{") + 1 : fam.index("}")]
        assert tag, key
        assert redis.crc.key_slot(f"{fam}:l:x".encode()) == redis.crc.key_slot(fam.encode())


def test_colliding_looking_keys_do_not_share_state(storage: RedisStorage) -> None:
    """Keys that differ only by escaping have separate limits."""
    alg = make_algorithm("fixed_window", Rate(1, 60))
    assert storage.hit(alg, "a{b}", 1, T0).allowed
    assert storage.hit(alg, "a%7Bb%7D", 1, T0).allowed
    assert storage.hit(alg, "", 1, T0).allowed
    assert storage.hit(alg, "%", 1, T0).allowed
    assert not storage.hit(alg, "a{b}", 1, T0).allowed


def test_reset_forgets_every_strategy_and_rate_without_keys(
    storage: RedisStorage, own_server: RedisServer
) -> None:
    """reset(key) clears all algorithms of the key (sliding logs too) and never runs KEYS/SCAN."""
    s = storage_from_url(own_server.url, prefix="r:")
    algs = [make_algorithm(n, Rate(1, 60)) for n in STRATEGIES]
    for a in algs:
        assert s.hit(a, "k", 1, T0).allowed
        assert s.hit(a, "other", 1, T0).allowed
    own_server.command("CONFIG", "RESETSTAT")
    s.reset(["k"])
    stats = own_server.command("INFO", "commandstats")
    assert "cmdstat_keys" not in stats and "cmdstat_scan" not in stats
    assert all(s.hit(a, "k", 1, T0).allowed for a in algs)
    assert not any(s.hit(a, "other", 1, T0).allowed for a in algs)
    s.close()


# -- blocklist -------------------------------------------------------------------------------------


def test_blocklist_lists_expires_and_is_checked_in_the_batch(storage: RedisStorage) -> None:
    """block/unblock/blocked with reasons and expiry; apply reports live blocks in the same call."""
    storage.block("ip:1", 60, "abuse", now=T0)
    storage.block("ip:2", None, "forever", now=T0)
    storage.block("ip:3", 1, "short", now=T0)
    listed = storage.blocked(now=T0 + 2_000_000)
    assert [(b.key, b.expires_at, b.reason) for b in listed] == [
        ("ip:1", T0 / 1e6 + 60, "abuse"),
        ("ip:2", float("inf"), "forever"),
    ]
    alg = make_algorithm("fixed_window", Rate(5, 1))
    r = storage.apply([Check(alg, "ip:1")], now=T0 + 2_000_000, block_keys=["ip:1", "ip:3", "x"])
    assert r.blocked[0] is not None and r.blocked[0].reason == "abuse"
    assert r.blocked[1:] == [None, None]
    assert storage.unblock("ip:1") and not storage.unblock("ip:1")
    assert [b.key for b in storage.blocked(now=T0 + 2_000_000)] == ["ip:2"]


def test_block_rejects_bad_ttl(storage: RedisStorage) -> None:
    """A non-positive ttl is a ConfigError."""
    with pytest.raises(ConfigError, match="ttl"):
        storage.block("k", 0)


# -- scripts and round trips -----------------------------------------------------------------------


def _calls(server: RedisServer) -> dict[str, int]:
    stats = server.command("INFO", "commandstats")
    out = {}
    for line in stats.splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            out[name[8:]] = int(rest.split(",")[0].split("=")[1])
    return out


def test_one_evalsha_per_check_including_multi_rate(own_server: RedisServer) -> None:
    """Every hit is one EVALSHA and nothing else, whatever the strategy or number of rates."""
    s = storage_from_url(own_server.url, prefix="rt:")
    limiter = Limiter(s)
    for strategy in STRATEGIES:  # loads the scripts (NOSCRIPT -> EVAL once each)
        limiter.hit("warm", "1/second", strategy=strategy)
        limiter.hit("warm", "1/second; 2/minute", strategy=strategy)
        # (and registers the fixed windows' ids: once a minute per rate, see reset)
        limiter.hit("warm", "10/second; 100/minute; 1000/hour", strategy=strategy)
    own_server.command("CONFIG", "RESETSTAT")
    n = 0
    for strategy in STRATEGIES:
        for rates in ("10/second", "10/second; 100/minute; 1000/hour"):
            for _ in range(5):
                limiter.hit("k", rates, strategy=strategy)
                n += 1
    calls = _calls(own_server)
    assert calls.pop("evalsha") == n
    assert "eval" not in calls and "script|load" not in calls
    # commandstats also counts the commands a script runs inside the server
    inside = {"time", "hget", "hset", "hdel", "hincrby", "lindex", "lpop", "rpush", "lset",
              "lrange", "pexpire", "pttl", "get", "set", "incr", "incrby", "decr", "decrby"}
    assert set(calls) - {"config|resetstat", "info"} <= inside
    s.close()


def test_refused_flood_costs_one_round_trip_per_retry_period(own_server: RedisServer) -> None:
    """With the local denial cache, refused requests cost no round trip until the retry time."""
    for cache, expected in ((10_000, 0), (0, 1000)):
        s = storage_from_url(own_server.url, prefix=f"dc{cache}:")
        # (exact counts: a clock of its own)
        limiter = Limiter(s, denial_cache_size=cache, clock=FakeClock())
        while limiter.hit("flooder", "5/hour").allowed:
            pass
        own_server.command("CONFIG", "RESETSTAT")
        refused = [limiter.hit("flooder", "5/hour") for _ in range(1000)]
        assert not any(d.allowed for d in refused)
        assert all(d.retry_after > 0 and d.remaining == 0 for d in refused)
        assert _calls(own_server).get("evalsha", 0) == expected
        s.close()


def test_refused_middleware_flood_costs_no_round_trip(own_server: RedisServer) -> None:
    """Through the middleware too, a refused client costs no EVALSHA until its retry time,
    and an admin reset takes effect at once in this process."""
    from werkzeug.test import Client

    from throttlekit import WSGIMiddleware

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    s = storage_from_url(own_server.url, prefix="mw:")
    limiter = Limiter(s, clock=FakeClock())  # (exact counts: a clock of its own)
    limiter.throttle("per-ip", "5/hour", strategy="fixed_window")
    client = Client(WSGIMiddleware(app, limiter))
    env = {"REMOTE_ADDR": "192.0.2.9"}
    codes = [client.get("/", environ_base=env).status_code for _ in range(6)]
    assert codes == [200] * 5 + [429]
    own_server.command("CONFIG", "RESETSTAT")
    refused = [client.get("/", environ_base=env) for _ in range(200)]
    assert {r.status_code for r in refused} == {429}
    assert all(int(r.headers["Retry-After"]) > 0 for r in refused)
    assert _calls(own_server).get("evalsha", 0) == 0
    limiter.reset_rules("192.0.2.9")
    assert client.get("/", environ_base=env).status_code == 200
    s.close()


def test_cached_refusals_carry_the_same_header_fields(own_server: RedisServer) -> None:
    """A 429 answered from the denial cache lists the same rate-limit policies as the first."""
    from werkzeug.test import Client

    from throttlekit import WSGIMiddleware

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    s = storage_from_url(own_server.url, prefix="hdr:")
    limiter = Limiter(s, clock=FakeClock())  # (a token comes back every 1/3 s of real time)
    limiter.throttle("per-ip", "100/minute; 3/second", strategy="token_bucket")
    client = Client(WSGIMiddleware(app, limiter))
    env = {"REMOTE_ADDR": "192.0.2.10"}
    responses = [client.get("/", environ_base=env) for _ in range(6)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429, 429]
    first, *repeats = responses[3:]
    for r in repeats:
        assert r.headers["RateLimit-Policy"] == first.headers["RateLimit-Policy"]
        assert [p.split(";")[0] for p in r.headers["RateLimit"].split(", ")] == [
            p.split(";")[0] for p in first.headers["RateLimit"].split(", ")
        ]
    s.close()


def test_script_is_reloaded_after_script_flush(own_server: RedisServer) -> None:
    """After SCRIPT FLUSH (as after a restart) the next call still answers, and reloads it."""
    s = storage_from_url(own_server.url, prefix="sf:")
    alg = make_algorithm("fixed_window", Rate(2, 60))
    other = make_algorithm("fixed_window", Rate(5, 60))
    pair = [Check(alg, "j"), Check(other, "j")]
    assert s.hit(alg, "k", 1, T0).remaining == 1
    assert [d.remaining for d in s.apply(pair, now=T0).decisions] == [1, 4]
    own_server.command("SCRIPT", "FLUSH")
    assert s.hit(alg, "k", 1, T0).remaining == 0  # the single-check script
    assert [d.remaining for d in s.apply(pair, now=T0).decisions] == [0, 3]  # the batch one
    for name in ("fixed_window", "batch"):
        sha = _script(name).sha
        assert own_server.command("SCRIPT", "EXISTS", sha) == [1]
    s.close()


# -- URLs and clients ------------------------------------------------------------------


def test_from_url_options_and_bad_urls() -> None:
    """URL options reach the storage; bad URLs and options are ConfigErrors naming the value."""
    s = storage_from_url("redis://127.0.0.1:6379/3?prefix=p:&clock=client&socket_timeout=0.5")
    assert (s.prefix, s.clock) == ("p:", "client")
    client = s.sync_client()
    kw = client.connection_pool.connection_kwargs
    assert (kw["db"], kw["socket_timeout"], kw["socket_connect_timeout"]) == (3, 0.5, 0.25)
    s.close()
    for bad, what in [
        ("redis://h/x", "'x'"),
        ("redis://h:port", "'port'"),
        ("redis+sentinel://h:26379", "service"),
        ("redis://h?clock=atomic", "atomic"),
        ("redis://h?prefix={p}", "prefix"),
    ]:
        with pytest.raises(ConfigError, match=what):
            storage_from_url(bad)


def test_missing_redis_package_is_a_config_error() -> None:
    """Without the redis package, a redis:// URL says which extra to install."""
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from throttlekit import storage_from_url, ConfigError\n"
        "try:\n    storage_from_url('redis://localhost')\n"
        "except ConfigError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="src"
    )
    assert "pip install 'throttlekit-web[redis]'" in out.stdout


def test_importing_throttlekit_does_not_import_redis() -> None:
    """`import throttlekit` (and throttlekit.storage) loads no redis module."""
    code = "import sys, throttlekit, throttlekit.storage; print('redis' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="src"
    )
    assert out.stdout.strip() == "False"


def test_storage_from_an_existing_client_and_decoded_responses(ctx: Any) -> None:
    """RedisStorage(redis.Redis(...)) works, also with decode_responses=True."""
    import redis

    client = redis.Redis.from_url(ctx.url, decode_responses=True)
    s = RedisStorage(client, prefix=f"tk-test:{uuid.uuid4().hex}:")
    ctx.prefixes.append(s.prefix)
    alg = make_algorithm("sliding_log", Rate(1, 60))
    s.block("b", 60, "why")
    r = s.apply([Check(alg, "k")], block_keys=["b"])
    assert r.decisions[0].allowed and r.blocked[0] is not None and r.blocked[0].reason == "why"
    assert [b.key for b in s.blocked()] == ["b"]
    client.close()


def test_dead_server_raises_storage_error() -> None:
    """A refused connection is a StorageError chained to the client's error (how fast a dead
    store is answered is the breaker's job: see test_redis_failure.py)."""
    import redis

    from servers import free_port

    s = storage_from_url(f"redis://127.0.0.1:{free_port()}/0")
    alg = make_algorithm("fixed_window", Rate(1, 1))
    with pytest.raises(StorageError) as info:
        s.hit(alg, "k", 1, None)
    assert isinstance(info.value.__cause__, redis.ConnectionError)
    s.close()


# -- clients and pools under concurrency ----------------------------------------------------


def _first_calls_at_once(limiter: Limiter, threads: int, calls: int) -> list[Any]:
    """``threads`` threads released together by a barrier, each making ``calls`` hits."""
    import threading

    barrier = threading.Barrier(threads)
    decisions: list[Any] = []

    def run() -> None:
        barrier.wait()
        for _ in range(calls):
            decisions.append(limiter.hit("shared", "100/hour"))

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return decisions


def test_threads_making_their_first_call_together_share_one_client(
    ctx: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """32 threads' first calls at once (a threaded worker starting): one client is built, no
    connection is closed under another thread, so no call fails and counts are exact."""
    import logging

    for _ in range(6):  # fresh storages: the race is on the first call only
        storage = ctx.storage()
        # (exact counts: a clock of its own)
        limiter = Limiter(storage, on_storage_error="deny", clock=FakeClock())
        with caplog.at_level(logging.ERROR, logger="throttlekit"):
            decisions = _first_calls_at_once(limiter, 32, 4)
        assert [r.getMessage() for r in caplog.records] == []
        assert len(decisions) == 128
        assert not any(d.degraded for d in decisions)
        assert sum(d.allowed for d in decisions) == 100
        storage.close()


@pytest.mark.parametrize("bad", ["0", "-3", "lots", "1.5", "true"])
def test_pool_size_must_be_a_positive_integer(bad: str) -> None:
    with pytest.raises(ConfigError, match="max_connections"):
        storage_from_url(f"redis://127.0.0.1:6379/0?max_connections={bad}")
    with pytest.raises(ConfigError, match="max_connections"):
        storage_from_url("redis+sentinel://127.0.0.1:26379/m", max_connections=bad)


def test_async_calls_wait_for_a_pooled_connection(ctx: Any) -> None:
    """More concurrent calls than connections: they wait their turn (the store answers all
    along), none fails, counts are exact."""
    # 2 s timeouts, as in the 1,000-request test below: a loop busy starting 400 calls counts
    # against a 0.25 s connect timeout on a loaded machine. Without the waiting pool the
    # calls fail at once (MaxConnectionsError), whatever the timeout.
    storage = ctx.storage(max_connections=2, socket_timeout=2, socket_connect_timeout=2)
    alg = make_algorithm("fixed_window", Rate(250, 3600))

    async def run() -> list[Any]:
        try:
            return await asyncio.gather(
                # (at one instant: the count is exact, whatever hour boundary falls meanwhile)
                *(storage.ahit(alg, "k", 1, T0) for _ in range(400)), return_exceptions=True
            )
        finally:
            await storage.aclose()

    results = asyncio.run(run())
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert sum(r.allowed for r in results) == 250
    storage.close()


def test_a_thousand_concurrent_asgi_requests_admit_exactly_the_limit(
    ctx: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """1,000 concurrent requests on one global 50/minute limit through ASGIMiddleware, on a
    healthy Redis: exactly 50 admitted and no store error (the async pool waits for a
    connection instead of failing, so no request falls back to a per-process limit)."""
    import logging

    from throttlekit import ASGIMiddleware

    # Timeouts on an event loop run while the loop is busy: starting 1,000 requests in one
    # go holds it for more than the default 0.25 s on a loaded CI machine, and then calls
    # time out on a healthy store; at load 20-30 even 2 s was too short for the pool's
    # connects. 30 s absorbs that (a healthy store answers long before); the pool's
    # behaviour, what this test is about, is the same.
    storage = ctx.storage(socket_timeout=30, socket_connect_timeout=30)
    # (exact counts: a clock of its own)
    limiter = Limiter(storage, on_storage_error="local", clock=FakeClock())
    limiter.throttle("global", "50/minute", key=lambda r: "everyone")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = ASGIMiddleware(app, limiter)

    async def request(i: int) -> int:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": "/", "raw_path": b"/",
            "query_string": b"", "root_path": "", "headers": [(b"host", b"app")],
            "client": (f"10.0.{i // 250}.{i % 250}", 40000), "server": ("app", 80),
        }  # fmt: skip
        statuses: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await middleware(scope, receive, send)
        return statuses[0]

    async def run() -> list[int]:
        try:
            return await asyncio.gather(*(request(i) for i in range(1000)))
        finally:
            await storage.aclose()

    with caplog.at_level(logging.WARNING, logger="throttlekit"):
        statuses = asyncio.run(run())
    assert [r.getMessage() for r in caplog.records] == []
    assert statuses.count(200) == 50
    assert statuses.count(429) == 950
    storage.close()


# -- async -------------------------------------------------------------------------------


def test_async_methods_use_an_async_client(ctx: Any) -> None:
    """aapply/ahit/ablock/areset work on redis.asyncio and agree with the sync methods."""
    s = ctx.storage()
    alg = make_algorithm("token_bucket", Rate(2, 60))

    async def run() -> list[bool]:
        out = [(await s.ahit(alg, "k", 1, T0)).allowed for _ in range(3)]
        await s.ablock("k", 30, "x", now=T0)
        r = await s.aapply([Check(alg, "k", 0)], now=T0, block_keys=["k"])
        out.append(r.blocked[0] is not None)
        out.append([b.key for b in await s.ablocked(now=T0)] == ["k"])
        out.append(await s.aunblock("k"))
        await s.areset(["k"])
        out.append((await s.ahit(alg, "k", 1, T0)).allowed)
        assert s._loop_client is not None  # a real redis.asyncio client was used
        await s.aclose()
        return out

    assert asyncio.run(run()) == [True, True, False, True, True, True, True]
    assert s.hit(alg, "k", 1, T0).remaining == 0  # the same state from the sync client
    s.close()


def test_async_methods_with_only_a_sync_client_do_not_block_the_loop(ctx: Any) -> None:
    """With only a sync client, async methods run it in a thread: other tasks keep running."""
    import redis

    client = redis.Redis.from_url(ctx.url)
    s = RedisStorage(client, prefix=f"tk-test:{uuid.uuid4().hex}:")
    ctx.prefixes.append(s.prefix)
    alg = make_algorithm("fixed_window", Rate(3, 60))

    async def run() -> tuple[list[bool], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        res = [(await s.ahit(alg, "k", 1, T0)).allowed for _ in range(4)]
        task.cancel()
        return res, ticks

    res, ticks = asyncio.run(run())
    assert res == [True, True, True, False] and ticks > 0
    client.close()


# -- Cluster and Sentinel ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from backends import redis_cluster

    with redis_cluster.session() as c:
        yield c


@pytest.mark.cluster
def test_cluster_batch_spanning_slots_is_one_script_per_slot(cluster: Any) -> None:
    """On a Cluster, checks on keys in different slots each run in their slot's script."""
    import redis.crc

    s = storage_from_url(cluster.url, prefix="c:")
    keys = [f"user:{i}" for i in range(6)]
    assert len({redis.crc.key_slot(s.family(k).encode()) for k in keys}) > 1
    alg = make_algorithm("sliding_window", Rate(2, 60))
    for expected in (True, True, False):
        r = s.apply([Check(alg, k) for k in keys], block_keys=keys)
        assert [d.allowed for d in r.decisions] == [expected] * 6
        assert r.blocked == [None] * 6
    s.block("user:3", 60, "x")
    r = s.apply([Check(alg, k) for k in keys], block_keys=keys)
    assert [b is not None for b in r.blocked] == [k == "user:3" for k in keys]
    s.reset(keys)
    assert all(d.allowed for d in s.apply([Check(alg, k) for k in keys]).decisions)
    assert [b.key for b in s.blocked()] == ["user:3"]
    s.close()


@pytest.mark.cluster
def test_cluster_lone_fixed_window_with_a_block_key_elsewhere(cluster: Any) -> None:
    """On a Cluster, a lone fixed-window check whose block key is in another slot goes
    through the batch script by slot (a script may touch one slot only): the block holds,
    nothing is charged, and reset (the fixed-window ids in a slot of their own) forgets
    the count."""
    import redis.crc

    s = storage_from_url(cluster.url, prefix="c1:")
    alg = make_algorithm("fixed_window", Rate(2, 60))
    slot = redis.crc.key_slot
    assert slot(s.family("rule:ip").encode()) != slot(s.family("ip").encode())
    now = int(time.time() * 1_000_000)  # (one instant: the counts are of one window)
    assert s.apply([Check(alg, "rule:ip")], block_keys=["ip"],
                   now=now).decisions[0].remaining == 1
    s.block("ip", 60, "x")
    r = s.apply([Check(alg, "rule:ip")], block_keys=["ip"], now=now)
    assert r.blocked[0] is not None and r.blocked[0].reason == "x"
    s.unblock("ip")
    assert s.apply([Check(alg, "rule:ip")], block_keys=["ip"],
                   now=now).decisions[0].remaining == 0
    s.reset(["rule:ip"])
    assert s.apply([Check(alg, "rule:ip")], now=now).decisions[0].remaining == 1
    s.close()


@pytest.mark.cluster
def test_redis_storage_of_a_cluster_client_is_the_cluster_storage(cluster: Any) -> None:
    """RedisStorage(RedisCluster(...)) keeps working: it makes a RedisClusterStorage, whose
    batches, block lookups and leases spanning slots run one script per slot."""
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import RedisCluster

    from throttlekit.storage.redis import RedisClusterStorage

    assert isinstance(storage_from_url(cluster.url), RedisClusterStorage)
    client = RedisCluster(host="127.0.0.1", port=cluster.port)
    s = RedisStorage(client, prefix=f"tk-test:{uuid.uuid4().hex}:")
    assert isinstance(s, RedisClusterStorage)
    keys = [f"user:{i}" for i in range(6)]
    alg = make_algorithm("fixed_window", Rate(1, 60))
    now = int(time.time() * 1_000_000)  # (one instant: the counts are of one window)
    s.block("user:3", 60, "x")
    r = s.apply([Check(alg, k) for k in keys], block_keys=["user:3"], now=now)
    assert [b.key for b in r.blocked if b] == ["user:3"]
    # the blocked request charged nothing, in any slot (the block key's slot goes first)
    assert all(d.allowed for d in s.apply([Check(alg, k) for k in keys], now=now).decisions)
    assert not any(d.allowed
                   for d in s.apply([Check(alg, k) for k in keys], now=now).decisions)
    # leases: a full key makes the whole acquire fail and leaves no slot taken
    assert s.acquire(keys[:1], [1], "a", 60) == -1
    assert s.acquire(keys, [1] * 6, "b", 60) == 0
    assert [s.inflight(k) for k in keys] == [1, 0, 0, 0, 0, 0]
    s.release(keys[:1], "a")
    assert s.acquire(keys, [1] * 6, "b", 60) == -1
    assert [s.inflight(k) for k in keys] == [1] * 6
    s.release(keys, "b")
    s.reset(keys)
    assert all(d.allowed for d in s.apply([Check(alg, k) for k in keys]).decisions)
    s.reset(keys)
    client.close()

    async def run() -> list[bool]:
        aclient = AsyncRedisCluster(host="127.0.0.1", port=cluster.port)
        a = RedisStorage(aclient, prefix=f"tk-test:{uuid.uuid4().hex}:")
        assert isinstance(a, RedisClusterStorage)
        first = await a.aapply([Check(alg, k) for k in keys], now=now)
        second = await a.aapply([Check(alg, k) for k in keys], now=now)
        assert await a.aacquire(keys, [1] * 6, "c", 60) == -1
        await a.arelease(keys, "c")
        await a.areset(keys)
        await aclient.aclose()
        return [d.allowed for d in first.decisions + second.decisions]

    assert asyncio.run(run()) == [True] * 6 + [False] * 6


@pytest.mark.cluster
def test_cluster_async(cluster: Any) -> None:
    """The async twins work on redis.asyncio's RedisCluster."""
    s = storage_from_url(cluster.url, prefix="ca:")
    alg = make_algorithm("token_bucket", Rate(1, 60))

    async def run() -> list[bool]:
        r = [(await s.ahit(alg, k, 1, None)).allowed for k in ("a", "b", "a")]
        await s.areset(["a", "b"])
        r.append((await s.ahit(alg, "a", 1, None)).allowed)
        await s.aclose()
        return r

    assert asyncio.run(run()) == [True, True, False, True]


@pytest.mark.sentinel
def test_sentinel_writes_go_to_the_master() -> None:
    """redis+sentinel:// state lives on the master the Sentinel names (and replicates)."""
    from backends import redis_sentinel

    with redis_sentinel.session() as sent:
        s = storage_from_url(sent.url, prefix="s:")
        alg = make_algorithm("fixed_window", Rate(1, 60))
        now = int(time.time() * 1_000_000)  # (one instant: both hits in one window)
        assert s.hit(alg, "k", 1, now).allowed
        assert not s.hit(alg, "k", 1, now).allowed
        assert sent.master.command("EXISTS", f"{s.family('k')}:w:{alg.id}") == 1
        assert sent.replica.command("ROLE")[0] == "slave"
        s.close()


def test_unknown_url_option_is_a_config_error_at_setup() -> None:
    """A misspelt client option fails at configuration, not as a dead store later."""
    from throttlekit import ConfigError

    with pytest.raises(ConfigError, match="socket_timout"):
        storage_from_url("redis://127.0.0.1:6379/0?socket_timout=1")
    with pytest.raises(ConfigError, match="bogus"):
        Limiter(storage_from_url("redis://127.0.0.1:6379/0", bogus=1))
    storage_from_url("redis://127.0.0.1:6379/0?socket_timeout=1&health_check_interval=5").close()
