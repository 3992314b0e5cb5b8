"""The opt-in JSON status endpoint: WSGI and ASGI, address safelist and bearer token."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from werkzeug.test import Client

from throttlekit import ConfigError, Limiter, WSGIMiddleware
from throttlekit.monitor import Monitor, Shield
from throttlekit.monitor.status import ASGIStatusMiddleware, StatusEndpoint, StatusMiddleware
from throttlekit.testing import FakeClock

TOKEN = "s3cret-token-0123456789"
PATH = "/throttlekit/status"


def wsgi_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"app"]


@pytest.fixture
def parts():
    clock = FakeClock()
    limiter = Limiter(clock=clock)
    limiter.throttle("per-ip", "100/minute")
    monitor = Monitor(limiter)
    shield = Shield(limiter, monitor)
    return limiter, monitor, shield


def _client(parts, **options) -> Client:
    limiter, monitor, shield = parts
    endpoint = StatusEndpoint(monitor, shield=shield, limiter=limiter, **options)
    return Client(WSGIMiddleware(StatusMiddleware(wsgi_app, endpoint), limiter))


def test_loopback_gets_the_status_json(parts):
    """From 127.0.0.1 (the default allow list) the endpoint answers with the status JSON."""
    limiter, _monitor, _shield = parts
    limiter.block("203.0.113.9", ttl=60, reason="manual")
    c = _client(parts)
    for _ in range(3):
        assert c.get("/", environ_overrides={"REMOTE_ADDR": "10.0.0.1"}).status_code == 200
    r = c.get(PATH, environ_overrides={"REMOTE_ADDR": "127.0.0.1"})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.headers["Cache-Control"] == "no-store"
    data = r.get_json()
    assert data["counters"]["per-ip"]["allowed"] >= 3
    assert data["anomaly"] is False
    assert data["top"][0] == ["10.0.0.1", 3]
    assert data["shield"] == {"active": False, "bans": 0, "engagements": 0, "dry_run": False}
    assert data["blocked"] == [
        {"key": "203.0.113.9", "expires_at": pytest.approx(FakeClock().now + 60),
         "reason": "manual"}
    ]


def test_other_addresses_are_refused(parts):
    """A non-safelisted address gets 403 and no data; the app is not reached."""
    c = _client(parts)
    r = c.get(PATH, environ_overrides={"REMOTE_ADDR": "198.51.100.7"})
    assert r.status_code == 403
    assert b"counters" not in r.data


def test_forwarded_for_does_not_grant_access(parts):
    """A spoofed X-Forwarded-For: 127.0.0.1 from outside is still refused."""
    c = _client(parts)
    r = c.get(PATH, headers={"X-Forwarded-For": "127.0.0.1"},
              environ_overrides={"REMOTE_ADDR": "198.51.100.7"})
    assert r.status_code == 403


def test_bearer_token_grants_access_from_anywhere(parts):
    """With a token: the right bearer token works from any address; none or a wrong one
    gets 401 with WWW-Authenticate."""
    c = _client(parts, token=TOKEN, allow=())
    outside = {"REMOTE_ADDR": "198.51.100.7"}
    ok = c.get(PATH, headers={"Authorization": f"Bearer {TOKEN}"}, environ_overrides=outside)
    assert ok.status_code == 200 and "counters" in ok.get_json()
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                    {"Authorization": TOKEN}):
        r = c.get(PATH, headers=headers, environ_overrides=outside)
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    # loopback is not allowed either when allow=()
    assert c.get(PATH, environ_overrides={"REMOTE_ADDR": "127.0.0.1"}).status_code == 401


def test_allow_accepts_networks(parts):
    """allow takes CIDRs; IPv4-mapped IPv6 peers match their IPv4 network."""
    c = _client(parts, allow=["10.8.0.0/16"])
    assert c.get(PATH, environ_overrides={"REMOTE_ADDR": "10.8.3.4"}).status_code == 200
    assert c.get(PATH, environ_overrides={"REMOTE_ADDR": "::ffff:10.8.3.4"}).status_code == 200
    assert c.get(PATH, environ_overrides={"REMOTE_ADDR": "10.9.3.4"}).status_code == 403


def test_other_paths_go_to_the_app(parts):
    """Only the endpoint's path is answered by it; POST to it is 405."""
    c = _client(parts)
    assert c.get("/throttlekit/statusx").data == b"app"
    r = c.post(PATH, environ_overrides={"REMOTE_ADDR": "127.0.0.1"})
    assert r.status_code == 405


@pytest.mark.parametrize(
    "kwargs", [{"token": "short"}, {"allow": ["nonsense"]}, {"allow": "127.0.0.1"},
               {"path": "status"}]
)
def test_bad_settings_are_config_errors(parts, kwargs):
    """A short token, a bad network, a bare string allow list or a relative path are refused."""
    with pytest.raises(ConfigError):
        StatusEndpoint(parts[1], **kwargs)


def test_asgi_endpoint():
    """ASGIStatusMiddleware answers the endpoint and passes other requests through."""
    limiter = Limiter(clock=FakeClock())
    monitor = Monitor(limiter)

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})

    asgi = ASGIStatusMiddleware(app, StatusEndpoint(monitor, token=TOKEN))

    async def go():
        transport = httpx.ASGITransport(app=asgi, client=("198.51.100.7", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            denied = await c.get(PATH)
            ok = await c.get(PATH, headers={"Authorization": f"Bearer {TOKEN}"})
            other = await c.get("/")
        return denied, ok, other

    denied, ok, other = asyncio.run(go())
    assert denied.status_code == 401
    assert ok.status_code == 200 and ok.json()["requests"] == 0
    assert other.text == "app"


def test_monitor_sees_asgi_traffic():
    """The same Monitor works behind ASGIMiddleware: requests and outcomes are counted."""
    from throttlekit import ASGIMiddleware

    limiter = Limiter(clock=FakeClock())
    limiter.throttle("per-ip", "2/minute")
    monitor = Monitor(limiter)

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})

    async def go():
        transport = httpx.ASGITransport(app=ASGIMiddleware(app, limiter),
                                        client=("198.51.100.7", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return [(await c.get("/")).status_code for _ in range(3)]

    assert asyncio.run(go()) == [200, 200, 429]
    assert monitor.counts() == {("per-ip", "allowed", False): 2,
                                ("per-ip", "throttled", False): 1}
    assert monitor.top(1) == [("198.51.100.7", 3)]
