"""Admin changes made on a storage object itself (an admin script's
``RedisStorage(...).unblock(key)``, not a Limiter's nor the CLI's) move the store's generation
of admin changes, so every worker drops its cached blocks and refusals within about a second
(``CHECK_INTERVAL``) instead of holding them until their end or ``BLOCK_HOLD``.

Two limiters, each on a storage of its own on one real server (two workers), and a third
storage object for the admin. The workers share a ``FakeClock``: its seconds time the denial
cache's generation checks, so nothing sleeps."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from werkzeug.test import Client

from servers import MemcachedServer, RedisServer, start_or_skip
from throttlekit import Limiter, WSGIMiddleware, storage_from_url
from throttlekit._denials import BLOCK_HOLD, CHECK_INTERVAL
from throttlekit._rules import NS
from throttlekit.storage.base import Storage
from throttlekit.testing import FakeClock

IP = "192.0.2.77"
ENV = {"REMOTE_ADDR": IP}
_PREFIXES = itertools.count()


def app(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"ok"]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with start_or_skip(RedisServer()) as s:
        yield s


@pytest.fixture(scope="module")
def memcached_server() -> Iterator[MemcachedServer]:
    with start_or_skip(MemcachedServer()) as s:
        yield s


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.redis),
                        pytest.param("memcached", marks=pytest.mark.memcached)])
def make(request: pytest.FixtureRequest) -> Iterator[Callable[[], Storage]]:
    """Storage objects on one prefix of one server (each a worker's or the admin's)."""
    server = request.getfixturevalue(f"{request.param}_server")
    prefix = f"gen{next(_PREFIXES)}:"
    made: list[Storage] = []

    def one() -> Storage:
        made.append(storage_from_url(server.url, prefix=prefix))
        return made[-1]

    yield one
    for s in made:
        s.close()


def _workers(make: Callable[[], Storage], rate: str = "100/hour"
             ) -> tuple[FakeClock, Client, Client, Limiter]:
    clock = FakeClock()
    limiters = []
    for _ in range(2):
        limiter = Limiter(make(), clock=clock)
        limiter.throttle("per-ip", rate, strategy="fixed_window")
        limiters.append(limiter)
    a, b = (Client(WSGIMiddleware(app, lim)) for lim in limiters)
    return clock, a, b, limiters[0]


def _status(client: Client) -> int:
    return client.get("/", environ_base=ENV).status_code


def test_a_raw_unblock_reaches_a_worker_holding_the_block(
        make: Callable[[], Storage]) -> None:
    clock, a, b, limiter_a = _workers(make)
    assert _status(b) == 200  # (worker B has read the generation)
    limiter_a.block(IP, None, "abuse")  # worker A blocks the client (and caches it)
    assert [_status(a), _status(b)] == [403, 403]
    clock.advance(CHECK_INTERVAL)  # B sees the block's own move of the generation,
    assert [_status(b), _status(b)] == [403, 403]  # and caches the block
    assert make().unblock(IP)  # an admin script, on a storage object of its own
    clock.advance(CHECK_INTERVAL / 2)
    assert _status(b) == 403  # (not checked again yet)
    clock.advance(CHECK_INTERVAL / 2)
    assert [_status(b), _status(a)] == [200, 200]  # (not BLOCK_HOLD later)
    assert CHECK_INTERVAL < BLOCK_HOLD


def test_a_raw_reset_reaches_a_worker_holding_a_refusal(make: Callable[[], Storage]) -> None:
    clock, a, b, _ = _workers(make, "2/hour")
    assert [_status(b), _status(b), _status(b), _status(b)] == [200, 200, 429, 429]
    make().reset([NS + IP])  # the rule's counters of the client, forgotten
    clock.advance(CHECK_INTERVAL)
    assert [_status(b), _status(a)] == [200, 200]  # (B's cached refusal: an hour long)


def test_a_raw_aunblock_reaches_a_worker_holding_the_block(
        make: Callable[[], Storage]) -> None:
    clock, a, b, limiter_a = _workers(make)
    assert _status(b) == 200
    limiter_a.block(IP, 3600)
    clock.advance(CHECK_INTERVAL)
    assert [_status(b), _status(b), _status(a)] == [403, 403, 403]
    admin = make()
    assert asyncio.run(admin.aunblock(IP))
    asyncio.run(admin.areset([NS + IP]))
    clock.advance(CHECK_INTERVAL)
    assert _status(b) == 200


def test_an_unblock_or_reset_that_finds_nothing_still_moves_the_generation(
        make: Callable[[], Storage]) -> None:
    """(a call retried after a failure half way cannot tell whether the first one removed
    the entry: it moves the generation all the same, once)"""
    admin = make()
    admin.next_generation()
    before = admin.generation()
    assert not admin.unblock("198.51.100.1")
    assert admin.generation() == before + 1
    admin.reset(["nothing-here"])
    assert admin.generation() == before + 2


def test_a_lost_generation_counter_is_made_again_from_the_clock(
        make: Callable[[], Storage]) -> None:
    """An absent counter is never read as a number a worker may remember (0): a read makes
    it from the clock, above every value it held before."""
    admin = make()
    first = admin.generation()
    assert first > 10**15  # (microseconds since the epoch)
    assert admin.generation() == first
    moved = admin.next_generation()
    assert moved == first + 1


@pytest.mark.cluster
def test_on_a_cluster_an_unblock_or_reset_moves_the_generation_after_it() -> None:
    """(its keys live in other slots than the entry's and the counters': one more call)"""
    from servers import RedisCluster

    with start_or_skip(RedisCluster()) as cluster:
        store = storage_from_url(cluster.url, prefix="gencluster:")
        admin = storage_from_url(cluster.url, prefix="gencluster:")
        try:
            assert type(store).__name__ == "RedisClusterStorage"
            limiter = Limiter(store)
            assert limiter.hit(IP, "1/hour").allowed
            store.block(IP, 600)
            before = admin.next_generation()
            assert admin.unblock(IP) and not admin.unblock(IP)
            assert admin.generation() == before + 2
            admin.reset(["nothing-here"])
            assert admin.generation() == before + 3
            admin.reset([IP])
            assert admin.generation() == before + 4
            assert limiter.hit(IP, "1/hour").allowed  # (forgotten)
            assert asyncio.run(admin.aunblock(IP)) is False
            store.block(IP, 600)
            assert asyncio.run(admin.aunblock(IP))
            asyncio.run(admin.areset([IP]))
            assert admin.generation() == before + 7
        finally:
            store.close()
            admin.close()
