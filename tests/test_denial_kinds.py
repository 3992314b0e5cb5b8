"""The local denial cache never hides a block or ban: a client refused by a throttle (its
refusal cached) and then blocked or banned gets the 403 and events of the block or ban,
in the process that made it at once and in every other worker within about a second."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.test import Client

from throttlekit import Limiter, WSGIMiddleware, storage_from_url
from throttlekit._denials import CHECK_INTERVAL
from throttlekit._request import RequestView
from throttlekit.storage import RedisStorage
from throttlekit.testing import FakeClock

pytestmark = pytest.mark.redis
IP = "192.0.2.9"


def app(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"ok"]


@pytest.fixture
def stores(_backend_contexts: dict[str, Any], redis_prefix: str) -> Iterator[list[RedisStorage]]:
    """Storages on the shared Redis under this test's prefix (one per worker)."""
    url = _backend_contexts["get"]("redis").url
    made: list[RedisStorage] = []

    def make() -> RedisStorage:
        s = storage_from_url(url, prefix=redis_prefix)
        assert isinstance(s, RedisStorage)
        made.append(s)
        return s

    yield [make(), make()]
    for s in made:
        s.close()


def _limiter(store: RedisStorage, clock: FakeClock | None = None) -> tuple[Limiter, list[str]]:
    limiter = Limiter(store, clock=clock)
    limiter.throttle("per-ip", "2/hour", strategy="fixed_window")
    limiter.fail2ban("scanners", match=lambda v: v.path.startswith("/wp-"), maxretry=2,
                     findtime=60, bantime=3600)
    kinds: list[str] = []
    limiter.on(lambda event: kinds.append(event.kind))
    return limiter, kinds


def _view(limiter: Limiter, path: str = "/") -> RequestView:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": IP}
    return RequestView.from_environ(environ, limiter.resolver)


def _throttled_and_cached(limiter: Limiter) -> None:
    kinds = [limiter.evaluate(_view(limiter)).kind for _ in range(4)]
    assert kinds == ["allowed", "allowed", "throttled", "throttled"]
    assert len(limiter.store.denials or ()) == 1  # the refusal is served from the cache


def test_a_ban_made_through_the_middleware_answers_403_banned(stores: list[RedisStorage]
                                                              ) -> None:
    limiter, kinds = _limiter(stores[0], FakeClock())  # (exact counts: a clock of its own)
    client = Client(WSGIMiddleware(app, limiter))
    env = {"REMOTE_ADDR": IP}
    assert [client.get("/", environ_base=env).status_code for _ in range(4)] == [
        200, 200, 429, 429]
    assert [client.get("/wp-admin", environ_base=env).status_code for _ in range(2)] == [
        403, 403]
    assert [b.key for b in limiter.blocked()] == [f"fail2ban:scanners:{IP}"]
    del kinds[:]
    answers = [client.get("/", environ_base=env) for _ in range(3)]
    assert [r.status_code for r in answers] == [403] * 3
    assert kinds == ["banned"] * 3


def test_an_admin_block_answers_blocked_at_once(stores: list[RedisStorage]) -> None:
    limiter, kinds = _limiter(stores[0], FakeClock())  # (exact counts: a clock of its own)
    _throttled_and_cached(limiter)
    limiter.block(IP, 600)
    del kinds[:]
    verdict = limiter.evaluate(_view(limiter))
    assert (verdict.kind, verdict.key, kinds) == ("blocked", IP, ["blocked"])


def test_another_workers_ban_reaches_a_cached_refusal_within_the_check_interval(
        stores: list[RedisStorage]) -> None:
    clock = FakeClock()
    worker, kinds = _limiter(stores[0], clock)
    other, _ = _limiter(stores[1], clock)
    _throttled_and_cached(worker)
    assert [other.evaluate(_view(other, "/wp-login")).kind for _ in range(2)] == [
        "banned", "banned"]
    clock.advance(CHECK_INTERVAL)
    del kinds[:]
    verdict = worker.evaluate(_view(worker))
    assert (verdict.kind, verdict.rule, kinds) == ("banned", "scanners", ["banned"])


def test_async_ban_and_block_reach_the_cached_refusal(stores: list[RedisStorage]) -> None:
    limiter, kinds = _limiter(stores[0], FakeClock())  # (exact counts: a clock of its own)
    engine = limiter.engine

    async def run() -> list[str]:
        seen = [(await engine.aevaluate(_view(limiter))).kind for _ in range(3)]
        seen += [(await engine.aevaluate(_view(limiter, "/wp-x"))).kind for _ in range(2)]
        seen += [(await engine.aevaluate(_view(limiter))).kind]
        await limiter.aunblock(IP)
        seen += [(await engine.aevaluate(_view(limiter))).kind for _ in range(3)]
        await limiter.ablock(IP, 600)
        seen += [(await engine.aevaluate(_view(limiter))).kind]
        await stores[0].aclose()
        return seen

    expected = ["allowed", "allowed", "throttled", "banned", "banned", "banned", "allowed",
                "allowed", "throttled", "blocked"]
    assert asyncio.run(run()) == expected
    assert kinds == expected  # the events of each verdict, one each
