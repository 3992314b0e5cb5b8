"""Top offenders shared through the store, as `throttlekit top --storage` reads them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from werkzeug.test import Client

from throttlekit import Limiter, WSGIMiddleware
from throttlekit.monitor import Monitor
from throttlekit.monitor._store import top_of
from throttlekit.testing import FakeClock


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """Always 200."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_memory_store_reads_the_monitors_of_this_process() -> None:
    """With the memory store, the offenders are those the monitors on that store counted."""
    clock = FakeClock(1_700_000_000.0)
    limiter = Limiter(clock=clock)
    limiter.track("all")
    monitor = Monitor(limiter)
    c = Client(WSGIMiddleware(app, limiter))
    for ip, n in (("203.0.113.5", 4), ("198.51.100.1", 1)):
        for _ in range(n):
            c.get("/", environ_base={"REMOTE_ADDR": ip})
    assert monitor.requests == 5
    assert monitor.client_counts(clock()) == {"203.0.113.5": 4, "198.51.100.1": 1}
    assert monitor.client_counts(clock(), since=clock() + 1) == {}
    assert top_of(limiter.storage, 10, clock()) == {"203.0.113.5": 4, "198.51.100.1": 1}
    assert top_of(Limiter().storage, 10, clock()) == {}  # another store: nothing
