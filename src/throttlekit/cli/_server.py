"""The simulated server: workers, service times, a bounded queue and clients' timeout.

A discrete-event model on the simulation's clock (no threads, no sleeping): a request
offered to the :class:`Server` starts at once on a free worker, or waits in the queue, or
is dropped when the queue is full (the server's 503). It holds its worker for its service
time; when it ends, the next waiting request starts. A client waits ``timeout`` seconds:
a request answered later counts as failed for it, though the server finished it (servers
do not know the client left).

Each request is a :class:`Job`, the handle the model calls when the request ends:
:meth:`Job.complete` with its latency, or :meth:`Job.drop`. The protected run's jobs end
the middleware's response there, at the simulated time of the end, so whatever the
middleware does when a response ends (releasing a lease, measuring latency) sees it then.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._errors import ConfigError

if TYPE_CHECKING:
    from ._report import RunStats

__all__ = ["Job", "Server", "ServerSpec", "ServiceTime", "ServiceTimes"]

#: the standard normal's 90th percentile: a lognormal's p90 is median * exp(Z90 * sigma)
Z90 = 1.2815515655446004


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"


@dataclass(frozen=True)
class ServiceTime:
    """How long a worker takes over a request: lognormal with this median and 90th
    percentile (seconds); fixed when they are equal."""

    median: float
    p90: float

    def __post_init__(self) -> None:
        if not _number(self.median) or self.median < 0 or not _number(self.p90) \
                or self.p90 < self.median or (self.median == 0 and self.p90 > 0):
            raise ConfigError(
                "a service time is a number of seconds >= 0, or {median = ..., p90 = ...} "
                f"with p90 >= median > 0, got median={self.median!r}, p90={self.p90!r}"
            )

    @property
    def sigma(self) -> float:
        return math.log(self.p90 / self.median) / Z90 if self.p90 > self.median else 0.0

    @property
    def mean(self) -> float:
        return self.median * math.exp(self.sigma**2 / 2)

    def describe(self) -> str:
        if self.p90 == self.median:
            return _ms(self.median)
        return f"{_ms(self.median)} (p90 {_ms(self.p90)})"


@dataclass(frozen=True)
class ServerSpec:
    """The ``[server]`` section of a scenario.

    ``workers``: requests served at once (None: as many as arrive); ``queue``: requests
    waiting for a worker beyond which the server drops them (None: no bound);
    ``timeout``: seconds a client waits for its answer; ``service``: service time by path
    (``"/search"`` covers ``/search`` and ``/search/...``; the longest match wins; ``"*"``:
    any other path; without one, 0).
    """

    workers: int | None = None
    queue: int | None = None
    timeout: float = 30.0
    service: tuple[tuple[str, ServiceTime], ...] = ()

    def __post_init__(self) -> None:
        for what, n in (("workers", self.workers), ("queue", self.queue)):
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0
                                  or (what == "workers" and n == 0)):
                raise ConfigError(f"[server] {what} must be a positive integer, got {n!r}")
        if not _number(self.timeout) or not self.timeout > 0:
            raise ConfigError(f"[server] timeout must be a positive number, got {self.timeout!r}")
        for path, _ in self.service:
            if path != "*" and not path.startswith("/"):
                raise ConfigError(f"[server] service: {path!r} is not '*' or a path")

    @property
    def unlimited(self) -> bool:
        """No capacity modelled: every request starts at once."""
        return self.workers is None

    def service_time(self, path: str) -> ServiceTime:
        """The service time of a request for ``path``."""
        found, length = _ZERO, -1
        for prefix, time in self.service:
            if prefix == "*":
                if length < 0:
                    found = time
            elif (path == prefix or path.startswith(prefix.rstrip("/") + "/")) \
                    and len(prefix) > length:
                found, length = time, len(prefix)
        return found

    def describe(self) -> str:
        """One line for the report."""
        if self.unlimited and not self.service:
            return "unlimited capacity, no service time (no [server] section)"
        workers = "unlimited workers" if self.workers is None else f"{self.workers} workers"
        queue = "unbounded queue" if self.queue is None else f"queue {self.queue}"
        service = ", ".join(
            f"{'other paths' if p == '*' else p} {t.describe()}" for p, t in self.service
        )
        return f"{workers}, {queue}, client timeout {self.timeout:g} s; service {service or '0'}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "workers": self.workers, "queue": self.queue, "timeout": self.timeout,
            "service": {p: {"median": t.median, "p90": t.p90} for p, t in self.service},
        }

    @classmethod
    def from_dict(cls, data: object) -> ServerSpec:
        """Read a scenario file's ``[server]`` table."""
        if not isinstance(data, Mapping):
            raise ConfigError("[server] must be a table")
        unknown = set(data) - {"workers", "queue", "timeout", "service"}
        if unknown:
            raise ConfigError(f"[server]: unknown setting(s) {', '.join(sorted(unknown))}")
        service = data.get("service", {})
        if not isinstance(service, Mapping):
            raise ConfigError("[server] service must map paths to service times")
        return cls(
            workers=data.get("workers"), queue=data.get("queue"),
            timeout=data.get("timeout", cls.timeout),
            service=tuple((str(p), _service_time(p, t)) for p, t in service.items()),
        )


_ZERO = ServiceTime(0.0, 0.0)


def _service_time(path: object, value: object) -> ServiceTime:
    """A number (fixed seconds) or ``{median = ..., p90 = ...}``."""
    if _number(value):
        return ServiceTime(float(value), float(value))  # type: ignore[arg-type]
    if isinstance(value, Mapping) and set(value) <= {"median", "p90"} and "median" in value:
        return ServiceTime(value["median"], value.get("p90", value["median"]))
    raise ConfigError(
        f"[server] service {path!r}: expected seconds or {{median = ..., p90 = ...}}, "
        f"got {value!r}"
    )


class ServiceTimes:
    """Draws each request's service time, seeded: the same draws for the same requests."""

    __slots__ = ("_draw", "_paths", "spec")

    def __init__(self, spec: ServerSpec, seed: int) -> None:
        self.spec = spec
        self._paths: dict[str, tuple[float, float, float]] = {}
        self._draw = random.Random(f"server:{seed}").lognormvariate

    def __call__(self, path: str) -> float:
        found = self._paths.get(path)
        if found is None:
            time = self.spec.service_time(path)
            if len(self._paths) > 10_000:  # paths made unique per request
                self._paths.clear()
            found = self._paths[path] = (
                time.median, math.log(time.median) if time.median else 0.0, time.sigma
            )
        median, mu, sigma = found
        return self._draw(mu, sigma) if sigma else median


class Job:
    """One request in the server: the model's handle on it.

    ``arrival`` is when the client sent it (the first request of a challenge round trip
    for the requests that follow it), ``service`` its service time. The model calls
    :meth:`complete` when it ends and :meth:`drop` when the queue is full; these do
    nothing here: a subclass observes them.
    """

    __slots__ = ("arrival", "group", "legitimate", "service", "started")

    def __init__(self, arrival: float, service: float, group: int, legitimate: bool) -> None:
        self.arrival = arrival
        self.service = service
        self.group = group
        self.legitimate = legitimate
        self.started = arrival

    def complete(self, latency: float) -> None:
        """The server answered, ``latency`` seconds after the client sent the request."""

    def drop(self) -> None:
        """The server dropped the request (its queue is full)."""


class Server:
    """The discrete-event model of :class:`ServerSpec` (see the module docstring)."""

    __slots__ = ("_running", "_seq", "busy", "queue", "stats", "waiting", "workers")

    def __init__(self, spec: ServerSpec, stats: RunStats) -> None:
        self.workers = math.inf if spec.workers is None else spec.workers
        self.queue = math.inf if spec.queue is None else spec.queue
        self.stats = stats
        self.busy = 0
        self.waiting: deque[Job] = deque()
        self._running: list[tuple[float, int, Job]] = []
        self._seq = 0

    def offer(self, job: Job, now: float) -> None:
        """A request admitted at ``now``: start it, queue it or drop it."""
        self.stats.on_admitted(job)
        if self.busy < self.workers:
            self._start(job, now)
        elif len(self.waiting) < self.queue:
            self.waiting.append(job)
        else:
            self.stats.on_dropped(job)
            job.drop()

    def _start(self, job: Job, now: float) -> None:
        job.started = now
        end = now + job.service
        self.busy += 1
        self._seq += 1
        heapq.heappush(self._running, (end, self._seq, job))
        until = self.stats.duration
        if now < until:
            self.stats.busy += min(end, until) - now

    def advance(self, now: float) -> None:
        """Run the model up to ``now``: every request ending by then ends, in order."""
        running = self._running
        while running and running[0][0] <= now:
            end, _, job = heapq.heappop(running)
            self.busy -= 1
            if self.waiting:
                self._start(self.waiting.popleft(), end)
            latency = end - job.arrival
            self.stats.on_answered(job, latency)
            job.complete(latency)

    def finish(self) -> None:
        """Serve everything still running or waiting."""
        self.advance(math.inf)

