"""The engine (``limiter.engine``): every entry asks it, and its answers do not depend on the
way in (sync or async shell, registered in code or by a rules file)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from throttlekit import ASGIMiddleware, Limiter
from throttlekit.testing import FakeClock


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body (a replay must give it back intact), answers 200."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_asgi_reads_the_form_for_a_concurrency_rule_keyed_on_it(clock: FakeClock) -> None:
    """A concurrency rule alone reading ``view.form`` makes the ASGI middleware read small
    forms first (it saw an empty form before), and the app still gets the body."""
    seen: list[str | None] = []

    def user(view: Any) -> str | None:
        seen.append(view.form.get("user"))
        return view.form.get("user")

    limiter = Limiter(clock=clock)
    limiter.concurrency("one-per-user", 1, key=user)

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=ASGIMiddleware(echo_app, limiter))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/", data={"user": "alice"})

    response = asyncio.run(run())
    assert response.status_code == 200
    assert response.content == b"user=alice"
    assert seen == ["alice"]


def test_rules_file_and_code_give_the_same_flags(tmp_path: Path) -> None:
    """A throttle of several rates is the engine's common case whether it was registered in
    code or by a rules file (a reload derived the flags another way)."""
    rules = tmp_path / "rules.toml"
    rules.write_text('[[throttle]]\nname = "t"\nrates = "5/second; 100/minute"\n')
    from_file = Limiter.from_file(rules)
    in_code = Limiter()
    in_code.throttle("t", "5/second; 100/minute")
    assert from_file.engine.rules.fast and in_code.engine.rules.fast
    from_file.reload()
    assert from_file.engine.rules.fast


@pytest.mark.parametrize("rates", ["3/minute", "3/minute; 10/hour"])
def test_async_shell_on_a_local_store_decides_as_the_sync_one(clock: FakeClock,
                                                              rates: str) -> None:
    """``aevaluate`` on a memory store is ``evaluate``: same verdicts, one shared count."""
    from throttlekit._request import RequestView

    limiter = Limiter(clock=clock)
    limiter.throttle("per-ip", rates)
    engine = limiter.engine

    def view() -> RequestView:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "192.0.2.1"}
        return RequestView.from_environ(environ, limiter.resolver)

    sync = [engine.evaluate(view()).allowed for _ in range(2)]
    asyn = [asyncio.run(engine.aevaluate(view())).allowed for _ in range(2)]
    assert sync + asyn == [True, True, True, False]
