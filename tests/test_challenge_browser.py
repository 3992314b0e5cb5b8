"""The proof-of-work page in a real browser: headless Chromium (Debian's ``chromium``) loads
a challenged page from a real uvicorn on loopback, runs the page's script (Web Crypto on
``http://localhost``, a secure context), posts the answer, follows the 303 and lands on the
app with the pass cookie.

Without Chromium the test is skipped, except under ``CI=true``, where a missing browser is a
failure (``.ci/run`` installs it).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from servers import unavailable
from test_asgi import serve  # a real uvicorn on a spare loopback port
from throttlekit import ASGIMiddleware, Event, Limiter

pytestmark = pytest.mark.browser

KEY = b"an operator secret of 32 bytes!!"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        unavailable("chromium is not installed; install the Debian package 'chromium': "
                    "apt-get install chromium")
    return found


def test_chromium_solves_the_work_page_and_lands_on_the_app(tmp_path: Path) -> None:
    browser = chromium()
    lim = Limiter()
    lim.challenge(key=KEY, work=True, difficulty=8)
    challenged: list[Event] = []
    lim.on("challenged", challenged.append)
    reached: list[tuple[str, bool]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        cookie = dict(scope["headers"]).get(b"cookie", b"").decode()
        has_pass = "throttlekit_pass=" in cookie
        reached.append((scope["path"] + "?" + scope["query_string"].decode(), has_pass))
        page = (f"<!DOCTYPE html><title>app</title><p id='landed'>the app, "
                f"{'with' if has_pass else 'without'} a pass</p>")
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/html; charset=utf-8")]})
        await send({"type": "http.response.body", "body": page.encode()})

    with serve(ASGIMiddleware(app, lim)) as port:
        out = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=20000", "--dump-dom",
             f"http://localhost:{port}/article?id=7"],
            capture_output=True, text=True, timeout=120, check=False)
    assert "the app, with a pass" in out.stdout, (out.stdout[-2000:], out.stderr[-2000:])
    # the app saw the page once, after the work was done; nothing reached it without a
    # pass (the browser may also ask for /favicon.ico, with the cookie by then)
    assert [p for p, _ in reached if p.startswith("/article")] == ["/article?id=7"]
    assert all(has_pass for _, has_pass in reached)
    assert [e.request.path for e in challenged] == ["/article"]  # solved at the first try
