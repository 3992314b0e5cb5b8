"""The examples, served by real servers on loopback: gunicorn (Flask), uvicorn (FastAPI)
and uvicorn with Django's ASGI app; the 429s checked over HTTP."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from servers import free_port, http_app

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@contextlib.contextmanager
def serve(argv: list[str], cwd: Path) -> Iterator[str]:
    port = free_port()
    argv = [a.replace("{port}", str(port)) for a in argv]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(cwd)])
    env.pop("WEB_CONCURRENCY", None)
    env["THROTTLEKIT_STORAGE_URL"] = "memory://"
    with http_app(argv, port, "/health", env=env, cwd=cwd) as base:
        yield base


def _clear_of_a_minute_boundary(margin: float = 10.0) -> None:
    """The examples count their minute limits in fixed windows of the real clock (the served
    process's): a count checked below holds within one window, so a section that counts
    starts at least ``margin`` seconds before the next minute (if less is left, it waits
    for the minute to turn: a precondition, not a timing)."""
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.05)


def _check_search(base: str, path: str = "/search") -> None:
    _clear_of_a_minute_boundary()
    with httpx.Client(base_url=base, timeout=10) as c:
        got = [c.get(path) for _ in range(4)]
    assert [r.status_code for r in got] == [200, 200, 200, 429]
    refused = got[-1]
    assert 0 < int(refused.headers["retry-after"]) <= 60
    assert refused.headers["cache-control"] == "no-store"
    assert "q=3;w=60" in refused.headers["ratelimit-policy"]
    assert "ratelimit" in got[0].headers


def test_flask_example_under_gunicorn() -> None:
    """examples/flask_app.py under gunicorn: /search admits 3 a minute, /health is exempt."""
    argv = [sys.executable, "-m", "gunicorn", "-w", "1", "-b", "127.0.0.1:{port}",
            "flask_app:app"]
    with serve(argv, EXAMPLES) as base:
        _check_search(base)
        # over the default limit (30) and the site-wide rule (100): exempt means exempt
        with httpx.Client(base_url=base) as c:
            assert {c.get("/health").status_code for _ in range(120)} == {200}
        _clear_of_a_minute_boundary()
        with httpx.Client(base_url=base) as c:
            statuses = [c.get("/").status_code for _ in range(31)]
        assert statuses == [200] * 30 + [429]  # the default limit, per route


def test_fastapi_example_under_uvicorn() -> None:
    """examples/fastapi_app.py under uvicorn: decorator, dependency and OpenAPI 429."""
    argv = [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--port", "{port}",
            "--host", "127.0.0.1", "--no-access-log"]
    with serve(argv, EXAMPLES) as base:
        _check_search(base)
        _clear_of_a_minute_boundary()
        with httpx.Client(base_url=base) as c:
            items = [c.get(f"/items/{i}") for i in range(6)]
            as_json = c.get("/items/9", headers={"Accept": "application/json"})
            schema = c.get("/openapi.json").json()
        assert [r.status_code for r in items] == [200] * 5 + [429]
        assert [r.json()["remaining"] for r in items[:5]] == [4, 3, 2, 1, 0]
        # the dependency's refusal is the middleware's (Throttle installs the handler)
        assert items[-1].text == "Too Many Requests: rate limit exceeded.\n"
        assert items[-1].headers["content-type"] == "text/plain; charset=utf-8"
        assert as_json.status_code == 429
        assert as_json.headers["content-type"] == "application/problem+json"
        assert as_json.json()["violated-policies"] == ["fastapi_app.read_item"]
        assert "429" in schema["paths"]["/items/{item_id}"]["get"]["responses"]
        with httpx.Client(base_url=base) as c:  # exempt and safelisted; the docs: exempt
            assert {c.get("/health").status_code for _ in range(120)} == {200}
            assert {c.get("/docs").status_code for _ in range(40)} == {200}


def test_django_example_under_uvicorn_asgi() -> None:
    """examples/django_project under uvicorn (Django ASGI): async view and CBV limited."""
    argv = [sys.executable, "-m", "uvicorn", "shop.asgi:application", "--port", "{port}",
            "--host", "127.0.0.1", "--no-access-log"]
    with serve(argv, EXAMPLES / "django_project") as base:
        _check_search(base)
        with httpx.Client(base_url=base) as c:  # exempt and safelisted: never a 429
            assert {c.get("/health").status_code for _ in range(120)} == {200}
        _clear_of_a_minute_boundary()
        with httpx.Client(base_url=base) as c:
            posts = [c.post("/cart").status_code for _ in range(3)]
            gets = [c.get("/cart").status_code for _ in range(3)]
        assert posts == [200, 200, 429] and gets == [200, 200, 200]
