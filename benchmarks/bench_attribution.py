"""What the monitor's request dimensions cost per request (attribution's counting).

Run: ``python -m pytest benchmarks/bench_attribution.py --benchmark-enable --benchmark-only -s``

The WSGI middleware with a per-IP throttle, a Monitor and a Shield, with and without the
dimensions beyond the client key (path, user agent, header fingerprint, /24 and /16), on
browser-like requests (seven headers, three header orders, 1,000 clients, 200 paths).
``test_dimension_cost_ratio`` interleaves the variants and reports, in one run: the
monitor's overhead over the middleware's own without dimensions and with them, and the
ratio of the two (the dimensions' added cost), asserted through the ``target`` fixture of
benchmarks/conftest.py (the target when measuring, a loose bound in the smoke pass).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest

from throttlekit import Limiter, WSGIMiddleware
from throttlekit.monitor import Monitor, Shield
from throttlekit.testing import FakeClock

CLIENTS = [f"10.{i // 250}.{i % 250}.1" for i in range(1000)]
SHAPES = [
    ("HTTP_HOST", "HTTP_CONNECTION", "HTTP_USER_AGENT", "HTTP_ACCEPT", "HTTP_ACCEPT_ENCODING",
     "HTTP_ACCEPT_LANGUAGE", "HTTP_COOKIE"),
    ("HTTP_HOST", "HTTP_ACCEPT", "HTTP_ACCEPT_LANGUAGE", "HTTP_USER_AGENT",
     "HTTP_ACCEPT_ENCODING", "HTTP_CONNECTION"),
    ("HTTP_HOST", "HTTP_USER_AGENT", "HTTP_ACCEPT", "HTTP_ACCEPT_LANGUAGE",
     "HTTP_ACCEPT_ENCODING", "HTTP_CONNECTION", "HTTP_COOKIE"),
]
VARIANTS = ("bare", "unmonitored", "monitored", "dimensions")


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _environs() -> list[dict[str, Any]]:
    out = []
    for i, ip in enumerate(CLIENTS):
        env: dict[str, Any] = {
            "REQUEST_METHOD": "GET", "PATH_INFO": f"/products/{i % 200}", "QUERY_STRING": "",
            "REMOTE_ADDR": ip, "SERVER_NAME": "b", "SERVER_PORT": "80",
            "wsgi.url_scheme": "http",
        }
        values = {"HTTP_HOST": "b", "HTTP_CONNECTION": "keep-alive",
                  "HTTP_USER_AGENT": f"Mozilla/5.0 (browser {i % 3}) Chrome/120.{i % 7}",
                  "HTTP_ACCEPT": "text/html,*/*", "HTTP_ACCEPT_ENCODING": "gzip, br",
                  "HTTP_ACCEPT_LANGUAGE": ("en-US", "de-DE", "fr-FR")[i % 3],
                  "HTTP_COOKIE": "session=1"}
        for name in SHAPES[i % 3]:
            env[name] = values[name]
        out.append(env)
    return out


def _variant(kind: str) -> Callable[[], None]:
    """One request per call, from 1000 rotating clients, time moving 1 ms per request."""
    clock = FakeClock()
    target: Callable[..., Any] = _app
    if kind != "bare":
        limiter = Limiter(clock=clock)
        limiter.throttle("per-ip", "20/second; 600/minute", strategy="token_bucket")
        if kind != "unmonitored":
            Shield(limiter, Monitor(limiter, dimensions=None if kind == "dimensions" else ()))
        target = WSGIMiddleware(_app, limiter)
    environs = itertools.cycle(_environs())

    def ignore(status: str, headers: Any, exc_info: Any = None) -> None:
        return None

    def request() -> None:
        clock.now += 0.001
        for _ in target(dict(next(environs)), ignore):
            pass

    for _ in range(3000):  # every client known, the monitor past its first buckets
        request()
    return request


@pytest.mark.parametrize("kind", VARIANTS)
def test_request(benchmark, kind):
    """One request through each variant."""
    benchmark.group = "monitor dimensions (WSGI, per-ip throttle, browser headers)"
    benchmark(_variant(kind))


def _cpu_per_request(n: int, rounds: int) -> dict[str, float]:
    """Microseconds of this process's CPU time per request of each variant, the best of
    ``rounds`` interleaved runs (a busy machine's other processes do not count)."""
    variants = {k: _variant(k) for k in VARIANTS}
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(rounds):
        for kind, request in variants.items():
            began = time.process_time()
            for _ in range(n):
                request()
            best[kind] = min(best[kind], (time.process_time() - began) / n * 1e6)
    return best


def test_dimension_cost_ratio(target):
    """The dimensions add at most 1.3x to the monitor's overhead (same run)."""
    us = target.run(lambda: _cpu_per_request(*target.size((20_000, 7), (3_000, 5))))
    middleware = us["unmonitored"] - us["bare"]
    without = us["monitored"] - us["unmonitored"]
    with_dims = us["dimensions"] - us["unmonitored"]
    ratio = (us["dimensions"] - us["bare"]) / (us["monitored"] - us["bare"])
    print(
        f"\nper request: bare {us['bare']:.2f} µs, middleware {middleware:.2f} µs; "
        f"monitor + shield {without:.2f} µs without dimensions, {with_dims:.2f} µs with "
        f"(the dimensions: +{with_dims - without:.2f} µs); ratios: monitored/unmonitored "
        f"{(us['monitored'] - us['bare']) / middleware:.2f} without dimensions, "
        f"{(us['dimensions'] - us['bare']) / middleware:.2f} with; "
        f"with/without dimensions {ratio:.2f} (target <= 1.3)"
    )
    target.at_most("monitor overhead with / without dimensions", ratio, 1.3)
