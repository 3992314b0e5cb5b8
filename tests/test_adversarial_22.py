"""Session 22's adversary: SyncedStorage's common case and the Redis store's shared
apply/aapply body attacked as an attacker or a tired operator would, against real servers
(a redis-server of the test's own for anything that pauses, restarts or flushes it)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from servers import RedisServer, start_or_skip
from throttlekit import Limiter, storage_from_url

RATE = "100/hour"


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with start_or_skip(RedisServer()) as s:
        yield s


def _synced(url: str, **query: float) -> Limiter:
    args = "&".join(f"{k}={v}" for k, v in {"sync_interval": 1, "sync_share": 1,
                                              **query}.items())
    return Limiter(storage_from_url(f"{url}?{args}", prefix="a22:"))


@pytest.mark.redis
def test_a_cancelled_lease_ask_does_not_cancel_the_requests_waiting_for_it(
        server: RedisServer) -> None:
    """Under ASGI a request is cancelled when its client goes away or a timeout ends it.
    The request asking the store for its key's next lease is cancelled while other
    requests of that key wait for the answer: they were not cancelled, so each must still
    get its own answer (it asks the store itself), not a CancelledError of another task."""
    limiter = _synced(server.url)

    async def run() -> bool:
        for _ in range(4):  # an exact charge, then a lease of 2 spent: the next one asks
            assert (await limiter.ahit("k", RATE)).allowed
        server.pause()  # the ask stays in flight
        try:
            asker = asyncio.ensure_future(limiter.ahit("k", RATE))
            await asyncio.sleep(0.1)
            waiter = asyncio.ensure_future(limiter.ahit("k", RATE))
            await asyncio.sleep(0.1)
            asker.cancel()  # its client went away
            await asyncio.sleep(0.05)
        finally:
            server.resume()
        try:
            d = await asyncio.wait_for(waiter, 10)
        except asyncio.CancelledError:
            return False
        finally:
            await limiter.storage.storage.aclose()  # type: ignore[attr-defined]
        return d.allowed

    assert asyncio.run(run()), "a request was cancelled by another request's cancellation"
