"""A failing remote store, as every entry sees it: one breaker, one fail policy, one fallback
store, one local denial cache (``throttlekit._resilience.ResilientStore``), so the direct
API, the rules, the decorators and the concurrency leases answer an outage the same way.

The store is a real memory store presenting itself as remote and told to fail like an
unreachable server (the fault suites in test_redis_failure.py / test_faults_servers.py kill
real servers); the logic under test is the limiter's, not the server's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from werkzeug.test import Client, EnvironBuilder

from downable import DownableStore
from throttlekit import Limiter, RateLimitExceeded, RequestView, WSGIMiddleware
from throttlekit.testing import FakeClock

T0 = 1_699_920_000.0 + 600  # 10 minutes into an hour: hourly windows never end in a test


def _view(limiter: Limiter, path: str = "/") -> RequestView:
    env = EnvironBuilder(path, environ_base={"REMOTE_ADDR": "198.51.100.7"}).get_environ()
    return RequestView.from_environ(env, limiter.resolver)


@pytest.fixture
def clock() -> FakeClock:
    c = FakeClock()
    c.set(T0)
    return c


@pytest.mark.parametrize("shell", ["sync", "async"])
def test_a_cached_refusal_stays_a_refusal_while_the_breaker_is_open(clock, shell):
    """A key the store refused for the hour is still refused while the store is down, in
    both shells, even under ``on_storage_error="allow"``: the denial cache is asked before
    the breaker (the async shell used to answer "allow" from the open breaker)."""
    store = DownableStore()
    limiter = Limiter(store, clock=clock, on_storage_error="allow", retry_interval=600)

    async def ahit(key: str) -> Any:
        return await limiter.ahit(key, "1/hour")

    def hit(key: str) -> Any:
        return limiter.hit(key, "1/hour") if shell == "sync" else asyncio.run(ahit(key))

    assert hit("k").allowed
    refused = hit("k")
    assert not refused.allowed and not refused.degraded
    store.down = True
    tripped = hit("other")  # the store fails: the breaker opens, "allow" answers
    assert tripped.allowed and tripped.degraded
    again = hit("k")
    assert not again.allowed and not again.degraded
    assert again.retry_after == pytest.approx(refused.retry_after)


def test_one_deny_decision_for_rules_decorators_and_direct_calls(clock):
    """Under ``on_storage_error="deny"`` every entry refuses an outage with the same
    Decision: the first limit's rate (not the last), waiting ``retry_interval``."""
    store = DownableStore()
    limiter = Limiter(store, clock=clock, on_storage_error="deny", retry_interval=7)
    limiter.fail2ban("scanners", match=lambda r: True, maxretry=5, findtime=60, bantime=60)
    limiter.throttle("per-ip", "5/minute; 100/hour")

    @limiter.limit("5/minute; 100/hour", key=lambda: "k")
    def work() -> str:
        return "done"

    store.down = True
    verdict = limiter.evaluate(_view(limiter))
    with pytest.raises(RateLimitExceeded) as raised:
        work()
    direct = limiter.hit("k", "5/minute; 100/hour")

    assert not verdict.allowed and verdict.degraded
    assert verdict.rule == "storage-unavailable"
    for d in (verdict.decision, raised.value.decision, direct):
        assert d is not None
        assert (d.allowed, d.limit, d.remaining, d.retry_after) == (False, 5, 0, 7.0)
        assert d.rate.limit == 5 and d.rate.period == 60
        assert d.degraded


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _get(mw: WSGIMiddleware) -> Any:
    return Client(mw).get("/", environ_base={"REMOTE_ADDR": "198.51.100.7"}, buffered=True)


def _begin(mw: WSGIMiddleware) -> tuple[str, Any]:
    """A request whose response is not closed yet (its lease held): (status, body)."""
    started: list[str] = []
    body = mw({"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "198.51.100.7",
               "wsgi.input": None}, lambda s, h, e=None: started.append(s))
    return started[0], body


def test_local_policy_has_one_fallback_store(clock):
    """Under ``on_storage_error="local"`` the rules, the leases and the direct API of one
    limiter keep counting in one in-process store while the remote one is down, the dead
    store left alone; ``forget_local()`` empties it."""
    store = DownableStore()
    limiter = Limiter(store, clock=clock, on_storage_error="local", retry_interval=600)
    limiter.throttle("per-ip", "3/hour")
    limiter.concurrency("one", 1)
    mw = WSGIMiddleware(_app, limiter)
    store.down = True

    status, body = _begin(mw)  # holds the one slot, in the fallback store
    assert status.startswith("200")
    assert _get(mw).status_code == 429  # refused by "one": the same slots
    body.close()
    assert _get(mw).status_code == 200  # the 3rd of 3/hour, counted locally
    assert _get(mw).status_code == 429  # per-ip
    assert [limiter.hit("k", "1/hour").allowed for _ in range(2)] == [True, False]
    calls = store.calls
    limiter.forget_local()
    assert _get(mw).status_code == 200
    assert limiter.hit("k", "1/hour").allowed
    assert store.calls == calls == 1  # the breaker kept the dead store out of the path


def test_failures_are_logged_once_per_interval_across_entries(clock, caplog):
    """Rules, leases and direct calls share one breaker and one error log."""
    store = DownableStore()
    limiter = Limiter(store, clock=clock, on_storage_error="allow", retry_interval=0,
                      error_log_interval=3600)
    limiter.throttle("per-ip", "2/hour")
    limiter.concurrency("one", 1)
    mw = WSGIMiddleware(_app, limiter)
    store.down = True
    with caplog.at_level(logging.ERROR, "throttlekit"):
        assert _get(mw).status_code == 200
        assert limiter.hit("k", "1/hour").degraded
        assert asyncio.run(limiter.ahit("k", "1/hour")).degraded
    assert store.calls == 4  # retry_interval=0: every call tried the store
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1
