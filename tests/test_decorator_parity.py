"""Decorator parity with the rules and the peers: count_when, dry_run, block=False, the
"user"/"user_or_ip"/"header:" keys, through Flask, FastAPI and plain calls (Django:
tests/test_decorator_parity_django.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from flask import Flask, g

from throttlekit import ConfigError, Decision, Event, Limiter, RateLimitExceeded
from throttlekit._settling import status_of
from throttlekit.contrib import user_function
from throttlekit.contrib.fastapi import decision as fastapi_decision
from throttlekit.contrib.flask import Throttle
from throttlekit.testing import FakeClock


@pytest.fixture
def limiter(clock: FakeClock) -> Limiter:
    return Limiter(clock=clock, strategy="fixed_window")


@pytest.fixture(autouse=True)
def no_user_hook() -> Iterator[None]:
    yield
    user_function(None)


def fastapi_get(app: Any, *paths: str, **kw: Any) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return [await c.get(p, **kw) for p in paths]
    return asyncio.run(main())


# -- count_when ---------------------------------------------------------------------------


@pytest.mark.parametrize("with_extension", [True, False], ids=["Throttle", "bare"])
def test_flask_count_when_counts_only_failed_logins(limiter: Limiter,
                                                    with_extension: bool) -> None:
    """count_when=4xx: successful logins never use the budget; the third failure within
    the minute is refused before the view runs (with or without the Throttle extension)."""
    app = Flask(__name__)
    if with_extension:
        Throttle(app, limiter)
    calls = []

    @app.post("/login")
    @limiter.limit("2/minute", count_when=lambda r: r.status_code >= 400)
    def login() -> Any:
        from flask import request
        calls.append(1)
        if request.args.get("pw") != "ok":
            return "no", 401
        return "yes"

    c = app.test_client()
    assert [c.post("/login?pw=ok").status_code for _ in range(5)] == [200] * 5
    assert [c.post("/login").status_code for _ in range(2)] == [401, 401]
    assert c.post("/login?pw=ok").status_code == 429  # the budget is spent by failures
    assert len(calls) == 7


def test_fastapi_count_when_sees_raised_http_exceptions(limiter: Limiter) -> None:
    """An HTTPException raised by the endpoint is its status: 404s are counted, 200s not."""
    app = FastAPI()

    @app.get("/item/{i}")
    @limiter.limit("2/minute", count_when=lambda r: r.status_code == 404)
    async def item(i: int) -> dict[str, int]:
        if i > 10:
            raise HTTPException(404)
        return {"i": i}

    got = fastapi_get(app, "/item/1", "/item/2", "/item/3", "/item/11", "/item/12",
                      "/item/1")
    assert [r.status_code for r in got] == [200, 200, 200, 404, 404, 429]


def test_plain_call_count_when_counts_exceptions(limiter: Limiter) -> None:
    """A plain function: a call that raises counts as 500, one that returns as 200."""

    @limiter.limit("1/minute", key=lambda ok: "k", count_when=lambda r: r.status_code == 500)
    def work(ok: bool) -> str:
        if not ok:
            raise ValueError("boom")
        return "done"

    assert [work(True) for _ in range(3)] == ["done"] * 3
    with pytest.raises(ValueError):
        work(False)
    with pytest.raises(RateLimitExceeded):
        work(True)


def test_count_when_must_be_callable(limiter: Limiter) -> None:
    """A count_when that is not a function is refused at decoration time."""
    with pytest.raises(ConfigError, match="count_when"):
        limiter.limit("1/minute", count_when=404)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="count_when"):
        limiter.depends("1/minute", count_when=lambda r: True)


@pytest.mark.parametrize(("outcome", "failed", "status"), [
    ("text", False, 200), (("body", 201), False, 201), (("body", 404, {}), False, 404),
    (ValueError(), True, 500), (HTTPException(418), True, 418),
], ids=["str", "tuple", "tuple3", "exception", "http-exception"])
def test_status_of_outcomes(outcome: Any, failed: bool, status: int) -> None:
    """What count_when sees of what a view returned or raised."""
    assert status_of(outcome, failed) == status


# -- dry_run ------------------------------------------------------------------------------


def test_dry_run_never_refuses_and_tells_events(limiter: Limiter) -> None:
    """dry_run: every request reaches the view; refusals it would make are events with
    dry_run=True; a blocking limit beside it still refuses, unaffected by it."""
    events: list[Event] = []
    limiter.on("throttled", events.append)
    app = Flask(__name__)
    Throttle(app, limiter)

    @app.get("/a")
    @limiter.limit("2/minute", dry_run=True)
    def a() -> str:
        return "a"

    @app.get("/b")
    @limiter.limit("4/minute")
    @limiter.limit("1/minute", dry_run=True)
    def b() -> str:
        return "b"

    c = app.test_client()
    assert [c.get("/a").status_code for _ in range(4)] == [200] * 4
    assert [e.dry_run for e in events] == [True, True]
    assert [c.get("/b").status_code for _ in range(5)] == [200] * 4 + [429]
    # the dry run refused requests 2 to 5 of /b (the blocking refusal is not a rule's event)
    assert [(e.rule.rsplit(".", 1)[-1], e.dry_run) for e in events[2:]] == [("b#1", True)] * 4


# -- block=False --------------------------------------------------------------------------


def test_flask_block_false_lets_the_view_decide(limiter: Limiter) -> None:
    """block=False: over the limit the view still runs and reads g.throttle.allowed."""
    app = Flask(__name__)
    Throttle(app, limiter)

    @app.get("/search")
    @limiter.limit("2/minute", block=False)
    def search() -> str:
        d: Decision = g.throttle
        return "full" if d.allowed else "cached"

    c = app.test_client()
    got = [c.get("/search") for _ in range(4)]
    assert [r.status_code for r in got] == [200] * 4
    assert [r.text for r in got] == ["full", "full", "cached", "cached"]


def test_fastapi_block_false_decision_accessor(limiter: Limiter) -> None:
    """FastAPI without a Request parameter: contrib.fastapi.decision() is the Decision."""
    app = FastAPI()

    @app.get("/s")
    @limiter.limit("1/minute", block=False)
    async def s() -> dict[str, Any]:
        d = fastapi_decision()
        assert d is not None
        return {"allowed": d.allowed, "remaining": d.remaining}

    got = [r.json() for r in fastapi_get(app, "/s", "/s")]
    assert got == [{"allowed": True, "remaining": 0}, {"allowed": False, "remaining": 0}]


def test_plain_call_block_false_never_raises(limiter: Limiter) -> None:
    """A plain function with block=False runs over the limit; current_decision tells."""
    from throttlekit.contrib import current_decision

    @limiter.limit("1/minute", key=lambda: "k", block=False)
    def f() -> bool:
        d = current_decision()
        assert d is not None
        return d.allowed

    assert [f(), f(), f()] == [True, False, False]
    assert current_decision() is None  # not left behind for the next call


# -- key shortcuts ------------------------------------------------------------------------


def test_flask_user_key_reads_g_user_and_user_or_ip_falls_back(limiter: Limiter) -> None:
    """key="user": one counter per g.user (anonymous requests: the limit does not apply);
    "user_or_ip": anonymous requests count per client IP. (The hook setting g.user runs
    before the Throttle's, which evaluates the limits.)"""
    app = Flask(__name__)

    @app.before_request
    def login() -> None:
        from flask import request
        name = request.headers.get("x-user")
        if name:
            g.user = name

    Throttle(app, limiter)

    @app.get("/u")
    @limiter.limit("1/minute", key="user")
    def u() -> str:
        return "u"

    @app.get("/ui")
    @limiter.limit("1/minute", key="user_or_ip")
    def ui() -> str:
        return "ui"

    c = app.test_client()
    codes = [c.get("/u", headers=h).status_code
             for h in ({"x-user": "ann"}, {"x-user": "ann"}, {"x-user": "bob"}, {}, {})]
    assert codes == [200, 429, 200, 200, 200]
    codes = [c.get("/ui", headers=h).status_code
             for h in ({"x-user": "ann"}, {}, {}, {"x-user": "ann"})]
    assert codes == [200, 200, 429, 429]


def test_user_function_hook_and_header_key_in_fastapi(limiter: Limiter) -> None:
    """The user_function hook says who the user is; "header:X-Api-Key" counts per key."""
    user_function(lambda view: view.headers.get("x-token"))
    app = FastAPI()

    @app.get("/u")
    @limiter.limit("1/minute", key="user")
    async def u() -> str:
        return "u"

    @app.get("/k")
    @limiter.limit("1/minute", key="header:X-Api-Key")
    async def k() -> str:
        return "k"

    got = [r.status_code for r in fastapi_get(app, "/u", headers={"x-token": "t1"})]
    got += [r.status_code for r in fastapi_get(app, "/u", headers={"x-token": "t1"})]
    got += [r.status_code for r in fastapi_get(app, "/u", headers={"x-token": "t2"})]
    assert got == [200, 429, 200]
    got = [r.status_code for key in ("a", "a", "b")
           for r in fastapi_get(app, "/k", headers={"x-api-key": key})]
    assert got == [200, 429, 200]


def test_user_function_must_be_callable() -> None:
    """A hook that is not a function is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="42"):
        user_function(42)  # type: ignore[arg-type]


def test_the_rules_verdict_key_is_the_pipelines() -> None:
    """_settling names the rules' verdict key without importing the responder: the same."""
    from throttlekit._responder import VERDICT_KEY
    from throttlekit._settling import VERDICT_KEY as SETTLING_KEY

    assert SETTLING_KEY == VERDICT_KEY


def test_fastapi_with_middleware_settles_count_when(limiter: Limiter) -> None:
    """Under the Throttle middleware (which evaluates the endpoint's limits first) the
    wrapper still charges count_when with the endpoint's outcome."""
    from throttlekit.contrib.fastapi import Throttle as FastAPIThrottle

    app = FastAPI()
    FastAPIThrottle(app, limiter)

    @app.get("/item/{i}")
    @limiter.limit("1/minute", count_when=lambda r: r.status_code == 404)
    async def item(i: int) -> dict[str, int]:
        if i > 10:
            raise HTTPException(404)
        return {"i": i}

    got = fastapi_get(app, "/item/1", "/item/2", "/item/11", "/item/1")
    assert [r.status_code for r in got] == [200, 200, 404, 429]


def test_async_plain_call_count_when(limiter: Limiter) -> None:
    """An async plain function: charged only when count_when holds for its outcome."""

    @limiter.limit("1/minute", key=lambda: "k", count_when=lambda r: r.status_code == 500)
    async def job(fail: bool) -> str:
        if fail:
            raise RuntimeError("boom")
        return "ok"

    async def main() -> list[str]:
        out = [await job(False), await job(False)]
        with pytest.raises(RuntimeError):
            await job(True)
        try:
            await job(False)
        except RateLimitExceeded:
            out.append("refused")
        return out

    assert asyncio.run(main()) == ["ok", "ok", "refused"]


def test_current_decision_only_inside_decorated_views(limiter: Limiter) -> None:
    """A view without decorated limits never sees the Decision of an earlier request."""
    from throttlekit.contrib import current_decision

    app = Flask(__name__)
    Throttle(app, limiter, default_limits=["10/minute"])
    seen: list[Any] = []

    @app.get("/limited")
    @limiter.limit("5/minute")
    def limited() -> str:
        seen.append(current_decision())
        return "a"

    @app.get("/plain")
    def plain() -> str:
        seen.append(current_decision())
        return "b"

    c = app.test_client()
    c.get("/limited")
    c.get("/plain")
    assert seen[0] is not None and seen[0].remaining == 4
    assert seen[1] is None
