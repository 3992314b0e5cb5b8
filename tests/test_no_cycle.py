"""No reference cycle through throttlekit's objects once a request is over (issue 14).

The environ or scope holds the verdict, the verdict its request view, the view the environ:
unless the entry breaks that cycle when the response is over (``RequestView.detach``), every
request's environ or scope, and everything hanging from it, waits for the cyclic garbage
collector instead of being freed by reference counting. Each test runs requests with the
collector off, drops every reference the test holds, then lets ``gc.collect`` find what only
a cycle kept alive: none of throttlekit's objects, and no environ/scope, may be among them.
(The frameworks' own cycles, which bare Flask has too, are not counted.)
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Callable
from typing import Any

import pytest

from throttlekit import ASGIMiddleware, Limiter, WSGIMiddleware
from throttlekit.testing import FakeClock
from wsgi_client import wsgi_call

PEER = "198.51.100.7"


def _environ(path: str = "/") -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
        "SERVER_NAME": "t", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": PEER, "HTTP_HOST": "t", "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""), "wsgi.errors": io.StringIO(),
    }


def _call_wsgi(app: Any, environ: dict[str, Any]) -> tuple[str, bytes]:
    status, _, body = wsgi_call(app, environ)
    return status, body


def _raw_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    verdict = environ["throttlekit.verdict"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{verdict.kind} {verdict.request.path}".encode()]


@pytest.mark.parametrize("rules", ["plain", "count_when"])
def test_wsgi_middleware_leaves_no_cycle(garbage: Callable[[], list[str]], rules: str) -> None:
    """Allowed and refused requests through WSGIMiddleware, with and without an exchange
    to settle: nothing of theirs is left to the cyclic collector."""
    lim = Limiter(clock=FakeClock())  # (exact counts: a clock of its own)
    if rules == "plain":
        lim.throttle("per-ip", "3/minute")
    else:
        lim.throttle("errors", "3/minute", count_when=lambda response: response.status_code < 500)
    app = WSGIMiddleware(_raw_app, lim)
    statuses = [_call_wsgi(app, _environ())[0] for _ in range(5)]
    assert statuses[:3] == ["200 OK"] * 3 and statuses[-1].startswith("429")
    assert garbage() == []


def test_detached_view_reads_the_same(garbage: Callable[[], list[str]]) -> None:
    """During and after the response, the verdict in the environ leads to a view whose
    every attribute reads what the environ holds (the view keeps a copy of the environ,
    without the verdict, from before the app runs)."""
    lim = Limiter()
    lim.throttle("per-ip", "10/minute")
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        view = environ["throttlekit.verdict"].request
        # detached before the app runs: a copy of the environ, without the verdict
        assert view.raw is not environ and "throttlekit.verdict" not in view.raw
        assert view.raw == {k: v for k, v in environ.items() if k != "throttlekit.verdict"}
        seen["path"] = view.path
        start_response("200 OK", [])
        return [b"ok"]

    environ = _environ("/café".encode().decode("latin-1"))
    environ["HTTP_X_TOKEN"] = "abc"
    environ["QUERY_STRING"] = "a=1"
    assert _call_wsgi(WSGIMiddleware(app, lim), environ)[0] == "200 OK"
    verdict = environ["throttlekit.verdict"]
    view = verdict.request
    assert verdict.allowed and verdict.decision is not None
    assert view.raw is not environ and "throttlekit.verdict" not in view.raw
    assert view.raw["HTTP_X_TOKEN"] == "abc"
    assert (view.method, view.path, view.query, view.scheme) == ("GET", seen["path"], "a=1",
                                                                "http")
    assert view.headers["x-token"] == "abc" and view.client_ip == PEER
    assert view.client_key == PEER and dict(view.form) == {}
    del environ, verdict, view
    assert garbage() == []


@pytest.mark.parametrize("length", ["10", None])
def test_a_form_read_during_the_request_leaves_the_body_to_the_app(
        garbage: Callable[[], list[str]], length: str | None) -> None:
    """A POST's body no rule read: the view stays on the environ until the response ends,
    so its ``form``, read by the app, puts the replay where the app reads the body; then it
    is detached (no cycle)."""
    lim = Limiter()
    lim.throttle("per-ip", "10/minute")
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        view = environ["throttlekit.verdict"].request
        seen["form"] = dict(view.form)
        seen["body"] = environ["wsgi.input"].read()
        start_response("200 OK", [])
        return [b"ok"]

    environ = _environ("/login")
    environ.update({"REQUEST_METHOD": "POST", "wsgi.input": io.BytesIO(b"user=alice"),
                    "CONTENT_TYPE": "application/x-www-form-urlencoded"})
    if length is None:  # chunked: no length, a terminated stream
        environ.update({"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True})
    else:
        environ["CONTENT_LENGTH"] = length
    assert _call_wsgi(WSGIMiddleware(app, lim), environ)[0] == "200 OK"
    assert seen == {"form": {"user": "alice"}, "body": b"user=alice"}
    view = environ["throttlekit.verdict"].request
    assert view.raw is not environ and dict(view.form) == seen["form"]
    del environ, view
    assert garbage() == []


def _scope(path: str = "/") -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"host", b"t"), (b"x-token", b"abc")],
        "client": (PEER, 5000), "server": ("t", 80),
    }


def _call_asgi(app: Any, scope: dict[str, Any]) -> int:
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(app(scope, receive, send))
    finally:
        loop.close()
    return statuses[-1]


async def _raw_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    verdict = scope["throttlekit.verdict"]
    assert scope["state"]["throttlekit.verdict"] is verdict
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": verdict.request.path.encode()})


@pytest.mark.parametrize("rules", ["plain", "count_when"])
def test_asgi_middleware_leaves_no_cycle(garbage: Callable[[], list[str]], rules: str) -> None:
    """Allowed and refused requests through ASGIMiddleware (the verdict in the scope and
    in its ``state``): nothing of theirs is left to the cyclic collector; the verdict kept
    in the scope still reads its view's attributes."""
    lim = Limiter(clock=FakeClock())  # (exact counts: a clock of its own)
    if rules == "plain":
        lim.throttle("per-ip", "3/minute")
    else:
        lim.throttle("errors", "3/minute", count_when=lambda response: response.status_code < 500)
    app = ASGIMiddleware(_raw_asgi, lim)
    scopes = [_scope() for _ in range(5)]
    statuses = [_call_asgi(app, scope) for scope in scopes]
    assert statuses[:3] == [200] * 3 and statuses[-1] == 429
    view = scopes[0]["throttlekit.verdict"].request
    assert view.raw is not scopes[0] and view.headers["x-token"] == "abc"
    assert "throttlekit.verdict" not in view.raw["state"]
    assert scopes[0]["state"]["throttlekit.verdict"].request is view
    del scopes, view
    assert garbage() == []


def test_flask_integration_leaves_no_cycle(garbage: Callable[[], list[str]]) -> None:
    """Flask: the Throttle extension (a decorated view, default limits) behind
    WSGIMiddleware: no throttlekit object left to the cyclic collector."""
    flask = pytest.importorskip("flask")
    from throttlekit.contrib.flask import Throttle, decision

    app = flask.Flask("nocycle")
    lim = Limiter(clock=FakeClock())  # (exact counts: a clock of its own)
    lim.throttle("per-ip", "100/minute")
    tk = Throttle(app, lim, default_limits="50/minute")

    @app.route("/limited")
    @tk.limit("3/minute")
    def limited() -> str:
        found = decision()
        return f"{found.remaining if found else None}"

    @app.route("/plain")
    def plain() -> str:
        return "ok"

    app.wsgi_app = WSGIMiddleware(app.wsgi_app, lim)  # type: ignore[method-assign]
    got = [_call_wsgi(app, _environ("/limited")) for _ in range(3)]
    assert got == [("200 OK", b"2"), ("200 OK", b"1"), ("200 OK", b"0")]
    assert _call_wsgi(app, _environ("/plain")) == ("200 OK", b"ok")
    assert garbage() == []
    # A refusal from the extension is an exception Flask handles: its traceback's frames
    # form a cycle of Flask's own (bare Flask's abort(429) too), which holds the environ;
    # the refusal is checked where it is throttlekit's alone: the middleware's.
    assert _call_wsgi(app, _environ("/limited"))[0] == "429 Too Many Requests"


def test_starlette_integration_leaves_no_cycle(garbage: Callable[[], list[str]]) -> None:
    """Starlette/FastAPI: the Throttle middleware with rules and a decorated endpoint:
    no throttlekit object left to the cyclic collector."""
    fastapi = pytest.importorskip("fastapi")
    from throttlekit.contrib.fastapi import Throttle

    app = fastapi.FastAPI()
    lim = Limiter(clock=FakeClock())  # (exact counts: a clock of its own)
    lim.throttle("per-ip", "100/minute")

    @app.get("/limited")
    @lim.limit("3/minute")
    async def limited() -> dict[str, str]:
        return {"ok": "yes"}

    Throttle(app, lim)
    statuses = [_call_asgi(app, _scope("/limited")) for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert garbage() == []


#: Python 3.10 only, and not throttlekit's: Django's ``request_finished`` handler
#: ``close_caches`` (run by ``HttpResponse.close``) reads each cache alias with
#: ``getattr(caches._connections, alias, None)``; ``_connections`` is an ``asgiref.local.Local``
#: whose ``__getattr__`` runs ``getattr(storage, key)`` inside the ``@contextmanager``
#: ``_lock_storage``, so an alias not yet used in this thread (context) raises
#: ``AttributeError`` through ``contextlib._GeneratorContextManager.__exit__``. On 3.10 that
#: ``__exit__`` frame keeps the exception (``value``, ``exc``) while the exception's
#: traceback holds the frame: a cycle, and through the frame's ``f_back`` chain it keeps the
#: whole calling stack alive, up to the WSGI server's frame and its ``environ`` (and the
#: throttlekit objects the environ holds). CPython 3.11 breaks it (``__exit__`` sets
#: ``exc.__traceback__ = traceback``): 3.11+ have no cycle. With every cache alias used
#: once in the thread, nothing raises and 3.10 has no cycle either (found with
#: ``gc.DEBUG_SAVEALL``: the only cycle is {AttributeError, traceback, ``__exit__`` frame}).
DJANGO_310_CYCLE = (
    "CPython 3.10's contextlib: an AttributeError raised in asgiref Local._lock_storage "
    "(Django's close_caches, an alias unused in the thread) keeps __exit__'s frame, hence "
    "the WSGI caller's stack and environ, in a cycle (3.11 resets the traceback)")


def _django_requests(garbage: Callable[[], list[str]], warm_caches: bool) -> None:
    """Four requests through ThrottleMiddleware and a decorated view (the fourth refused),
    as a WSGI server calls the handler (the test Client's responses are cyclic); with
    ``warm_caches``, every cache alias is used once in this thread first."""
    from django.core.cache import caches
    from django.core.handlers.wsgi import WSGIHandler
    from django.http import HttpResponse
    from django.urls import path

    import django_config
    from throttlekit.contrib import django as tk

    # (a sliding log: no minute boundary between the requests gives a fresh quota)
    @tk.limit("3/minute", strategy="sliding_log")
    def item(request: Any) -> HttpResponse:
        return HttpResponse(str(request.throttle.remaining))

    with django_config.fresh_urlconf() as urls, django_config.throttlekit_settings():
        urls.urlpatterns = [path("item", item)]  # type: ignore[attr-defined]
        handler = WSGIHandler()
        if warm_caches:
            for alias in caches.settings:
                caches[alias]
        got = [_call_wsgi(handler, _environ("/item")) for _ in range(3)]
        assert [b for _, b in got] == [b"2", b"1", b"0"]
        assert garbage() == []
        assert _call_wsgi(handler, _environ("/item"))[0].startswith("429")
        assert garbage() == []


def _in_new_thread(run: Callable[[], None]) -> None:
    """``run()`` in a thread of its own (a fresh context: no cache alias used yet)."""
    import threading

    failed: list[BaseException] = []

    def target() -> None:
        try:
            run()
        except BaseException as exc:  # handed back to the test
            failed.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


@pytest.mark.xfail(sys.version_info < (3, 11), strict=False, reason=(
    "on 3.10, after other Django tests ran in the process: the same contextlib cycle through "
    "another asgiref Local that misses an attribute (translation, urlconf: any of them), "
    "not only the caches warmed here (see DJANGO_310_CYCLE)"))
def test_django_integration_leaves_no_cycle(garbage: Callable[[], list[str]]) -> None:
    """Django: ThrottleMiddleware with rules and a decorated view (``request.throttle``):
    no throttlekit object left to the cyclic collector, on every Python (the cache aliases
    used once first, so that 3.10's contextlib cycle in Django, below, does not occur)."""
    pytest.importorskip("django")
    _in_new_thread(lambda: _django_requests(garbage, warm_caches=True))


@pytest.mark.xfail(sys.version_info < (3, 11), strict=True, reason=DJANGO_310_CYCLE)
def test_django_request_with_cold_caches_leaves_no_cycle(
    garbage: Callable[[], list[str]],
) -> None:
    """The same in a fresh thread whose cache aliases were never used: Django's
    ``close_caches`` then meets 3.10's contextlib cycle (``DJANGO_310_CYCLE``)."""
    pytest.importorskip("django")
    _in_new_thread(lambda: _django_requests(garbage, warm_caches=False))
