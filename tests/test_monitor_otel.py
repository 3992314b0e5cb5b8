"""OpenTelemetry metrics, read back with the SDK's InMemoryMetricReader; and the
near_limit count (Envoy's), in both OpenTelemetry and Prometheus."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("opentelemetry.sdk.metrics")
prometheus_client = pytest.importorskip("prometheus_client")
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from profiles import examples  # noqa: E402
from throttlekit import Limiter, WSGIMiddleware  # noqa: E402
from throttlekit.monitor import Monitor, NearLimit, Shield  # noqa: E402
from throttlekit.monitor.otel import instrument  # noqa: E402
from throttlekit.monitor.prometheus import render  # noqa: E402
from throttlekit.testing import FakeClock  # noqa: E402

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _call(mw, ip: str, path: str = "/") -> str:
    status = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": ip,
               "wsgi.input": None, "SERVER_NAME": "t", "SERVER_PORT": "80"}
    b"".join(mw(environ, lambda s, h, e=None: status.append(s)))
    return status[0]


def _otel(reader: InMemoryMetricReader) -> Samples:
    out: Samples = {}
    data = reader.get_metrics_data()
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            assert sm.scope.name == "throttlekit"
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    labels = tuple(sorted((k, str(v)) for k, v in point.attributes.items()))
                    out[(metric.name, labels)] = point.value
    return out


def _prometheus(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def site():
    clock = FakeClock()
    limiter = Limiter(clock=clock)
    limiter.throttle("per-ip", "10/minute")
    limiter.throttle("dark", "5/minute", dry_run=True)
    monitor = Monitor(limiter)
    shield = Shield(limiter, monitor)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    exporter = instrument(monitor, shield, meter_provider=provider, offenders=3)
    yield clock, monitor, shield, reader, exporter, WSGIMiddleware(_app, limiter)
    provider.shutdown()


def test_events_and_near_limit_read_back(site):
    """events_total per rule/outcome/dry_run, requests_total and near_limit_total as the
    traffic made them: 12 requests on 10/minute are 10 allowed (the 9th and 10th near the
    limit) and 2 throttled; the dry-run 5/minute rule is near its limit on its 5th."""
    _clock, _monitor, _shield, reader, _exporter, mw = site
    statuses = [_call(mw, "10.0.0.1") for _ in range(12)]
    assert [s[:3] for s in statuses] == ["200"] * 10 + ["429"] * 2
    s = _otel(reader)
    events = "throttlekit_events_total"
    assert s[(events, (("dry_run", "false"), ("outcome", "allowed"), ("rule", "per-ip")))] == 10
    assert s[(events, (("dry_run", "false"), ("outcome", "throttled"), ("rule", "per-ip")))] == 2
    assert s[("throttlekit_requests_total", ())] == 12
    near = "throttlekit_near_limit_total"
    assert s[(near, (("dry_run", "false"), ("rule", "per-ip")))] == 2
    assert s[(near, (("dry_run", "true"), ("rule", "dark")))] == 1
    assert s[("throttlekit_anomaly", (("scope", "*"),))] == 0
    assert s[("throttlekit_shield_active", ())] == 0


def test_same_names_labels_and_values_as_prometheus(site):
    """Every series OpenTelemetry reports is the Prometheus exposition's, same value."""
    clock, monitor, shield, reader, _exporter, mw = site
    for i in range(40):
        _call(mw, f"10.0.1.{i % 7}", path=f"/p{i % 3}")
        clock.advance(0.5)
    otel = _otel(reader)
    prom = _prometheus(render(monitor, shield, offenders=3).decode())
    assert set(otel) == set(prom)
    assert otel == prom
    names = {name for name, _ in otel}
    assert {"throttlekit_near_limit_total", "throttlekit_top_offender_requests",
            "throttlekit_baseline_rate", "throttlekit_shield_containments_total"} <= names


def test_counters_are_cumulative_across_collections(site):
    """A second collection reports the running totals, not what happened since."""
    _clock, _monitor, _shield, reader, _exporter, mw = site
    for _ in range(3):
        _call(mw, "10.0.0.9")
    assert _otel(reader)[("throttlekit_requests_total", ())] == 3
    for _ in range(4):
        _call(mw, "10.0.0.9")
    assert _otel(reader)[("throttlekit_requests_total", ())] == 7


def test_prometheus_and_otel_share_one_near_limit_counter(site):
    """Two exporters on one monitor count each near-limit request once."""
    _clock, monitor, _shield, reader, exporter, mw = site
    for _ in range(10):
        _call(mw, "10.0.0.3")
    prom = _prometheus(render(monitor).decode())
    key = ("throttlekit_near_limit_total", (("dry_run", "false"), ("rule", "per-ip")))
    assert prom[key] == 2
    assert _otel(reader)[key] == 2
    assert exporter.source.near.counts[("per-ip", False)] == 2


def test_bad_offenders_is_a_config_error():
    """offenders must be a non-negative integer."""
    from throttlekit import ConfigError

    monitor = Monitor(Limiter())
    with pytest.raises(ConfigError, match="-1"):
        instrument(monitor, meter_provider=MeterProvider(), offenders=-1)


@settings(max_examples=examples(40), deadline=None)
@given(limit=st.integers(1, 40), requests=st.integers(0, 60))
def test_near_limit_is_envoys_threshold(limit, requests):
    """Within one window, the allowed requests beyond floor(0.8 * limit) are near the
    limit: max(0, min(n, limit) - floor(0.8 * limit)), counted per rule."""
    clock = FakeClock()
    limiter = Limiter(clock=clock)
    limiter.throttle("r", f"{limit}/hour")
    near = NearLimit()
    limiter.on("allowed", near)
    mw = WSGIMiddleware(_app, limiter)
    for _ in range(requests):
        _call(mw, "10.0.0.1")
    expected = max(0, min(requests, limit) - int(limit * 0.8 + 1e-9))
    assert near.counts.get(("r", False), 0) == expected


def test_multiprocess_exporter_mirrors_near_limit():
    """The multiprocess exporter's near_limit_total follows the counter on each sync."""
    from throttlekit.monitor.prometheus import MultiprocessExporter

    limiter = Limiter(clock=FakeClock())
    limiter.throttle("per-ip", "5/minute")
    monitor = Monitor(limiter, publish=False)
    registry = prometheus_client.CollectorRegistry()
    exporter = MultiprocessExporter(monitor, registry=registry)
    mw = WSGIMiddleware(_app, limiter)
    key = ("throttlekit_near_limit_total", (("dry_run", "false"), ("rule", "per-ip")))
    for n, expected in ((4, None), (5, 1)):
        while monitor.requests < n:
            _call(mw, "10.0.0.1")
        exporter.sync()
        got = _prometheus(prometheus_client.generate_latest(registry).decode()).get(key)
        assert got == expected
    exporter.sync()
    assert _prometheus(prometheus_client.generate_latest(registry).decode())[key] == 1
