"""Admission control in the request pipeline (``Limiter.admission``): allowed requests take a
slot of the worker's adaptive limit, the excess is shed with 503 and ``Retry-After``, lowest
priority first, and the slot comes back when the response ends, however it ends."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import httpx
import pytest

from throttlekit import ASGIMiddleware, Event, Limiter, WSGIMiddleware
from throttlekit.testing import FakeClock


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("boom")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def environ(path: str = "/", ip: str = "192.0.2.1", **extra: Any) -> dict[str, Any]:
    return {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": ip, **extra}


class Call:
    """A WSGI request left open (its response not closed): its slot stays taken."""

    def __init__(self, mw: WSGIMiddleware, path: str = "/", **extra: Any) -> None:
        self.status = ""
        self.headers: list[tuple[str, str]] = []

        def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
            self.status, self.headers = status, list(headers)

        self.body = mw(environ(path, **extra), start_response)

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            close()


def limiter(clock: FakeClock, **options: Any) -> Limiter:
    lim = Limiter(clock=clock)
    lim.admission(initial_limit=2, min_limit=1, **options)
    return lim


def inflight(lim: Limiter) -> int:
    step = lim.engine.admission
    assert step is not None
    return step.snapshot().inflight


def test_the_excess_is_shed_with_503_and_the_slot_comes_back(clock: FakeClock) -> None:
    lim = limiter(clock)
    mw = WSGIMiddleware(app, lim)
    first, second = Call(mw), Call(mw)
    third = Call(mw)
    assert [first.status[:3], second.status[:3], third.status[:3]] == ["200", "200", "503"]
    assert dict(third.headers)["Retry-After"] == "1"
    assert inflight(lim) == 2
    first.close()
    assert inflight(lim) == 1
    fourth = Call(mw)
    assert fourth.status.startswith("200")
    for c in (second, third, fourth):
        c.close()
    assert inflight(lim) == 0


def test_priority_levels_share_the_limit(clock: FakeClock) -> None:
    """Level 0 may fill half the limit, level 1 all of it: the lowest is shed first."""
    lim = limiter(clock, priority=lambda v: 1 if v.headers.get("x-vip") else 0,
                  thresholds=(0.5, 1.0))
    mw = WSGIMiddleware(app, lim)
    low = Call(mw)
    assert Call(mw).status.startswith("503")  # a second low-priority request
    vip = Call(mw, HTTP_X_VIP="1")
    assert vip.status.startswith("200")
    low.close()
    vip.close()


def test_dry_run_reports_and_sheds_nothing(clock: FakeClock) -> None:
    lim = limiter(clock, dry_run=True)
    events: list[Event] = []
    lim.on("shed", events.append)
    mw = WSGIMiddleware(app, lim)
    calls = [Call(mw) for _ in range(3)]
    assert [c.status[:3] for c in calls] == ["200"] * 3
    assert [(e.kind, e.rule, e.dry_run) for e in events] == [("shed", "admission", True)]
    for c in calls:
        c.close()
    assert inflight(lim) == 0


def test_shed_event_and_safelisted_requests_pass(clock: FakeClock) -> None:
    lim = limiter(clock)
    lim.safelist("health", lambda v: v.path == "/healthz")
    events: list[Event] = []
    lim.on(events.append)
    mw = WSGIMiddleware(app, lim)
    open_ = [Call(mw), Call(mw)]
    assert Call(mw, path="/healthz").status.startswith("200")  # takes no slot
    shed = Call(mw)
    assert shed.status.startswith("503")
    assert [e.kind for e in events if e.kind == "shed"] == ["shed"]
    for c in open_:
        c.close()


def test_a_failing_app_gives_the_slot_back(clock: FakeClock) -> None:
    lim = limiter(clock)
    mw = WSGIMiddleware(app, lim)
    with pytest.raises(RuntimeError):
        Call(mw, path="/boom")
    assert inflight(lim) == 0


def test_a_concurrency_refusal_after_admission_returns_the_slot_unused(clock: FakeClock
                                                                       ) -> None:
    lim = limiter(clock)
    lim.concurrency("one", 1)
    mw = WSGIMiddleware(app, lim)
    first = Call(mw)
    second = Call(mw)
    assert (first.status[:3], second.status[:3]) == ("200", "429")
    assert inflight(lim) == 1
    first.close()
    assert inflight(lim) == 0


def test_a_failing_priority_function_means_the_lowest_priority(clock: FakeClock) -> None:
    def priority(view: Any) -> int:
        raise ValueError("no")

    lim = Limiter(clock=clock, on_storage_error="deny")
    lim.admission(initial_limit=2, min_limit=1, priority=priority, thresholds=(0.5, 1.0))
    mw = WSGIMiddleware(app, lim)
    first = Call(mw)
    assert first.status.startswith("200")
    assert Call(mw).status.startswith("503")
    first.close()


def test_asgi_sheds_while_the_app_is_busy(clock: FakeClock) -> None:
    lim = limiter(clock)
    release = asyncio.Event()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=ASGIMiddleware(slow, lim))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            busy = [asyncio.create_task(client.get("/")) for _ in range(2)]
            await asyncio.sleep(0.01)
            shed = await client.get("/")
            assert inflight(lim) == 2
            release.set()
            done = await asyncio.gather(*busy)
            return [shed.status_code, *(r.status_code for r in done)]

    assert asyncio.run(run()) == [503, 200, 200]
    assert inflight(lim) == 0


def test_bad_settings_are_config_errors() -> None:
    from throttlekit import ConfigError

    lim = Limiter()
    with pytest.raises(ConfigError, match="priority"):
        lim.admission(priority="high")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="dry_run"):
        lim.admission(dry_run="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        lim.admission(min_limit=0)


class Closing:
    """A WSGI body other than a list, with a ``close`` that must be called (PEP 3333)."""

    def __init__(self) -> None:
        self.closed = 0

    def __iter__(self) -> Any:
        yield b"o"
        yield b"k"

    def close(self) -> None:
        self.closed += 1


@pytest.mark.parametrize("read", [True, False], ids=["read", "closed-unread"])
def test_a_slot_alone_comes_back_once_and_the_body_is_closed(clock: FakeClock, read: bool
                                                              ) -> None:
    body = Closing()

    def closing_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        return body

    lim = limiter(clock)
    for mw in (WSGIMiddleware(app, lim), WSGIMiddleware(closing_app, lim)):
        held = Call(mw)
        other = Call(mw)  # the limit (2) is full: a third is shed
        assert Call(mw).status.startswith("503")
        if read:
            assert b"".join(held.body) == b"ok"
            assert inflight(lim) == 1  # sent to its end: given back before close
        held.close()
        held.close()  # twice: given back once
        assert inflight(lim) == 1
        other.close()
        assert inflight(lim) == 0
    assert body.closed == 3  # the closing app's two responses, each every time it was closed


def test_asgi_a_failing_or_cancelled_app_gives_the_slot_back(clock: FakeClock) -> None:
    lim = limiter(clock)
    started = asyncio.Event()

    async def failing(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        started.set()
        await asyncio.Event().wait()  # until cancelled

    mw = ASGIMiddleware(failing, lim)

    async def run() -> None:
        transport = httpx.ASGITransport(app=mw)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            with pytest.raises(RuntimeError):
                await client.get("/boom")
            assert inflight(lim) == 0
            hanging = asyncio.create_task(client.get("/"))
            await started.wait()
            assert inflight(lim) == 1
            hanging.cancel()
            with pytest.raises(asyncio.CancelledError):
                await hanging
        assert inflight(lim) == 0

    asyncio.run(run())
