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
"""

from __future__ import annotations

import asyncio
import io
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
