"""A Redis that dies, hangs and comes back: requests keep being answered under every
``on_storage_error`` policy, a dead store is tried at most once per retry interval (the
breaker is open in between, not a timeout per request), and limits resume exactly when the
store answers again. (Latency under faults, through real servers: test_faults_servers.py.)

Each test runs its own redis-server on a spare loopback port (never the shared 6379).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from servers import RedisServer, start_or_skip
from throttlekit import Limiter, StorageError, storage_from_url
from throttlekit._algorithms import make_algorithm
from throttlekit._rates import Rate

pytestmark = [pytest.mark.redis, pytest.mark.slow]
RATE = "5/hour"  # a token bucket refills one token per 12 minutes: nothing refills mid-test
RETRY = 0.3


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with start_or_skip(RedisServer()) as s:
        yield s


def _limiter(server: RedisServer, policy: str) -> Limiter:
    return Limiter(
        storage_from_url(server.url, prefix="f:"),
        strategy="token_bucket",
        on_storage_error=policy,
        retry_interval=RETRY,
    )


def _count_store_calls(limiter: Limiter) -> list[int]:
    """Count the calls the limiter makes to its store (``[n]``, updated as they happen)."""
    calls = [0]
    storage: Any = limiter.storage
    apply, aapply = storage.apply, storage.aapply

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return apply(*args, **kwargs)

    async def acounted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return await aapply(*args, **kwargs)

    storage.apply, storage.aapply = counted, acounted
    return calls


def _breaker_held(calls: int, elapsed: float) -> bool:
    """At most one store call per retry interval: after a failure the breaker stays open for
    RETRY seconds. (A slow machine only loosens this bound; without a breaker every one of
    the 100 calls reaches the store, over it.)"""
    return 1 <= calls <= 1 + int(elapsed / RETRY)


def _evalsha_calls(server: RedisServer) -> int:
    for line in server.command("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


EXPECTED_WHILE_DOWN = {
    "allow": [True] * 100,
    "deny": [False] * 100,
    "local": [True] * 5 + [False] * 95,  # the same limit, in process memory
}


@pytest.mark.parametrize("policy", ["allow", "deny", "local"])
@pytest.mark.parametrize("failure", ["stop", "pause"])
def test_requests_are_answered_while_redis_is_down_and_limits_resume(
    server: RedisServer, policy: str, failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Down (refused or hanging): degraded answers per policy, fast; back: exact limits again."""
    limiter = _limiter(server, policy)
    before = [limiter.hit("k", RATE) for _ in range(3)]
    assert [(d.allowed, d.remaining, d.degraded) for d in before] == [
        (True, 4, False), (True, 3, False), (True, 2, False)
    ]

    server.command("CONFIG", "RESETSTAT")
    server.stop() if failure == "stop" else server.pause()
    calls = _count_store_calls(limiter)
    with caplog.at_level(logging.ERROR, logger="throttlekit"):
        t = time.monotonic()
        down = [limiter.hit("k", RATE) for _ in range(100)]
        elapsed = time.monotonic() - t
    assert all(d.degraded for d in down)
    assert [d.allowed for d in down] == EXPECTED_WHILE_DOWN[policy]
    assert _breaker_held(calls[0], elapsed), (calls[0], elapsed)
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1

    if failure == "stop":
        server.start()  # a fresh, empty server: the full limit again
        expected = [True] * 5 + [False]
        time.sleep(RETRY + 0.05)  # let the breaker half-open
    else:
        server.resume()  # the state survived: the 2 tokens left before the outage, less
        time.sleep(RETRY + 0.05)  # the timed-out probes, which the server ran on resuming
        probes = _evalsha_calls(server)
        assert 1 <= probes <= calls[0]  # a probe whose connect timed out never ran
        expected = [True] * (2 - min(probes, 2)) + [False]
    after = [limiter.hit("k", RATE) for _ in range(len(expected))]
    assert not any(d.degraded for d in after)
    assert [d.allowed for d in after] == expected
    limiter.storage.close()


def test_async_hits_are_answered_while_redis_hangs(server: RedisServer) -> None:
    """ahit on a hanging Redis: degraded answers, one timeout per retry interval at most."""
    limiter = _limiter(server, "local")

    async def run() -> tuple[list[bool], bool, bool]:
        assert not (await limiter.ahit("k", RATE)).degraded
        server.command("CONFIG", "RESETSTAT")
        server.pause()
        calls = _count_store_calls(limiter)
        t = time.monotonic()
        down = [await limiter.ahit("k", RATE) for _ in range(100)]
        held = _breaker_held(calls[0], time.monotonic() - t)
        server.resume()
        await asyncio.sleep(RETRY + 0.05)  # past the retry interval: the breaker half-opens
        probes = _evalsha_calls(server)  # timed out here, run by the server on resuming
        after = [(await limiter.ahit("k", RATE)).allowed for _ in range(5)]
        await limiter.storage.aclose()  # type: ignore[attr-defined]
        assert all(d.degraded for d in down)
        left = 4 - probes  # 5 tokens, 1 taken before the outage, 1 per timed-out probe
        return [d.allowed for d in down], held, after == [True] * left + [False] * (5 - left)

    down, held, exact = asyncio.run(run())
    assert down == [True] * 5 + [False] * 95
    assert held
    assert exact


def test_calls_waiting_for_a_pooled_connection_give_up_when_redis_hangs(
    server: RedisServer,
) -> None:
    """The pool waits for a free connection, but not forever: with its only connection stuck
    on a paused Redis, the calls queued behind it fail too (sync threads and async tasks),
    so the limiter answers them by its policy instead of hanging."""
    storage = storage_from_url(server.url, prefix="w:", max_connections=1)
    alg = make_algorithm("fixed_window", Rate(100, 3600))
    assert storage.hit(alg, "k", 1, None).allowed
    server.pause()
    try:
        errors: list[BaseException] = []

        def call() -> None:
            try:
                storage.hit(alg, "k", 1, None)
            except StorageError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)  # a safety net: a hang fails the test below instead of blocking it
        assert len(errors) == 4

        async def acalls() -> list[Any]:
            calls = (storage.ahit(alg, "k", 1, None) for _ in range(4))
            try:
                return await asyncio.wait_for(
                    asyncio.gather(*calls, return_exceptions=True), 30
                )
            finally:
                await storage.aclose()

        results = asyncio.run(acalls())
        assert [type(r) for r in results] == [StorageError] * 4
    finally:
        server.resume()
        storage.close()
