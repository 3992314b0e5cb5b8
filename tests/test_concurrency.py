"""Concurrency rules (requests in flight) and priority load shedding, on memory and Redis,
through the real WSGI and ASGI middleware, and a real gunicorn worker killed mid-request."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from werkzeug.test import Client

from servers import free_port, needs_shared_redis
from throttlekit import ASGIMiddleware, ConfigError, Limiter, WSGIMiddleware
from throttlekit._responses import Denial  # public: docs/responses.md
from throttlekit.storage import MemoryStorage, storage_from_url
from throttlekit.testing import FakeClock

SRC = Path(__file__).resolve().parent.parent / "src"
REDIS = "redis://127.0.0.1:6379/0"




needs_redis = needs_shared_redis()


@pytest.fixture(params=["memory", pytest.param("redis", marks=[pytest.mark.redis, needs_redis])])
def storage_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh store: memory, or the shared Redis under a unique prefix."""
    if request.param == "memory":
        yield "memory://"
        return
    prefix = f"tk-test-conc:{uuid.uuid4().hex[:12]}:"
    yield f"{REDIS}?prefix={prefix}"
    import redis

    r = redis.Redis.from_url(REDIS)
    keys = list(r.scan_iter(match=f"{prefix}*"))
    if keys:
        r.delete(*keys)
    r.close()


class Holding:
    """A WSGI app whose /hold requests wait until released; counts who is inside."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.inside = 0
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/boom":
            raise RuntimeError("boom")
        if environ["PATH_INFO"] == "/hold":
            with self.lock:
                self.inside += 1
            self.release.wait(10)
            with self.lock:
                self.inside -= 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]


def hold(mw: WSGIMiddleware, app: Holding, n: int, headers: dict[str, str] | None = None
         ) -> list[threading.Thread]:
    """Start n /hold requests and wait until all are inside the app."""
    target = app.inside + n
    def one() -> None:
        Client(mw).get("/hold", headers=headers, environ_base={"REMOTE_ADDR": "10.0.0.1"},
                       buffered=True)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while app.inside < target:
        assert time.monotonic() < deadline, "held requests did not reach the app"
        time.sleep(0.002)
    return threads


def finish(app: Holding, threads: list[threading.Thread]) -> None:
    app.release.set()
    for t in threads:
        t.join(10)
    app.release.clear()


# -- concurrency rules -------------------------------------------------------------------


def test_n_in_flight_then_the_next_is_refused(storage_url: str) -> None:
    """With N requests in flight the N+1th gets 429 + Retry-After; once they finish, room again."""
    limiter = Limiter(storage_url)
    limiter.concurrency("inflight", 3, timeout=30)
    app = Holding()
    mw = WSGIMiddleware(app, limiter)
    threads = hold(mw, app, 3)
    try:
        r = Client(mw).get("/", buffered=True)
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "1"
        assert limiter.inflight("inflight") == 3
    finally:
        finish(app, threads)
    assert limiter.inflight("inflight") == 0
    assert Client(mw).get("/", buffered=True).status_code == 200


def test_per_client_key_counts_each_client(storage_url: str) -> None:
    """key="client": one client's slow requests do not take another client's slots."""
    limiter = Limiter(storage_url)
    limiter.concurrency("per-client", 1, key="client")
    app = Holding()
    mw = WSGIMiddleware(app, limiter)
    threads = hold(mw, app, 1)  # from 10.0.0.1
    try:
        same = Client(mw).get("/", environ_base={"REMOTE_ADDR": "10.0.0.1"}, buffered=True)
        assert same.status_code == 429
        other = Client(mw).get("/", environ_base={"REMOTE_ADDR": "198.51.100.9"}, buffered=True)
        assert other.status_code == 200
    finally:
        finish(app, threads)


def test_slot_released_when_app_raises_or_iteration_fails() -> None:
    """A failing app or a failing response iterable still gives its slot back."""
    limiter = Limiter()
    limiter.concurrency("one", 1)

    def failing_body(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"a"
        raise RuntimeError("mid-body")

    for inner in (Holding(), failing_body):
        mw = WSGIMiddleware(inner, limiter)
        with pytest.raises(RuntimeError):
            Client(mw).get("/boom", buffered=True)
        assert limiter.inflight("one") == 0
        assert Client(WSGIMiddleware(Holding(), limiter)).get("/", buffered=True).status_code == 200


def test_streaming_response_holds_its_slot_until_closed() -> None:
    """The slot is held while the server still sends the body, released on close()."""
    limiter = Limiter()
    limiter.concurrency("one", 1)
    mw = WSGIMiddleware(Holding(), limiter)
    started: list[Any] = []
    body = mw({"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "10.0.0.1",
               "wsgi.input": None}, lambda s, h, e=None: started.append(s))
    assert started == ["200 OK"]
    assert limiter.inflight("one") == 1
    assert Client(mw).get("/", buffered=True).status_code == 429
    body.close()  # type: ignore[attr-defined]
    assert limiter.inflight("one") == 0


def test_lease_of_a_crashed_request_expires_after_timeout(clock: FakeClock) -> None:
    """A request that never finishes (its worker died) holds its slot only until the timeout."""
    limiter = Limiter(clock=clock)
    limiter.concurrency("one", 1, timeout=5)
    mw = WSGIMiddleware(Holding(), limiter)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "10.0.0.1"}
    mw(dict(environ), lambda s, h, e=None: None)  # never closed: the worker "crashed"
    assert Client(mw).get("/", buffered=True).status_code == 429
    clock.advance(4.9)
    assert Client(mw).get("/", buffered=True).status_code == 429
    clock.advance(0.2)
    assert Client(mw).get("/", buffered=True).status_code == 200


def test_safelisted_and_refused_requests_take_no_slot() -> None:
    """Safelisted requests skip concurrency rules; refused ones never take a lease."""
    limiter = Limiter()
    limiter.safelist("health", lambda r: r.path == "/healthz")
    limiter.blocklist("bad", lambda r: r.path == "/bad")
    limiter.concurrency("one", 1)
    app = Holding()
    mw = WSGIMiddleware(app, limiter)
    threads = hold(mw, app, 1)
    try:
        assert Client(mw).get("/healthz", buffered=True).status_code == 200
        assert Client(mw).get("/bad", buffered=True).status_code == 403
        assert limiter.inflight("one") == 1
    finally:
        finish(app, threads)


@pytest.mark.parametrize("url", ["memory://", pytest.param(REDIS, marks=[pytest.mark.redis,
                                                                       needs_redis])])
def test_asgi_in_flight_limit_and_release(url: str) -> None:
    """ASGI: the second concurrent request is refused; the slot comes back when the app
    returns, also when it raises."""
    if url != "memory://":
        url = f"{url}?prefix=tk-test-conc:{uuid.uuid4().hex[:12]}:"
    limiter = Limiter(url)
    limiter.concurrency("one", 1, timeout=30)
    gate = asyncio.Event()

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        if scope["path"] == "/hold":
            await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = ASGIMiddleware(inner, limiter)

    async def call(path: str) -> int:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": path, "headers": [],
                 "client": ("10.0.0.1", 1234), "query_string": b""}
        await mw(scope, receive, send)
        return int(sent[0]["status"])

    async def scenario() -> None:
        held = asyncio.create_task(call("/hold"))
        for _ in range(200):
            await asyncio.sleep(0.005)
            if await limiter.storage.ainflight("conc:one:*") == 1:
                break
        assert await call("/") == 429
        gate.set()
        assert await held == 200
        with pytest.raises(RuntimeError):
            await call("/boom")
        assert await call("/") == 200
        aclose = getattr(limiter.storage, "aclose", None)
        if aclose is not None:
            await aclose()

    asyncio.run(scenario())


# -- load shedding -----------------------------------------------------------------------


def _priority(view: Any) -> int:
    return 1 if view.headers.get("x-priority") == "high" else 0


def test_load_shedding_refuses_low_priority_first(storage_url: str) -> None:
    """Past the threshold, low-priority requests get 503 + Retry-After while high-priority
    ones still get the reserved capacity; at full capacity everyone is shed."""
    limiter = Limiter(storage_url)
    limiter.shed(4, priority=_priority, thresholds=(0.5, 1.0), retry_after=2)
    app = Holding()
    mw = WSGIMiddleware(app, limiter)
    high = {"X-Priority": "high"}
    threads = hold(mw, app, 2)  # 2 low in flight: 50% of capacity
    try:
        low = Client(mw).get("/", buffered=True)
        assert low.status_code == 503
        assert low.headers["Retry-After"] == "2"
        assert Client(mw).get("/", headers=high, buffered=True).status_code == 200
        threads += hold(mw, app, 2, high)  # 4 in flight: full
        assert Client(mw).get("/", headers=high, buffered=True).status_code == 503
        assert limiter.inflight("shedding") == 4
    finally:
        finish(app, threads)
    assert Client(mw).get("/", buffered=True).status_code == 200


def test_a_shed_refusal_takes_a_custom_responder() -> None:
    """"shed" is a responder kind: the 503 of load shedding can be answered the app's way
    (Retry-After and the Decision given to the responder), the 429 kind keeps its own."""
    limiter = Limiter("memory://")
    limiter.shed(1, retry_after=7)
    seen: list[tuple[str, str, float | None]] = []

    def busy(kind: str, rule: str, decision: Any, accept: Any, headers: Any) -> Denial:
        seen.append((kind, rule, decision.retry_after if decision else None))
        return Denial(503, [("Retry-After", "7"), ("Content-Type", "text/html")], b"<p>busy</p>")

    app = Holding()
    mw = WSGIMiddleware(app, limiter, responders={"shed": busy})
    threads = hold(mw, app, 1)
    try:
        r = Client(mw).get("/", buffered=True)
    finally:
        finish(app, threads)
    assert (r.status, r.headers["Content-Type"], r.get_data()) == (
        "503 Service Unavailable", "text/html", b"<p>busy</p>")
    assert seen == [("shed", "shedding", 7.0)]


def test_synthetic_overload_sheds_low_priority_traffic(storage_url: str) -> None:
    """Under a burst of mixed traffic far above capacity, low priority is shed much more."""
    limiter = Limiter(storage_url)
    limiter.shed(6, priority=_priority, thresholds=(0.5, 1.0))
    app = Holding()
    mw = WSGIMiddleware(app, limiter)
    codes: dict[str, list[int]] = {"low": [], "high": []}

    def one(kind: str) -> None:
        headers = {"X-Priority": "high"} if kind == "high" else {}
        codes[kind].append(Client(mw).get("/hold", headers=headers, buffered=True).status_code)

    threads = [threading.Thread(target=one, args=("low" if i % 2 else "high",))
               for i in range(24)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while len(codes["low"]) + len(codes["high"]) + app.inside < 24:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    app.release.set()
    for t in threads:
        t.join(10)
    served = {k: v.count(200) for k, v in codes.items()}
    assert served["low"] + served["high"] == 6
    assert served["low"] <= 3  # low priority never goes past 50% of capacity
    assert served["high"] >= 3
    assert set(codes["low"]) | set(codes["high"]) == {200, 503}


def test_priority_function_that_raises_counts_as_lowest(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    """A broken priority function never fails a request: it is treated as priority 0."""
    limiter = Limiter()

    def broken(view: Any) -> int:
        raise ValueError("oops")

    limiter.shed(2, priority=broken, thresholds=(0.5, 1.0))
    app = Holding()
    mw = WSGIMiddleware(app, limiter)
    threads = hold(mw, app, 1)
    try:
        assert Client(mw).get("/", buffered=True).status_code == 503
    finally:
        finish(app, threads)
    assert "priority function failed" in caplog.text


class FailingRelease(MemoryStorage):
    """Leases are taken, but giving one back fails as an unreachable store would."""

    def release(self, keys: Any, lease_id: str) -> None:
        raise ConnectionError("store down")


def test_a_failing_release_is_logged_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    """The response is served; the failure is logged (the lease expires on its own)."""
    limiter = Limiter(FailingRelease())
    limiter.concurrency("c", 1)
    client = Client(WSGIMiddleware(Holding(), limiter))
    assert client.get("/x", buffered=True).status_code == 200  # buffered: the body closed
    assert "concurrency release failed (ConnectionError: store down)" in caplog.text


def test_a_failing_async_release_is_logged_never_raised(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    from throttlekit._concurrency import Lease

    limiter = Limiter(FailingRelease())
    limiter.concurrency("c", 1)
    conc = limiter.engine.concurrency
    assert conc is not None
    lease = Lease(conc, limiter.storage, ["conc:c:*"], "l1")
    asyncio.run(lease.arelease())
    assert "concurrency release failed (ConnectionError: store down)" in caplog.text
    assert lease.keys == []  # released once: a second call does nothing


# -- configuration and the storage primitive ---------------------------------------------


def test_bad_configuration_is_refused_at_setup() -> None:
    """Bad limits, thresholds or duplicate names raise ConfigError naming the value."""
    limiter = Limiter()
    with pytest.raises(ConfigError, match="limit must be a positive integer"):
        limiter.concurrency("c", 0)
    with pytest.raises(ConfigError, match="increasing fractions"):
        limiter.shed(10, thresholds=(0.9, 0.5))
    limiter.throttle("t", "1/second")
    with pytest.raises(ConfigError, match="duplicate rule name 't'"):
        limiter.concurrency("t", 1)


def test_load_shedding_and_a_rule_cannot_share_the_name_shedding(tmp_path: Path) -> None:
    """Load shedding's refusals and events are named ``"shedding"``: a throttle or a
    concurrency rule of that name is refused, before or after ``shed()``, in code and in
    a rules file; ``shed()`` called again reconfigures it."""
    limiter = Limiter()
    limiter.throttle("shedding", "10/minute")
    with pytest.raises(ConfigError, match=r"duplicate rule name 'shedding' \(already a throttle\)"):
        limiter.shed(10)
    limiter = Limiter()
    limiter.shed(10)
    limiter.shed(20)  # a second call replaces the first
    with pytest.raises(ConfigError, match="duplicate rule name 'shedding'"):
        limiter.throttle("shedding", "10/minute")
    with pytest.raises(ConfigError, match="duplicate rule name 'shedding'"):
        limiter.concurrency("shedding", 3)
    limiter.throttle("per-ip", "10/minute")  # other names are fine
    rules = tmp_path / "rules.toml"
    rules.write_text('[[throttle]]\nname = "shedding"\nrates = "5/second"\n')
    with pytest.raises(ConfigError, match="duplicate rule name 'shedding'"):
        limiter.load_rules(rules)
    # a file's own shedding replaces the code's, as before
    rules.write_text("[shedding]\ncapacity = 5\n")
    limiter.load_rules(rules)
    conc = limiter.engine.concurrency
    assert conc is not None and conc.shedding is not None and conc.shedding.capacity == 5


def test_backend_without_leases_is_refused() -> None:
    """A storage without leases (Memcached) cannot host concurrency rules: a clear error."""

    class NoLeases(MemoryStorage):
        supports_leases = False

    with pytest.raises(ConfigError, match="need a storage with leases"):
        Limiter(NoLeases()).concurrency("c", 1)


def test_lease_primitive_matches_between_memory_and_redis(storage_url: str) -> None:
    """acquire/release/inflight: all-or-nothing over keys, expiry by the given time."""
    s = storage_from_url(storage_url)
    now = 1_700_000_000_000_000
    assert s.acquire(["a", "b"], [2, 1], "l1", 5.0, now) == -1
    assert s.acquire(["a", "b"], [2, 1], "l2", 5.0, now) == 1  # b is full...
    assert s.inflight("a", now) == 1  # ...and nothing was taken in a
    assert s.acquire(["a"], [2], "l3", 5.0, now) == -1
    assert s.acquire(["a"], [2], "l4", 5.0, now) == 0
    s.release(["a", "b"], "l1")
    assert (s.inflight("a", now), s.inflight("b", now)) == (1, 0)
    later = now + 5_000_001
    assert s.inflight("a", later) == 0  # l3 expired
    assert s.acquire(["a"], [1], "l5", 5.0, later) == -1
    s.close()


# -- a real gunicorn worker killed mid-request -------------------------------------------

GUNICORN_APP = '''
import os, time
import throttlekit

limiter = throttlekit.Limiter(os.environ["TK_STORAGE"])
limiter.concurrency("inflight", 1, timeout=float(os.environ["TK_TIMEOUT"]))


def inner(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        with open(os.environ["TK_PIDFILE"], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(120)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]


app = throttlekit.WSGIMiddleware(inner, limiter)
'''


@contextlib.contextmanager
def _gunicorn(app_dir: Path, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", "2", "--timeout", "300",
         "--bind", f"127.0.0.1:{port}", "--log-level", "warning", "tk_conc_app:app"],
        env=env, cwd=app_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "gunicorn exited"
            try:
                httpx.get(base + "/up", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "gunicorn did not answer"
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _until(predicate: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "condition not reached"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.mark.redis
@pytest.mark.e2e
@pytest.mark.slow
@needs_redis
def test_killed_gunicorn_worker_releases_its_slot_when_the_lease_times_out(tmp_path: Path
                                                                           ) -> None:
    """SIGKILL a real gunicorn worker mid-request: its slot stays taken (429) until the
    lease timeout, then the limit admits requests again."""
    timeout = 3.0
    (tmp_path / "tk_conc_app.py").write_text(textwrap.dedent(GUNICORN_APP))
    pidfile = tmp_path / "slow.pid"
    prefix = f"tk-test-conc:{uuid.uuid4().hex[:12]}:"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(tmp_path)]),
           "TK_STORAGE": f"{REDIS}?prefix={prefix}", "TK_TIMEOUT": str(timeout),
           "TK_PIDFILE": str(pidfile)}
    with _gunicorn(tmp_path, env) as base:
        slow = threading.Thread(target=_get, args=(base + "/slow",))
        slow.start()
        _until(pidfile.exists, 10)
        started = time.monotonic()
        worker = int(_until_text(pidfile))
        refused = httpx.get(base + "/", timeout=5)
        assert refused.status_code == 429  # N+1 on a real server
        os.kill(worker, signal.SIGKILL)
        slow.join(10)
        # the dead worker's lease is still there: refused until it times out
        assert httpx.get(base + "/", timeout=5).status_code == 429
        _until(lambda: httpx.get(base + "/", timeout=5).status_code == 200, 15)
        waited = time.monotonic() - started
        assert timeout - 0.5 <= waited <= timeout + 5
        ok = httpx.get(base + "/", timeout=5)
        assert ok.status_code == 200 and int(ok.text) != worker


def _get(url: str) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(url, timeout=30)


def _until_text(path: Path) -> str:
    text = ""
    deadline = time.monotonic() + 5
    while not text:
        text = path.read_text().strip()
        assert time.monotonic() < deadline
    return text
