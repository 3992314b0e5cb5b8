"""Prometheus metrics, parsed back with prometheus_client's own parser."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import throttlekit  # noqa: E402
from throttlekit import Limiter, WSGIMiddleware  # noqa: E402
from throttlekit.monitor import Monitor, Shield  # noqa: E402
from throttlekit.monitor.prometheus import MonitorCollector, register, render  # noqa: E402
from throttlekit.testing import FakeClock  # noqa: E402


def _app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _call(mw, ip: str, path: str = "/") -> str:
    status = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": ip,
               "wsgi.input": None, "SERVER_NAME": "t", "SERVER_PORT": "80"}
    b"".join(mw(environ, lambda s, h, e=None: status.append(s)))
    return status[0]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def site():
    clock = FakeClock()
    limiter = Limiter(clock=clock)
    limiter.throttle("per-ip", "3/minute")
    limiter.throttle("dark", "1/minute", dry_run=True)
    monitor = Monitor(limiter)
    shield = Shield(limiter, monitor)
    return clock, limiter, monitor, shield, WSGIMiddleware(_app, limiter)


def test_counters_per_rule_and_outcome(site):
    """events_total per rule/outcome/dry_run and requests_total match the traffic."""
    _clock, _limiter, monitor, shield, mw = site
    statuses = [_call(mw, "10.0.0.1") for _ in range(5)] + [_call(mw, "10.0.0.2")]
    assert [s[:3] for s in statuses] == ["200", "200", "200", "429", "429", "200"]
    s = _samples(render(monitor, shield).decode())
    assert s[("throttlekit_events_total",
              (("dry_run", "false"), ("outcome", "allowed"), ("rule", "per-ip")))] == 4
    assert s[("throttlekit_events_total",
              (("dry_run", "false"), ("outcome", "throttled"), ("rule", "per-ip")))] == 2
    assert s[("throttlekit_requests_total", ())] == 6
    assert s[("throttlekit_anomaly", (("scope", "*"),))] == 0
    assert s[("throttlekit_shield_active", ())] == 0
    assert s[("throttlekit_shield_bans_total", ())] == 0
    dark = {k: v for k, v in s.items() if ("rule", "dark") in k[1]}
    assert dark and all(("dry_run", "true") in k[1] for k in dark)


def test_top_offenders_are_bounded(site):
    """top_offender_requests has at most `offenders` series, heaviest first."""
    _clock, _limiter, monitor, _shield, mw = site
    for i in range(30):
        for _ in range(1 + (i == 7) * 5):
            _call(mw, f"10.0.1.{i}")
    s = _samples(render(monitor, offenders=3).decode())
    top = {dict(k[1])["rank"]: (dict(k[1])["key"], v) for k, v in s.items()
           if k[0] == "throttlekit_top_offender_requests"}
    assert len(top) == 3
    assert top["1"] == ("10.0.1.7", 6)
    s = _samples(render(monitor, offenders=0).decode())
    assert not any(k[0] == "throttlekit_top_offender_requests" for k in s)


def test_anomaly_gauge_and_rates_follow_a_flood(site):
    """During a flood the anomaly gauge is 1, and the request rate is above the baseline."""
    clock, _limiter, monitor, shield, mw = site
    limiter_ips = [f"10.0.2.{i}" for i in range(20)]
    for _ in range(40):
        for ip in limiter_ips:
            _call(mw, ip)
            clock.advance(1 / 20)
    for _ in range(5 * 400):
        _call(mw, "203.0.113.5")
        clock.advance(1 / 400)
    s = _samples(render(monitor, shield).decode())
    assert s[("throttlekit_anomaly", (("scope", "*"),))] == 1
    assert s[("throttlekit_anomalies_total", (("scope", "*"),))] == 1
    assert s[("throttlekit_request_rate", (("scope", "*"),))] > \
        3 * s[("throttlekit_baseline_rate", (("scope", "*"),))]
    assert s[("throttlekit_shield_active", ())] == 1
    assert s[("throttlekit_shield_bans_total", ())] == 1


def test_register_on_a_registry(site):
    """register() adds the collector to the given registry; generate_latest includes it."""
    _clock, _limiter, monitor, _shield, mw = site
    registry = prometheus_client.CollectorRegistry()
    collector = register(monitor, registry=registry)
    assert isinstance(collector, MonitorCollector)
    _call(mw, "10.0.0.9")
    text = prometheus_client.generate_latest(registry).decode()
    assert _samples(text)[("throttlekit_requests_total", ())] == 1


WORKER = textwrap.dedent("""
    import sys
    from throttlekit import Limiter, WSGIMiddleware
    from throttlekit.monitor import Monitor
    from throttlekit.monitor.prometheus import MultiprocessExporter
    from throttlekit.testing import FakeClock

    def app(environ, start_response):
        start_response("200 OK", [])
        return [b"ok"]

    clock = FakeClock()
    limiter = Limiter(clock=clock)
    limiter.throttle("per-ip", "1000/minute")
    monitor = Monitor(limiter)
    exporter = MultiprocessExporter(monitor)
    mw = WSGIMiddleware(app, limiter)
    for i in range(int(sys.argv[1])):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "10.0.0.1"}
        b"".join(mw(environ, lambda s, h, e=None: None))
        clock.advance(0.1)
    exporter.sync()
""")


def test_multiprocess_mode_adds_up_workers(tmp_path):
    """Two worker processes in multiprocess mode: the collected counters are their sum."""
    env = dict(os.environ)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    src = str(Path(throttlekit.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    for n in ("7", "5"):
        subprocess.run([sys.executable, "-c", WORKER, n], env=env, check=True, timeout=60)
    collect = textwrap.dedent("""
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        print(generate_latest(registry).decode())
    """)
    out = subprocess.run([sys.executable, "-c", collect], env=env, check=True, timeout=60,
                         capture_output=True, text=True).stdout
    s = _samples(out)
    assert s[("throttlekit_requests_total", ())] == 12
    assert s[("throttlekit_events_total",
              (("dry_run", "false"), ("outcome", "allowed"), ("rule", "per-ip")))] == 12


@pytest.mark.slow
def test_attribution_and_containment_metrics_follow_a_surge():
    """A flood of one user agent: the attribution gauge names user_agent, the shield's
    containment gauge and counter count the value, its refusals are the shield rule's
    events; the multiprocess exporter mirrors the same."""
    from test_attribution import Site
    from test_attribution_shield import agent_flood
    from throttlekit.monitor.prometheus import MultiprocessExporter

    site = Site(shield={})
    registry = prometheus_client.CollectorRegistry()
    exporter = MultiprocessExporter(site.monitor, site.guard, registry=registry)
    base, bots = agent_flood(site)
    site.run([base, bots], 0.0, 70.0)
    exporter.sync()
    for text in (render(site.monitor, site.guard).decode(),
                 prometheus_client.generate_latest(registry).decode()):
        s = _samples(text)
        assert s[("throttlekit_attribution", (("dimension", "user_agent"),))] == 1
        assert s[("throttlekit_attribution", (("dimension", "*"),))] == 0
        assert s[("throttlekit_attribution", (("dimension", "client"),))] == 0
        assert s[("throttlekit_shield_contained", (("dimension", "user_agent"),))] == 1
        assert s[("throttlekit_shield_contained", (("dimension", "net16"),))] == 0
        assert s[("throttlekit_shield_containments_total",
                  (("dimension", "user_agent"),))] == 1
    s = _samples(render(site.monitor, site.guard).decode())
    assert s[("throttlekit_events_total",
              (("dry_run", "false"), ("outcome", "throttled"), ("rule", "shield")))] > 1000
