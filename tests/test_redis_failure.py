"""A Redis that dies, hangs and comes back: requests keep being answered under every
``on_storage_error`` policy, a dead store costs no timeout per request once the breaker is
open, and limits resume exactly when the store answers again.

Each test runs its own redis-server on a spare loopback port (never the shared 6379).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import pytest

from servers import RedisServer, start_or_skip
from throttlekit import Limiter, storage_from_url
from throttlekit.storage.redis import DEFAULT_TIMEOUT

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
    with caplog.at_level(logging.ERROR, logger="throttlekit"):
        t = time.perf_counter()
        down = [limiter.hit("k", RATE) for _ in range(100)]
        elapsed = time.perf_counter() - t
    assert all(d.degraded for d in down)
    assert [d.allowed for d in down] == EXPECTED_WHILE_DOWN[policy]
    # The breaker is open after the first failure: at most one timeout per retry interval,
    # far below one socket timeout per request (100 x 0.25 s).
    assert elapsed < 4 * DEFAULT_TIMEOUT + 0.2, elapsed
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1

    if failure == "stop":
        server.start()  # a fresh, empty server: the full limit again
        expected = [True] * 5 + [False]
        time.sleep(RETRY + 0.05)  # let the breaker half-open
    else:
        server.resume()  # the state survived: the 2 tokens left before the outage, less
        time.sleep(RETRY + 0.05)  # the timed-out probes, which the server ran on resuming
        probes = _evalsha_calls(server)
        assert 1 <= probes <= 3
        expected = [True] * (2 - min(probes, 2)) + [False]
    after = [limiter.hit("k", RATE) for _ in range(len(expected))]
    assert not any(d.degraded for d in after)
    assert [d.allowed for d in after] == expected
    limiter.storage.close()


def test_async_hits_are_answered_while_redis_hangs(server: RedisServer) -> None:
    """ahit on a hanging Redis: degraded answers, one timeout per retry interval at most."""
    limiter = _limiter(server, "local")

    async def run() -> tuple[list[bool], float, bool]:
        assert not (await limiter.ahit("k", RATE)).degraded
        server.command("CONFIG", "RESETSTAT")
        server.pause()
        t = time.perf_counter()
        down = [await limiter.ahit("k", RATE) for _ in range(100)]
        elapsed = time.perf_counter() - t
        server.resume()
        await asyncio.sleep(RETRY + 0.05)
        probes = _evalsha_calls(server)  # timed out here, run by the server on resuming
        after = [(await limiter.ahit("k", RATE)).allowed for _ in range(5)]
        await limiter.storage.aclose()  # type: ignore[attr-defined]
        assert all(d.degraded for d in down)
        left = 4 - probes  # 5 tokens, 1 taken before the outage, 1 per timed-out probe
        return [d.allowed for d in down], elapsed, after == [True] * left + [False] * (5 - left)

    down, elapsed, exact = asyncio.run(run())
    assert down == [True] * 5 + [False] * 95
    assert elapsed < 4 * DEFAULT_TIMEOUT + 0.2, elapsed
    assert exact
