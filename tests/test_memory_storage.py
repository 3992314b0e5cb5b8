"""The in-memory backend under a hostile load: expired bans are reclaimed as they expire,
and a flood of fresh keys cannot evict the counter of a refused client.

Driven through the public API (``Limiter``, ``WSGIMiddleware``, ``MemoryStorage``) with a
``FakeClock``, so nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import threading
import tracemalloc
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder

from throttlekit import ASGIMiddleware, Limiter, MemoryStorage, Rate, WSGIMiddleware
from throttlekit._algorithms import make_algorithm
from throttlekit.storage import Check
from throttlekit.testing import FakeClock

STRATEGIES = ["fixed_window", "sliding_window", "sliding_log", "token_bucket"]
START = 1_700_000_040.0  # a minute boundary: fixed windows are whole from here


def _app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _server(limiter: Limiter) -> Callable[[str, str], int]:
    """A WSGI app behind the middleware; ``call(ip, path)`` answers the status code."""
    mw = WSGIMiddleware(_app, limiter)
    base = EnvironBuilder(path="/").get_environ()

    def call(ip: str, path: str = "/") -> int:
        environ = dict(base, REMOTE_ADDR=ip, PATH_INFO=path)
        status: list[str] = []
        body = mw(environ, lambda s, h, *a: status.append(s))
        b"".join(body)
        getattr(body, "close", lambda: None)()
        return int(status[0].split()[0])

    return call


def _ip(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


# -- item 10: expired bans are reclaimed on the request path --------------------------------


def test_expired_blocks_are_reclaimed_by_requests() -> None:
    """10,000 short blocks expire; a few thousand requests later none of them is held, the
    live one still refuses, and nothing needed blocked() or a thread to tidy up."""
    clock = FakeClock(START)
    storage = MemoryStorage()
    limiter = Limiter(storage, clock=clock)
    call = _server(limiter)
    threads = threading.active_count()
    for i in range(10_000):
        limiter.block(_ip(i), ttl=30, reason="scan")
    limiter.block("192.0.2.1", ttl=3600, reason="still banned")
    assert storage.stats()["blocks"] == 10_001
    assert call(_ip(7)) == 403 and call("192.0.2.1") == 403

    clock.advance(31)
    assert [call(f"198.51.100.{i % 200}") for i in range(2000)] == [200] * 2000
    assert storage.stats()["blocks"] == 1  # read before blocked(), which tidies too
    assert [b.key for b in limiter.blocked()] == ["192.0.2.1"]
    assert call("192.0.2.1") == 403 and call(_ip(7)) == 200
    assert threading.active_count() == threads


def test_expired_bans_of_rules_are_reclaimed_by_requests() -> None:
    """fail2ban bans of thousands of clients go away as they expire, while new bans are made."""
    clock = FakeClock(START)
    storage = MemoryStorage()
    limiter = Limiter(storage, clock=clock)
    limiter.fail2ban("scanners", match=lambda r: r.path == "/wp-login.php", maxretry=1,
                     findtime=60, bantime=10)
    call = _server(limiter)
    for i in range(3000):
        assert call(_ip(i), "/wp-login.php") == 403  # matched: refused, and banned
    assert storage.stats()["blocks"] == 3000
    assert call(_ip(5)) == 403  # banned from everything
    clock.advance(11)
    for i in range(3000, 4000):  # the attack goes on: new bans, while old ones expire
        assert call(_ip(i), "/wp-login.php") == 403
    assert [call(f"198.51.100.{i % 200}") for i in range(1000)] == [200] * 1000
    assert storage.stats()["blocks"] == 1000
    assert len(limiter.blocked()) == 1000
    assert call(_ip(5)) == 200 and call(_ip(3005)) == 403


def test_blocks_lifted_or_renewed_keep_their_own_expiry() -> None:
    """A block renewed with a longer ttl outlives its first expiry, one shortened ends
    sooner, and a lifted block stays lifted."""
    clock = FakeClock(START)
    storage = MemoryStorage()
    limiter = Limiter(storage, clock=clock)
    call = _server(limiter)
    limiter.block("192.0.2.1", ttl=10)
    limiter.block("192.0.2.1", ttl=100)  # renewed before it ran out
    limiter.block("192.0.2.2", ttl=100)
    limiter.block("192.0.2.2", ttl=10)  # shortened
    limiter.block("192.0.2.3", ttl=10)
    assert limiter.unblock("192.0.2.3")
    limiter.block("192.0.2.5", ttl=None)  # no expiry
    clock.advance(11)
    assert (call("192.0.2.1"), call("192.0.2.2"), call("192.0.2.3"), call("192.0.2.5")) == (
        403, 200, 200, 403,
    )  # fmt: skip
    assert storage.stats()["blocks"] == 2
    assert [b.key for b in limiter.blocked()] == ["192.0.2.1", "192.0.2.5"]
    clock.advance(90)
    assert (call("192.0.2.1"), call("192.0.2.5")) == (200, 403)
    assert storage.stats()["blocks"] == 1


def test_blocks_made_without_traffic_stay_bounded() -> None:
    """Bans made one after another (an operator script, the shield), with no request in
    between, reclaim the expired ones too; renewing one ban over and over costs no memory."""
    clock = FakeClock(START)
    storage = MemoryStorage()
    limiter = Limiter(storage, clock=clock)
    for i in range(20_000):
        limiter.block(_ip(i), ttl=1)
        clock.advance(0.01)  # about 100 bans live at any time
    assert storage.stats()["blocks"] <= 200
    clock.advance(2)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20_000):
            limiter.block("192.0.2.1", ttl=3600)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 50_000  # 20,000 remembered expiries would be over a megabyte
    assert [b.key for b in limiter.blocked()] == ["192.0.2.1"]


# -- item 12: eviction spares refused clients -----------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_flooding_fresh_keys_does_not_reset_a_refused_client(strategy: str) -> None:
    """A refused client stays refused however many fresh keys an attacker sends, through the
    middleware's fast path, its general path (someone listens to events; then a block is
    held too) and ``Limiter.hit``."""
    max_keys = 50
    clock = FakeClock(START)
    storage = MemoryStorage(max_keys=max_keys)
    limiter = Limiter(storage, clock=clock)
    limiter.throttle("per-ip", "3/minute", strategy=strategy)
    call = _server(limiter)
    victim = "203.0.113.9"
    assert [call(victim) for _ in range(4)] == [200, 200, 200, 429]

    for round_ in range(3):
        for i in range(max_keys + 1):  # one request each: allowed, then idle
            assert call(_ip(round_ * 1000 + i)) == 200
        assert len(storage) <= max_keys
        assert call(victim) == 429, round_
        if round_ == 0:
            limiter.on("throttled", lambda event: None)  # from now on, the general path
        if round_ == 1:
            limiter.block("192.0.2.250", ttl=3600)  # and a blocklist lookup with it

    hits = [limiter.hit("user:1", "2/minute", strategy=strategy).allowed for _ in range(3)]
    assert hits == [True, True, False]
    for i in range(max_keys + 1):
        limiter.hit(f"flood:{i}", "2/minute", strategy=strategy)
    assert not limiter.hit("user:1", "2/minute", strategy=strategy).allowed
    assert len(storage) <= max_keys

    clock.advance(120)  # the refusals are over: the clients get their quota back
    assert call(victim) == 200
    assert limiter.hit("user:1", "2/minute", strategy=strategy).allowed


def test_several_rules_at_once_keep_a_refused_client_refused() -> None:
    """The all-or-nothing path over several rules sees protected keys too."""
    clock = FakeClock(START)
    storage = MemoryStorage(max_keys=40)
    limiter = Limiter(storage, clock=clock)
    limiter.throttle("per-ip", "3/minute")
    limiter.throttle("per-ip-hourly", "100/hour")
    call = _server(limiter)
    assert [call("203.0.113.9") for _ in range(4)] == [200, 200, 200, 429]
    for i in range(100):
        call(_ip(i))
    assert len(storage) <= 40
    assert call("203.0.113.9") == 429


def test_idle_keys_go_first_and_refused_keys_last() -> None:
    """With a full store, allowed idle keys are evicted before refused ones, and keys whose
    refusal has ended lose their protection; the store never holds more than max_keys."""
    clock = FakeClock(START)
    storage = MemoryStorage(max_keys=10)
    limiter = Limiter(storage, clock=clock)
    rate = "1/minute"
    for i in range(5):
        limiter.hit(f"refused{i}", rate)  # each used up its quota: refused until next minute
    for i in range(100):
        limiter.hit(f"fresh{i}", "5/minute")
        assert len(storage) <= 10
    assert storage.stats()["protected"] == 5
    assert not any(limiter.hit(f"refused{i}", rate).allowed for i in range(5))

    clock.advance(60)  # the refusals are over: the once-refused keys are idle and allowed
    for i in range(100, 110):
        limiter.hit(f"fresh{i}", "5/minute")
    assert storage.stats()["protected"] == 0
    assert len(storage) == 10


def test_when_every_key_is_refused_the_store_stays_bounded() -> None:
    """The documented limit: only when every other key in the store is refused does an
    eviction take a refused key (the oldest), and memory stays bounded."""
    clock = FakeClock(START)
    storage = MemoryStorage(max_keys=10)
    limiter = Limiter(storage, clock=clock)
    assert limiter.hit("victim", "1/minute").allowed
    for i in range(9):
        limiter.hit(f"decoy{i}", "1/minute")  # every key in the store is now refused
    assert not limiter.hit("victim", "1/minute").allowed  # still there
    for i in range(9, 30):
        limiter.hit(f"decoy{i}", "1/minute")
        assert len(storage) == 10
    assert limiter.hit("victim", "1/minute").allowed  # evicted, as docs/backends.md says


def test_reset_and_clear_reach_protected_keys() -> None:
    """reset(key) and testing.reset_limiter forget a key wherever the store keeps it."""
    from throttlekit.testing import reset_limiter

    clock = FakeClock(START)
    storage = MemoryStorage(max_keys=5)
    limiter = Limiter(storage, clock=clock)
    limiter.hit("a", "1/minute")
    for i in range(10):
        limiter.hit(f"x{i}", "9/minute")
    assert storage.stats()["protected"] == 1
    limiter.reset("a")
    assert storage.stats()["protected"] == 0
    assert limiter.hit("a", "1/minute").allowed
    for i in range(10, 20):
        limiter.hit(f"x{i}", "9/minute")
    reset_limiter(limiter)
    assert storage.stats() == {"keys": 0, "protected": 0, "blocks": 0, "blocks_evicted": 0,
                               "leases": 0}
    assert limiter.hit("a", "1/minute").allowed


def test_a_rule_tightened_at_runtime_protects_whom_it_refuses() -> None:
    """After set_rule_rates (the shield tightens a rule), a client refused by the new rate is
    kept from eviction too, not judged by the rate the rule had before."""
    clock = FakeClock(START)
    storage = MemoryStorage(max_keys=30)
    limiter = Limiter(storage, clock=clock)
    limiter.throttle("per-ip", "10/minute")
    call = _server(limiter)
    assert [call("203.0.113.9") for _ in range(3)] == [200] * 3
    limiter.set_rule_rates("per-ip", "3/minute")
    assert call("203.0.113.9") == 429
    for i in range(100):
        call(_ip(i))
    assert call("203.0.113.9") == 429


# -- one hit: batches, the bound hit and the short path agree --------------------------------

ALGORITHMS = [make_algorithm(s, Rate(3, 10)) for s in STRATEGIES]  # small: refusals come soon
flag = st.sampled_from([False, False, False, True])
batch = st.lists(  # distinct (algorithm, key) pairs: cost, independent, probe
    st.tuples(st.integers(0, len(ALGORITHMS) - 1), st.sampled_from("ab"),
              st.integers(0, 3), flag, flag),
    min_size=1, max_size=5, unique_by=lambda c: (c[0], c[1]),
)
steps = st.lists(
    st.tuples(batch, st.sampled_from([True, True, True, False]),
              st.sampled_from([None, None, None, "a", "b"]),
              st.booleans(), st.sampled_from([0.0, 0.0, 0.5, 2.0, 7.0])),
    min_size=1, max_size=20,
)


@given(steps)
@example([  # a sliding log (its hit appends in place) allowed beside a refused check
    ([(0, "a", 3, False, False), (2, "a", 1, False, False)], True, None, False, 0.0),
    ([(2, "a", 1, False, False), (0, "a", 1, False, False)], True, None, False, 0.0),
])
def test_a_batch_decides_and_charges_as_its_checks_one_at_a_time(plan: list[Any]) -> None:
    """``MemoryStorage.apply`` on a batch answers what the checks alone would, and charges
    what the batch rules say: everything or nothing of the dependent checks, an allowed
    independent check on its own, never a probe, nothing when a looked-up key is blocked.
    The reference is a twin store driven one check at a time."""
    clock = FakeClock(START)
    store, twin = MemoryStorage(), MemoryStorage()
    for checks, consume, block, lookup, wait in plan:
        clock.advance(wait)
        now = int(clock() * 1_000_000)
        if block is not None:
            for s in (store, twin):
                s.block(block, 3, now=now)
        batch = [Check(ALGORITHMS[i], k, cost, indep, probe)
                 for i, k, cost, indep, probe in checks]
        block_keys = ["a", "b"] if lookup else []
        got = store.apply(batch, consume=consume, now=now, block_keys=block_keys)

        live = {b.key: b for b in twin.blocked(now=now)}
        blocked = [live.get(k) for k in block_keys]
        alone = [twin.apply([Check(c.algorithm, c.key, c.cost)], consume=False,
                            now=now).decisions[0] for c in batch]
        assert got.decisions == alone
        assert got.blocked == blocked
        together = all(d.allowed for c, d in zip(batch, alone, strict=True)
                       if not c.independent)
        if consume and not any(blocked):
            for c, d in zip(batch, alone, strict=True):
                if d.allowed and (together or c.independent) and c.cost and not c.probe:
                    assert twin.apply([Check(c.algorithm, c.key, c.cost)],
                                      now=now).decisions[0].allowed
        left = [Check(a, k, 0) for a in ALGORITHMS for k in "ab"]
        assert (store.apply(left, consume=False, now=now).decisions
                == twin.apply(left, consume=False, now=now).decisions)


def test_local_blocks_shows_the_blocklist_as_it_changes() -> None:
    """``local_blocks`` is a live, read-only view: a block shows at once, an unblock or an
    expiry reclaimed by a request removes it, and no caller can write through it."""
    clock = FakeClock(START)
    storage = MemoryStorage()
    limiter = Limiter(storage, clock=clock)
    limiter.throttle("per-ip", "5/minute")
    call = _server(limiter)
    blocks = storage.local_blocks
    assert blocks is not None and not blocks
    limiter.block("203.0.113.9", ttl=30)
    assert set(blocks) == {"203.0.113.9"}
    assert blocks["203.0.113.9"].expires_at == START + 30
    clock.advance(31)
    assert call("198.51.100.1") == 200  # looks the blocklist up: the expired entry goes
    assert not blocks
    limiter.block("203.0.113.9")
    assert limiter.unblock("203.0.113.9") and not blocks
    with pytest.raises(TypeError):
        blocks["x"] = None  # type: ignore[index]


async def _asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _asgi_server(limiter: Limiter) -> Callable[[str, str], int]:
    mw = ASGIMiddleware(_asgi_app, limiter)

    def call(ip: str, path: str = "/") -> int:
        statuses: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "headers": [], "client": (ip, 40000)}
        asyncio.run(mw(scope, receive, send))
        return statuses[0]

    return call


@pytest.mark.parametrize("server", [_server, _asgi_server], ids=["wsgi", "asgi"])
@pytest.mark.parametrize("rates", ["3/minute", "3/minute; 10/hour"], ids=["one", "two"])
def test_a_block_stops_requests_on_the_short_path_and_charges_nothing(
    server: Callable[[Limiter], Callable[[str, str], int]], rates: str
) -> None:
    """Plain throttles on the memory store take the short path; a block made between two
    requests refuses the next one at once, the blocked requests charge the throttle nothing,
    and after the unblock the client has exactly what it had left."""
    clock = FakeClock(START)
    limiter = Limiter(MemoryStorage(), clock=clock)
    limiter.throttle("per-ip", rates)
    call = server(limiter)
    ip = "203.0.113.9"
    assert [call(ip) for _ in range(2)] == [200, 200]
    limiter.block(ip, ttl=600)
    assert [call(ip) for _ in range(5)] == [403] * 5
    assert call("198.51.100.1") == 200
    assert limiter.unblock(ip)
    assert [call(ip) for _ in range(2)] == [200, 429]


def test_make_hit_still_works_and_says_to_use_bind() -> None:
    """The old name of the bound hit warns once per call and hands back ``bind``'s hit."""
    storage = MemoryStorage()
    alg = make_algorithm("fixed_window", Rate(2, 60))
    with pytest.warns(DeprecationWarning, match="use bind"):
        hit = storage.make_hit(alg)
    assert hit is storage.bind(alg)
    now = int(START * 1_000_000)
    assert [hit("k", 1, now).allowed for _ in range(3)] == [True, True, False]
