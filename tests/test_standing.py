"""Client standing (``throttlekit.Standing``) against a model of who is known.

A client is known after ``min_requests`` allowed requests over at least ``min_age``
seconds, none refused, all outside an anomaly; or while it holds a pass. During an anomaly
known clients are shed last by admission control, never challenged and never contained.
Requests go through the real WSGI middleware on an injected clock. Sharing: two processes
on the shared Redis (a key prefix of this test's own, its keys deleted after; never a
flush), and a redis-server of the test's own killed under it: standing goes local-only.
"""

from __future__ import annotations

import logging
import multiprocessing
import random
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servers import RedisServer, start_or_skip
from throttlekit import ConfigError, Limiter, Standing, WSGIMiddleware, storage_from_url
from throttlekit._exchange import CHALLENGE_KEY
from throttlekit.monitor._containment import Containment, ContainmentRule
from throttlekit.testing import FakeClock

T0 = 1_700_000_000.0
SHARED_REDIS = "redis://127.0.0.1:6379/0"


class Switch:
    """The anomaly switch: a zero-argument callable, true during an anomaly."""

    def __init__(self) -> None:
        self.on = False

    def __call__(self) -> bool:
        return self.on


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def env(address: str, path: str = "/", **headers: str) -> dict[str, Any]:
    out: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "",
                           "REMOTE_ADDR": address, "SERVER_NAME": "site.test",
                           "SERVER_PORT": "80", "wsgi.url_scheme": "http",
                           "HTTP_HOST": "site.test", "HTTP_ACCEPT": "text/html"}
    for name, value in headers.items():
        out["HTTP_" + name.upper()] = value
    return out


class Site:
    """A limiter with a standing, the WSGI middleware and a fake clock."""

    def __init__(self, *, rules: Callable[[Limiter], None] | None = None,
                 app_: Callable[..., Any] = app, **options: Any) -> None:
        self.clock = FakeClock(T0)
        self.limiter = Limiter(clock=self.clock)
        if rules is not None:
            rules(self.limiter)
        self.switch = Switch()
        if options.get("when", self.switch) is None:  # the test installs its own
            options["when"] = self.switch
        options.setdefault("when", self.switch)
        self.standing = Standing(self.limiter, **options)
        self.mw = WSGIMiddleware(app_, self.limiter)

    def get(self, address: str, path: str = "/", **headers: str) -> int:
        status: list[int] = []

        def start_response(s: str, h: Any, exc_info: Any = None) -> None:
            status.append(int(s[:3]))

        out = self.mw(env(address, path, **headers), start_response)
        for _ in out:
            pass
        close = getattr(out, "close", None)
        if close is not None:
            close()
        return status[0]

    def visit(self, address: str, times: int, every: float) -> None:
        """``times`` requests of ``address``, ``every`` seconds apart (the clock moves)."""
        for _ in range(times):
            assert self.get(address) == 200
            self.clock.advance(every)

    def known(self, address: str) -> bool:
        return self.standing.is_known(address)


# -- promotion --------------------------------------------------------------------------


@given(requests=st.integers(1, 30), every=st.floats(0.5, 10.0))
def test_a_client_is_known_after_enough_requests_over_enough_time(
    requests: int, every: float
) -> None:
    """Known exactly when it sent ``min_requests`` requests and the last came at least
    ``min_age`` seconds after the first (the model), never before."""
    site = Site(min_requests=10, min_age=60.0)
    for n in range(1, requests + 1):
        assert site.get("198.51.100.7") == 200
        span = (n - 1) * every
        assert site.known("198.51.100.7") == (n >= 10 and span >= 60.0), (n, span)
        site.clock.advance(every)


def test_standing_lasts_ttl_and_is_renewed_by_a_returning_client() -> None:
    """Standing ends ``ttl`` after the promotion; a client coming back when less than half
    is left renews it for a full ``ttl``."""
    site = Site(min_requests=2, min_age=1.0, ttl=100.0)
    site.visit("198.51.100.7", 2, 1.0)
    assert site.known("198.51.100.7")
    site.clock.advance(60.0)  # 39 s left: renewed on the next request
    site.get("198.51.100.7")
    site.clock.advance(90.0)
    assert site.known("198.51.100.7")
    site.visit("198.51.100.8", 2, 1.0)
    site.clock.advance(101.0)
    assert not site.known("198.51.100.8")
    site.visit("198.51.100.8", 1, 1.0)  # back after it ended: earned again from the start
    assert not site.known("198.51.100.8")
    site.visit("198.51.100.8", 1, 1.0)
    assert site.known("198.51.100.8")


def test_nobody_is_promoted_and_nothing_counts_during_an_anomaly() -> None:
    """During an anomaly no history is counted and nobody is promoted (a flood cannot earn
    standing); history from before counts again once it is over."""
    site = Site(min_requests=10, min_age=10.0)
    site.visit("198.51.100.7", 5, 1.0)  # half a history before the anomaly
    site.switch.on = True
    site.visit("198.51.100.7", 50, 1.0)
    site.visit("203.0.113.9", 50, 1.0)  # new during the anomaly
    assert not site.known("198.51.100.7") and not site.known("203.0.113.9")
    assert site.standing.promotions == 0
    site.switch.on = False
    site.visit("198.51.100.7", 4, 1.0)
    assert not site.known("198.51.100.7")  # 9 requests counted
    site.visit("198.51.100.7", 1, 1.0)
    assert site.known("198.51.100.7")
    assert not site.known("203.0.113.9")


def test_a_refused_request_starts_the_history_again_and_ends_standing() -> None:
    """A request refused by the rules (a throttle) wipes the client's history and its
    standing in this worker; a client never refused is promoted as usual."""
    site = Site(min_requests=5, min_age=4.0,
                rules=lambda lim: lim.throttle("per-ip", "3/second"))
    address = "198.51.100.7"
    site.visit(address, 4, 1.0)
    for _ in range(3):
        site.get(address)
    assert site.get(address) == 429
    site.clock.advance(1.0)
    site.visit(address, 4, 1.0)
    assert not site.known(address)  # 4 requests since the refusal
    site.visit(address, 1, 1.0)
    assert site.known(address)
    for _ in range(3):
        site.get(address)
    assert site.get(address) == 429
    assert not site.known(address)


def test_memory_is_bounded_whatever_the_number_of_clients() -> None:
    """5,000 clients against ``max_clients=100``: the histories stay at 100 (the newest);
    300 clients promoted 50 at a time: the known clients stay at 100 (the latest)."""
    site = Site(min_requests=2, min_age=1.0, max_clients=100)
    addresses = [f"10.{i // 250}.{i % 250}.1" for i in range(5000)]
    for address in addresses:
        site.get(address)
    assert site.standing.memory()["histories"] == 100
    promoted = addresses[-300:]
    for start in range(0, 300, 50):
        group = promoted[start:start + 50]
        for address in group:
            site.get(address)
        site.clock.advance(2.0)
        for address in group:
            site.get(address)
    sizes = site.standing.memory()
    assert max(sizes.values()) <= 100, sizes
    assert all(site.known(a) for a in promoted[-100:])
    assert not any(site.known(a) for a in promoted[:200])


def test_the_settings_are_checked() -> None:
    """A bad value raises ConfigError naming it; one standing per limiter."""
    limiter = Limiter()
    for bad in ({"min_requests": 0}, {"min_requests": 2.5}, {"min_age": -1},
                {"ttl": "1h"}, {"max_clients": True}, {"flush_interval": 0},
                {"when": 3}, {"storage": object()}, {"clock": 5}, {"dry_run": "yes"}):
        options: dict[str, Any] = {"when": Switch(), **bad}
        with pytest.raises(ConfigError, match=next(iter(bad))):
            Standing(limiter, **options)
    Standing(limiter, when=Switch())
    with pytest.raises(ConfigError, match="already"):
        Standing(limiter, when=Switch())
    with pytest.raises(ConfigError, match="Limiter"):
        Standing(object(), when=Switch())


def test_a_monitor_switches_it() -> None:
    """With ``when=monitor`` standing follows the monitor's anomalies on all traffic: a
    surge to 20x the usual rate turns it on (nobody is promoted then), and it goes off
    when the traffic is back to normal."""
    from throttlekit.monitor import Monitor

    site = Site(min_requests=2, min_age=1.0, when=None,
                rules=lambda lim: lim.throttle("per-ip", "1000/second"))
    monitor = Monitor(site.limiter, warmup=5.0, sustain=1.0, cooldown=1.0)
    site.limiter.engine.standing = None
    site.standing = Standing(site.limiter, when=monitor, min_requests=2, min_age=1.0)
    for _ in range(30):
        for i in range(5):
            site.get(f"198.51.100.{i}")
        site.clock.advance(1.0)
    assert not site.standing.active() and site.known("198.51.100.1")
    for second in range(5):
        for i in range(100):
            site.get(f"203.0.{second}.{i}")
        site.clock.advance(1.0)
    assert monitor.anomaly and site.standing.active()
    site.clock.advance(2.0)
    for _ in range(2):
        site.get("203.0.113.50")  # during the anomaly: no history
    for _ in range(60):
        for i in range(5):
            site.get(f"198.51.100.{i}")
        site.clock.advance(1.0)
    assert not monitor.anomaly and not site.standing.active()
    assert not site.known("203.0.113.50")


def test_asgi_requests_build_standing_too() -> None:
    """The same history through the ASGI middleware promotes the client; a throttled
    request there ends its standing."""
    import asyncio

    from asgi_client import asgi_request
    from throttlekit import ASGIMiddleware

    clock = FakeClock(T0)
    limiter = Limiter(clock=clock)
    limiter.throttle("per-ip", "3/second")
    standing = Standing(limiter, when=Switch(), min_requests=3, min_age=2.0)

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = ASGIMiddleware(asgi_app, limiter)

    async def run() -> list[int]:
        codes = []
        for _ in range(3):
            codes.append((await asgi_request(mw, "/", "198.51.100.7", []))[0])
            clock.advance(1.0)
        assert standing.is_known("198.51.100.7")
        for _ in range(4):
            codes.append((await asgi_request(mw, "/", "198.51.100.7", []))[0])
        return codes

    assert asyncio.run(run()) == [200] * 6 + [429]
    assert not standing.is_known("198.51.100.7")


# -- the effects during an anomaly ------------------------------------------------------


def _hold(site: Site, address: str) -> tuple[int, Any]:
    """One request whose response is left open: admitted, it holds its slot."""
    status: list[int] = []
    out = site.mw(env(address), lambda s, h, e=None: status.append(int(s[:3])))
    return status[0], out


def test_admission_sheds_unknown_clients_first_and_keeps_known_ones() -> None:
    """Admission at its limit (4, unknown clients filling at most half): a known client
    is admitted up to the whole limit while unknown ones are shed (503), during an
    anomaly and outside one."""
    site = Site(min_requests=2, min_age=1.0)
    site.limiter.admission(thresholds=(0.5, 1.0), initial_limit=4, min_limit=4)
    site.visit("198.51.100.7", 2, 1.0)
    assert site.known("198.51.100.7")
    site.switch.on = True
    held = [_hold(site, f"203.0.113.{i}") for i in range(3)]
    assert [s for s, _ in held] == [200, 200, 503]  # unknown: half the limit
    known = [_hold(site, "198.51.100.7") for _ in range(3)]
    assert [s for s, _ in known] == [200, 200, 503]  # known: the rest of it
    for _, out in held + known:
        close = getattr(out, "close", None)
        if close is not None:
            close()  # the slots go back
    site.switch.on = False
    held = [_hold(site, f"203.0.113.{i}") for i in range(3)]
    known = [_hold(site, "198.51.100.7") for _ in range(3)]
    assert [s for s, _ in held + known] == [200, 200, 503, 200, 200, 503]


def test_known_clients_are_not_challenged() -> None:
    """A challenge on during the anomaly: an unknown client gets the 303, a known one
    reaches the app."""
    site = Site(min_requests=2, min_age=1.0)
    site.limiter.challenge(key="k" * 32, when=site.switch)
    site.visit("198.51.100.7", 2, 1.0)
    site.switch.on = True
    assert site.get("203.0.113.5") == 303
    assert site.get("198.51.100.7") == 200


def test_containment_exempts_known_clients() -> None:
    """A contained path (1 request per second for everyone on it): unknown clients are
    throttled once it is spent, a known client never is."""
    site = Site(min_requests=2, min_age=1.0)
    rule = ContainmentRule(site.limiter, "shield")
    site.visit("198.51.100.7", 2, 1.0)
    site.switch.on = True
    rule.add([Containment("path", "/search", 1.0, 50.0, 0.1, 1.0, T0)])
    codes = [site.get(f"203.0.113.{i}", "/search") for i in range(30)]
    assert 429 in codes
    assert all(site.get("198.51.100.7", "/search") == 200 for _ in range(30))
    assert site.get("203.0.113.200", "/") == 200  # outside the contained value


def test_in_dry_run_standing_is_built_but_changes_nothing() -> None:
    """dry_run: the client is promoted (is_known, len) but during an anomaly admission,
    challenges and containment treat it as unknown."""
    site = Site(min_requests=2, min_age=1.0, dry_run=True)
    site.limiter.challenge(key="k" * 32, when=site.switch)
    site.visit("198.51.100.7", 2, 1.0)
    assert site.known("198.51.100.7") and len(site.standing) == 1
    site.switch.on = True
    assert site.get("198.51.100.7") == 303


def test_a_valid_pass_makes_a_client_known() -> None:
    """A request whose challenge mark says it holds a valid pass is known, standing or
    not."""
    site = Site()
    mark = type("Mark", (), {"action": "known"})()
    from throttlekit._request import RequestView

    view = RequestView.from_environ({**env("203.0.113.5"), CHALLENGE_KEY: mark},
                                    site.mw.resolver)
    assert site.standing.known(view)
    other = RequestView.from_environ(env("203.0.113.5"), site.mw.resolver)
    assert not site.standing.known(other)


# -- sharing: Redis ---------------------------------------------------------------------


def _shared_storage(prefix: str) -> Any:
    try:
        import redis  # noqa: F401
    except ImportError:
        pytest.skip("redis-py is not installed")
    storage = storage_from_url(SHARED_REDIS, prefix=prefix)
    try:
        storage.sync_client().ping()
    except Exception as exc:
        pytest.skip(f"no Redis on 6379: {exc}")
    return storage


def _delete_own_keys(storage: Any, clients: Iterable[str]) -> None:
    client = storage.sync_client()
    client.delete(*[storage.family(f"standing:{c}") for c in clients])


def _second_process(prefix: str, clients: list[str]) -> list[bool]:
    """Another worker: during an anomaly, which of ``clients`` it finds known (it never
    saw them)."""
    storage = storage_from_url(SHARED_REDIS, prefix=prefix)
    limiter = Limiter(storage)
    standing = Standing(limiter, when=lambda: True)
    from throttlekit._request import RequestView

    mw = WSGIMiddleware(app, limiter)
    out = []
    for c in clients:
        view = RequestView.from_environ(env(c), mw.resolver)
        out.append(standing.known(view))
    storage.close()
    return out


@pytest.mark.redis
def test_standing_is_shared_by_two_processes_on_redis() -> None:
    """A worker promotes two clients and writes them in one flush; another process,
    during an anomaly, finds them known and a client nobody promoted unknown."""
    prefix = f"tk-test-standing:{uuid.uuid4().hex[:12]}:"
    storage = _shared_storage(prefix)
    clock = FakeClock(T0)
    limiter = Limiter(storage, clock=clock)
    standing = Standing(limiter, when=lambda: False, min_requests=2, min_age=1.0,
                        flush_interval=5.0)
    mw = WSGIMiddleware(app, limiter)
    clients = ["198.51.100.7", "198.51.100.8", "203.0.113.9"]
    try:
        for _ in range(2):
            for c in clients[:2]:
                for _ in mw(env(c), lambda s, h, e=None: None):
                    pass
            clock.advance(1.0)
        assert standing.memory()["queued"] == 2  # (the interval is not over)
        standing.flush()
        assert standing.memory()["queued"] == 0
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(1) as pool:
            found = pool.apply(_second_process, (prefix, clients))
        assert found == [True, True, False]
    finally:
        _delete_own_keys(storage, clients)
        storage.close()


@pytest.mark.redis
def test_store_calls_are_one_pipeline_per_interval_and_none_without_an_anomaly() -> None:
    """200 clients promoted over many requests: the store sees one pipeline per flush
    interval and no read (no anomaly); during one, each unknown client is asked once."""
    prefix = f"tk-test-standing:{uuid.uuid4().hex[:12]}:"
    storage = _shared_storage(prefix)
    calls = {"pipeline": 0, "get": 0}
    real = storage.sync_client()

    class Counting:
        def pipeline(self, **kw: Any) -> Any:
            calls["pipeline"] += 1
            return real.pipeline(**kw)

        def get(self, key: str) -> Any:
            calls["get"] += 1
            return real.get(key)

        def delete(self, *keys: str) -> Any:
            return real.delete(*keys)

    storage.sync_client = lambda: Counting()  # what Standing asks the storage for
    clock = FakeClock(T0)
    limiter = Limiter(clock=clock)  # the rules on memory, standing on Redis
    switch = Switch()
    standing = Standing(limiter, when=switch, storage=storage, min_requests=2, min_age=1.0,
                        flush_interval=1.0)
    mw = WSGIMiddleware(app, limiter)
    clients = [f"198.51.{i // 100}.{i % 100 + 1}" for i in range(200)]
    try:
        for _ in range(5):  # at 0, 0.5, 1.0 (promotions), 1.5 and 2.0 s
            for c in clients:
                for _ in mw(env(c), lambda s, h, e=None: None):
                    pass
            clock.advance(0.5)
        # the first promotion's flush at 1.0 s, the other 199 in one pipeline at 2.0 s
        assert calls == {"pipeline": 2, "get": 0}, calls
        assert all(real.get(storage.family(f"standing:{c}")) for c in clients)
        switch.on = True
        from throttlekit._request import RequestView

        strangers = [f"203.0.113.{i}" for i in range(1, 21)]
        for _ in range(3):
            for c in strangers:
                assert not standing.known(RequestView.from_environ(env(c), mw.resolver))
        assert calls["get"] == 20
    finally:
        standing.flush()
        _delete_own_keys(storage, clients)
        storage.close()


@pytest.mark.redis
def test_inside_an_event_loop_the_store_is_asked_off_the_loop() -> None:
    """In a coroutine (an ASGI entry) the flush and a look-up run in the loop's executor:
    the first ask answers unknown at once, the store's answer is there a moment later."""
    import asyncio

    prefix = f"tk-test-standing:{uuid.uuid4().hex[:12]}:"
    storage = _shared_storage(prefix)
    clock = FakeClock(T0)
    limiter = Limiter(clock=clock)
    switch = Switch()
    writer = Standing(limiter, when=switch, storage=storage, min_requests=2, min_age=1.0,
                      flush_interval=1.0)
    reader_limiter = Limiter(clock=clock)
    reader = Standing(reader_limiter, when=switch, storage=storage)
    mw = WSGIMiddleware(app, limiter)
    from throttlekit._request import RequestView

    view = RequestView.from_environ(env("198.51.100.7"), mw.resolver)

    async def run() -> tuple[bool, bool, bool]:
        writer.seen(view)
        clock.advance(1.0)
        writer.seen(view)  # promoted, queued
        clock.advance(1.0)
        writer.seen(view)  # the interval is over: flushed in the executor
        for _ in range(100):
            if storage.sync_client().get(storage.family("standing:198.51.100.7")):
                break
            await asyncio.sleep(0.01)
        switch.on = True
        first = reader.known(view)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if reader.is_known("198.51.100.7"):
                break
        return writer.is_known("198.51.100.7"), first, reader.known(view)

    try:
        assert asyncio.run(run()) == (True, False, True)
    finally:
        _delete_own_keys(storage, ["198.51.100.7"])
        storage.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with start_or_skip(RedisServer()) as server:
        yield server


@pytest.mark.redis
@pytest.mark.slow
def test_a_dead_store_leaves_standing_local_and_never_refuses(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The store killed: every request is still answered by the app, standing goes on in
    this worker (promotions, known clients), during an anomaly unknown clients are simply
    unknown, and the failure is logged once."""
    storage = storage_from_url(own_redis.url, prefix="standing-dead:", socket_timeout=0.5)
    clock = FakeClock(T0)
    limiter = Limiter(clock=clock)
    switch = Switch()
    standing = Standing(limiter, when=switch, storage=storage, min_requests=2, min_age=1.0,
                        flush_interval=1.0, retry_after=30.0)
    mw = WSGIMiddleware(app, limiter)
    statuses: list[int] = []

    def get(address: str) -> None:
        for _ in mw(env(address), lambda s, h, e=None: statuses.append(int(s[:3]))):
            pass

    own_redis.stop()
    rng = random.Random(3)
    clients = [f"198.51.100.{i}" for i in range(1, 30)]
    with caplog.at_level(logging.WARNING, logger="throttlekit"):
        for _ in range(6):
            for c in rng.sample(clients, len(clients)):
                get(c)
            clock.advance(1.0)
        switch.on = True
        for i in range(1, 40):
            get(f"203.0.113.{i}")
    assert set(statuses) == {200}
    assert all(standing.is_known(c) for c in clients)
    failures = [r for r in caplog.records if "standing" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    from throttlekit._request import RequestView

    assert not standing.known(RequestView.from_environ(env("203.0.113.1"), mw.resolver))
    storage.close()
