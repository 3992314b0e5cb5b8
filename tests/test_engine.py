"""The engine (``limiter.engine``): every entry asks it, and its answers do not depend on the
way in (sync or async shell, registered in code or by a rules file)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
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


def _field(view: Any, name: str) -> str | None:
    return view.form.get(name)  # a helper: the rule's own function never names the form


def _run_post(limiter: Limiter) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=ASGIMiddleware(echo_app, limiter))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/", data={"user": "alice"})

    return asyncio.run(run())


@pytest.mark.parametrize("declared", [True, False])
def test_a_function_declared_with_reads_form_gets_the_form(clock: FakeClock,
                                                          declared: bool) -> None:
    """A key function reading the form through a helper sees it under ASGI once declared
    with ``reads_form`` (nothing in its code says so); undeclared, its form is empty."""
    from throttlekit import reads_form

    seen: list[str | None] = []

    def user(view: Any) -> str | None:
        seen.append(_field(view, "user"))
        return seen[-1]

    limiter = Limiter(clock=clock)
    limiter.throttle("per-user", "5/minute", key=reads_form(user) if declared else user)
    response = _run_post(limiter)
    assert response.status_code == 200 and response.content == b"user=alice"
    assert seen == (["alice"] if declared else [None])


def test_reads_form_false_spares_the_read(clock: FakeClock) -> None:
    """A function naming ``form`` for something else can say it does not read the request's
    form: no body is read ahead for it."""
    from throttlekit import reads_form

    settings = SimpleNamespace(form={"user": "config"})

    def key(view: Any) -> str:
        return settings.form["user"]  # "form" among the code's names

    limiter = Limiter(clock=clock)
    limiter.throttle("t", "5/minute", key=key)
    assert limiter.engine.rules.needs_form  # guessed from the code's names
    other = Limiter(clock=clock)
    other.throttle("t", "5/minute", key=reads_form(key, False))
    assert not other.engine.rules.needs_form
    assert _run_post(other).content == b"user=alice"


def test_rules_file_conditions_read_the_form_only_when_asked(tmp_path: Path) -> None:
    """A rules-file rule whose conditions combine a header test and a form-reading match
    says it reads the form; one that only tests headers does not."""
    from throttlekit._rulesfile.conditions import combine

    def on_header(view: Any) -> bool:
        return view.headers.get("x") == "1"

    def on_form(view: Any) -> bool:
        return view.form.get("user") == "alice"

    from throttlekit._rules import uses_form

    assert uses_form(combine([on_header, on_form]))
    assert not uses_form(combine([on_header, on_header]))
