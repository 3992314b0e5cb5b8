"""Rates and their parsing.

The rate syntax is the one of the ``limits`` package ("10/second", "100 per minute",
"5/10 seconds", several joined by ``;``, ``,`` or ``|``) and is parsed by ``limits``
itself. Parsed results are cached, so a rate string costs one dict lookup per request.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from ._errors import ConfigError

__all__ = ["MAX_LIMIT", "MAX_PERIOD", "Rate", "parse_rates"]

#: The longest period a rate may have: ten years. Stores count in integer microseconds, and
#: this bound keeps every sum of them exact (below 2**53, where Lua's doubles stop counting).
MAX_PERIOD = 3650 * 86400.0
#: The largest amount a rate may have (exact as a Lua double).
MAX_LIMIT = 2**53 - 1


class Rate(NamedTuple):
    """``limit`` requests (or cost units) per ``period`` seconds."""

    limit: int
    period: float

    def __str__(self) -> str:
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
    return tuple(rates)


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
        return tuple(out)
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
    return _bounded(Rate(rate.limit, float(rate.period)), rate)


def _bounded(rate: Rate, shown: object) -> Rate:
    """``rate`` when its amount and period are within what every store counts exactly."""
    if rate.limit > MAX_LIMIT:
        raise ConfigError(f"invalid rate {shown!r}: amount out of range (at most {MAX_LIMIT})")
    if not rate.period <= MAX_PERIOD:  # also inf and nan
        raise ConfigError(f"invalid rate {shown!r}: period out of range (at most ten years)")
    return rate
