"""The same refusal looks the same through every integration (issue 12).

Each entry into throttlekit is one ``Entry`` in ``ENTRIES`` (a new integration joins by
adding one): the WSGI and ASGI middleware, Flask's ``Throttle`` (alone and under
``WSGIMiddleware``), Django's middleware (sync under ``WSGIHandler``, async under
``ASGIHandler``), ``contrib.starlette.ThrottleMiddleware``, ``contrib.fastapi.Throttle``, and
the decorators: ``limiter.limit`` on a Flask view, a Django view (sync and async), a
Starlette endpoint and a FastAPI endpoint, and ``limiter.depends``, each alone and under
its framework's entry that runs the rules.

The limit is the same everywhere: 1/minute per client named ``per-ip`` (the limiter's rule
where the integration runs the rules, else ``limit("1/minute", scope="per-ip")`` on the
endpoint), beside a concurrency rule ``one`` of limit 1. Every app is driven at the raw
protocol level (an environ and ``start_response``, or an ASGI scope and ``send``), so the
header list is what a server would write, and checked for:

- the refusal carries exactly one ``RateLimit`` and one ``RateLimit-Policy`` header line,
  and the allowed first response no more than one of each;
- the refusal is 429 with the phrase ``Too Many Requests`` (where the protocol carries one:
  ASGI leaves it to the server), ``Retry-After``, and the body and ``Content-Type`` that
  ``default_responder`` gives for the ``Accept`` (JSON for ``application/json``, the text
  otherwise);
- where the entry runs the limiter's rules (``test_leases``): a request to an endpoint that
  raises holds the lease of ``one`` while inside and gives it back; then, while a first
  request is held in the app, a second one (another client) is refused by ``one``, and
  nothing is in flight after both. The decorators and ``Throttle`` of Flask run no rules
  (docs/concurrency.md): their leases are those of the entry they are served under.

An entry that still disagrees is a strict xfail whose reason names the disagreement, so
the fix flips it.
"""

from __future__ import annotations

import asyncio
import http
import io
import json
import os
import subprocess
import sys
import textwrap
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

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
import throttlekit
from asgi_client import asgi_request
from throttlekit import ASGIMiddleware, Limiter, WSGIMiddleware
from throttlekit._responses import default_responder  # public: docs/responses.md
from throttlekit.testing import FakeClock
from wsgi_client import wsgi_call

URLCONF = "tk_one_refusal_urls"
RATE = "1/minute"
ACCEPTS = [None, "*/*", "text/html", "application/json"]
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


class Boom(RuntimeError):
    """What the app's ``/boom`` endpoint raises."""


class Gate:
    """The app's held endpoint (``/slow``): the first request in waits until let go; later
    ones pass. And its failing one (``/boom``): notes what is in flight, then raises."""

    def __init__(self) -> None:
        self.entered = 0
        self.inside = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        #: what is in flight under ``one`` (set by ``Served``)
        self.inflight: Callable[[], int] = lambda: -1
        #: ``inflight()`` seen by each request to ``/boom``
        self.seen_failing: list[int] = []

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

    def fail(self) -> NoReturn:
        self.seen_failing.append(self.inflight())
        raise Boom("the app failed")


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
    status, headers, body = wsgi_call(app, environ)
    code, _, phrase = status.partition(" ")
    return Reply(int(code), phrase, headers, body)


async def asgi_get(app: Any, path: str, client: str, accept: str | None = None) -> Reply:
    status, headers, body = await asgi_request(app, path, client,
                                               list(_headers_in(accept).items()))
    return Reply(status, None, headers, body)


@dataclass
class Served:
    """An app under test: how to send it a request, and the limiter behind it."""

    protocol: str  # "wsgi" | "asgi"
    app: Any
    limiter: Limiter
    gate: Gate

    def __post_init__(self) -> None:
        limiter = self.limiter
        self.gate.inflight = lambda: limiter.inflight("one")

    def get(self, path: str, client: str, accept: str | None = None) -> Reply:
        if self.protocol == "wsgi":
            return wsgi_get(self.app, path, client, accept)
        return asyncio.run(asgi_get(self.app, path, client, accept))

    def failing(self) -> int | None:
        """A request to ``/boom``: the status answered, None when the app's exception
        reached the server."""
        try:
            return self.get("/boom", "198.51.100.23").status
        except Boom:
            return None

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


@dataclass
class Kit:
    """What a builder gets: the gate of the app's endpoints, and ``django(limiter,
    middleware=True)`` to serve this module's URLconf (see ``django_settings``)."""

    gate: Gate
    django: Callable[..., None]


# -- the apps ---------------------------------------------------------------------------


def make_limiter(rule: bool) -> Limiter:
    """``per-ip`` 1/minute (as a rule when ``rule``) and the concurrency rule ``one``."""
    limiter = Limiter("memory://", clock=FakeClock(), strategy="fixed_window")
    if rule:
        limiter.throttle("per-ip", RATE)
    limiter.concurrency("one", 1)
    return limiter


def endpoint_limit(limiter: Limiter) -> Callable[[Any], Any]:
    return limiter.limit(RATE, scope="per-ip")


def no_limit(fn: Any) -> Any:
    return fn


def plain_wsgi(gate: Gate) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/slow":
            gate.hold()
        elif environ["PATH_INFO"] == "/boom":
            gate.fail()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return app


def plain_asgi(gate: Gate) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/slow":
            await gate.ahold()
        elif scope["path"] == "/boom":
            gate.fail()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


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


class AsyncPaths:
    """Django's async case: every request goes to the async views (``/`` to ``/async``,
    ``/slow`` to ``/aslow``, ``/boom`` to ``/aboom``)."""

    ASYNC = {"/": "/async", "/slow": "/aslow", "/boom": "/aboom"}

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        to = self.ASYNC.get(scope.get("path", ""))
        if to is not None:
            scope = {**scope, "path": to, "raw_path": to.encode()}
        await self.app(scope, receive, send)


# -- the entries ------------------------------------------------------------------------
# Each builder serves ``/`` limited by ``per-ip``: the limiter's rule, or with ``decorated``
# the endpoint's limit (the limiter then has no rule of that name); and the gate's ``/slow``
# and ``/boom``. Where its entry runs the rules, they lease under ``one``.


def wsgi_middleware(kit: Kit) -> Served:
    limiter = make_limiter(rule=True)
    return Served("wsgi", WSGIMiddleware(plain_wsgi(kit.gate), limiter), limiter, kit.gate)


def asgi_middleware(kit: Kit) -> Served:
    limiter = make_limiter(rule=True)
    return Served("asgi", ASGIMiddleware(plain_asgi(kit.gate), limiter), limiter, kit.gate)


def flask(kit: Kit, *, decorated: bool, extension: bool = False, middleware: bool = False
          ) -> Served:
    """Flask, with ``Throttle`` (``extension``) and under ``WSGIMiddleware``
    (``middleware``). Not ``decorated``: the middleware's rule refuses, and the view has a
    looser limit of its own, so the responses carry two policies (in one line)."""
    from throttlekit.contrib.flask import Throttle

    gate = kit.gate
    limiter = make_limiter(rule=not decorated)
    limit = endpoint_limit(limiter) if decorated else limiter.limit("10/minute", scope="view")
    app = Flask(f"one_refusal_{id(gate)}")
    app.config["PROPAGATE_EXCEPTIONS"] = True  # /boom's error reaches the middleware

    @app.get("/")
    @limit
    def index() -> str:
        return "ok"

    @app.get("/slow")
    def slow() -> str:
        gate.hold()
        return "ok"

    @app.get("/boom")
    def boom() -> str:
        gate.fail()

    if extension:
        Throttle(app, limiter)
    if middleware:
        app.wsgi_app = WSGIMiddleware(app.wsgi_app, limiter)  # type: ignore[method-assign]
    return Served("wsgi", app, limiter, gate)


def django(kit: Kit, *, decorated: bool, asynchronous: bool = False, middleware: bool = True
           ) -> Served:
    """Django under ``WSGIHandler`` (or ``ASGIHandler``, its async views), with the
    throttlekit middleware (``middleware``). This module's URLconf: ``/`` and ``/async``
    (limited), ``/slow``, ``/aslow``, ``/boom``, ``/aboom``."""
    gate = kit.gate
    limiter = make_limiter(rule=not decorated)
    limit = endpoint_limit(limiter) if decorated else no_limit

    @limit
    def index(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    @limit
    async def aindex(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    def slow(request: Any) -> HttpResponse:
        gate.hold()
        return HttpResponse("ok")

    async def aslow(request: Any) -> HttpResponse:
        await gate.ahold()
        return HttpResponse("ok")

    def boom(request: Any) -> HttpResponse:
        gate.fail()

    async def aboom(request: Any) -> HttpResponse:
        gate.fail()

    module = types.ModuleType(URLCONF)
    module.urlpatterns = [  # type: ignore[attr-defined]
        path("", index), path("async", aindex), path("slow", slow), path("aslow", aslow),
        path("boom", boom), path("aboom", aboom),
    ]
    sys.modules[URLCONF] = module
    clear_url_caches()
    kit.django(limiter, middleware=middleware)
    if asynchronous:
        return Served("asgi", AsyncPaths(ASGIHandler()), limiter, gate)
    return Served("wsgi", WSGIHandler(), limiter, gate)


def starlette(kit: Kit, *, decorated: bool, middleware: bool = True) -> Served:
    """Starlette, with ``contrib.starlette.ThrottleMiddleware`` (``middleware``)."""
    from throttlekit.contrib.starlette import ThrottleMiddleware

    gate = kit.gate
    limiter = make_limiter(rule=not decorated)
    limit = endpoint_limit(limiter) if decorated else no_limit

    @limit
    async def index(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def slow(request: Request) -> PlainTextResponse:
        await gate.ahold()
        return PlainTextResponse("ok")

    async def boom(request: Request) -> PlainTextResponse:
        gate.fail()

    app = Starlette(routes=[Route("/", index), Route("/slow", slow), Route("/boom", boom)])
    if middleware:
        app.add_middleware(ThrottleMiddleware, limiter=limiter)
    return Served("asgi", app, limiter, gate)


def fastapi(kit: Kit, *, decorated: bool = False, dependency: bool = False,
            throttle: bool = True) -> Served:
    """FastAPI, with ``contrib.fastapi.Throttle`` (``throttle``); ``dependency``: the
    limit is ``Depends(limiter.depends(...))``."""
    from fastapi import Depends, FastAPI

    from throttlekit.contrib.fastapi import Throttle

    gate = kit.gate
    limiter = make_limiter(rule=not (decorated or dependency))
    limit = endpoint_limit(limiter) if decorated else no_limit
    deps = [Depends(limiter.depends(RATE, scope="per-ip"))] if dependency else []
    app = FastAPI()

    @app.get("/", dependencies=deps)
    @limit
    async def index() -> str:
        return "ok"

    @app.get("/slow")
    async def slow() -> str:
        await gate.ahold()
        return "ok"

    @app.get("/boom")
    async def boom() -> str:
        gate.fail()

    if throttle:
        Throttle(app, limiter)
    return Served("asgi", app, limiter, gate)


@dataclass(frozen=True)
class Entry:
    """One way into throttlekit: ``build`` serves the app behind it; ``rules``: it runs the
    limiter's rules, so it takes the concurrency leases. ``disagrees``: why its refusal
    still differs (a strict xfail of the refusal test)."""

    build: Callable[[Kit], Served]
    rules: bool
    disagrees: str | None = None


ENTRIES = {
    "wsgi-middleware": Entry(wsgi_middleware, rules=True),
    "asgi-middleware": Entry(asgi_middleware, rules=True),
    "flask-throttle": Entry(partial(flask, decorated=True, extension=True), rules=False),
    "flask-throttle+wsgi-middleware": Entry(
        partial(flask, decorated=False, extension=True, middleware=True), rules=True),
    "django-sync": Entry(partial(django, decorated=False), rules=True),
    "django-async": Entry(partial(django, decorated=False, asynchronous=True), rules=True),
    "starlette-middleware": Entry(partial(starlette, decorated=False), rules=True),
    "fastapi-throttle": Entry(fastapi, rules=True),
    "decorator-flask": Entry(partial(flask, decorated=True), rules=False),
    "decorator-flask+wsgi-middleware": Entry(
        partial(flask, decorated=True, middleware=True), rules=True),
    "decorator-django": Entry(partial(django, decorated=True, middleware=False), rules=False),
    "decorator-django-async": Entry(
        partial(django, decorated=True, asynchronous=True, middleware=False), rules=False),
    "decorator-django+middleware": Entry(partial(django, decorated=True), rules=True),
    "decorator-django-async+middleware": Entry(
        partial(django, decorated=True, asynchronous=True), rules=True),
    "decorator-starlette": Entry(
        partial(starlette, decorated=True, middleware=False), rules=False),
    "decorator-starlette+middleware": Entry(partial(starlette, decorated=True), rules=True),
    "decorator-fastapi": Entry(partial(fastapi, decorated=True, throttle=False), rules=False),
    "decorator-fastapi+throttle": Entry(partial(fastapi, decorated=True), rules=True),
    "depends-fastapi": Entry(partial(fastapi, dependency=True, throttle=False), rules=False),
    "depends-fastapi+throttle": Entry(partial(fastapi, dependency=True), rules=True),
}


def refusal_cases() -> list[Any]:
    return [
        pytest.param(entry, id=name, marks=[pytest.mark.xfail(
            strict=True, reason=f"issue 12: {entry.disagrees}")] if entry.disagrees else [])
        for name, entry in ENTRIES.items()
    ]


def lease_cases() -> list[Any]:
    return [pytest.param(entry, id=name) for name, entry in ENTRIES.items() if entry.rules]


@pytest.fixture
def kit(django_settings: Callable[..., None]) -> Kit:
    return Kit(Gate(), django_settings)


def expected_refusal(accept: str | None) -> tuple[str | None, bytes]:
    """``Content-Type`` and body of the default responder's refusal by ``per-ip``."""
    reference = Limiter("memory://", clock=FakeClock(), strategy="fixed_window")
    reference.hit("k", RATE)
    decision = reference.hit("k", RATE)
    denial = default_responder("throttled", "per-ip", decision, accept, [])
    return dict(denial.headers).get("Content-Type"), denial.body


@pytest.mark.parametrize("entry", refusal_cases())
def test_the_same_refusal_everywhere(entry: Entry, kit: Kit) -> None:
    served = entry.build(kit)

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
    assert served.limiter.inflight("one") == 0


@pytest.mark.parametrize("entry", lease_cases())
def test_leases(entry: Entry, kit: Kit) -> None:
    """A concurrency limit of 1 admits one of two overlapping requests; the slot is given
    back when the response ends, also when the app raises."""
    served = entry.build(kit)

    assert served.failing() in (500, None)  # answered by the framework, or raised to the server
    assert kit.gate.seen_failing == [1], "the failing request held no lease"
    assert served.limiter.inflight("one") == 0, "the failing request kept its lease"

    held, second = served.overlapping()
    assert held.status == 200, held
    assert second.status == 429, second
    assert json.loads(second.body)["violated-policies"] == ["one"], second.body
    assert served.limiter.inflight("one") == 0


# -- a FastAPI app imported late -------------------------------------------------------
# A module that imports FastAPI only in its app factory: the endpoint's limit (decorated in
# the factory, or when the module is imported) must still answer 429 through FastAPI, never
# raise RateLimitExceeded into the server. Run in a fresh interpreter, where nothing
# imported FastAPI (or Starlette) before the factory.

LATE_APP = """
    from throttlekit import Limiter
    from throttlekit.testing import FakeClock

    limiter = Limiter("memory://", clock=FakeClock(), strategy="fixed_window")


    def limited():
        @limiter.limit("1/minute", scope="per-ip")
        async def index() -> str:
            return "ok"

        return index


    if not DECORATED_IN_FACTORY:
        index = limited()  # before anything imported FastAPI


    def create_app():
        from fastapi import FastAPI

        app = FastAPI()
        app.add_api_route("/", limited() if DECORATED_IN_FACTORY else index)
        if THROTTLE:
            from throttlekit.contrib.fastapi import Throttle

            Throttle(app, limiter)
        return app
    """

LATE_DRIVER = """
    import asyncio, json, sys

    import httpx

    import late_app

    imported = sorted(name for name in ("fastapi", "starlette") if name in sys.modules)
    app = late_app.create_app()


    async def get():
        transport = httpx.ASGITransport(app, client=("198.51.100.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            try:
                reply = await c.get("/")
            except Exception as exc:
                return {"status": None, "headers": [], "raised": type(exc).__name__}
        return {"status": reply.status_code, "headers": reply.headers.multi_items(),
                "raised": None}


    print(json.dumps({"imported": imported, "replies": [asyncio.run(get()) for _ in range(2)]}))
    """


@pytest.mark.slow
@pytest.mark.parametrize(("in_factory", "throttle"), [
    pytest.param(True, False, id="decorated-in-factory"),
    pytest.param(False, False, id="decorated-at-import"),
    pytest.param(False, True, id="decorated-at-import+throttle"),
])
def test_fastapi_imported_late(in_factory: bool, throttle: bool, tmp_path: Path) -> None:
    flags = f"DECORATED_IN_FACTORY = {in_factory}\nTHROTTLE = {throttle}\n"
    (tmp_path / "late_app.py").write_text(flags + textwrap.dedent(LATE_APP))
    (tmp_path / "drive.py").write_text(textwrap.dedent(LATE_DRIVER))
    src = str(Path(throttlekit.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(tmp_path)])}
    run = subprocess.run([sys.executable, str(tmp_path / "drive.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["imported"] == [], "the module imported FastAPI before its factory ran"

    first, refused = out["replies"]
    assert (first["raised"], first["status"]) == (None, 200), first
    assert (refused["raised"], refused["status"]) == (None, 429), refused
    reply = Reply(refused["status"], None, [tuple(h) for h in refused["headers"]], b"")
    assert (reply.count("RateLimit"), reply.count("RateLimit-Policy")) == (1, 1), reply.headers
    assert reply.get("Retry-After") == "60", reply.headers
