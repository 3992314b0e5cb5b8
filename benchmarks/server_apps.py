"""The apps that ``bench_servers.py`` serves: one tiny Flask app, one tiny Starlette app,
each bare or limited by throttlekit or by its usual peer, chosen by environment variables so
that gunicorn and uvicorn can import them by name:

- ``TK_BENCH_MODE``: ``bare``, ``tk-memory``, ``tk-redis``, ``tk-synced`` (Redis behind
  :class:`throttlekit.storage.synced.SyncedStorage`), ``peer-memory``, ``peer-redis``
  (Flask-Limiter for Flask, SlowAPI for Starlette);
- ``TK_BENCH_REDIS``: the Redis URL; ``TK_BENCH_PREFIX``: the key prefix on it (each run its
  own, so the shared Redis is never flushed).

Run as a program, it calls one mode's Flask app in process (no server), for counting
instructions per request under callgrind (docs/benchmarks.md, *Real servers*)::

    PYTHONHASHSEED=0 PYTHONPATH=src valgrind --tool=callgrind \
        "$(python -c 'import sys; print(sys.executable)')" benchmarks/server_apps.py tk-synced 2000

(run it with 0 too: the difference / 2000 is one request; 300 warm-up requests either way).

Every limited app applies one far-away limit (``1000000000/hour`` per client IP) to every
request, so every request is allowed and charged: the cost measured is the check itself.
Far away in rate too (277,777/s, over any load generator here): a limit the traffic
outruns would be refusing it within minutes, and `SyncedStorage` leases no more than the
limit refills in ``sync_interval`` (``1000000/hour``, used until session 26: 27 units).
"""

from __future__ import annotations

import os
from typing import Any

RATE = "1000000000/hour"
MODE = os.environ.get("TK_BENCH_MODE", "bare")
REDIS = os.environ.get("TK_BENCH_REDIS", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("TK_BENCH_PREFIX", "tk-bench-servers:")


def _limiter(mode: str) -> Any:
    from throttlekit import Limiter, storage_from_url

    if mode == "tk-memory":
        lim = Limiter("memory://")
    elif mode == "tk-redis":
        lim = Limiter(storage_from_url(REDIS, prefix=PREFIX))
    else:
        from throttlekit.storage.synced import SyncedStorage

        lim = Limiter(SyncedStorage(storage_from_url(REDIS, prefix=PREFIX)))
    lim.throttle("all", RATE, key="ip")
    return lim


def _peer_storage(mode: str) -> str:
    if mode == "peer-memory":
        return "memory://"
    return REDIS


def make_flask(mode: str = MODE) -> Any:
    from flask import Flask

    app = Flask("bench_servers")

    @app.route("/")
    def index() -> str:
        return "ok"

    if mode.startswith("tk-"):
        from throttlekit.wsgi import WSGIMiddleware

        # A Limiter's rules (lim.throttle) run in its middleware. Throttle(app, limiter) did
        # not run them before it wrapped app.wsgi_app itself, so the "limited" Flask apps built
        # with it charged nothing; the middleware alone is what is measured here.
        app.wsgi_app = WSGIMiddleware(app.wsgi_app, _limiter(mode))  # type: ignore[method-assign]
    elif mode.startswith("peer-"):
        from flask_limiter import Limiter as FlaskLimiter
        from flask_limiter.util import get_remote_address

        FlaskLimiter(get_remote_address, app=app, default_limits=[RATE],
                     storage_uri=_peer_storage(mode), key_prefix=PREFIX)
    return app


def make_starlette(mode: str = MODE) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def index(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", index)])
    if mode.startswith("tk-"):
        from throttlekit.asgi import ASGIMiddleware

        return ASGIMiddleware(app, _limiter(mode))
    if mode.startswith("peer-"):
        from slowapi import Limiter as SlowLimiter
        from slowapi.middleware import SlowAPIMiddleware
        from slowapi.util import get_remote_address

        app.state.limiter = SlowLimiter(key_func=get_remote_address, default_limits=[RATE],
                                        storage_uri=_peer_storage(mode), key_prefix=PREFIX)
        app.add_middleware(SlowAPIMiddleware)
    return app


flask_app = make_flask() if os.environ.get("TK_BENCH_SERVER", "flask") == "flask" else None
starlette_app = (
    make_starlette() if os.environ.get("TK_BENCH_SERVER") == "starlette" else None
)


def _calls(mode: str, n: int) -> None:
    """Call ``mode``'s Flask app ``n`` times in process, after 300 warm-up requests."""
    import io
    import sys

    app = make_flask(mode)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "bench",
               "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "QUERY_STRING": "",
               "wsgi.url_scheme": "http", "REMOTE_ADDR": "127.0.0.1",
               "wsgi.errors": sys.stderr}

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        return None

    for _ in range(300 + n):
        body = app(dict(environ, **{"wsgi.input": io.BytesIO()}), start_response)
        b"".join(body)
        getattr(body, "close", lambda: None)()


if __name__ == "__main__":
    import sys
    import uuid

    PREFIX = f"tk-bench-servers:{uuid.uuid4().hex[:8]}:"  # this run's own keys
    _calls(sys.argv[1], int(sys.argv[2]))
