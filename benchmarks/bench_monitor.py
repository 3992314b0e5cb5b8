"""What monitoring costs per request: the WSGI middleware with and without a Monitor (+ Shield).

Run: ``python -m pytest benchmarks/bench_monitor.py --benchmark-enable --benchmark-only -s``

A trivial WSGI app, one per-IP throttle, 1,000 rotating clients, the clock moving 1 ms per
request (1,000 requests a second, so the monitor counts its dimensions for 1 request in
4). Overhead = (middleware + app) - bare app, in CPU time (``time.thread_time``: a loaded
machine's other processes do not count), interleaved rounds, medians (of each round's
ratio, for the targets).

Targets (issue 14), asserted by ``test_overhead_ratio`` and ``test_monitor_per_event``:

- the overhead with a Monitor, and with a Monitor + Shield, is at most :data:`TARGET`
  (1.3x) the overhead without them, measured in the same run;
- the Monitor's own work per event (events recorded from the middleware, fed to
  ``Monitor.event_fields`` in a loop, as the limiter tells it) is at most ``TARGET - 1`` of
  the middleware's overhead.

They assert through the ``target`` fixture of benchmarks/conftest.py: the target itself
when measuring (the command above), a loose bound in the smoke pass (fewer rounds), so a
2x regression of the monitor's cost still fails CI.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest

from throttlekit import Limiter, WSGIMiddleware
from throttlekit.monitor import Monitor, Shield
from throttlekit.testing import FakeClock

#: issue 14: the overhead with monitoring at most this many times the overhead without
TARGET = 1.3

CLIENTS = [f"10.{i // 250}.{i % 250}.1" for i in range(1000)]
VARIANTS = ("bare", "unmonitored", "listened", "monitored", "shielded")


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _ignore(event: Any) -> None:
    return None


def _start_response(status: str, headers: Any, exc_info: Any = None) -> None:
    return None


def _limiter(clock: FakeClock) -> Limiter:
    limiter = Limiter(clock=clock)
    limiter.throttle("per-ip", "20/second; 600/minute", strategy="token_bucket")
    return limiter


def _variant(kind: str, listener: Callable[[Any], object] | None = None) -> Callable[[], None]:
    """One request per call, from 1000 rotating clients, time moving 1 ms per request."""
    clock = FakeClock()
    target: Callable[..., Any] = _app
    if kind != "bare":
        limiter = _limiter(clock)
        if kind == "listened":  # what any listener costs: the engine's events
            limiter.on(_ignore)
        elif kind == "monitored":
            Monitor(limiter)
        elif kind == "shielded":
            Shield(limiter, Monitor(limiter))
        if listener is not None:
            limiter.on(listener)
        target = WSGIMiddleware(_app, limiter)
    environs = [
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": "", "REMOTE_ADDR": ip,
         "SERVER_NAME": "b", "SERVER_PORT": "80", "wsgi.url_scheme": "http",
         "HTTP_USER_AGENT": "bench/1.0", "HTTP_ACCEPT": "*/*"}
        for ip in CLIENTS
    ]
    state = [0]

    def one() -> None:
        i = state[0] = (state[0] + 1) % 1000
        clock.now += 0.001
        for _ in target(dict(environs[i]), _start_response):
            pass

    for _ in range(3000):  # warm: every client known, monitor past its first buckets
        one()
    return one


def _cpu_per_call(fn: Callable[[], None], n: int) -> float:
    t = time.thread_time()
    for _ in range(n):
        fn()
    return (time.thread_time() - t) / n


@pytest.mark.parametrize("kind", VARIANTS)
def test_request(benchmark, kind):
    """One request through the bare app, the middleware, + a Monitor, + a Monitor and Shield."""
    benchmark.group = "monitor overhead (WSGI, per-ip throttle)"
    benchmark(_variant(kind))


def _rounds(n: int, rounds: int) -> list[dict[str, float]]:
    """Per interleaved round: CPU seconds per request of each variant but the bare app,
    less the bare app's of the same round."""
    fns = {k: _variant(k) for k in VARIANTS}
    out: list[dict[str, float]] = []
    for _ in range(rounds):
        per = {k: _cpu_per_call(fn, n) for k, fn in fns.items()}
        out.append({k: per[k] - per["bare"] for k in VARIANTS[1:]})
    return out


def _overheads(n: int, rounds: int) -> dict[str, float]:
    """Median CPU seconds per request of each variant over interleaved rounds, minus
    the bare app's of the same round."""
    each = _rounds(n, rounds)
    return {k: statistics.median(r[k] for r in each) for k in VARIANTS[1:]}


def test_overhead_ratio(target):
    """With a Monitor, and with a Monitor + Shield, the middleware's overhead is at most
    1.3x its overhead without them (same run). Asserted: the median over rounds of each
    round's ratio (a round's variants run back to back, so a change of the shared
    machine's load between rounds cancels out; the ratio of the medians is printed too)."""
    n, rounds = target.size((20_000, 9), (2_000, 3))
    each = target.run(lambda: _rounds(n, rounds))
    o = {k: statistics.median(r[k] for r in each) for k in VARIANTS[1:]}
    ratios = {k: statistics.median(r[k] / r["unmonitored"] for r in each)
              for k in ("monitored", "shielded")}
    print(
        f"\noverhead: throttle {o['unmonitored'] * 1e6:.2f} µs, + a no-op listener "
        f"{o['listened'] * 1e6:.2f} µs, + Monitor {o['monitored'] * 1e6:.2f} µs, + Monitor "
        f"+ Shield {o['shielded'] * 1e6:.2f} µs; ratio per round, median: "
        f"{ratios['monitored']:.2f}x, {ratios['shielded']:.2f}x (of the medians: "
        f"{o['monitored'] / o['unmonitored']:.2f}x, {o['shielded'] / o['unmonitored']:.2f}x)"
        f"; target <= {TARGET}"
    )
    for k, ratio in ratios.items():
        target.at_most(f"{k} / unmonitored overhead", ratio, TARGET)


def _events(n: int) -> list[Any]:
    """``n`` events as the middleware emits them (the 1000 rotating clients)."""
    events: list[Any] = []
    one = _variant("unmonitored", events.append)
    events.clear()
    for _ in range(n):
        one()
    return events


def _monitor_cost(events: list[Any], shield: bool) -> float:
    """CPU seconds per event of a fresh Monitor (+ Shield) fed ``events``, past warm-up."""
    clock = FakeClock()
    limiter = _limiter(clock)  # the monitor subscribes to it; the events are fed by hand
    monitor = Monitor(limiter)
    if shield:
        Shield(limiter, monitor)
    warm = len(events) // 3
    told = monitor.event_fields  # what the limiter calls: the event's fields, no Event
    for event in events[:warm]:
        told(*event)
    rest = events[warm:]
    t = time.thread_time()
    for event in rest:
        told(*event)
    return (time.thread_time() - t) / len(rest)


def _own_costs(n: int, rounds: int) -> dict[str, float]:
    """Median CPU seconds: the middleware's overhead per request, and the Monitor's (+
    Shield's) per event, interleaved."""
    events = _events(n)
    fns = {"bare": _variant("bare"), "unmonitored": _variant("unmonitored")}
    own: dict[str, list[float]] = {"throttle": [], "monitor": [], "shield": []}
    for _ in range(rounds):
        bare = _cpu_per_call(fns["bare"], n // 3)
        own["throttle"].append(_cpu_per_call(fns["unmonitored"], n // 3) - bare)
        own["monitor"].append(_monitor_cost(events, False))
        own["shield"].append(_monitor_cost(events, True))
    return {k: statistics.median(v) for k, v in own.items()}


def test_monitor_per_event(target):
    """The Monitor's (+ Shield's) own work per event is at most 0.3x the middleware's
    overhead (same run): Monitor.event_fields fed recorded events in a loop."""
    n, rounds = target.size((60_000, 7), (9_000, 3))
    m = target.run(lambda: _own_costs(n, rounds))
    share = {k: m[k] / m["throttle"] for k in ("monitor", "shield")}
    print(
        f"\nthrottle overhead {m['throttle'] * 1e6:.2f} µs; Monitor per event "
        f"{m['monitor'] * 1e6:.2f} µs ({share['monitor']:.2f}x), + Shield "
        f"{m['shield'] * 1e6:.2f} µs ({share['shield']:.2f}x); target <= {TARGET - 1:.1f}"
    )
    for k, value in share.items():
        target.at_most(f"{k} per event / throttle overhead", value, round(TARGET - 1, 2))


if __name__ == "__main__":
    # Instruction counts and simulated cache misses, without the noise of a loaded machine:
    # only the requests inside reduce count (the set-up and the 3,000 warm-up requests not).
    #   PYTHONHASHSEED=0 valgrind --tool=callgrind --cache-sim=yes --collect-atstart=no \
    #       --toggle-collect='*functools_reduce*' python benchmarks/bench_monitor.py KIND N
    # KIND: one of VARIANTS; callgrind_annotate's totals divided by N.
    import functools
    import sys

    one = _variant(sys.argv[1])
    functools.reduce(lambda _, __: one(), range(int(sys.argv[2])), None)
