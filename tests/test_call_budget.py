"""Python function calls per request: a deterministic speed guard beside the benchmarks.

Counts the ``call`` events ``sys.setprofile`` sees (every Python frame entered, including
generator and coroutine resumptions; C functions not) while one allowed request goes through
``WSGIMiddleware`` / ``ASGIMiddleware`` in-process, on a memory store, with a trivial app, or
while ``Limiter.hit`` runs. The number may not rise more than 10% above the baseline measured
before the engine refactor; a step that lowers it should lower the baseline too.

The ASGI coroutine is driven by hand (``send(None)`` until it returns): on a memory store the
middleware has no reason to wait on the event loop, so no loop calls are counted.

Baselines measured on CPython 3.11 (3.12+ inlines comprehensions: fewer calls) with
    PYTHONPATH=src python tests/test_call_budget.py
(it prints today's counts beside the baselines), at the start of the engine refactor (plan
step 0.1, branch e-guards).
"""

from __future__ import annotations

import gc
import io
import sys
from collections.abc import Callable, Coroutine, Iterable
from types import FrameType
from typing import Any

import pytest

from throttlekit import ASGIMiddleware, Limiter, WSGIMiddleware
from throttlekit.testing import FakeClock

RATE = "1000000/minute"
PEER = "198.51.100.7"
WARMUP = 5  # requests before the one counted: first-use caches and lazy imports settle
MARGIN = 1.10

BASELINE = {
    "wsgi-one": 11,
    "wsgi-full": 49,
    "wsgi-two-rates": 18,
    "asgi-one": 14,
    "asgi-full": 55,
    "asgi-two-rates": 23,
    "limiter-hit": 4,
}


def _rules(limiter: Limiter, variant: str) -> Limiter:
    if variant == "one":
        limiter.throttle("per-ip", RATE)
    elif variant == "two-rates":
        limiter.throttle("per-ip", f"{RATE}; 10000000/hour")
    else:  # full: a safelist, a blocklist, fail2ban and two throttles, none of them refusing
        limiter.safelist("health", lambda r: r.path == "/healthz")
        limiter.blocklist("bad-nets", ips=["203.0.113.0/24", "2001:db8:bad::/48"])
        limiter.fail2ban("scanners", match=lambda r: r.path.startswith("/wp-"), maxretry=3,
                         findtime=60, bantime=600)
        limiter.throttle("per-ip", RATE)
        limiter.throttle("per-ip-burst", RATE, strategy="token_bucket")
    return limiter


def _limiter(variant: str) -> Limiter:
    return _rules(Limiter("memory://", clock=FakeClock()), variant)


def count_calls(fn: Callable[[], Any]) -> int:
    """The Python frames entered while ``fn`` runs (``fn``'s own frame not counted)."""
    calls = 0

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    # A garbage collection inside ``fn`` would count the finalizers of whatever earlier
    # tests left behind (werkzeug's EnvironBuilder.__del__...): none runs while the collector
    # is off. (No gc.collect() first: late in the suite it costs ~0.4 s of CPU each time.)
    enabled = gc.isenabled()
    gc.disable()
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
        if enabled:
            gc.enable()
    return calls - 1


def _environ() -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/", "QUERY_STRING": "",
        "SERVER_NAME": "test", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": PEER, "HTTP_HOST": "test", "HTTP_ACCEPT": "*/*",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(), "wsgi.multithread": False, "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


# A case: ``prepare()`` builds one request's inputs (not counted) and returns the call to
# count; ``check()`` then asserts the request was allowed.
Request = tuple[Callable[[], Callable[[], Any]], Callable[[], None]]


def _wsgi_request(variant: str) -> Request:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    middleware = WSGIMiddleware(app, _limiter(variant))
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    def request() -> Callable[[], None]:
        environ = _environ()

        def run() -> None:
            result = middleware(environ, start_response)
            for _chunk in result:
                pass
            close = getattr(result, "close", None)
            if close is not None:
                close()

        return run

    def check() -> None:
        assert statuses == ["200 OK"]
        statuses.clear()

    return request, check


def _drive(coro: Coroutine[Any, Any, Any]) -> None:
    try:
        yielded = coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise AssertionError(f"the ASGI path waited on the event loop ({yielded!r}) on a memory "
                         "store; count it with a loop or keep the memory path loop-free")


def _asgi_request(variant: str) -> Request:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = ASGIMiddleware(app, _limiter(variant))
    statuses: list[int] = []
    message = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    def request() -> Callable[[], None]:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": "/", "raw_path": b"/",
            "query_string": b"", "root_path": "",
            "headers": [(b"host", b"test"), (b"accept", b"*/*")],
            "client": (PEER, 40000), "server": ("test", 80),
        }
        return lambda: _drive(middleware(scope, receive, send))

    def check() -> None:
        assert statuses == [200]
        statuses.clear()

    return request, check


def _hit_request() -> Request:
    limiter = Limiter("memory://", clock=FakeClock())
    decisions: list[Any] = []

    def check() -> None:
        assert decisions.pop().allowed

    return lambda: lambda: decisions.append(limiter.hit("user:42", RATE)), check


def _request(case: str) -> Request:
    if case == "limiter-hit":
        return _hit_request()
    kind, variant = case.split("-", 1)
    return (_wsgi_request if kind == "wsgi" else _asgi_request)(variant)


def calls_per_request(case: str) -> int:
    """Calls of one allowed request once warm (the same for three requests in a row)."""
    prepare, check = _request(case)
    for _ in range(WARMUP):
        prepare()()
        check()
    counts = set()
    for _ in range(3):
        counts.add(count_calls(prepare()))
        check()
    assert len(counts) == 1, f"{case}: the count is not steady: {sorted(counts)}"
    return counts.pop()


@pytest.mark.parametrize("case", sorted(BASELINE))
def test_calls_per_request_within_budget(case: str) -> None:
    calls = calls_per_request(case)
    assert calls <= BASELINE[case] * MARGIN, (
        f"{case}: {calls} Python calls per request, over the baseline {BASELINE[case]} + 10%: "
        "the hot path grew (trace it: sys.setprofile, see calls_per_request)"
    )


def test_the_counter_counts() -> None:
    def two() -> None:
        one()
        one()

    def one() -> None:
        pass

    assert count_calls(two) == 2  # the two calls of one(); two itself is not counted


if __name__ == "__main__":
    for case in sorted(BASELINE):
        print(f"{case}: {calls_per_request(case)} (baseline {BASELINE[case]})")
