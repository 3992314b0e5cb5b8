"""Numbers out of range given through the Python API are ConfigErrors, as in rules files."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from throttlekit import ConfigError, Limiter, Rate

_BAD_SECONDS = [1e308, math.inf, math.nan, -1.0, 0, True, 3650 * 86400.0 + 1]


@pytest.mark.parametrize("value", _BAD_SECONDS, ids=repr)
@pytest.mark.parametrize("field", ["findtime", "bantime"])
@pytest.mark.parametrize("kind", ["fail2ban", "allow2ban"])
def test_ban_durations_out_of_range(kind: str, field: str, value: float) -> None:
    """findtime = 1e308 (or inf, nan, <= 0, over ten years) is a ConfigError naming it."""
    limiter = Limiter()
    kwargs: dict[str, Any] = {"maxretry": 3, "findtime": 60, "bantime": 600, field: value}
    with pytest.raises(ConfigError, match=field):
        getattr(limiter, kind)("r", match=lambda r: True, **kwargs)


@pytest.mark.parametrize(
    "rates",
    [Rate(5, math.inf), Rate(5, math.nan), Rate(5, True), Rate(2**60, 1.0),  # type: ignore[arg-type]
     "5/100000 days", f"{2**60}/second"],
    ids=repr,
)
@pytest.mark.parametrize("use", ["hit", "throttle"])
def test_rates_out_of_range(rates: object, use: str) -> None:
    """A rate whose period is infinite or over ten years, or whose amount no store counts
    exactly, is a ConfigError, never an OverflowError."""
    limiter = Limiter()
    call: Callable[[], object] = (
        (lambda: limiter.hit("k", rates)) if use == "hit"
        else (lambda: limiter.throttle("t", rates))
    )
    with pytest.raises(ConfigError, match="invalid rate"):
        call()


def test_longest_rate_and_ban_still_work() -> None:
    """The bounds leave room for real settings: a ten-year rate and ban."""
    limiter = Limiter()
    assert limiter.hit("k", "5/3650 days").remaining == 4
    limiter.fail2ban("r", match=lambda r: True, maxretry=3, findtime=3650 * 86400,
                     bantime=3650 * 86400)


@pytest.mark.parametrize("value", [math.nan, math.inf, -1, True, "1"], ids=repr)
@pytest.mark.parametrize("field", ["retry_interval", "error_log_interval"])
def test_limiter_intervals_must_be_finite(field: str, value: object) -> None:
    """Limiter(retry_interval=nan) is refused at construction, naming the setting."""
    with pytest.raises(ConfigError, match=field):
        Limiter(**{field: value})  # type: ignore[arg-type]
