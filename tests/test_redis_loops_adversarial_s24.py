"""The async Redis client per event loop under hostile loops: one that installs no
asyncgen hooks (so nothing closes its client as it ends), loops in threads, a server
killed as a loop ends, and the storage used again on a loop after ``aclose``."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from servers import RedisServer, start_or_skip
from throttlekit import Limiter, storage_from_url

# The hits below expect exact counts (9, 8, 7) on the real clock: a sliding log, since a
# fixed window resets when a minute boundary falls between two hits (CI saw [9, 8, 9]).
EXACT = "sliding_log"

pytestmark = pytest.mark.redis


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with start_or_skip(RedisServer()) as s:
        yield s


class _HooklessLoop(asyncio.SelectorEventLoop):
    """A loop that installs no asyncgen hooks while it runs (as some third-party loops):
    an async generator started on it is neither tracked nor finalized by it."""

    def _run_once(self) -> None:
        sys.set_asyncgen_hooks(firstiter=None, finalizer=None)
        super()._run_once()  # type: ignore[misc]


class _InlineFinalizerLoop(asyncio.SelectorEventLoop):
    """A loop whose asyncgen finalizer closes a dropped generator at once, in the thread
    that drops it (as some third-party loops do), not later as a task of the loop."""

    def _asyncgen_finalizer_hook(self, agen: Any) -> None:
        self._asyncgens.discard(agen)  # type: ignore[attr-defined]
        closing = agen.aclose()
        try:
            closing.send(None)
        except (StopIteration, RuntimeError):
            pass  # done, or its loop is closed
        else:
            closing.close()


def _in_thread(work: Any, timeout: float = 10.0) -> list[Any]:
    """``work()`` in a daemon thread: its answers, or fail when it hangs."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(work()), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "hung"
    return out


def _hits_in_loops(url: str, loop_class: Any, *, shutdown: bool) -> list[int]:
    """Three loops of ``loop_class`` one after another (``shutdown``: their asyncgens shut
    down before they close), a hit in each, in a thread."""
    store = storage_from_url(url, prefix=f"{loop_class.__name__}:")
    limiter = Limiter(store, strategy=EXACT)

    async def hit() -> int:
        return (await limiter.ahit("k", "10/minute")).remaining

    def run() -> list[int]:
        left = []
        for _ in range(3):
            loop = loop_class()
            try:
                left.append(loop.run_until_complete(hit()))
                if shutdown:
                    loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
        return left

    [left] = _in_thread(run)
    store.close()  # (not on failure: a deadlocked thread holds the storage's lock)
    return left


# (nothing tells a hookless loop's client that its loop ended: the collector closes it)
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_loops_without_asyncgen_hooks_one_after_another(server: RedisServer) -> None:
    """Each loop gets a working client; the next loop, dropping the client of the one
    before (closed, its generator never finalized), must not deadlock on the lock."""
    assert _hits_in_loops(server.url, _HooklessLoop, shutdown=True) == [9, 8, 7]
    gc.collect()  # (the hookless loops' clients: collected here, not in the next test)


def test_aclose_on_a_hookless_loop_closes_its_client(server: RedisServer) -> None:
    store = storage_from_url(server.url, prefix="hookless2:")
    limiter = Limiter(store, strategy=EXACT)

    async def main() -> tuple[int, int]:
        first = (await limiter.ahit("k", "10/minute")).remaining
        await store.aclose()
        return first, (await limiter.ahit("k", "10/minute")).remaining  # reconnects

    loop = _HooklessLoop()
    try:
        assert loop.run_until_complete(main()) == (9, 8)
        loop.run_until_complete(store.aclose())
    finally:
        loop.close()
        store.close()


def test_a_loop_per_thread_each_working_then_bounded(server: RedisServer) -> None:
    """Threads each running loops one after another: every hit counts once, and the
    connections left on the server stay bounded by the threads' loops alive."""
    import redis

    store = storage_from_url(server.url, prefix="threads:")
    limiter = Limiter(store, strategy=EXACT)
    watch = redis.Redis.from_url(server.url)
    watch.client_setname("watch")

    async def hit() -> bool:
        return (await limiter.ahit("k", "1000/minute")).allowed

    def worker() -> None:
        for _ in range(5):
            assert asyncio.run(hit())

    try:
        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert limiter.test("k", "1000/minute").remaining == 1000 - 20 - 1  # (what a hit leaves)
        deadline = time.monotonic() + 2.0
        while (n := sum(1 for c in watch.client_list() if c.get("name") != "watch")) > 1 \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        assert n <= 1  # (the sync client of test())
    finally:
        watch.close()
        store.close()


def test_server_killed_as_the_loop_ends_is_quiet(server: RedisServer,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The closer runs as the loop ends with the server gone: no exception out of
    asyncio.run, nothing in the loop's exception handler, no hang."""
    store = storage_from_url(server.url, prefix="killed:")
    limiter = Limiter(store, strategy=EXACT)
    handled: list[Any] = []

    async def main() -> int:
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: handled.append(ctx))
        remaining = (await limiter.ahit("k", "10/minute")).remaining
        server.kill()
        return remaining

    try:
        started = time.monotonic()
        assert asyncio.run(main()) == 9
        assert time.monotonic() - started < 5.0
        assert handled == []
    finally:
        store.close()


def _clients(port: int) -> int:
    """The server's connections but the one asking."""
    from servers import redis_command

    listing = redis_command(port, "CLIENT", "LIST")
    text = listing.decode() if isinstance(listing, bytes) else str(listing)
    return sum(1 for line in text.splitlines() if "cmd=client" not in line)


def _settled_clients(port: int, at_most: int) -> int:
    deadline = time.monotonic() + 2.0
    while (n := _clients(port)) > at_most and time.monotonic() < deadline:
        time.sleep(0.01)
    return n


def test_asgi_middleware_across_many_asyncio_runs_keeps_connections_bounded(
        server: RedisServer) -> None:
    """A test suite or CLI running an ASGI app under asyncio.run again and again: every
    run answers (the count carried over), and no run's connection outlives it."""
    from asgi_client import asgi_request
    from throttlekit import ASGIMiddleware

    async def ok(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    store = storage_from_url(server.url, prefix="asgiruns:")
    limiter = Limiter(store, strategy=EXACT)
    limiter.throttle("per-ip", "25/hour")
    wrapped = ASGIMiddleware(ok, limiter)
    statuses = []
    try:
        for _ in range(30):
            status, _h, _b = asyncio.run(asgi_request(wrapped, "/", "192.0.2.5", []))
            statuses.append(status)
            assert _settled_clients(server.port, 0) == 0
    finally:
        store.close()
    assert statuses == [200] * 25 + [429] * 5


@pytest.mark.sentinel
@pytest.mark.slow
def test_sentinel_async_clients_end_with_their_loops() -> None:
    from servers import RedisSentinel

    with start_or_skip(RedisSentinel()) as sentinel:
        store = storage_from_url(sentinel.url, prefix="sentinelruns:")
        limiter = Limiter(store, strategy=EXACT)
        base = _settled_clients(sentinel.sentinel_port, 0)
        master = _clients(sentinel.master.port)  # (the replica and the sentinel's own)

        async def hit() -> tuple[int, int]:
            return (await limiter.ahit("k", "10/minute")).remaining, _clients(
                sentinel.sentinel_port)

        try:
            runs = [asyncio.run(hit()) for _ in range(3)]
            assert [r[0] for r in runs] == [9, 8, 7]
            assert all(r[1] >= base + 1 for r in runs)  # our sentinel client, while it ran
            assert _settled_clients(sentinel.sentinel_port, base) == base
            assert _settled_clients(sentinel.master.port, master) == master
        finally:
            store.close()


@pytest.mark.cluster
@pytest.mark.slow
def test_cluster_async_clients_end_with_their_loops() -> None:
    from servers import RedisCluster

    with start_or_skip(RedisCluster()) as cluster:
        store = storage_from_url(cluster.url, prefix="clusterruns:")
        limiter = Limiter(store, strategy=EXACT)

        async def hit() -> tuple[int, int]:
            remaining = (await limiter.ahit("k", "10/minute")).remaining
            return remaining, sum(_clients(p) for p in cluster.ports)

        try:
            runs = [asyncio.run(hit()) for _ in range(3)]
            assert [r[0] for r in runs] == [9, 8, 7]
            assert all(r[1] >= 1 for r in runs)  # (connected while the loop ran)
            assert all(_settled_clients(p, 0) == 0 for p in cluster.ports)
        finally:
            store.close()


# (its inline finalizer cannot finish a close on a closed loop: what it drops is noise)
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_closer_finalized_inline_as_the_next_loop_starts(server: RedisServer) -> None:
    """Loops closed without shutdown_asyncgens, whose finalizer runs a dropped closer at
    once: the next loop drops the last one's closer, which must not find the lock held."""
    assert _hits_in_loops(server.url, _InlineFinalizerLoop, shutdown=False) == [9, 8, 7]
    gc.collect()  # (the loops' clients: collected here, not in the next test)


def test_server_paused_as_the_loop_ends_does_not_hang_it(server: RedisServer) -> None:
    """The server stops answering (SIGSTOP: its sockets stay open) just before the loop
    ends: closing the loop's client must not wait on it."""
    store = storage_from_url(server.url, prefix="paused:")
    limiter = Limiter(store, strategy=EXACT)
    handled: list[Any] = []

    async def main() -> int:
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: handled.append(ctx))
        remaining = (await limiter.ahit("k", "10/minute")).remaining
        server.pause()
        return remaining

    try:
        started = time.monotonic()
        assert _in_thread(lambda: asyncio.run(main())) == [9]
        assert time.monotonic() - started < 2.0
        assert handled == []
    finally:
        server.resume()
        store.close()
