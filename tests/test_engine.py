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


def _scope_view(limiter: Limiter, ip: str, path: str) -> Any:
    from throttlekit import RequestView

    scope = {"type": "http", "method": "GET", "path": path, "headers": [],
             "client": (ip, 1234)}
    return RequestView.from_scope(scope, limiter.resolver)


def _several_simple(clock: FakeClock, general: bool) -> Limiter:
    limiter = Limiter("memory://", clock=clock)
    limiter.throttle("a", "5/minute", path_prefix="/api/")
    limiter.throttle("b", "2/minute", path_prefix="/api/")
    limiter.throttle("c", "10/minute; 3/second")  # two rates: its own policies
    limiter.throttle("d", "4/minute", path_prefix="/web/")
    limiter.throttle("e", "7/minute", path_prefix="/web/", key="ip")
    if general:
        limiter.engine.rules.fast = False  # plan, one store call, conclude
    return limiter


def test_several_simple_throttles_decide_all_or_nothing_as_the_general_path() -> None:
    """Several throttles keyed by the client apply to a request (decided together, with no
    loop over them): every verdict, its decision and its policies are the general path's,
    a refusal by one charges none of them, and requests whose candidates change (another
    path, another client) are decided by their own throttles."""
    clocks = FakeClock(1_700_000_040.0), FakeClock(1_700_000_040.0)
    fast, slow = _several_simple(clocks[0], False), _several_simple(clocks[1], True)
    paths = ["/api/x", "/api/y", "/web/z", "/api/x", "/other", "/api/x", "/web/z"] * 3
    kinds = []
    for i, path in enumerate(paths):
        ip = "198.51.100.7" if i % 5 else "198.51.100.8"
        got = fast.evaluate(_scope_view(fast, ip, path))
        want = slow.evaluate(_scope_view(slow, ip, path))
        assert (got.allowed, got.kind, got.rule, got.key, got.decision, got.policies) == (
            want.allowed, want.kind, want.rule, want.key, want.decision, want.policies)
        kinds.append(got.kind)
        for c in clocks:
            c.advance(0.2)
    assert "throttled" in kinds and "allowed" in kinds
    # "b" (2/minute) refused the third /api/ request of the client: "a" was charged twice
    # only, however many /api/ requests "b" refused since
    verdict = fast.evaluate(_scope_view(fast, "198.51.100.7", "/other"))
    assert [name for name, _ in verdict.policies] == ["c", "c/1"]
    a = [d for name, d in fast.evaluate(_scope_view(fast, "198.51.100.7", "/api/x")).policies
         if name == "a"]
    assert a[0].remaining == 3


def test_several_simple_throttles_count_exactly_under_threads() -> None:
    """Threads deciding requests of one client against several throttles admit exactly
    the tightest limit, and charge each throttle once per admitted request."""
    import threading

    limiter = Limiter("memory://", clock=FakeClock())  # (exact counts: a clock of its own)
    for name, rate in (("a", "100/hour"), ("b", "150/hour"), ("c", "1000/hour")):
        limiter.throttle(name, rate, path_prefix="/api/")
    admitted = []

    def run() -> None:
        n = 0
        for _ in range(60):
            n += limiter.evaluate(_scope_view(limiter, "198.51.100.7", "/api/x")).allowed
        admitted.append(n)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 100
    left = dict(limiter.evaluate(_scope_view(limiter, "198.51.100.7", "/api/x")).policies)
    assert (left["b"].remaining, left["c"].remaining) == (50, 900)
