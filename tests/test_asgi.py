"""The pure ASGI middleware: through httpx's ASGI transport, a Starlette app, direct ASGI
calls, and a real websocket handshake against uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from throttlekit import ASGIMiddleware, Limiter, Verdict
from throttlekit.testing import FakeClock

T0 = 1_700_000_040.0


async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI app: /fail -> 401, /boom raises, /echo returns the request body."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/boom":
        raise RuntimeError("boom")
    body = b"ok"
    if path == "/echo":
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
    status = 401 if path == "/fail" else 200
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def limiter(clock: FakeClock) -> Limiter:
    clock.set(T0)
    return Limiter("memory://", clock=clock)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def requests(app: Any, calls: list[tuple[str, str, dict[str, Any]]],
                   ip: str = "198.51.100.7") -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        return [await c.request(method, path, **kw) for method, path, kw in calls]


def gets(app: Any, n: int, path: str = "/", **kw: Any) -> list[httpx.Response]:
    return run(requests(app, [("GET", path, kw)] * n))


def test_throttle_refuses_with_429(limiter: Limiter) -> None:
    """Beyond the limit the ASGI app is not called; the client gets 429 and standard fields."""
    limiter.throttle("per-ip", "2/minute", strategy="fixed_window")
    responses = gets(ASGIMiddleware(raw_app, limiter), 3)
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[0].headers["ratelimit"] == '"per-ip";r=1;t=60'
    r = responses[2]
    assert (r.headers["retry-after"], r.headers["cache-control"]) == ("60", "no-store")
    assert r.headers["ratelimit-policy"] == '"per-ip";q=2;w=60'


def test_blocklist_gives_403(limiter: Limiter) -> None:
    """A blocklisted client gets 403, with a problem+json body when it accepts JSON."""
    limiter.blocklist("bad-nets", ips=["198.51.100.0/24"])
    [r] = gets(ASGIMiddleware(raw_app, limiter), 1, headers={"accept": "application/json"})
    assert r.status_code == 403
    assert json.loads(r.content)["status"] == 403


def test_count_when_on_asgi(limiter: Limiter) -> None:
    """count_when charges by the app's status after the response, exceptions as 500."""
    limiter.throttle("fails", "2/minute", count_when=lambda resp: resp.status_code >= 400)
    app = ASGIMiddleware(raw_app, limiter)
    codes = [r.status_code for r in gets(app, 3, "/ok")]
    codes += [r.status_code for r in gets(app, 1, "/fail")]
    with pytest.raises(RuntimeError):
        gets(app, 1, "/boom")
    codes += [r.status_code for r in gets(app, 1, "/ok")]
    assert codes == [200, 200, 200, 401, 429]


def test_form_rule_reads_body_and_app_still_gets_it(limiter: Limiter) -> None:
    """A rule keyed on a form field sees it, and the app receives the body unchanged."""
    limiter.throttle("login", "1/minute", key=lambda r: r.form.get("username"))
    app = ASGIMiddleware(raw_app, limiter)
    calls = [("POST", "/echo", {"data": {"username": "ann"}})] * 2 + [
        ("POST", "/echo", {"data": {"username": "bob"}})
    ]
    responses = run(requests(app, calls))
    assert [r.status_code for r in responses] == [200, 429, 200]
    assert responses[0].content == b"username=ann"


def test_large_bodies_stream_through_unread(limiter: Limiter) -> None:
    """A body above max_form_bytes is not read ahead: it streams to the app, form is empty."""
    limiter.throttle("login", "1/minute", key=lambda r: r.form.get("username") or "none")
    app = ASGIMiddleware(raw_app, limiter, max_form_bytes=10)
    data = {"username": "ann", "pad": "x" * 100}
    [r] = run(requests(app, [("POST", "/echo", {"data": data})]))
    assert r.status_code == 200 and r.content.startswith(b"username=ann&pad=xxx")


def test_starlette_sees_verdict_and_streaming_works(limiter: Limiter) -> None:
    """A Starlette endpoint finds the Verdict in request.state; streaming is untouched."""
    limiter.throttle("per-ip", "5/minute", strategy="fixed_window")

    async def home(request: Request) -> PlainTextResponse:
        verdict = getattr(request.state, "throttlekit.verdict")
        assert isinstance(verdict, Verdict)
        return PlainTextResponse(f"remaining={verdict.decision.remaining}")

    async def stream(request: Request) -> StreamingResponse:
        async def gen() -> Any:
            for i in range(3):
                yield f"chunk{i};".encode()

        return StreamingResponse(gen())

    app = ASGIMiddleware(Starlette(routes=[Route("/", home), Route("/s", stream)]), limiter)
    responses = run(requests(app, [("GET", "/", {}), ("GET", "/s", {})]))
    assert responses[0].text == "remaining=4"
    assert responses[1].content == b"chunk0;chunk1;chunk2;"
    assert responses[1].headers["ratelimit"] == '"per-ip";r=3;t=60'


def test_lifespan_passes_through(limiter: Limiter) -> None:
    """lifespan messages reach the app untouched."""
    sent: list[dict[str, Any]] = []
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    app = ASGIMiddleware(raw_app, limiter)
    run(app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete",
                                          "lifespan.shutdown.complete"]


def ws_scope(extensions: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "websocket", "path": "/ws", "headers": [], "client": ("192.0.2.1", 5),
            "query_string": b"", "extensions": extensions or {}}


def drive_ws(app: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    inbox = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        if inbox:
            return inbox.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    run(app(scope, receive, send))
    return sent


def test_denied_websocket_without_extension_is_closed_1008(limiter: Limiter) -> None:
    """Where the server has no denial-response extension, a refused handshake closes with 1008."""
    limiter.blocklist("all", lambda r: True)
    sent = drive_ws(ASGIMiddleware(raw_app, limiter), ws_scope())
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_denied_websocket_with_extension_gets_403(limiter: Limiter) -> None:
    """With websocket.http.response, a refused handshake gets an HTTP 403 response."""
    limiter.blocklist("all", lambda r: True)
    sent = drive_ws(ASGIMiddleware(raw_app, limiter),
                    ws_scope({"websocket.http.response": {}}))
    assert [m["type"] for m in sent] == ["websocket.http.response.start",
                                          "websocket.http.response.body"]
    assert sent[0]["status"] == 403


def test_throttled_websocket_handshake_gets_the_429(limiter: Limiter) -> None:
    """A throttled handshake is refused with the refusal's own status (429, Retry-After and
    the rate-limit fields), not a 403 carrying the 429's headers and body."""
    limiter.throttle("ws", "1/minute")
    app = ASGIMiddleware(raw_app, limiter)
    drive_ws(app, ws_scope({"websocket.http.response": {}}))  # the one allowed
    sent = drive_ws(app, ws_scope({"websocket.http.response": {}}))
    start, body = sent
    assert start["type"] == "websocket.http.response.start"
    assert start["status"] == 429
    headers = dict(start["headers"])
    assert headers[b"retry-after"] == b"60"
    assert headers[b"ratelimit-policy"] == b'"ws";q=1;w=60'
    assert body["body"] == b"Too Many Requests: rate limit exceeded.\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(app: Any) -> Iterator[int]:
    """Run ``app`` under a real uvicorn on a spare loopback port."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            ws="websockets-sansio", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def test_real_websocket_handshakes_under_uvicorn() -> None:
    """Under uvicorn, allowed websockets talk; once throttled the handshake gets HTTP 429."""
    limiter = Limiter(clock=FakeClock())  # (exact counts: a clock of its own)
    limiter.throttle("ws", "2/minute")

    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text("hi " + await ws.receive_text())
        await ws.close()

    app = ASGIMiddleware(Starlette(routes=[WebSocketRoute("/ws", echo)]), limiter)

    async def session(port: int) -> list[Any]:
        out: list[Any] = []
        for _ in range(3):
            try:
                async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
                    await ws.send("there")
                    out.append(await ws.recv())
            except websockets.exceptions.InvalidStatus as exc:
                out.append(exc.response.status_code)
        return out

    with serve(app) as port:
        assert run(session(port)) == ["hi there", "hi there", 429]


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"client": None}, id="no-peer"),
        pytest.param({"client": ("garbage", None)}, id="garbage-peer"),
        pytest.param({"client": 42}, id="bad-client-type"),
        pytest.param({"path": "/caf\u00e9/\udcff"}, id="non-ascii-path"),
        pytest.param({"headers": [(b"x-forwarded-for", b"\xff\x00, ,;=" * 2000)]},
                     id="garbage-xff"),
        pytest.param({"headers": [(b"forwarded", b'for="[::1'), (b"only-one",)]},
                     id="malformed-pairs"),
        pytest.param({"headers": [(b"content-type", b"application/json"),
                                  (b"content-length", b"nope")]}, id="bad-length"),
        pytest.param({"headers": "not a list"}, id="headers-not-list"),
    ],
)
def test_bad_scopes_never_crash(limiter: Limiter, changes: dict[str, Any]) -> None:
    """Garbage scopes are still decided by the rules: no exception escapes."""
    limiter.throttle("per-ip", "1/minute", key=lambda r: r.client_key or "unknown")
    limiter.throttle("form", "5/minute", key=lambda r: r.form.get("u"))
    app = ASGIMiddleware(raw_app, limiter, trusted_proxies=2)
    statuses = []
    for _ in range(2):
        scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"",
                 "headers": [], "client": ("198.51.100.7", 1), **changes}
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"{", "more_body": False}

        async def send(message: dict[str, Any], sent: list[dict[str, Any]] = sent) -> None:
            sent.append(message)

        run(app(scope, receive, send))
        statuses.append(sent[0]["status"])
    assert statuses == [200, 429]
