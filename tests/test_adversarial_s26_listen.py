"""Session 26, issue 14: event listeners, the Monitor and the Shield on the engine's fast
path. With listeners the verdicts are those without (admissions, 429s, header fields);
the monitor's counts are what was served, across threads and at window edges; a shield's
containment takes effect at once and never raises on hostile headers; real servers."""

from __future__ import annotations

import asyncio
import functools
import random
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.test import Client

from threads import run_threads
from throttlekit import ASGIMiddleware, Event, Limiter, RequestView, Verdict, WSGIMiddleware
from throttlekit._responses import rate_limit_headers
from throttlekit.monitor import Monitor, Shield
from throttlekit.monitor._containment import Containment, ContainmentRule
from throttlekit.testing import FakeClock

T0 = 1_700_000_040.0
IPS = ["198.51.100.7", "198.51.100.8", "2001:db8:1:2::5", "::ffff:203.0.113.9", "203.0.113.5"]
RATES = ["3/second", "5/2 seconds", "2/second; 4/3 seconds", "6/minute; 2/second"]
STRATEGIES = ["fixed_window", "sliding_window", "sliding_log", "token_bucket"]
KINDS = ["plain", "plain", "paths", "match", "key", "cost", "plans"]
#: how each limiter of a comparison listens (the first: nobody)
MODES = ["none", "general", "listen", "monitor", "shield", "raising", "late", "nested"]


def _view(limiter: Limiter, ip: str, method: str, path: str) -> RequestView:
    scope = {"type": "http", "method": method, "path": path, "headers": [],
             "client": (ip, 1234)}
    return RequestView.from_scope(scope, limiter.resolver)


class _Recorder:
    """Events as (kind, rule, key, dry_run, at to 10 µs): the fast path tells the decision's
    time in whole microseconds, the general path reads the clock."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []

    def __call__(self, e: Event) -> None:
        self.log.append((e.kind, e.rule, e.key, e.dry_run, round(e.at, 5)))


def _limiter(specs: list[tuple[str, str, str]], mode: str, clock: FakeClock, lists: bool,
             track: bool) -> tuple[Limiter, _Recorder]:
    lim = Limiter("memory://", clock=clock)
    if lists:
        lim.safelist("health", lambda r: r.path == "/healthz")
        lim.blocklist("bad-nets", ips=["203.0.113.0/24"])
    for i, (rates, strategy, kind) in enumerate(specs):
        kw: dict[str, Any] = {
            "paths": {"paths": ["/a"]}, "match": {"match": lambda r: r.method == "POST"},
            "key": {"key": lambda r: r.path},
            "cost": {"cost": lambda r: 2 if r.path == "/a" else 1},
        }.get(kind, {})
        rule_rates: Any = rates
        if kind == "plans":
            rule_rates = lim.plans({"free": rates, "pro": "100/second"},
                                   lambda r: "pro" if r.path == "/pro" else "free")
        lim.throttle(f"t{i}", rule_rates, strategy=strategy, **kw)
    if track:
        lim.track("all")
    rec = _Recorder()
    if mode in ("general", "listen"):
        lim.on(rec)
        if mode == "general":
            lim.engine.rules.fast = False  # the general path: plan, store call, conclude
    elif mode in ("monitor", "shield"):
        monitor = Monitor(lim, publish=False, sample=1)
        if mode == "shield":
            Shield(lim, monitor)  # its containment rule is registered, containing nothing
    elif mode == "raising":
        def broken(event: Event) -> None:
            raise RuntimeError("a broken hook")
        lim.on(broken)
        lim.on(rec)
    return lim, rec


class _Subscriber:
    """On its first event, subscribes ``nested`` to every kind, from inside the listener."""

    def __init__(self, limiter: Limiter, whole: _Recorder, nested: _Recorder) -> None:
        self.limiter, self.whole, self.nested = limiter, whole, nested
        self.at: int | None = None  # events ``whole`` had then (this one included)

    def __call__(self, event: Event) -> None:
        if self.at is None:
            self.at = len(self.whole.log)
            self.limiter.on(self.nested)


def _told(v: Verdict) -> tuple[Any, ...]:
    """What a client is told of a verdict (the IETF fields: the legacy Reset field is
    read off the wall clock)."""
    return (v.allowed, v.kind, v.rule, v.key, v.decision, v.policies, v.degraded, v.pending,
            rate_limit_headers(v.policies, "draft10") if v.policies else None)


@pytest.mark.parametrize("seed", range(6))
def test_every_kind_of_listener_leaves_the_verdicts_and_events_as_they_were(
        seed: int, caplog: pytest.LogCaptureFixture) -> None:
    """Random rule sets (conditions, match, key and cost functions, plans, lists, tracks)
    and traffic: limiters listened to by nobody, a callback, a Monitor, a Monitor + Shield,
    a raising callback, a callback subscribed after traffic began, and one subscribing
    another from inside itself, each answer every request alike; the fast path with a
    callback tells the events the general path tells."""
    caplog.set_level("CRITICAL", logger="throttlekit")
    rng = random.Random(seed)
    for _ in range(60):
        specs = [(rng.choice(RATES), rng.choice(STRATEGIES), rng.choice(KINDS))
                 for _ in range(rng.randint(1, 3))]
        lists, track = rng.random() < 0.5, rng.random() < 0.5
        clocks = {m: FakeClock(T0) for m in MODES}
        built = {m: _limiter(specs, m, clocks[m], lists, track) for m in MODES}
        late = _Recorder()

        whole, nested = _Recorder(), _Recorder()
        built["nested"][0].on(whole)
        subscriber = _Subscriber(built["nested"][0], whole, nested)
        built["nested"][0].on("allowed", subscriber)
        for n in range(50):
            if n == 20:
                built["late"][0].on(late)  # the engine had decided 20 requests already
                since = len(built["listen"][1].log)
            ip, method = rng.choice(IPS), rng.choice(["GET", "POST"])
            path, wait = rng.choice(["/", "/a", "/healthz", "/pro"]), rng.choice(
                [0.0, 0.0, 0.1, 0.4, 1.3])
            told = {}
            for mode, (lim, _) in built.items():
                clocks[mode].advance(wait)
                told[mode] = _told(lim.evaluate(_view(lim, ip, method, path)))
            assert all(t == told["none"] for t in told.values()), (specs, n, told)
        general, listen = built["general"][1].log, built["listen"][1].log
        assert general == listen, specs
        assert built["raising"][1].log == listen
        assert late.log == listen[since:]
        assert whole.log == listen
        at = subscriber.at
        assert nested.log == whole.log[at:] if at is not None else not nested.log


def test_threads_get_exact_admissions_and_the_monitor_counts_each_request_once() -> None:
    """Four threads, two rules on every request (per client, and one for everybody), a
    Monitor and a callback, the interpreter switching threads every 10 µs: exactly the
    global limit is admitted, and the monitor counts each request once although another
    thread's events come between the two rules' (it counted 1,603 of 1,600 before)."""
    clock = FakeClock(T0)
    lim = Limiter("memory://", clock=clock)
    lim.throttle("per-ip", "50/hour")
    lim.throttle("all", "700/hour", key=lambda r: "all")
    monitor = Monitor(lim, publish=False)
    told: Counter[tuple[str, str]] = Counter()
    lock = threading.Lock()

    def record(e: Event) -> None:
        with lock:
            told[e.kind, e.rule] += 1

    lim.on(record)
    views = [[_view(lim, f"10.0.{t}.{i % 20}", "GET", "/") for i in range(1000)]
             for t in range(4)]
    served: Counter[tuple[bool, str | None]] = Counter()

    def run(t: int) -> None:
        mine: Counter[tuple[bool, str | None]] = Counter()
        for v in views[t]:
            verdict = lim.evaluate(v)
            mine[verdict.allowed, verdict.rule] += 1
        with lock:
            served.update(mine)

    run_threads(*(functools.partial(run, t) for t in range(4)))
    assert served == {(True, None): 700, (False, "all"): 3300}
    assert told == {("allowed", "all"): 700, ("allowed", "per-ip"): 700,
                    ("throttled", "all"): 3300}
    counts = {("all", "allowed", False): 700, ("per-ip", "allowed", False): 700,
              ("all", "throttled", False): 3300}
    measured = [(monitor.requests, 4000), (sum(monitor.client_counts(T0).values()), 4000),
                *((monitor.counts().get(k, 0), n) for k, n in counts.items())]
    if sys.version_info >= (3, 11):  # no thread switch inside a `+=` there: exact
        assert monitor.counts() == counts
        assert [got for got, _ in measured] == [want for _, want in measured]
    # Never a request counted twice; on 3.10, whose interpreter can switch threads inside
    # an unlocked `+=`, a few increments lost (docs/monitoring.md: no lock per event)
    assert all(0.9 * want <= got <= want for got, want in measured), measured


def test_a_pro_plans_request_never_refills_a_free_clients_token_bucket() -> None:
    """A token bucket under plans: one counter id for every plan of the rule. A pro
    client's first request used to judge the oldest states by the pro plan's refill rate,
    find a free client's emptied bucket full and drop it: that client got a fresh bucket
    (two more requests at once, and a 429's fields said a full bucket)."""
    for other in (False, True):
        clock = FakeClock(T0)
        lim = Limiter("memory://", clock=clock)
        lim.throttle("api", lim.plans({"free": "3/second", "pro": "100/second"},
                                      lambda r: "pro" if r.path == "/pro" else "free"),
                     strategy="token_bucket")
        assert [lim.evaluate(_view(lim, "192.0.2.2", "GET", "/")).allowed
                for _ in range(3)] == [True] * 3
        clock.advance(0.1)
        if other:
            assert lim.evaluate(_view(lim, "192.0.2.1", "GET", "/pro")).allowed
        clock.advance(0.1)
        refused = lim.evaluate(_view(lim, "192.0.2.2", "GET", "/"))
        assert not refused.allowed, other
        assert refused.decision.remaining == 0
        assert refused.decision.retry_after == pytest.approx(0.1333, abs=1e-3)


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_the_monitors_counts_are_what_was_served_across_window_edges() -> None:
    """Through the WSGI middleware on a FakeClock, requests landing right before and right
    on each window and bucket edge, snapshots and status reads in between: the monitor's
    counters per outcome, its request count and its per-client counts are what each
    client was answered."""
    clock = FakeClock(T0)
    lim = Limiter("memory://", clock=clock)
    lim.throttle("per-ip", "5/second", strategy="fixed_window")
    monitor = Monitor(lim, publish=False, sample=1, window=10)
    client = Client(WSGIMiddleware(_wsgi_app, lim))
    served: Counter[tuple[str, int]] = Counter()
    rng = random.Random(3)
    for second in range(8):
        for offset in (0.0, 0.25, 0.999999, 0.9999995):
            clock.set(T0 + second + offset)
            for _ in range(rng.randint(1, 4)):
                ip = rng.choice(["192.0.2.1", "192.0.2.2", "192.0.2.3"])
                status = client.get("/", environ_base={"REMOTE_ADDR": ip}).status_code
                served[ip, status] += 1
            if rng.random() < 0.5:
                monitor.snapshot(clock())
    allowed = sum(n for (_, s), n in served.items() if s == 200)
    refused = sum(n for (_, s), n in served.items() if s == 429)
    assert refused and allowed
    assert monitor.counts() == {("per-ip", "allowed", False): allowed,
                                ("per-ip", "throttled", False): refused}
    assert monitor.requests == allowed + refused
    per_client = monitor.client_counts(clock())
    assert per_client == {ip: served[ip, 200] + served[ip, 429]
                          for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3")}
    assert monitor.snapshot(clock())["counters"] == {
        "per-ip": {"allowed": allowed, "throttled": refused}}


#: hostile User-Agent values, as raw ASGI header lists (bytes)
HOSTILE = [
    [(b"user-agent", b"x" * 200_000)],
    [(b"user-agent", "flood/1.0 \u00e9".encode())],
    [(b"user-agent", b"\xff\xfe\x00\x80")],
    [(b"user-agent", b"flood/1.0"), (b"user-agent", b"flood/1.0")],
    [(b"user-agent", b"")],
    [(b"accept-language", b"\xff" * 10_000), (b"user-agent", b"flood/1.0")],
]


def test_a_containment_bites_on_the_next_request_and_lifting_it_restores_service() -> None:
    """A monitored limiter on its fast path (one plain per-client throttle): the shield's
    containment of a user agent refuses that agent's next requests (no other), the header
    values an attacker picks never raise, and clearing it serves everyone again at once."""
    clock = FakeClock(T0)
    lim = Limiter("memory://", clock=clock)
    lim.throttle("per-ip", "1000/second")
    monitor = Monitor(lim, publish=False, sample=1)
    rule = ContainmentRule(lim, "shield")
    monitor.quiet_rule("shield")
    assert lim.engine.rules.fast
    app = ASGIMiddleware(_asgi_ok, lim)

    def status(ip: str, headers: list[tuple[bytes, bytes]]) -> int:
        return asyncio.run(_raw_request(app, ip, headers))

    assert [status(f"10.1.0.{i}", [(b"user-agent", b"flood/1.0")]) for i in range(5)] == [200] * 5
    rule.add([Containment("user_agent", "flood/1.0", 1.0, 50.0, 1.0, 1.0, T0)])
    flood = [status(f"10.1.1.{i}", [(b"user-agent", b"flood/1.0")]) for i in range(30)]
    assert flood.count(200) == 10 and flood[10:] == [429] * 20  # 10 per 10 s, all together
    for headers in HOSTILE:
        assert status("10.1.2.1", headers) in (200, 429)
    assert status("10.1.3.1", [(b"user-agent", b"curl/8")]) == 200
    rule.clear()
    assert status("10.1.1.99", [(b"user-agent", b"flood/1.0")]) == 200
    assert monitor.counts()[("shield", "throttled", False)] >= 20


async def _asgi_ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _raw_request(app: Any, ip: str, headers: list[tuple[bytes, bytes]]) -> int:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": "/", "raw_path": b"/",
             "query_string": b"", "root_path": "", "client": (ip, 40000),
             "server": ("testserver", 80), "headers": [(b"host", b"t"), *headers]}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"])




# -- real servers: a monitored app under gunicorn (threads) and uvicorn ---------------------

SERVED_APP = '''
import json
import throttlekit
from throttlekit.monitor import Monitor, Shield

limiter = throttlekit.Limiter("memory://", trusted_proxies=1)
limiter.throttle("per-ip", "40/hour")
limiter.throttle("all", "1500/hour", key=lambda r: "all", paths=["/"])
monitor = Monitor(limiter, publish=False)
shield = Shield(limiter, monitor)

def counts():
    return json.dumps({"requests": monitor.requests,
                       "counts": [[*k, n] for k, n in monitor.counts().items()]}).encode()

def wsgi_inner(environ, start_response):
    body = counts() if environ["PATH_INFO"] == "/counts" else b"ok"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]

async def asgi_inner(scope, receive, send):
    if scope["type"] != "http":
        return
    body = counts() if scope["path"] == "/counts" else b"ok"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})

wsgi = throttlekit.WSGIMiddleware(wsgi_inner, limiter)
asgi = throttlekit.ASGIMiddleware(asgi_inner, limiter)
'''


@pytest.fixture(params=["gunicorn", "uvicorn"])
def monitored_server(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    import os
    from pathlib import Path

    from servers import free_port, http_app

    (tmp_path / "tk_s26_app.py").write_text(textwrap.dedent(SERVED_APP))
    src = Path(__file__).resolve().parent.parent / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(tmp_path)])}
    port = free_port()
    if request.param == "gunicorn":  # one worker, threads: one monitor fed by four threads
        argv = [sys.executable, "-m", "gunicorn", "--workers", "1", "--threads", "4",
                "--worker-class", "gthread", "--bind", f"127.0.0.1:{port}",
                "--log-level", "warning", "tk_s26_app:wsgi"]
    else:
        argv = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
                "--no-proxy-headers", "--log-level", "warning", "--no-access-log",
                "tk_s26_app:asgi"]
    with http_app(argv, port, "/counts", env=env) as base:
        yield base


def test_a_monitored_app_under_a_real_server_counts_what_it_served(
        monitored_server: str) -> None:
    """2,000 requests from 50 clients (X-Forwarded-For, one trusted proxy), four client
    threads: no 500; exactly 1,500 admitted (the global rule); the monitor's counters are
    the statuses the clients got, and it counted each request once."""
    import httpx

    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    before = _served_counts(monitored_server)

    def run(t: int) -> None:
        mine: Counter[int] = Counter()
        with httpx.Client(base_url=monitored_server, timeout=30) as http:
            for i in range(500):
                ip = f"198.51.100.{(t * 500 + i) % 50 + 1}"
                mine[http.get("/", headers={"X-Forwarded-For": ip}).status_code] += 1
        with lock:
            statuses.update(mine)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == {200: 1500, 429: 500}
    after = _served_counts(monitored_server)
    assert after["requests"] == before["requests"] + 2001  # (+ the second read)
    assert after["all", "allowed"] == 1500 and after["all", "throttled"] == 500
    assert after["per-ip", "allowed"] == before["per-ip", "allowed"] + 1501
    assert ("per-ip", "throttled") not in after  # 40 requests each: exactly the limit


def _served_counts(base: str) -> dict[Any, int]:
    import httpx

    got = httpx.get(base + "/counts", headers={"X-Forwarded-For": "192.0.2.250"}).json()
    return {"requests": got["requests"], **{(r, k): n for r, k, _dry, n in got["counts"]}}


@pytest.mark.parametrize("strategy", ["fixed_window", "sliding_window", "sliding_log",
                                      "token_bucket"])
@pytest.mark.parametrize(("free", "pro"), [("20/hour", "5/second"), ("3/second", "100/second"),
                                           ("20/minute", "1000/day")])
def test_plans_of_other_periods_never_give_a_client_its_quota_back(
        strategy: str, free: str, pro: str) -> None:
    """Plans of one period share a counter id (one of another period has its own); the
    store reclaims an id's states as the slowest of its rates reads them. A free client at
    its limit stays refused after pro clients' requests made new keys (each insert
    reclaims expired states from the cold end)."""
    clock = FakeClock(T0)
    lim = Limiter("memory://", clock=clock)
    lim.throttle("api", lim.plans({"free": free, "pro": pro},
                                  lambda r: "pro" if r.path == "/pro" else "free"),
                 strategy=strategy)
    limit = int(free.split("/")[0])
    assert all(lim.evaluate(_view(lim, "192.0.2.2", "GET", "/")).allowed
               for _ in range(limit))
    clock.advance(0.05)
    for i in range(10):  # new keys: each insert reclaims up to two expired states
        assert lim.evaluate(_view(lim, f"198.51.100.{i}", "GET", "/pro")).allowed
    assert not lim.evaluate(_view(lim, "192.0.2.2", "GET", "/")).allowed
