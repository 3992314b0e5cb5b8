"""The challenge step through every entry that runs the rules: the WSGI and ASGI middleware,
Django's middleware (sync under ``WSGIHandler``, async under ``ASGIHandler``), Starlette's
``ThrottleMiddleware`` and FastAPI's ``Throttle``.

Each app is driven through httpx's WSGI and ASGI transports, which keep every header line
as the app wrote it. Everywhere: the 303
of the cookie round trip is exactly the step's (status, ``Location``, one ``Set-Cookie``,
body), a client that comes back with the cookie is served, a post without a pass is refused
403, a JSON client is not challenged, and the proof-of-work page round trip ends on the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html import unescape
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpResponse
from django.urls import path, re_path
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from django_config import fresh_urlconf, throttlekit_settings  # configures Django first
from throttlekit import ASGIMiddleware, Limiter, WSGIMiddleware
from throttlekit._challenge import COOKIE_NAME, pass_cookie, pass_redirect, solve
from throttlekit.contrib.fastapi import Throttle
from throttlekit.contrib.starlette import ThrottleMiddleware
from throttlekit.testing import FakeClock

KEY = b"an operator secret of 32 bytes!!"
IP = "203.0.113.9"
HTML = "text/html,application/xhtml+xml,*/*;q=0.8"


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def get(self, name: str) -> str | None:
        found = self.all(name)
        return found[0] if found else None

    def pass_value(self) -> str:
        cookie = self.get("Set-Cookie")
        assert cookie is not None and cookie.startswith(COOKIE_NAME + "=")
        return cookie.split(";", 1)[0].partition("=")[2]

    @classmethod
    def of(cls, response: httpx.Response) -> Reply:
        """The response as the server wrote it: every header line, in order."""
        return cls(response.status_code, response.headers.multi_items(), response.content)


# -- the apps: each answers "app" on every path, and reads posted forms --------------------


def plain_wsgi(environ: dict[str, Any], start_response: Any) -> Any:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"app"]


async def plain_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"app"})


async def starlette_view(request: Request) -> PlainTextResponse:
    return PlainTextResponse("app")


def django_view(request: Any, rest: str = "") -> HttpResponse:
    return HttpResponse("app", content_type="text/plain")


@contextlib.contextmanager
def django_served(lim: Limiter, make: Callable[[], Any]) -> Iterator[Any]:
    with fresh_urlconf() as urls, throttlekit_settings(LIMITER=lim):
        urls.urlpatterns = [path("", django_view), re_path(r"^(?P<rest>.+)$", django_view)]
        yield make()


@contextlib.contextmanager
def fastapi_served(lim: Limiter) -> Iterator[Any]:
    app = FastAPI()

    @app.api_route("/{rest:path}", methods=["GET", "POST"])
    async def anything(rest: str) -> PlainTextResponse:
        return PlainTextResponse("app")

    Throttle(app, lim)
    yield app


ENTRIES: dict[str, tuple[str, Callable[[Limiter], Any]]] = {
    "wsgi": ("wsgi", lambda lim: contextlib.nullcontext(WSGIMiddleware(plain_wsgi, lim))),
    "asgi": ("asgi", lambda lim: contextlib.nullcontext(ASGIMiddleware(plain_asgi, lim))),
    "django": ("wsgi", lambda lim: django_served(lim, WSGIHandler)),
    "django-async": ("asgi", lambda lim: django_served(lim, ASGIHandler)),
    "starlette": ("asgi", lambda lim: contextlib.nullcontext(Starlette(
        routes=[Route("/{rest:path}", starlette_view, methods=["GET", "POST"])],
        middleware=[Middleware(ThrottleMiddleware, limiter=lim)]))),
    "fastapi": ("asgi", fastapi_served),
}


class Site:
    """One entry serving a challenged app, and a way to send it requests."""

    def __init__(self, protocol: str, app: Any) -> None:
        self.protocol = protocol
        self.app = app

    def call(self, method: str, target: str, headers: dict[str, str] | None = None,
             body: bytes = b"") -> Reply:
        """One request from a client that keeps no cookies (the test hands them back)."""
        url = "http://testserver" + target
        if self.protocol == "wsgi":
            transport = httpx.WSGITransport(app=self.app, remote_addr=IP)
            with httpx.Client(transport=transport) as client:
                return Reply.of(client.request(method, url, headers=headers, content=body))

        async def call() -> Reply:
            transport = httpx.ASGITransport(app=self.app, client=(IP, 40000))
            async with httpx.AsyncClient(transport=transport) as client:
                return Reply.of(await client.request(method, url, headers=headers,
                                                     content=body))

        return asyncio.run(call())

    def get(self, target: str, **headers: str) -> Reply:
        return self.call("GET", target, {k.replace("_", "-"): v for k, v in headers.items()})

    def post_form(self, target: str, form: dict[str, str], **headers: str) -> Reply:
        sent = {"Content-Type": "application/x-www-form-urlencoded",
                **{k.replace("_", "-"): v for k, v in headers.items()}}
        return self.call("POST", target, sent, urlencode(form).encode())


@pytest.fixture(params=list(ENTRIES))
def site(request: pytest.FixtureRequest) -> Iterator[Site]:
    protocol, make = ENTRIES[request.param]
    lim = Limiter(clock=FakeClock())
    lim.challenge(key=KEY, work=True, difficulty=4)
    with make(lim) as app:
        yield Site(protocol, app)


def test_the_303_passes_through_unchanged_and_the_cookie_lets_the_client_in(site: Site
                                                                            ) -> None:
    first = site.get("/page?x=1")
    assert first.status == 303
    value = first.pass_value()
    expected = pass_redirect("/page?x=1", pass_cookie(value, max_age=3600, secure=False))
    assert first.body == expected.body
    for name, sent in expected.headers:
        assert first.all(name) == [sent], name  # each field once, as the step wrote it
    served = site.get("/page?x=1", Cookie=f"{COOKIE_NAME}={value}")
    assert (served.status, served.body) == (200, b"app")


def test_a_post_without_a_pass_is_refused_and_json_clients_pass(site: Site) -> None:
    refused = site.post_form("/login", {"user": "ann"})
    assert refused.status == 403 and refused.get("Set-Cookie") is None
    assert refused.body.startswith(b"Forbidden: this request needs a pass")
    assert site.get("/page", Accept="application/json").status == 200


def test_the_work_page_round_trip_ends_on_the_app(site: Site) -> None:
    page = site.get("/page?x=1", Accept=HTML)
    assert page.status == 200 and page.get("Content-Security-Policy") is not None
    text = page.body.decode()
    fields = {n: unescape(v) for n, v in re.findall(
        r'<input type="hidden" name="([^"]*)" value="([^"]*)">', text)}
    action = unescape(re.search(r'action="([^"]*)"', text)[1])  # type: ignore[index]
    counter = solve(fields["challenge"], 4)
    assert counter is not None
    fields["solution"] = str(counter)
    answer = site.post_form(action, fields, Accept=HTML)
    assert answer.status == 303 and answer.get("Location") == "/page?x=1"
    served = site.get("/page?x=1", Accept=HTML, Cookie=f"{COOKIE_NAME}={answer.pass_value()}")
    assert (served.status, served.body) == (200, b"app")


def test_websockets_are_never_challenged() -> None:
    lim = Limiter(clock=FakeClock())
    lim.challenge(key=KEY)
    accepted: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        accepted.append(scope["path"])

    async def handshake() -> list[dict[str, Any]]:
        scope = {"type": "websocket", "path": "/ws", "headers": [], "client": (IP, 1),
                 "query_string": b""}
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "websocket.connect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await ASGIMiddleware(app, lim)(scope, receive, send)
        return sent

    assert asyncio.run(handshake()) == [{"type": "websocket.accept"}]
    assert accepted == ["/ws"]


def test_asgi_root_path_is_kept_in_the_redirect_and_the_action() -> None:
    """Under a root path (a proxy's prefix: uvicorn ``--root-path``), the scope's path
    starts with it; the redirect and the page's action keep it."""
    lim = Limiter(clock=FakeClock())
    lim.challenge(key=KEY, work=True, difficulty=4)

    async def get(accept: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=ASGIMiddleware(plain_asgi, lim),
                                        client=(IP, 1), root_path="/app")
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.get("http://testserver/app/x", headers={"Accept": accept})

    assert asyncio.run(get("*/*")).headers["Location"] == "/app/x"
    page = asyncio.run(get(HTML)).text
    assert 'action="/app/.well-known/throttlekit/challenge"' in page
    assert 'name="return_to" value="/app/x"' in page
