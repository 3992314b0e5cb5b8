"""Trying to get a blocked client through the local denial cache of blocks and bans, or to
keep a client refused after an operator lifted its block: IPv6 networks, bans keyed by a
header, a ban expiring, a dead store, threads racing an unblock, many banned clients. Two
limiters on one prefix of a redis-server of our own are two workers."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from servers import RedisServer, start_or_skip
from throttlekit import Limiter, RequestView, storage_from_url
from throttlekit._denials import BLOCK_HOLD, CHECK_INTERVAL, DenialCache
from throttlekit._rules import DYNAMIC_RULE
from throttlekit.storage import RedisStorage
from throttlekit.storage.base import Block
from throttlekit.testing import FakeClock

pytestmark = pytest.mark.redis
IP = "192.0.2.77"


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with start_or_skip(RedisServer()) as s:
        yield s


@pytest.fixture
def stores(server: RedisServer, request: pytest.FixtureRequest) -> Iterator[list[RedisStorage]]:
    """Two storages on one prefix of our server: two workers."""
    prefix = f"breakb-{request.node.name}:"
    made = [storage_from_url(server.url, prefix=prefix) for _ in range(2)]
    yield made  # type: ignore[misc]
    for s in made:
        s.close()


def _limiter(store: Any, clock: FakeClock, **options: Any) -> Limiter:
    limiter = Limiter(store, clock=clock, **options)
    limiter.throttle("per-ip", "1000/hour", strategy="fixed_window")
    limiter.fail2ban("logins", match=lambda v: v.path == "/login", maxretry=2,
                     findtime=60, bantime=30, key=lambda v: v.headers.get("x-user"))
    return limiter


def _view(limiter: Limiter, ip: str = IP, path: str = "/", user: str | None = None
          ) -> RequestView:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": ip}
    if user is not None:
        environ["HTTP_X_USER"] = user
    return RequestView.from_environ(environ, limiter.resolver)


def _commands(server: RedisServer) -> int:
    stats = server.command("INFO", "commandstats")
    return sum(int(line.split("calls=")[1].split(",")[0]) for line in stats.splitlines()
               if line.startswith("cmdstat_") and not line.startswith(("cmdstat_info",
                                                                       "cmdstat_config")))


def test_an_ipv6_network_block_refuses_every_address_in_it_as_the_store_does(
        server: RedisServer, stores: list[RedisStorage]) -> None:
    clock = FakeClock()
    worker, other = _limiter(stores[0], clock), _limiter(stores[1], clock)
    other.block("2001:db8:1:2::/64", 600)
    first = worker.evaluate(_view(worker, "2001:db8:1:2::5"))  # the store's verdict
    server.command("CONFIG", "RESETSTAT")
    cached = [worker.evaluate(_view(worker, f"2001:db8:1:2::{i:x}")) for i in range(6, 20)]
    assert _commands(server) == 0
    assert (first.kind, first.rule, first.key) == ("blocked", DYNAMIC_RULE, "2001:db8:1:2::/64")
    assert {(v.kind, v.rule, v.key) for v in cached} == {(first.kind, first.rule, first.key)}
    assert worker.evaluate(_view(worker, "2001:db8:1:3::5")).allowed  # the next /64
    assert other.unblock("2001:db8:1:2::99")  # an address of the network lifts it
    clock.advance(CHECK_INTERVAL)
    assert worker.evaluate(_view(worker, "2001:db8:1:2::5")).allowed


def test_a_ban_keyed_by_a_header_follows_the_user_across_addresses_until_unbanned(
        server: RedisServer, stores: list[RedisStorage]) -> None:
    clock = FakeClock()
    worker, other = _limiter(stores[0], clock), _limiter(stores[1], clock)
    for ip in ("198.51.100.1", "198.51.100.2"):
        assert worker.evaluate(_view(worker, ip, "/login", "alice")).kind == "banned"
    server.command("CONFIG", "RESETSTAT")
    kinds = [worker.evaluate(_view(worker, f"203.0.113.{i}", "/", "alice")).kind
             for i in range(10)]
    assert kinds == ["banned"] * 10 and _commands(server) == 0
    assert worker.evaluate(_view(worker, "203.0.113.1", "/", "bob")).allowed
    assert worker.evaluate(_view(worker, "203.0.113.1", "/")).allowed  # no header: no ban
    assert other.unblock("fail2ban:logins:alice")
    clock.advance(CHECK_INTERVAL)
    assert worker.evaluate(_view(worker, "203.0.113.9", "/", "alice")).allowed


def test_a_ban_ends_at_its_bantime_in_the_worker_that_made_it_and_in_another(
        server: RedisServer, stores: list[RedisStorage]) -> None:
    clock = FakeClock()
    worker, other = _limiter(stores[0], clock), _limiter(stores[1], clock)
    for _ in range(2):
        worker.evaluate(_view(worker, IP, "/login", "carol"))
    assert other.evaluate(_view(other, IP, "/", "carol")).kind == "banned"  # cached there
    clock.advance(30 - 0.001)
    assert [lim.evaluate(_view(lim, IP, "/", "carol")).kind for lim in (worker, other)] == [
        "banned", "banned"]
    clock.advance(0.001)
    assert [lim.evaluate(_view(lim, IP, "/", "carol")).kind for lim in (worker, other)] == [
        "allowed", "allowed"]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("policy", "unknown"), [("allow", "allowed"), ("deny", "throttled"),
                                                 ("local", "allowed")])
def test_a_dead_store_still_refuses_a_cached_block_raises_nothing_and_logs(
        server: RedisServer, stores: list[RedisStorage], caplog: pytest.LogCaptureFixture,
        policy: str, unknown: str, mode: str) -> None:
    """Whatever the fail policy, a block cached before the store died is served until the
    hold ends (the generation cannot be read: logged, never raised); other clients get the
    policy's answer, and so does the blocked one after the hold."""
    clock = FakeClock()
    worker = _limiter(stores[0], clock, on_storage_error=policy)

    def kind(ip: str = IP) -> str:
        if mode == "sync":
            return worker.evaluate(_view(worker, ip)).kind
        return asyncio.run(worker.aevaluate(_view(worker, ip))).kind

    worker.block(IP, 600)
    assert kind() == "blocked"
    server.stop()
    caplog.set_level(logging.ERROR)
    kinds = []
    for _ in range(5):
        clock.advance(CHECK_INTERVAL)  # each request reads the generation: it fails
        kinds.append(kind())
    assert kinds == ["blocked"] * 5
    assert kind("192.0.2.78") == unknown
    assert any("failed" in r.getMessage() for r in caplog.records)
    clock.advance(BLOCK_HOLD)  # the hold over, the store is asked again: the policy answers
    assert kind() == unknown


def test_no_request_is_refused_blocked_after_an_unblock_returns_while_threads_hammer(
        server: RedisServer, stores: list[RedisStorage]) -> None:
    """Threads sending one blocked client's requests while another thread unblocks it: once
    ``unblock`` returned, no request that starts after it is refused (this worker)."""
    limiter = Limiter(stores[0])
    limiter.throttle("per-ip", "100000/hour", strategy="fixed_window")
    def hammer(lifted: threading.Event, stop: threading.Event, late: list[str]) -> None:
        while not stop.is_set():
            after = lifted.is_set()
            verdict = limiter.evaluate(_view(limiter))
            if after and not verdict.allowed:
                late.append(verdict.kind)

    for _round in range(5):
        limiter.block(IP, 600)
        lifted, stop = threading.Event(), threading.Event()
        late: list[str] = []
        threads = [threading.Thread(target=hammer, args=(lifted, stop, late))
                   for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.05)
        assert limiter.unblock(IP)
        lifted.set()
        time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join()
        assert late == []


def test_many_banned_clients_keep_the_cache_bounded_and_a_lookup_cheap() -> None:
    """A cache of 10,000 full of blocks that end one by one as new ones come (a botnet of
    banned clients coming back as their cached bans end): a prune that frees one entry
    must not come again at the next new block; bounded, and cheap per request."""
    clock = FakeClock()
    denials = DenialCache(10_000, clock)
    now = int(clock() * 1e6)
    # full of blocks that end one microsecond apart, then one new block per microsecond
    for i in range(10_000):
        denials.remember_blocks((f"k{i}",), (Block(f"k{i}", (now + i + 1) / 1e6, ""),),
                                now, denials.epoch)
    started = time.process_time()
    for i in range(10_000, 12_000):
        now += 1
        denials.remember_blocks((f"k{i}",), (Block(f"k{i}", (now + 50_000_000) / 1e6, ""),),
                                now, denials.epoch)
        assert len(denials.blocks) <= 10_000
        assert denials.blocked(f"k{i}", now)  # (the newest block is always held)
    per_block = (time.process_time() - started) / 2_000
    assert per_block < 50e-6, f"{per_block * 1e6:.0f} µs a new block"


def test_a_client_safelisted_after_its_block_was_cached_goes_through(
        server: RedisServer, stores: list[RedisStorage]) -> None:
    clock = FakeClock()
    worker = _limiter(stores[0], clock)
    worker.block(IP, 600)
    assert worker.evaluate(_view(worker)).kind == "blocked"
    worker.safelist("office", ips=["192.0.2.0/24"])
    assert worker.evaluate(_view(worker)).kind == "safelisted"


def test_async_a_cached_ban_and_its_lifting_from_another_worker(
        server: RedisServer, stores: list[RedisStorage]) -> None:
    clock = FakeClock()
    worker, other = _limiter(stores[0], clock), _limiter(stores[1], clock)

    async def kinds(path: str, n: int) -> list[str]:
        return [(await worker.aevaluate(_view(worker, IP, path, "dave"))).kind
                for _ in range(n)]

    assert asyncio.run(kinds("/login", 2)) == ["banned", "banned"]
    server.command("CONFIG", "RESETSTAT")
    assert asyncio.run(kinds("/", 5)) == ["banned"] * 5
    assert _commands(server) == 0
    assert other.unblock("fail2ban:logins:dave")
    clock.advance(CHECK_INTERVAL)
    assert asyncio.run(kinds("/", 1)) == ["allowed"]


def test_a_rules_reload_in_this_worker_and_the_cached_ban(
        server: RedisServer, stores: list[RedisStorage], tmp_path: Any) -> None:
    """The worker reloading its rules file: a safelist added lets the banned client
    through at once; the ban rule removed, its ban no longer refuses anyone (here at once,
    in another worker within the check interval)."""
    rules = tmp_path / "rules.toml"
    ban = '[[fail2ban]]\nname = "scan"\npath_prefix = "/wp-"\nmaxretry = 2\nfindtime = 60\n' \
          'bantime = 3600\n'
    rules.write_text(ban)
    clock = FakeClock()
    worker, other = Limiter(stores[0], clock=clock), Limiter(stores[1], clock=clock)
    for limiter in (worker, other):
        limiter.load_rules(str(rules))
    for _ in range(2):
        worker.evaluate(_view(worker, IP, "/wp-login"))
    assert [lim.evaluate(_view(lim)).kind for lim in (worker, other)] == ["banned"] * 2
    rules.write_text(ban + '[[safelist]]\nname = "ops"\nips = ["192.0.2.0/24"]\n')
    assert worker.reload()
    assert worker.evaluate(_view(worker)).kind == "safelisted"
    rules.write_text('[[throttle]]\nname = "per-ip"\nrates = "1000/hour"\n')
    assert worker.reload() and other.reload()
    assert worker.evaluate(_view(worker)).allowed
    clock.advance(CHECK_INTERVAL)
    assert other.evaluate(_view(other)).allowed


def test_a_reset_of_the_counters_answers_as_the_store_does(
        server: RedisServer, stores: list[RedisStorage]) -> None:
    """``reset_rules`` of a banned user in another worker: its counters go, its ban stays;
    the worker that cached the ban answers as a worker without a cache does."""
    clock = FakeClock()
    worker, other = _limiter(stores[0], clock), _limiter(stores[1], clock)
    fresh = _limiter(stores[1], clock, denial_cache_size=0)
    for _ in range(2):
        worker.evaluate(_view(worker, IP, "/login", "frank"))
    assert worker.evaluate(_view(worker, IP, "/", "frank")).kind == "banned"
    other.reset_rules("frank")
    other.reset_rules(IP)
    clock.advance(CHECK_INTERVAL)
    answers = [lim.evaluate(_view(lim, IP, "/", "frank")) for lim in (worker, fresh)]
    assert [(v.kind, v.rule, v.key) for v in answers] == [("banned", "logins", "frank")] * 2
