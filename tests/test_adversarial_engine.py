"""Adversarial review of issue 12 ("one decision path"): behaviour that differed between
entries, between the engine's common case and its general path, or from the version before
the refactor. Each test is the smallest reproduction of one finding; a finding left open is
a strict xfail whose reason says what is wrong, so the fix flips it.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request

from downable import DownableStore
from test_call_budget import count_calls
from throttlekit import ASGIMiddleware, Limiter, RequestView, WSGIMiddleware
from throttlekit.testing import FakeClock

SRC = Path(__file__).resolve().parent.parent / "src"
PEER = "198.51.100.7"


def _view(limiter: Limiter, path: str = "/", peer: str = PEER) -> RequestView:
    scope = {"type": "http", "method": "GET", "path": path, "headers": [],
             "client": (peer, 40000)}
    return RequestView.from_scope(scope, limiter.resolver)


def _environ(path: str = "/") -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
        "SERVER_NAME": "test", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": PEER, "HTTP_HOST": "test", "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""), "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
    }


def _scope(path: str = "/") -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "headers": [(b"host", b"test")],
            "client": (PEER, 40000), "server": ("test", 80)}


# -- the engine ------------------------------------------------------------------------------


def test_rules_file_keeps_the_engines_common_case(tmp_path: Path) -> None:
    """A limiter whose rules come from a rules file (the documented way) is decided by the
    common case too: it cost three times the calls of the same rules registered in code,
    because a rules-file watcher sent every request down the general path (before the
    refactor the watcher was polled, then the fast path taken)."""
    rules = tmp_path / "rules.toml"
    rules.write_text('[[throttle]]\nname = "per-ip"\nrates = "1000/minute"\n')
    in_code = Limiter(clock=FakeClock())
    in_code.throttle("per-ip", "1000/minute")
    from_file = Limiter(clock=FakeClock())
    from_file.load_rules(rules)
    counts = []
    for limiter in (in_code, from_file):
        for _ in range(3):  # first-use caches settle
            assert limiter.evaluate(_view(limiter)).allowed
        view = _view(limiter)
        counts.append(count_calls(lambda lim=limiter, v=view: lim.evaluate(v)))
    assert counts[1] <= counts[0] + 1  # the watcher's poll


def test_rules_file_reload_applies_on_the_common_case(tmp_path: Path) -> None:
    """With the watcher polled before the common case, a reload still applies to the very
    request that finds the file changed."""
    rules = tmp_path / "rules.toml"
    rules.write_text('[[throttle]]\nname = "per-ip"\nrates = "1000/minute"\n')
    limiter = Limiter(clock=FakeClock())
    limiter.load_rules(rules, reload_interval=0)
    assert limiter.evaluate(_view(limiter)).decision.limit == 1000
    rules.write_text('[[throttle]]\nname = "per-ip"\nrates = "5/minute"\n'
                     '[[throttle]]\nname = "shadow"\nrates = "1/minute"\ndry_run = true\n')
    os.utime(rules, ns=(0, 0))  # an old file: settled at once
    verdict = limiter.evaluate(_view(limiter))
    assert (verdict.allowed, verdict.decision.limit) == (True, 5)
    assert limiter.evaluate(_view(limiter)).allowed  # the dry-run rule never refuses


def test_dry_run_throttle_added_during_a_request_never_refuses_it() -> None:
    """A dry-run throttle registered by another thread while a request is between the
    engine's ``fast`` check and its throttles was decided as a plain throttle: the request
    was refused (429) by a rule that must never refuse. (Before the refactor too.)"""
    limiter = Limiter()
    inside, go = threading.Event(), threading.Event()

    def slow_safelist(view: RequestView) -> bool:
        if view.path == "/slow":
            inside.set()
            go.wait(5)
        return False

    limiter.safelist("health", slow_safelist)
    verdicts: list[Any] = []
    racing = threading.Thread(
        target=lambda: verdicts.append(limiter.evaluate(_view(limiter, "/slow"))))
    racing.start()
    assert inside.wait(5)
    limiter.throttle("shadow", "1/minute", dry_run=True, cost=2)  # would refuse anyone
    go.set()
    racing.join(5)
    assert verdicts[0].allowed, verdicts[0]
    assert limiter.evaluate(_view(limiter)).allowed


# -- leases ----------------------------------------------------------------------------------


def test_disabled_limiter_takes_no_lease_under_the_wsgi_middleware() -> None:
    """``enabled=False`` switches the rules off, concurrency rules included, as the Django
    and Starlette middleware do: the core WSGI middleware still took leases and refused a
    second request in flight with 429."""
    limiter = Limiter(enabled=False)
    limiter.concurrency("one", 1)
    inner: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/outer":  # a second request while this one is in flight
            inner.append(_wsgi_status(middleware, "/inner"))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    middleware = WSGIMiddleware(app, limiter)
    assert _wsgi_status(middleware, "/outer") == "200 OK"
    assert inner == ["200 OK"]
    assert limiter.inflight("one") == 0


def _wsgi_status(middleware: Any, path: str) -> str:
    return _status(middleware, _environ(path))


def _status(app: Any, environ: dict[str, Any]) -> str:
    started: list[str] = []
    result = app(environ, lambda status, headers, exc_info=None: started.append(status))
    b"".join(result)
    close = getattr(result, "close", None)
    if close is not None:
        close()
    return started[0]


def test_disabled_limiter_takes_no_lease_under_the_asgi_middleware() -> None:
    """The ASGI twin of the test above (load shedding and admission control too: a 503
    from a disabled limiter)."""
    limiter = Limiter(enabled=False)
    limiter.concurrency("one", 1)
    limiter.shed(capacity=1, thresholds=(1.0,))
    limiter.admission(initial_limit=1, min_limit=1, max_limit=1)
    inner: list[int] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/outer":
            inner.append(await _asgi_status(middleware, "/inner"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = ASGIMiddleware(app, limiter)
    assert asyncio.run(_asgi_status(middleware, "/outer")) == 200
    assert inner == [200]
    assert limiter.inflight("one") == 0


async def _asgi_status(app: Any, path: str) -> int:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(_scope(path), receive, send)
    return int(sent[0]["status"])


# -- FastAPI without Throttle -----------------------------------------------------------------


@pytest.mark.parametrize("first", ["/own-request", "/hidden", "/dependency"])
def test_fastapi_refusal_is_the_same_whichever_endpoint_is_refused_first(first: str) -> None:
    """In a FastAPI app without ``Throttle``, an endpoint with its own ``Request`` parameter
    answered a refusal with FastAPI's ``{"detail": ...}`` JSON until an endpoint without one
    (or a ``limiter.depends`` dependency) had been refused in the same app; from then on it
    answered with the refusal. The same request got two bodies, depending on history."""
    limiter = Limiter(clock=FakeClock())  # (exact counts: a clock of its own)
    app = FastAPI()

    @app.get("/own-request")
    @limiter.limit("1/minute")
    async def own_request(request: Request) -> dict[str, int]:
        return {"ok": 1}

    @app.get("/hidden")
    @limiter.limit("1/minute")
    async def hidden() -> dict[str, int]:
        return {"ok": 1}

    @app.get("/dependency", dependencies=[Depends(limiter.depends("1/minute"))])
    async def dependency() -> dict[str, int]:
        return {"ok": 1}

    async def refusals() -> dict[str, tuple[int, str, str]]:
        transport = httpx.ASGITransport(app=app)
        out = {}
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            order = [first, *(p for p in ("/own-request", "/hidden", "/dependency")
                              if p != first)]
            for path in order:
                assert (await client.get(path)).status_code == 200
                r = await client.get(path, headers={"accept": "text/plain"})
                out[path] = (r.status_code, r.headers["content-type"], r.text)
        return out

    got = asyncio.run(refusals())
    assert len(set(got.values())) == 1, got
    status, ctype, body = got[first]
    assert (status, ctype) == (429, "text/plain; charset=utf-8")
    assert body.startswith("Too Many Requests")


# -- the import watcher ----------------------------------------------------------------------


def test_import_watcher_leaves_once_the_apps_framework_is_loaded() -> None:
    code = textwrap.dedent("""
        import sys
        from throttlekit import Limiter
        from throttlekit import _adapters
        limiter = Limiter()

        @limiter.limit("5/minute")
        async def endpoint(q: int) -> int:
            return q

        import fastapi  # the app's framework, imported after the decoration
        import inspect
        assert "throttlekit_request" in str(inspect.signature(endpoint))
        print(_adapters._watcher in sys.meta_path)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=60, check=True)
    assert out.stdout.strip() == "False"


# -- the local denial cache (remote stores) ----------------------------------------------


def test_cached_refusal_reports_this_requests_counters() -> None:
    def limiter(cache: int) -> Limiter:
        lim = Limiter(DownableStore(), clock=FakeClock(), denial_cache_size=cache)
        lim.throttle("per-client", "1/minute")
        lim.throttle("per-path", "10/minute", key="path")
        return lim

    cached, exact = limiter(10_000), limiter(0)
    for lim in (cached, exact):
        assert lim.evaluate(_view(lim, "/a")).allowed
        assert not lim.evaluate(_view(lim, "/a")).allowed  # refused by per-client
    got = dict(cached.evaluate(_view(cached, "/b")).policies)
    want = dict(exact.evaluate(_view(exact, "/b")).policies)
    assert got["per-path"].remaining == want["per-path"].remaining == 10
    # the same request again is still answered from the cache, with the same counters
    calls = cached.storage.calls  # type: ignore[attr-defined]
    again = cached.evaluate(_view(cached, "/b"))
    assert not again.allowed and dict(again.policies)["per-path"].remaining == 10
    assert cached.storage.calls == calls  # type: ignore[attr-defined]



def test_exhausted_function_limit_stays_refused_while_the_store_is_down() -> None:
    from throttlekit import RateLimitExceeded

    limiter = Limiter(DownableStore(), clock=FakeClock(), on_storage_error="local")
    limiter.throttle("rule", "2/minute")

    @limiter.limit("2/minute", key=lambda user: user)
    def send(user: str) -> str:
        return "sent"

    def call() -> str:
        try:
            return send("ann")
        except RateLimitExceeded:
            return "refused"

    assert [call() for _ in range(3)] == ["sent", "sent", "refused"]
    assert [limiter.evaluate(_view(limiter)).allowed for _ in range(3)] == [True, True, False]
    limiter.storage.down = True  # type: ignore[attr-defined]
    assert not limiter.evaluate(_view(limiter)).allowed  # the rule: its cached refusal
    assert call() == "refused"



# -- hostile input ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["post", "Post"])
def test_lower_case_method_is_limited_as_flask_and_django_serve_it(method: str) -> None:
    """werkzeug (Flask) and Django upper-case the request method: ``post`` is served as a
    POST. throttlekit read it as sent, so a ``v.method == "POST"`` rule and a
    ``limit(methods=["POST"])`` never counted it: unlimited login attempts with a lower-case
    method (servers that pass it on: Django's runserver, h11, Twisted)."""
    from flask import Flask, request

    from throttlekit.contrib.flask import Throttle

    limiter = Limiter(clock=FakeClock())  # (exact counts: a clock of its own)
    limiter.throttle("login-rule", "2/minute", match=lambda v: v.method == "POST")
    app = Flask("adversarial")
    Throttle(app, limiter)
    served: list[str] = []

    @app.route("/login", methods=["GET", "POST"])
    @limiter.limit("1/minute", methods=["POST"])
    def login() -> str:
        served.append(request.method)
        return "logged in"

    def post(method: str) -> str:
        environ = {**_environ("/login"), "REQUEST_METHOD": method}
        return _status(WSGIMiddleware(app.wsgi_app, limiter), environ)

    assert [post("POST"), post(method), post(method)] == [
        "200 OK", "429 Too Many Requests", "429 Too Many Requests"]
    assert served == ["POST"]
    scope = {**_scope("/login"), "method": method}
    assert RequestView.from_scope(scope, limiter.resolver).method == "POST"



# -- nested entries of one limiter -----------------------------------------------------------


def test_wsgi_middleware_around_django_counts_a_request_once() -> None:
    from django.core.handlers.wsgi import WSGIHandler
    from django.http import HttpResponse
    from django.urls import path

    import django_config

    limiter = Limiter()
    limiter.throttle("per-ip", "4/minute")

    def index(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    with django_config.fresh_urlconf() as urls, django_config.throttlekit_settings(
            LIMITER=limiter):
        urls.urlpatterns = [path("", index)]  # type: ignore[attr-defined]
        app = WSGIMiddleware(WSGIHandler(), limiter)
        policies: list[str] = []

        def get() -> str:
            def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
                policies.extend(v for k, v in headers if k == "RateLimit-Policy")
                started.append(status)

            started: list[str] = []
            b"".join(app(_environ("/"), start_response))
            return started[0]

        assert [get() for _ in range(4)] == ["200 OK"] * 4
        assert policies[0] == '"per-ip";q=4;w=60'


def test_asgi_middleware_around_starlettes_counts_a_request_once() -> None:
    """An ASGIMiddleware around an app under ThrottleMiddleware of the same limiter: the
    rules run once, one header set."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from throttlekit import ASGIMiddleware
    from throttlekit.contrib.starlette import ThrottleMiddleware

    limiter = Limiter(clock=FakeClock())  # (exact counts: a clock of its own)
    limiter.throttle("per-ip", "4/minute")

    async def index(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    inner = Starlette(routes=[Route("/", index)])
    inner.add_middleware(ThrottleMiddleware, limiter=limiter)
    replies = _starlette_get(ASGIMiddleware(inner, limiter), *["/"] * 5)
    assert [r.status_code for r in replies] == [200] * 4 + [429]
    assert replies[0].headers.get_list("ratelimit-policy") == ['"per-ip";q=4;w=60']


# -- Starlette's middleware: routes without an endpoint function -----------------------------


def _starlette_get(app: Any, *urls: str) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return [await client.get(url) for url in urls]

    return asyncio.run(run())


def test_default_limit_of_a_mounted_asgi_app_is_named_by_its_route() -> None:
    """A mounted ASGI app (a GraphQL app, StaticFiles) has no name: its default-limit
    counter was named after its repr, ``<GraphQL object at 0x7f...>``, another counter in
    every worker process and after every restart (N workers: N times the limit on Redis),
    and the address was sent in ``RateLimit-Policy``."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from throttlekit.contrib.starlette import ThrottleMiddleware

    class GraphQL:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

    app = Starlette(routes=[Mount("/graphql", app=GraphQL())])
    app.add_middleware(ThrottleMiddleware, limiter=Limiter(), default_limits="2/minute")
    policy = _starlette_get(app, "/graphql/")[0].headers["ratelimit-policy"]
    assert "0x" not in policy and "/graphql" in policy


def test_starlette_middleware_counts_each_host_apart() -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Host, Route, Router

    from throttlekit.contrib.starlette import ThrottleMiddleware

    async def page(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Host("admin.example", app=Router([Route("/x", page)])),
                            Host("www.example", app=Router([Route("/x", page)]))])
    app.add_middleware(ThrottleMiddleware, limiter=Limiter(), default_limits="2/minute")
    rs = _starlette_get(app, "http://admin.example/x", "http://www.example/x",
                        "http://www.example/x")
    assert [r.status_code for r in rs] == [200, 200, 200]
