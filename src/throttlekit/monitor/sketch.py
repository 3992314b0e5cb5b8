"""Heavy hitters in bounded memory: who sends the most, over a sliding time window.

:class:`SpaceSaving` is a batched variant of the Space-Saving summary (Metwally et al.):
a dict of at most ``2 * capacity`` keys. A known key is one dict update; a new key is
inserted with the summary's error floor plus its count; when the dict is full it is cut
back to the ``capacity`` largest counts and the largest count dropped becomes the new
floor. Each cut costs O(capacity) and happens at most once per ``capacity`` new keys, so
an update is O(1) amortised. Counts over-estimate by at most ``floor``, and ``floor`` never
exceeds ``total / capacity``, so any key with more than that share is always tracked.

:class:`WindowedTopK` keeps one summary per time bucket (time is injected, never read
here) and merges the buckets of the window on query, so queries cost
O(buckets * capacity) and updates stay O(1). Memory: at most ``buckets * 2 * capacity``
keys, whatever the number of distinct keys.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterable, MutableMapping
from operator import itemgetter
from typing import Any, TypeVar

from .._errors import ConfigError

__all__ = ["SpaceSaving", "WindowedTopK"]

try:  # C: adds 1 to mapping[key] per key, in one call (what Counter.update uses)
    from collections import _count_elements  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - another interpreter
    def _count_elements(mapping: MutableMapping[Hashable, int],
                        keys: Iterable[Hashable]) -> None:
        get = mapping.get
        for k in keys:
            mapping[k] = get(k, 0) + 1

_by_count = itemgetter(1)
_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V", bound=Any)


def heaviest(held: dict[_K, _V], n: int) -> tuple[dict[_K, _V], list[_V]]:
    """The ``n`` items of ``held`` with the largest values (ties in insertion order), and
    all the values, largest first. Sorts bare values: several times faster than sorting
    the items by value."""
    ranked = sorted(held.values(), reverse=True)
    if len(ranked) <= n:
        return dict(held), ranked
    bar = ranked[n - 1]
    kept = {k: v for k, v in held.items() if v > bar}
    for k, v in held.items():
        if len(kept) >= n:
            break
        if v == bar:
            kept[k] = v
    return kept, ranked


class SpaceSaving:
    """Approximate counts of the most frequent keys of a stream, in bounded memory.

    Args:
        capacity: how many keys are guaranteed to be kept after a cut (the summary holds
            up to twice as many between cuts).
    """

    __slots__ = ("capacity", "counts", "floor", "limit", "total")

    def __init__(self, capacity: int = 256) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"capacity must be a positive integer, got {capacity!r}")
        self.capacity = capacity
        #: keys held at most (a cut brings them back to ``capacity``)
        self.limit = 2 * capacity
        self.counts: dict[Hashable, int] = {}
        self.floor = 0
        self.total = 0

    def __len__(self) -> int:
        return len(self.counts)

    def add(self, key: Hashable, n: int = 1) -> None:
        """Count ``n`` more occurrences of ``key``."""
        counts = self.counts
        c = counts.get(key)
        if c is None:
            self.insert(key, n)
            return
        counts[key] = c + n
        self.total += n

    def insert(self, key: Hashable, n: int = 1) -> None:
        """Count ``n`` occurrences of a key not held yet (``add``'s slow path, for callers
        that looked the key up in ``counts`` themselves)."""
        counts = self.counts
        if len(counts) >= self.limit:
            self._cut()
        counts[key] = self.floor + n
        self.total += n

    def _cut(self) -> None:
        counts = self.counts
        # A copy first: dict.copy makes no allocation per item, so another thread's add (a
        # request counted meanwhile) cannot change the dict under it, as it can under
        # iteration (an allocation may run the garbage collector, which may switch threads).
        kept, ranked = heaviest(counts.copy(), self.capacity)
        self.floor = ranked[self.capacity]
        counts.clear()
        counts.update(kept)

    def top(self, n: int = 10) -> list[tuple[Hashable, int]]:
        """The ``n`` largest (key, estimated count) pairs, largest first."""
        return sorted(self.counts.copy().items(), key=_by_count, reverse=True)[:n]

    def clear(self) -> None:
        """Forget everything."""
        self.counts.clear()
        self.floor = 0
        self.total = 0


class WindowedTopK:
    """Heavy hitters over the last ``window`` seconds, in time buckets of ``bucket`` seconds.

    Time comes from the caller (``add(key, now)``), so it runs on simulated time as well as
    on the wall clock; nothing happens between calls.

    Args:
        window: seconds covered by queries.
        bucket: width of one time bucket in seconds (the window's resolution).
        capacity: keys guaranteed per bucket (see :class:`SpaceSaving`).
    """

    __slots__ = ("_closed", "_cur", "_end", "_start", "_taking", "bucket", "capacity", "feed",
                 "nbuckets", "pending", "weight", "window")

    def __init__(self, window: float = 10.0, bucket: float = 1.0, capacity: int = 1024) -> None:
        for name, value in (("window", window), ("bucket", bucket)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if bucket > window:
            raise ConfigError(f"bucket ({bucket!r}s) must not be longer than window ({window!r}s)")
        self.window = float(window)
        self.bucket = float(bucket)
        self.capacity = capacity
        self.nbuckets = max(1, round(window / bucket))
        self._cur = SpaceSaving(capacity)
        self._start = -float("inf")
        self._end = -float("inf")
        self._closed: deque[tuple[float, SpaceSaving]] = deque(maxlen=self.nbuckets)
        #: keys counted once each in the current bucket, folded in on the next read or
        #: roll (:meth:`fold`): a caller counting one key per request appends to this list
        #: (``pending.append``, one C call) and keeps the time moving with :meth:`current`
        self.pending: list[Hashable] = []
        #: held while a fold takes the pending keys (a copy, then a cut: not one step)
        self._taking = threading.Lock()
        #: what each pending key counts for (``add(key, now, weight)``); a caller changing
        #: it folds the keys pending first (:meth:`reweigh`)
        self.weight = 1
        #: called before the pending keys are folded on a read or roll (None: nothing): a
        #: caller queueing its keys elsewhere (in batches) appends them to ``pending`` then
        self.feed: Callable[[], object] | None = None

    def _catch_up(self) -> None:
        """The keys queued by :attr:`feed` and the pending ones counted in."""
        feed = self.feed
        if feed is not None:
            feed()
        if self.pending:
            self.fold()

    def settle(self, now: float, weight: int) -> None:
        """Rolled to ``now``'s bucket (the pending keys counted in theirs), the next keys
        counted ``weight`` times each: once per bucket, by a caller appending to
        :attr:`pending`."""
        self.current(now)
        if weight != self.weight:
            self.reweigh(weight)

    def reweigh(self, weight: int) -> None:
        """The keys pending so far folded in, the next ones counted ``weight`` times each."""
        self._catch_up()
        self.weight = weight

    def fold(self) -> None:
        """Count the :attr:`pending` keys into the current bucket, as :meth:`add` would one
        by one (``weight`` each): at once in C while no cut can happen (the common case),
        else one by one."""
        pending = self.pending
        with self._taking:  # (two threads folding at once would take the same keys twice)
            batch = pending[:]  # copied in C: keys appended meanwhile stay pending
            del pending[:len(batch)]
        cur, weight = self._cur, self.weight
        counts = cur.counts
        if not cur.floor:  # floor 0: a new key starts at its count
            room = cur.limit - len(counts)  # new keys that can come without a cut
            if weight == 1 and len(batch) <= room:
                _count_elements(counts, batch)
                cur.total += len(batch)
                return
            seen: dict[Hashable, int] = {}
            _count_elements(seen, batch)
            if len(seen) <= room:
                if counts:
                    get = counts.get
                    for key, c in seen.items():
                        counts[key] = get(key, 0) + c * weight
                else:  # the bucket's first keys (a fold per bucket): multiplied in C
                    counts.update(zip(seen, map(weight.__mul__, seen.values()), strict=True))
                cur.total += len(batch) * weight
                return
        for key in batch:
            cur.add(key, weight)

    def add(self, key: Hashable, now: float, n: int = 1) -> None:
        """Count ``n`` occurrences of ``key`` at time ``now`` (seconds)."""
        if now >= self._end:
            self._roll(now)
        self._cur.add(key, n)  # (a caller counting a key a request defers it: pending)

    def current(self, now: float) -> tuple[SpaceSaving, float]:
        """The summary counting ``now``'s bucket (rolled over if ``now`` is past it) and
        the end of that bucket: a caller adding many keys per instant adds them there."""
        if now >= self._end:
            self._roll(now)
        elif self.pending or self.feed is not None:
            self._catch_up()
        return self._cur, self._end

    def _roll(self, now: float) -> None:
        self._catch_up()  # counted before ``now``: the bucket ending
        if self._cur.total:
            self._closed.append((self._start, self._cur))
            self._cur = SpaceSaving(self.capacity)
        width = self.bucket
        self._start = (now // width) * width
        self._end = self._start + width

    def _buckets(self, now: float | None, since: float | None) -> list[SpaceSaving]:
        self._catch_up()
        if now is None:
            now = self._end if self._end != -float("inf") else 0.0
        lo = now - self.window
        if since is not None and since > lo:
            lo = since
        # a bucket belongs to the window when it ends after ``lo``
        width = self.bucket
        cur_start, cur = self._start, self._cur
        # list(): copied in C, so a request thread rolling a bucket meanwhile is harmless
        out = [s for start, s in list(self._closed) if start + width > lo and start <= now]
        if cur_start + width > lo and cur_start <= now and all(s is not cur for s in out):
            out.append(cur)
        return out

    def closed(self, since: float, before: float) -> list[tuple[float, SpaceSaving]]:
        """The (start, counts) of the buckets starting in ``[since, before)``."""
        self._catch_up()
        out = [(start, s) for start, s in list(self._closed) if since <= start < before]
        cur, start = self._cur, self._start
        if since <= start < before and cur.total and all(s is not cur for _, s in out):
            out.append((start, cur))
        return out

    def merged(self, now: float | None = None, since: float | None = None) -> dict[Hashable, int]:
        """Estimated count per tracked key over the window ending at ``now`` (or from
        ``since`` when that is later)."""
        buckets = self._buckets(now, since)
        if len(buckets) == 1:
            return dict(buckets[0].counts)
        merged: dict[Hashable, int] = {}
        get = merged.get
        for s in buckets:
            # list(): a C-level copy, so a request thread adding keys meanwhile cannot
            # break the iteration
            for k, c in s.counts.copy().items():
                merged[k] = get(k, 0) + c
        return merged

    def top(
        self, n: int = 10, now: float | None = None, since: float | None = None
    ) -> list[tuple[Hashable, int]]:
        """The ``n`` heaviest (key, estimated count) pairs over the window, largest first."""
        return sorted(self.merged(now, since).items(), key=_by_count, reverse=True)[:n]

    def total(self, now: float | None = None, since: float | None = None) -> int:
        """Exact number of occurrences counted over the window."""
        return sum(s.total for s in self._buckets(now, since))

    def error(self, now: float | None = None, since: float | None = None) -> int:
        """The most a count of :meth:`merged` (same arguments) over-estimates: the sum of
        the buckets' floors. A count minus this is a lower bound of the true count."""
        return sum(s.floor for s in self._buckets(now, since))

    def size(self) -> int:
        """Keys held in memory right now (bounded by ``nbuckets * 2 * capacity``)."""
        self._catch_up()
        return len(self._cur) + sum(len(s) for _, s in list(self._closed))

    def clear(self) -> None:
        """Forget everything."""
        self.pending.clear()
        self._closed.clear()
        self._cur = SpaceSaving(self.capacity)
        self._start = self._end = -float("inf")

    def extend(self, keys: Iterable[Hashable], now: float) -> None:
        """Count each of ``keys`` once at time ``now``."""
        for k in keys:
            self.add(k, now)
