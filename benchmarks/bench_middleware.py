"""Per-request overhead of the middleware over the bare app, beside Flask-Limiter and SlowAPI.

Run: ``python -m pytest benchmarks/bench_middleware.py --benchmark-enable --benchmark-only
--benchmark-group-by=group --benchmark-columns=min,median,mean``

Apps are called in-process (an environ or scope built and the app called directly, no HTTP),
so the numbers are the middleware's own cost. Each benchmark round runs ``BATCH`` allowed
requests (one hot client, limits far above the traffic); divide by ``BATCH`` for a request.

- WSGI: one Flask app, bare / throttlekit (one throttle) / throttlekit-no-headers (the same,
  ``headers_on_allowed=False``) / throttlekit-full (safelist + 10,000-CIDR blocklist + 3
  throttles) / throttlekit-full-10 (the same with a 10-CIDR blocklist) / Flask-Limiter (one
  default limit) / flask-limiter-headers (the same, ``headers_enabled=True``), all on memory
  storage.
- ASGI: one Starlette app, bare / throttlekit / throttlekit-full / throttlekit-full-10 /
  SlowAPI's pure-ASGI ``SlowAPIASGIMiddleware`` (one default limit).

The issue's targets: throttlekit's added latency at most 1/10 of Flask-Limiter's (WSGI) and
1/5 of SlowAPI's (ASGI), and at most half a bare Starlette request, asserted by
``test_wsgi_targets`` and the ``test_asgi_target_*`` tests (CPU time, interleaved, one
throttle against one default limit; the ``target`` fixture of conftest.py); the 10,000-CIDR
set costing no more than a 10-CIDR one, read off the table (full against full-10; the lookup
alone is in ``bench_ipset.py``).
"""

from __future__ import annotations

import asyncio
import io
import random
from collections.abc import Callable
from typing import Any

import pytest

from throttlekit import ASGIMiddleware, Limiter, WSGIMiddleware

BATCH = 100
RATE = "1000000/second"
PEER = "198.51.100.7"


def _cidrs(n: int) -> list[str]:
    """``n`` distinct IPv4 networks of mixed lengths, none containing ``PEER``."""
    rng = random.Random(7)
    out: set[str] = set()
    while len(out) < n:
        prefix = rng.randint(12, 32)
        value = rng.getrandbits(32) >> (32 - prefix) << (32 - prefix)
        a, b, c, d = value.to_bytes(4, "big")
        if a in (198, 127, 10):
            continue
        out.add(f"{a}.{b}.{c}.{d}/{prefix}")
    return sorted(out)


def _rules(limiter: Limiter, full: bool, cidrs: int = 10_000) -> Limiter:
    if not full:
        limiter.throttle("per-ip", RATE)
        return limiter
    limiter.safelist("health", lambda r: r.path == "/healthz")
    limiter.blocklist("bad-nets", ips=_cidrs(cidrs))
    limiter.throttle("per-ip", RATE)
    limiter.throttle("per-ip-burst", "1000000/minute", strategy="token_bucket")
    limiter.throttle("writes", RATE, match=lambda r: r.method != "GET")
    return limiter


# -- WSGI ------------------------------------------------------------------------------------


def _flask_app() -> Any:
    flask = pytest.importorskip("flask")
    app = flask.Flask("bench")

    @app.route("/")
    def index() -> str:
        return "ok"

    return app


def _environ() -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/", "QUERY_STRING": "",
        "SERVER_NAME": "bench", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": PEER, "HTTP_HOST": "bench", "HTTP_USER_AGENT": "bench/1.0",
        "HTTP_ACCEPT": "*/*", "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""), "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
    }


def _wsgi_batch(app: Callable[..., Any]) -> Callable[[], int]:
    template = _environ()
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        statuses.append(status)
        return None

    def batch() -> int:
        statuses.clear()
        for _ in range(BATCH):
            environ = template.copy()
            environ["wsgi.input"] = io.BytesIO(b"")
            result = app(environ, start_response)
            for _chunk in result:
                pass
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return sum(s.startswith("200") for s in statuses)

    return batch


def _wsgi_variant(name: str) -> Callable[..., Any]:
    app = _flask_app()
    if name == "bare":
        return app  # type: ignore[no-any-return]
    if name.startswith("flask-limiter"):
        fl = pytest.importorskip("flask_limiter")
        from flask_limiter.util import get_remote_address

        fl.Limiter(get_remote_address, app=app, default_limits=["1000000 per second"],
                   storage_uri="memory://", headers_enabled=name.endswith("-headers"))
        return app  # type: ignore[no-any-return]
    if name == "throttlekit-no-headers":
        app.wsgi_app = WSGIMiddleware(app.wsgi_app, _variant_limiter("throttlekit"),
                                      headers_on_allowed=False)
        return app  # type: ignore[no-any-return]
    return _wrap_flask(app, _variant_limiter(name))


def _variant_limiter(name: str) -> Limiter:
    """The limiter of a throttlekit variant: ``throttlekit``, ``-full`` or ``-full-10``."""
    if name == "throttlekit":
        return _rules(Limiter(), full=False)
    return _rules(Limiter(), full=True, cidrs=10 if name == "throttlekit-full-10" else 10_000)


def _wrap_flask(app: Any, limiter: Limiter) -> Any:
    app.wsgi_app = WSGIMiddleware(app.wsgi_app, limiter)
    return app


WSGI = ["bare", "throttlekit", "throttlekit-no-headers", "throttlekit-full", "throttlekit-full-10",
        "flask-limiter", "flask-limiter-headers"]


@pytest.mark.parametrize("variant", WSGI)
def test_wsgi_flask(benchmark: Any, variant: str) -> None:
    """BATCH allowed requests through a Flask app, bare or behind a limiter."""
    batch = _wsgi_batch(_wsgi_variant(variant))
    benchmark.group = f"WSGI Flask, {BATCH} requests"
    assert benchmark(batch) == BATCH


# -- ASGI ------------------------------------------------------------------------------------


def _starlette_app(slowapi: bool = False) -> Any:
    pytest.importorskip("starlette")
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def index(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", index)])


def _asgi_variant(name: str) -> Any:
    app = _starlette_app()
    if name == "bare":
        return app
    if name == "slowapi":
        pytest.importorskip("slowapi")
        from slowapi import Limiter as SlowLimiter
        from slowapi.middleware import SlowAPIASGIMiddleware
        from slowapi.util import get_remote_address

        app.state.limiter = SlowLimiter(key_func=get_remote_address,
                                        default_limits=["1000000 per second"])
        app.add_middleware(SlowAPIASGIMiddleware)
        return app
    return ASGIMiddleware(app, _variant_limiter(name))


def _asgi_batch(app: Any) -> Callable[[], int]:
    scope_template = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/", "raw_path": b"/", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"bench"), (b"user-agent", b"bench/1.0"), (b"accept", b"*/*")],
        "client": (PEER, 40000), "server": ("bench", 80),
    }
    statuses: list[int] = []
    request = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return request

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def many() -> None:
        for _ in range(BATCH):
            await app(dict(scope_template), receive, send)

    loop = asyncio.new_event_loop()

    def batch() -> int:
        statuses.clear()
        loop.run_until_complete(many())
        return statuses.count(200)

    batch.loop = loop  # type: ignore[attr-defined]
    return batch


ASGI = ["bare", "throttlekit", "throttlekit-full", "throttlekit-full-10", "slowapi"]


@pytest.mark.parametrize("variant", ASGI)
def test_asgi_starlette(benchmark: Any, variant: str) -> None:
    """BATCH allowed requests through a Starlette app, bare or behind a limiter."""
    batch = _asgi_batch(_asgi_variant(variant))
    benchmark.group = f"ASGI Starlette, {BATCH} requests"
    try:
        assert benchmark(batch) == BATCH
    finally:
        batch.loop.close()  # type: ignore[attr-defined]


# -- targets ---------------------------------------------------------------------------------


def test_wsgi_targets(target: Any) -> None:
    """throttlekit's added latency in Flask is at most 1/10 of Flask-Limiter's (same run).

    A ratio of two differences (each variant's CPU time less the bare app's): the bare
    app's best time sets both, so it takes nine interleaved rounds for the best of each to
    be a quiet one on a shared host (with five, CI on 3.10 measured 0.235 once, against
    0.11-0.15 here; the median of per-round ratios was no steadier: 0.116-0.140 against
    0.122-0.137 for the best of nine, six runs each at load 13 on 3.11).

    Each library as it comes (throttlekit adds the rate-limit fields to allowed responses,
    Flask-Limiter's ``headers_enabled`` is off); the ratios with the same fields on both
    sides are printed beside it.
    """
    names = ["bare", "throttlekit", "flask-limiter", "throttlekit-no-headers",
             "flask-limiter-headers"]
    batches = {name: _wsgi_batch(_wsgi_variant(name)) for name in names}
    per_batch = target.cpu_per_call(batches, *target.size((100, 9), (20, 9)))
    added = {name: (per_batch[name] - per_batch["bare"]) / BATCH * 1e6 for name in names}
    print(f"\nWSGI Flask: bare {per_batch['bare'] / BATCH * 1e6:.1f} µs, added: throttlekit "
          f"{added['throttlekit']:.1f} µs, Flask-Limiter {added['flask-limiter']:.1f} µs")
    # each library's default (the target's measure): throttlekit adds the rate-limit fields
    # to allowed responses, Flask-Limiter does not; the same with the same fields, shown
    print(f"like for like: without rate-limit headers "
          f"{added['throttlekit-no-headers'] / added['flask-limiter']:.3f} "
          f"({added['throttlekit-no-headers']:.1f} / {added['flask-limiter']:.1f} µs), with "
          f"{added['throttlekit'] / added['flask-limiter-headers']:.3f} "
          f"({added['throttlekit']:.1f} / {added['flask-limiter-headers']:.1f} µs)")
    # missed today (0.11-0.15 on 3.11 and 3.13): its smoke bound is 0.2, which doubled fails
    target.at_most("WSGI added latency, throttlekit / Flask-Limiter",
                   added["throttlekit"] / added["flask-limiter"], 0.1, loose=0.2)


def _asgi_added(target: Any, names: list[str]) -> tuple[float, dict[str, float]]:
    """A bare Starlette request and each variant's added latency, in µs (CPU time)."""
    batches = {name: _asgi_batch(_asgi_variant(name)) for name in names}
    try:
        per_batch = target.cpu_per_call(batches, *target.size((300, 7), (60, 5)))
    finally:
        for batch in batches.values():
            batch.loop.close()  # type: ignore[attr-defined]
    bare = per_batch["bare"] / BATCH * 1e6
    added = {name: per_batch[name] / BATCH * 1e6 - bare for name in names}
    print(f"\nASGI Starlette: bare {bare:.1f} µs, added: "
          + ", ".join(f"{name} {added[name]:.1f} µs" for name in names[1:]))
    return bare, added


def test_asgi_target_against_slowapi(target: Any) -> None:
    """throttlekit's added latency in Starlette is at most 1/5 of SlowAPI's (same run)."""
    _, added = _asgi_added(target, ["bare", "throttlekit", "slowapi"])
    target.at_most("ASGI added latency, throttlekit / SlowAPI",
                   added["throttlekit"] / added["slowapi"], 0.2)


def test_asgi_target_against_bare_starlette(target: Any) -> None:
    """throttlekit's added latency in Starlette is at most half a bare request (same run)."""
    bare, added = _asgi_added(target, ["bare", "throttlekit"])
    # missed today (0.55-0.6 on 3.11 and 0.62-0.82 on 3.13 on a Zen 4 EPYC, 2026-12-07; it
    # read 0.96-1.18 on 3.13 on another machine with the dependencies of 2026-12-06): its smoke
    # bound is 1.1, which the figure doubled fails
    target.at_most("ASGI added latency / a bare Starlette request",
                   added["throttlekit"] / bare, 0.5, loose=1.1)
