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

    def sleep(self, seconds: float) -> None:
        """What a wait does on this clock (``limit(..., wait=)``): move it forward."""
        self.advance(seconds)

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
    limiter.forget_local()


def known_limiters() -> list[Limiter]:
    """The limiters that decorators and framework integrations have been given."""
    from ._decorators import known_limiters as known

    return list(known)


__all__ += ["clear_limiter"]


def clear_limiter(limiter: Limiter) -> None:
    """Forget what ``limiter`` counted, on any store: a memory store as
    :func:`reset_limiter`; Redis: every key under the storage's ``prefix`` (found with
    ``SCAN`` of that prefix only, so give test limiters a prefix of their own); other shared
    stores (memcached, which cannot list its keys): the blocklist entries. The limiter's
    local fallback and denial caches are cleared too. For tests."""
    from .storage import MemoryStorage

    storage = limiter.storage
    if isinstance(storage, MemoryStorage):
        reset_limiter(limiter)
        return
    prefix = getattr(storage, "prefix", None)
    if type(storage).__name__ == "RedisStorage" and isinstance(prefix, str):
        if not prefix:
            from ._errors import ConfigError

            raise ConfigError("clear_limiter needs a Redis storage with a non-empty prefix")
        client = storage.sync_client()  # type: ignore[attr-defined]
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
        batch: list[object] = []
        for key in client.scan_iter(match=pattern, count=500):
            batch.append(key)
            if len(batch) >= 500:
                for k in batch:  # one key per DEL: Cluster keys live in different slots
                    client.delete(k)
                batch.clear()
        for k in batch:
            client.delete(k)
    else:
        for entry in storage.blocked():
            storage.unblock(entry.key)
    limiter.forget_local()
