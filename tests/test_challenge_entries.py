"""The challenge step through every entry that runs the rules: the WSGI and ASGI middleware,
Django's middleware (sync under ``WSGIHandler``, async under ``ASGIHandler``), Starlette's
``ThrottleMiddleware`` and FastAPI's ``Throttle``.

Each app is driven at the raw protocol level (an environ and ``start_response``, or an ASGI
scope and ``send``), so the header list is what a server would write. Everywhere: the 303
of the cookie round trip is exactly the step's (status, ``Location``, one ``Set-Cookie``,
body), a client that comes back with the cookie is served, a post without a pass is refused
403, a JSON client is not challenged, and the proof-of-work page round trip ends on the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html import unescape
from typing import Any
from urllib.parse import urlencode

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


def wsgi_call(app: Any, method: str, target: str, headers: dict[str, str],
              body: bytes) -> Reply:
    path_info, _, query = target.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path_info,
        "QUERY_STRING": query, "SERVER_NAME": "testserver", "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": IP, "HTTP_HOST": "testserver",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(), "wsgi.multithread": True, "wsgi.multiprocess": False,
        "wsgi.run_once": False, "CONTENT_LENGTH": str(len(body)),
    }
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        environ[key if key == "CONTENT_TYPE" else "HTTP_" + key] = value
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append((status, list(headers)))
        return lambda data: None

    result = app(environ, start_response)
    try:
        data = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, out = started[-1]
    return Reply(int(status.split()[0]), out, data)


async def asgi_call(app: Any, method: str, target: str, headers: dict[str, str],
                    body: bytes) -> Reply:
    path_, _, query = target.partition("?")
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path_, "raw_path": path_.encode(),
        "query_string": query.encode(), "root_path": "", "client": (IP, 40000),
        "server": ("testserver", 80),
        "headers": [(b"host", b"testserver"), (b"content-length", str(len(body)).encode())]
        + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    sent: list[dict[str, Any]] = []
    requested = False
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    try:
        await app(scope, receive, send)
    finally:
        done.set()
    start = next(m for m in sent if m["type"] == "http.response.start")
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    out = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", ())]
    return Reply(start["status"], out, data)


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
        if self.protocol == "wsgi":
            return wsgi_call(self.app, method, target, headers or {}, body)
        return asyncio.run(asgi_call(self.app, method, target, headers or {}, body))

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
    lim = Limiter(clock=FakeClock())
    lim.challenge(key=KEY, work=True, difficulty=4)
    app = ASGIMiddleware(plain_asgi, lim)

    async def get(accept: str) -> Reply:
        scope = {"type": "http", "method": "GET", "path": "/app/x", "raw_path": b"/app/x",
                 "root_path": "/app", "query_string": b"", "client": (IP, 1),
                 "headers": [(b"accept", accept.encode())]}
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        start = sent[0]
        return Reply(start["status"], [(k.decode(), v.decode()) for k, v in start["headers"]],
                     sent[1]["body"])

    assert asyncio.run(get("*/*")).get("Location") == "/app/x"
    page = asyncio.run(get(HTML)).body.decode()
    assert 'action="/app/.well-known/throttlekit/challenge"' in page
    assert 'name="return_to" value="/app/x"' in page

