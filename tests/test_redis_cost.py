"""What the Redis backend sends per check, on a redis-server of our own (``INFO
commandstats`` counts the commands a script runs inside the server too): nothing for features
that are not in use, no ``TIME`` on the caller's clock, one ``INCR`` for an allowed
fixed-window check of cost 1 (and one ``EXISTS`` of its block keys in the same script through the
middleware, by default), and how soon a block made by another process is looked up."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from servers import RedisServer, start_or_skip
from throttlekit import Limiter, WSGIMiddleware, storage_from_url
from throttlekit._algorithms import make_algorithm
from throttlekit._rates import Rate
from throttlekit.storage import RedisStorage
from throttlekit.storage.base import Check
from throttlekit.testing import FakeClock

pytestmark = pytest.mark.redis
STRATEGIES = ["fixed_window", "sliding_window", "sliding_log", "token_bucket"]


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with start_or_skip(RedisServer()) as s:
        yield s


def _calls(server: RedisServer) -> dict[str, int]:
    return server.calls()


def _app(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"ok"]


def _twenty_requests(server: RedisServer, s: Any, clock: FakeClock | None = None
                     ) -> tuple[Any, dict[str, int]]:
    """A client of the middleware with one fixed-window throttle on ``s``, and the commands
    Redis ran for 20 requests of one client (after a first that loads the script), on
    ``clock`` (default: a fake clock of its own)."""
    from werkzeug.test import Client

    # (not the real clock: a new window, begun when an hour boundary falls among the
    # requests, costs a SET of its own)
    limiter = Limiter(s, clock=clock or FakeClock())
    limiter.throttle("per-ip", "1000/hour", strategy="fixed_window")
    client = Client(WSGIMiddleware(_app, limiter))
    env = {"REMOTE_ADDR": "192.0.2.7"}
    assert client.get("/", environ_base=env).status_code == 200  # loads the script
    server.command("CONFIG", "RESETSTAT")
    assert [client.get("/", environ_base=env).status_code for _ in range(20)] == [200] * 20
    return client, _calls(server)


def test_one_throttle_without_a_blocklist_sends_one_incr(server: RedisServer) -> None:
    """Through the middleware, one fixed-window throttle, an empty dynamic blocklist and
    ``blocks_fresh`` set (opt-in, for where the watch is off): each request is one EVALSHA
    running one INCR (the blocklist is not read per request, and no TIME); the
    blocklist's index is asked about once, then not for blocks_fresh seconds."""
    s = storage_from_url(server.url, prefix="one:", watch_blocks=False)
    assert isinstance(s, RedisStorage)
    s.blocks_fresh = 3600.0
    _, calls = _twenty_requests(server, s)
    assert calls.pop("evalsha") == 20
    assert calls.pop("incr") == 20
    assert calls.pop("exists", 0) == 0  # (asked by the first request)
    assert calls == {}, calls  # no GET of a block key, no TIME, no PEXPIRE
    s.close()


def test_by_default_a_request_is_one_script_with_one_exists(server: RedisServer) -> None:
    """By default (no watch, no blocks_fresh), through the middleware with one fixed-window
    throttle: each request is one EVALSHA running one EXISTS of its block keys and one
    INCR (no batch script, no GET of each block key, no TIME); a block made by another
    process holds from the next request, and its entry comes back with its reason; an
    admin unblock reaches the worker's cached block within the generation's interval."""
    from throttlekit._denials import CHECK_INTERVAL

    s = storage_from_url(server.url, prefix="dflt1:")
    other = storage_from_url(server.url, prefix="dflt1:")
    clock = FakeClock()
    client, calls = _twenty_requests(server, s, clock)
    env = {"REMOTE_ADDR": "192.0.2.7"}
    assert calls.pop("evalsha") == 20
    assert calls.pop("exists") == 20
    assert calls.pop("incr") == 20
    assert calls == {}, calls
    other.block("192.0.2.7", 60, "ban")
    assert client.get("/", environ_base=env).status_code == 403
    alg = make_algorithm("fixed_window", Rate(1000, 3600))
    found = s.apply([Check(alg, "k")], block_keys=["192.0.2.7"]).blocked[0]
    assert found is not None and found.reason == "ban"
    assert s.apply([Check(alg, "k", 0)], consume=False).decisions[0].remaining == 1000
    Limiter(other).unblock("192.0.2.7")
    clock.advance(CHECK_INTERVAL)  # (the worker's clock: it reads the generation then)
    assert client.get("/", environ_base=env).status_code == 200
    s.close()
    other.close()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_callers_clock_sends_no_time(server: RedisServer, strategy: str) -> None:
    """On the default (client) clock no script asks Redis for TIME, alone or in a batch;
    clock="server" does."""
    alg = make_algorithm(strategy, Rate(100, 60))
    for clock, times in (("client", 0), ("server", 2)):
        s = storage_from_url(server.url, prefix=f"clk-{clock}:", clock=clock)
        s.block("someone", 60)  # a blocklist in use: the batch below reads it
        s.apply([Check(alg, "warm")])
        s.apply([Check(alg, "warm")], block_keys=["x"])
        server.command("CONFIG", "RESETSTAT")
        assert s.apply([Check(alg, "k")]).decisions[0].allowed
        assert s.apply([Check(alg, "k")], block_keys=["x"]).blocked == [None]
        assert _calls(server).get("time", 0) == times
        s.close()


def test_by_default_every_request_looks_its_block_keys_up(server: RedisServer) -> None:
    """By default (no watch, no blocks_fresh), a block made by another process holds at
    once (a ban made on one worker holds on all)."""
    alg = make_algorithm("fixed_window", Rate(100, 60))
    a = storage_from_url(server.url, prefix="dflt:")
    b = storage_from_url(server.url, prefix="dflt:")
    assert a.apply([Check(alg, "ip")], block_keys=["ip"]).blocked == [None]
    b.block("ip", 60, "ban")
    found = a.apply([Check(alg, "ip")], block_keys=["ip"]).blocked[0]
    assert found is not None and found.reason == "ban"
    a.close()
    b.close()


def test_a_block_by_another_process_is_looked_up_within_blocks_fresh(
    server: RedisServer,
) -> None:
    """A process that saw the blocklist empty does not look block keys up for
    ``blocks_fresh`` seconds: a block made elsewhere meanwhile is found once that passed
    (here forced by setting it to 0); a block it makes itself is found at once. (Without
    the watch: with it, see test_the_watch_*.)"""
    alg = make_algorithm("fixed_window", Rate(100, 60))
    a = storage_from_url(server.url, prefix="fresh:", watch_blocks=False)
    b = storage_from_url(server.url, prefix="fresh:")
    assert isinstance(a, RedisStorage)
    a.blocks_fresh = 3600.0
    assert a.apply([Check(alg, "ip")], block_keys=["ip"]).blocked == [None]
    b.block("ip", 60, "abuse")
    assert a.apply([Check(alg, "ip")], block_keys=["ip"]).blocked == [None]  # not yet
    a.blocks_fresh = 0.0
    found = a.apply([Check(alg, "ip")], block_keys=["ip"]).blocked[0]
    assert found is not None and found.reason == "abuse"
    a.blocks_fresh = 3600.0
    b.unblock("ip")
    assert a.apply([Check(alg, "ip")], block_keys=["ip"]).blocked == [None]
    # seen empty again for an hour: its own block is still found at once
    a.blocks_fresh = 0.0
    assert a.apply([Check(alg, "ip")], block_keys=["ip"]).blocked == [None]
    a.blocks_fresh = 3600.0
    a.block("other", 60, "mine")
    found = a.apply([Check(alg, "other")], block_keys=["other"]).blocked[0]
    assert found is not None and found.reason == "mine"
    a.close()
    b.close()


def test_an_empty_blocklist_answers_block_keys_without_a_call(server: RedisServer) -> None:
    """Block keys alone, with no check, against a blocklist seen empty: answered here."""
    a = storage_from_url(server.url, prefix="none:", watch_blocks=False)
    assert isinstance(a, RedisStorage)
    a.blocks_fresh = 3600.0
    assert a.apply([], block_keys=["x", "y"]).blocked == [None, None]  # reads the index
    server.command("CONFIG", "RESETSTAT")
    assert a.apply([], block_keys=["x", "y"]).blocked == [None, None]
    assert _calls(server) == {}
    a.close()


def test_a_fixed_window_keeps_one_key_per_rate(server: RedisServer) -> None:
    """A fixed window's count lives in one string key per rate whatever the windows skipped
    (nothing piles up); a count in the key's hash from an older version is not read (that
    key starts afresh) and expires by itself."""
    import redis

    s = storage_from_url(server.url, prefix="fw1:")
    short, long = (make_algorithm("fixed_window", Rate(2, 1)),
                   make_algorithm("fixed_window", Rate(1000, 3600)))
    t0 = 1_700_000_000_000_000
    for i in range(0, 40, 3):  # every third second: windows skipped
        now = t0 + i * 1_000_000
        assert [s.apply([Check(short, "k")], now=now).decisions[0].allowed
                for _ in range(3)] == [True, True, False]
        assert s.apply([Check(long, "k")], now=now).decisions[0].allowed
    raw = redis.Redis.from_url(server.url, decode_responses=True)
    h = s.family("k")
    assert sorted(raw.scan_iter(match=f"{h}*")) == sorted(
        [f"{h}:w:{short.id}", f"{h}:w:{long.id}"])
    old = s.family("old")
    raw.hset(old, short.id, str((t0 // 1_000_000 % (1 << 19)) << 33 | 2))  # full, if read
    raw.pexpire(old, 5000)
    assert s.apply([Check(short, "old")], now=t0).decisions[0].remaining == 1
    raw.close()
    s.close()


def _watching(s: RedisStorage, live: bool = True, timeout: float = 5.0) -> None:
    """Wait until ``s``'s blocklist watch is (or is no longer) live."""
    import time

    deadline = time.monotonic() + timeout
    while (s._watch is not None and s._watch.live) != live:
        assert time.monotonic() < deadline, f"the watch never became live={live}"
        s._lookups()  # (starts it)
        time.sleep(0.01)


def _until_looked_up(s: RedisStorage, timeout: float = 2.0) -> float:
    """Seconds until ``s`` stops skipping its block lookups (a change was pushed)."""
    import time

    t0 = time.monotonic()
    while s._lookups() is False:
        assert time.monotonic() - t0 < timeout, "no change pushed"
        time.sleep(0.0005)
    return time.monotonic() - t0


def test_the_watch_sends_nothing_for_an_empty_blocklist(server: RedisServer) -> None:
    """With the watch (``watch_blocks=True``), through the middleware with one fixed-window throttle
    and an empty dynamic blocklist: once the watch is live, each request is one EVALSHA
    running one INCR, with no blocks_fresh to set; nothing else is sent."""
    from werkzeug.test import Client

    s = storage_from_url(server.url, prefix="watch1:", watch_blocks=True)
    assert isinstance(s, RedisStorage)
    # (a clock of its own: a new window, begun when an hour boundary falls among the
    # requests, costs a SET of its own)
    limiter = Limiter(s, clock=FakeClock())
    limiter.throttle("per-ip", "1000/hour", strategy="fixed_window")
    client = Client(WSGIMiddleware(_app, limiter))
    env = {"REMOTE_ADDR": "192.0.2.7"}
    assert client.get("/", environ_base=env).status_code == 200
    _watching(s)
    assert client.get("/", environ_base=env).status_code == 200  # reads the index once
    server.command("CONFIG", "RESETSTAT")
    assert [client.get("/", environ_base=env).status_code for _ in range(20)] == [200] * 20
    calls = _calls(server)
    assert calls.pop("evalsha") == 20
    assert calls.pop("incr") == 20
    calls.pop("ping", None)  # (the watch's, once a second)
    assert calls == {}, calls  # no EXISTS, no GET of a block key
    s.close()


def test_the_watch_sees_a_block_by_another_process_at_once(server: RedisServer) -> None:
    """A block made by another process (the admin CLI, a ban on another worker) is pushed
    to the watch by the server: the next request looks its block keys up and is refused;
    its unblock and the entry's expiry are seen too, and lookups stop again."""
    import time

    from werkzeug.test import Client

    a = storage_from_url(server.url, prefix="watch2:", ttl_slack=0, watch_blocks=True)
    b = storage_from_url(server.url, prefix="watch2:", ttl_slack=0, watch_blocks=True)
    assert isinstance(a, RedisStorage) and isinstance(b, RedisStorage)
    limiter = Limiter(a)
    limiter.throttle("per-ip", "1000/hour", strategy="fixed_window")
    client = Client(WSGIMiddleware(_app, limiter))
    env = {"REMOTE_ADDR": "192.0.2.7"}
    assert client.get("/", environ_base=env).status_code == 200
    _watching(a)
    assert client.get("/", environ_base=env).status_code == 200
    assert a._lookups() is False
    b.block("192.0.2.7", 1.5, "from the CLI")
    assert _until_looked_up(a) < 1.0
    assert client.get("/", environ_base=env).status_code == 403
    Limiter(b).unblock("192.0.2.7")  # (the generation: cached blocks go within a second)
    time.sleep(1.1)  # (while the blocklist had entries: the index is read again each second)
    assert client.get("/", environ_base=env).status_code == 200
    assert client.get("/", environ_base=env).status_code == 200
    assert a._lookups() is False
    b.block("192.0.2.7", 0.3, "short")
    assert _until_looked_up(a) < 1.0
    assert client.get("/", environ_base=env).status_code == 403
    time.sleep(1.5)  # expired; the index too (no push for an expiry: read again after 1 s)
    assert client.get("/", environ_base=env).status_code == 200
    assert client.get("/", environ_base=env).status_code == 200
    assert a._lookups() is False
    a.close()
    b.close()


def test_a_watch_that_loses_its_connection_falls_back_to_lookups(server: RedisServer) -> None:
    """Killing the watch's connection turns it off at once (every request looks its block
    keys up again, so a block made meanwhile holds); it reconnects by itself."""
    import redis

    alg = make_algorithm("fixed_window", Rate(100, 60))
    a = storage_from_url(server.url, prefix="watch3:", watch_blocks=True)
    b = storage_from_url(server.url, prefix="watch3:", watch_blocks=True)
    assert isinstance(a, RedisStorage)
    assert a.apply([Check(alg, "ip")], block_keys=["ip"]).blocked == [None]
    _watching(a)
    a.apply([Check(alg, "ip")], block_keys=["ip"])
    assert a._lookups() is False
    raw = redis.Redis.from_url(server.url)
    killed = raw.client_kill_filter(_type="normal", skipme=True, laddr=None,
                                    _id=_watch_id(raw))
    assert killed == 1
    _watching(a, live=False)
    assert a._lookups() is True  # no blocks_fresh: look up every time
    b.block("ip", 60, "meanwhile")
    found = a.apply([Check(alg, "ip")], block_keys=["ip"]).blocked[0]
    assert found is not None and found.reason == "meanwhile"
    _watching(a)  # back by itself
    raw.close()
    a.close()
    b.close()


def _watch_id(raw: Any) -> int:
    """The client id of the connection with tracking on (the watch's)."""
    for c in raw.client_list():
        if "t" in c.get("flags", "") and "B" in c.get("flags", ""):
            return int(c["id"])
    raise AssertionError(f"no tracking connection in {raw.client_list()}")


def test_watch_blocks_is_checked(server: RedisServer) -> None:
    from throttlekit import ConfigError

    with pytest.raises(ConfigError, match="watch_blocks must be True or False, got 'maybe'"):
        storage_from_url(server.url + "?watch_blocks=maybe")
    s = storage_from_url(server.url + "?watch_blocks=false")
    assert isinstance(s, RedisStorage) and s.watch_blocks is False
    s.close()
    s = storage_from_url(server.url)  # opt-in: no thread unless asked for
    assert isinstance(s, RedisStorage) and s.watch_blocks is False
    s.close()


def test_a_forked_child_runs_its_own_watch(server: RedisServer) -> None:
    """After ``fork`` (a pre-forking server's workers), the child has no watch thread: its
    watch is off (block keys looked up) until its own thread is live; the parent's stays."""
    import os
    import warnings

    alg = make_algorithm("fixed_window", Rate(100, 60))
    s = storage_from_url(server.url, prefix="fork:", watch_blocks=True)
    assert isinstance(s, RedisStorage)
    s.apply([Check(alg, "ip")], block_keys=["ip"])
    _watching(s)
    s.apply([Check(alg, "ip")], block_keys=["ip"])
    assert s._lookups() is False
    with warnings.catch_warnings():  # (3.12+: a fork with threads running warns)
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report through the exit code
        code = 1
        try:
            if s._lookups() is True:  # off: looks up (and starts its own thread)
                _watching(s)
                s.apply([Check(alg, "ip")], block_keys=["ip"])
                code = 0 if s._lookups() is False else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert s._watch is not None and s._watch.live and s._lookups() is False
    s.close()


@pytest.mark.parametrize("way", ["sync", "async"])
def test_a_lone_fixed_window_finds_a_block_made_elsewhere(server: RedisServer, way: str) -> None:
    """A fixed-window check with block keys (the default middleware request) looks them up
    in its own script: a block made by another process holds from the next check and charges
    nothing; an entry past its expiry but not yet gone (the TTL's slack) blocks nobody and
    the check is charged; sync and async alike."""
    import asyncio
    import time

    alg = make_algorithm("fixed_window", Rate(100, 60))
    a = storage_from_url(server.url, prefix=f"lone-{way}:")
    b = storage_from_url(server.url, prefix=f"lone-{way}:")

    async def apply(key: str, block_keys: list[str]) -> Any:
        if way == "sync":
            return a.apply([Check(alg, key)], block_keys=block_keys)
        return await a.aapply([Check(alg, key)], block_keys=block_keys)

    async def go() -> None:
        if time.time() % 60 > 58:  # the checks below count in one minute's window
            time.sleep(60.05 - time.time() % 60)
        assert (await apply("rule:ip", ["ip"])).decisions[0].remaining == 99
        b.block("ip", 60, "ban")
        r = await apply("rule:ip", ["other", "ip"])
        assert r.blocked[0] is None and r.blocked[1] is not None
        assert r.blocked[1].reason == "ban"
        b.unblock("ip")
        r = await apply("rule:ip", ["ip"])
        assert r.blocked == [None] and r.decisions[0].remaining == 98  # blocked: no charge
        b.block("ip", 0.05, "short")
        time.sleep(0.1)  # expired; its key lives on for ttl_slack
        r = await apply("rule:ip", ["ip"])
        assert r.blocked == [None] and r.decisions[0].remaining == 97
        if way == "async":
            await a.aclose()  # type: ignore[attr-defined]

    asyncio.run(go())
    a.close()
    b.close()
