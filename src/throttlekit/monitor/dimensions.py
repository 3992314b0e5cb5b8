"""Heavy hitters per request dimension, each value against its own baseline.

Beside the client key, the monitor counts each request's path, user agent, header
fingerprint and networks (see :mod:`throttlekit.monitor._features` for the values) in a
:class:`~throttlekit.monitor.WindowedTopK` per dimension. While traffic is normal it learns,
once per window, each dimension's total rate and the rate of each of its values (an EWMA
with the detector's half-life), so that during an anomaly a value's rate is read against
what is normal *for that value* (:mod:`throttlekit.monitor.attribution`).

Memory, per dimension: the sketch holds at most ``window / bucket * 2 * capacity`` values
(10 x 2 x 256 = 5,120 by default) and the baselines at most ``capacity`` values, each value
at most 256 characters; the feature caches hold at most 8,192 entries each. The sampled
requests' values are computed in batches: at most :data:`BATCH` (32) requests' views wait.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable
from itertools import starmap
from typing import Any, NamedTuple

from .._errors import ConfigError
from ._features import DIMENSIONS, Features, headers_of, no_headers
from .sketch import WindowedTopK, heaviest

__all__ = ["CLIENT", "DIMENSIONS", "Dimension", "Dimensions", "ValueRate"]

#: the name of the client-key dimension (the monitor's heaviest clients)
CLIENT = "client"
#: a learnt per-value baseline below this (requests per second) is forgotten
_FORGET = 0.01
#: requests whose values wait to be counted, at most
_FOLD = 1024
#: requests queued before their values are computed together
BATCH = 32


class ValueRate(NamedTuple):
    """One value of a dimension over a lookback.

    Attributes:
        value: the value (a path, a user agent, a fingerprint, a network, a client key).
        requests: its estimated requests in the lookback (an upper bound).
        rate: requests per second in the lookback, from the lower bound of its count.
        baseline: its learnt rate in normal traffic, requests per second.
    """

    value: Hashable
    requests: int
    rate: float
    baseline: float


class Dimension:
    """One dimension: its heavy hitters, its total baseline and its values' baselines.

    Args:
        name: the dimension's name.
        hitters: its sketch over the monitor's window.
        capacity: per-value baselines kept (the heaviest); 0 learns the total only.
    """

    __slots__ = ("baseline", "baselines", "capacity", "hitters", "learnt", "name", "unseen")

    def __init__(self, name: str, hitters: WindowedTopK, capacity: int) -> None:
        self.name = name
        self.hitters = hitters
        self.capacity = capacity
        #: requests per second of the whole dimension in normal traffic
        self.baseline = 0.0
        #: value -> requests per second in normal traffic (the heaviest ``capacity``)
        self.baselines: dict[Hashable, float] = {}
        #: the baseline of a value not in ``baselines`` (0 until they are full)
        self.unseen = 0.0
        #: windows learnt so far (the first ones are averaged, then the EWMA takes over)
        self.learnt = 0

    def __repr__(self) -> str:
        return (f"<Dimension {self.name} baseline={self.baseline:.1f}/s "
                f"values={len(self.baselines)}>")

    def baseline_of(self, value: Hashable) -> float:
        """The learnt rate of ``value`` in normal traffic, requests per second."""
        return self.baselines.get(value, self.unseen)

    def learn(self, now: float, keep: float, span: float) -> None:
        """Fold the window ending at ``now`` into the baselines: ``span`` seconds of it
        saw traffic (less than the window at the start), ``keep`` is the share of the old
        baseline kept (the EWMA's weight for one window; the first windows are averaged)."""
        hitters = self.hitters
        span = min(span, hitters.window)
        if span < hitters.bucket:
            return
        self.learnt += 1
        keep = min(keep, 1 - 1 / self.learnt)
        self.baseline = keep * self.baseline + (1 - keep) * hitters.total(now) / span
        if not self.capacity:
            return
        error = hitters.error(now)
        old = self.baselines
        new: dict[Hashable, float] = {}
        for value, count in hitters.merged(now).items():
            if count > error:
                r = (count - error) / span
                b = old.get(value)
                new[value] = r if b is None else keep * b + (1 - keep) * r
        for value, b in old.items():
            if value not in new and b * keep >= _FORGET:
                new[value] = b * keep
        self.unseen = 0.0
        if len(new) > self.capacity:
            new, ranked = heaviest(new, self.capacity)
            self.unseen = ranked[self.capacity - 1]
        self.baselines = new

    def rows(self, now: float, since: float | None = None, n: int = 10) -> list[ValueRate]:
        """The ``n`` heaviest values from ``since`` (at most the window) to ``now``."""
        return self.rates(now, since)[:n]

    def rates(self, now: float, since: float | None = None) -> list[ValueRate]:
        """Every tracked value from ``since`` (at most the window) to ``now``, heaviest
        first; rates over whole buckets (the bucket holding ``since`` from its start)."""
        hitters = self.hitters
        lo = self.start(now, since)
        span = max(now - lo, hitters.bucket)
        error = hitters.error(now, lo)
        base = self.baseline_of
        out = [ValueRate(v, c, max(0, c - error) / span, base(v))
               for v, c in hitters.merged(now, lo).items()]
        out.sort(key=lambda r: r.requests, reverse=True)
        return out

    def above(self, now: float, since: float | None, rate: float, least: int,
              baseline: float) -> list[ValueRate]:
        """The values sending more than ``rate`` requests per second (and at least
        ``least`` requests) from ``since`` (at most the window) to ``now``, by the lower
        bound of their counts, heaviest first; ``baseline`` is given as theirs."""
        hitters = self.hitters
        lo = self.start(now, since)
        span = max(now - lo, hitters.bucket)
        bar = max(float(least), rate * span)
        error = hitters.error(now, lo)
        out = [ValueRate(k, c, (c - error) / span, baseline)
               for k, c in hitters.merged(now, lo).items() if c - error >= bar]
        out.sort(key=lambda r: r.requests, reverse=True)
        return out

    def start(self, now: float, since: float | None) -> float:
        """Where a lookback from ``since`` to ``now`` begins: whole buckets, at most the
        window."""
        hitters = self.hitters
        lo = now - hitters.window
        if since is not None and since > lo:
            lo = (since // hitters.bucket) * hitters.bucket
        return lo

    def rate(self, now: float, since: float | None = None) -> float:
        """Requests per second of the whole dimension from ``since`` to ``now``."""
        lo = self.start(now, since)
        return self.hitters.total(now, lo) / max(now - lo, self.hitters.bucket)

    def size(self) -> int:
        """Values held in memory: the sketch's and the baselines'."""
        return self.hitters.size() + len(self.baselines)


class Dimensions:
    """The request dimensions a monitor counts (all of :data:`DIMENSIONS` by default).

    Per sampled request, the caller appends (its view, ``_features.headers_of(view)``) to
    :attr:`queue` and its path to :attr:`paths` (``_features.path_of``): the headers and
    path the rules saw, since an app may rewrite its environ or scope in place. It calls
    :meth:`count` once :data:`BATCH` views are queued; once per bucket it calls
    :meth:`roll`. The other values of the queued views are
    computed together (the feature code runs hot over many views), by :meth:`count`,
    :meth:`roll` or anything reading a dimension (each sketch's
    :attr:`~WindowedTopK.feed`), appended to their dimensions' pending keys
    (:attr:`WindowedTopK.pending`) and counted in C when the bucket rolls or is read:
    exactly as one by one, each in the bucket and at the weight of the last :meth:`roll`.
    At most BATCH views are held meanwhile.
    """

    __slots__ = ("_held", "_paths_to", "_row", "_taking", "by_name", "features", "headers_of",
                 "names", "paths", "queue")

    def __init__(self, names: Iterable[str], window: float, bucket: float,
                 capacity: int) -> None:
        names = tuple(names)
        unknown = [n for n in names if n not in DIMENSIONS]
        if unknown or len(set(names)) != len(names):
            raise ConfigError(
                f"dimensions must be distinct names among {', '.join(DIMENSIONS)}; "
                f"got {names!r}"
            )
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"dimension_capacity must be a positive integer, got {capacity!r}")
        # in DIMENSIONS order, so a request's values line up with them
        self.names = tuple(n for n in DIMENSIONS if n in names)
        self.features = Features()
        self.by_name = {
            n: Dimension(n, WindowedTopK(window, bucket, capacity), capacity)
            for n in self.names
        }
        #: (index in a request's values, that dimension's pending keys), but the path's
        self._row: list[tuple[int, list[Hashable]]] = [
            (DIMENSIONS.index(n), self.by_name[n].hitters.pending) for n in self.names
            if n != "path"
        ]
        #: what a sampled request's headers are taken by (``no_headers``: none read them)
        self.headers_of = headers_of if {"user_agent", "fingerprint"} & {*self.names} \
            else no_headers
        path = self.by_name.get("path")
        self._paths_to = None if path is None else path.hitters.pending
        #: (view, headers taken) of the requests counted, their values not computed yet
        self.queue: list[Any] = []
        #: the paths of the requests counted (``path_of``), not counted yet
        self.paths: list[str] = []
        #: held while :meth:`count` takes the queued paths and views (a copy, then a cut)
        self._taking = threading.Lock()
        for dimension in self.by_name.values():
            dimension.hitters.feed = self.count
        self._held = 0  # requests pending since the last fold

    def count(self) -> None:
        """The queued views' values appended to their dimensions' pending keys."""
        paths, queue = self.paths, self.queue
        if not paths and not queue:
            return
        # (another thread may append a path before its view: counted next time; two threads
        # counting at once would take the same ones twice without the lock)
        with self._taking:
            taken = paths[:]  # copied in C: those appended meanwhile stay
            del paths[:len(taken)]
            views = queue[:]
            del queue[:len(views)]
        if taken and self._paths_to is not None:
            self._paths_to.extend(taken)
        if not views or not self._row:
            return
        columns = list(zip(*starmap(self.features.values, views), strict=True))
        for i, pending in self._row:
            column = columns[i]
            if None in column:  # a request without a network
                column = tuple(v for v in column if v is not None)
            pending.extend(column)
        self._held += len(views)
        if self._held >= _FOLD:  # bounded within a bucket as well
            self._held = 0
            for dimension in self.by_name.values():
                dimension.hitters.fold()

    def roll(self, now: float, n: int) -> None:
        """The queued and pending values counted into their bucket, which rolls if ``now``
        is past it; the next ones count ``n`` each (the monitor's sampling weight)."""
        self.count()
        for dimension in self.by_name.values():
            dimension.hitters.settle(now, n)
        self._held = 0

    def learn(self, now: float, keep: float, span: float) -> None:
        """Fold the current window into every dimension's baselines."""
        for dimension in self.by_name.values():
            dimension.learn(now, keep, span)

    def size(self) -> int:
        """Values held in memory over every dimension."""
        return sum(d.size() for d in self.by_name.values())
