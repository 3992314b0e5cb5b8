"""Admin changes reach running workers: a ``reset``, ``reset_rules`` or ``unblock`` made by one
process (another worker, an admin shell) lifts the refusals every other worker cached locally
within about a second, on every backend. Two Limiter objects on one store play two workers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from werkzeug.test import Client

from throttlekit import ASGIMiddleware, Limiter, WSGIMiddleware
from throttlekit.testing import FakeClock

#: 10 minutes into an hour: an hourly window never ends during a test
T0 = 1_699_920_000.0 + 600
IP = "192.0.2.9"
ENV = {"REMOTE_ADDR": IP}


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _rules(limiter: Limiter) -> Limiter:
    limiter.throttle("per-ip", "2/hour", strategy="fixed_window")
    limiter.fail2ban("scanners", match=lambda r: r.path.startswith("/wp-admin"),
                     maxretry=5, findtime=600, bantime=3600)
    return limiter


def _workers(make_limiter: Any, clock: FakeClock) -> tuple[Limiter, Limiter]:
    clock.set(T0)
    a = make_limiter("fixed_window")
    b = Limiter(a.storage, clock=clock)
    return a, b


def test_reset_by_another_worker_admits_a_client_cached_as_refused(make_limiter, clock):
    """Worker A refused a key on an hourly rate; worker B resets it: A admits it within a
    second, not at the end of the hour."""
    a, b = _workers(make_limiter, clock)
    assert a.hit("k", "2/hour").allowed
    assert a.hit("k", "2/hour").allowed
    for _ in range(3):
        assert not a.hit("k", "2/hour").allowed
    b.reset("k")
    clock.advance(1.1)
    assert a.hit("k", "2/hour").allowed


@pytest.mark.parametrize("how", ["reset_rules", "unblock"])
def test_admin_change_reaches_another_workers_middleware(make_limiter, clock, how):
    """Through the WSGI middleware: a client throttled by worker A is admitted by A within
    a second of worker B's ``reset_rules`` or ``unblock`` of it."""
    a, b = _workers(make_limiter, clock)
    client = Client(WSGIMiddleware(app, _rules(a)))
    _rules(b)
    codes = [client.get("/", environ_base=ENV).status_code for _ in range(5)]
    assert codes == [200, 200, 429, 429, 429]
    getattr(b, how)(IP)
    clock.advance(1.1)
    assert client.get("/", environ_base=ENV).status_code == 200


@pytest.mark.parametrize("how", ["reset_rules", "unblock"])
def test_admin_change_of_an_ipv6_address_reaches_its_client_key(make_limiter, clock, how):
    """An IPv6 client is counted and banned under its /64; worker B's ``reset_rules`` or
    ``unblock`` of the address the access log shows admits it (any address of the /64) in
    worker A within a second."""
    a, b = _workers(make_limiter, clock)
    client = Client(WSGIMiddleware(app, _rules(a)))
    _rules(b)
    env = {"REMOTE_ADDR": "2001:db8:1:3::5"}
    if how == "unblock":  # banned (the ban is the /64's)
        for _ in range(5):
            client.get("/wp-admin/", environ_base=env)
        assert [b.key for b in a.blocked()] == ["fail2ban:scanners:2001:db8:1:3::/64"]
        assert client.get("/", environ_base=env).status_code == 403
    else:  # throttled, the refusal cached by worker A (remote stores)
        codes = [client.get("/", environ_base=env).status_code for _ in range(4)]
        assert codes == [200, 200, 429, 429]
    getattr(b, how)("2001:db8:1:3::5")
    clock.advance(1.1)
    assert client.get("/", environ_base={"REMOTE_ADDR": "2001:db8:1:3::77"}).status_code == 200


def test_async_admin_change_reaches_another_workers_asgi_middleware(make_limiter, clock):
    """The same through the ASGI middleware, the change made with ``areset_rules``."""
    a, b = _workers(make_limiter, clock)
    asgi = ASGIMiddleware(_asgi_app, _rules(a))
    _rules(b)

    async def scenario() -> list[int]:
        codes = [await _get(asgi) for _ in range(4)]
        await b.areset_rules(IP)
        clock.advance(1.1)
        codes.append(await _get(asgi))
        await _aclose(a, b)
        return codes

    assert asyncio.run(scenario()) == [200, 200, 429, 429, 200]


def test_areset_rules_clears_the_local_cache_at_once(make_limiter, clock):
    """``areset_rules`` in the worker that cached the refusal takes effect at its next
    request, as ``reset_rules`` does (no second to wait)."""
    a, _ = _workers(make_limiter, clock)
    asgi = ASGIMiddleware(_asgi_app, _rules(a))

    async def scenario() -> list[int]:
        codes = [await _get(asgi) for _ in range(4)]
        await a.areset_rules(IP)
        codes.append(await _get(asgi))
        await _aclose(a)
        return codes

    assert asyncio.run(scenario()) == [200, 200, 429, 429, 200]


def test_reload_by_another_worker_drops_this_ones_cached_refusals(make_limiter, clock,
                                                                  tmp_path):
    """A rules reload in one worker drops every worker's cached refusals: after B reloads,
    A asks the store again (here the store has forgotten the count meanwhile)."""
    rules = tmp_path / "rules.toml"
    rules.write_text('[[throttle]]\nname = "per-ip"\nrates = "2/hour"\n'
                     'strategy = "fixed_window"\n')
    a, b = _workers(make_limiter, clock)
    a.load_rules(rules)
    b.load_rules(rules)
    client = Client(WSGIMiddleware(app, a))
    assert [client.get("/", environ_base=ENV).status_code for _ in range(3)] == [200, 200, 429]
    a.storage.reset(["rule:" + IP])  # the store alone: no worker is told
    assert b.reload()
    clock.advance(1.1)
    assert client.get("/", environ_base=ENV).status_code == 200


async def _aclose(*limiters: Limiter) -> None:
    """Close the async clients the storages made for this event loop (Redis)."""
    for limiter in limiters:
        aclose = getattr(limiter.storage, "aclose", None)
        if aclose is not None:
            await aclose()


async def _asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _get(asgi: Any, path: str = "/") -> int:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": [], "client": (IP, 40000),
             "server": ("127.0.0.1", 8000)}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asgi(scope, receive, send)
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))
