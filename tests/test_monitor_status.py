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


def test_token_is_required_from_loopback_too(parts):
    """With a token and no allow list, loopback gets no bypass (a reverse proxy on the same
    host forwards every visitor from 127.0.0.1): the token is required from every address."""
    c = _client(parts, token=TOKEN)
    for peer in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "198.51.100.7"):
        r = c.get(PATH, environ_overrides={"REMOTE_ADDR": peer})
        assert r.status_code == 401, peer
        assert b"counters" not in r.data and b"blocked" not in r.data
        ok = c.get(PATH, headers={"Authorization": f"Bearer {TOKEN}"},
                   environ_overrides={"REMOTE_ADDR": peer})
        assert ok.status_code == 200 and "counters" in ok.get_json()


def test_token_with_listed_addresses(parts):
    """With a token, only the addresses the operator lists are let in without it."""
    c = _client(parts, token=TOKEN, allow=["10.8.0.0/16"])
    assert c.get(PATH, environ_overrides={"REMOTE_ADDR": "10.8.3.4"}).status_code == 200
    assert c.get(PATH, environ_overrides={"REMOTE_ADDR": "127.0.0.1"}).status_code == 401
    assert c.get(PATH, environ_overrides={"REMOTE_ADDR": "10.9.3.4"}).status_code == 401


def test_without_token_only_loopback(parts):
    """Without a token the default stays loopback only (IPv4 and IPv6), others get 403."""
    c = _client(parts)
    for peer in ("127.0.0.1", "::1"):
        assert c.get(PATH, environ_overrides={"REMOTE_ADDR": peer}).status_code == 200
    for peer in ("127.0.0.2", "10.0.0.1", "2001:db8::1", ""):
        assert c.get(PATH, environ_overrides={"REMOTE_ADDR": peer}).status_code == 403


def test_bearer_scheme_is_case_insensitive_and_token_exact(parts):
    """`bearer TOKEN` works (RFC 7235 schemes are case-insensitive); a token with a suffix,
    a prefix of the token, or another scheme does not."""
    c = _client(parts, token=TOKEN)
    h = {"REMOTE_ADDR": "198.51.100.7"}
    assert c.get(PATH, headers={"Authorization": f"bearer {TOKEN}"},
                 environ_overrides=h).status_code == 200
    for auth in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", "Bearer",
                 f"Bearer{TOKEN}"):
        assert c.get(PATH, headers={"Authorization": auth},
                     environ_overrides=h).status_code == 401, auth


def test_asgi_token_required_from_loopback():
    """ASGI: with a token, a loopback client without it gets 401, with it 200."""
    limiter = Limiter(clock=FakeClock())
    limiter.block("203.0.113.9", ttl=60, reason="manual")
    monitor = Monitor(limiter)

    async def app(scope, receive, send):  # pragma: no cover - never reached here
        raise AssertionError("the endpoint answers itself")

    asgi = ASGIStatusMiddleware(app, StatusEndpoint(monitor, limiter=limiter, token=TOKEN))

    async def go(client):
        transport = httpx.ASGITransport(app=asgi, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return (await c.get(PATH),
                    await c.get(PATH, headers={"Authorization": f"Bearer {TOKEN}"}))

    for client in (("127.0.0.1", 5000), ("::1", 5000)):
        denied, ok = asyncio.run(go(client))
        assert denied.status_code == 401 and b"203.0.113.9" not in denied.content
        assert ok.status_code == 200
        assert ok.json()["blocked"][0]["key"] == "203.0.113.9"


@pytest.mark.parametrize(
    "kwargs", [{"token": "short"}, {"allow": ["nonsense"]}, {"allow": "127.0.0.1"},
               {"path": "status"}, {"allow": [2130706433]}, {"allow": [b"127.0.0.1"]},
               {"allow": 5}, {"token": TOKEN, "allow": ["10.0.0.0/33"]}]
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


STATUS_APP = '''
import throttlekit
from throttlekit.monitor import Monitor
from throttlekit.monitor.status import ASGIStatusMiddleware, StatusEndpoint, StatusMiddleware

limiter = throttlekit.Limiter()
limiter.block("203.0.113.9", ttl=600, reason="manual")
endpoint = StatusEndpoint(Monitor(limiter), limiter=limiter, token="TOKEN")


def inner(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"app"]


async def ainner(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


wsgi = StatusMiddleware(inner, endpoint)
asgi = ASGIStatusMiddleware(ainner, endpoint)
'''.replace('"TOKEN"', repr(TOKEN))


@pytest.mark.e2e
@pytest.mark.parametrize("server", ["gunicorn", "uvicorn"])
def test_served_endpoint_requires_token_from_loopback(server, tmp_path):
    """Under a real gunicorn / uvicorn, a client on 127.0.0.1 (what a reverse proxy on the
    same host looks like) without the token reads neither the top clients nor the blocklist."""
    import os
    import sys
    from pathlib import Path

    from servers import free_port, http_app

    (tmp_path / "tk_status_app.py").write_text(STATUS_APP)
    src = Path(__file__).resolve().parent.parent / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(tmp_path)])}
    port = free_port()
    if server == "gunicorn":
        argv = [sys.executable, "-m", "gunicorn", "--workers", "1", "--bind",
                f"127.0.0.1:{port}", "--log-level", "warning", "tk_status_app:wsgi"]
    else:
        argv = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
                "--log-level", "warning", "tk_status_app:asgi"]
    with http_app(argv, port, "/", env=env) as base:
        denied = httpx.get(base + PATH, timeout=10)
        forwarded = httpx.get(base + PATH, headers={"X-Forwarded-For": "127.0.0.1"},
                              timeout=10)
        ok = httpx.get(base + PATH, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    for r in (denied, forwarded):
        assert r.status_code == 401
        assert b"203.0.113.9" not in r.content
    assert ok.status_code == 200
    assert ok.json()["blocked"][0]["key"] == "203.0.113.9"
