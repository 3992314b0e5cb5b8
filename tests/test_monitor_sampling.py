"""The monitor's sampling: exact counters always, the dimensions 1 in N above 250 a bucket."""

from __future__ import annotations

import math
import statistics
from typing import Any

import pytest

from throttlekit import ConfigError, Event, RequestView
from throttlekit._clientip import ClientIPResolver
from throttlekit.monitor import Monitor
from throttlekit.monitor._sampling import MAX_EVERY, SAMPLES, Sampler

T0 = 1_700_000_000.0
RESOLVER = ClientIPResolver()


def _view(i: int, path: str) -> RequestView:
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "",
           "REMOTE_ADDR": f"10.{i // 250 % 250}.{i % 250}.1", "SERVER_NAME": "s",
           "SERVER_PORT": "80", "wsgi.url_scheme": "http", "HTTP_USER_AGENT": "ua"}
    return RequestView.from_environ(env, RESOLVER)


def _feed(monitor: Monitor, rate: int, seconds: int, hot_share: float) -> dict[str, int]:
    """``rate`` requests a second for ``seconds``: the first ``hot_share`` of each second's
    on path /hot, the others on /cold; 1000 rotating clients. Returns the true counts."""
    true = {"/hot": 0, "/cold": 0}
    hot = int(rate * hot_share)
    for s in range(seconds):
        for j in range(rate):
            path = "/hot" if j < hot else "/cold"
            true[path] += 1
            view = _view(j, path)
            monitor(Event("allowed", "per-ip", view.client_key, view, None, False,
                          T0 + s + j / rate))
    return true


def _window_counts(monitor: Monitor, now: float) -> dict[Any, int]:
    return monitor.dimension("path").hitters.merged(now)


def test_under_the_threshold_every_request_is_counted() -> None:
    """Below 2 * SAMPLES requests a bucket the dimensions count every request exactly."""
    monitor = Monitor(per_rule=False)
    rate = 2 * SAMPLES - 1
    _feed(monitor, rate, 12, 0.25)
    now = T0 + 12
    assert monitor.sampling == 1
    counts = _window_counts(monitor, now - 1e-9)
    hot = int(rate * 0.25)
    assert counts == {"/hot": hot * 10, "/cold": (rate - hot) * 10}


def test_above_it_counts_are_scaled_estimates_within_the_bound() -> None:
    """At 8,000 requests a second 1 in 32 is sampled; the counters, requests and the
    detector stay exact, a path's window count is within 5 sigma (sqrt(c * N))."""
    monitor = Monitor(per_rule=False)
    rate = 8000
    _feed(monitor, rate, 12, 0.3)
    now = T0 + 12 - 1e-9
    every = rate // SAMPLES
    assert monitor.sampling == every
    assert monitor.requests == rate * 12
    assert monitor.counts() == {("per-ip", "allowed", False): rate * 12}
    assert monitor.detector.last_rate == rate
    counts = _window_counts(monitor, now)
    for path, share in (("/hot", 0.3), ("/cold", 0.7)):
        # the window's first bucket was counted at the previous bucket's N (the same)
        c = int(rate * share) * 10 if path == "/hot" else (rate - int(rate * 0.3)) * 10
        assert abs(counts[path] - c) <= 5 * math.sqrt(c * every), (path, counts[path], c)
    # every client key is still counted exactly (what offenders and the shield read)
    assert monitor.dimension("client").hitters.total(now) == rate * 10


def test_a_fixed_sample_of_one_counts_everything() -> None:
    """Monitor(sample=1) counts every request at any rate."""
    monitor = Monitor(per_rule=False, sample=1)
    _feed(monitor, 4000, 11, 0.5)
    assert monitor.sampling == 1
    assert _window_counts(monitor, T0 + 11 - 1e-9) == {"/hot": 20000, "/cold": 20000}


def test_gaps_are_geometric_with_mean_every() -> None:
    """The gap between samples averages ``every`` (each request drawn with 1/every)."""
    sampler = Sampler()
    assert sampler.adapt(10 * SAMPLES) == 10
    gaps = [sampler.gap() for _ in range(20000)]
    assert min(gaps) >= 1
    assert abs(statistics.fmean(gaps) - 10) < 0.3
    assert sampler.adapt(10**9) == MAX_EVERY
    assert sampler.adapt(0) == 1 and sampler.gap() == 1


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_a_bad_sample_is_a_config_error(bad: Any) -> None:
    """sample must be a positive integer (or None); the error names the value."""
    with pytest.raises(ConfigError, match="sample"):
        Monitor(sample=bad)


def test_a_new_rate_draws_new_gaps() -> None:
    """The gaps are drawn ahead; a new ``every`` never uses one drawn at the old."""
    sampler = Sampler()
    sampler.adapt(10 * SAMPLES)
    assert sampler.gap() >= 1  # and more drawn at 1 in 10
    sampler.adapt(0)
    assert [sampler.gap() for _ in range(100)] == [1] * 100
    sampler.adapt(MAX_EVERY * SAMPLES)
    assert abs(statistics.fmean(sampler.gap() for _ in range(20000)) - MAX_EVERY) < 3
