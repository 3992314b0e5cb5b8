"""Prometheus metrics for a :class:`~throttlekit.monitor.Monitor` (the ``prometheus`` extra).

Single process (or one registry per process)::

    from throttlekit.monitor.prometheus import register
    register(monitor, shield=shield)          # on prometheus_client's default REGISTRY
    # then expose it as usual, e.g. prometheus_client.make_wsgi_app()

:class:`MonitorCollector` reads the monitor when scraped, so requests pay nothing for
metrics. Metrics (all prefixed ``throttlekit_``):

=====================================  =======  ==============================================
``events_total{rule,outcome,dry_run}``  counter  rule outcomes: allowed, throttled, blocked,
                                                 banned, safelisted, tracked
``near_limit_total{rule,dry_run}``      counter  requests a throttle allowed while more than
                                                 80% of its capacity was used (Envoy's
                                                 ``near_limit``; see ``NearLimit``)
``requests_total``                      counter  requests seen by the monitor
``anomaly{scope}``                      gauge    1 during an anomaly (scope ``*``: all traffic,
                                                 or a rule name)
``anomalies_total{scope}``              counter  anomalies started
``request_rate{scope}``                 gauge    requests/s over the last full bucket
``baseline_rate{scope}``                gauge    the learnt baseline, requests/s
``top_offender_requests{rank,key}``     gauge    requests of the ``offenders`` heaviest clients
                                                 over the window (bounded; 0 turns it off)
``attribution{dimension}``              gauge    1 for the dimension explaining the anomaly on
                                                 all traffic (``*``: nothing narrower), else 0
``shield_active``                       gauge    1 while the shield is engaged
``shield_bans_total``                   counter  bans made by the shield
``shield_contained{dimension}``         gauge    values the shield throttles now
``shield_containments_total{dimension}`` counter values the shield throttled
=====================================  =======  ==============================================

The requests the shield's throttle refused are ``events_total{rule="shield"}``. The same
metrics, with the same names and labels, go to OpenTelemetry with
:mod:`throttlekit.monitor.otel`.

Several worker processes (gunicorn) with ``PROMETHEUS_MULTIPROC_DIR`` set: a custom
collector only sees its own process, so use :class:`MultiprocessExporter` instead. It
mirrors the monitor into ordinary ``prometheus_client`` metrics about once a second, on the
monitor's tick (no thread), which ``MultiProcessCollector`` then adds up across workers:
counters and rates are summed (``livesum``), the anomaly gauge is the maximum. Top
offenders are per process and are left out in that mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .._errors import ConfigError
from ._metrics import NearLimit, Source, attributed, contained, families, near_limit_of, scopes

if TYPE_CHECKING:
    from ._monitor import Monitor
    from .shield import Shield

__all__ = ["MonitorCollector", "MultiprocessExporter", "register", "render"]


def _client() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigError(
            "Prometheus metrics need prometheus_client: pip install 'throttlekit-web[prometheus]'"
        ) from None
    return prometheus_client


class MonitorCollector:
    """A ``prometheus_client`` collector reading a Monitor (and Shield) at scrape time.

    Args:
        monitor: the Monitor.
        shield: the Shield, if any.
        offenders: how many top clients to export (a bounded set of ``key`` labels,
            re-chosen at each scrape; 0 to export none).
        namespace: metric name prefix (default ``throttlekit``).
        near_limit: the :class:`~throttlekit.monitor.NearLimit` counter to export
            (default: the monitor's, subscribed to its limiter's ``"allowed"`` events).
    """

    def __init__(
        self,
        monitor: Monitor,
        shield: Shield | None = None,
        *,
        offenders: int = 10,
        namespace: str = "throttlekit",
        near_limit: NearLimit | None = None,
    ) -> None:
        _client()
        self.source = Source(monitor, shield, offenders, near_limit)
        self.monitor = monitor
        self.shield = shield
        self.offenders = offenders
        self.ns = namespace

    def describe(self) -> list[Any]:
        return []  # no fixed description: registering never calls collect() early

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        self.monitor.tick()
        for family in families(self.source):
            kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
            metric = kind(f"{self.ns}_{family.name}", family.help, labels=list(family.labels))
            for values, value in family.read():
                metric.add_metric(list(values), value)
            yield metric


def register(
    monitor: Monitor,
    shield: Shield | None = None,
    *,
    registry: Any = None,
    offenders: int = 10,
    namespace: str = "throttlekit",
    near_limit: NearLimit | None = None,
) -> MonitorCollector:
    """Register a :class:`MonitorCollector` on ``registry`` (default: prometheus_client's
    global ``REGISTRY``) and return it."""
    client = _client()
    collector = MonitorCollector(monitor, shield, offenders=offenders, namespace=namespace,
                                 near_limit=near_limit)
    (client.REGISTRY if registry is None else registry).register(collector)
    return collector


def render(monitor: Monitor, shield: Shield | None = None, *, offenders: int = 10) -> bytes:
    """The monitor's metrics in the Prometheus text format (a registry of their own)."""
    client = _client()
    registry = client.CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(monitor, shield, offenders=offenders))
    data: bytes = client.generate_latest(registry)
    return data


class MultiprocessExporter:
    """Mirror a Monitor into ``prometheus_client`` metrics for multiprocess mode.

    Build it in each worker after the fork (for gunicorn: in ``post_fork``), with
    ``PROMETHEUS_MULTIPROC_DIR`` set before ``prometheus_client`` is first imported; serve
    the metrics with ``prometheus_client.multiprocess.MultiProcessCollector``. Values are
    synced on the monitor's tick (about once a second while requests flow) and on
    :meth:`sync`.
    """

    def __init__(
        self,
        monitor: Monitor,
        shield: Shield | None = None,
        *,
        registry: Any = None,
        namespace: str = "throttlekit",
    ) -> None:
        client = _client()
        reg = client.REGISTRY if registry is None else registry
        ns = namespace
        self.monitor = monitor
        self.shield = shield
        self._events = client.Counter(
            f"{ns}_events", "Rule outcomes by rule", ["rule", "outcome", "dry_run"], registry=reg
        )
        self._requests = client.Counter(
            f"{ns}_requests", "Requests seen by the monitor", registry=reg
        )
        self._anomaly = client.Gauge(
            f"{ns}_anomaly", "1 during an anomaly", ["scope"], registry=reg,
            multiprocess_mode="max",
        )
        self._anomalies = client.Counter(
            f"{ns}_anomalies", "Anomalies started", ["scope"], registry=reg
        )
        self._rate = client.Gauge(
            f"{ns}_request_rate", "Requests per second, last full bucket", ["scope"],
            registry=reg, multiprocess_mode="livesum",
        )
        self._baseline = client.Gauge(
            f"{ns}_baseline_rate", "Baseline requests per second", ["scope"], registry=reg,
            multiprocess_mode="livesum",
        )
        self._bans = client.Counter(
            f"{ns}_shield_bans", "Bans made by the shield", registry=reg
        )
        self._near = client.Counter(
            f"{ns}_near_limit", "Requests allowed while above 80% of a limit's capacity",
            ["rule", "dry_run"], registry=reg,
        )
        self.near_limit = near_limit_of(monitor)
        self._attribution = client.Gauge(
            f"{ns}_attribution", "1 for the dimension explaining the anomaly", ["dimension"],
            registry=reg, multiprocess_mode="max",
        )
        self.contained = client.Gauge(
            f"{ns}_shield_contained", "Values the shield throttles now", ["dimension"],
            registry=reg, multiprocess_mode="max",
        )
        self._containments = client.Counter(
            f"{ns}_shield_containments", "Values the shield throttled", ["dimension"],
            registry=reg,
        )
        self._seen: dict[Any, int] = {}
        monitor.on_tick(lambda now: self.sync())

    def sync(self) -> None:
        """Push what changed since the last sync."""
        m = self.monitor
        seen = self._seen
        for ckey, n in m.counts().items():
            delta = n - seen.get(ckey, 0)
            if delta:
                rule, kind, dry = ckey
                self._events.labels(rule, kind, "true" if dry else "false").inc(delta)
                seen[ckey] = n
        for (rule, dry), n in list(self.near_limit.counts.items()):
            nkey = ("near_limit", rule, dry)
            delta = n - seen.get(nkey, 0)
            if delta:
                self._near.labels(rule, "true" if dry else "false").inc(delta)
                seen[nkey] = n
        for key, value, counter in (
            ("requests", m.requests, self._requests),
            ("bans", self.shield.bans_total if self.shield else 0, self._bans),
        ):
            delta = value - seen.get(key, 0)
            if delta:
                counter.inc(delta)
                seen[key] = value
        for scope, d in scopes(m):
            self._anomaly.labels(scope).set(1.0 if d.active else 0.0)
            self._rate.labels(scope).set(d.last_rate)
            self._baseline.labels(scope).set(d.baseline)
            akey = ("anomalies", scope)
            delta = d.anomalies - seen.get(akey, 0)
            if delta:
                self._anomalies.labels(scope).inc(delta)
                seen[akey] = d.anomalies
        for dimension, on in attributed(m).items():
            self._attribution.labels(dimension).set(on)
        if self.shield is not None:
            self._sync_shield(self.shield)

    def _sync_shield(self, shield: Shield) -> None:
        seen = self._seen
        for dimension, n in contained(shield, self.monitor).items():
            self.contained.labels(dimension).set(n)
            ckey = ("containments", dimension)
            delta = shield.containments_total.get(dimension, 0) - seen.get(ckey, 0)
            if delta:
                self._containments.labels(dimension).inc(delta)
                seen[ckey] = shield.containments_total[dimension]
