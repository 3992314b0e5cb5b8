"""Top offenders shared through the limiter's store, for ``throttlekit top --storage``.

Each :class:`~throttlekit.monitor.Monitor` publishes, once per closed bucket (lazily, on
its tick), the heaviest keys of that bucket into the store; ``top --storage`` sums what
every process published over the last window.

Where it works:

- Redis (``RedisStorage`` with a sync client): a sorted set per second,
  ``<prefix>{top:<epoch second>}``, grown with ZINCRBY, trimmed to :data:`MAX_MEMBERS`
  members and expiring after :data:`KEEP` seconds or more. One pipeline per bucket and
  process. Timestamps are the monitor's clock: it must be the wall clock.
- memory: the store lives in one process, so reading it means asking the monitors of that
  process (``top_of`` with the same storage object); another process sees nothing.
- other stores (Memcached): nothing is published; use ``top --url``.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Hashable, Iterable
from typing import Any

__all__ = ["KEEP", "MAX_MEMBERS", "PUBLISH_TOP", "publish", "register", "top_of"]

logger = logging.getLogger("throttlekit.monitor")

#: keys published per bucket and process
PUBLISH_TOP = 100
#: members kept per second in the store, whatever the number of processes
MAX_MEMBERS = 1000
#: seconds a published second stays readable, at least
KEEP = 120

_monitors: weakref.WeakSet[Any] = weakref.WeakSet()


def register(monitor: Any) -> None:
    """Make ``monitor`` readable by :func:`top_of` in this process (memory stores)."""
    _monitors.add(monitor)


def _redis(storage: Any) -> Any:
    """The sync Redis client of a RedisStorage, or None (another store, or async only)."""
    if type(storage).__name__ != "RedisStorage" or not hasattr(storage, "family"):
        return None
    try:
        return storage.sync_client()
    except Exception:  # an async-only RedisStorage: nothing to publish with
        return None


def _key(storage: Any, second: int) -> str:
    family: str = storage.family(f"top:{second}")
    return family


def publish(storage: Any, buckets: Iterable[tuple[float, list[tuple[Hashable, int]]]],
            window: float) -> bool:
    """Add each bucket's (start, [(key, count), ...]) to the store; False when this store
    takes no offender data."""
    client = _redis(storage)
    if client is None:
        return False
    ttl = max(KEEP, math.ceil(2 * window))
    pipe = client.pipeline(transaction=False)
    n = 0
    for start, top in buckets:
        if not top:
            continue
        key = _key(storage, int(start))
        for member, count in top:
            pipe.zincrby(key, count, str(member))
        pipe.zremrangebyrank(key, 0, -MAX_MEMBERS - 1)
        pipe.expire(key, ttl)
        n += 1
    if n:
        pipe.execute()
    return True


def top_of(storage: Any, window: float, now: float) -> dict[str, int] | None:
    """Requests per key over ``[now - window, now]`` as every process published them into
    ``storage``; None when this store holds no offender data (not Redis nor memory)."""
    client = _redis(storage)
    if client is not None:
        seconds = range(math.floor(now - window), math.floor(now) + 1)
        pipe = client.pipeline(transaction=False)
        for s in seconds:
            pipe.zrange(_key(storage, s), 0, -1, withscores=True)
        totals: dict[str, int] = {}
        for pairs in pipe.execute():
            for member, score in pairs:
                k = member.decode() if isinstance(member, bytes) else str(member)
                totals[k] = totals.get(k, 0) + int(score)
        return totals
    if type(storage).__name__ == "MemoryStorage":
        totals = {}
        for monitor in list(_monitors):
            if getattr(monitor.limiter, "storage", None) is storage:
                for k, c in monitor.client_counts(now, now - window).items():
                    totals[str(k)] = totals.get(str(k), 0) + c
        return totals
    return None
