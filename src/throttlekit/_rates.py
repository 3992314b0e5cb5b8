"""Rates and their parsing.

The rate syntax is the one of the ``limits`` package ("10/second", "100 per minute",
"5/10 seconds", several joined by ``;``, ``,`` or ``|``) and is parsed by ``limits``
itself. Parsed results are cached, so a rate string costs one dict lookup per request.

Calendar rates are ours: ``"1000/calendar-month"`` or ``"1000 per calendar month"`` (also
``day`` and ``week``, Monday first), optionally ``in <time zone>``
(``"1000/calendar-month in Europe/Paris"``; default UTC): a quota per calendar period,
reset at the period's real end, beside the rolling ``"1000/month"`` (30 days), which keeps
its meaning.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from ._calendar import NOMINAL_SECONDS, calendar_of
from ._errors import ConfigError

__all__ = ["MAX_LIMIT", "MAX_PERIOD", "Rate", "Variants", "parse_rates", "rates_function",
           "resolved"]

#: The longest period a rate may have: ten years. Stores count in integer microseconds, and
#: this bound keeps every sum of them exact (below 2**53, where Lua's doubles stop counting).
MAX_PERIOD = 3650 * 86400.0
#: The largest amount a rate may have (exact as a Lua double).
MAX_LIMIT = 2**53 - 1


class Rate(NamedTuple):
    """``limit`` requests (or cost units) per ``period`` seconds.

    A calendar rate (``calendar``: ``"day"``, ``"week"`` or ``"month"``, in the time zone
    ``tz``, None for UTC) counts per calendar period instead; its ``period`` is the
    unit's nominal length (what the headers report as the policy window)."""

    limit: int
    period: float
    calendar: str | None = None
    tz: str | None = None

    def __str__(self) -> str:
        if self.calendar is not None:
            zone = f" in {self.tz}" if self.tz else ""
            return f"{self.limit} per calendar {self.calendar}{zone}"
        period = int(self.period) if self.period == int(self.period) else self.period
        return f"{self.limit} per {period} second{'s' if period != 1 else ''}"

    @property
    def period_us(self) -> int:
        """The period in whole microseconds, the unit storage backends compute in."""
        return round(self.period * 1_000_000)


def parse_rates(text: str) -> list[Rate]:
    """Parse a rate string into a list of :class:`Rate`.

    Raises:
        ConfigError: the text is not a valid rate string, or an amount or period is zero.
    """
    return list(_parse_cached(text))


@functools.lru_cache(maxsize=1024)
def _parse_cached(text: str) -> tuple[Rate, ...]:
    if not isinstance(text, str):
        raise ConfigError(f"rate must be a string like '10/minute', got {text!r}")
    from limits.util import SEPARATORS, SINGLE_EXPR, parse_many

    if _CALENDAR_WORD.search(text):
        return tuple(dict.fromkeys(_parse_with_calendar(text, SEPARATORS)))
    try:
        items = parse_many(text)
    except ValueError as exc:
        raise ConfigError(f"invalid rate {text!r}: {exc}") from None
    rates: list[Rate] = []
    for part, item in zip(
        [p for p in SEPARATORS.split(text) if SINGLE_EXPR.match(p)], items, strict=True
    ):
        match = SINGLE_EXPR.match(part)
        assert match is not None
        multiples = match.group(3)
        if item.amount <= 0:
            raise ConfigError(f"invalid rate {text!r}: the amount must be positive")
        if multiples is not None and int(multiples) <= 0:
            raise ConfigError(f"invalid rate {text!r}: the period must be positive")
        rates.append(_bounded(Rate(int(item.amount), float(item.get_expiry())), text))
    if not rates:
        raise ConfigError(f"invalid rate {text!r}: no rate found")
    return tuple(dict.fromkeys(rates))  # a rate given twice is one limit


_CALENDAR_WORD = re.compile(r"calendar", re.IGNORECASE)
_CALENDAR = re.compile(
    r"\s*([0-9]+)\s*(?:/|\s+per\s+|per\s+)\s*calendar[\s-]+([a-z]+)"
    r"(?:\s+in\s+(\S+))?\s*", re.IGNORECASE)


def _parse_with_calendar(text: str, separators: re.Pattern[str]) -> tuple[Rate, ...]:
    """A rate string holding calendar rates (each part parsed on its own)."""
    rates: list[Rate] = []
    for part in separators.split(text):
        if not part.strip():
            continue
        match = _CALENDAR.fullmatch(part)
        if match is None:
            if _CALENDAR_WORD.search(part):
                raise ConfigError(
                    f"invalid rate {text!r}: a calendar rate reads '1000/calendar-month' or "
                    f"'1000 per calendar month', optionally followed by 'in <time zone>' "
                    f"(units: {', '.join(NOMINAL_SECONDS)})")
            rates.extend(_parse_cached(part))
            continue
        amount, unit, tz = int(match.group(1)), match.group(2).lower(), match.group(3)
        if unit not in NOMINAL_SECONDS:
            raise ConfigError(f"invalid rate {text!r}: unknown calendar unit {unit!r} "
                              f"(one of {', '.join(NOMINAL_SECONDS)})")
        if amount <= 0:
            raise ConfigError(f"invalid rate {text!r}: the amount must be positive")
        calendar_of(unit, tz)  # an unknown time zone is a ConfigError now
        rates.append(_bounded(Rate(amount, NOMINAL_SECONDS[unit], unit, tz), text))
    if not rates:
        raise ConfigError(f"invalid rate {text!r}: no rate found")
    return tuple(dict.fromkeys(rates))  # a rate given twice is one limit


def coerce_rates(rates: object) -> tuple[Rate, ...]:
    """Turn what users pass as ``rates`` into a non-empty tuple of valid Rates."""
    if isinstance(rates, str):
        return _parse_cached(rates)
    if isinstance(rates, Rate):
        return (_check_rate(rates),)
    if isinstance(rates, (list, tuple)):
        out: list[Rate] = []
        for item in rates:
            out.extend(coerce_rates(item))
        if not out:
            raise ConfigError("rates must not be empty")
        return tuple(dict.fromkeys(out))  # a rate given twice is one limit
    raise ConfigError(f"rates must be a rate string, a Rate or a list of them, got {rates!r}")


def _check_rate(rate: Rate) -> Rate:
    if isinstance(rate.limit, bool) or not isinstance(rate.limit, int) or rate.limit <= 0:
        raise ConfigError(f"invalid rate {rate!r}: limit must be a positive integer")
    if isinstance(rate.period, bool) or not isinstance(rate.period, (int, float)) or not (
        0 < rate.period <= MAX_PERIOD  # also nan and inf
    ):
        raise ConfigError(
            f"invalid rate {rate!r}: period must be a positive number of seconds, at most "
            f"ten years"
        )
    if round(rate.period * 1_000_000) < 1:
        raise ConfigError(f"invalid rate {rate!r}: period must be at least one microsecond")
    if rate.calendar is not None:
        if rate.calendar not in NOMINAL_SECONDS:
            raise ConfigError(f"invalid rate {rate!r}: calendar must be one of "
                              f"{', '.join(NOMINAL_SECONDS)}")
        calendar_of(rate.calendar, rate.tz)
        return _bounded(Rate(rate.limit, NOMINAL_SECONDS[rate.calendar], rate.calendar,
                             rate.tz), rate)
    return _bounded(Rate(rate.limit, float(rate.period)), rate)


def _bounded(rate: Rate, shown: object) -> Rate:
    """``rate`` when its amount and period are within what every store counts exactly."""
    if rate.limit > MAX_LIMIT:
        raise ConfigError(f"invalid rate {shown!r}: amount out of range (at most {MAX_LIMIT})")
    if not rate.period <= MAX_PERIOD:  # also inf and nan
        raise ConfigError(f"invalid rate {shown!r}: period out of range (at most ten years)")
    return rate


class Variants:
    """What a rates function's answers stand for, built once per distinct answer: a bounded
    cache from the value returned (``"100/hour"``, a Rate, a list of them) to ``build``'s
    result for its parsed rates, so a function returning the same string costs one dict
    lookup. Two values of the same rates share one result (``"100/hour"`` and
    ``Rate(100, 3600)``). Bad rates raise :class:`ConfigError` (never cached)."""

    __slots__ = ("_build", "_by_rates", "_by_value", "size")

    def __init__(self, build: Callable[[tuple[Rate, ...]], Any], size: int = 256) -> None:
        self._build = build
        self._by_value: dict[Any, Any] = {}
        self._by_rates: dict[tuple[Rate, ...], Any] = {}
        #: distinct answers kept (plans are few; anything beyond is cleared and rebuilt)
        self.size = size

    def of(self, value: Any) -> Any:
        """``build``'s result for the rates ``value`` stands for."""
        try:
            return self._by_value[value]
        except KeyError:
            pass
        except TypeError:  # unhashable (a list of rates): its tuple is
            value = tuple(value) if isinstance(value, list) else value
            return self.of(value) if isinstance(value, tuple) else self._make(value)
        made = self._make(value)
        if len(self._by_value) >= self.size:
            self._by_value.clear()
        self._by_value[value] = made
        return made

    def _make(self, value: Any) -> Any:
        rates = coerce_rates(value)
        made = self._by_rates.get(rates)
        if made is None:
            made = self._build(rates)
            if len(self._by_rates) >= self.size:
                self._by_rates.clear()
            self._by_rates[rates] = made
        return made


def rates_function(fn: Any, what: str, *arities: int) -> int:
    """Check ``fn`` is a rates function taking one of ``arities`` positional arguments
    (a :class:`ConfigError` naming it otherwise, at configuration time); returns the first
    that fits."""
    import inspect

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: trusted
        return arities[0]
    for n in arities:
        try:
            sig.bind(*range(n))
        except TypeError:
            continue
        return n
    raise ConfigError(f"{what}: the rates function {fn!r} must take "
                      f"{' or '.join(map(str, arities))} positional argument(s), "
                      f"its signature is {sig}")


def resolved(build: Callable[..., Any], fn: Any, what: str,
             arities: tuple[int, ...] = (1,)) -> Any:
    """The throttle of a rates function ``fn``: ``build``'s throttle (its options) with no
    rates of its own, ``resolve`` = ``fn`` and its :class:`Variants` (one throttle per
    answer, built by ``build``), none bound to a store until an answer needs it."""
    rates_function(fn, what, *arities)
    rule = build("1/second", None)
    rule.algorithms, rule.rates, rule.simple, rule.resolve = (), (), False, fn
    rule.variants = Variants(build)
    return rule
