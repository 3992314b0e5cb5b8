"""A blocked or banned client is refused in-process on a remote store: once the store answered
it "blocked" or "banned", that worker answers its next requests with the same verdict and
events without a round trip, until the block ends or an admin change (the store's
generation) reaches the worker. Counted with ``INFO commandstats`` on a redis-server of our
own (the commands a script runs inside the server count too)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.test import Client

from servers import RedisServer, start_or_skip
from throttlekit import Limiter, MemoryStorage, WSGIMiddleware, storage_from_url
from throttlekit._denials import BLOCK_HOLD, CHECK_INTERVAL
from throttlekit._request import RequestView
from throttlekit._rules import DYNAMIC_RULE, Verdict
from throttlekit.storage import RedisStorage
from throttlekit.testing import FakeClock

pytestmark = pytest.mark.redis
IP = "192.0.2.41"
ENV = {"REMOTE_ADDR": IP}


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with start_or_skip(RedisServer()) as s:
        yield s


@pytest.fixture
def stores(server: RedisServer, request: pytest.FixtureRequest) -> Iterator[list[RedisStorage]]:
    """Two storages on one prefix of our server: two workers."""
    prefix = f"bans-{request.node.name}:"
    made = [storage_from_url(server.url, prefix=prefix) for _ in range(2)]
    yield made  # type: ignore[misc]
    for s in made:
        s.close()


def _reset(server: RedisServer) -> None:
    server.command("CONFIG", "RESETSTAT")


def app(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"ok"]


def _limiter(store: Any, clock: FakeClock | None = None) -> tuple[Limiter, list[Any]]:
    limiter = Limiter(store, clock=clock)
    limiter.throttle("per-ip", "100/hour", strategy="fixed_window")
    limiter.throttle("shadow", "1/hour", strategy="fixed_window", dry_run=True)
    limiter.fail2ban("scanners", match=lambda v: v.path.startswith("/wp-"), maxretry=2,
                     findtime=60, bantime=3600)
    events: list[Any] = []
    limiter.on(events.append)
    return limiter, events


def _view(limiter: Limiter, path: str = "/") -> RequestView:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": IP}
    return RequestView.from_environ(environ, limiter.resolver)


def _seen(v: Verdict) -> tuple[Any, ...]:
    return (v.allowed, v.kind, v.rule, v.key, v.decision, v.policies, v.degraded)


def _told(events: list[Any]) -> list[tuple[Any, ...]]:
    told = [(e.kind, e.rule, e.key, e.decision, e.dry_run) for e in events]
    del events[:]
    return told


def test_a_banned_client_is_refused_without_a_round_trip_through_the_middleware(
        server: RedisServer, stores: list[RedisStorage]) -> None:
    limiter, events = _limiter(stores[0], FakeClock())
    client = Client(WSGIMiddleware(app, limiter))
    assert [client.get("/wp-admin", environ_base=ENV).status_code for _ in range(2)] == [
        403, 403]
    first = client.get("/", environ_base=ENV)  # the store answers "banned"
    del events[:]
    _reset(server)
    answers = [client.get(p, environ_base=ENV) for p in ("/", "/wp-login", "/x") * 10]
    assert server.calls() == {}
    assert [r.status_code for r in answers] == [403] * 30
    assert {r.get_data() for r in answers} == {first.get_data()}
    assert {tuple(sorted(r.headers.items())) for r in answers} == {
        tuple(sorted(first.headers.items()))}
    assert "Retry-After" not in first.headers  # (the store's answer has none either)
    assert _told(events) == [("banned", "scanners", IP, None, False)] * 30


def test_a_cached_ban_is_the_verdict_the_store_gave(server: RedisServer,
                                                    stores: list[RedisStorage]) -> None:
    limiter, events = _limiter(stores[0], FakeClock())
    for _ in range(2):
        limiter.evaluate(_view(limiter, "/wp-x"))
    del events[:]
    stored = limiter.evaluate(_view(limiter))
    stored_told = _told(events)
    _reset(server)
    cached = limiter.evaluate(_view(limiter))
    assert server.calls() == {}
    assert _seen(cached) == _seen(stored) == (False, "banned", "scanners", IP, None, [], False)
    assert _told(events) == stored_told == [("banned", "scanners", IP, None, False)]


def test_a_block_made_elsewhere_is_seen_on_the_first_request_then_cached(
        server: RedisServer, stores: list[RedisStorage]) -> None:
    clock = FakeClock()
    worker, events = _limiter(stores[0], clock)
    other, _ = _limiter(stores[1], clock)
    assert worker.evaluate(_view(worker)).allowed
    other.block(IP, 600, "abuse")
    del events[:]
    _reset(server)
    first = worker.evaluate(_view(worker))
    assert _seen(first) == (False, "blocked", DYNAMIC_RULE, IP, None, [], False)
    assert "evalsha" in server.calls()  # the store answered (the script may register too)
    _reset(server)
    again = []
    for path in ("/", "/wp-x", "/y"):
        again.append(worker.evaluate(_view(worker, path)))
        assert server.calls() == {}, path
    assert [_seen(v) for v in again] == [_seen(first)] * 3
    assert _told(events) == [("blocked", DYNAMIC_RULE, IP, None, False)] * 4


def test_unblock_from_another_worker_reaches_this_one_within_a_second(
        server: RedisServer, stores: list[RedisStorage]) -> None:
    clock = FakeClock()
    worker, _ = _limiter(stores[0], clock)
    other, _ = _limiter(stores[1], clock)
    other.block(IP, 600)
    assert [worker.evaluate(_view(worker)).kind for _ in range(2)] == ["blocked"] * 2
    assert other.unblock(IP)
    clock.advance(CHECK_INTERVAL / 2)
    assert worker.evaluate(_view(worker)).kind == "blocked"  # (not a second yet)
    clock.advance(CHECK_INTERVAL / 2)
    assert worker.evaluate(_view(worker)).kind == "allowed"


def test_a_reset_from_another_worker_ends_a_cached_ban(server: RedisServer,
                                                       stores: list[RedisStorage]) -> None:
    clock = FakeClock()
    worker, _ = _limiter(stores[0], clock)
    other, _ = _limiter(stores[1], clock)
    kinds = [worker.evaluate(_view(worker, p)).kind for p in ("/wp-a", "/wp-b", "/", "/")]
    assert kinds == ["banned", "banned", "banned", "banned"]
    other.unblock(IP)  # (an IP unblocks the client's bans too)
    clock.advance(CHECK_INTERVAL)
    assert worker.evaluate(_view(worker)).kind == "allowed"


def test_the_blocks_end_ends_the_cached_refusal(server: RedisServer,
                                                stores: list[RedisStorage]) -> None:
    clock = FakeClock()
    worker, _ = _limiter(stores[0], clock)
    other, _ = _limiter(stores[1], clock)
    other.block(IP, 5)
    assert worker.evaluate(_view(worker)).kind == "blocked"
    clock.advance(4.9)
    _reset(server)
    assert worker.evaluate(_view(worker)).kind == "blocked"
    assert "evalsha" not in server.calls()  # (a read of the generation only)
    clock.advance(0.1)
    assert worker.evaluate(_view(worker)).kind == "allowed"


def test_a_permanent_block_is_asked_again_after_the_hold(server: RedisServer,
                                                         stores: list[RedisStorage]) -> None:
    clock = FakeClock()
    worker, _ = _limiter(stores[0], clock)
    other, _ = _limiter(stores[1], clock)
    other.block(IP, None)
    assert worker.evaluate(_view(worker)).kind == "blocked"
    clock.advance(BLOCK_HOLD - 0.5)
    _reset(server)
    assert worker.evaluate(_view(worker)).kind == "blocked"
    assert "evalsha" not in server.calls()
    clock.advance(0.5)
    _reset(server)
    assert worker.evaluate(_view(worker)).kind == "blocked"
    assert server.calls().get("evalsha", 0) >= 1  # asked again


def test_async_a_banned_client_sends_no_command(server: RedisServer,
                                                stores: list[RedisStorage]) -> None:
    limiter, events = _limiter(stores[0], FakeClock())

    async def run() -> list[str]:
        kinds = [(await limiter.aevaluate(_view(limiter, "/wp-x"))).kind for _ in range(3)]
        _reset(server)
        kinds += [(await limiter.aevaluate(_view(limiter, p))).kind for p in ("/", "/wp-y")]
        assert server.calls() == {}
        await stores[0].aclose()
        return kinds

    assert asyncio.run(run()) == ["banned"] * 5
    assert [e.kind for e in events] == ["banned"] * 5


def test_a_request_another_ban_rule_counts_still_goes_to_the_store(
        server: RedisServer, stores: list[RedisStorage]) -> None:
    limiter, _ = _limiter(stores[0], FakeClock())
    limiter.allow2ban("logins", match=lambda v: v.path == "/login", maxretry=5, findtime=60,
                      bantime=60)
    kinds = [limiter.evaluate(_view(limiter, p)).kind for p in ("/wp-a", "/wp-b", "/")]
    assert kinds == ["banned"] * 3
    _reset(server)
    assert limiter.evaluate(_view(limiter, "/login")).kind == "banned"
    assert "evalsha" in server.calls()


def test_an_allowed_client_still_asks_the_store(server: RedisServer,
                                                stores: list[RedisStorage]) -> None:
    limiter, _ = _limiter(stores[0], FakeClock())
    limiter.block("192.0.2.99", 600)
    other = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "192.0.2.99"}
    assert limiter.evaluate(RequestView.from_environ(other, limiter.resolver)).kind == "blocked"
    _reset(server)
    assert [limiter.evaluate(_view(limiter)).kind for _ in range(3)] == ["allowed"] * 3
    assert server.calls().get("evalsha", 0) >= 3  # each asks


def test_memory_keeps_no_denial_cache() -> None:
    limiter, _ = _limiter(MemoryStorage())
    assert limiter.engine.store.denials is None
    limiter.block(IP, 60)
    assert limiter.evaluate(_view(limiter)).kind == "blocked"


def test_an_unblock_in_this_process_ends_its_cached_ban_at_once(
        server: RedisServer, stores: list[RedisStorage]) -> None:
    limiter, _ = _limiter(stores[0], FakeClock())
    kinds = [limiter.evaluate(_view(limiter, p)).kind for p in ("/wp-a", "/wp-b", "/", "/")]
    assert kinds == ["banned"] * 4
    assert limiter.unblock(IP)  # (the client's IP: its bans go too)
    assert limiter.evaluate(_view(limiter)).kind == "allowed"


def _memcached_ops(url: str) -> int:
    from pymemcache.client.base import Client as Memcache

    client = Memcache(url.split("//", 1)[1])
    try:
        stats = {k.decode(): v for k, v in client.stats().items()}
    finally:
        client.close()
    ops = ("cmd_get", "cmd_set", "cmd_touch", "incr_hits", "incr_misses", "decr_hits",
           "decr_misses", "delete_hits", "delete_misses", "cas_hits", "cas_misses",
           "cas_badval")
    return sum(int(stats.get(k, 0)) for k in ops)


def test_memcached_a_banned_client_sends_no_command() -> None:
    from servers import MemcachedServer

    with start_or_skip(MemcachedServer()) as server:
        store = storage_from_url(server.url, prefix="bans:")
        limiter, events = _limiter(store, FakeClock())
        kinds = [limiter.evaluate(_view(limiter, p)).kind for p in ("/wp-a", "/wp-b", "/")]
        assert kinds == ["banned"] * 3
        del events[:]
        ops = _memcached_ops(server.url)
        again = [limiter.evaluate(_view(limiter, p)) for p in ("/", "/wp-c")]
        assert _memcached_ops(server.url) == ops
        assert [_seen(v) for v in again] == [
            (False, "banned", "scanners", IP, None, [], False)] * 2
        assert _told(events) == [("banned", "scanners", IP, None, False)] * 2
        store.close()


def test_the_cached_blocks_are_bounded_by_the_denial_cache_size(
        server: RedisServer, stores: list[RedisStorage]) -> None:
    limiter = Limiter(stores[0], clock=FakeClock(), denial_cache_size=3)
    ips = [f"192.0.2.{i}" for i in range(100, 108)]
    for ip in ips:
        limiter.block(ip, 600)
    for _ in range(2):
        for ip in ips:
            view = RequestView.from_environ({"REQUEST_METHOD": "GET", "PATH_INFO": "/",
                                             "REMOTE_ADDR": ip}, limiter.resolver)
            assert limiter.evaluate(view).kind == "blocked"
            denials = limiter.engine.store.denials
            assert denials is not None and 1 <= len(denials.blocks) <= 3


def test_a_ban_this_worker_makes_is_cached_at_once(server: RedisServer,
                                                    stores: list[RedisStorage]) -> None:
    limiter, events = _limiter(stores[0], FakeClock())
    assert [limiter.evaluate(_view(limiter, p)).kind for p in ("/wp-a", "/wp-b")] == [
        "banned", "banned"]
    del events[:]
    _reset(server)
    verdict = limiter.evaluate(_view(limiter))
    assert server.calls() == {}
    assert _seen(verdict) == (False, "banned", "scanners", IP, None, [], False)
    assert _told(events) == [("banned", "scanners", IP, None, False)]


def test_a_ban_this_worker_makes_keeps_the_blocks_it_cached(
        server: RedisServer, stores: list[RedisStorage]) -> None:
    limiter, _ = _limiter(stores[0], FakeClock())
    other, _ = _limiter(stores[1])
    other.block(IP, 600)
    assert limiter.evaluate(_view(limiter)).kind == "blocked"  # (the store's answer)
    scanner = {"REQUEST_METHOD": "GET", "PATH_INFO": "/wp-x", "REMOTE_ADDR": "192.0.2.77"}
    for _ in range(2):
        limiter.evaluate(RequestView.from_environ(scanner, limiter.resolver))
    assert [b.key for b in limiter.blocked()] == ["fail2ban:scanners:192.0.2.77", IP]
    _reset(server)
    assert limiter.evaluate(_view(limiter)).kind == "blocked"
    assert server.calls() == {}


def test_a_block_this_worker_makes_is_cached_at_once_and_keeps_the_others(
        server: RedisServer, stores: list[RedisStorage]) -> None:
    """``Limiter.block`` (what the shield and ``throttlekit block`` call): the blocked
    client's next request sends nothing to the store, and the blocks this worker had
    cached stay cached (a block lifts none)."""
    clock = FakeClock()
    limiter, events = _limiter(stores[0], clock)
    other, _ = _limiter(stores[1], clock)
    first = "192.0.2.88"
    other.block(first, 600)
    earlier = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": first}
    assert limiter.evaluate(RequestView.from_environ(earlier, limiter.resolver)).kind == (
        "blocked")  # (the store's answer, now cached)
    limiter.block(IP, 600, "shield")
    del events[:]
    _reset(server)
    assert _seen(limiter.evaluate(_view(limiter))) == (
        False, "blocked", DYNAMIC_RULE, IP, None, [], False)
    assert limiter.evaluate(RequestView.from_environ(earlier, limiter.resolver)).kind == (
        "blocked")
    assert server.calls() == {}
    assert _told(events) == [("blocked", DYNAMIC_RULE, IP, None, False),
                             ("blocked", DYNAMIC_RULE, first, None, False)]
    assert limiter.unblock(IP)  # here at once
    assert limiter.evaluate(_view(limiter)).kind == "allowed"
