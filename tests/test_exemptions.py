"""The exemptions users expect (issue 15, item 6), through the real frameworks: FastAPI's
own pages spend no default quota, and the Flask example's exempt ``/health`` never gets a
429, not even from the site-wide rule."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from fastapi import FastAPI

from throttlekit import Limiter
from throttlekit.contrib.fastapi import Throttle
from throttlekit.testing import FakeClock

ROOT = Path(__file__).resolve().parent.parent
DOC_PAGES = ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"]


def statuses(app: FastAPI, paths: list[str]) -> list[int]:
    async def go() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return [(await c.get(p)).status_code for p in paths]

    return asyncio.run(go())


def api(**options: object) -> FastAPI:
    app = FastAPI(**options)  # type: ignore[arg-type]

    @app.get("/items")
    async def items() -> list[int]:
        return []

    return app


@pytest.mark.parametrize("limits", ["default_limits", "application_limits"])
def test_fastapi_docs_pages_are_exempt_by_default(limits: str) -> None:
    """/docs, /redoc, /openapi.json and the OAuth2 redirect are served however often they
    are read, and spend none of the API's default or application quota."""
    app = api()
    Throttle(app, Limiter(clock=FakeClock()), **{limits: "2/minute"})  # type: ignore[arg-type]
    assert statuses(app, DOC_PAGES * 5) == [200] * 20
    assert statuses(app, ["/items"] * 3) == [200, 200, 429]


def test_fastapi_docs_pages_count_with_exempt_docs_false() -> None:
    """exempt_docs=False: the pages are routes like any other, each its own counter."""
    app = api()
    Throttle(app, Limiter(clock=FakeClock()), default_limits="2/minute", exempt_docs=False)
    assert statuses(app, ["/docs"] * 3 + ["/openapi.json"] * 3) == [200, 200, 429] * 2


def test_fastapi_docs_pages_moved_or_turned_off() -> None:
    """The exemption follows docs_url/openapi_url; a user route at the old path is
    limited, and an app without docs pages still works."""
    app = api(docs_url="/api-docs", redoc_url=None, openapi_url="/schema.json")

    @app.get("/docs")
    async def not_the_docs() -> str:
        return "mine"

    Throttle(app, Limiter(clock=FakeClock()), default_limits="1/minute")
    assert statuses(app, ["/api-docs"] * 3 + ["/schema.json"] * 3) == [200] * 6
    assert statuses(app, ["/docs"] * 2) == [200, 429]
    bare = api(docs_url=None, redoc_url=None, openapi_url=None)
    Throttle(bare, Limiter(clock=FakeClock()), default_limits="1/minute")
    assert statuses(bare, ["/items"] * 2) == [200, 429]


def test_fastapi_docs_exemption_is_per_app() -> None:
    """Exempting one app's pages leaves another app's (exempt_docs=False) counted."""
    exempted, counted = api(), api()
    Throttle(exempted, Limiter(clock=FakeClock()), default_limits="1/minute")
    Throttle(counted, Limiter(clock=FakeClock()), default_limits="1/minute",
             exempt_docs=False)
    assert statuses(exempted, ["/docs"] * 2) == [200, 200]
    assert statuses(counted, ["/docs"] * 2) == [200, 429]


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_flask_example_health_is_never_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/flask_app.py: /health answers 200 past both the default limit (30) and
    the site-wide rule (100); the other routes are still limited by both."""
    monkeypatch.setenv("THROTTLEKIT_STORAGE_URL", "memory://")
    # The example's limiter counts its minute limits in fixed windows of the real clock: the
    # counts below hold when no minute boundary falls among the requests, else the example
    # is served again from scratch (a precondition, not a timing).
    for _attempt in range(3):
        minute = time.time() // 60
        module = _load(ROOT / "examples" / "flask_app.py", "tk_example_flask_app")
        client = module.app.test_client()
        health = {client.get("/health").status_code for _ in range(150)}
        root = [client.get("/").status_code for _ in range(31)]
        module.limiter.reset_rules("127.0.0.1")
        module.limiter.reset("127.0.0.1")
        for i in range(100):  # the site-wide rule still counts every other path
            client.get(f"/nowhere/{i}")
        last = client.get("/nowhere/last").status_code
        if time.time() // 60 == minute:
            break
    else:
        pytest.fail("a minute boundary fell among the requests of each of 3 tries")
    assert health == {200}
    assert root == [200] * 30 + [429]
    assert last == 429
