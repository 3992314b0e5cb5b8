"""Anomaly detection on request rates: an EWMA baseline and a sustained-rise rule.

Requests are counted in time buckets (``bucket`` seconds, one second by default). Each
closed bucket feeds an exponentially weighted moving average of the rate, the baseline.
An anomaly starts when the rate stays above ``factor`` times the baseline (and above
``min_rate``) for ``sustain`` seconds; it ends when the rate has stayed below
``end_factor`` times the baseline for ``cooldown`` seconds.

Everything happens lazily inside :meth:`RateDetector.hit` (or :meth:`RateDetector.tick`):
time is whatever the caller says it is, so the detector runs on simulated time, and there
is no thread. A hit is a comparison and an increment; the arithmetic runs once per bucket.

The baseline does not learn from the rise itself: buckets above the threshold are left
out, and during an anomaly it learns ``frozen_factor`` times slower, so a flood does not
become the new normal while a lasting legitimate shift eventually does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypedDict

from .._errors import ConfigError

__all__ = ["DetectorOptions", "RateDetector"]

_INF = float("inf")
#: ``_alarm`` when no count can raise one: an int, so ``hit``'s comparison stays one of two
#: small ints (the interpreter specialises it; an int against a float it does not)
_NEVER = 2**30 - 1

#: callback(kind, now, detector) with kind "anomaly_started" or "anomaly_ended"
Transition = Callable[[str, float, "RateDetector"], None]


class DetectorOptions(TypedDict, total=False):
    """The tuning of a :class:`RateDetector` that a Monitor passes on (defaults there)."""

    factor: float
    sustain: float
    end_factor: float
    cooldown: float
    halflife: float
    warmup: float
    min_rate: float


def _positive(name: str, value: object, zero_ok: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(f"{name} must be {'>= 0' if zero_ok else '> 0'}, got {value!r}")
    return float(value)


class RateDetector:
    """Detects sustained rises of one stream's request rate over its own baseline.

    Args:
        name: what is watched ("*" for all traffic, or a rule name); carried in events.
        factor: an anomaly is a rate above ``factor`` times the baseline (default 3).
        sustain: seconds the rise must last before ``anomaly_started`` (default 2; checked
            at the first excess of each bucket, so it is rounded up to the bucket).
        end_factor: the anomaly is over when the rate is back under ``end_factor`` times
            the baseline ...
        cooldown: ... for this many seconds (default 10).
        halflife: seconds after which the baseline has moved halfway to a new level
            (default 300).
        warmup: seconds of traffic needed before any anomaly can be raised (default 30).
        min_rate: requests per second below which nothing is an anomaly (default 5).
        bucket: bucket width in seconds (default 1).
        on_transition: called as ``on_transition(kind, now, detector)``.
    """

    __slots__ = (
        "_alarm",
        "_calm_since",
        "_count",
        "_end",
        "_first",
        "_frozen_alpha_log",
        "_log_keep",
        "_on",
        "_start",
        "active",
        "anomalies",
        "baseline",
        "bucket",
        "cooldown",
        "end_factor",
        "factor",
        "halflife",
        "last_rate",
        "min_rate",
        "name",
        "peak_rate",
        "rising_since",
        "started_at",
        "sustain",
        "warmup",
    )

    def __init__(
        self,
        name: str = "*",
        *,
        factor: float = 3.0,
        sustain: float = 2.0,
        end_factor: float = 1.5,
        cooldown: float = 10.0,
        halflife: float = 300.0,
        warmup: float = 30.0,
        min_rate: float = 5.0,
        bucket: float = 1.0,
        frozen_factor: float = 10.0,
        on_transition: Transition | None = None,
    ) -> None:
        self.name = name
        self.factor = _positive("factor", factor)
        if self.factor <= 1:
            raise ConfigError(f"factor must be above 1, got {factor!r}")
        self.sustain = _positive("sustain", sustain, zero_ok=True)
        self.end_factor = _positive("end_factor", end_factor)
        if self.end_factor > self.factor:
            raise ConfigError(
                f"end_factor ({end_factor!r}) must not be above factor ({factor!r})"
            )
        self.cooldown = _positive("cooldown", cooldown, zero_ok=True)
        self.halflife = _positive("halflife", halflife)
        self.warmup = _positive("warmup", warmup, zero_ok=True)
        self.min_rate = _positive("min_rate", min_rate, zero_ok=True)
        self.bucket = _positive("bucket", bucket)
        frozen_factor = _positive("frozen_factor", frozen_factor)
        # log of the share of the old baseline kept per bucket (normal, and during anomalies)
        self._log_keep = math.log(0.5) * self.bucket / self.halflife
        self._frozen_alpha_log = self._log_keep / frozen_factor
        self._on = on_transition
        self.baseline = 0.0
        self.last_rate = 0.0
        self.peak_rate = 0.0
        self.active = False
        self.anomalies = 0
        self.rising_since: float | None = None
        self.started_at: float | None = None
        self._calm_since: float | None = None
        self._first: float | None = None
        self._count = 0
        self._start = -_INF
        self._end = -_INF
        #: the bucket's count above which the rate is a rise (``floor`` of the threshold
        #: times the width: for an integer count, ``count > t`` is ``count > floor(t)``)
        self._alarm: float = _NEVER

    def __repr__(self) -> str:
        state = "anomaly" if self.active else "normal"
        return (
            f"RateDetector({self.name!r}, {state}, baseline={self.baseline:.1f}/s, "
            f"last={self.last_rate:.1f}/s)"
        )

    @property
    def threshold(self) -> float:
        """Requests per second above which the rate counts as a rise."""
        return max(self.factor * self.baseline, self.min_rate)

    def hit(self, now: float, n: int = 1) -> None:
        """Count ``n`` requests at ``now`` (seconds)."""
        if now >= self._end:
            self._roll(now)
        self._count += n
        if self._count > self._alarm:
            self._exceeded(now)

    def tick(self, now: float) -> None:
        """Let time pass without a request (closes buckets, may end an anomaly)."""
        if now >= self._end:
            self._roll(now)

    # -- the slow path, once per bucket -------------------------------------------------

    def _exceeded(self, now: float) -> None:
        if self._alarm == _NEVER:
            return  # a bucket of more than _NEVER requests, and no alarm set
        self._alarm = _NEVER  # once per bucket
        if self.rising_since is None:
            self.rising_since = self._start  # the rise began in this bucket
        if not self.active and now - self.rising_since >= self.sustain:
            self.active = True
            self.anomalies += 1
            self.started_at = self.rising_since
            self._calm_since = None
            self.peak_rate = self._count / self.bucket
            if self._on is not None:
                self._on("anomaly_started", now, self)

    def _close(self, start: float, count: int) -> None:
        """Fold one finished bucket into the state."""
        rate = count / self.bucket
        self.last_rate = rate
        if self._first is None:
            self._first = start
            self.baseline = rate
            return
        if self.active:
            if rate > self.peak_rate:
                self.peak_rate = rate
            if rate < self.end_factor * self.baseline:
                if self._calm_since is None:
                    self._calm_since = start
            else:
                self._calm_since = None
            keep = math.exp(self._frozen_alpha_log)
            self.baseline = keep * self.baseline + (1 - keep) * rate
            return
        if rate > self.threshold and start - self._first >= self.warmup:
            return  # a rise (sustained or not) does not teach the baseline
        self.rising_since = None
        keep = math.exp(self._log_keep)
        self.baseline = keep * self.baseline + (1 - keep) * rate

    def _roll(self, now: float) -> None:
        width = self.bucket
        if self._end != -_INF:
            self._close(self._start, self._count)
            # empty buckets between the last one and now: fold them in closed form
            gap = int((now - self._end) // width)
            if gap > 0:
                self._close_empty(self._end, gap)
        self._start = (now // width) * width
        self._end = self._start + width
        self._count = 0
        if self.active:
            if (
                self._calm_since is not None
                and self._start - self._calm_since >= self.cooldown
            ):
                self._finish(now)
            self._alarm = _NEVER
        elif self._first is not None and self._start - self._first >= self.warmup:
            alarm = self.threshold * width
            self._alarm = math.floor(alarm) if alarm < _NEVER else alarm
        else:
            self._alarm = _NEVER

    def _close_empty(self, start: float, n: int) -> None:
        if n <= 3:
            for i in range(n):
                self._close(start + i * self.bucket, 0)
            return
        self._close(start, 0)  # first one: may start the calm period or reset a rise
        log_keep = self._frozen_alpha_log if self.active else self._log_keep
        self.baseline *= math.exp(log_keep * (n - 1))
        self.last_rate = 0.0

    def _finish(self, now: float) -> None:
        self.active = False
        self.rising_since = None
        self._calm_since = None
        if self._on is not None:
            self._on("anomaly_ended", now, self)
        self.started_at = None
        self.peak_rate = 0.0
