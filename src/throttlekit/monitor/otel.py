"""OpenTelemetry metrics for a :class:`~throttlekit.monitor.Monitor` (the ``otel`` extra).

::

    from throttlekit.monitor.otel import instrument
    instrument(monitor, shield=shield)     # on the global MeterProvider
    # or instrument(monitor, meter_provider=provider) with your own SDK MeterProvider

Only ``opentelemetry-api`` is imported; the SDK (or any other implementation of the API)
and its exporters (OTLP, Prometheus, ...) are the application's choice. Every metric is an
*asynchronous* instrument (observable counter or gauge) whose callback reads the monitor
when a metric reader collects, so requests pay nothing for them, exactly as with
:class:`~throttlekit.monitor.prometheus.MonitorCollector`.

The names, labels (OpenTelemetry attributes) and values are those of the Prometheus
exposition (``throttlekit_events_total{rule,outcome,dry_run}``,
``throttlekit_near_limit_total{rule,dry_run}``, ``throttlekit_anomaly{scope}``, ...; see
:mod:`throttlekit.monitor.prometheus`), so dashboards and alerts carry over. Counters are
cumulative, as the monitor counts them; an exporter configured for delta temporality gets
the differences from the SDK.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .._errors import ConfigError
from .._version import __version__
from ._metrics import Family, NearLimit, Source, families

if TYPE_CHECKING:
    from ._monitor import Monitor
    from .shield import Shield

__all__ = ["OTelExporter", "instrument"]


#: what may start an instrument name (OpenTelemetry's rule: ASCII, a letter first, at most
#: 255 characters; the longest suffix added is under 40)
_NAMESPACE = re.compile(r"[A-Za-z][-_./A-Za-z0-9]{0,200}")


def _metrics_api() -> Any:
    try:
        from opentelemetry import metrics
    except ImportError:
        raise ConfigError(
            "OpenTelemetry metrics need opentelemetry-api: pip install 'throttlekit-web[otel]'"
        ) from None
    return metrics


class OTelExporter:
    """The observable instruments publishing one Monitor (and Shield).

    Args:
        monitor: the Monitor.
        shield: the Shield, if any.
        meter_provider: an OpenTelemetry ``MeterProvider`` (default: the global one, as
            set by ``opentelemetry.metrics.set_meter_provider``).
        offenders: how many top clients to export as ``top_offender_requests{rank,key}``
            (0: none).
        namespace: metric name prefix (default ``throttlekit``).
        near_limit: the :class:`~throttlekit.monitor.NearLimit` counter to export
            (default: the monitor's, subscribed to its limiter's ``"allowed"`` events).

    Attributes:
        instruments: metric name -> the observable instrument.
    """

    def __init__(
        self,
        monitor: Monitor,
        shield: Shield | None = None,
        *,
        meter_provider: Any = None,
        offenders: int = 10,
        namespace: str = "throttlekit",
        near_limit: NearLimit | None = None,
    ) -> None:
        if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
            raise ConfigError(f"namespace must be ASCII letters, digits and - _ . /, a letter "
                              f"first (an OpenTelemetry instrument name), got {namespace!r}")
        metrics = _metrics_api()
        self.source = Source(monitor, shield, offenders, near_limit)
        self.meter = metrics.get_meter("throttlekit", __version__, meter_provider=meter_provider)
        self.instruments: dict[str, Any] = {}
        for family in families(self.source):
            if family.kind == "counter":
                name = f"{namespace}_{family.name}_total"
                make = self.meter.create_observable_counter
            else:
                name = f"{namespace}_{family.name}"
                make = self.meter.create_observable_gauge
            self.instruments[name] = make(
                name, callbacks=[self._callback(metrics, family)], description=family.help
            )

    def _callback(self, metrics: Any, family: Family) -> Callable[[Any], Iterable[Any]]:
        observation = metrics.Observation
        labels = family.labels
        tick = self.source.monitor.tick

        def observe(options: Any) -> Iterable[Any]:
            tick()  # cheap when nothing is due; each instrument may be collected alone
            return [observation(value, dict(zip(labels, values, strict=True)))
                    for values, value in family.read()]

        return observe


def instrument(
    monitor: Monitor,
    shield: Shield | None = None,
    *,
    meter_provider: Any = None,
    offenders: int = 10,
    namespace: str = "throttlekit",
    near_limit: NearLimit | None = None,
) -> OTelExporter:
    """Publish ``monitor`` (and ``shield``) as OpenTelemetry metrics; see
    :class:`OTelExporter`."""
    return OTelExporter(monitor, shield, meter_provider=meter_provider, offenders=offenders,
                        namespace=namespace, near_limit=near_limit)
