"""The OpenTelemetry exporter against a tired operator's options: a namespace that cannot
prefix an instrument name is a ConfigError naming it (the SDK raises a bare Exception, or
with None exports ``None_events_total``)."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk.metrics")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from throttlekit import ConfigError, Limiter
from throttlekit.monitor import Monitor
from throttlekit.monitor.otel import instrument


@pytest.mark.parametrize("namespace", ["1app", "my app", "", None, "café", 7],
                         ids=["digit-first", "space", "empty", "none", "non-ascii", "int"])
def test_a_bad_namespace_is_a_config_error(namespace):
    """Refused at once, naming the value, before any instrument is made."""
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    with pytest.raises(ConfigError, match="namespace"):
        instrument(Monitor(Limiter()), meter_provider=provider, namespace=namespace)


def test_a_good_namespace_prefixes_every_metric():
    """``namespace="shop.api"`` names ``shop.api_events_total`` and the rest."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    exporter = instrument(Monitor(Limiter()), meter_provider=provider, namespace="shop.api")
    assert "shop.api_events_total" in exporter.instruments
    assert all(name.startswith("shop.api_") for name in exporter.instruments)
