"""The memory store's dynamic blocklist is bounded by ``max_keys``, as its counters are: a
flood of distinct offenders (each banned) cannot grow it without bound."""

from __future__ import annotations

import logging
from typing import Any

from throttlekit import Limiter, WSGIMiddleware
from throttlekit.storage import MemoryStorage

NOW = 1_000 * 1_000_000


def test_beyond_max_keys_the_bans_ending_soonest_are_dropped(caplog: Any) -> None:
    s = MemoryStorage(max_keys=3)
    with caplog.at_level(logging.WARNING, logger="throttlekit"):
        for i, ttl in enumerate((50, 10, 40, 30, 20)):
            s.block(f"ip{i}", ttl, "ban", now=NOW)
    held = {b.key for b in s.blocked(now=NOW)}
    assert held == {"ip0", "ip2", "ip3"}  # the three ending last
    assert s.stats()["blocks"] == 3 and s.stats()["blocks_evicted"] == 2
    assert len([r for r in caplog.records if "max_keys" in r.getMessage()]) == 1


def test_blocks_without_an_expiry_are_never_dropped() -> None:
    """An operator's permanent blocks stay, even beyond max_keys; timed bans make room."""
    s = MemoryStorage(max_keys=2)
    s.block("forever-a", None, now=NOW)
    s.block("forever-b", None, now=NOW)
    s.block("timed", 60, now=NOW)
    s.block("forever-c", None, now=NOW)
    assert {b.key for b in s.blocked(now=NOW)} == {"forever-a", "forever-b", "forever-c"}


def test_a_flood_of_banned_offenders_holds_at_most_max_keys_bans() -> None:
    """Through the limiter: fail2ban bans each of 500 scanners; the store holds at most
    max_keys bans, and the latest offenders are the ones still refused."""
    store = MemoryStorage(max_keys=100)
    lim = Limiter(store)
    lim.fail2ban("scanners", match=lambda r: r.path.startswith("/wp-"), maxretry=1,
                 findtime=60, bantime=600)

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    mw = WSGIMiddleware(app, lim)

    def status(ip: str, path: str) -> str:
        got: list[str] = []
        env = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": ip,
               "SERVER_NAME": "t", "SERVER_PORT": "80"}
        b"".join(mw(env, lambda s, h, e=None: got.append(s)))
        return got[0][:3]

    for i in range(500):
        status(f"10.0.{i // 250}.{i % 250}", "/wp-login.php")
    assert store.stats()["blocks"] <= 100
    assert status("10.0.1.249", "/") == "403"  # the latest offender: still banned
