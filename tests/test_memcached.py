"""The Memcached backend against real memcached servers: keys, expiries, batches, reset,
blocklist, exactness across processes and a server that goes away."""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import sys
import threading
import time
import types
import unicodedata
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.memcached import Context
from servers import MemcachedServer, start_or_skip
from throttlekit import ConfigError, Limiter, MemoryStorage, StorageError, storage_from_url
from throttlekit._algorithms import make_algorithm
from throttlekit._rates import parse_rates
from throttlekit.storage.base import Check
from throttlekit.storage.memcached import CONTENTION_RETRY_AFTER, MemcachedStorage, from_url
from throttlekit.storage.memcached._codec import encode_key as _encode_key
from throttlekit.storage.memcached._codec import expire as _expire
from throttlekit.testing import FakeClock

pytestmark = pytest.mark.memcached

STRATEGIES = ["fixed_window", "sliding_window", "sliding_log", "token_bucket"]
MID_DAY = 1_700_000_000 // 86400 * 86400 + 43200  # far from any day/hour boundary


@pytest.fixture(scope="session")
def ctx(_backend_contexts: dict[str, Any]) -> Context:
    """The session's memcached (shared server on 11211, or a throwaway one)."""
    context: Context = _backend_contexts["get"]("memcached")
    return context


@pytest.fixture
def storage(ctx: Context) -> Iterator[MemcachedStorage]:
    """A storage with its own random prefix."""
    s = ctx.storage()
    yield s
    s.close()


@pytest.fixture
def server() -> Iterator[MemcachedServer]:
    """A memcached of our own on a spare port, that a test may stop."""
    with start_or_skip(MemcachedServer()) as srv:
        yield srv


def _port(url: str) -> int:
    return int(url.split("://", 1)[1].split(",")[0].rsplit(":", 1)[1])


def _metadump(port: int, prefix: str) -> dict[str, int]:
    """key -> absolute expiry (-1: never) of every live item under ``prefix``, but the
    generation of admin changes (``<prefix>G``, kept for good: made by a limiter's first
    request)."""

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"lru_crawler metadump all\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    out = {}
    for line in data.decode().splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        key = unquote(fields.get("key", ""))
        if key.startswith(prefix) and key != prefix + "G":
            out[key] = int(fields["exp"])
    return out


def _curr_items(port: int) -> int:

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"stats\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            data += sock.recv(1 << 16)
    for line in data.decode().splitlines():
        if line.startswith("STAT curr_items "):
            return int(line.split()[2])
    raise AssertionError("no curr_items in stats")


# -- keys -----------------------------------------------------------------------------------


@given(st.text(max_size=400), st.text(max_size=400))
def test_encoded_keys_are_valid_and_injective(a: str, b: str) -> None:
    """Any two distinct keys encode to distinct, memcached-legal names (ASCII, no space, short)."""
    ea, eb = _encode_key(a), _encode_key(b)
    for e in (ea, eb):
        assert e.isascii() and e.isprintable() and " " not in e
        assert 1 <= len(e) <= 129  # + prefix (<= 64) + markers (<= 45) < 250
    assert (ea == eb) == (a == b)


@given(st.text(min_size=0, max_size=600))
def test_any_user_key_is_limited(ctx: Context, key: str) -> None:
    """Whitespace, control characters, non-ASCII and 600-character keys all work and are limited."""
    s = ctx.storage()
    try:
        limiter = Limiter(s, strategy="fixed_window", clock=FakeClock())
        assert [limiter.hit(key, "2/minute").allowed for _ in range(3)] == [True, True, False]
        assert limiter.hit(key + "\x00", "2/minute").allowed
    finally:
        s.close()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_keys_that_look_alike_never_share_state(storage: MemcachedStorage, strategy: str) -> None:
    """Keys differing only in whitespace, normalisation or a late character have separate quotas."""
    long = "k" * 300
    keys = [
        "a b", "a\tb", "a_b", "a\nb", "a%20b",
        unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café"),
        long, long + "x", "=a b", "#a b",
    ]  # fmt: skip
    limiter = Limiter(storage, strategy=strategy, clock=FakeClock())
    for key in keys:
        assert limiter.hit(key, "1/minute").allowed, key
    assert not any(limiter.hit(key, "1/minute").allowed for key in keys)


# -- same answers as the memory backend -----------------------------------------------------

_OPS = st.lists(
    st.tuples(
        st.integers(0, 1_500_000),  # advance, microseconds
        st.integers(0, 3),  # cost
        st.booleans(),  # consume (hit) or not (test)
    ),
    min_size=1,
    max_size=25,
)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("rates", ["3/second", "4/2 seconds; 2/second"])
@given(ops=_OPS)
def test_decisions_match_the_memory_backend(
    ctx: Context, strategy: str, rates: str, ops: list[tuple[int, int, bool]]
) -> None:
    """On one process, every Decision equals the memory backend's for the same timeline."""
    clock = FakeClock(MID_DAY)
    s = ctx.storage()
    try:
        mc = Limiter(s, strategy=strategy, clock=clock)
        mem = Limiter(MemoryStorage(), strategy=strategy, clock=clock)
        for advance, cost, consume in ops:
            clock.advance(advance / 1e6)
            if consume:
                assert mc.hit("k", rates, cost=cost) == mem.hit("k", rates, cost=cost)
            else:
                assert mc.test("k", rates, cost=cost) == mem.test("k", rates, cost=cost)
    finally:
        s.close()


# -- round trips ----------------------------------------------------------------------------


class _CountingSocket(socket.socket):
    """A real socket that counts requests sent (one ``sendall`` per memcached command)."""

    sent = 0

    def sendall(self, data: Any, *args: Any) -> None:
        type(self).sent += 1
        super().sendall(data, *args)


def _counting_client(port: int, timeout: float | None = None) -> Any:
    from pymemcache.client.base import Client

    module = types.SimpleNamespace(
        **{k: getattr(socket, k) for k in dir(socket) if not k.startswith("__")}
    )
    module.socket = _CountingSocket
    return Client(("127.0.0.1", port), socket_module=module, default_noreply=False,
                  connect_timeout=timeout, timeout=timeout)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_round_trips_per_request(ctx: Context, strategy: str) -> None:
    """Allowed: one read plus one write per rate; refused: the read alone; blocks ride along."""
    client = _counting_client(_port(ctx.url))
    storage = MemcachedStorage(client, prefix=f"tk-test:{uuid.uuid4().hex[:12]}:")
    limiter = Limiter(storage, strategy=strategy, clock=FakeClock(MID_DAY))
    alg = make_algorithm(strategy, parse_rates("2/minute")[0])

    def trips(call: Any) -> int:
        before = _CountingSocket.sent
        call()
        return _CountingSocket.sent - before

    # first: read + add, and once per process the generation of admin changes (the local
    # denial cache's baseline, see throttlekit._denials): a get, and here, where none was
    # made yet, an add from the clock
    assert trips(lambda: limiter.hit("k", "2/minute")) == 4
    assert trips(lambda: storage.apply([Check(alg, "k")], block_keys=["k", "ip"],
                                       now=MID_DAY * 1_000_000)) == 2  # read + incr/cas
    assert trips(lambda: limiter.hit("k", "2/minute")) == 1  # refused by the read
    assert trips(lambda: limiter.hit("j", "10/minute; 2/second")) == 3
    client.close()


# -- configuration --------------------------------------------------------------------------


def test_sliding_log_over_the_cap_is_refused_at_setup(storage: MemcachedStorage) -> None:
    """A sliding_log limit above max_log_limit is a ConfigError naming the strategy and why."""
    limiter = Limiter(storage, strategy="sliding_log")
    with pytest.raises(ConfigError, match=r"sliding_log.*max_log_limit=1000"):
        limiter.plan("5000/minute")
    with pytest.raises(ConfigError, match="sliding_log"):
        limiter.hit("k", "5000/minute")  # a ConfigError, not a degraded Decision
    assert limiter.plan("5000/minute", "sliding_window")  # other strategies are fine
    big = Limiter(MemcachedStorage(storage._client, max_log_limit=5000), strategy="sliding_log")
    assert big.plan("5000/minute")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_is_accepted(storage: MemcachedStorage, strategy: str) -> None:
    """All four strategies run on memcached (none is refused at construction)."""
    assert storage.unsupported(strategy) is None
    assert Limiter(storage, strategy=strategy).strategy == strategy


def test_from_url_builds_clients_and_checks_options(ctx: Context) -> None:
    """URLs give one pooled client or a hash client; bad options are ConfigErrors naming them."""
    one = storage_from_url(ctx.url + "?prefix=p:&timeout=0.2&cas_retries=4")
    assert isinstance(one, MemcachedStorage)
    assert (one.prefix, one.cas_retries, one.servers) == ("p:", 4, [("127.0.0.1", _port(ctx.url))])
    assert type(one._client).__name__ == "PooledClient"
    assert one._client.timeout == 0.2 and one._client.default_noreply is False
    many = from_url("memcached://127.0.0.1:1,[::1]:2,localhost")
    assert many.servers == [("127.0.0.1", 1), ("::1", 2), ("localhost", 11211)]
    assert type(many._client).__name__ == "HashClient"
    for bad, word in [
        ("memcached://", "no memcached server"),
        ("memcached://h:1?color=red", "color"),
        ("memcached://h:1?timeout=soon", "timeout"),
        ("memcached://h:1?prefix=has space", "prefix"),
        ("memcached://h:99999", "port"),
    ]:
        with pytest.raises(ConfigError, match=word):
            storage_from_url(bad)
    with pytest.raises(ConfigError, match="cas_retries"):
        MemcachedStorage("h:1", cas_retries=0)


def test_missing_pymemcache_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without pymemcache the URL fails with the pip command to fix it."""
    for name in [m for m in sys.modules if m.startswith("pymemcache")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pymemcache", None)
    with pytest.raises(ConfigError, match=r"pip install 'throttlekit-web\[memcached\]'"):
        storage_from_url("memcached://127.0.0.1:11211")


# -- batches --------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_denying_rate_charges_no_other_rate(storage: MemcachedStorage, strategy: str) -> None:
    """With several rates, a request one of them refuses charges none of them."""
    limiter = Limiter(storage, strategy=strategy, clock=FakeClock(MID_DAY))
    assert [limiter.hit("k", "10/minute; 2/second").allowed for _ in range(3)] == [
        True, True, False,
    ]  # fmt: skip
    assert limiter.test("k", "10/minute").remaining == 7  # 10 - 2 - (this test's cost 1)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_charge_that_loses_is_rolled_back(storage: MemcachedStorage, strategy: str) -> None:
    """When a later check's charge is refused, the earlier charges of the batch are taken back.

    Two checks of one key in one batch both read a fresh state, so both peeks allow; the
    second charge then finds the first one's and is refused: exactly the race a concurrent
    worker causes, made deterministic.
    """
    alg = make_algorithm(strategy, parse_rates("3/minute")[0])
    now = MID_DAY * 1_000_000
    result = storage.apply([Check(alg, "k", 2), Check(alg, "k", 2)], now=now)
    first, second = result.decisions
    assert first.allowed and not second.allowed
    after = storage.apply([Check(alg, "k", 0)], consume=False, now=now).decisions[0]
    assert after.remaining == 3  # nothing charged
    assert storage.hit(alg, "k", 3, now).allowed  # the whole quota is still there


def test_independent_checks_are_charged_on_their_own(storage: MemcachedStorage) -> None:
    """An independent check is charged even when the dependent ones are refused."""
    alg = make_algorithm("fixed_window", parse_rates("1/minute")[0])
    counter = make_algorithm("fixed_window", parse_rates("100/minute")[0])
    now = MID_DAY * 1_000_000
    assert storage.hit(alg, "k", 1, now).allowed
    result = storage.apply([Check(alg, "k"), Check(counter, "k", independent=True)], now=now)
    assert [d.allowed for d in result.decisions] == [False, True]
    assert storage.apply([Check(counter, "k")], consume=False, now=now).decisions[0].remaining == 98


def test_contention_denies_with_a_short_retry(ctx: Context) -> None:
    """A CAS that keeps losing races denies (never over-admits) with a short retry_after."""
    alg = make_algorithm("token_bucket", parse_rates("1000/day")[0])
    now = MID_DAY * 1_000_000
    a = ctx.storage(cas_retries=1)
    b = MemcachedStorage(a._client, prefix=a.prefix, cas_retries=1)
    try:
        assert a.hit(alg, "k", 1, now).allowed  # the state exists now
        # b's batch reads the state, then a charges first: b's only CAS attempt loses.
        check = Check(alg, "k", 1)
        original = b._charge

        def charge_after_a(slot: Any, now: int) -> bool:
            assert a.hit(alg, "k", 1, now).allowed
            return original(slot, now)

        b._charge = charge_after_a  # type: ignore[method-assign]
        d = b.hit(alg, "k", 1, now)
        assert not d.allowed and d.retry_after == CONTENTION_RETRY_AFTER
        assert a.apply([check], consume=False, now=now).decisions[0].remaining == 997
    finally:
        a.close()


class _SlowWrites:
    """A real pymemcache client whose writes leave ``delay`` seconds late, as across a busy
    network: between a worker's read and its ``cas`` the others get in, so nearly every
    update of a hot key loses a race at least once."""

    def __init__(self, client: Any, delay: float) -> None:
        self._client = client
        self._delay = delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def cas(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self._delay)
        return self._client.cas(*args, **kwargs)

    def add(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self._delay)
        return self._client.add(*args, **kwargs)


def _hot_key(storages: MemcachedStorage | list[MemcachedStorage], strategy: str, rates: str,
             threads: int, hits: int, key: str = "hot") -> tuple[int, int]:
    """``threads`` threads x ``hits`` hits on one key at once, spread over ``storages`` (each
    one a worker process would have): (admitted, refused)."""
    if isinstance(storages, MemcachedStorage):
        storages = [storages]
    wall0 = time.time()
    # One clock moving in real time, mid-day: no window boundary is crossed.
    limiters = [
        Limiter(s, strategy=strategy, on_storage_error="deny",
                clock=lambda: MID_DAY + (time.time() - wall0))
        for s in storages
    ]
    barrier = threading.Barrier(threads)
    results: list[Any] = []

    def worker(limiter: Limiter) -> None:
        barrier.wait()
        results.extend(limiter.hit(key, rates) for _ in range(hits))

    pool = [threading.Thread(target=worker, args=(limiters[i % len(limiters)],))
            for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert len(results) == threads * hits
    assert not any(d.degraded for d in results)
    admitted = sum(d.allowed for d in results)
    return admitted, len(results) - admitted


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_hot_key_below_its_limit_is_never_refused(ctx: Context, strategy: str) -> None:
    """8 threads x 50 hits on one key: all 400 admitted under a limit of 1,000, exactly 100
    under a limit of 100 (CAS races are retried, never refused while time is left).

    A 1 s store timeout instead of 0.25 s: a loaded CI machine can stall a worker for a good
    part of a quarter second, and this test is about races, not about stalls."""
    storage = ctx.storage(timeout=1.0)
    try:
        assert _hot_key(storage, strategy, "1000/day", 8, 50) == (400, 0)
    finally:
        storage.close()
    storage = ctx.storage(timeout=1.0)
    try:
        assert _hot_key(storage, strategy, "100/day", 8, 50) == (100, 300)
    finally:
        storage.close()


@pytest.mark.parametrize("strategy", ["token_bucket", "sliding_log"])
def test_threads_of_one_process_take_turns_on_a_key(ctx: Context, strategy: str) -> None:
    """Threads sharing a storage take turns on a CAS: a thread loses a race to another
    thread only when it was preempted between its read and taking the key's lock, and then
    wins on its one retry (made under the lock). With two attempts each and a millisecond
    between read and write, 16 threads on one key are all admitted (without the turns,
    most of them lose twice)."""
    from pymemcache.client.base import PooledClient

    client = PooledClient(("127.0.0.1", _port(ctx.url)), connect_timeout=5, timeout=5,
                          default_noreply=False)
    storage = MemcachedStorage(_SlowWrites(client, 0.001), timeout=5.0, cas_retries=2,
                               prefix=f"tk-test:{uuid.uuid4().hex[:12]}:")
    try:
        assert _hot_key(storage, strategy, "1000/day", 16, 10) == (160, 0)
    finally:
        client.close()


@pytest.mark.parametrize("strategy", ["token_bucket", "sliding_log"])
def test_cas_contention_is_retried_across_a_slow_network(ctx: Context, strategy: str) -> None:
    """With a millisecond between each read and write, most CAS updates of 8 workers (each
    with two threads) lose races; each is retried until it lands, within the store timeout
    (2 s here, as for a slow network): no request below the limit is refused, and none is
    admitted above it."""
    from pymemcache.client.base import PooledClient

    prefix = f"tk-test:{uuid.uuid4().hex[:12]}:"
    clients = [PooledClient(("127.0.0.1", _port(ctx.url)), connect_timeout=5, timeout=5,
                            default_noreply=False) for _ in range(8)]
    storages = [MemcachedStorage(_SlowWrites(c, 0.001), timeout=2.0, prefix=prefix)
                for c in clients]
    try:
        assert _hot_key(storages, strategy, "1000/day", 16, 25) == (400, 0)
        assert _hot_key(storages, strategy, "1000/day; 50/day", 16, 25, "other") == (50, 350)
    finally:
        for c in clients:
            c.close()


# -- expiries -------------------------------------------------------------------------------


def test_expiries_over_30_days_are_absolute(storage: MemcachedStorage, ctx: Context) -> None:
    """A 60-day window survives (sent as a unix timestamp) and expires no later than needed."""
    assert _expire(10 * 1_000_000) == 11
    before = int(time.time())
    assert _expire(31 * 86400 * 1_000_000) >= before + 31 * 86400 + 1
    limiter = Limiter(storage, strategy="sliding_window")  # kept 60 to 120 days
    assert limiter.hit("k", "1/60 days").allowed
    assert not limiter.hit("k", "1/60 days").allowed  # a relative 60-day expiry would be gone
    exps = _metadump(_port(ctx.url), storage.prefix)
    assert len(exps) == 1
    (exp,) = exps.values()
    assert time.time() + 59 * 86400 < exp <= time.time() + 120 * 86400 + 2


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_key_expires_when_its_state_is_stale(
    storage: MemcachedStorage, ctx: Context, strategy: str
) -> None:
    """Each key written carries an expiry no longer than its state needs (+1 s granularity)."""

    def server_time() -> int:
        # memcached's own clock, in whole seconds: the one metadump's expiries are read on.
        # Against this process's time.time() they are off by up to a second or two (the
        # clock ticks once a second, and its start was rounded to a second on each of two
        # clocks), which failed the test when a window ended just after the writes.
        with socket.create_connection(("127.0.0.1", _port(ctx.url)), timeout=5) as sock:
            sock.sendall(b"stats\r\n")
            data = b""
            while not data.endswith(b"END\r\n"):
                data += sock.recv(1 << 16)
        return int(next(line.split()[2] for line in data.decode().splitlines()
                        if line.startswith("STAT time ")))

    limiter = Limiter(storage, strategy=strategy)
    before = server_time()  # expiries are after the writes, and at most a horizon after them
    for _ in range(3):
        limiter.hit("k", "5/10 seconds")
    exps = _metadump(_port(ctx.url), storage.prefix)
    after = server_time()
    assert exps
    horizon = {"fixed_window": 10, "sliding_window": 20, "sliding_log": 10, "token_bucket": 10}
    for key, exp in exps.items():
        # a relative exptime is the state's TTL rounded up to a second, plus one second
        assert before < exp <= after + horizon[strategy] + 1, (key, before, exp, after)


# -- reset ----------------------------------------------------------------------------------


def test_reset_forgets_every_rate_and_strategy_in_every_worker(ctx: Context) -> None:
    """A reset made by one worker is seen by the others at once, for every strategy and rate."""
    clock = FakeClock(MID_DAY)
    a = ctx.storage()
    b = MemcachedStorage(a._client, prefix=a.prefix)  # another worker, same memcached
    # Without the local denial cache: a cached denial in the other worker lasts until its
    # retry time by design (docs/backends.md); this test is about the store's reset.
    la = Limiter(a, clock=clock, denial_cache_size=0)
    lb = Limiter(b, clock=clock, denial_cache_size=0)
    try:
        for rounds in range(3):  # resets from a, then b, then a: each sees the other's
            for strategy in STRATEGIES:
                for rates in ("2/minute", "3/hour"):
                    while lb.hit("user", rates, strategy=strategy).allowed:
                        pass
                    assert not la.hit("user", rates, strategy=strategy).allowed
            assert lb.hit("other", "1/minute").allowed
            (la if rounds % 2 == 0 else lb).reset("user")
            for strategy in STRATEGIES:
                for rates in ("2/minute", "3/hour"):
                    assert lb.hit("user", rates, strategy=strategy).allowed
                    assert la.hit("user", rates, strategy=strategy).remaining == (
                        0 if rates == "2/minute" else 1
                    )
            assert not lb.hit("other", "1/minute").allowed  # other keys untouched
            lb.reset("other")
    finally:
        a.close()


# -- blocklist ------------------------------------------------------------------------------


def test_blocklist_is_shared_listed_and_expires(ctx: Context) -> None:
    """Blocks are seen by every worker in the request's own lookup, listed, and expire."""
    now = MID_DAY * 1_000_000
    a = ctx.storage()
    b = MemcachedStorage(a._client, prefix=a.prefix)
    try:
        a.block("10.0.0.1", 60, "scanner", now=now)
        a.block("ünïcode key with spaces", None, "forever: ✓", now=now)
        a.block("short", 30, now=now)
        got = b.apply([], block_keys=["10.0.0.1", "nobody", "ünïcode key with spaces"], now=now)
        assert [x and (x.key, x.expires_at, x.reason) for x in got.blocked] == [
            ("10.0.0.1", MID_DAY + 60.0, "scanner"),
            None,
            ("ünïcode key with spaces", float("inf"), "forever: ✓"),
        ]
        assert [x.key for x in b.blocked(now=now)] == [
            "short", "10.0.0.1", "ünïcode key with spaces",
        ]  # fmt: skip
        later = now + 40_000_000  # 40 s on: "short" is over
        assert b.apply([], block_keys=["short"], now=later).blocked == [None]
        assert [x.key for x in b.blocked(now=later)] == ["10.0.0.1", "ünïcode key with spaces"]
        assert b.unblock("10.0.0.1") is True
        assert a.unblock("10.0.0.1") is False
        assert a.apply([], block_keys=["10.0.0.1"], now=now).blocked == [None]
        assert [x.key for x in a.blocked(now=now)] == ["short", "ünïcode key with spaces"]
        with pytest.raises(ConfigError, match="ttl"):
            a.block("x", 0)
    finally:
        a.close()


# -- exactness across processes -------------------------------------------------------------


def _worker(url: str, prefix: str, strategy: str, rates: str, hits: int, options: dict[str, Any],
            wall0: float, barrier: Any) -> tuple[int, int]:
    storage = from_url(url, prefix=prefix, **options)
    # One shared clock, moving in real time, mid-day: no window boundary is ever crossed.
    limiter = Limiter(storage, strategy=strategy, on_storage_error="deny",
                      clock=lambda: MID_DAY + (time.time() - wall0))
    barrier.wait()
    admitted = degraded = 0
    for _ in range(hits):
        d = limiter.hit("shared", rates)
        admitted += d.allowed
        degraded += d.degraded
    storage.close()
    return admitted, degraded


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "rates", "options"),
    [  # one rate per strategy: tests/test_cross_process.py
        ("token_bucket", "1000/day", {"cas_retries": 1}),
        ("sliding_log", "1000/day; 600/day", {}),
        ("fixed_window", "1000/day; 600/day", {}),
        ("sliding_window", "1000/day; 600/day", {}),
        ("token_bucket", "1000/day; 600/day", {}),
    ],
    ids=lambda v: str(v).replace(" ", ""),
)
def test_exactly_the_limit_across_four_processes(
    ctx: Context, strategy: str, rates: str, options: dict[str, Any]
) -> None:
    """4 processes x 2,000 hits on one key admit exactly the limit, and leave no stray charge."""
    prefix = f"tk-test:{uuid.uuid4().hex[:12]}:"
    mp = multiprocessing.get_context("spawn")
    with mp.Manager() as manager:
        barrier = manager.Barrier(4)
        wall0 = time.time()
        with mp.Pool(4) as pool:
            results = pool.starmap(
                _worker,
                [(ctx.url, prefix, strategy, rates, 2000, options, wall0, barrier)] * 4,
            )
    assert sum(d for _, d in results) == 0
    limit = min(r.limit for r in parse_rates(rates))
    assert sum(a for a, _ in results) == limit
    storage = from_url(ctx.url, prefix=prefix)
    clock = lambda: MID_DAY + (time.time() - wall0)  # noqa: E731
    limiter = Limiter(storage, strategy=strategy, clock=clock)
    for rate in parse_rates(rates):  # rolled-back charges left nothing behind
        assert limiter.test("shared", rate, cost=0).remaining == rate.limit - limit
    storage.close()


# -- failures -------------------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "allowed"), [("allow", True), ("deny", False), ("local", True)])
def test_a_stopped_memcached_is_answered_by_the_policy(
    server: MemcachedServer, policy: str, allowed: bool
) -> None:
    """A dead memcached never fails a request; the policy answers, and limits resume exactly."""
    storage = from_url(server.url, timeout=0.2, connect_timeout=0.2)
    limiter = Limiter(storage, strategy="fixed_window", clock=FakeClock(MID_DAY),
                      on_storage_error=policy, retry_interval=0.0)
    assert [limiter.hit("k", "3/minute").degraded for _ in range(2)] == [False, False]
    server.stop()
    d = limiter.hit("k", "3/minute")
    assert d.degraded and d.allowed is allowed
    with pytest.raises(StorageError) as info:
        storage.apply([Check(make_algorithm("fixed_window", parse_rates("3/minute")[0]), "k")])
    assert isinstance(info.value.__cause__, Exception)
    assert storage.ping() is False
    server.start()  # an empty memcached: the limit starts afresh, and holds exactly
    results = [limiter.hit("k", "3/minute") for _ in range(4)]
    assert [(r.allowed, r.degraded) for r in results] == [(True, False)] * 3 + [(False, False)]
    assert storage.ping() is True
    storage.close()


def test_a_hung_memcached_costs_one_timeout_then_nothing(server: MemcachedServer) -> None:
    """A server that stops answering costs one request that times out (sent once, never
    retried); while the breaker is open, the policy answers without sending anything."""
    client = _counting_client(server.port, timeout=0.2)
    storage = MemcachedStorage(client, prefix=f"tk-test:{uuid.uuid4().hex[:12]}:")
    limiter = Limiter(storage, clock=FakeClock(MID_DAY), retry_interval=30.0,
                      on_storage_error="deny")
    assert not limiter.hit("k", "3/minute").degraded
    server.pause()
    try:
        before = _CountingSocket.sent
        d = limiter.hit("k", "3/minute")
        assert d.degraded and not d.allowed  # timed out, and the policy answered
        assert _CountingSocket.sent - before == 1  # one request, not retried
        before = _CountingSocket.sent
        assert all(limiter.hit("k", "3/minute").degraded for _ in range(20))
        assert _CountingSocket.sent == before  # the breaker: no request reaches the server
    finally:
        server.resume()
        client.close()


def test_several_servers_share_the_keys(ctx: Context) -> None:
    """With two servers, keys spread over both and every key is still limited exactly."""
    with start_or_skip(MemcachedServer()) as one, start_or_skip(MemcachedServer()) as two:
        storage = from_url(f"memcached://127.0.0.1:{one.port},127.0.0.1:{two.port}")
        limiter = Limiter(storage, strategy="sliding_window", clock=FakeClock(MID_DAY))
        for i in range(40):
            assert [limiter.hit(f"user{i}", "2/minute").allowed for _ in range(3)] == [
                True, True, False,
            ]  # fmt: skip
        assert _curr_items(one.port) > 5 and _curr_items(two.port) > 5
        storage.close()


def test_async_twins_give_the_same_answers(storage: MemcachedStorage) -> None:
    """ahit/atest/areset run off the event loop and agree with the sync API."""

    async def main() -> list[bool]:
        limiter = Limiter(storage, strategy="token_bucket", clock=FakeClock(MID_DAY))
        out = [(await limiter.ahit("k", "2/minute")).allowed for _ in range(3)]
        out.append((await limiter.atest("k", "2/minute")).allowed)
        await limiter.areset("k")
        out.append((await limiter.ahit("k", "2/minute")).allowed)
        await storage.ablock("k", 10)
        out.append(bool(await storage.ablocked()))
        return out

    assert asyncio.run(main()) == [True, True, False, False, True, True]


def test_throttle_rule_refuses_what_memcached_cannot_run(ctx: Context) -> None:
    """A throttle rule whose sliding log would exceed the cap is refused at setup."""
    from throttlekit import ConfigError

    limiter = Limiter(ctx.storage())
    with pytest.raises(ConfigError, match="sliding_log"):
        limiter.throttle("big", "100000/day", strategy="sliding_log")
    limiter.throttle("small", "100/day", strategy="sliding_log")  # within the cap
