"""Session 28: the clock-skew fix (``CLOCK_SKEW_US``) attacked with two hosts sharing a store.

* A period shorter than the tolerance (``Rate(5, 0.1)``: rate objects accept any period of
  at least 1 µs): 1 s of skew spans several windows, so the host behind found the host
  ahead's state two or more windows ahead, took it for a clock stepped back, moved the count
  back into its own window; the host ahead then saw an older window and started afresh:
  alternating requests were all admitted (100 of 100 in 90 ms against 5 per 100 ms), on
  memory and Redis, fixed and sliding windows.
* The host behind's ``reset_after``/``retry_after`` on memory were float sums (the later
  window's seconds plus the gap's), a few ulps off Redis' (one division of integer
  microseconds): the two stores' Decisions were no longer identical.
* Calendar rates on Redis keep one key per period (``CalendarWindow.at``): the host behind,
  still before midnight on its clock, counts in the previous period's key, not in the period
  the host ahead has started, unlike memory (strict xfail: not fixed here).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from throttlekit import Limiter, MemoryStorage, storage_from_url
from throttlekit._rates import Rate
from throttlekit.storage import Storage

#: a minute boundary (also a 0.1 s, 1 s and 2.5 s one), microseconds since the epoch
S_US = 1_699_920_060_000_000
#: 2023-11-14 00:00:00 UTC, a day boundary
MIDNIGHT_US = int(dt.datetime(2023, 11, 14, tzinfo=dt.timezone.utc).timestamp()) * 1_000_000
WINDOWS = ("fixed_window", "sliding_window")


class UsClock:
    """A host's clock, set in integer microseconds (read as the Limiter reads a clock)."""

    def __init__(self) -> None:
        self.us = 0

    def __call__(self) -> float:
        return (self.us + 0.5) / 1e6


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def shared(request: pytest.FixtureRequest,
           _backend_contexts: dict[str, Any]) -> Iterator[tuple[Storage, Storage]]:
    """Two hosts' storages of one store: one MemoryStorage, or two clients of the shared
    Redis on a prefix of this test's own."""
    if request.param == "memory":
        store = MemoryStorage()
        yield store, store
        return
    prefix = request.getfixturevalue("redis_prefix")
    url = _backend_contexts["get"]("redis").url
    a, b = storage_from_url(url, prefix=prefix), storage_from_url(url, prefix=prefix)
    yield a, b
    a.close()
    b.close()


def _hosts(pair: tuple[Storage, Storage], strategy: str) -> tuple[Limiter, Limiter,
                                                                   UsClock, UsClock]:
    clock_a, clock_b = UsClock(), UsClock()
    policy = "local" if isinstance(pair[0], MemoryStorage) else "deny"
    return (Limiter(pair[0], strategy=strategy, clock=clock_a, on_storage_error=policy),
            Limiter(pair[1], strategy=strategy, clock=clock_b, on_storage_error=policy),
            clock_a, clock_b)


@pytest.mark.parametrize("skew_us", [200_000, 300_000, 900_000])
@pytest.mark.parametrize("strategy", WINDOWS)
def test_a_period_shorter_than_the_tolerance_is_not_multiplied_by_skew(
        shared: tuple[Storage, Storage], strategy: str, skew_us: int) -> None:
    """5 per 100 ms, host B's clock ``skew_us`` ahead of A's (several of the period's
    windows): A and B alternate 100 requests within 90 ms of real time, all of them in one
    window of B's clock: together they get 5, as one host would."""
    a, b, clock_a, clock_b = _hosts(shared, strategy)
    rate = Rate(5, 0.1)
    allowed = []
    for i in range(100):
        clock_a.us = S_US + 1_000 + i * 900
        clock_b.us = clock_a.us + skew_us
        allowed.append((b if i % 2 == 0 else a).hit("k", rate).allowed)
    assert allowed == [True] * 5 + [False] * 95, "".join("+" if x else "-" for x in allowed)


@pytest.mark.parametrize("strategy", WINDOWS)
@pytest.mark.parametrize("rate", [Rate(5, 2.5), Rate(3, 1.0), Rate(4, 60.0)])
def test_the_host_behind_gets_the_same_waits_on_memory_and_redis(
        _backend_contexts: dict[str, Any], redis_prefix: str, strategy: str,
        rate: Rate) -> None:
    """B just past a boundary fills the window; A, up to 1 s behind, is refused: its
    ``reset_after`` and ``retry_after`` on memory and on Redis are the same number, the
    later window's microseconds plus the gap's, divided once (as every other Decision)."""
    url = _backend_contexts["get"]("redis").url
    stores = {"memory": (MemoryStorage(),) * 2,
              "redis": (storage_from_url(url, prefix=redis_prefix + "a:"),
                        storage_from_url(url, prefix=redis_prefix + "a:"))}
    p_us = rate.period_us
    boundary = (S_US // p_us + 1) * p_us
    try:
        for gap_us in (1, 19_006, 216_011, 371_987, 406_727, 999_999):
            got = {}
            for name, pair in stores.items():
                a, b, clock_a, clock_b = _hosts(pair, strategy)
                key = f"k{gap_us}"
                clock_b.us = boundary + 7
                assert all(b.hit(key, rate).allowed for _ in range(rate.limit))
                clock_a.us = boundary - gap_us
                got[name] = a.hit(key, rate)
            assert got["memory"] == got["redis"], gap_us
            d = got["memory"]
            assert not d.allowed
            if strategy == "fixed_window":
                assert d.reset_after == d.retry_after == (p_us + gap_us) / 1e6
    finally:
        for pair in stores.values():
            for s in set(pair):
                s.close()


@pytest.mark.redis
@pytest.mark.xfail(strict=True, reason=(
    "calendar rates on Redis count in one key per period (CalendarWindow.at): the host "
    "behind still counts in the previous period's key, memory in the period started"))
def test_a_calendar_day_across_midnight_decides_as_memory_on_redis(
        _backend_contexts: dict[str, Any], redis_prefix: str) -> None:
    """"3/calendar-day": B, 0.2 s past midnight, uses the new day's 3; A, 0.3 s before it
    on its clock (0.5 s behind), is refused on memory (the day B started is full) and must
    be on Redis too, not admitted from the day before's key."""
    url = _backend_contexts["get"]("redis").url
    rate = "3/calendar-day"
    seen = {}
    for name, pair in {"memory": (MemoryStorage(),) * 2,
                       "redis": (storage_from_url(url, prefix=redis_prefix),
                                 storage_from_url(url, prefix=redis_prefix))}.items():
        a, b, clock_a, clock_b = _hosts(pair, "fixed_window")
        clock_b.us = MIDNIGHT_US + 200_000
        assert all(b.hit("k", rate).allowed for _ in range(3))
        clock_a.us = MIDNIGHT_US - 300_000
        seen[name] = [a.hit("k", rate).allowed for _ in range(3)]
        for s in set(pair):
            s.close()
    assert seen["redis"] == seen["memory"] == [False] * 3, seen


@pytest.mark.redis
@pytest.mark.parametrize("strategy", WINDOWS)
def test_skewed_histories_decide_the_same_on_memory_and_redis(
        _backend_contexts: dict[str, Any], redis_prefix: str, strategy: str) -> None:
    """Random histories whose clock jumps back and forth by under 1 s (hosts skewed), on
    periods under, at and over 1 s, one check (fixed_window.lua) or two (the batch script):
    Redis' Decisions are memory's, exactly."""
    import random

    from throttlekit._algorithms import make_algorithm
    from throttlekit.storage.base import Check

    url = _backend_contexts["get"]("redis").url
    day = make_algorithm(strategy, Rate(1000, 86400.0))
    for seed in range(40):
        rnd = random.Random(seed)
        alg = make_algorithm(strategy, rnd.choice([Rate(4, 0.3), Rate(3, 1.0), Rate(5, 2.5)]))
        red = storage_from_url(url, prefix=f"{redis_prefix}{seed}:")
        mem = MemoryStorage()
        now = S_US + rnd.randrange(-3_000_000, 3_000_000)
        try:
            for _ in range(25):
                now += rnd.choice([-999_999, -600_000, -300_000, -1, 0, 1, 100_000, 400_000,
                                   1_000_000, 1_500_000])
                cost, consume = rnd.choice([0, 1, 1, 1, 2, 4]), rnd.random() < 0.8
                checks = [Check(alg, "a", cost, False)]
                if rnd.random() < 0.5:
                    checks.append(Check(day, "a", cost, False))
                want = mem.apply(checks, consume=consume, now=now).decisions
                assert red.apply(checks, consume=consume, now=now).decisions == want, seed
        finally:
            red.close()
