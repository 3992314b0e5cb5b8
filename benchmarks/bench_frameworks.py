"""Decorator overhead per request, per framework, beside the framework's usual limiter.

Run: ``python -m pytest benchmarks/bench_frameworks.py --benchmark-enable --benchmark-only
--benchmark-group-by=group --benchmark-columns=min,median,mean``

Same app, same limit (a far-away ``1000000/minute``, so every request is allowed and
charged), memory storage, one client:

- Flask: a view through ``app.wsgi_app`` (an environ built per request): bare /
  ``@limiter.limit`` with ``Throttle`` / Flask-Limiter's ``@limiter.limit``;
- FastAPI: an endpoint through the ASGI app (a scope built per request): bare /
  ``@limiter.limit`` with ``Throttle`` / SlowAPI's ``@limiter.limit`` (with its required
  ``request`` parameter);
- Django: a function view called directly with a ``RequestFactory`` request: bare /
  ``throttlekit.contrib.django.limit`` / django-ratelimit's ``@ratelimit`` (locmem cache).

Each round runs ``BATCH`` requests; divide by ``BATCH``. The issue's target: less added
latency than each peer on its own framework.

``test_middleware_ratios`` (issue 14) is the middleware's cost inside a framework, in one
run, as ratios: ``WSGIMiddleware`` (one throttle) inside a Flask app against around a raw
WSGI app, against Flask-Limiter's added latency, and ``ASGIMiddleware`` against a bare
Starlette request. The variants run in turn, ``ROUNDS`` times ``BATCH`` requests each, timed
in CPU time (``time.thread_time``: steadier than wall time on a shared machine); the ratios
are of the medians. The raw app is measured twice: in a tight loop (``raw-*``: its code and
data stay in the CPU's caches from one request to the next) and with a request to a bare
Flask app run, and not counted, before each of its requests (``raw-*-after-flask``: the
caches as the middleware finds them inside Flask, whose request evicts them). The same
instructions cost about 2.5x more after a Flask request than in the tight loop, whatever
code runs them; the target compares inside Flask with the raw app under the same caches
(docs/benchmarks.md, "Inside a framework"); the warm ratio is printed beside it. Every
run, CI's smoke pass included, asserts ``LOOSE`` (below twice today's ratios: a 2x
regression fails); with ``--benchmark-enable``, a ratio above its
target (``TARGETS``, the issue's) is reported as an expected failure that names it, so the
run flips to a pass when it is met. It prints what it measured::

    python -m pytest benchmarks/bench_frameworks.py -k ratios -s -p no:cacheprovider \
        --benchmark-enable

To count instructions instead (callgrind: the same count whatever else the machine does),
run one variant under valgrind, once with 1 batch and once with 11, and divide the
difference by 1,000 requests (use the interpreter itself, not a pyenv shim)::

    PYTHONPATH=src valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \
        python benchmarks/bench_frameworks.py flask-tk 11
"""

from __future__ import annotations

import asyncio
import io
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from starlette.requests import Request  # module level: FastAPI resolves annotations here

from throttlekit import Limiter

BATCH = 100
RATE = "1000000/minute"
PEER = "198.51.100.7"


# -- Flask -------------------------------------------------------------------------------


def _flask_app(kind: str) -> Callable[[], None]:
    from flask import Flask

    app = Flask(f"bench_{kind}")

    def view() -> str:
        return "ok"

    if kind == "throttlekit":
        from throttlekit.contrib.flask import Throttle

        lim = Limiter()
        Throttle(app, lim)
        view = lim.limit(RATE)(view)
    elif kind == "flask-limiter":
        from flask_limiter import Limiter as FlaskLimiter
        from flask_limiter.util import get_remote_address

        fl = FlaskLimiter(get_remote_address, app=app, storage_uri="memory://")
        view = fl.limit(RATE)(view)
    app.add_url_rule("/", "view", view)
    wsgi = app.wsgi_app
    base = {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": "", "SERVER_NAME": "t",
        "SERVER_PORT": "80", "REMOTE_ADDR": PEER, "wsgi.url_scheme": "http",
        "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.errors": io.StringIO(),
    }
    status: list[str] = []

    def start_response(s: str, h: Any, e: Any = None) -> Any:
        status.append(s)
        return None

    def run() -> None:
        for _ in range(BATCH):
            env = dict(base)
            env["wsgi.input"] = io.BytesIO()
            b"".join(wsgi(env, start_response))
        assert status[-1].startswith("200"), status[-1]

    return run


@pytest.mark.parametrize("kind", ["bare", "throttlekit", "flask-limiter"])
def test_flask(benchmark: Any, kind: str) -> None:
    """Flask: one decorated view."""
    benchmark.group = "flask"
    benchmark(_flask_app(kind))


# -- FastAPI -----------------------------------------------------------------------------


def _fastapi_app(kind: str, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    from fastapi import FastAPI

    app = FastAPI()
    if kind == "bare":
        @app.get("/")
        async def bare() -> dict[str, str]:
            return {"ok": "yes"}
    elif kind == "throttlekit":
        from throttlekit.contrib.fastapi import Throttle

        lim = Limiter()

        @app.get("/")
        @lim.limit(RATE)
        async def limited() -> dict[str, str]:
            return {"ok": "yes"}

        Throttle(app, lim, rules=False)
    else:
        from slowapi import Limiter as SlowLimiter
        from slowapi import _rate_limit_exceeded_handler
        from slowapi.errors import RateLimitExceeded
        from slowapi.util import get_remote_address

        sl = SlowLimiter(key_func=get_remote_address)
        app.state.limiter = sl
        app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]

        @app.get("/")
        @sl.limit(RATE)
        async def slow(request: Request) -> dict[str, str]:
            return {"ok": "yes"}

    scope_base = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/", "raw_path": b"/", "query_string": b"",
        "root_path": "", "headers": [(b"host", b"t")], "client": (PEER, 5000),
        "server": ("t", 80),
    }
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def batch() -> None:
        for _ in range(BATCH):
            await app(dict(scope_base), receive, send)  # type: ignore[arg-type]

    def run() -> None:
        loop.run_until_complete(batch())
        assert statuses[-1] == 200, statuses[-1]

    return run


@pytest.mark.parametrize("kind", ["bare", "throttlekit", "slowapi"])
def test_fastapi(benchmark: Any, kind: str) -> None:
    """FastAPI: one decorated async endpoint."""
    benchmark.group = "fastapi"
    loop = asyncio.new_event_loop()
    try:
        benchmark(_fastapi_app(kind, loop))
    finally:
        loop.close()


# -- Django ------------------------------------------------------------------------------


def _django_view(kind: str) -> Callable[[], None]:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(SECRET_KEY="bench", ALLOWED_HOSTS=["*"], USE_TZ=True)
        django.setup()
    from django.http import HttpResponse
    from django.test import RequestFactory

    def view(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    if kind == "throttlekit":
        lim = Limiter()
        view = lim.limit(RATE)(view)
    elif kind == "django-ratelimit":
        from django_ratelimit.decorators import ratelimit

        view = ratelimit(key="ip", rate="1000000/m", block=True)(view)
    factory = RequestFactory()

    def run() -> None:
        for _ in range(BATCH):
            response = view(factory.get("/", REMOTE_ADDR=PEER))
        assert response.status_code == 200

    return run


@pytest.mark.parametrize("kind", ["bare", "throttlekit", "django-ratelimit"])
def test_django(benchmark: Any, kind: str) -> None:
    """Django: one decorated function view."""
    benchmark.group = "django"
    benchmark(_django_view(kind))


# -- the middleware inside a framework (issue 14) -----------------------------------------

ROUNDS = 41
#: the issue's targets, as ratios of medians in one run
TARGETS = {
    # WSGIMiddleware's added latency inside a Flask app / around a raw WSGI app, each raw
    # request right after a Flask request (the caches as inside Flask: see the docstring)
    "flask / raw WSGI": 1.3,
    # WSGIMiddleware's added latency inside Flask / Flask-Limiter's
    "WSGI / Flask-Limiter": 0.1,
    # ASGIMiddleware's added latency around a Starlette app / the bare Starlette request
    "ASGI / bare Starlette": 0.5,
}
#: what any run asserts: bounds today's ratios pass with room for noise and the same ratios
#: doubled fail (a 2x regression fails CI). Measured on a Zen 4 EPYC, 2026-12-07: flask / raw
#: 1.4-1.6 (1.8 once), WSGI / Flask-Limiter 0.11-0.14, ASGI 0.55-0.6 on 3.11 and 0.66 on 3.13
#: (on an older EPYC in CI on 3.13: 1.49, 0.16 and 1.20, with other dependencies)
LOOSE = {"flask / raw WSGI": 2.4, "WSGI / Flask-Limiter": 0.2, "ASGI / bare Starlette": 1.1}


def _environ() -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/", "QUERY_STRING": "",
        "SERVER_NAME": "bench", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": PEER, "HTTP_HOST": "bench", "HTTP_USER_AGENT": "bench/1.0",
        "HTTP_ACCEPT": "*/*", "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""), "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
    }


def _raw_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _wsgi_runner(app: Any, batch: int = BATCH) -> Callable[[], None]:
    template = _environ()
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        statuses.append(status)
        return None

    def run() -> None:
        statuses.clear()
        for _ in range(batch):
            environ = template.copy()
            environ["wsgi.input"] = io.BytesIO(b"")
            result = app(environ, start_response)
            for _chunk in result:
                pass
            close = getattr(result, "close", None)
            if close is not None:
                close()
        assert statuses.count("200 OK") == batch, statuses[-1]

    return run


def _middleware_variant(name: str) -> Callable[[], None]:
    """One request batch of a variant: ``raw-bare``/``raw-tk`` (a trivial WSGI app),
    ``flask-bare``/``flask-tk``/``flask-limiter``, ``starlette-bare``/``starlette-tk``;
    ``-tk``: behind throttlekit's middleware with one throttle."""
    from throttlekit import WSGIMiddleware

    lim = Limiter()
    lim.throttle("per-ip", "1000000000/minute")
    if name.startswith("raw"):
        app = WSGIMiddleware(_raw_wsgi, lim) if name.startswith("raw-tk") else _raw_wsgi
        if name.endswith("-after-flask"):
            return _after_flask_runner(app)
        return _wsgi_runner(app)
    if name.startswith("flask"):
        return _wsgi_runner(_middleware_flask_app(name, lim))
    return _asgi_runner(name)


def _middleware_flask_app(name: str, lim: Limiter) -> Any:
    from flask import Flask

    from throttlekit import WSGIMiddleware

    app = Flask(f"bench_{name}")
    app.add_url_rule("/", "index", lambda: "ok")
    if name == "flask-tk":
        app.wsgi_app = WSGIMiddleware(app.wsgi_app, lim)  # type: ignore[method-assign]
    elif name == "flask-limiter":
        from flask_limiter import Limiter as FlaskLimiter
        from flask_limiter.util import get_remote_address

        FlaskLimiter(get_remote_address, app=app, storage_uri="memory://",
                     default_limits=["1000000 per second"])
    return app


def _after_flask_runner(app: Any) -> Callable[[], float]:
    """A batch of ``app``'s requests, each right after a request to a bare Flask app of
    its own: the caches as a request inside Flask finds them (Flask's code and data evict
    the middleware's between two requests). Returns the CPU seconds of ``app``'s requests
    alone (the Flask requests are not counted)."""
    flask_one = _wsgi_runner(_middleware_flask_app("flask-bare", Limiter()), 1)
    one = _wsgi_runner(app, 1)
    clock = time.thread_time

    def run() -> float:
        spent = 0.0
        for _ in range(BATCH):
            flask_one()
            start = clock()
            one()
            spent += clock() - start
        return spent

    run.timed = True  # type: ignore[attr-defined]  # it times itself
    return run


def _asgi_runner(name: str) -> Callable[[], None]:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from throttlekit import ASGIMiddleware

    async def index(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app: Any = Starlette(routes=[Route("/", index)])
    if name == "starlette-tk":
        lim = Limiter()
        lim.throttle("per-ip", "1000000000/minute")
        app = ASGIMiddleware(app, lim)
    template = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/", "raw_path": b"/", "query_string": b"",
        "root_path": "", "headers": [(b"host", b"bench"), (b"accept", b"*/*")],
        "client": (PEER, 40000), "server": ("bench", 80),
    }
    statuses: list[int] = []
    message = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    async def send(msg: dict[str, Any]) -> None:
        if msg["type"] == "http.response.start":
            statuses.append(msg["status"])

    async def many() -> None:
        for _ in range(BATCH):
            await app(dict(template), receive, send)

    loop = asyncio.new_event_loop()

    def run() -> None:
        statuses.clear()
        loop.run_until_complete(many())
        assert statuses.count(200) == BATCH

    run.loop = loop  # type: ignore[attr-defined]  # closed by the caller
    return run


VARIANTS = ["raw-bare", "raw-tk", "raw-bare-after-flask", "raw-tk-after-flask", "flask-bare",
            "flask-tk", "flask-limiter", "starlette-bare", "starlette-tk"]


def middleware_ratios(rounds: int = ROUNDS) -> tuple[dict[str, float], dict[str, float]]:
    """The median CPU µs per request of every variant (interleaved), and the ratios the
    targets name."""
    runs = {name: _middleware_variant(name) for name in VARIANTS}
    for run in runs.values():
        run()  # warm up: caches, first-call paths
    samples: dict[str, list[float]] = {name: [] for name in runs}
    clock = time.thread_time
    # The WSGI variants in rounds of their own, then the ASGI ones in theirs: a Flask request
    # run between two Starlette rounds slows the bare Starlette request (its caches), which
    # made the ASGI ratio read 0.40 where the Starlette variants alone read 0.65
    for group in ([n for n in runs if not n.startswith("starlette")],
                  [n for n in runs if n.startswith("starlette")]):
        for _ in range(rounds):
            for name in group:
                run = runs[name]
                if getattr(run, "timed", False):
                    spent = run()
                else:
                    start = clock()
                    run()
                    spent = clock() - start
                samples[name].append(spent / BATCH * 1e6)
    for run in runs.values():
        loop = getattr(run, "loop", None)
        if loop is not None:
            loop.close()
    m = {name: statistics.median(v) for name, v in samples.items()}
    raw = m["raw-tk-after-flask"] - m["raw-bare-after-flask"]
    flask = m["flask-tk"] - m["flask-bare"]
    ratios = {
        "flask / raw WSGI": flask / raw,
        # (shown, not a target: against a raw app in a tight loop, its caches warm)
        "flask / raw WSGI, warm": flask / (m["raw-tk"] - m["raw-bare"]),
        "WSGI / Flask-Limiter": flask / (m["flask-limiter"] - m["flask-bare"]),
        "ASGI / bare Starlette": (m["starlette-tk"] - m["starlette-bare"])
        / m["starlette-bare"],
    }
    return m, ratios


def test_middleware_ratios(request: pytest.FixtureRequest) -> None:
    """The middleware's added latency inside Flask against around a raw WSGI app and
    against Flask-Limiter's, and inside Starlette against a bare request."""
    pytest.importorskip("flask_limiter")
    config = request.config
    # pyproject's addopts always passes --benchmark-disable; --benchmark-enable wins
    enabled = bool(config.getoption("benchmark_enable")
                   or not config.getoption("benchmark_disable"))
    medians, ratios = middleware_ratios(ROUNDS if enabled else 9)
    for name, value in medians.items():
        print(f"{name:15s} {value:7.2f} µs")
    for name, value in ratios.items():
        print(f"{name:22s} {value:5.2f}"
              + (f"  (target ≤ {TARGETS[name]})" if name in TARGETS else "  (shown)"))
    slow = {k: round(v, 2) for k, v in ratios.items() if k in LOOSE and v > LOOSE[k]}
    assert not slow, f"about 2x worse than today: {slow}"
    if enabled:
        missed = {k: round(v, 2) for k, v in ratios.items()
                  if k in TARGETS and v > TARGETS[k]}
        if missed:
            pytest.xfail(f"targets not met: {missed}")


def gc_report(batches: int = 100) -> dict[str, tuple[float, float]]:
    """Per variant: the cyclic collector's collections per 1,000 requests and its CPU µs
    per request (what a reference cycle per request costs)."""
    import gc

    spent = [0.0, 0.0]
    count = [0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            spent[1] = time.thread_time()
        else:
            spent[0] += time.thread_time() - spent[1]
            count[0] += 1

    gc.callbacks.append(on_gc)
    out = {}
    try:
        for name in VARIANTS:
            run = _middleware_variant(name)
            run()
            gc.collect()
            spent[0], count[0] = 0.0, 0
            for _ in range(batches):
                run()
            n = batches * BATCH
            out[name] = (count[0] * 1000 / n, spent[0] / n * 1e6)
    finally:
        gc.callbacks.remove(on_gc)
    return out


if __name__ == "__main__":
    if sys.argv[1] == "gc":  # python benchmarks/bench_frameworks.py gc
        for name, (colls, us) in gc_report().items():
            print(f"{name:15s} {colls:6.1f} collections / 1000 requests, {us:5.2f} µs/request")
    else:  # one variant, for callgrind (see the module docstring)
        batch = _middleware_variant(sys.argv[1])
        batch()
        for _ in range(int(sys.argv[2])):
            batch()
