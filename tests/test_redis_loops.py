"""A limiter on Redis used from one event loop after another (``asyncio.run`` called
again and again, a test per event loop): each loop gets working connections, and those
of a loop that ended are closed with it, not left open until garbage collection."""

from __future__ import annotations

import asyncio
import gc
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from servers import RedisServer, start_or_skip
from throttlekit import Limiter, storage_from_url
from throttlekit.storage import RedisStorage

# The hits below expect exact counts (9, 8, 7) on the real clock: a sliding log, since a
# fixed window resets when a minute boundary falls between two hits (CI saw [9, 8, 9]).
EXACT = "sliding_log"

pytestmark = pytest.mark.redis


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with start_or_skip(RedisServer()) as s:
        yield s


@pytest.fixture
def watch(server: RedisServer) -> Iterator[Any]:
    """A sync client of the test's own, which counts the server's other connections."""
    import redis

    client = redis.Redis.from_url(server.url)
    client.client_setname("watch")
    yield client
    client.close()


def _others(watch: Any) -> int:
    return sum(1 for c in watch.client_list() if c.get("name") != "watch")


def _settled(watch: Any) -> int:
    """The other connections once closed ones left the server (it sees a close a moment
    after the client made it)."""
    deadline = time.monotonic() + 2.0
    while (n := _others(watch)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return n


def test_each_loop_works_and_its_connections_end_with_it(server: RedisServer,
                                                          watch: Any) -> None:
    store = storage_from_url(server.url, prefix="loops:")
    limiter = Limiter(store, strategy=EXACT)
    left: list[int] = []
    connections: list[int] = []
    gc.disable()  # (a collection would close what was left open: hide nothing)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            for _ in range(4):
                async def run() -> int:
                    d = await limiter.ahit("k", "10/minute")
                    connections.append(_others(watch))
                    return d.remaining
                left.append(asyncio.run(run()))
                assert _settled(watch) == 0  # the loop's connection ended with it
            asyncio.run(store.aclose())  # from yet another loop: nothing left to close
            gc.enable()
            gc.collect()
    finally:
        gc.enable()
        store.close()
    assert left == [9, 8, 7, 6]  # one count, whatever the loop
    assert connections == [1, 1, 1, 1]
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


def test_aclose_in_the_loop_closes_and_a_later_loop_reconnects(server: RedisServer,
                                                                watch: Any) -> None:
    store = storage_from_url(server.url, prefix="loops2:")
    assert isinstance(store, RedisStorage)

    limiter = Limiter(store, strategy=EXACT)

    async def use_then_close() -> None:
        await limiter.ahit("k", "10/minute")
        await store.aclose()

    for _ in range(2):
        asyncio.run(use_then_close())
        assert _settled(watch) == 0
    assert limiter.test("k", "10/minute").remaining == 7
    store.close()


def test_a_loop_closed_without_shutdown_leaves_the_next_loop_working(server: RedisServer
                                                                      ) -> None:
    """A loop closed by hand (no ``shutdown_asyncgens``): its connection goes with the
    garbage collector, as before; the next loop still gets a working client."""
    store = storage_from_url(server.url, prefix="loops3:")
    limiter = Limiter(store, strategy=EXACT)
    loop = asyncio.new_event_loop()
    assert loop.run_until_complete(limiter.ahit("k", "10/minute")).remaining == 9
    loop.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        assert asyncio.run(limiter.ahit("k", "10/minute")).remaining == 8
        gc.collect()
    store.close()


def test_loops_running_at_once_in_threads_keep_a_client_each(server: RedisServer,
                                                            watch: Any) -> None:
    """Two live loops (a thread each, as ``async_to_sync`` makes them) take turns: each
    keeps its client (no new connection per turn), none is closed under the other's feet,
    and both close as their loops end."""
    import threading

    store = storage_from_url(server.url, prefix="loops4:")
    limiter = Limiter(store, strategy=EXACT)
    turns = [threading.Event(), threading.Event()]
    seen: list[list[Any]] = [[], []]

    def worker(me: int) -> None:
        async def run() -> None:
            for _ in range(20):
                turns[me].wait(5)
                turns[me].clear()
                d = await limiter.ahit(f"k{me}", "100/minute")
                seen[me].append((d.allowed, d.degraded, _others(watch)))
                turns[1 - me].set()

        asyncio.run(run())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    turns[0].set()
    for t in threads:
        t.join(10)
    assert [len(s) for s in seen] == [20, 20]
    assert all(allowed and not degraded for s in seen for allowed, degraded, _ in s)
    assert max(n for s in seen for _, _, n in s) <= 2  # one connection per loop
    assert _settled(watch) == 0
    store.close()
