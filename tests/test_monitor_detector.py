"""The anomaly detector on synthetic traffic, on simulated time (seeded RNG, no sleeps)."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest

from throttlekit import ConfigError
from throttlekit.monitor import Monitor, RateDetector

T0 = 1_700_000_000.0


def _poisson(rng: random.Random, lam: float) -> int:
    """A Poisson sample (normal approximation above 50)."""
    if lam > 50:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _feed(det: RateDetector, t: float, count: int) -> None:
    """`count` requests spread evenly over the second starting at `t`."""
    for i in range(count):
        det.hit(t + i / count)


def _recorder() -> tuple[list[tuple[str, float]], RateDetector]:
    events: list[tuple[str, float]] = []
    det = RateDetector(on_transition=lambda kind, now, d: events.append((kind, now)))
    return events, det


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_10x_flood_is_detected_within_seconds_and_its_end_too(seed):
    """Steady ~200 req/s, then 10x for 120 s: started within 3 s, ended after the flood."""
    rng = random.Random(seed)
    events, det = _recorder()
    for s in range(300):
        rate = 200 * (11 if 120 <= s < 240 else 1)
        _feed(det, T0 + s, _poisson(rng, rate))
    det.tick(T0 + 300)
    kinds = [k for k, _ in events]
    assert kinds == ["anomaly_started", "anomaly_ended"]
    assert 0 < events[0][1] - (T0 + 120) <= 3.0
    assert 240 < events[1][1] - T0 <= 240 + det.cooldown + 2
    assert det.anomalies == 1
    assert 150 < det.baseline < 300  # the flood did not become the baseline


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_a_noisy_diurnal_pattern_raises_nothing(seed):
    """A day of traffic between 20 and 400 req/s, with minute-level swings and Poisson
    noise, never raises an anomaly."""
    rng = random.Random(seed)
    events, det = _recorder()
    swing = 1.0
    for s in range(24 * 3600):
        if s % 60 == 0:
            swing = rng.uniform(0.8, 1.25)  # minute-to-minute variation
        daily = 210 - 190 * math.cos(2 * math.pi * s / 86400)  # 20 at night, 400 at noon
        det.hit(T0 + s + rng.random(), _poisson(rng, daily * swing))
    assert events == []
    assert det.anomalies == 0


def test_a_short_spike_is_not_an_anomaly():
    """A one-second spike of 10x does not last `sustain` seconds: nothing is raised."""
    events, det = _recorder()
    for s in range(100):
        _feed(det, T0 + s, 2000 if s == 50 else 200)
    assert events == []


def test_nothing_is_raised_before_warmup():
    """A flood in the first seconds (no baseline yet) raises nothing."""
    events, det = _recorder()
    for s in range(20):
        _feed(det, T0 + s, 20 if s < 5 else 2000)
    assert events == []


def test_an_idle_gap_ends_the_anomaly_lazily():
    """When traffic stops, the anomaly ends on the next call after the cooldown."""
    events, det = _recorder()
    for s in range(60):
        _feed(det, T0 + s, 2000 if s >= 40 else 100)
    assert det.active
    det.tick(T0 + 65)
    assert det.active  # not yet: calm for 5 s only
    det.tick(T0 + 75)
    assert not det.active
    assert [k for k, _ in events] == ["anomaly_started", "anomaly_ended"]


def test_min_rate_keeps_quiet_traffic_quiet():
    """1 req/s jumping to 4 req/s stays under min_rate (5 req/s): no anomaly."""
    events, det = _recorder()
    for s in range(200):
        _feed(det, T0 + s, 4 if s >= 100 else 1)
    assert events == []


@pytest.mark.parametrize(
    "kwargs",
    [{"factor": 1}, {"factor": "3"}, {"sustain": -1}, {"cooldown": math.nan},
     {"end_factor": 5, "factor": 3}, {"halflife": 0}, {"bucket": 0}],
)
def test_bad_settings_are_config_errors(kwargs):
    """Out-of-range detector settings raise ConfigError at construction."""
    with pytest.raises(ConfigError):
        RateDetector(**kwargs)


def test_monitor_passes_its_detector_settings_on():
    """Monitor's detector settings reach every detector, RateDetector's defaults fill the
    rest, and a bad one is the detector's ConfigError (halflife=0 divided by zero before)."""
    monitor = Monitor(factor=4, halflife=600, bucket=2)
    monitor(SimpleNamespace(at=T0, rule="r", kind="allowed", dry_run=False, key="k",
                            request=SimpleNamespace(client_key="c")))
    for det in (monitor.detector, monitor.rule_detectors()["r"]):
        assert (det.factor, det.halflife, det.bucket) == (4.0, 600.0, 2.0)
        assert (det.sustain, det.min_rate) == (RateDetector().sustain, RateDetector().min_rate)
    with pytest.raises(ConfigError, match="halflife"):
        Monitor(halflife=0)
