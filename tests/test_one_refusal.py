"""The same refusal looks the same through every integration (engine plan step 0.2).

One parametrised test drives a rate-limit refusal through each way of putting throttlekit in
front of an app: the WSGI and ASGI middleware, Flask's ``Throttle`` (alone and under
``WSGIMiddleware``), Django's middleware (sync under ``WSGIHandler``, async under
``ASGIHandler``), ``contrib.starlette.ThrottleMiddleware``, ``contrib.fastapi.Throttle`` (rules
and a ``limiter.depends`` dependency) and the decorators alone (Flask, Django, Starlette).

The limit is the same everywhere: 1/minute per client named ``per-ip`` (the limiter's rule
where the integration runs the rules, else ``limit("1/minute", scope="per-ip")`` on the
endpoint), beside a concurrency rule ``one`` of limit 1. Every app is driven at the raw
protocol level (an environ and ``start_response``, or an ASGI scope and ``send``), so the
header list is what a server would write, and checked for:

- the refusal carries exactly one ``RateLimit`` and one ``RateLimit-Policy`` header line,
  and the allowed first response no more than one of each;
- the refusal is 429 with the phrase ``Too Many Requests`` (where the protocol carries one:
  ASGI leaves it to the server), ``Retry-After``, and the body and ``Content-Type`` that
  ``default_responder`` gives, for ``Accept`` absent, ``*/*`` and ``application/json``;
- where the integration runs the limiter's rules: while a first request is held in the app,
  a second one (another client) is refused by ``one``, and nothing is in flight after both.

Cases that fail today because the copies of the decision disagree are strict xfails named
after the disagreement's number in section 3 of the engine plan (``notes/engine-plan.md``),
so the step that fixes one flips its case.
"""

from __future__ import annotations

import asyncio
import http
import io
import json
import sys
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpResponse
from django.test import override_settings
from django.urls import clear_url_caches, path
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import django_config  # noqa: F401 - configures Django first
from throttlekit import ASGIMiddleware, Limiter, WSGIMiddleware
from throttlekit._responses import default_responder  # public: docs/responses.md
from throttlekit.testing import FakeClock

URLCONF = "tk_one_refusal_urls"
RATE = "1/minute"
ACCEPTS = [None, "*/*", "application/json"]
HOLD = 10.0  # the longest a held request waits to be let go (a safety net, never reached)


@dataclass
class Reply:
    status: int
    phrase: str | None  # None: the protocol (ASGI) carries no reason phrase
    headers: list[tuple[str, str]]
    body: bytes

    def count(self, name: str) -> int:
        return sum(1 for k, _v in self.headers if k.lower() == name.lower())

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


class Gate:
    """The app's held endpoint: the first request in waits until let go; later ones pass."""

    def __init__(self) -> None:
        self.entered = 0
        self.inside = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()

    def enter(self) -> bool:
        """True for the request that is to wait."""
        with self.lock:
            self.entered += 1
            first = self.entered == 1
        if first:
            self.inside.set()
        return first

    def hold(self) -> None:
        if self.enter():
            self.release.wait(HOLD)

    async def ahold(self) -> None:
        if self.enter():
            while not self.release.is_set():
                await asyncio.sleep(0.01)


# -- raw protocol drivers ---------------------------------------------------------------


def _headers_in(accept: str | None) -> dict[str, str]:
    return {} if accept is None else {"Accept": accept}


def wsgi_get(app: Any, path: str, client: str, accept: str | None = None) -> Reply:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
        "SERVER_NAME": "testserver", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": client, "HTTP_HOST": "testserver", "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""), "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
    }
    for name, value in _headers_in(accept).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append((status, list(headers)))
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started[-1]
    code, _, phrase = status.partition(" ")
    return Reply(int(code), phrase, headers, body)


async def asgi_get(app: Any, path: str, client: str, accept: str | None = None) -> Reply:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": (client, 40000), "server": ("testserver", 80),
        "headers": [(b"host", b"testserver")]
        + [(k.lower().encode(), v.encode()) for k, v in _headers_in(accept).items()],
    }
    sent: list[dict[str, Any]] = []
    requested = False
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
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
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", ())]
    return Reply(start["status"], None, headers, body)


@dataclass
class Served:
    """An app under test: how to send it a request, and the limiter behind it."""

    protocol: str  # "wsgi" | "asgi"
    app: Any
    limiter: Limiter
    gate: Gate
    leases: bool  # whether the integration runs the limiter's rules (and so takes leases)

    def get(self, path: str, client: str, accept: str | None = None) -> Reply:
        if self.protocol == "wsgi":
            return wsgi_get(self.app, path, client, accept)
        return asyncio.run(asgi_get(self.app, path, client, accept))

    def overlapping(self) -> tuple[Reply, Reply]:
        """Two requests to the held endpoint from two clients, the second sent while the
        first is inside the app."""
        if self.protocol == "wsgi":
            first: list[Reply] = []
            thread = threading.Thread(
                target=lambda: first.append(wsgi_get(self.app, "/slow", "198.51.100.21")))
            thread.start()
            try:
                assert self.gate.inside.wait(HOLD), "the first request never reached the app"
                second = wsgi_get(self.app, "/slow", "198.51.100.22", "application/json")
            finally:
                self.gate.release.set()
                thread.join(HOLD)
            return first[0], second

        async def both() -> tuple[Reply, Reply]:
            task = asyncio.ensure_future(asgi_get(self.app, "/slow", "198.51.100.21"))
            try:
                while not self.gate.inside.is_set() and not task.done():
                    await asyncio.sleep(0.01)
                assert self.gate.inside.is_set(), "the first request never reached the app"
                second = await asgi_get(self.app, "/slow", "198.51.100.22", "application/json")
            finally:
                self.gate.release.set()
            return await task, second

        return asyncio.run(both())


# -- the integrations -------------------------------------------------------------------


def make_limiter(rule: bool) -> Limiter:
    """``per-ip`` 1/minute (as a rule when ``rule``) and the concurrency rule ``one``."""
    limiter = Limiter("memory://", clock=FakeClock(), strategy="fixed_window")
    if rule:
        limiter.throttle("per-ip", RATE)
    limiter.concurrency("one", 1)
    return limiter


def endpoint_limit(limiter: Limiter) -> Callable[[Any], Any]:
    return limiter.limit(RATE, scope="per-ip")


def plain_wsgi(gate: Gate) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/slow":
            gate.hold()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return app


def plain_asgi(gate: Gate) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/slow":
            await gate.ahold()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def wsgi_middleware(gate: Gate) -> Served:
    limiter = make_limiter(rule=True)
    return Served("wsgi", WSGIMiddleware(plain_wsgi(gate), limiter), limiter, gate, True)


def asgi_middleware(gate: Gate) -> Served:
    limiter = make_limiter(rule=True)
    return Served("asgi", ASGIMiddleware(plain_asgi(gate), limiter), limiter, gate, True)


def flask_app(gate: Gate, limiter: Limiter, limit: Callable[[Any], Any], *, extension: bool,
              middleware: bool) -> Any:
    from throttlekit.contrib.flask import Throttle

    app = Flask(f"one_refusal_{id(gate)}")

    @app.get("/")
    @limit
    def index() -> str:
        return "ok"

    @app.get("/slow")
    def slow() -> str:
        gate.hold()
        return "ok"

    if extension:
        Throttle(app, limiter)
    if middleware:
        app.wsgi_app = WSGIMiddleware(app.wsgi_app, limiter)  # type: ignore[method-assign]
    return app


def flask_throttle(gate: Gate) -> Served:
    # Throttle runs endpoint limits, not the limiter's rules: the limit is on the view.
    limiter = make_limiter(rule=False)
    app = flask_app(gate, limiter, endpoint_limit(limiter), extension=True, middleware=False)
    return Served("wsgi", app, limiter, gate, False)


def flask_throttle_under_wsgi(gate: Gate) -> Served:
    # The middleware runs the rules (per-ip refuses, one); Throttle a looser limit of the
    # view's own, so the responses carry two policies: in one RateLimit-Policy line.
    limiter = make_limiter(rule=True)
    view_limit = limiter.limit("10/minute", scope="view")
    app = flask_app(gate, limiter, view_limit, extension=True, middleware=True)
    return Served("wsgi", app, limiter, gate, True)


def flask_decorator(gate: Gate) -> Served:
    limiter = make_limiter(rule=False)
    app = flask_app(gate, limiter, endpoint_limit(limiter), extension=False, middleware=False)
    return Served("wsgi", app, limiter, gate, False)


def django_urls(gate: Gate, limiter: Limiter, decorate: bool) -> None:
    limit = endpoint_limit(limiter) if decorate else (lambda fn: fn)

    @limit
    def index(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    def slow(request: Any) -> HttpResponse:
        gate.hold()
        return HttpResponse("ok")

    async def aslow(request: Any) -> HttpResponse:
        await gate.ahold()
        return HttpResponse("ok")

    module = types.ModuleType(URLCONF)
    module.urlpatterns = [  # type: ignore[attr-defined]
        path("", index), path("slow", slow), path("aslow", aslow),
    ]
    sys.modules[URLCONF] = module
    clear_url_caches()


@pytest.fixture
def django_settings() -> Iterator[Callable[..., None]]:
    """``configure(limiter, middleware=True)``: this module's URLconf, and the throttlekit
    middleware given ``limiter`` (or no middleware), until the test ends."""
    active: list[Any] = []

    def configure(limiter: Limiter, middleware: bool = True) -> None:
        override = override_settings(
            ROOT_URLCONF=URLCONF, ALLOWED_HOSTS=["*"], THROTTLEKIT={"LIMITER": limiter},
            MIDDLEWARE=["throttlekit.contrib.django.ThrottleMiddleware"] if middleware else [],
        )
        override.enable()
        active.append(override)

    yield configure
    for override in active:
        override.disable()
    sys.modules.pop(URLCONF, None)
    clear_url_caches()


class AsyncSlowPath:
    """Django's async case holds requests in an async view (``/aslow``)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("path") == "/slow":
            scope = {**scope, "path": "/aslow", "raw_path": b"/aslow"}
        await self.app(scope, receive, send)


def django_sync(gate: Gate, configure: Callable[..., None]) -> Served:
    limiter = make_limiter(rule=True)
    django_urls(gate, limiter, decorate=False)
    configure(limiter)
    return Served("wsgi", WSGIHandler(), limiter, gate, True)


def django_async(gate: Gate, configure: Callable[..., None]) -> Served:
    limiter = make_limiter(rule=True)
    django_urls(gate, limiter, decorate=False)
    configure(limiter)
    return Served("asgi", AsyncSlowPath(ASGIHandler()), limiter, gate, True)


def django_decorator(gate: Gate, configure: Callable[..., None]) -> Served:
    limiter = make_limiter(rule=False)
    django_urls(gate, limiter, decorate=True)
    configure(limiter, middleware=False)
    return Served("wsgi", WSGIHandler(), limiter, gate, False)


def starlette_app(gate: Gate, limiter: Limiter | None) -> Starlette:
    async def index(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def slow(request: Request) -> PlainTextResponse:
        await gate.ahold()
        return PlainTextResponse("ok")

    if limiter is not None:
        index = endpoint_limit(limiter)(index)
    return Starlette(routes=[Route("/", index), Route("/slow", slow)])


def starlette_middleware(gate: Gate) -> Served:
    from throttlekit.contrib.starlette import ThrottleMiddleware

    limiter = make_limiter(rule=True)
    app = starlette_app(gate, None)
    app.add_middleware(ThrottleMiddleware, limiter=limiter)
    return Served("asgi", app, limiter, gate, True)


def starlette_decorator(gate: Gate) -> Served:
    limiter = make_limiter(rule=False)
    return Served("asgi", starlette_app(gate, limiter), limiter, gate, False)


def fastapi_app(gate: Gate, limiter: Limiter, dependency: bool) -> Any:
    from fastapi import Depends, FastAPI

    from throttlekit.contrib.fastapi import Throttle

    app = FastAPI()
    deps = [Depends(limiter.depends(RATE, scope="per-ip"))] if dependency else []

    @app.get("/", dependencies=deps)
    async def index() -> str:
        return "ok"

    @app.get("/slow")
    async def slow() -> str:
        await gate.ahold()
        return "ok"

    Throttle(app, limiter)
    return app


def fastapi_throttle(gate: Gate) -> Served:
    limiter = make_limiter(rule=True)
    return Served("asgi", fastapi_app(gate, limiter, dependency=False), limiter, gate, True)


def fastapi_dependency(gate: Gate) -> Served:
    # Throttle runs the rules (one); the dependency is the per-ip limit of "/".
    limiter = make_limiter(rule=False)
    return Served("asgi", fastapi_app(gate, limiter, dependency=True), limiter, gate, True)


def xfail(n: int, what: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=f"engine #{n}: {what}")


CASES = [
    pytest.param(wsgi_middleware, id="wsgi-middleware"),
    pytest.param(asgi_middleware, id="asgi-middleware"),
    pytest.param(flask_throttle, id="flask-throttle"),
    pytest.param(flask_throttle_under_wsgi, id="flask-throttle+wsgi-middleware"),
    pytest.param(django_sync, id="django-sync"),
    pytest.param(django_async, id="django-async"),
    pytest.param(starlette_middleware, id="starlette-middleware"),
    pytest.param(fastapi_throttle, id="fastapi-throttle"),
    pytest.param(fastapi_dependency, id="fastapi-dependency"),
    pytest.param(flask_decorator, id="decorator-flask"),
    pytest.param(django_decorator, id="decorator-django"),
    pytest.param(starlette_decorator, id="decorator-starlette"),
]


def expected_refusal(accept: str | None) -> tuple[str | None, bytes]:
    """``Content-Type`` and body of the default responder's refusal by ``per-ip``."""
    reference = Limiter("memory://", clock=FakeClock(), strategy="fixed_window")
    reference.hit("k", RATE)
    decision = reference.hit("k", RATE)
    denial = default_responder("throttled", "per-ip", decision, accept, [])
    return dict(denial.headers).get("Content-Type"), denial.body


@pytest.mark.parametrize("build", CASES)
def test_the_same_refusal_everywhere(build: Callable[..., Served],
                                     django_settings: Callable[..., None]) -> None:
    gate = Gate()
    served = build(gate, django_settings) if "django" in build.__name__ else build(gate)

    first = served.get("/", "198.51.100.7")
    assert first.status == 200, first
    # no duplicate lines on an allowed response either (whether it has them at all is the
    # integration's headers_on_allowed; decorators alone in Django/Starlette add none)
    assert first.count("RateLimit") <= 1 and first.count("RateLimit-Policy") <= 1, first.headers

    for accept in ACCEPTS:
        refused = served.get("/", "198.51.100.7", accept)
        assert refused.status == 429, (accept, refused)
        assert refused.phrase in (None, http.HTTPStatus(429).phrase), refused.phrase
        assert (refused.count("RateLimit"), refused.count("RateLimit-Policy")) == (1, 1), (
            accept, refused.headers)
        assert refused.get("Retry-After") == "60", refused.headers
        content_type, body = expected_refusal(accept)
        assert (refused.get("Content-Type"), refused.body) == (content_type, body), accept

    if served.leases:
        held, second = served.overlapping()
        assert held.status == 200, held
        assert second.status == 429, second
        assert json.loads(second.body)["violated-policies"] == ["one"], second.body
    assert served.limiter.inflight("one") == 0
