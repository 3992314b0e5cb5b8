"""The Monitor: counters, heavy hitters and anomaly detection fed by a Limiter's events.

::

    monitor = Monitor(limiter)          # subscribes to every event kind
    monitor.on_anomaly(print)           # Anomaly(kind="anomaly_started", ...)
    monitor.counts()                    # {(rule, outcome, dry_run): n}
    monitor.top(10)                     # heaviest clients (client_key) over the window
    monitor.dimension("user_agent").rows(monitor.clock())   # heaviest user agents
    monitor.attribute()                 # which dimension and values explain a surge

One event costs a few dict operations and comparisons; everything slow (bucket
roll-over, baselines, merging sketches) runs at most once per ``bucket`` second, lazily,
on the next event or on :meth:`Monitor.tick`. The monitor never starts a thread.

The counters, detectors and heaviest clients count every request; above 250 requests a
bucket, the dimensions and the rules' keys count a random 1 in N, scaled by N (see
:mod:`throttlekit.monitor._sampling` for the error bound).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from .._errors import ConfigError
from . import _store
from ._features import path_of
from ._sampling import Sampler
from ._scope import FIRST, Counted, Latest, Scope
from .attribution import (
    COVERAGE,
    Attribution,
    AttributionOptions,
    attribute,
    check_options,
    explain,
    explain_clients,
)
from .detector import DetectorOptions, RateDetector
from .dimensions import BATCH, CLIENT, DIMENSIONS, Dimension, Dimensions, ValueRate
from .sketch import WindowedTopK

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

__all__ = ["REFUSED", "Anomaly", "AnomalyCallback", "Monitor"]

logger = logging.getLogger("throttlekit.monitor")

#: outcomes that refused a request
REFUSED = frozenset({"blocked", "banned", "throttled"})
#: the scope name of all traffic (rule detectors are named after their rule)
ALL = "*"
#: keys (clients, rules') waiting to be counted, at most (about: checked per BATCH samples)
FOLD = 1024


class Anomaly(NamedTuple):
    """An ``anomaly_started`` or ``anomaly_ended`` event.

    Attributes:
        kind: ``"anomaly_started"`` or ``"anomaly_ended"``.
        scope: ``"*"`` for all traffic, or the rule name.
        at: when it was detected (or found over), seconds since the epoch on the
            monitor's clock.
        started_at: when the rise began (the start of its first bucket above threshold).
        rate: requests per second of the last full bucket (when started: of the bucket
            that triggered, so far).
        baseline: the baseline rate, requests per second.
        top: the top offenders over the window, as (key, estimated requests) pairs.
        attribution: for all traffic, which dimension and values explain the surge (when
            ended: the last attribution made during it); None for a rule's anomaly.
    """

    kind: str
    scope: str
    at: float
    started_at: float
    rate: float
    baseline: float
    top: list[tuple[Hashable, int]]
    attribution: Attribution | None = None


AnomalyCallback = Callable[[Anomaly], object]
TickCallback = Callable[[float], object]
#: called with the time; returns sections added to :meth:`Monitor.snapshot`
SnapshotCallback = Callable[[float], dict[str, Any]]


def _call_each(callbacks: list[Callable[[Any], object]], arg: object, failed: str) -> None:
    """Call each callback with ``arg``; one that raises is logged (``failed``, with the
    callback) and the others still run."""
    for callback in callbacks:
        try:
            callback(arg)
        except Exception:
            logger.exception(failed, callback)


class Monitor:
    """Live traffic monitoring on top of a Limiter's events.

    Args:
        limiter: subscribe to this limiter's events right away (``limiter.on(monitor)``);
            or call the monitor with events yourself.
        clock: seconds since the epoch, for :meth:`tick` and status when no event came;
            defaults to the limiter's clock, then ``time.time``.
        window: seconds covered by top-offender queries (default 10).
        bucket: time resolution in seconds (default 1).
        capacity: heavy-hitter keys kept per bucket (default 1024; memory is bounded by
            ``window / bucket * 2 * capacity`` keys whatever the number of clients).
        per_rule: also detect anomalies per rule (default True).
        top_n: offenders reported with an anomaly (default 10).
        client_quantile: the per-client baseline is this quantile of the clients' rates
            in normal traffic (default 0.99); see :meth:`offenders`.
        max_rules: rules tracked individually (default 64); further rules are counted only.
        publish: write each bucket's top offenders into the limiter's Redis store, lazily
            on the tick (default True), so ``throttlekit top --storage`` sums every
            process's; see :mod:`throttlekit.monitor._store`.
        dimensions: the request dimensions counted beside the client key (default: all
            of ``path``, ``user_agent``, ``fingerprint``, ``net24``, ``net16``; ``()``
            for none); see :mod:`throttlekit.monitor.dimensions`.
        dimension_capacity: values kept per bucket and dimension (default 256; a value
            with more than 1/256 of a bucket's requests is always found).
        attribution: the tuning of :meth:`attribute` (``factor``, ``coverage``,
            ``max_values``, ``max_collateral``, ``min_share``): see
            :mod:`throttlekit.monitor.attribution`.
        sample: count the dimensions and the rules' keys for 1 request in ``sample``
            (1: every request); default None adapts it to the rate (see above).
        detector: the anomaly detectors' tuning (``factor``, ``sustain``, ``end_factor``,
            ``cooldown``, ``halflife``, ``warmup``, ``min_rate``): see
            :class:`RateDetector`, which holds their defaults.
    """

    def __init__(
        self,
        limiter: Any = None,
        *,
        clock: Callable[[], float] | None = None,
        window: float = 10.0,
        bucket: float = 1.0,
        capacity: int = 1024,
        per_rule: bool = True,
        top_n: int = 10,
        client_quantile: float = 0.99,
        max_rules: int = 64,
        publish: bool = True,
        dimensions: Iterable[str] | None = None,
        dimension_capacity: int = 256,
        attribution: AttributionOptions | None = None,
        sample: int | None = None,
        **detector: Unpack[DetectorOptions],
    ) -> None:
        if clock is None and limiter is not None:
            clock = getattr(limiter, "clock", None)
        if clock is not None and not callable(clock):
            raise ConfigError(f"clock must be a zero-argument callable, got {clock!r}")
        if not 0 < client_quantile <= 1:
            raise ConfigError(f"client_quantile must be in (0, 1], got {client_quantile!r}")
        if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
            raise ConfigError(f"top_n must be a positive integer, got {top_n!r}")
        self.clock: Callable[[], float] = clock or time.time
        self.window = window
        self.bucket = bucket
        self.capacity = capacity
        self.per_rule = per_rule
        self.top_n = top_n
        self.client_quantile = client_quantile
        self.max_rules = max_rules
        self._detector_options: dict[str, Any] = {**detector, "bucket": bucket}
        self._overall = self._new_scope(ALL, capacity)
        self._overall_det = self._overall.detector
        self._keep = math.exp(math.log(0.5) * window / self._overall_det.halflife)
        self._overall_hit = self._overall.detector.hit
        #: the heaviest clients count one key a request: appended, folded in per bucket
        self._talkers = self._overall.hitters
        self._talkers_defer = self._talkers.pending.append
        self._clients = Dimension(CLIENT, self._overall.hitters, 0)
        self._dims = Dimensions(DIMENSIONS if dimensions is None else dimensions,
                                window, bucket, dimension_capacity)
        self._dims_queue, self._dims_path = self._dims.queue, self._dims.paths.append
        self._attribution_options: AttributionOptions = {
            "factor": self._overall_det.factor, **(attribution or {})
        }
        check_options(self._attribution_options)
        #: the latest attribution (:meth:`attribute`), None before the first
        self.attribution: Attribution | None = None
        self._quiet: set[str] = set()
        self._snapshot_callbacks: list[SnapshotCallback] = []
        self._rules: dict[str, Scope] = {}
        self._counted: dict[str, Counted] = {}  # every rule seen: counters (+ scope)
        self._latest = Latest()  # per thread: see Latest
        self._tick_end = -math.inf
        self._first_tick = math.inf
        self._client_due = -math.inf
        self._anomaly_callbacks: list[AnomalyCallback] = []
        self._tick_callbacks: list[TickCallback] = []
        self.requests = 0
        self._sampler = Sampler(sample)
        self._gaps = self._sampler.gaps
        self._skip = 1  # requests until the next sample, this one included
        self._sample_of: object = None  # the latest request sampled
        self._bucket_mark = 0  # ``requests`` at the last bucket roll
        #: baseline requests per second of a typical heavy legitimate client (see offenders)
        self.client_baseline: float | None = None
        self.recent: list[Anomaly] = []
        self.limiter = limiter
        #: buckets starting before this are published (or were before the monitor began)
        self._published = -math.inf
        self._publish_retry = -math.inf
        self._publishing = publish and limiter is not None
        if limiter is not None:
            limiter.on(self)  # told through event_fields (see throttlekit._events)
            _store.register(self)

    @property
    def sampling(self) -> int:
        """1 in how many requests the dimensions and the rules' keys are counted right
        now (1: every request); see :mod:`throttlekit.monitor._sampling`."""
        return self._sampler.every

    def _new_scope(self, name: str, capacity: int) -> Scope:
        detector = RateDetector(name, on_transition=self._transition, **self._detector_options)
        return Scope(detector, WindowedTopK(self.window, self.bucket, capacity))

    def __repr__(self) -> str:
        return f"<Monitor requests={self.requests} {self._overall_det!r}>"

    # -- the hot path -------------------------------------------------------------------

    def __call__(self, event: Any) -> None:
        """Count one :class:`throttlekit.Event` (fed by hand; the limiter: event_fields)."""
        try:  # one unpack: an Event's attributes are each a descriptor call
            kind, rule, key, request, _, dry_run, at = event
        except (TypeError, ValueError):  # anything shaped like an Event, fed by hand
            kind, rule, key, request, dry_run, at = (
                event.kind, event.rule, event.key, event.request, event.dry_run, event.at)
        self.event_fields(kind, rule, key, request, None, dry_run, at)

    def event_fields(self, kind: str, rule: str, key: str | None, request: Any,
                     decision: Any, dry_run: bool, at: float) -> None:
        """Count one event given by its fields, in :class:`~throttlekit.Event`'s order."""
        counted = self._counted.get(rule)
        if counted is None:
            counted = self._add_rule(rule, at)
        counts = counted.dry if dry_run else counted.counts
        try:
            counts[kind] += 1
        except KeyError:
            counted.first(counts, kind)
        latest = self._latest
        if request is not latest.request:
            latest.request = request
            self.requests += 1
            if at >= self._tick_end:
                self._tick(at)
            self._overall_hit(at)
            client = request.client_key
            if client is not None:
                self._talkers_defer(client)
            skip = self._skip - 1
            if skip:
                self._skip = skip
            else:  # sampled: queued, its dimensions (and rules' keys) count ``every`` times
                self._sample_of = request
                try:
                    self._skip = self._gaps.pop()
                except IndexError:  # all popped: the sampler draws more
                    self._skip = self._sampler.gap()
                self._dims_path(path_of(request))
                queue = self._dims_queue
                queue.append((request, self._dims.headers_of(request)))  # (as the rules saw them)
                if len(queue) >= BATCH:
                    self._count()
        hit = counted.hit
        if hit is not None:
            hit(at)
            if request is self._sample_of and key is not None:
                # counted ``every`` times in the bucket (both set once per bucket: _tick)
                counted.scope.hitters.pending.append(key)  # type: ignore[union-attr]

    def _count(self) -> None:
        """The queued requests' dimensions counted, the pending keys bounded (FOLD)."""
        self._dims.count()
        for hitters in (self._talkers, *[s.hitters for s in list(self._rules.values())]):
            if len(hitters.pending) >= FOLD:
                hitters.fold()

    def _add_rule(self, rule: str, at: float) -> Counted:
        with FIRST:  # (a thread racing here made a second Counted, losing counts)
            if (counted := self._counted.get(rule)) is not None:
                return counted
            scope = None
            if self.per_rule and len(self._rules) < self.max_rules and rule not in self._quiet:
                # rule scopes keep fewer keys: for reports, the shield uses all traffic
                scope = self._new_scope(rule, max(64, self.capacity // 8))
                scope.hitters.settle(at, self._sampler.every)  # then settled by _tick
                self._rules[rule] = scope
            return self._counted.setdefault(rule, Counted(scope))

    # -- time ---------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        """Let time pass without traffic: close buckets, end anomalies, run periodic hooks
        (the status endpoint and exporters call this)."""
        if now is None:
            now = self.clock()
        if now >= self._tick_end:
            self._tick(now)
        self._overall_det.tick(now)
        for scope in self._rules.values():
            scope.detector.tick(now)

    def _tick(self, now: float) -> None:
        """Once per bucket of all traffic: the per-client baseline, then the hooks."""
        width = self.bucket
        self._tick_end = (now // width) * width + width
        self._talkers.current(now)  # the clients of the bucket ending folded in, rolled
        every = self._sampler.adapt(self.requests - self._bucket_mark)
        self._bucket_mark = self.requests
        if self._skip > every:
            self._skip = every
        self._dims.roll(now, every)  # the samples' dimensions and rules' keys: in the
        for scope in list(self._rules.values()):  # bucket ending, the next at ``every``
            scope.hitters.settle(now, every)
        if now < self._first_tick:
            self._first_tick = (now // width) * width
        det = self._overall_det
        if now >= self._client_due:
            self._client_due = now + self.window
            if not det.active and det.rising_since is None:
                self._learn_clients(now)
                span = now - self._first_tick
                self._clients.learn(now, self._keep, span)
                self._clients.unseen = self.client_baseline or 0.0
                self._dims.learn(now, self._keep, span)
        if self._publishing and now >= self._publish_retry:
            self._publish(now)
        _call_each(self._tick_callbacks, now, "monitor tick hook %r failed")

    def _publish(self, now: float) -> None:
        """The closed buckets' top offenders into the store (Redis), once each."""
        current = (now // self.bucket) * self.bucket
        buckets = self._overall.hitters.closed(self._published, current)
        self._published = current
        if not buckets:
            return
        try:
            top = [(start, counts.top(_store.PUBLISH_TOP)) for start, counts in buckets]
            self._publishing = _store.publish(self.limiter.storage, top, self.window)
        except Exception as exc:  # the store is down: try again a window later
            self._publish_retry = now + self.window
            logger.warning("publishing top offenders failed: %s", exc)

    def _learn_clients(self, now: float) -> None:
        """Fold the current window's per-client rates into the per-client baseline."""
        counts = sorted(self.client_counts(now).values())
        if len(counts) < 10:
            return
        q = counts[min(len(counts) - 1, int(self.client_quantile * len(counts)))]
        rate = q / self.window
        cb = self.client_baseline
        self.client_baseline = rate if cb is None else self._keep * cb + (1 - self._keep) * rate

    # -- anomalies ----------------------------------------------------------------------

    def _transition(self, kind: str, now: float, detector: RateDetector) -> None:
        scope = self._overall if detector.name == ALL else self._rules.get(detector.name)
        since = detector.started_at
        top: list[tuple[Hashable, int]] = []
        if scope is not None:
            top = scope.hitters.top(self.top_n, now, since)
        rate = detector.peak_rate if kind == "anomaly_started" else detector.last_rate
        found = None
        if detector.name == ALL:
            found = self.attribute(now) if kind == "anomaly_started" else self.attribution
        anomaly = Anomaly(
            kind, detector.name, now,
            now if detector.started_at is None else detector.started_at,
            rate, detector.baseline, top, found,
        )
        self.recent.append(anomaly)
        del self.recent[:-20]
        log = logger.warning if kind == "anomaly_started" else logger.info
        log(
            "%s on %s: %.1f req/s against a baseline of %.1f req/s; top: %s%s",
            kind, detector.name, rate, detector.baseline,
            ", ".join(f"{k} ({c})" for k, c in top[:5]) or "-",
            "" if found is None else f"; explained by {found.summary()}",
            extra={
                "throttlekit_event": kind, "scope": detector.name, "rate": rate,
                "baseline": detector.baseline, "started_at": anomaly.started_at,
                "top_offenders": [[str(k), c] for k, c in top],
                "attribution": None if found is None else found.as_dict(),
            },
        )
        _call_each(self._anomaly_callbacks, anomaly, "anomaly callback %r failed")

    def on_anomaly(self, callback: AnomalyCallback) -> AnomalyCallback:
        """Call ``callback(anomaly)`` on every ``anomaly_started``/``anomaly_ended``;
        returns it, so it works as a decorator."""
        if not callable(callback):
            raise ConfigError(f"an anomaly callback must be callable, got {callback!r}")
        self._anomaly_callbacks.append(callback)
        return callback

    def on_tick(self, callback: TickCallback) -> TickCallback:
        """Call ``callback(now)`` about once per bucket while traffic flows."""
        if not callable(callback):
            raise ConfigError(f"a tick callback must be callable, got {callback!r}")
        self._tick_callbacks.append(callback)
        return callback

    # -- queries ------------------------------------------------------------------------

    @property
    def detector(self) -> RateDetector:
        """The detector of all traffic."""
        return self._overall_det

    def rule_detectors(self) -> dict[str, RateDetector]:
        """The per-rule detectors, by rule name."""
        return {name: s.detector for name, s in list(self._rules.items())}

    @property
    def anomaly(self) -> bool:
        """True while all traffic is in an anomaly."""
        return self._overall_det.active

    def counts(self) -> dict[tuple[str, str, bool], int]:
        """Events counted so far, by (rule, outcome, dry_run)."""
        out: dict[tuple[str, str, bool], int] = {}
        for rule, counted in list(self._counted.items()):  # copied: threads may add
            out.update(((rule, kind, False), n) for kind, n in counted.counts.copy().items())
            out.update(((rule, kind, True), n) for kind, n in counted.dry.copy().items())
        return out

    def top(
        self, n: int = 10, rule: str | None = None, now: float | None = None
    ) -> list[tuple[Hashable, int]]:
        """The heaviest clients (or, with ``rule``, that rule's keys) over the window."""
        scope = self._overall if rule is None else self._rules.get(rule)
        if scope is None:
            return []
        return scope.hitters.top(n, self.clock() if now is None else now)

    def client_counts(self, now: float, since: float | None = None) -> dict[Hashable, int]:
        """Estimated requests per client over the window ending at ``now`` (from ``since``
        when that is later)."""
        return self._overall.hitters.merged(now, since)

    def offenders(
        self,
        now: float,
        *,
        factor: float = 2.0,
        min_requests: int = 5,
        since: float | None = None,
        limit: int = 1000,
    ) -> list[tuple[Hashable, int]]:
        """Clients sending more than ``factor`` times the per-client baseline rate.

        The per-client baseline is the ``client_quantile`` of the clients' rates learnt in
        normal traffic (so the heaviest legitimate clients set the bar), and the rate of a
        client is its count since ``since`` (at most the window) over that time; clients
        with fewer than ``min_requests`` are never offenders. A count is the sketch's
        lower bound (its estimate minus the most it can over-estimate), so a client is
        never an offender by the sketch's error. Empty while no baseline has been learnt.
        Returns (client, estimated requests) pairs, heaviest first.
        """
        rows = self._offender_rows(now, factor, min_requests, since)
        return [(r.value, r.requests) for r in rows[:limit]]

    def _offender_rows(self, now: float, factor: float, min_requests: int,
                       since: float | None) -> list[ValueRate]:
        cb = self.client_baseline
        return [] if cb is None else self._clients.above(now, since, factor * cb, min_requests, cb)

    # -- dimensions and attribution -------------------------------------------------------

    @property
    def dimension_names(self) -> tuple[str, ...]:
        """The dimensions counted: ``"client"`` and those of ``dimensions``."""
        return (CLIENT, *self._dims.names)

    def dimension(self, name: str) -> Dimension:
        """One dimension (``"client"``, ``"path"``, ...): its heavy hitters and baselines
        (``rows(now, since, n)``, ``baseline``, ``baseline_of(value)``). KeyError for a
        dimension not counted."""
        return self._clients if name == CLIENT else self._dims.by_name[name]

    def attribute(
        self,
        now: float | None = None,
        since: float | None = None,
        *,
        client_factor: float = 2.5,
        min_requests: int = 10,
    ) -> Attribution:
        """Which dimension and values explain the traffic from ``since`` (default: when
        the current rise began, else the window) to ``now``; see
        :mod:`throttlekit.monitor.attribution`. ``client_factor`` and ``min_requests``
        choose the client dimension's culprits (:meth:`offenders`). Kept as
        :attr:`attribution`."""
        if now is None:
            now = self.clock()
        det = self._overall_det
        if since is None:
            since = det.started_at if det.started_at is not None else det.rising_since
        options = self._attribution_options
        clients = self._clients
        explanations = [explain_clients(
            clients, self._offender_rows(now, client_factor, min_requests, since), now, since,
            self.client_baseline or 0.0, options.get("coverage", COVERAGE),
        )]
        explanations += [explain(d, now, since, **options) for d in self._dims.by_name.values()]
        found = attribute(explanations, clients.start(now, since), now)
        self.attribution = found
        return found

    def quiet_rule(self, rule: str) -> None:
        """Count ``rule``'s events but watch no anomaly of its own (the shield's rule)."""
        self._quiet.add(rule)
        self._rules.pop(rule, None)
        counted = self._counted.get(rule)
        if counted is not None:
            counted.hit = counted.scope = None

    def on_snapshot(self, callback: SnapshotCallback) -> SnapshotCallback:
        """Add ``callback(now)``'s sections to every :meth:`snapshot` (the shield adds
        its containment); returns it."""
        if not callable(callback):
            raise ConfigError(f"a snapshot callback must be callable, got {callback!r}")
        self._snapshot_callbacks.append(callback)
        return callback

    def memory(self) -> dict[str, int]:
        """Values held per dimension (sketches and baselines) and entries of the feature
        caches (``"caches"``): each bounded, see :mod:`throttlekit.monitor.dimensions`."""
        held = {name: self.dimension(name).size() for name in self.dimension_names}
        held["caches"] = self._dims.features.cached()
        return held

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """A JSON-ready summary: counters, detectors, anomalies, top offenders, each
        dimension's heaviest values against their baselines, the latest attribution,
        and the sections of :meth:`on_snapshot` callbacks (the shield's containment)."""
        if now is None:
            now = self.clock()
        self.tick(now)

        def det(d: RateDetector) -> dict[str, Any]:
            return {
                "anomaly": d.active, "rate": round(d.last_rate, 3),
                "baseline": round(d.baseline, 3), "threshold": round(d.threshold, 3),
                "started_at": d.started_at, "anomalies": d.anomalies,
            }

        counters: dict[str, dict[str, int]] = {}
        for (rule, kind, dry), n in sorted(self.counts().items()):
            counters.setdefault(rule, {})[f"{kind}{' (dry run)' if dry else ''}"] = n
        data = {
            "time": now,
            "requests": self.requests,
            "anomaly": self._overall_det.active,
            "overall": det(self._overall_det),
            "rules": {name: det(s.detector) for name, s in sorted(self._rules.items())},
            "counters": counters,
            "client_baseline": self.client_baseline,
            "top": [[str(k), c] for k, c in self._overall.hitters.top(self.top_n, now)],
            "recent_anomalies": [
                {"kind": a.kind, "scope": a.scope, "at": a.at, "started_at": a.started_at,
                 "rate": round(a.rate, 3), "baseline": round(a.baseline, 3),
                 "top": [[str(k), c] for k, c in a.top],
                 "attribution": None if a.attribution is None else a.attribution.as_dict()}
                for a in self.recent
            ],
            "dimensions": {name: self._dimension_view(name, now)
                           for name in self.dimension_names},
            "attribution": None if self.attribution is None else self.attribution.as_dict(),
        }
        for callback in self._snapshot_callbacks:
            try:
                data.update(callback(now))
            except Exception:
                logger.exception("snapshot callback %r failed", callback)
        return data

    def _dimension_view(self, name: str, now: float) -> dict[str, Any]:
        d = self.dimension(name)
        return {
            "rate": round(d.rate(now), 3), "baseline": round(d.baseline, 3),
            "top": [[str(r.value), r.requests, round(r.rate, 3), round(r.baseline, 3)]
                    for r in d.rows(now, None, self.top_n)],
        }
