"""The metrics every exporter publishes (Prometheus, OpenTelemetry), read from a Monitor,
a Shield and a :class:`NearLimit` counter at collection time: one list of names, kinds,
help texts, labels and samples, so the exporters cannot drift apart.

Requests pay nothing for metrics here: the Monitor counts events anyway, and the samples
are read only when a scraper or a metric reader asks. The one per-request addition is
:class:`NearLimit`, an event listener of ``"allowed"`` events (a comparison per event,
outside the engine's decision).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from .._errors import ConfigError

if TYPE_CHECKING:
    from .._events import Event
    from ._monitor import Monitor
    from .shield import Shield

__all__ = ["Family", "NearLimit", "Source", "attributed", "contained", "families", "near_limit_of",
           "scopes"]

#: one sample: label values (in the family's label order) and the value
Sample = tuple[tuple[str, ...], float]


class NearLimit:
    """Counts requests a throttle allowed while more than 80% of its capacity was used,
    per ``(rule, dry_run)``: Envoy's rate-limit service ``near_limit`` statistic.

    "Used" is the deciding rate's ``limit - remaining`` after this request was charged, and
    the threshold is Envoy's, ``floor(limit * 0.8)`` (computed exactly in integers): with
    ``10/minute`` the 9th and 10th requests of a window are near the limit, with
    ``5/minute`` the 5th. With several rates the Decision is the one with the least
    remaining. Subscribe it to a limiter's ``"allowed"`` events (:func:`near_limit_of`
    does so once per monitor); it is cheap enough to run on every allowed request.
    """

    __slots__ = ("__weakref__", "counts")

    def __init__(self) -> None:
        #: ``(rule, dry_run) -> requests allowed near the limit``
        self.counts: dict[tuple[str, bool], int] = {}

    def __call__(self, event: Event) -> None:
        decision = event.decision
        if decision is None or not decision.allowed:
            return
        limit = decision.limit
        if limit - decision.remaining > limit * 4 // 5:
            ck = (event.rule, event.dry_run)
            counts = self.counts
            counts[ck] = counts.get(ck, 0) + 1


_near: weakref.WeakKeyDictionary[Any, NearLimit] = weakref.WeakKeyDictionary()


def near_limit_of(monitor: Monitor) -> NearLimit:
    """The NearLimit counter of ``monitor``'s limiter, subscribed to its ``"allowed"``
    events the first time an exporter asks (so two exporters count once). A monitor with
    no limiter (fed events by hand) gets a counter nobody feeds: call it with the events."""
    near = _near.get(monitor)
    if near is None:
        near = _near[monitor] = NearLimit()
        if monitor.limiter is not None:
            monitor.limiter.on("allowed", near)
    return near


class Source:
    """What the metrics are read from."""

    __slots__ = ("monitor", "near", "offenders", "shield")

    def __init__(self, monitor: Monitor, shield: Shield | None, offenders: int,
                 near: NearLimit | None) -> None:
        if isinstance(offenders, bool) or not isinstance(offenders, int) or offenders < 0:
            raise ConfigError(f"offenders must be an integer >= 0, got {offenders!r}")
        self.monitor = monitor
        self.shield = shield
        self.offenders = offenders
        self.near = near_limit_of(monitor) if near is None else near


class Family(NamedTuple):
    """One metric: ``name`` without the namespace and without Prometheus' ``_total``
    suffix of counters (``"events"`` is ``throttlekit_events_total``)."""

    name: str
    kind: str  # "counter" or "gauge"
    help: str
    labels: tuple[str, ...]
    read: Callable[[], Iterable[Sample]]


def _flag(value: bool) -> str:
    return "true" if value else "false"


def scopes(monitor: Monitor) -> list[tuple[str, Any]]:
    return [("*", monitor.detector), *sorted(monitor.rule_detectors().items())]


def attributed(monitor: Monitor) -> dict[str, float]:
    """Dimension (and ``*``) -> 1 for the one explaining the anomaly on all traffic."""
    found = monitor.attribution if monitor.anomaly else None
    return {d: 1.0 if found is not None and found.dimension == d else 0.0
            for d in ("*", *monitor.dimension_names)}


def contained(shield: Shield, monitor: Monitor) -> dict[str, int]:
    """Dimension -> values the shield throttles now."""
    counts = dict.fromkeys(monitor.dimension_names[1:], 0)
    for c in shield.containment():
        counts[c.dimension] = counts.get(c.dimension, 0) + 1
    return counts


def families(src: Source) -> list[Family]:
    """Every metric of ``src``, in the order the Prometheus exposition lists them. Each
    family reads its samples when called; call ``monitor.tick()`` first, so that lazy
    transitions (an anomaly's end) are up to date."""
    m = src.monitor

    def per_scope(attr: Callable[[Any], float]) -> Callable[[], Iterable[Sample]]:
        return lambda: [((scope,), attr(d)) for scope, d in scopes(m)]

    out = [
        Family("events", "counter", "Rule outcomes by rule", ("rule", "outcome", "dry_run"),
               (lambda: [((rule, kind, _flag(dry)), n)
                               for (rule, kind, dry), n in sorted(m.counts().items())])),
        Family("near_limit", "counter",
               "Requests allowed while above 80% of a limit's capacity", ("rule", "dry_run"),
               lambda: [((rule, _flag(dry)), n)
                        for (rule, dry), n in sorted(src.near.counts.items())]),
        Family("requests", "counter", "Requests seen by the monitor", (),
               (lambda: [((), m.requests)])),
        Family("anomaly", "gauge", "1 during an anomaly", ("scope",),
               per_scope(lambda d: 1.0 if d.active else 0.0)),
        Family("anomalies", "counter", "Anomalies started", ("scope",),
               per_scope(lambda d: d.anomalies)),
        Family("request_rate", "gauge", "Requests per second, last full bucket", ("scope",),
               per_scope(lambda d: d.last_rate)),
        Family("baseline_rate", "gauge", "Baseline requests per second", ("scope",),
               per_scope(lambda d: d.baseline)),
        Family("attribution", "gauge", "1 for the dimension explaining the anomaly",
               ("dimension",),
               (lambda: [((dim,), v) for dim, v in attributed(m).items()])),
    ]
    if src.offenders:
        out.append(Family(
            "top_offender_requests", "gauge",
            f"Requests of the heaviest clients over the last {m.window:g}s", ("rank", "key"),
            (lambda: [((str(rank), str(key)), count)
                            for rank, (key, count) in enumerate(m.top(src.offenders), 1)])))
    shield = src.shield
    if shield is not None:
        out += [
            Family("shield_active", "gauge", "1 while the shield is engaged", (),
                   (lambda: [((), 1.0 if shield.active else 0.0)])),
            Family("shield_bans", "counter", "Bans made by the shield", (),
                   (lambda: [((), shield.bans_total)])),
            Family("shield_contained", "gauge", "Values the shield throttles now",
                   ("dimension",),
                   (lambda: [((dim,), n) for dim, n in contained(shield, m).items()])),
            Family("shield_containments", "counter", "Values the shield throttled",
                   ("dimension",),
                   (lambda: [((dim,), shield.containments_total.get(dim, 0))
                                   for dim in contained(shield, m)])),
        ]
    return out
