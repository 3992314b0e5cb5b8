"""Two hosts share one store, their clocks ``skew`` apart (2 ms to 900 ms), around a window
boundary: together they admit what one host would, no more.

Host B's clock is ahead: just after a boundary B counts in the new window while host A, still
before it on its own clock, reads a state of the window after its own. That is not a clock
stepped back (docs/algorithms.md, "A clock stepped back", which moves the count back to now's
window): within ``throttlekit._algorithms.CLOCK_SKEW_US`` (1 s) A counts in that later window
as if its clock were at the window's start, and answers ``reset_after``/``retry_after`` on its
own clock (what they would be at that start, plus the gap to it). Before that, A moved B's
count back into its own window, B then saw an older window and started afresh, and so on:
alternating requests in the skew interval were all admitted (100 of 100 against "5/minute"
at 2 ms).

Beyond the tolerance the step-back rule still applies (each host counts in its own window):
``clock="server"`` (Redis) is the remedy for hosts that far apart. Memcached keeps a counter
per window key, so its two hosts count in separate keys: the interval admits at most what a
boundary burst does (twice the limit), never more. The token bucket and the sliding log never
had the defect.
"""

from __future__ import annotations

import importlib
import multiprocessing
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from werkzeug.test import Client

from backends import NAMES
from throttlekit import Limiter, MemoryStorage, WSGIMiddleware, storage_from_url
from throttlekit._decision import Decision
from throttlekit.storage import Storage
from throttlekit.storage.synced import SyncedStorage

BACKEND_MODULES = {name: importlib.import_module(f"backends.{name}") for name in NAMES}

LIMIT = 5
RATE = f"{LIMIT}/minute"
P_US = 60_000_000
#: a minute boundary (FakeClock's default start + 60 s), in microseconds: B crosses it first
S_US = 1_699_920_060_000_000
TOLERANCE_US = 1_000_000  # throttlekit._algorithms.CLOCK_SKEW_US
SKEWS = [pytest.param(2_000, id="2ms"), pytest.param(300_000, id="300ms"),
         pytest.param(900_000, id="900ms")]
STRATEGIES = ["fixed_window", "sliding_window", "sliding_log", "token_bucket"]
WINDOWS = ("fixed_window", "sliding_window")
REQUESTS = 100

#: how two hosts share a store -> the backend whose session (server) it needs
SHARED = {"memory": "memory", "redis": "redis", "redis_cluster": "redis_cluster",
          "redis_sentinel": "redis_sentinel", "synced": "redis", "memcached": "memcached"}
#: the stores that decide one request at a time on the one shared state (no leases, no key
#: per window): their decisions are exactly one host's
EXACT = ("memory", "redis", "redis_cluster", "redis_sentinel")


class UsClock:
    """A host's clock, set in integer microseconds and read as the Limiter reads a clock
    (``int(clock() * 1_000_000)``), so its decisions are made at exactly ``us``."""

    def __init__(self) -> None:
        self.us = 0

    def __call__(self) -> float:
        return (self.us + 0.5) / 1e6  # (the half: no float rounding below ``us``)


class Hosts:
    """Host A and host B, one Limiter each on the shared store; B's clock ``skew_us`` ahead."""

    def __init__(self, name: str, a: Limiter, b: Limiter, clock_a: UsClock, clock_b: UsClock,
                 skew_us: int) -> None:
        self.name, self.a, self.b = name, a, b
        self.clock_a, self.clock_b, self.skew_us = clock_a, clock_b, skew_us

    def at(self, us: int) -> None:
        """Real time ``us`` (A's clock): B reads ``us + skew_us``."""
        self.clock_a.us = us
        self.clock_b.us = us + self.skew_us


def _pair(name: str, ctx: Any, prefix: str) -> tuple[Storage, Storage]:
    """The two hosts' storages of one shared store (the same key prefix)."""
    if name == "memory":
        store = MemoryStorage()
        return store, store
    if name == "synced":
        return (SyncedStorage(storage_from_url(ctx.url, prefix=prefix)),
                SyncedStorage(storage_from_url(ctx.url, prefix=prefix)))
    return (storage_from_url(ctx.url, prefix=prefix), storage_from_url(ctx.url, prefix=prefix))


def _hosts_factory(name: str, contexts: dict[str, Any]) -> Iterator[Callable[..., Hosts]]:
    ctx = contexts["get"](SHARED[name])
    prefix = f"tk-test:{uuid.uuid4().hex[:12]}:"
    if hasattr(ctx, "prefixes"):  # the shared Redis: the session deletes the prefix's keys
        ctx.prefixes.append(prefix)
    made: list[Storage] = []

    def make(skew_us: int, strategy: str) -> Hosts:
        first, second = _pair(name, ctx, prefix)
        made.extend((first,) if first is second else (first, second))
        # (a store error must not pass for an admission)
        policy = "local" if name == "memory" else "deny"
        clock_a, clock_b = UsClock(), UsClock()
        return Hosts(name,
                     Limiter(first, strategy=strategy, clock=clock_a, on_storage_error=policy),
                     Limiter(second, strategy=strategy, clock=clock_b, on_storage_error=policy),
                     clock_a, clock_b, skew_us)

    yield make
    for storage in made:
        storage.close()


def _params(names: Any) -> list[Any]:
    return [pytest.param(n, marks=BACKEND_MODULES[SHARED[n]].MARKS, id=n) for n in names]


@pytest.fixture(params=_params(SHARED))
def hosts(request: pytest.FixtureRequest,
          _backend_contexts: dict[str, Any]) -> Iterator[Callable[..., Hosts]]:
    """``hosts(skew_us, strategy)``: two hosts on a fresh shared store of each kind."""
    yield from _hosts_factory(request.param, _backend_contexts)


@pytest.fixture(params=_params(EXACT))
def exact_hosts(request: pytest.FixtureRequest,
                _backend_contexts: dict[str, Any]) -> Iterator[Callable[..., Hosts]]:
    """``hosts`` on the stores whose every decision is exactly one host's."""
    yield from _hosts_factory(request.param, _backend_contexts)


def _interval(skew_us: int, n: int = REQUESTS) -> list[int]:
    """``n`` instants (A's clock) spread over the skew interval: B past the boundary, A not."""
    return [S_US - skew_us + (i + 1) * skew_us // (n + 1) for i in range(n)]


def _alternate(h: Hosts, rate: str, instants: list[int]) -> list[bool]:
    """B first, then A and B in turn, one request each at each of ``instants``."""
    allowed = []
    for i, us in enumerate(instants):
        h.at(us)
        allowed.append((h.b if i % 2 == 0 else h.a).hit("k", rate).allowed)
    return allowed


def _check_bounded(h: Hosts, strategy: str, allowed: list[bool], used_before: int) -> None:
    """What the skew interval may admit, after ``used_before`` requests earlier in A's
    window: one host's answer on an exact store (a fixed window: its new window's limit;
    the others: what is left of the limit); at most that on leases (SyncedStorage); on
    memcached's window keys, at most a boundary burst (twice the limit, in all)."""
    admitted = sum(allowed)
    seen = f"{admitted} of {len(allowed)} admitted: {_marks(allowed)}"
    left = LIMIT if strategy == "fixed_window" else LIMIT - used_before
    if h.name == "memcached" and strategy in WINDOWS:
        assert used_before + admitted <= 2 * LIMIT, seen
    elif h.name in EXACT and strategy in WINDOWS:
        assert allowed == [True] * left + [False] * (len(allowed) - left), seen
    else:
        assert admitted <= left, seen


def _marks(allowed: list[bool]) -> str:
    """``+`` an admitted request, ``-`` a refused one, in order (B's first)."""
    return "".join("+" if a else "-" for a in allowed)


@pytest.mark.parametrize("used_before", [0, 3])
@pytest.mark.parametrize("skew_us", SKEWS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_alternating_hosts_in_the_skew_interval_admit_the_limit_once(
        hosts: Callable[..., Hosts], strategy: str, skew_us: int, used_before: int) -> None:
    """A key (fresh, or with ``used_before`` requests 10 s before the boundary); B hits just
    after its boundary, then A and B alternate 100 times in the skew interval (A still before
    the boundary on its own clock): together they admit what one host would (5 of 100 with a
    fresh key), not 100 of 100. Memcached's window keys: at most a boundary burst (2x)."""
    h = hosts(skew_us, strategy)
    h.at(S_US - 10_000_000)
    assert all(h.a.hit("k", RATE).allowed for _ in range(used_before))
    allowed = _alternate(h, RATE, _interval(skew_us))
    _check_bounded(h, strategy, allowed, used_before)


@pytest.mark.parametrize("skew_us", SKEWS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_request_of_several_checks_is_bounded_too(hosts: Callable[..., Hosts],
                                                    strategy: str, skew_us: int) -> None:
    """The same with two limits a request ("5/minute;1000/day": two checks, the batch
    script on Redis): the minute's limit is admitted once across the two hosts."""
    h = hosts(skew_us, strategy)
    allowed = _alternate(h, f"{RATE};1000/day", _interval(skew_us))
    _check_bounded(h, strategy, allowed, 0)


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.mark.parametrize("skew_us", SKEWS)
@pytest.mark.parametrize("strategy", WINDOWS)
def test_the_middleware_with_two_rules_and_block_keys_is_bounded(
        hosts: Callable[..., Hosts], strategy: str, skew_us: int) -> None:
    """Two apps behind the middleware (two rules, and a blocklist entry elsewhere, so each
    request also looks up its client's block keys: the batch script on Redis): one client's
    requests alternating between the hosts in the skew interval get the limit's 200s once."""
    h = hosts(skew_us, strategy)
    clients = []
    for limiter in (h.b, h.a):
        limiter.throttle("per-ip", RATE, strategy=strategy)
        limiter.throttle("site", "1000/day", key=lambda r: "site", strategy=strategy)
        clients.append(Client(WSGIMiddleware(_app, limiter)))
    h.at(S_US - 30_000_000)
    h.a.block("198.51.100.99", ttl=3600)  # someone else: the blocklist is not empty
    allowed = []
    for i, us in enumerate(_interval(skew_us)):
        h.at(us)
        status = clients[i % 2].get("/", environ_base={"REMOTE_ADDR": "203.0.113.7"}).status_code
        assert status in (200, 429), status
        allowed.append(status == 200)
    _check_bounded(h, strategy, allowed, 0)


def _reference(strategy: str) -> tuple[Limiter, UsClock]:
    """One host alone (the oracle): what a host decides at the later window's start."""
    clock = UsClock()
    return Limiter(MemoryStorage(), strategy=strategy, clock=clock), clock


def _same_shifted(got: Decision, want: Decision, gap_us: int) -> None:
    """``got`` is ``want`` (decided at the window's start) seen ``gap_us`` before it: the
    same answer and count, its times longer by the gap (to the microsecond)."""
    gap = gap_us / 1e6
    assert (got.allowed, got.limit, got.remaining) == (want.allowed, want.limit, want.remaining)
    assert got.reset_after == pytest.approx(want.reset_after + gap, abs=1e-6)
    if want.allowed:
        assert got.retry_after == 0
    else:
        assert got.retry_after == pytest.approx(want.retry_after + gap, abs=1e-6)


@pytest.mark.parametrize("skew_us", SKEWS)
@pytest.mark.parametrize("strategy", WINDOWS)
def test_the_host_behind_answers_from_the_later_window_on_its_own_clock(
        exact_hosts: Callable[..., Hosts], strategy: str, skew_us: int) -> None:
    """B hits twice just after the boundary; A, before it on its own clock, then hits until
    refused: A's remaining counts B's two requests, and its reset_after and retry_after are
    the later window's, seen from A's clock (a fixed window: the gap to the boundary plus the
    period, exactly); B then sees A's requests."""
    h = exact_hosts(skew_us, strategy)
    ref, ref_clock = _reference(strategy)
    h.at(S_US - skew_us * 3 // 4)  # B a quarter of the skew past the boundary
    ref_clock.us = h.clock_b.us
    for _ in range(2):
        assert h.b.hit("k", RATE).remaining == ref.hit("k", RATE).remaining
    ref_clock.us = S_US
    for j in range(LIMIT - 1):  # three allowed, then a refusal
        h.at(S_US - skew_us // 2 + j * skew_us // 10)
        gap_us = S_US - h.clock_a.us
        got, want = h.a.hit("k", RATE), ref.hit("k", RATE)
        _same_shifted(got, want, gap_us)
        assert got.remaining == max(0, LIMIT - 2 - (j + 1))  # B's two, A's j + 1
        if strategy == "fixed_window":
            assert got.reset_after == pytest.approx((gap_us + P_US) / 1e6, abs=1e-6)
    assert [got.allowed, want.allowed] == [False, False]
    d = h.b.hit("k", RATE)  # B counts A's three
    assert (d.allowed, d.remaining) == (False, 0)


@pytest.mark.parametrize("strategy", WINDOWS)
def test_beyond_the_tolerance_each_host_counts_in_its_own_window(
        exact_hosts: Callable[..., Hosts], strategy: str) -> None:
    """Clocks 1.5 s apart. While A is more than CLOCK_SKEW_US (1 s) before the boundary, B's
    state reads to A as a clock stepped back: A carries its count into A's own window
    (docs/algorithms.md, "A clock stepped back"), B then sees an older window, and alternate
    requests are all admitted: a known limit of the tolerance (Redis' clock="server" gives
    every host one clock). Once A is within 1 s of the boundary, it counts in B's window
    and the hosts admit the limit once."""
    skew_us = 1_500_000
    h = exact_hosts(skew_us, strategy)
    h.at(S_US - 1_400_000)
    assert h.b.hit("k", RATE).remaining == LIMIT - 1
    h.at(S_US - 1_300_000)
    d = h.a.hit("k", RATE)  # B's request carried into A's window, reset at A's boundary
    assert (d.allowed, d.remaining) == (True, LIMIT - 2)
    if strategy == "fixed_window":
        assert d.reset_after == pytest.approx(1.3, abs=1e-6)
    beyond = [S_US - 1_300_000 + i * 10_000 for i in range(1, 21)]  # up to S - 1.1 s
    assert all(_alternate(h, RATE, beyond)), "beyond the tolerance: one window per host"
    within = [S_US - 900_000 + i * 8_000 for i in range(REQUESTS)]  # S - 0.9 s .. S - 0.1 s
    allowed = _alternate(h, RATE, within)
    assert sum(allowed) <= LIMIT, _marks(allowed)


def _skewed_worker(url: str, prefix: str, behind_us: int, ready: Any, go: Any, shift: Any,
                   end: Any, out: Any) -> None:
    """One process (host) whose clock is ``behind_us`` behind the leader's: hit each
    strategy's key in turn until ``end``; put the admitted counts and how many requests it
    made before the boundary on its clock."""
    offset = [0.0]
    # (no cached refusals: every request meets the other hosts' state in the store)
    limiter = Limiter(storage_from_url(url, prefix=prefix, socket_timeout=5.0),
                      on_storage_error="deny", denial_cache_size=0,
                      clock=lambda: time.time() + offset[0])
    for strategy in STRATEGIES:  # connected, scripts loaded: the hits start at once
        limiter.test(f"warm-{strategy}", RATE, strategy=strategy)
    ready.put(behind_us)
    go.wait(30)
    offset[0] = shift.value - behind_us / 1e6
    counts = dict.fromkeys(STRATEGIES, 0)
    before = 0
    while (t := time.time()) < end.value:
        before += t + offset[0] < S_US / 1e6
        for strategy in STRATEGIES:
            counts[strategy] += limiter.hit(strategy, RATE, strategy=strategy).allowed
    limiter.storage.close()
    out.put((counts, before))


@pytest.mark.redis
@pytest.mark.slow
def test_processes_with_skewed_clocks_across_a_boundary_admit_the_limit(
        redis_prefix: str, _backend_contexts: dict[str, Any]) -> None:
    """A leader hits each key just after a minute boundary (on its clock); four processes
    whose clocks are 0-600 ms behind it (so that some hit before the boundary on theirs even
    when the machine is slow to wake them) then hammer the keys on Redis for 0.5 s, from before
    the boundary (on their clocks) to after it: the total admitted is the limit, exactly,
    for every strategy (the token bucket: at most it)."""
    url = _backend_contexts["get"]("redis").url
    ctx = multiprocessing.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    shift, end = ctx.Value("d", 0.0), ctx.Value("d", 0.0)
    procs = [ctx.Process(target=_skewed_worker,
                         args=(url, redis_prefix, behind, ready, go, shift, end, out))
             for behind in (0, 200_000, 400_000, 600_000)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=30)
        lead = UsClock()
        lead.us = S_US + 500  # the leader's first requests: just past the boundary
        leader = Limiter(storage_from_url(url, prefix=redis_prefix), clock=lead,
                         on_storage_error="deny")
        led = {s: leader.hit(s, RATE, strategy=s).allowed for s in STRATEGIES}
        assert all(led.values())
        shift.value = (S_US + 1_000) / 1e6 - time.time()  # the leader's clock reads S + 1 ms
        end.value = time.time() + 0.5
        go.set()
        totals = dict.fromkeys(STRATEGIES, 1)  # the leader's
        before = []
        for _ in procs:
            counts, early = out.get(timeout=30)
            before.append(early)
            for s, n in counts.items():
                totals[s] += n
        leader.storage.close()
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():  # pragma: no cover - a stuck worker
                p.kill()
    assert sum(before) > 0, "no process hit before the boundary on its clock (a stall?)"
    counted = {s: n for s, n in totals.items() if s != "token_bucket"}
    assert counted == dict.fromkeys(counted, LIMIT) and totals["token_bucket"] <= LIMIT, totals
