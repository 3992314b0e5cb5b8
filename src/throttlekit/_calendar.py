"""Calendar periods: the day, ISO week (Monday first) or month an instant falls in, in a
time zone, for billing-style quotas (``"1000/calendar-month"``).

A period is numbered (``index``: days since 0001-01-01, weeks since then, months since year
0) and bounded by two instants in integer microseconds since the epoch: its start, the
first instant of its first local day, and its end, the start of the next. Local midnight
is found with :mod:`zoneinfo`: a day that starts in a daylight-saving gap starts at the
first instant after it, a period is as long as its local days really are (23 or 25 hours
on the days the clocks change), and February has 29 days in leap years.
"""

from __future__ import annotations

import datetime as dt
import threading
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ._errors import ConfigError

__all__ = ["NOMINAL_SECONDS", "UNITS", "Calendar", "calendar_of"]

#: the units and their nominal length in seconds (the policy window the headers report; a
#: month's is the Gregorian average)
NOMINAL_SECONDS = {"day": 86400.0, "week": 7 * 86400.0, "month": 2629746.0}
UNITS = tuple(NOMINAL_SECONDS)
_US = 1_000_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class Calendar:
    """The periods of one unit in one time zone. ``window(now)`` is cached per period, so
    a request inside the period it last saw costs two comparisons."""

    __slots__ = ("_last", "tz", "unit", "zone")

    def __init__(self, unit: str, tz: str = "UTC") -> None:
        if unit not in NOMINAL_SECONDS:
            raise ConfigError(f"unknown calendar unit {unit!r}; expected one of "
                              f"{', '.join(UNITS)}")
        try:
            self.zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ConfigError(f"unknown time zone {tz!r} (an IANA name such as "
                              f"'Europe/Paris' or 'UTC')") from None
        self.unit = unit
        self.tz = tz
        #: (index, start_us, end_us) of the period last computed
        self._last = (0, 0, 0)

    def __repr__(self) -> str:
        return f"Calendar({self.unit!r}, {self.tz!r})"

    def window(self, now: int) -> tuple[int, int, int]:
        """``(index, start_us, end_us)`` of the period holding ``now`` (microseconds)."""
        last = self._last
        if last[1] <= now < last[2]:
            return last
        found = self._compute(now)
        self._last = found  # one tuple, swapped whole: readers in other threads see either
        return found

    def _compute(self, now: int) -> tuple[int, int, int]:
        secs, micros = divmod(now, _US)
        local = (_EPOCH + dt.timedelta(seconds=secs, microseconds=micros)).astimezone(self.zone)
        day = local.date()
        if self.unit == "day":
            first, nxt = day, day + dt.timedelta(days=1)
            index = day.toordinal()
        elif self.unit == "week":
            first = day - dt.timedelta(days=day.weekday())
            nxt = first + dt.timedelta(days=7)
            index = (first.toordinal() - 1) // 7  # 0001-01-01 is a Monday
        else:
            first = day.replace(day=1)
            nxt = (first.replace(year=first.year + 1, month=1) if first.month == 12
                   else first.replace(month=first.month + 1))
            index = first.year * 12 + first.month - 1
        return index, self._midnight(first), self._midnight(nxt)

    def _midnight(self, day: dt.date) -> int:
        """The first instant of the local ``day`` (after a gap when midnight is in one)."""
        local = dt.datetime(day.year, day.month, day.day, tzinfo=self.zone)
        # fold=0 reads a midnight that does not exist (a gap) with the offset before the
        # gap: the instant the clocks jumped, the first that is this day. A repeated one
        # (fold) is its first occurrence.
        delta = local - _EPOCH
        return (delta.days * 86400 + delta.seconds) * _US + delta.microseconds


_calendars: dict[tuple[str, str], Calendar] = {}
_lock = threading.Lock()


def calendar_of(unit: str, tz: str | None) -> Calendar:
    """The shared :class:`Calendar` of ``unit`` in ``tz`` (default UTC)."""
    key = (unit, tz or "UTC")
    found = _calendars.get(key)
    if found is None:
        with _lock:
            found = _calendars.get(key)
            if found is None:
                found = _calendars[key] = Calendar(*key)
    return found
