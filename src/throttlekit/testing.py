"""Helpers for testing code that uses throttlekit: a controllable clock.

>>> from throttlekit import Limiter
>>> from throttlekit.testing import FakeClock
>>> clock = FakeClock()
>>> limiter = Limiter(clock=clock, strategy="fixed_window")
>>> limiter.hit("k", "1/second").allowed, limiter.hit("k", "1/second").allowed
(True, False)
>>> clock.advance(1)
>>> limiter.hit("k", "1/second").allowed
True
"""

from __future__ import annotations

__all__ = ["FakeClock"]


class FakeClock:
    """A clock that moves only when told to: pass it as ``Limiter(clock=...)``.

    Starts at ``start`` seconds since the epoch (default: a midnight UTC, so windows of
    a second, a minute, an hour or a day all start there).
    """

    __slots__ = ("now",)

    def __init__(self, start: float = 1_699_920_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        if seconds < 0:
            raise ValueError("a clock cannot go back")
        self.now += seconds

    def set(self, now: float) -> None:
        """Jump to ``now`` seconds since the epoch."""
        self.now = float(now)
