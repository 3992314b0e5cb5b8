"""Admission control under real servers: uvicorn (ASGI) and gunicorn (WSGI, gthread and
sync workers) serving a deliberately slow app on loopback, under many more concurrent
clients than it can serve.

The app does 50 ms of work per request, at most ``CAPACITY`` at once (a semaphore: more
wait their turn). Each server is started twice, with ``limiter.admission()`` and without;
the same load then shows the difference: without admission every request queues and the
p99 latency grows with the number of clients; with it, the admitted requests' p99 stays
within a few times the app's unloaded latency and the excess is shed at once (503 with
``Retry-After``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SRC = Path(__file__).resolve().parent.parent / "src"
#: requests the app serves at once, and its work per request
CAPACITY = 4
WORK = 0.05
#: concurrent clients of the load: 12 times the capacity
CLIENTS = 48
#: seconds a shed client waits before its next request (less than any Retry-After; with
#: none, 48 clients ask for some 10,000 refusals a second, and under gthread an admitted
#: request then waits for the GIL behind the threads answering them)
PAUSE = WORK
#: seconds of warm-up at the app's capacity (admission measures its unloaded latency),
#: of load, and of the load's start left out of the figures (admission's limit adapts
#: once a second: it comes down from where the warm-up left it in a few windows)
WARMUP, LOAD, SETTLE = 2.0, 8.0, 4.0

APP = f'''
import asyncio
import os
import threading
import time

import throttlekit

limiter = throttlekit.Limiter("memory://")
if os.environ["TK_ADMISSION"] == "1":
    limiter.admission(initial_limit={CAPACITY})  # below the capacity, as the docs say

_threads = threading.BoundedSemaphore({CAPACITY})


def wsgi_inner(environ, start_response):
    with _threads:
        time.sleep({WORK})
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


_tasks = None


async def asgi_inner(scope, receive, send):
    global _tasks
    if scope["type"] != "http":
        return
    if _tasks is None:
        _tasks = asyncio.Semaphore({CAPACITY})
    async with _tasks:
        await asyncio.sleep({WORK})
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", b"2")]}})
    await send({{"type": "http.response.body", "body": b"ok"}})


wsgi = throttlekit.WSGIMiddleware(wsgi_inner, limiter)
asgi = throttlekit.ASGIMiddleware(asgi_inner, limiter)
'''


def _argv(kind: str, port: int) -> list[str]:
    if kind == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
                "--log-level", "warning", "--no-access-log", "tk_slow_app:asgi"]
    worker = ["--worker-class", "gthread", "--threads", str(CLIENTS)] if kind == "gthread" \
        else ["--workers", str(CAPACITY)]  # sync: one request per worker at a time
    return [sys.executable, "-m", "gunicorn", *worker, "--bind", f"127.0.0.1:{port}",
            "--backlog", "2048", "--log-level", "warning", "tk_slow_app:wsgi"]


@contextlib.contextmanager
def _server(kind: str, app_dir: Path, admission: bool) -> Iterator[str]:
    """The slow app under ``kind``, with admission control or without; its base URL."""
    from servers import free_port, http_app

    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(app_dir)]),
           "TK_ADMISSION": "1" if admission else "0"}
    with http_app(_argv(kind, port), port, "/up", env=env, settle=0.3) as base:
        yield base


class Load:
    """What ``clients`` concurrent clients, each sending one request after the other for
    ``seconds`` over its own keep-alive connection, got: latencies of the 200s, and the
    503s' Retry-After values; counted from ``settle`` seconds on (the 200s sent before are
    in ``early``). Raw HTTP/1.1 on asyncio streams: a client costs the test a few
    microseconds a request, so the load measures the server, not the load generator."""

    def __init__(self, base: str, clients: int, seconds: float, settle: float = 0.0) -> None:
        self.ok: list[float] = []
        self.early: list[float] = []
        self.shed: list[str | None] = []
        self.other: list[int] = []
        self.port = int(base.rsplit(":", 1)[1])
        self.counted_from = time.monotonic() + settle
        self.end = time.monotonic() + seconds
        asyncio.run(self._run(clients))

    async def _run(self, clients: int) -> None:
        await asyncio.gather(*(self._client() for _ in range(clients)))

    async def _client(self) -> None:
        request = b"GET /work HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            while time.monotonic() < self.end:
                sent = time.monotonic()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status, headers = _head(head)
                await reader.readexactly(int(headers.get("content-length", "0")))
                if status == 200:
                    (self.ok if sent >= self.counted_from else self.early).append(
                        time.monotonic() - sent)
                elif status == 503:
                    self.shed.append(headers.get("retry-after"))
                    await asyncio.sleep(PAUSE)
                else:
                    self.other.append(status)
                if headers.get("connection", "").lower() == "close":  # sync workers
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        finally:
            writer.close()

    def p(self, q: float) -> float:
        found = sorted(self.ok)
        return found[min(len(found) - 1, int(q * len(found)))]


def _head(head: bytes) -> tuple[int, dict[str, str]]:
    """An HTTP/1.1 response head: its status and header fields (lowercase names)."""
    lines = head.decode("latin-1").split("\r\n")
    fields = (line.partition(":") for line in lines[1:] if line)
    return int(lines[0].split()[1]), {k.strip().lower(): v.strip() for k, _, v in fields}


def _measure(kind: str, app_dir: Path, admission: bool) -> tuple[Load, Load]:
    """The app's latency at its capacity (the warm-up), then under the load."""
    with _server(kind, app_dir, admission) as base:
        unloaded = Load(base, CAPACITY, WARMUP)
        return unloaded, Load(base, CLIENTS, LOAD, SETTLE)


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slowapp")
    (path / "tk_slow_app.py").write_text(textwrap.dedent(APP))
    return path


def _admission_bounds_latency(kind: str, app_dir: Path) -> None:
    unloaded, without = _measure(kind, app_dir, admission=False)
    base = unloaded.p(0.5)
    assert WORK <= base < 4 * WORK, base  # the app's own latency, unloaded
    assert not without.shed and not without.other
    assert without.p(0.99) > 5 * base  # everyone queues: p99 explodes

    warm, loaded = _measure(kind, app_dir, admission=True)
    assert not warm.shed  # at its capacity the app is not overloaded
    assert not loaded.other
    assert loaded.p(0.99) < 5 * base, (loaded.p(0.99), base)  # admitted: bounded
    assert loaded.p(0.99) < without.p(0.99) / 2
    assert len(loaded.ok) >= 0.5 * len(without.ok)  # the app keeps working at capacity
    assert len(loaded.shed) > len(loaded.ok)  # the excess is shed ...
    assert all(r is not None and int(r) >= 1 for r in loaded.shed)  # ... with Retry-After


@pytest.mark.parametrize("kind", ["uvicorn", "gthread"])
def test_admitted_latency_stays_bounded_while_the_excess_is_shed(kind, app_dir):
    """uvicorn and gunicorn's gthread workers queue requests inside the process, where
    admission control sees them: the excess is shed and the admitted requests' p99 stays
    within 5 times the unloaded latency; without admission the same load's p99 explodes
    (12 times the work, everyone queued)."""
    _admission_bounds_latency(kind, app_dir)


@pytest.mark.xfail(strict=True, reason=(
    "gunicorn sync workers serve one request at a time: the queue is in the listening "
    "socket's backlog, before the app, where admission control cannot see it (in flight "
    "never passes 1 per worker); run gthread (threads above the app's capacity)"))
def test_admission_under_gunicorn_sync_workers(app_dir):
    _admission_bounds_latency("sync", app_dir)
