"""Wait instead of refuse (issue 16 item 6): ``limit(..., wait=)`` on decorated functions.

A refusal due within ``wait`` seconds waits (sync: sleeps, async: awaits; a FakeClock is
moved instead) and is decided once more; the wait is a ``"waited"`` event.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from flask import Flask

from throttlekit import ConfigError, Event, Limiter, Rate, RateLimitExceeded
from throttlekit.monitor import Monitor
from throttlekit.testing import FakeClock

T0 = 1_700_000_040.0  # a minute boundary


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def limiter(clock: FakeClock) -> Limiter:
    return Limiter(clock=clock)


def test_a_plain_call_waits_for_its_slot(limiter: Limiter, clock: FakeClock) -> None:
    """2/second with wait=2: the third and fourth calls wait for the next second, the
    fifth for the one after; every call runs, each wait is one "waited" event."""
    events: list[Event] = []
    limiter.on("waited", events.append)

    @limiter.limit("2/second", wait=2.0, key=lambda: "job")
    def job() -> float:
        return clock() - T0

    assert [job() for _ in range(5)] == [0.0, 0.0, 1.0, 1.0, 2.0]
    assert [e.decision.retry_after for e in events] == [1.0, 1.0]
    assert {e.rule for e in events} == {events[0].rule} and events[0].kind == "waited"


def test_a_refusal_due_later_than_wait_is_refused_at_once(limiter: Limiter,
                                                          clock: FakeClock) -> None:
    """1/minute with wait=2: the second call would wait 60 s: refused now, no time waited."""

    @limiter.limit("1/minute", wait=2.0, key=lambda: "k")
    def job() -> int:
        return 1

    job()
    with pytest.raises(RateLimitExceeded) as exc:
        job()
    assert exc.value.decision.retry_after == 60.0
    assert clock() == T0


def test_a_cost_above_the_limit_never_waits(limiter: Limiter, clock: FakeClock) -> None:
    """retry_after is infinite: refused at once."""

    @limiter.limit("2/second", wait=5.0, key=lambda: "k", cost=3)
    def job() -> int:
        return 1

    with pytest.raises(RateLimitExceeded):
        job()
    assert clock() == T0


def test_an_async_function_awaits(limiter: Limiter, clock: FakeClock) -> None:
    """A coroutine function awaits the wait; the same slots as the sync one."""

    @limiter.limit("2/second", wait=1.0, key=lambda: "a")
    async def job() -> float:
        return clock() - T0

    async def main() -> list[float]:
        return [await job() for _ in range(4)]

    assert asyncio.run(main()) == [0.0, 0.0, 1.0, 1.0]


def test_real_time_waits_sleep() -> None:
    """Without a fake clock the wait is a real sleep of retry_after (a short one here)."""
    limiter = Limiter()

    @limiter.limit(Rate(1, 0.2), wait=1.0, key=lambda: "r", strategy="sliding_log")
    def job() -> int:
        return 1

    import time
    start = time.monotonic()
    assert [job(), job()] == [1, 1]
    assert 0.1 <= time.monotonic() - start < 1.0


def test_without_wait_nothing_waits(limiter: Limiter, clock: FakeClock) -> None:
    """wait is opt-in: the default refuses as before."""

    @limiter.limit("1/second", key=lambda: "k")
    def job() -> int:
        return 1

    job()
    with pytest.raises(RateLimitExceeded):
        job()
    assert clock() == T0


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "2s", True, 301])
def test_bad_waits_are_config_errors(limiter: Limiter, bad: Any) -> None:
    """wait must be a number of seconds from 0 to 300: a ConfigError naming the value."""
    with pytest.raises(ConfigError, match="wait must be"):
        limiter.limit("1/second", wait=bad)


@pytest.mark.parametrize("with_extension", [True, False], ids=["Throttle", "bare"])
def test_flask_view_waits(limiter: Limiter, clock: FakeClock, with_extension: bool) -> None:
    """A Flask view with wait (the Throttle extension deciding before the view, or the
    bare decorator): the third request within the second is served a second later."""
    from throttlekit.contrib.flask import Throttle

    app = Flask(__name__)
    if with_extension:
        Throttle(app, limiter)

    @app.get("/")
    @limiter.limit("2/second", wait=1.5)
    def index() -> str:
        return f"{clock() - T0:g}"

    c = app.test_client()
    assert [c.get("/").get_data(as_text=True) for _ in range(3)] == ["0", "0", "1"]


def test_fastapi_endpoint_waits_and_the_monitor_counts_it(limiter: Limiter,
                                                          clock: FakeClock) -> None:
    """An async endpoint awaits; a Monitor exports the wait as events_total{outcome=waited}."""
    monitor = Monitor(limiter)
    app = FastAPI()

    @app.get("/e")
    @limiter.limit("1/second", wait=1.0)
    async def e() -> str:
        return "e"

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return [(await c.get("/e")).status_code for _ in range(3)]

    assert asyncio.run(main()) == [200, 200, 200]
    assert clock() == T0 + 2
    counters = monitor.snapshot()["counters"]
    assert sum(c.get("waited", 0) for c in counters.values()) == 2


def test_asgi_middleware_waits_when_asked(limiter: Limiter, clock: FakeClock) -> None:
    """ASGIMiddleware(wait=1.0): a throttle's refusal due within a second is awaited and
    served; one due later is refused with 429 at once; each wait is a "waited" event."""
    from throttlekit.asgi import ASGIMiddleware

    limiter.throttle("per-client", "2/second")
    limiter.throttle("hourly", "5/hour", key="global")
    waits: list[Event] = []
    limiter.on("waited", waits.append)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": f"{clock() - T0:g}".encode()})

    async def main() -> list[tuple[int, str]]:
        transport = httpx.ASGITransport(app=ASGIMiddleware(app, limiter, wait=1.0))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return [((r := await c.get("/")).status_code, r.text) for _ in range(7)]

    got = asyncio.run(main())
    assert got[:5] == [(200, "0"), (200, "0"), (200, "1"), (200, "1"), (200, "2")]
    assert [s for s, _ in got[5:]] == [429, 429]  # the hourly quota: no waiting it out
    assert [e.rule for e in waits] == ["per-client", "per-client"]
    with pytest.raises(ConfigError, match="wait must be"):
        ASGIMiddleware(app, limiter, wait=-1)


def test_asgi_wait_tells_each_request_once(limiter: Limiter, clock: FakeClock) -> None:
    """ASGIMiddleware(wait=): a refusal waited out is no "throttled" event, only "waited"
    then the final "allowed"; a refusal not waited out is told as without wait= (a
    "throttled" event per refusing rule). The Monitor counts no throttled request that was
    served."""
    from throttlekit.asgi import ASGIMiddleware

    limiter.throttle("per-client", "1/second")
    limiter.throttle("hourly", "3/hour", key="global")
    events: list[Event] = []
    limiter.on(events.append)
    monitor = Monitor(limiter)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=ASGIMiddleware(app, limiter, wait=1.0))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return [(await c.get("/")).status_code for _ in range(4)]

    assert asyncio.run(main()) == [200, 200, 200, 429]
    told = [(e.kind, e.rule) for e in events if e.kind != "allowed"]
    assert told == [("waited", "per-client"), ("waited", "per-client"),
                    ("throttled", "per-client"), ("throttled", "hourly")]  # the 4th only
    counters = monitor.snapshot()["counters"]
    assert sum(c.get("throttled", 0) for c in counters.values()) == 2
    assert sum(c.get("waited", 0) for c in counters.values()) == 2
