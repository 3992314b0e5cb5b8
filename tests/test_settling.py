"""Leases and count_when settle under every entry that runs the rules, whatever ends the
response (engine plan #9-#12).

Each entry (``ASGIMiddleware``, ``contrib.starlette.ThrottleMiddleware``, Django's middleware
sync and async) serves a limiter with a concurrency rule ``one`` (limit 1) and a throttle
``fails`` of 1/minute charged only by ``count_when``. A request that ends badly (the app
raises, or the request is cancelled) must give its slot back and be charged as a 500, so the
next request is refused by ``fails``; a ``count_when`` on a response header must see the
headers. Apps are driven at the raw protocol level (an ASGI scope and ``send``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.http import HttpResponse
from django.test import AsyncClient, Client, override_settings
from django.urls import clear_url_caches, path
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

import django_config  # noqa: F401 - configures Django first
from asgi_client import asgi_request
from throttlekit import ASGIMiddleware, Limiter
from throttlekit.contrib import django as tk_django
from throttlekit.contrib.starlette import ThrottleMiddleware
from throttlekit.testing import FakeClock

URLCONF = "tk_settling_urls"


class Abort(BaseException):
    """Not an Exception: what frameworks let through (like a cancellation or an exit)."""


def is_500(response: Any) -> bool:
    return bool(response.status_code >= 500)


def login_failed(response: Any) -> bool:
    return any(k.lower() == "x-login" and v == "failed" for k, v in response.headers)


def make_limiter(count_when: Callable[[Any], bool] = is_500) -> Limiter:
    limiter = Limiter("memory://", clock=FakeClock(), strategy="fixed_window")
    limiter.throttle("fails", "1/minute", count_when=count_when)
    limiter.concurrency("one", 1)
    return limiter


async def asgi_get(app: Any, path: str, client: str = "198.51.100.7"
                   ) -> tuple[int, dict[str, str], bytes]:
    status, pairs, body = await asgi_request(app, path, client,
                                             [("Accept", "application/json")])
    return status, {k.lower(): v for k, v in pairs}, body


def refused_by(reply: tuple[int, dict[str, str], bytes]) -> list[str]:
    status, _headers, body = reply
    assert status == 429, reply
    return list(json.loads(body)["violated-policies"])


# -- ASGI apps: the plain middleware and Starlette's ------------------------------------


class Endpoints:
    """``/hang`` waits forever once inside; ``/boom`` raises; ``/login`` answers 200 with
    ``X-Login: failed``; ``/ok`` answers 200. ``inside`` is the slots held while in /hang."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.entered = asyncio.Event()
        self.inside: list[int] = []

    async def hang(self) -> None:
        self.inside.append(self.limiter.inflight("one"))
        self.entered.set()
        await asyncio.Event().wait()


def plain_app(limiter: Limiter, ends: Endpoints) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/hang":
            await ends.hang()
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        headers = [(b"content-type", b"text/plain")]
        if scope["path"] == "/login":
            headers.append((b"x-login", b"failed"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    return ASGIMiddleware(app, limiter)


def starlette_app(limiter: Limiter, ends: Endpoints) -> Any:
    async def hang(request: Request) -> PlainTextResponse:
        await ends.hang()
        raise AssertionError("never reached")

    async def boom(request: Request) -> PlainTextResponse:
        raise RuntimeError("boom")

    async def login(request: Request) -> PlainTextResponse:
        return PlainTextResponse("no", headers={"X-Login": "failed"})

    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close()

    app = Starlette(routes=[Route("/hang", hang), Route("/boom", boom), Route("/login", login),
                            Route("/ok", ok), WebSocketRoute("/ws", ws)])
    app.add_middleware(ThrottleMiddleware, limiter=limiter)
    return app


ASGI_APPS = [pytest.param(plain_app, id="asgi-middleware"),
             pytest.param(starlette_app, id="starlette-middleware")]


@pytest.mark.parametrize("build", ASGI_APPS)
def test_cancelled_request_releases_its_lease_and_counts_as_500(build: Any) -> None:
    limiter = make_limiter()

    async def scenario() -> None:
        ends = Endpoints(limiter)
        app = build(limiter, ends)
        task = asyncio.ensure_future(asgi_get(app, "/hang"))
        await asyncio.wait_for(ends.entered.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ends.inside == [1]  # it held the slot while inside
        assert limiter.inflight("one") == 0
        assert refused_by(await asgi_get(app, "/ok")) == ["fails"]

    asyncio.run(scenario())


@pytest.mark.parametrize("build", ASGI_APPS)
def test_raising_app_releases_its_lease_and_counts_as_500(build: Any) -> None:
    limiter = make_limiter()

    async def scenario() -> None:
        app = build(limiter, Endpoints(limiter))
        with pytest.raises(RuntimeError, match="boom"):
            await asgi_get(app, "/boom")
        assert limiter.inflight("one") == 0
        assert refused_by(await asgi_get(app, "/ok")) == ["fails"]

    asyncio.run(scenario())


@pytest.mark.parametrize("build", ASGI_APPS)
def test_count_when_sees_the_response_headers_asgi(build: Any) -> None:
    limiter = make_limiter(login_failed)

    async def scenario() -> None:
        app = build(limiter, Endpoints(limiter))
        assert (await asgi_get(app, "/ok"))[0] == 200  # no header: not charged
        assert (await asgi_get(app, "/login"))[0] == 200
        assert refused_by(await asgi_get(app, "/ok")) == ["fails"]

    asyncio.run(scenario())


def test_starlette_middleware_runs_the_rules_on_websockets() -> None:
    """A blocklisted client's handshake is refused (closed 1008 without the
    ``websocket.http.response`` extension), as ``ASGIMiddleware`` refuses it; another
    client's is accepted."""
    limiter = Limiter("memory://", clock=FakeClock())
    limiter.blocklist("bad", ips=["192.0.2.66"])
    app = starlette_app(limiter, Endpoints(limiter))

    async def handshake(client: str) -> list[dict[str, Any]]:
        scope = {"type": "websocket", "asgi": {"version": "3.0"}, "path": "/ws",
                 "raw_path": b"/ws", "root_path": "", "query_string": b"", "headers": [],
                 "client": (client, 5), "server": ("testserver", 80), "scheme": "ws",
                 "subprotocols": []}
        inbox: list[dict[str, Any]] = [{"type": "websocket.connect"}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return inbox.pop(0) if inbox else {"type": "websocket.disconnect", "code": 1000}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return sent

    refused = asyncio.run(handshake("192.0.2.66"))
    assert refused == [{"type": "websocket.close", "code": 1008}]
    accepted = asyncio.run(handshake("192.0.2.1"))
    assert accepted[0]["type"] == "websocket.accept"


# -- Django's middleware, sync and async ---------------------------------------------------


@pytest.fixture
def django_limiter() -> Iterator[Limiter]:
    """A limiter behind Django's middleware, with this module's views."""
    import sys
    import types

    limiter = make_limiter(lambda r: is_500(r) or login_failed(r))

    def ok(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    def boom(request: Any) -> HttpResponse:
        assert limiter.inflight("one") == 1
        raise Abort

    async def aboom(request: Any) -> HttpResponse:
        assert limiter.inflight("one") == 1
        raise Abort

    def login(request: Any) -> HttpResponse:
        response = HttpResponse("no")
        response["X-Login"] = "failed"
        return response

    module = types.ModuleType(URLCONF)
    module.urlpatterns = [  # type: ignore[attr-defined]
        path("ok", ok), path("boom", boom), path("aboom", aboom), path("login", login),
    ]
    sys.modules[URLCONF] = module
    clear_url_caches()
    tk_django._state.clear()
    with override_settings(ROOT_URLCONF=URLCONF, ALLOWED_HOSTS=["*"],
                           THROTTLEKIT={"LIMITER": limiter},
                           MIDDLEWARE=["throttlekit.contrib.django.ThrottleMiddleware"]):
        yield limiter
    tk_django._state.clear()
    sys.modules.pop(URLCONF, None)
    clear_url_caches()


def _refused_by(response: Any) -> list[str]:
    """The refusing rule: ``fails`` (1/minute: Retry-After 60; ``one`` would say 1)."""
    assert response.status_code == 429, response
    assert response["Retry-After"] == "60", response.headers
    return ["fails"] if response["RateLimit"].startswith('"fails";r=0') else []


def test_django_sync_request_ending_in_a_base_exception_settles(django_limiter: Limiter
                                                                ) -> None:
    client = Client()
    with pytest.raises(Abort):
        client.get("/boom")
    assert django_limiter.inflight("one") == 0
    assert _refused_by(client.get("/ok")) == ["fails"]


def test_django_async_request_ending_in_a_base_exception_settles(django_limiter: Limiter
                                                                 ) -> None:
    client = AsyncClient()

    async def scenario() -> None:
        with pytest.raises(Abort):
            await client.get("/aboom")
        assert django_limiter.inflight("one") == 0
        assert _refused_by(await client.get("/ok")) == ["fails"]

    asyncio.run(scenario())


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_count_when_sees_the_response_headers_django(django_limiter: Limiter, mode: str
                                                     ) -> None:
    if mode == "sync":
        client = Client()
        assert client.get("/ok").status_code == 200
        assert client.get("/login").status_code == 200
        assert _refused_by(client.get("/ok")) == ["fails"]
        return

    async def scenario() -> None:
        aclient = AsyncClient()
        assert (await aclient.get("/ok")).status_code == 200
        assert (await aclient.get("/login")).status_code == 200
        assert _refused_by(await aclient.get("/ok")) == ["fails"]

    asyncio.run(scenario())


def test_one_header_set_under_nested_asgi_entries() -> None:
    """``ASGIMiddleware`` (the rules) around Starlette's middleware (default limits only):
    one ``RateLimit`` and one ``RateLimit-Policy`` line, with the policies of both."""
    limiter = Limiter("memory://", clock=FakeClock(), strategy="fixed_window")
    limiter.throttle("per-ip", "5/minute")

    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    inner = Starlette(routes=[Route("/ok", ok)])
    inner.add_middleware(ThrottleMiddleware, limiter=limiter, default_limits="10/minute",
                         rules=False)
    app = ASGIMiddleware(inner, limiter)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": "/ok", "raw_path": b"/ok",
             "query_string": b"", "root_path": "", "client": ("198.51.100.7", 4000),
             "server": ("testserver", 80), "headers": [(b"host", b"testserver")]}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 200
    lines = [(k.decode().lower(), v.decode()) for k, v in start["headers"]]
    policy = [v for k, v in lines if k == "ratelimit-policy"]
    assert len(policy) == 1 and len([k for k, _ in lines if k == "ratelimit"]) == 1, lines
    assert '"per-ip"' in policy[0] and "default:" in policy[0], policy
