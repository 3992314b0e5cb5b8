"""Requests without a client IP (a Unix socket, no trusted proxy; shared/DECISIONS.md):
throttles share one ``unknown`` budget; fail2ban, allow2ban and the shield refuse the
request that trips them and ban no key; the first one logs a warning naming the fix."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from werkzeug.test import Client

from throttlekit import ASGIMiddleware, Limiter, WSGIMiddleware
from throttlekit.monitor import Monitor, Shield
from throttlekit.testing import FakeClock

T0 = 1_699_920_000.0 + 600
NO_IP = {"REMOTE_ADDR": ""}  # what a server on a Unix socket hands over


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _limiter(clock: FakeClock) -> Limiter:
    clock.set(T0)
    limiter = Limiter("memory://", clock=clock)
    limiter.fail2ban("scanners", match=lambda r: r.path.startswith("/wp-admin"),
                     maxretry=2, findtime=600, bantime=3600)
    limiter.allow2ban("logins", match=lambda r: r.path == "/login", maxretry=2,
                      findtime=600, bantime=3600)
    limiter.throttle("per-client", "5/hour", strategy="fixed_window")
    return limiter


def _get(client: Client, path: str, env: dict[str, str] = NO_IP) -> int:
    return client.get(path, environ_overrides=env).status_code


def test_fail2ban_refuses_without_banning_everyone_behind_the_socket(clock: FakeClock) -> None:
    """A scanner without a client IP is refused on every probe, but no ban is made: the
    next request without a client IP (maybe someone else) still gets through."""
    limiter = _limiter(clock)
    client = Client(WSGIMiddleware(app, limiter))
    assert [_get(client, "/wp-admin/x") for _ in range(3)] == [403, 403, 403]
    assert _get(client, "/") == 200
    assert limiter.blocked() == []


def test_allow2ban_refuses_the_tripping_request_and_bans_no_key(clock: FakeClock) -> None:
    """allow2ban without a client IP: the request that reaches maxretry (and those after it,
    within findtime) are refused; nobody is banned. With an IP, the same request passes
    and its address is banned."""
    limiter = _limiter(clock)
    client = Client(WSGIMiddleware(app, limiter))
    assert [_get(client, "/login") for _ in range(3)] == [200, 403, 403]
    assert _get(client, "/") == 200
    assert limiter.blocked() == []
    ip = {"REMOTE_ADDR": "192.0.2.7"}
    assert [_get(client, "/login", ip) for _ in range(2)] == [200, 200]
    assert _get(client, "/", ip) == 403
    assert [b.key for b in limiter.blocked()] == ["allow2ban:logins:192.0.2.7"]


def test_throttles_share_one_unknown_budget(clock: FakeClock) -> None:
    """A throttle keyed by client counts every request without a client IP together."""
    limiter = _limiter(clock)
    client = Client(WSGIMiddleware(app, limiter))
    assert [_get(client, "/") for _ in range(6)] == [200] * 5 + [429]
    assert _get(client, "/", {"REMOTE_ADDR": "192.0.2.8"}) == 200


def test_first_request_without_client_ip_warns_once_naming_the_fix(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """One warning, naming trusted_proxies, however many such requests come."""
    limiter = _limiter(clock)
    client = Client(WSGIMiddleware(app, limiter))
    with caplog.at_level(logging.WARNING, logger="throttlekit"):
        for path in ("/", "/wp-admin/", "/login", "/"):
            _get(client, path)
    warnings = [r for r in caplog.records if "without a client IP" in r.getMessage()]
    assert len(warnings) == 1
    assert "trusted_proxies" in warnings[0].getMessage()


def test_asgi_scope_without_client(clock: FakeClock) -> None:
    """The same through the ASGI middleware, for a scope with no ``client``."""
    limiter = _limiter(clock)

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    asgi = ASGIMiddleware(inner, limiter)

    async def get(path: str) -> int:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "headers": [], "client": None,
                 "server": ("/run/app.sock", None)}
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await asgi(scope, receive, send)
        return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))

    async def scenario() -> list[int]:
        return [await get(p) for p in ("/wp-admin/", "/wp-admin/", "/wp-admin/", "/login",
                                       "/login", "/")]

    assert asyncio.run(scenario()) == [403, 403, 403, 200, 403, 200]
    assert limiter.blocked() == []


def test_shield_bans_no_key_for_requests_without_client_ip() -> None:
    """A flood without a client IP engages the shield, which bans no key for it (the
    flood stays under the throttles' shared budget); a flooding address is banned."""
    clock = FakeClock(T0)
    limiter = Limiter(clock=clock)
    limiter.throttle("per-client", "1000/second")
    monitor = Monitor(limiter)
    shield = Shield(limiter, monitor)
    client = Client(WSGIMiddleware(app, limiter))
    visitors = [f"10.0.0.{i}" for i in range(1, 41)]
    for second in range(46):
        start = clock.now
        slots = [{"REMOTE_ADDR": ip} for ip in visitors]
        if second >= 40:
            slots += [NO_IP] * 400 + [{"REMOTE_ADDR": "198.51.100.1"}] * 40
        step = 1.0 / len(slots)
        for i, env in enumerate(slots):
            clock.set(start + i * step)
            client.get("/", environ_overrides=env)
        clock.set(start + 1.0)
    assert shield.engagements >= 1
    assert "unknown" not in shield.banned
    assert [b.key for b in limiter.blocked()] == ["198.51.100.1"]
    assert _get(client, "/") == 200
