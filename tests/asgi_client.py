"""One ASGI request driven by hand (no server, no client library): the scope as a server
builds it, a body-less request, and a ``receive`` that reports the disconnect only once the
response has ended or the app has returned (a cancelled app sees none)."""

from __future__ import annotations

import asyncio
from typing import Any

Header = tuple[str, str]


async def asgi_request(app: Any, path: str, client: str, headers: list[Header]
                       ) -> tuple[int, list[Header], bytes]:
    """``GET path`` from ``client`` with ``headers``: status, response headers, body."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": (client, 40000), "server": ("testserver", 80),
        "headers": [(b"host", b"testserver")]
        + [(k.lower().encode(), v.encode()) for k, v in headers],
    }
    sent: list[dict[str, Any]] = []
    requested = False
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    try:
        await app(scope, receive, send)
    finally:
        done.set()
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", ())]
    return start["status"], pairs, body
