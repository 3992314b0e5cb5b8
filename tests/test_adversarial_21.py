"""Session 21's adversary: the changes of this session attacked as an attacker or a tired
operator would, against real servers (a redis-server of the test's own for anything that
restarts it)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import RedisServer, start_or_skip
from throttlekit import Limiter, storage_from_url
from throttlekit.testing import FakeClock

RATE = "5/hour"


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with start_or_skip(RedisServer()) as s:
        yield s


#: the time of the limiters below (this process's and the operator's): the tests count
#: hits exactly in one fixed window, which on the real clock an hour boundary between two
#: hits would reset
CLOCK = FakeClock()


def _fixed(url: str) -> Limiter:
    return Limiter(storage_from_url(url, prefix="a21:"), strategy="fixed_window",
                   retry_interval=0.1, clock=CLOCK)


@pytest.mark.redis
@pytest.mark.slow
def test_reset_after_redis_restarted_forgets_the_fixed_window(server: RedisServer) -> None:
    """Redis restarted empty (the id registry gone with it) mid-window: the windows counted
    after the restart are still found by reset(), from this process and from another one."""
    limiter = _fixed(server.url)
    assert limiter.hit("k", RATE).remaining == 4
    server.stop()
    server.start()  # empty: the registry of fixed-window ids is gone
    for _ in range(3):
        limiter.hit("k", RATE)
    assert limiter.hit("k", RATE).remaining == 1
    limiter.reset("k")
    assert limiter.hit("k", RATE).remaining == 4  # the window was forgotten
    for _ in range(2):
        limiter.hit("k", RATE)
    operator = _fixed(server.url)  # another process: the admin CLI's reset
    operator.reset("k")
    assert limiter.hit("k", RATE).remaining == 4
    limiter.storage.close()
    operator.storage.close()


@pytest.mark.redis
@pytest.mark.slow
def test_areset_after_redis_restarted_forgets_the_fixed_window(server: RedisServer) -> None:
    """The async twin: ahit after the restart registers the ids again for areset()."""
    limiter, operator = _fixed(server.url), _fixed(server.url)

    async def run() -> list[int]:
        seen = [(await limiter.ahit("k", RATE)).remaining]
        server.stop()
        server.start()
        while (await limiter.ahit("k", RATE)).degraded:  # (the broken connection: local)
            await asyncio.sleep(0.1)  # until the breaker tries the store again
        for _ in range(2):
            await limiter.ahit("k", RATE)
        seen.append((await limiter.ahit("k", RATE)).remaining)
        await operator.areset("k")
        seen.append((await limiter.ahit("k", RATE)).remaining)
        await limiter.storage.aclose()  # type: ignore[attr-defined]
        await operator.storage.aclose()  # type: ignore[attr-defined]
        return seen

    assert asyncio.run(run()) == [4, 1, 4]


def test_flask_rules_behind_proxyfix_key_each_client() -> None:
    """``app.wsgi_app = ProxyFix(...)`` then ``Throttle(app, limiter)`` (the usual order, and
    the one docs/client-ip.md advises with trusted_proxies=0): the limiter's rules see each
    client's address, not the proxy's; one client behind the proxy cannot use up everyone's
    limit."""
    flask = pytest.importorskip("flask")
    from werkzeug.middleware.proxy_fix import ProxyFix

    from throttlekit import MemoryStorage
    from throttlekit.contrib.flask import Throttle

    lim = Limiter(MemoryStorage(), clock=FakeClock())  # (exact counts: a clock of its own)
    lim.throttle("per-ip", "2/minute", key="ip")
    app = flask.Flask(__name__)
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)
    Throttle(app, lim)
    Throttle(app, lim)  # a second one (a tired operator): the rules still run once
    app.get("/")(lambda: "ok")
    client = app.test_client()

    def status(ip: str) -> int:
        return int(client.get("/", environ_base={"REMOTE_ADDR": "10.0.0.1"},
                          headers={"X-Forwarded-For": ip}).status_code)

    assert [status("203.0.113.1") for _ in range(3)] == [200, 200, 429]
    assert [status(f"203.0.113.{i}") for i in range(2, 6)] == [200] * 4


def test_feed_ipv4_mapped_entries_are_held_to_the_ipv4_min_prefix(tmp_path: Path) -> None:
    """A feed's ``::ffff:0:0/96`` is every IPv4 client (the set stores IPv4-mapped networks
    as IPv4): min_prefix skips it, and a mapped /4, as it skips 0.0.0.0/0; a narrow mapped
    network is kept."""
    from throttlekit._blocklists import Blocklist

    feed = tmp_path / "feed.txt"
    feed.write_text("::ffff:0:0/96\n::ffff:16.0.0.0/100\n::ffff:198.51.100.0/120\n")
    bl = Blocklist(str(feed))
    assert "198.51.100.7" in bl and "::ffff:198.51.100.7" in bl
    assert "203.0.113.9" not in bl and "17.1.2.3" not in bl
    assert "::ffff:203.0.113.9" not in bl


def test_memory_block_eviction_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """More bans without expiry than max_keys (none can be dropped), then timed ones: the
    warning that bans are dropped comes once, when one is, not on every block() before."""
    import logging

    from throttlekit import MemoryStorage

    store = MemoryStorage(max_keys=2)
    with caplog.at_level(logging.WARNING, logger="throttlekit"):
        for i in range(6):
            store.block(f"203.0.113.{i}", None)
        store.block("198.51.100.1", 60)
        store.block("198.51.100.2", 60)
    warned = [r for r in caplog.records if "max_keys" in r.getMessage()]
    assert len(warned) == 1
    assert store.stats()["blocks_evicted"] == 2
    assert store.stats()["blocks"] == 6


def _register(server: RedisServer, now_ms: int, *pairs: tuple[int, str]) -> None:
    script = (Path(__file__).parent.parent / "src/throttlekit/storage/redis/lua/register.lua"
              ).read_text()
    flat = [x for score, ident in pairs for x in (score, ident)]
    server.command("EVAL", script, 1, "reg", now_ms, *flat)


@pytest.mark.redis
def test_the_id_registry_holds_across_hosts_with_skewed_clocks(server: RedisServer) -> None:
    """Hosts' clocks differ: a host 30 minutes ahead drops no id another host registered, a
    lower score never replaces a higher one, and a host two hours behind Redis's clock does
    not make the registry expire at once."""
    real = int(server.command("TIME")[0]) * 1000
    _register(server, real, (real + 120_000, "fw-a"))
    _register(server, real + 1_800_000, (real + 1_800_000 + 120_000, "fw-b"))  # 30 min ahead
    _register(server, real, (real + 60_000, "fw-b"))  # a lower score for fw-b
    members = server.command("ZRANGE", "reg", 0, -1, "WITHSCORES")
    scores = {members[i].decode() if isinstance(members[i], bytes) else members[i]:
              float(members[i + 1]) for i in range(0, len(members), 2)}
    assert scores == {"fw-a": real + 120_000, "fw-b": real + 1_800_000 + 120_000}
    server.command("DEL", "reg")
    behind = real - 7_200_000  # two hours behind Redis
    _register(server, behind, (behind + 120_000, "fw-c"))
    assert int(server.command("PTTL", "reg")) > 3_600_000
