"""The operator's page in a real browser: headless Chromium (Debian's ``chromium``) loads the
status page from a real uvicorn on loopback, runs its script under the page's CSP, fetches
the JSON again every few seconds and shows request rates by outcome, the dimensions and the
admission limit. Each JSON fetch here first sends 40 allowed and 10 blocked requests and
moves the monitor's clock 5 s, so the rates the page must show are exact.

Without Chromium the test is skipped, except under ``CI=true`` (see test_challenge_browser).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from test_asgi import serve  # a real uvicorn on a spare loopback port
from test_challenge_browser import chromium
from throttlekit import Limiter, WSGIMiddleware
from throttlekit.monitor import Monitor
from throttlekit.monitor.incident import Incidents
from throttlekit.monitor.status import ASGIStatusMiddleware, StatusEndpoint
from throttlekit.testing import FakeClock

pytestmark = pytest.mark.browser

BLOCKED = "192.0.2.66"


def environ(ip: str) -> dict[str, Any]:
    return {"REQUEST_METHOD": "GET", "PATH_INFO": "/home", "QUERY_STRING": "",
            "REMOTE_ADDR": ip, "HTTP_USER_AGENT": "<b>agent</b>", "wsgi.url_scheme": "http",
            "SERVER_NAME": "x", "SERVER_PORT": "80"}


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-dev-shm-usage")


def dump_dom(browser: str, url: str, profile: Path, budget_ms: int) -> tuple[str, str]:
    """The DOM after ``budget_ms`` of virtual time (timers run, fetches answered), and
    the browser's stderr."""
    args = [browser, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
            "--dump-dom", url]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    return done.stdout, done.stderr


def row(dom: str, *cells: str) -> bool:
    return re.search("<tr>" + "".join(rf"<td[^>]*>{c}</td>" for c in cells) + "</tr>",
                     dom) is not None


def test_chromium_shows_the_rates_after_the_refresh(tmp_path: Path) -> None:
    browser = chromium()
    clock = FakeClock()
    limiter = Limiter(clock=clock)
    limiter.throttle("per-ip", "100/second")
    limiter.admission(initial_limit=12)
    limiter.block(BLOCKED, reason="test")
    monitor = Monitor(limiter)
    endpoint = StatusEndpoint(monitor, limiter=limiter, incidents=Incidents(monitor))
    traffic = WSGIMiddleware(app, limiter)
    fetches: list[str] = []

    def send_traffic() -> None:
        clock.advance(5.0)
        for i in range(40):
            list(traffic(environ(f"198.51.100.{i}"), lambda *a: None))
        for _ in range(10):
            list(traffic(environ(BLOCKED), lambda *a: None))

    async def status(scope: dict[str, Any], receive: Any, send: Any) -> None:
        query = scope.get("query_string", b"").decode()
        fetches.append(query)
        if query == "format=json":
            send_traffic()
        await ASGIStatusMiddleware(app_404, endpoint)(scope, receive, send)

    send_traffic()
    with serve(status) as port:
        dom, errors = dump_dom(browser, f"http://127.0.0.1:{port}/throttlekit/status?format=html",
                               tmp_path / "profile", budget_ms=10_000)
    assert fetches[0] == "format=html" and "format=json" in fetches, fetches
    assert row(dom, "allowed", r"\d+", r"8\.0/s"), (dom[-3000:], errors[-2000:])
    assert row(dom, "blocked", r"\d+", r"2\.0/s")
    assert row(dom, "throttled", "0", r"0\.0/s")
    assert row(dom, "/home", r"\d+", r"[\d.]+", r"[\d.]+")  # the path dimension
    assert row(dom, "&lt;b&gt;agent&lt;/b&gt;", r"\d+", r"[\d.]+", r"[\d.]+")  # as text
    assert row(dom, "12", "0", "-", "-", "0", "(yes|no)")  # the admission limit
    assert row(dom, BLOCKED, "never", "test")
    assert 'id="error"></p>' in dom  # no refresh failed


async def app_404(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})
