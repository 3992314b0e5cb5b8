"""Admission control (``_admission``): the adaptive limit on a synthetic server, priorities,
invariants under random sequences, threads. Simulated time (FakeClock), seeded RNG, no sleeps.

The server of capacity C serves up to C requests at its base latency; past C, each request
takes ``base * inflight / C`` (the work queues). Clients offer a fixed number of requests per
second, arriving each tick of ``DT``; a shed request is gone (counted).
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from throttlekit._admission import AdaptiveLimit, Admission, Ticket
from throttlekit._errors import ConfigError
from throttlekit.testing import FakeClock

DT = 0.002  # one tick of the client model, seconds (the base latency is 50 ticks)
BASE = 0.1


class Server:
    """Capacity ``capacity`` at latency ``base`` (with +-``noise`` jitter), queueing past it."""

    def __init__(self, clock: FakeClock, capacity: int, base: float = BASE, noise: float = 0.1,
                 seed: int = 1) -> None:
        self.clock = clock
        self.capacity = capacity
        self.base = base
        self.noise = noise
        self.rng = random.Random(seed)
        self.inflight = 0
        self.dropped = False  # release every request as dropped (timeouts)
        self._heap: list[tuple[float, int, Ticket]] = []
        self._n = 0

    def work(self) -> float:
        """One request's latency on an idle server."""
        return self.base * (1 + self.noise * (2 * self.rng.random() - 1))

    def serve(self, ticket: Ticket) -> float:
        self.inflight += 1
        latency = self.work() * max(1.0, self.inflight / self.capacity)
        self._n += 1
        heapq.heappush(self._heap, (self.clock.now + latency, self._n, ticket))
        return latency

    def run_until(self, t: float) -> None:
        """Finish every request due by ``t``, each at its own time, then move to ``t``."""
        heap = self._heap
        while heap and heap[0][0] <= t:
            end, _, ticket = heapq.heappop(heap)
            self.clock.set(end)
            self.inflight -= 1
            ticket.release(dropped=self.dropped)
        self.clock.set(t)


@dataclass
class Run:
    """What one stretch of load did, per priority."""

    admitted: list[int]
    shed: list[int]
    limits: list[int] = field(default_factory=list)  # the limit at each tick
    latencies: list[float] = field(default_factory=list)  # of admitted requests
    shed_at: list[float] = field(default_factory=list)  # when requests were shed


def drive(admission: Admission | AdaptiveLimit, server: Server, seconds: float, rate: float,
          priorities: Sequence[int] = (0,)) -> Run:
    """``rate`` requests a second for ``seconds``, priorities taken in turn."""
    clock = server.clock
    n_levels = max(priorities) + 1
    run = Run([0] * n_levels, [0] * n_levels)
    owed = 0.0
    for _ in range(round(seconds / DT)):
        server.run_until(clock.now + DT)
        owed += rate * DT
        n = int(owed)
        owed -= n
        for i in range(n):
            p = priorities[i % len(priorities)]
            ticket = admission.try_acquire(p)
            if ticket is None:
                run.shed[p] += 1
                run.shed_at.append(clock.now)
            else:
                run.admitted[p] += 1
                run.latencies.append(server.serve(ticket))
        run.limits.append(admission.limit if isinstance(admission, AdaptiveLimit)
                          else admission.limit.limit)
    return run


def rate_for(concurrency: float, base: float = BASE) -> float:
    """The arrival rate that keeps ``concurrency`` requests busy at ``base`` latency."""
    return concurrency / base


def make(clock: FakeClock, **settings: object) -> AdaptiveLimit:
    settings.setdefault("jitter", 0)
    return AdaptiveLimit(clock=clock, **settings)  # type: ignore[arg-type]


# -- (1) convergence -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
def test_the_limit_converges_on_the_capacity_and_latency_stays_bounded(seed):
    """Offered 2x capacity: the limit settles within 25% of C; admitted latency < 2x base."""
    clock = FakeClock()
    capacity = 100
    limit = make(clock)
    server = Server(clock, capacity, seed=seed)
    drive(limit, server, 20, rate_for(2 * capacity))  # warm-up from initial_limit=20
    run = drive(limit, server, 60, rate_for(2 * capacity))
    settled = statistics.median(run.limits)
    assert 0.75 * capacity <= settled <= 1.25 * capacity, settled
    assert max(run.latencies) < 2 * BASE
    assert statistics.mean(run.latencies) < 1.4 * BASE
    # about the capacity is served, and the excess was shed
    served_per_second = sum(run.admitted) / 60
    assert served_per_second >= 0.9 * rate_for(capacity)
    assert sum(run.shed) > 0.3 * (sum(run.shed) + sum(run.admitted))
    snap = limit.snapshot()
    assert snap.min_latency == pytest.approx(BASE, rel=0.1)
    assert snap.sample_latency is not None and snap.sample_latency > snap.min_latency


class MixedServer(Server):
    """80% fast requests (20 ms), 20% slow ones (500 ms), both log-normal (sigma 0.5)."""

    mean = (0.8 * 0.02 + 0.2 * 0.5) * math.exp(0.5**2 / 2)

    def work(self) -> float:
        base = 0.02 if self.rng.random() < 0.8 else 0.5
        return base * self.rng.lognormvariate(0, 0.5)


@pytest.mark.parametrize("capacity", [20, 50, 100])
def test_a_mix_of_fast_and_slow_requests_does_not_collapse_the_limit(capacity):
    """Window medians, and a minimum measured by probes (not the lowest of many noisy
    windows), keep the limit near the capacity when latencies vary a lot."""
    clock = FakeClock()
    limit = make(clock)
    server = MixedServer(clock, capacity)
    drive(limit, server, 30, 2 * capacity / server.mean)
    run = drive(limit, server, 60, 2 * capacity / server.mean)
    assert 0.75 * capacity <= statistics.median(run.limits) <= 1.5 * capacity
    served = sum(run.admitted) / 60
    assert served >= 0.9 * capacity / server.mean
    assert statistics.mean(run.latencies) < 1.5 * server.mean


def test_the_limit_never_leaves_its_bounds_under_overload():
    clock = FakeClock()
    limit = make(clock, min_limit=10, max_limit=40, initial_limit=10)
    server = Server(clock, 100)
    run = drive(limit, server, 30, rate_for(300))
    assert min(run.limits) >= 10 and max(run.limits) <= 40
    assert statistics.median(run.limits[len(run.limits) // 2:]) == 40  # capped: C is 100


# -- (2) recovery --------------------------------------------------------------------------


@pytest.mark.parametrize("trouble", ["slowdown", "timeouts"])
def test_when_load_drops_the_limit_grows_back_and_nothing_is_shed(trouble):
    """The limit is driven down (the app's capacity falls to a quarter, or every request
    times out); then the app recovers and the load is 60% of its capacity: the limit grows
    back within seconds and nothing is shed afterwards."""
    clock = FakeClock()
    capacity = 100
    limit = make(clock)
    server = Server(clock, capacity)
    drive(limit, server, 20, rate_for(2 * capacity))
    if trouble == "slowdown":
        server.capacity = capacity // 4
        drive(limit, server, 20, rate_for(2 * capacity))
        assert limit.limit < 0.5 * capacity
    else:
        server.dropped = True
        drive(limit, server, 20, rate_for(2 * capacity))
        assert limit.limit < 0.25 * capacity
        server.dropped = False
    low = limit.limit
    server.capacity = capacity
    t0 = clock.now
    run = drive(limit, server, 40, rate_for(0.6 * capacity))
    assert limit.limit > low
    assert limit.limit >= 0.6 * capacity
    recovered = max(run.shed_at, default=t0) - t0
    assert recovered < 10, f"still shedding {recovered:.1f} s after the load dropped"
    assert statistics.mean(run.latencies[-1000:]) < 1.2 * BASE


def test_a_quiet_worker_does_not_drift_up():
    """Far below the limit (app-limited), the limit does not grow towards max_limit."""
    clock = FakeClock()
    limit = make(clock, initial_limit=50)
    drive(limit, Server(clock, 100), 120, rate_for(10))
    assert limit.limit == 50


# -- (3) a lasting change of the app's latency ---------------------------------------------


def test_a_permanent_change_in_base_latency_is_learned():
    """Under overload the app's base latency doubles (a slower dependency), later halves
    back: the minimum follows each time and the limit comes back near the capacity."""
    clock = FakeClock()
    capacity = 100
    limit = make(clock)
    server = Server(clock, capacity)
    drive(limit, server, 30, rate_for(2 * capacity))
    assert limit.snapshot().min_latency == pytest.approx(BASE, rel=0.1)

    server.base = 2 * BASE
    run = drive(limit, server, 30, rate_for(2 * capacity))
    assert limit.snapshot().min_latency == pytest.approx(2 * BASE, rel=0.1)
    settled = statistics.median(run.limits[len(run.limits) // 2:])
    assert 0.75 * capacity <= settled <= 1.25 * capacity, settled
    # learned within seconds (not a probe interval later): the limit stayed up most of the time
    assert statistics.median(run.limits) >= 0.75 * capacity

    server.base = BASE
    run = drive(limit, server, 20, rate_for(2 * capacity))
    assert limit.snapshot().min_latency == pytest.approx(BASE, rel=0.1)
    settled = statistics.median(run.limits[len(run.limits) // 2:])
    assert 0.75 * capacity <= settled <= 1.25 * capacity, settled


def test_a_probe_relearns_the_minimum_without_overload():
    """With no overload to reveal it, a higher base latency is learned by the periodic probe."""
    clock = FakeClock()
    limit = make(clock, probe_interval=30)
    server = Server(clock, 100)
    drive(limit, server, 10, rate_for(30))
    assert limit.snapshot().min_latency == pytest.approx(BASE, rel=0.1)
    server.base = 3 * BASE
    drive(limit, server, 40, rate_for(10))
    assert limit.snapshot().min_latency == pytest.approx(3 * BASE, rel=0.1)


def probes(limit: AdaptiveLimit, server: Server, seconds: float, per_tick: int
           ) -> tuple[list[tuple[int, int, int]], int]:
    """Drive ``per_tick`` requests a tick: each probe's (limit before, during, after) and
    how many requests were shed."""
    clock = server.clock
    seen: list[tuple[bool, int]] = [(False, limit.limit)]
    shed = 0
    for _ in range(round(seconds / DT)):
        server.run_until(clock.now + DT)
        for _ in range(per_tick):
            ticket = limit.try_acquire()
            if ticket is None:
                shed += 1
            else:
                server.serve(ticket)
        seen.append((limit.snapshot().probing, limit.limit))
    starts = [i for i in range(1, len(seen)) if seen[i][0] and not seen[i - 1][0]]
    ends = [i for i in range(1, len(seen)) if seen[i - 1][0] and not seen[i][0]]
    assert len(starts) == len(ends)
    pairs = list(zip(starts, ends, strict=True))
    assert all((end - start) * DT < 0.5 for start, end in pairs)  # over in well under a second
    return [(seen[s - 1][1], seen[s][1], seen[e][1]) for s, e in pairs], shed


def test_a_busy_probe_halves_the_limit_for_its_samples_then_restores_it():
    clock = FakeClock()
    limit = make(clock, probe_interval=5, probe_samples=20)
    found, _ = probes(limit, Server(clock, 100), 12, per_tick=4)  # 2x the capacity
    assert found[0] == (20, 20, 20)  # the first minimum, measured at initial_limit
    assert len(found) == 3  # then about every 5 s
    for _before, during, after in found[1:]:
        assert during == after // 2


def test_a_quiet_probe_sheds_nothing():
    """Below the limit, a probe measures the load as it is: the limit stays, nothing is shed."""
    clock = FakeClock()
    limit = make(clock, probe_interval=5, probe_samples=20)
    server = Server(clock, 100)
    drive(limit, server, 10, rate_for(50))  # the limit grows to fit 50 in flight
    found, shed = probes(limit, server, 11, per_tick=1)  # 50 in flight
    assert len(found) >= 2
    assert all(before == during == after for before, during, after in found)
    assert shed == 0


# -- drops ---------------------------------------------------------------------------------


def test_a_drop_cuts_the_limit_at_once_and_once_per_window():
    clock = FakeClock()
    limit = make(clock, initial_limit=80, backoff=0.5, probe_samples=1)
    first = limit.try_acquire()  # measures the first minimum
    assert first is not None
    clock.advance(0.05)
    first.release()
    assert limit.snapshot().min_latency == pytest.approx(0.05)
    tickets = [limit.try_acquire() for _ in range(10)]
    clock.advance(0.05)
    for t in tickets:
        assert t is not None
        t.release(dropped=True)
    assert limit.limit == 40
    assert limit.inflight == 0


def test_a_busy_window_times_one_request_in_16_past_its_first_1000_and_still_learns():
    """Past the first 1000 requests of a window, only one in 16 reads the clock (on
    admission and release): in flight stays exact, the window still closes on time, and its
    median is the requests' latency."""
    clock = FakeClock()
    reads = [0]

    def counting() -> float:
        reads[0] += 1
        return clock()

    limit = make(clock, initial_limit=50, max_limit=50, probe_samples=10, min_samples=10)
    limit.clock = counting
    for _ in range(10):  # the first probe: latency 0.02
        t = limit.try_acquire()
        assert t is not None
        clock.advance(0.02)
        t.release()
    assert limit.snapshot().min_latency == pytest.approx(0.02)
    before = reads[0]
    held: list[Ticket] = []
    for _ in range(5000):  # a busy window: 5000 requests of 0.1 ms, 40 in flight
        t = limit.try_acquire()
        assert t is not None
        held.append(t)
        if len(held) == 40:
            clock.advance(0.0001)
            for t in held:
                t.release()
            assert limit.inflight == 0
            held.clear()
        assert limit.inflight == len(held)
    # 2 reads (admission, release) for each of the window's first 1000 requests, then for
    # one in 16
    assert reads[0] - before == 2 * 1000 + 2 * (4000 // 16)
    clock.advance(1.0)  # the window is over: it closes on the next timed release
    for _ in range(16):
        t = limit.try_acquire()
        assert t is not None
        t.release()
    # its median: of the first 1000 latencies it kept
    assert limit.snapshot().sample_latency == pytest.approx(0.0001, rel=0.01)
    assert limit.inflight == 0


# -- (4) priorities ------------------------------------------------------------------------


def test_each_priority_fills_its_share_of_the_limit():
    clock = FakeClock()
    admission = Admission(make(clock, thresholds=(0.5, 0.8, 1.0), initial_limit=10,
                               min_limit=10, max_limit=10))
    held = [admission.try_acquire(0) for _ in range(6)]
    assert sum(t is not None for t in held) == 5  # half of 10
    held += [admission.try_acquire(1) for _ in range(4)]
    assert sum(t is not None for t in held) == 8
    held += [admission.try_acquire(2) for _ in range(4)]
    assert sum(t is not None for t in held) == 10
    assert admission.try_acquire(2) is None
    assert admission.try_acquire(9) is None and admission.try_acquire(-3) is None  # clamped
    assert admission.snapshot().shed == (2, 1, 4)
    for t in held:
        if t is not None:
            t.release()
    assert admission.snapshot().inflight == 0


def test_under_saturation_the_lowest_priority_is_shed_first():
    """Three priorities offer 60% of the capacity each (1.8x in all): priority 0 takes the
    shedding, then priority 1; priority 2 keeps nearly all its requests."""
    clock = FakeClock()
    capacity = 100
    admission = Admission(make(clock, thresholds=(0.5, 0.8, 1.0)))
    server = Server(clock, capacity)
    offered = rate_for(3 * 0.6 * capacity)
    drive(admission, server, 20, offered, priorities=(0, 1, 2))
    run = drive(admission, server, 40, offered, priorities=(0, 1, 2))
    share = [a / (a + s) for a, s in zip(run.admitted, run.shed, strict=True)]
    assert run.shed[0] > run.shed[1] > run.shed[2]
    assert share[2] >= 0.95, share
    assert share[0] <= 0.2, share
    assert max(run.latencies) < 2 * BASE
    snap = admission.snapshot()
    assert len(snap.shed) == 3 and snap.shed[0] > snap.shed[1] > snap.shed[2]


def test_retry_after_is_longer_for_lower_priorities_and_bounded():
    clock = FakeClock()
    admission = Admission(make(clock, thresholds=(0.5, 0.8, 1.0), window=1.0,
                               probe_samples=10), max_retry_after=30)
    assert admission.retry_after(2) == 1.0  # no latency known yet: a window
    assert admission.retry_after(1) == pytest.approx(1.25)
    assert admission.retry_after(0) == 2.0
    assert admission.retry_after(-1) == 2.0 and admission.retry_after(7) == 1.0
    server = Server(clock, 100, base=20.0, noise=0)  # very slow requests
    drive(admission, server, 200, 0.5)
    assert admission.retry_after(2) == pytest.approx(20.0, rel=0.2)
    assert admission.retry_after(0) == 30  # capped


# -- snapshot and defaults -----------------------------------------------------------------


def test_snapshot_before_any_traffic():
    admission = Admission()
    snap = admission.snapshot()
    assert snap.limit == 20 and snap.inflight == 0
    assert snap.min_latency is None and snap.sample_latency is None
    assert snap.shed == (0, 0, 0)
    assert snap.probing  # the first requests measure the minimum
    assert admission.limit.thresholds == (0.5, 0.8, 1.0)


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(("settings", "named"), [
    ({"thresholds": ()}, "thresholds"),
    ({"thresholds": (0.8, 0.5)}, "(0.8, 0.5)"),
    ({"thresholds": (0.5, 1.5)}, "1.5"),
    ({"thresholds": "0.5"}, "'0.5'"),
    ({"min_limit": 0}, "min_limit"),
    ({"max_limit": 2.5}, "2.5"),
    ({"min_limit": 10, "max_limit": 5}, "max_limit (5)"),
    ({"initial_limit": 2000}, "2000"),
    ({"initial_limit": True}, "True"),
    ({"window": 0}, "window"),
    ({"window": "1s"}, "'1s'"),
    ({"min_samples": 0}, "min_samples"),
    ({"tolerance": -0.1}, "-0.1"),
    ({"smoothing": 0}, "smoothing"),
    ({"smoothing": 1.5}, "1.5"),
    ({"backoff": 1}, "backoff"),
    ({"backoff": 0}, "backoff"),
    ({"probe_interval": -1}, "probe_interval"),
    ({"probe_samples": 0}, "probe_samples"),
    ({"jitter": 2}, "jitter"),
    ({"jitter": float("nan")}, "nan"),
    ({"clock": 5}, "clock"),
])
def test_bad_settings_raise_a_config_error_naming_the_value(settings, named):
    with pytest.raises(ConfigError, match="adaptive limit") as info:
        AdaptiveLimit(**settings)
    assert named in str(info.value)
    assert isinstance(info.value, ValueError)


def test_admission_settings_are_checked():
    with pytest.raises(ConfigError, match="admission: max_retry_after"):
        Admission(max_retry_after=0)
    with pytest.raises(ConfigError, match="AdaptiveLimit"):
        Admission(limit=10)  # type: ignore[arg-type]


# -- (5) invariants under random sequences -------------------------------------------------


class RandomUse(RuleBasedStateMachine):
    """Any sequence of acquires, releases (dropped or not, twice), and time passing."""

    @initialize(thresholds=st.sampled_from([(1.0,), (0.5, 1.0), (0.3, 0.8, 1.0)]),
                bounds=st.tuples(st.integers(1, 8), st.integers(0, 40)),
                window=st.sampled_from([0.05, 0.5, 1.0]),
                min_samples=st.integers(1, 5), probe_samples=st.integers(1, 10))
    def setup(self, thresholds, bounds, window, min_samples, probe_samples):
        low, extra = bounds
        self.clock = FakeClock()
        self.limit = AdaptiveLimit(
            thresholds=thresholds, min_limit=low, max_limit=low + extra,
            initial_limit=low + extra // 2, window=window, min_samples=min_samples,
            probe_interval=2.0, probe_samples=probe_samples, jitter=0.5, clock=self.clock)
        self.held: list[Ticket] = []
        self.released: list[Ticket] = []

    @rule(level=st.integers(-2, 4))
    def acquire(self, level):
        lim = self.limit
        shares = lim.thresholds
        share = shares[min(max(level, 0), len(shares) - 1)]
        cap = max(1, int(share * lim.limit + 1e-9))
        before = lim.inflight
        ticket = lim.try_acquire(level)
        if ticket is None:
            assert before >= cap
        else:
            assert before < cap and lim.inflight == before + 1
            self.held.append(ticket)

    @rule(data=st.data(), dropped=st.booleans())
    def release(self, data, dropped):
        if self.held:
            ticket = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
            ticket.release(dropped=dropped)
            self.released.append(ticket)

    @rule(data=st.data(), dropped=st.booleans())
    def release_again(self, data, dropped):
        if self.released:
            before = self.limit.snapshot()
            self.released[data.draw(st.integers(0, len(self.released) - 1))].release(dropped)
            assert self.limit.snapshot() == before  # harmless

    @rule(seconds=st.sampled_from([0.0, 0.001, 0.02, 0.3, 1.5, 7.0]))
    def wait(self, seconds):
        self.clock.advance(seconds)

    @invariant()
    def bounded(self):
        lim = self.limit
        assert lim.min_limit <= lim.limit <= lim.max_limit
        assert lim.inflight == len(self.held) >= 0
        snap = lim.snapshot()
        assert snap.min_latency is None or snap.min_latency >= 0

    def teardown(self):
        for ticket in self.held:
            ticket.release()
        assert self.limit.inflight == 0


TestRandomUse = RandomUse.TestCase


# -- (6) threads ---------------------------------------------------------------------------


@contextmanager
def fast_switching() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed-limit", "adaptive"])
def test_threads_never_exceed_the_limit_and_leave_nothing_in_flight(fixed):
    """Eight threads acquire and release (some dropped) on the real clock: at no time are
    more requests admitted than the limit allows, and at the end none is in flight."""
    bound = 6
    settings = ({"initial_limit": bound, "min_limit": bound, "max_limit": bound} if fixed
                else {"initial_limit": 4, "min_limit": 2, "max_limit": bound,
                      "window": 0.001, "min_samples": 2, "probe_interval": 0.01})
    limit = AdaptiveLimit(thresholds=(0.5, 1.0), **settings)  # type: ignore[arg-type]
    guard = threading.Lock()
    now = [0]
    peak = [0]
    errors: list[BaseException] = []
    opened = threading.Event()  # the held slots are given back: the 3,000 tries count from then

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            done = 0
            while done < 3000:
                done += opened.is_set()
                ticket = limit.try_acquire(rng.randrange(2))
                if ticket is None:
                    continue
                with guard:
                    now[0] += 1
                    peak[0] = max(peak[0], now[0])
                    assert now[0] <= bound
                sum(range(rng.randrange(50)))  # some work
                with guard:
                    now[0] -= 1
                ticket.release(dropped=rng.random() < 0.02)
                if rng.random() < 0.05:
                    ticket.release()  # twice: harmless
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    # The limit starts full (held here) until the workers have met it, so that shedding is
    # exercised whatever the scheduler does (eight threads need not overlap on their own).
    held = [limit.try_acquire(1) for _ in range(limit.limit)]
    with fast_switching():
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while sum(limit.snapshot().shed) == 0 and time.monotonic() < deadline:
            time.sleep(0.0005)
        for ticket in held:
            if ticket is not None:
                ticket.release()
        opened.set()
        for t in threads:
            t.join()
    assert not errors
    assert limit.inflight == 0
    assert 1 <= peak[0] <= bound
    assert sum(limit.snapshot().shed) > 0
