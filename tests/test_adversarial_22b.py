"""Session 22's second adversary: the lead's last SyncedStorage changes (the blocklist view
asking only ``any_blocked()``, bound hits bound through each limiter's resilience wrapper,
``aclose``) attacked on real servers (a redis-server of the test's own for anything that
pauses or stops it)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from werkzeug.test import EnvironBuilder

from servers import RedisServer, start_or_skip
from throttlekit import Limiter, RequestView, storage_from_url


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with start_or_skip(RedisServer()) as s:
        yield s


def _view(limiter: Limiter, ip: str = "198.51.100.7") -> RequestView:
    env = EnvironBuilder("/", environ_base={"REMOTE_ADDR": ip}).get_environ()
    return RequestView.from_environ(env, limiter.resolver)


@pytest.mark.redis
@pytest.mark.slow
def test_an_open_breaker_spares_requests_the_frozen_stores_timeout(
        server: RedisServer) -> None:
    """Redis frozen (SIGSTOP) under a synced worker: the first request that needs the
    store waits its socket_timeout and opens the limiter's breaker; from then on, for
    retry_interval, the fail policy answers at once. Since the view asks ``any_blocked()``
    before looking at whether the store fails, every request past sync_interval asked the
    frozen store again, inline, and waited the whole socket_timeout (0.5 s here, ~20 µs
    before 3bc0338: 21 requests in 3 s instead of ~65,000)."""
    timeout = 0.5
    limiter = Limiter(storage_from_url(server.url + "?sync_interval=0.1", prefix="a22b:",
                                       socket_timeout=timeout),
                      on_storage_error="deny", retry_interval=60)
    limiter.throttle("per-ip", "1000/hour", key="ip")
    try:
        assert all(limiter.evaluate(_view(limiter)).allowed for _ in range(20))
        server.pause()
        try:
            deadline = time.monotonic() + 10
            while not limiter.evaluate(_view(limiter)).degraded:  # the breaker opens
                assert time.monotonic() < deadline, "the fail policy never answered"
            waits = []
            for _ in range(5):
                time.sleep(0.1)  # sync_interval: the view is due to be read again
                t = time.monotonic()
                v = limiter.evaluate(_view(limiter))
                waits.append(time.monotonic() - t)
                assert not v.allowed and v.degraded
        finally:
            server.resume()
        # (a wait of the store's timeout against one of microseconds: no load blurs them)
        assert [w < timeout / 2 for w in waits] == [True] * 5, waits
    finally:
        limiter.storage.close()


@pytest.mark.redis
@pytest.mark.slow
def test_the_common_case_returns_when_the_last_ban_expires(server: RedisServer) -> None:
    """A short ban (another worker's fail2ban, ttl 0.5 s) ends: the engine's common case
    must return within about sync_interval, as it did before 3bc0338 (the view read
    ``blocked()``, which drops expired entries). ``any_blocked()`` is an ``EXISTS`` of the
    index, whose TTL is the last expiry plus ``ttl_slack`` (5 s, client clock): every
    synced worker stays on its general path ~5 s past the ban (measured: 78-89k evaluations
    a second there against 262-329k on the common case, one thread, same run; no extra
    round trips). A count of the live entries (``ZCOUNT index (now +inf``) would not
    linger."""
    limiter = Limiter(storage_from_url(server.url + "?sync_interval=0.1", prefix="a22be:"))
    limiter.throttle("per-ip", "1000000/hour", key="ip")
    there = storage_from_url(server.url, prefix="a22be:")  # another worker
    try:
        assert limiter.evaluate(_view(limiter)).allowed and not limiter.engine.local_blocks
        there.block("203.0.113.1", 0.5, "fail2ban")
        time.sleep(0.2)  # sync_interval: seen
        assert limiter.evaluate(_view(limiter, "203.0.113.1")).kind == "blocked"
        time.sleep(0.3)  # the ban's end
        ended = time.monotonic()
        while limiter.engine.local_blocks and time.monotonic() - ended < 10:
            limiter.evaluate(_view(limiter))
            time.sleep(0.01)
        waited = time.monotonic() - ended
        assert limiter.evaluate(_view(limiter, "203.0.113.1")).allowed
        assert waited < 1.0, f"general path for {waited:.1f} s after the last ban ended"
    finally:
        limiter.storage.close()
        there.close()
