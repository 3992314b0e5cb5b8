"""Calendar quotas ("1000/calendar-month" in a time zone): the periods against a model of
local dates (month ends, DST changes, leap years), and the quota on every backend."""

from __future__ import annotations

import datetime as dt
import importlib
import time
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from throttlekit import ConfigError, Limiter, Rate, RequestView, WSGIMiddleware, parse_rates
from throttlekit._calendar import Calendar
from throttlekit.testing import FakeClock

#: zones with DST at 02:00 (Paris, New York), at midnight (Santiago, Havana), half-hour
#: DST (Lord Howe), none (Kolkata), and a zone that skipped a whole day (Apia, 2011-12-30)
ZONES = ["UTC", "Europe/Paris", "America/New_York", "America/Santiago", "America/Havana",
         "Australia/Lord_Howe", "Asia/Kolkata", "Pacific/Apia"]
UNITS = ["day", "week", "month"]
US = 1_000_000
# 1972-2100 in microseconds
instants = st.integers(min_value=63072000 * US, max_value=4102444800 * US)


def local(now: int, tz: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(now // US, ZoneInfo(tz))


def label(now: int, tz: str, unit: str) -> tuple[int, ...]:
    """The model: the local period an instant is in, read off its local date."""
    d = local(now, tz).date()
    if unit == "day":
        return (d.year, d.month, d.day)
    if unit == "week":
        return tuple(d.isocalendar()[:2])
    return (d.year, d.month)


@given(now=instants, tz=st.sampled_from(ZONES), unit=st.sampled_from(UNITS))
def test_window_holds_the_instant_and_periods_abut(now: int, tz: str, unit: str) -> None:
    """A period holds its instants; the next starts where it ends; both ends lie in the
    period the model says (just before the end: this one; the end: the next)."""
    cal = Calendar(unit, tz)
    index, start, end = cal.window(now)
    assert start <= now < end
    assert label(start, tz, unit) == label(now, tz, unit) == label(end - US, tz, unit)
    assert label(start - US, tz, unit) != label(now, tz, unit)
    nxt = cal.window(end)
    assert nxt[0] == index + 1 and nxt[1] == end
    assert label(end, tz, unit) != label(now, tz, unit)


@given(a=instants, b=instants, tz=st.sampled_from(ZONES), unit=st.sampled_from(UNITS))
def test_same_period_exactly_when_same_local_period(a: int, b: int, tz: str,
                                                    unit: str) -> None:
    """Two instants share a period index exactly when their local dates share the period."""
    cal = Calendar(unit, tz)
    assert (cal.window(a)[0] == cal.window(b)[0]) == (label(a, tz, unit) == label(b, tz, unit))


@pytest.mark.parametrize(("tz", "day", "hours"), [
    ("Europe/Paris", dt.date(2026, 3, 29), 23),     # spring forward
    ("Europe/Paris", dt.date(2026, 10, 25), 25),    # fall back
    ("America/Santiago", dt.date(2026, 9, 6), 23),  # the clocks jump at midnight
])
def test_days_of_a_dst_change_last_as_long_as_they_do(tz: str, day: dt.date,
                                                      hours: int) -> None:
    """A calendar day is its real length on the days the clocks change."""
    noon = int(dt.datetime(day.year, day.month, day.day, 12, tzinfo=ZoneInfo(tz))
               .timestamp()) * US
    _, start, end = Calendar("day", tz).window(noon)
    assert end - start == hours * 3600 * US


@pytest.mark.parametrize(("year", "days"), [(2028, 29), (2027, 28), (2100, 28), (2000, 29)])
def test_february_of_leap_years(year: int, days: int) -> None:
    """February has 29 days in leap years (2000 yes, 2100 no)."""
    mid = int(dt.datetime(year, 2, 10, tzinfo=dt.timezone.utc).timestamp()) * US
    _, start, end = Calendar("month", "UTC").window(mid)
    assert end - start == days * 86400 * US


# -- the rate syntax ----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("1000/calendar-month", [Rate(1000, 2629746.0, "month")]),
    ("1000 per calendar month", [Rate(1000, 2629746.0, "month")]),
    ("5/calendar-week in Europe/Paris", [Rate(5, 604800.0, "week", "Europe/Paris")]),
    ("10/second; 100 per calendar day", [Rate(10, 1.0), Rate(100, 86400.0, "day")]),
    ("1000/month", [Rate(1000, 2592000.0)]),  # the rolling month keeps its meaning
])
def test_rate_syntax(text: str, expected: list[Rate]) -> None:
    """Calendar rates say so; a rolling rate is unchanged."""
    assert parse_rates(text) == expected


@pytest.mark.parametrize(("text", "named"), [
    ("5/calendar-year", "year"), ("5/calendar-month in Mars/Base", "Mars/Base"),
    ("0/calendar-day", "positive"), ("5 calendar day", "calendar-month"),
])
def test_bad_calendar_rates_name_the_value(text: str, named: str) -> None:
    """A bad unit, zone or amount is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=named):
        parse_rates(text)


# -- the quota on the backends ------------------------------------------------------------

BACKENDS = ["memory", "redis", "memcached", "redis_cluster"]


def at(clock: FakeClock, tz: str, *when: int) -> None:
    clock.now = dt.datetime(*when, tzinfo=ZoneInfo(tz)).timestamp()  # type: ignore[misc]


@pytest.fixture(params=BACKENDS)
def calendar_limiter(request: pytest.FixtureRequest, _backend_contexts: dict[str, Any],
                     clock: FakeClock) -> Callable[..., Limiter]:
    module = importlib.import_module(f"backends.{request.param}")
    for mark in module.MARKS:
        request.applymarker(mark)
    ctx = _backend_contexts["get"](request.param)
    made: list[Any] = []

    def factory(**kwargs: Any) -> Limiter:
        storage = module.make_storage(ctx)
        made.append(storage)
        kwargs.setdefault("clock", clock)
        return Limiter(storage, **kwargs)

    yield factory  # type: ignore[misc]
    for storage in made:
        storage.close()


@pytest.mark.parametrize("direct", [True, False], ids=["hit", "rule"])
def test_monthly_quota_resets_at_the_local_month_end(
        calendar_limiter: Callable[..., Limiter], clock: FakeClock, direct: bool) -> None:
    """3 per calendar month in Paris: the 4th request of March is refused until April 1st
    00:00 Paris time (the clocks changed on the 29th), reset_after says exactly when; the
    rolling '3/month' beside it keeps counting."""
    tz = "Europe/Paris"
    lim = calendar_limiter(strategy="sliding_window")  # a calendar rate ignores it
    rate = "3/calendar-month in Europe/Paris"
    if not direct:
        lim.throttle("quota", rate)

    def hit() -> Any:
        if direct:
            return lim.hit("client-1", rate)
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "192.0.2.1"}
        return lim.evaluate(RequestView.from_environ(environ, lim.resolver)).decision

    at(clock, tz, 2026, 3, 1, 0, 0, 1)
    assert [hit().allowed for _ in range(3)] == [True] * 3
    at(clock, tz, 2026, 3, 31, 23, 0)
    d = hit()
    april = dt.datetime(2026, 4, 1, tzinfo=ZoneInfo(tz)).timestamp()
    assert not d.allowed and d.retry_after == pytest.approx(april - clock(), abs=1e-6)
    assert d.reset_after == pytest.approx(3600.0, abs=1e-6)
    at(clock, tz, 2026, 4, 1, 0, 0)
    d = hit()
    assert d.allowed and d.remaining == 2
    may = dt.datetime(2026, 5, 1, tzinfo=ZoneInfo(tz)).timestamp()
    assert d.reset_after == pytest.approx(may - clock(), abs=1e-6)


def test_leap_day_counts_in_february(calendar_limiter: Callable[..., Limiter],
                                     clock: FakeClock) -> None:
    """2028-02-29 is in February's quota, 2028-03-01 00:00 UTC starts March's."""
    lim = calendar_limiter()
    at(clock, "UTC", 2028, 2, 1)
    assert lim.hit("k", "1/calendar-month").allowed
    at(clock, "UTC", 2028, 2, 29, 23, 59, 59)
    assert not lim.hit("k", "1/calendar-month").allowed
    at(clock, "UTC", 2028, 3, 1)
    assert lim.hit("k", "1/calendar-month").allowed


def test_headers_report_the_period_end() -> None:
    """The RateLimit header's reset is the time left to the period's real end."""
    clock = FakeClock()
    clock.now = dt.datetime(2026, 2, 27, 12, tzinfo=dt.timezone.utc).timestamp()  # type: ignore[misc]
    lim = Limiter(clock=clock)
    lim.throttle("monthly", "100/calendar-month")

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    mw = WSGIMiddleware(app, lim, header_style="legacy")
    seen: list[Any] = []
    mw({"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "192.0.2.9",
        "wsgi.url_scheme": "http", "SERVER_NAME": "t", "SERVER_PORT": "80"},
       lambda status, headers, *a: seen.append(dict(headers)))
    left = 36 * 3600  # to March 1st 00:00 UTC (the header: an epoch time on the wall clock)
    assert seen[0]["X-RateLimit-Remaining"] == "99"
    assert abs(int(seen[0]["X-RateLimit-Reset"]) - (time.time() + left)) <= 2


def test_server_clock_redis_uses_this_process_clock_for_the_period(
        calendar_limiter: Callable[..., Limiter]) -> None:
    """Without an injected clock (Redis would use its own TIME), a calendar rate is decided
    on this process's clock: reset at the next UTC midnight."""
    lim = calendar_limiter(clock=None)
    # (the hits and the reading of the clock within one UTC day, else again on a fresh key:
    # a precondition, not a timing)
    for attempt in range(3):
        day = time.time() // 86400
        got = [lim.hit(f"k{attempt}", "2/calendar-day") for _ in range(3)]
        midnight = (int(time.time()) // 86400 + 1) * 86400
        left = midnight - time.time()
        if time.time() // 86400 == day:
            break
    assert [d.allowed for d in got] == [True, True, False]
    assert abs(got[2].retry_after - left) < 5


@pytest.mark.redis
@pytest.mark.memcached
@given(start=st.integers(min_value=1_700_000_000, max_value=1_900_000_000),
       steps=st.lists(st.tuples(st.integers(0, 40 * 86400 * US), st.integers(0, 3)),
                      min_size=1, max_size=12),
       tz=st.sampled_from(["UTC", "Europe/Paris", "America/Santiago"]),
       unit=st.sampled_from(UNITS))
def test_every_backend_decides_as_the_memory_store(
        _backend_contexts: dict[str, Any], start: int, steps: list[tuple[int, int]],
        tz: str, unit: str) -> None:
    """The same timeline gives the same Decisions on memory, Redis and memcached."""
    backend_modules = {n: importlib.import_module(f"backends.{n}") for n in BACKENDS}
    rate = f"5/calendar-{unit} in {tz}"
    clock = FakeClock(float(start))
    limiters = [Limiter(clock=clock)]
    for name in ("redis", "memcached"):
        module = backend_modules[name]
        limiters.append(Limiter(module.make_storage(_backend_contexts["get"](name)),
                                clock=clock))
    try:
        for advance, cost in steps:
            clock.advance(advance / US)
            got = [lim.hit("k", rate, cost=cost) for lim in limiters]
            assert got[1] == got[0] and got[2] == got[0]
    finally:
        for lim in limiters[1:]:
            lim.storage.close()
