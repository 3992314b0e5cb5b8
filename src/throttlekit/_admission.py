"""Admission control: an adaptive concurrency limit per worker, shed by priority.

A worker admits a request only while fewer than its *limit* are in flight; the excess is
refused at once (the caller answers 503 with ``Retry-After``) instead of queueing until
everyone times out. The limit is not configured but learned from the latency the app
shows, in the gradient family of Netflix's concurrency-limits (``GradientLimit``,
``Gradient2Limit``) and Envoy's adaptive concurrency filter (gradient controller)::

    admission = Admission(AdaptiveLimit(thresholds=(0.5, 0.8, 1.0)))
    ticket = admission.try_acquire(priority)        # None: shed (admission.retry_after(p))
    ...serve...
    ticket.release()                                # dropped=True after a timeout

Pure and framework-free: no thread, no I/O, no logging; time comes from the injected
monotonic ``clock``. Everything runs inside :meth:`AdaptiveLimit.try_acquire` (under the
lock: the in-flight check is exact under threads) and :meth:`Ticket.release` (one list
append, atomic: the slot given back and its latency, folded in under the lock when the
window closes); the arithmetic runs once per window.

**The algorithm.** The *sample* is the median latency of the requests released in a
*window* (``window`` seconds and at least ``min_samples`` requests). The *minimum* is the
app's latency unloaded, measured by *probes* (below). When a window closes::

    gradient = max(0.5, (1 + tolerance) * minimum / sample)
    target   = limit * gradient + sqrt(limit * gradient)
    limit    = target if target >= limit else limit + smoothing * (target - limit)
    limit    = clamp(limit, min_limit, max_limit)

* Gradient: while the app keeps up, its latency stays near the minimum and the gradient
  is ``1 + tolerance``, so the limit grows; past its capacity requests queue, latency
  grows in proportion and the gradient pulls the limit back. The floor of 0.5 keeps one
  outlier window from more than halving it (both libraries).
* Headroom ``sqrt`` (Envoy's; Netflix ``GradientLimit``'s queue size): a small queue
  that keeps the app busy, small next to large limits. On an app of capacity C (latency
  flat up to C in flight, then proportional) the limit settles near
  ``(1 + tolerance) * C + sqrt((1 + tolerance) * C)``: +20% for C = 100, latency 1.2x.
* ``tolerance`` (Envoy's buffer, 25% there): room for the noise of the medians.
* ``smoothing`` on the way down only (``GradientLimit``): one slow window does not swing
  the limit; growth is not smoothed, so a limit cut by trouble comes back in a few
  windows (from 4 to 60 in about ten).
* Not app-limited: a window whose peak in flight stayed under half the limit changes
  nothing (Netflix): a quiet worker does not drift up to ``max_limit`` and then admit a
  burst it cannot serve.
* Drops: a request released with ``dropped=True`` (a timeout, a failure from overload)
  cuts the limit by ``backoff`` at once (AIMD's multiplicative decrease; 0.9, so a few
  stray timeouts do not collapse it), at most once per window; it is not a sample.
* Probes (Envoy's minRTT window): the minimum is the median of ``probe_samples``
  requests plus its standard error (from their spread: an unlucky probe errs towards
  admitting a little more, not towards starving the app). The first requests are a
  probe; then one runs every ``probe_interval`` seconds (plus up to ``jitter`` of it at
  random, so a server's workers do not probe together), after 5 windows in a row at
  ``min_limit`` (Envoy's rule), and when latency has shifted: cuts in a row halved the
  limit while latency stayed above 80% of where it was (the app got slower whatever its
  load; under overload latency falls with the limit), or a window is 20% faster than the
  minimum (the app got faster). If the limit was reached in the window before, the probe
  halves it (below the capacity whenever the limit is near it), so the probe sees the app
  unloaded; otherwise the load is light enough as it is and nothing is shed. Requests
  admitted before a probe are not samples of it (Envoy).

Medians (Envoy's p50) rather than means (Netflix), and a minimum from probes rather than
the lowest window seen: with a mix of fast and slow endpoints, means are noisy, and the
lowest of many noisy windows sits well below the typical unloaded latency, which holds
the limit far under the capacity (in the tests, 80% of requests at 20 ms and 20% at
500 ms: 10 to 35% of the capacity served with means and a running minimum, all of it
now). Not a long average as minimum (Gradient2): under sustained overload an average
becomes the new normal. A window keeps its first 1000 latencies, sorted once when it
closes; past its first 1000 requests, one in 16 is timed (the others read no clock: they
only count in flight), so that a busy window still closes on time.

**Priorities.** ``thresholds[p]`` is the share of the limit requests of priority ``p``
may fill (higher is more important): with ``(0.5, 0.8, 1.0)`` priority 0 is admitted
while fewer than half the limit are in flight, priority 2 up to the whole limit, so under
saturation the lowest priority is shed first and the highest still gets in (as
``Limiter.shed`` does with a fixed capacity).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from ._errors import ConfigError

__all__ = ["DEFAULT_THRESHOLDS", "AdaptiveLimit", "Admission", "AdmissionSnapshot", "Ticket"]

#: the shares of the limit of priorities 0, 1 and 2 when an :class:`Admission` makes its limit
DEFAULT_THRESHOLDS = (0.5, 0.8, 1.0)
#: windows in a row at ``min_limit`` that call for a probe at once
_FLOOR_WINDOWS = 5
#: latencies kept per window for its median (the first ones: a window of 1 s at most
#: 1000 requests a second sees them all; sorting them once a window stays cheap)
_KEPT = 1000
#: past the first _KEPT requests admitted in a window, one in this many (a power of two) is
#: a sample: the others read no clock (at high rates the window has its latencies already;
#: a sample still closes it on time)
_SPARSE = 16
#: latency moved past this ratio: the minimum is stale (a limit halved by cuts while latency
#: stayed above this share of its level, or a window this much faster than the minimum)
_SHIFT = 0.8
_INF = float("inf")


class AdmissionSnapshot(NamedTuple):
    """The state of an :class:`AdaptiveLimit`, for an operator view."""

    #: requests admitted at once at full share (lowered while probing)
    limit: int
    inflight: int
    #: the app's latency unloaded, as the last probe measured it (its median plus its
    #: standard error), seconds; None before the first probe
    min_latency: float | None
    #: the median latency of the last window, seconds; None before the first window
    sample_latency: float | None
    #: requests shed so far, per priority level
    shed: tuple[int, ...]
    probing: bool


class Ticket:
    """One admitted request's slot: :meth:`release` it when the response is finished.

    A second release does nothing. A ticket belongs to one request: release it from the
    code that finishes that request, not from two threads at once. Made by
    :meth:`AdaptiveLimit.try_acquire` only (no ``__init__``: a Python one was a third of
    the cost of admission).
    """

    __slots__ = ("owner", "start")
    #: the limit the slot belongs to; None once given back
    owner: AdaptiveLimit | None
    #: the clock's time at admission; None when the request is not a latency sample
    #: (past the first 1000 requests of a window, one in 16 is)
    start: float | None

    def release(self, dropped: bool = False) -> None:
        """Give the slot back; its latency is measured now. ``dropped``: the request timed
        out or failed from overload (the limit comes down)."""
        limit = self.owner
        if limit is not None:
            self.owner = None
            start = self.start
            if start is None and not dropped:
                # not a sample (most requests): the slot given back, one append (C, atomic)
                limit.returned(None)
            else:
                limit.record(start, dropped)

    def cancel(self) -> None:
        """Give the slot back unused (the request was refused after all): nothing learnt."""
        limit = self.owner
        if limit is not None:
            self.owner = None
            limit.returned(None)


def _number(name: str, value: object, low: float, high: float = _INF, *,
            above: bool = False, owner: str = "adaptive limit") -> float:
    """``value`` as a float from ``low`` (excluded if ``above``) to ``high``, else a
    ConfigError naming it."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not (low < value if above else low <= value) or not value <= high):
        bound = f"{'>' if above else '>='} {low:g}"
        if high < _INF:
            bound += f" and <= {high:g}"
        raise ConfigError(f"{owner}: {name} must be a number {bound}, got {value!r}")
    return float(value)


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"adaptive limit: {name} must be an integer >= 1, got {value!r}")
    return value


def _thresholds(value: object) -> tuple[float, ...]:
    shares = tuple(value) if isinstance(value, (list, tuple)) else ()
    if not shares or not all(
        not isinstance(t, bool) and isinstance(t, (int, float)) and 0 < t <= 1 for t in shares
    ) or any(shares[i] > shares[i + 1] for i in range(len(shares) - 1)):
        raise ConfigError("adaptive limit: thresholds must be a non-empty list of increasing "
                          f"fractions in (0, 1], got {value!r}")
    return tuple(float(t) for t in shares)


class AdaptiveLimit:
    """A concurrency limit learned from latency (see the module docstring); thread-safe.

    Args:
        thresholds: the share of the limit each priority level may fill, lowest first.
        initial_limit, min_limit, max_limit: the limit to start with, and its bounds. The
            first minimum is measured at ``initial_limit``: keep it below the capacity.
        window: seconds of a sample window (closed at the first release after it with at
            least ``min_samples`` requests released in it).
        min_samples: released requests needed to close a window.
        tolerance: latency up to ``1 + tolerance`` times the minimum still lets the limit
            grow.
        smoothing: the part of the way to its target the limit moves per window, (0, 1].
        backoff: the factor applied to the limit on a drop, (0, 1).
        probe_interval: seconds between probes of the minimum latency.
        probe_samples: requests a probe measures (more: a steadier minimum, longer
            probes).
        jitter: up to this share of ``probe_interval`` is added at random to each interval.
        clock: monotonic seconds (by default ``time.perf_counter``, fine-grained on every
            system).
    """

    __slots__ = (
        "_admitted", "_caps", "_count", "_cut_from", "_cut_sample", "_drops", "_epoch", "_estimate",
        "_floor_windows", "_latencies", "_limit", "_lock", "_min", "_needed", "_next_probe",
        "_peak", "_probing", "_random", "_restore", "_returns", "_sample", "_shed", "_taken",
        "_top", "_window_end", "backoff", "clock", "jitter", "max_limit", "min_limit",
        "min_samples", "probe_interval", "probe_samples", "returned", "smoothing", "thresholds",
        "tolerance", "window",
    )
    # the current window (set by _new_window, and by _start_probe for a probe's)
    _window_end: float
    _needed: int
    _admitted: int
    _count: int
    _drops: int
    _peak: int
    # probes (set by _start_probe)
    _probing: bool
    _restore: float
    _epoch: float
    _floor_windows: int
    _cut_from: float
    _cut_sample: float

    def __init__(
        self,
        *,
        thresholds: Sequence[float] = (1.0,),
        initial_limit: int = 20,
        min_limit: int = 4,
        max_limit: int = 1000,
        window: float = 1.0,
        min_samples: int = 10,
        tolerance: float = 0.1,
        smoothing: float = 0.5,
        backoff: float = 0.9,
        probe_interval: float = 60.0,
        probe_samples: int = 100,
        jitter: float = 0.15,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.thresholds = _thresholds(thresholds)
        self.min_limit = _count("min_limit", min_limit)
        self.max_limit = _count("max_limit", max_limit)
        if self.max_limit < self.min_limit:
            raise ConfigError(f"adaptive limit: max_limit ({max_limit!r}) must not be below "
                              f"min_limit ({min_limit!r})")
        initial = _count("initial_limit", initial_limit)
        if not self.min_limit <= initial <= self.max_limit:
            raise ConfigError(f"adaptive limit: initial_limit must be between min_limit and "
                              f"max_limit ({min_limit!r}..{max_limit!r}), got {initial!r}")
        self.window = _number("window", window, 0, above=True)
        self.min_samples = _count("min_samples", min_samples)
        self.tolerance = _number("tolerance", tolerance, 0)
        self.smoothing = _number("smoothing", smoothing, 0, 1, above=True)
        self.backoff = _number("backoff", backoff, 0, 1, above=True)
        if self.backoff == 1:
            raise ConfigError(f"adaptive limit: backoff must be below 1, got {backoff!r}")
        self.probe_interval = _number("probe_interval", probe_interval, 0, above=True)
        self.probe_samples = _count("probe_samples", probe_samples)
        self.jitter = _number("jitter", jitter, 0, 1)
        if not callable(clock):
            raise ConfigError(f"adaptive limit: clock must be a callable, got {clock!r}")
        self.clock = clock
        self._lock = threading.Lock()
        self._random = random.Random()
        self._top = len(self.thresholds) - 1
        self._shed = [0] * len(self.thresholds)
        #: slots taken, less the given-back ones folded into the window so far
        self._taken = 0
        #: given back since the last fold, appended without the lock (atomic): a latency,
        #: or None (no sample: admitted before the probe, or unused); in flight is
        #: ``_taken - len(_returns)``
        self._returns: list[float | None] = []
        #: a slot given back that is not a sample (``Ticket.release``, ``Ticket.cancel``):
        #: ``returned(None)``, the list's own append (no Python call)
        self.returned: Callable[[float | None], None] = self._returns.append
        self._count = 0
        self._drops = 0
        self._min = _INF
        self._sample = 0.0
        self._latencies: list[float] = []
        self._next_probe = _INF
        now = clock()
        self._new_window(now, 0)
        # the first minimum: the first requests' latency, at initial_limit
        self._start_probe(now, float(initial), busy=False)

    # -- per request ---------------------------------------------------------------------

    def try_acquire(self, level: int = 0) -> Ticket | None:
        """A slot for a request of priority ``level`` (clamped to the thresholds), or
        None: shed (counted)."""
        if level > self._top:
            level = self._top
        elif level < 0:
            level = 0
        lock = self._lock
        lock.acquire()  # not `with`: this is half the cost
        try:
            inflight = self._taken - len(self._returns)
            if inflight >= self._caps[level]:
                self._shed[level] += 1
                return None
            self._taken += 1
            if inflight >= self._peak:
                self._peak = inflight + 1
            admitted = self._admitted = self._admitted + 1
        finally:
            lock.release()
        ticket = Ticket()
        ticket.owner = self
        ticket.start = (self.clock() if admitted <= _KEPT or not admitted & (_SPARSE - 1)
                        else None)
        return ticket

    def record(self, start: float | None, dropped: bool = False) -> None:
        """Give back a slot taken at ``start`` (None: not a sample) and learn from its
        latency (what :meth:`Ticket.release` calls). Without the lock (every admitted
        request pays this): one append, atomic, is the slot given back and its latency;
        the lock is taken only when a window may close, and on a drop."""
        if start is None:
            if not dropped:
                self._returns.append(None)  # not a sample: no clock read, no window closes
                return
        elif not dropped:
            now = self.clock()
            returns = self._returns
            returns.append(now - start if start >= self._epoch else None)
            if now >= self._window_end and (
                    len(returns) + self._count + self._drops >= self._needed):
                self._tick(now)
            return
        now = self.clock()
        with self._lock:
            self._fold()
            if self._taken:
                self._taken -= 1
            if not self._drops:
                self._back_off()
            self._drops += 1
            self._maybe_close(now)

    def _tick(self, now: float) -> None:
        """A release found its window over: fold the slots given back, close the window
        if it has its samples."""
        with self._lock:
            self._fold()
            self._maybe_close(now)

    def _fold(self) -> None:
        """Move the slots given back without the lock into the window (under the lock)."""
        returns = self._returns
        n = len(returns)
        if not n:
            return
        batch = returns[:n]
        del returns[:n]  # (what was appended meanwhile stays, after them)
        self._taken -= n
        samples = [latency for latency in batch if latency is not None]
        self._count += len(samples)
        room = _KEPT - len(self._latencies)
        if room > 0:
            self._latencies.extend(samples[:room])

    def _maybe_close(self, now: float) -> None:
        if now >= self._window_end and self._count + self._drops >= self._needed:
            self._close_window(now)

    # -- once per window -----------------------------------------------------------------

    def _close_window(self, now: float) -> None:
        estimate = self._estimate
        busy = self._peak >= self._limit
        stale = False
        sample = self._median()
        if self._probing:
            if sample > 0:
                self._sample = sample
                self._min = sample + self._median_error()
            self._probing = False
            estimate = self._restore
            self._next_probe = now + self._probe_gap()
        elif sample > 0:  # (0: only drops, or a clock too coarse to see the requests)
            self._sample = sample
            if sample < _SHIFT * self._min:
                stale = True  # much faster than the last probe said (or none yet): probe
            elif not self._drops and self._peak * 2 >= estimate:  # else app-limited or cut
                new = self._next_limit(estimate, sample)
                stale = self._no_relief(estimate, new, sample)
                estimate = new
        self._floor_windows = self._floor_windows + 1 if estimate <= self.min_limit else 0
        self._new_window(now, self._taken - len(self._returns))
        if stale or now >= self._next_probe or self._floor_windows >= _FLOOR_WINDOWS:
            self._start_probe(now, estimate, busy)
        else:
            self._set(estimate)

    def _median(self) -> float:
        latencies = self._latencies
        if not latencies:
            return 0.0
        latencies.sort()
        return latencies[len(latencies) // 2]

    def _median_error(self) -> float:
        """The standard error of the (sorted) window's median, from its spread: the probe's
        minimum is raised by it, so an unlucky probe errs towards admitting a little more,
        not towards starving the app (a minimum 20% low holds the limit near 60)."""
        latencies = self._latencies
        n = len(latencies)
        return 0.93 * (latencies[3 * n // 4] - latencies[n // 4]) / math.sqrt(n)

    def _no_relief(self, limit: float, new: float, sample: float) -> bool:
        """Whether cuts in a row have halved the limit while latency stayed: the app got
        slower whatever its load, so the minimum is stale. (Under overload, latency falls
        with the limit.)"""
        if new >= limit:
            self._cut_from = 0.0
            return False
        if not self._cut_from:
            self._cut_from, self._cut_sample = limit, sample
            return False
        return new <= self._cut_from / 2 and sample >= _SHIFT * self._cut_sample

    def _next_limit(self, limit: float, sample: float) -> float:
        gradient = (1.0 + self.tolerance) * self._min / sample
        target = limit * max(0.5, gradient)
        target += math.sqrt(target)
        if target < limit:
            target = limit + self.smoothing * (target - limit)
        return min(max(target, self.min_limit), self.max_limit)

    def _back_off(self) -> None:
        if self._probing:
            self._restore = max(self.min_limit, self._restore * self.backoff)
        else:
            self._set(max(self.min_limit, self._estimate * self.backoff))

    def _start_probe(self, now: float, estimate: float, busy: bool) -> None:
        """Measure the minimum again on the next ``probe_samples`` requests, at half the
        limit if the limit was reached (else the load is light enough as it is)."""
        self._probing = True
        self._floor_windows = 0
        self._cut_from = self._cut_sample = 0.0
        self._restore = estimate
        self._epoch = now
        self._admitted = 0
        self._window_end = now  # a probe ends on its samples alone
        self._needed = self.probe_samples
        self._set(max(self.min_limit, estimate / 2) if busy else estimate)

    def _new_window(self, now: float, peak: int) -> None:
        self._window_end = now + self.window
        self._needed = self.min_samples
        self._admitted = 0
        self._count = 0
        self._drops = 0
        self._latencies.clear()
        self._peak = peak

    def _set(self, estimate: float) -> None:
        """The limit, and each level's share of it (at least one request each)."""
        self._estimate = estimate
        top = int(estimate)
        self._limit = top
        # the epsilon: 0.29 * 100 is 28.999...
        self._caps = tuple(max(1, int(t * top + 1e-9)) for t in self.thresholds)

    def _probe_gap(self) -> float:
        return self.probe_interval * (1.0 + self.jitter * self._random.random())

    # -- reading -------------------------------------------------------------------------

    def __repr__(self) -> str:
        snap = self.snapshot()
        probing = ", probing" if snap.probing else ""
        return (f"AdaptiveLimit(limit={snap.limit}, inflight={snap.inflight}, "
                f"min_latency={snap.min_latency}, sample_latency={snap.sample_latency}"
                f"{probing})")

    @property
    def limit(self) -> int:
        """Requests admitted at once at full share (lowered while probing)."""
        return self._limit

    @property
    def inflight(self) -> int:
        """Requests admitted and not given back."""
        return self._taken - len(self._returns)

    @property
    def sample_latency(self) -> float | None:
        """The median latency of the last window, seconds (None before the first)."""
        return self._sample or None

    def snapshot(self) -> AdmissionSnapshot:
        with self._lock:
            return AdmissionSnapshot(
                self._limit, self._taken - len(self._returns),
                None if self._min == _INF else self._min, self._sample or None,
                tuple(self._shed), self._probing,
            )


class Admission:
    """Admission by priority on an :class:`AdaptiveLimit`: what the request pipeline calls.

    ``try_acquire(priority)`` (an int, higher is more important, clamped to the limit's
    thresholds) gives a :class:`Ticket` or None (shed); ``retry_after(priority)`` suggests
    how long a shed client should wait.

    Args:
        limit: the limit; by default one with :data:`DEFAULT_THRESHOLDS`.
        max_retry_after: the longest ``retry_after`` suggested, seconds.
    """

    __slots__ = ("limit", "max_retry_after", "try_acquire")
    #: ``try_acquire(priority)``: a slot for a request of this priority, or None: shed it
    #: (503). The limit's own method, bound: no call in between.
    try_acquire: Callable[[int], Ticket | None]

    def __init__(self, limit: AdaptiveLimit | None = None, *,
                 max_retry_after: float = 60.0) -> None:
        if limit is not None and not isinstance(limit, AdaptiveLimit):
            raise ConfigError(f"admission: limit must be an AdaptiveLimit, got {limit!r}")
        self.limit = limit if limit is not None else AdaptiveLimit(thresholds=DEFAULT_THRESHOLDS)
        self.max_retry_after = _number("max_retry_after", max_retry_after, 0, above=True,
                                       owner="admission")
        self.try_acquire = self.limit.try_acquire

    def retry_after(self, priority: int) -> float:
        """Seconds a shed request of this priority should wait: a window or the recent
        latency, whichever is longer (the limit moves once a window, and a slot frees within
        about one latency), divided by the priority's share of the limit, so the lowest
        priorities, shed first, come back last. At most ``max_retry_after``."""
        limit = self.limit
        shares = limit.thresholds
        share = shares[min(max(priority, 0), len(shares) - 1)]
        wait = max(limit.window, limit.sample_latency or 0.0) / share
        return min(wait, self.max_retry_after)

    def snapshot(self) -> AdmissionSnapshot:
        """Limit, in flight, minimum and sample latency, shed counts per priority."""
        return self.limit.snapshot()
