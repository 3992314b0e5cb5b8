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

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._limiter import Limiter

__all__ = ["FakeClock", "known_limiters", "reset_limiter"]


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


def reset_limiter(limiter: Limiter) -> None:
    """Forget every count, block and ban of ``limiter`` (a memory store: all of it, at
    once). For tests; a shared store (Redis, memcached) is refused, since clearing it would
    clear other users' state: give tests a ``memory://`` limiter."""
    from .storage import MemoryStorage

    storage = limiter.storage
    if not isinstance(storage, MemoryStorage):
        from ._errors import ConfigError

        raise ConfigError(
            f"reset_limiter clears only in-memory stores, not {storage!r}; "
            "use Limiter('memory://') in tests"
        )
    storage.clear()
    if limiter._fallback is not None:
        limiter._fallback.clear()
    if limiter._denials is not None:
        limiter._denials.clear()


def known_limiters() -> list[Limiter]:
    """The limiters that decorators and framework integrations have been given."""
    from ._decorators import known_limiters as known

    return list(known)
