"""Client standing: which clients are *known* (docs/under-attack.md, "Client standing").

A client (its ``client_key``: the IPv4 address or the IPv6 /64) is known when it has a
history of normal behaviour from before the anomaly: at least ``min_requests`` requests
allowed over at least ``min_age`` seconds, none of them refused; or when it presents a
valid pass of the challenge step (``Limiter.challenge``). Standing lasts ``ttl`` seconds,
renewed while the client keeps coming.

Opt-in: ``Standing(limiter, when=monitor)``. Admission control (``Limiter.admission``)
gives known clients its highest priority level, so they are shed last (always: a saturated
app sheds newcomers before its regulars, and the anomaly detector may lag the flood by a
few seconds). During an anomaly (``when``):

- a client unknown to this worker is looked up in the store (once);
- the challenge step does not challenge known clients;
- the shield's containment (``monitor.Shield``) does not throttle them;
- nothing is counted and nobody is promoted: history counts only from outside
  anomalies, so a flood cannot earn standing.

**Costs.** Without an anomaly: per allowed request, one clock read and one or two dict
look-ups (a counter bumped in the client's history, or its standing found); no store call.
A client's promotion is queued and written to the store in one pipeline per
``flush_interval``, inline on the request that finds the interval over (no background
thread). During an anomaly, a client unknown to this worker is looked up in the store once
(``GET``), and the answer, yes or no, is cached. Inside an event loop (the ASGI entries)
these calls run in the loop's default executor, never on the loop: a client looked up
there is unknown until the answer is in.

**Memory.** At most ``max_clients`` histories, ``max_clients`` known clients and
``max_clients`` cached answers; the oldest go first (100,000 histories measured 11 MB,
the client keys' strings aside).

**Sharing.** On Redis (``RedisStorage`` with a sync client: by default the limiter's own
storage), a known client is the key ``<prefix>{standing:<client key>}``, expiring after
``ttl``; every worker reads and writes the same keys. Any other storage keeps standing in
this worker only. A store that fails is logged once and standing goes on local-only for
``retry_after`` seconds; it never refuses a request.

Thread-safe: the counters are plain dict updates under the GIL (two threads counting one
client's request at the same instant may count it once); promotions, evictions and the
store's queue take a lock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._errors import ConfigError
from ._exchange import CHALLENGE_KEY

if TYPE_CHECKING:
    from ._request import RequestView

__all__ = ["Standing"]

logger = logging.getLogger("throttlekit")

_DEFAULT: Any = object()
_KNOWN = "known"  # the challenge step's mark of a valid pass (_challenge.step.KNOWN)


def _redis(storage: Any) -> Any:
    """The sync Redis client of a RedisStorage, or None (another store, or async only)."""
    if type(storage).__name__ != "RedisStorage" or not hasattr(storage, "family"):
        return None
    try:
        return storage.sync_client()
    except Exception:  # an async-only RedisStorage: standing stays in this worker
        return None


def _positive(name: str, value: object, integer: bool = False) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or value <= 0:  # type: ignore[operator]
        what = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"standing: {name} must be {what}, got {value!r}")
    return value


def _switch(when: object) -> tuple[Callable[[], Any] | None, Any]:
    """(a callable to ask, None when a monitor tells us) and the monitor, if any."""
    if hasattr(when, "on_anomaly") and hasattr(when, "anomaly"):
        return None, when
    if callable(when):
        return when, None
    raise ConfigError("standing: when must be a Monitor (standing counts during its "
                      f"anomalies) or a zero-argument callable, got {when!r}")


class Standing:
    """Which clients of ``limiter`` are known (see the module docstring).

    Args:
        limiter: the Limiter whose allowed requests build standing; the standing is
            installed on it (``limiter.engine.standing``), one per limiter.
        when: the anomaly switch: a ``Monitor`` (its anomalies on all traffic) or a
            zero-argument callable, true during an anomaly.
        min_requests: allowed requests that make a history.
        min_age: seconds between a client's first request and its promotion.
        ttl: seconds standing lasts after the client's last promotion or renewal (renewed
            when less than half is left and the client comes back outside an anomaly).
        max_clients: the bound of each of the three tables (histories, known clients,
            cached store answers).
        storage: where standing is shared: a ``RedisStorage`` (sync client), or None for
            this worker only. By default the limiter's storage when it is one.
        flush_interval: seconds between writes of new standing to the store.
        retry_after: seconds of local-only standing after the store failed.
        clock: seconds since the epoch (the limiter's clock by default): standing is
            shared, so every worker must agree on it.
        dry_run: build and share standing, but give nobody its effects (``known`` is
            always False; watch ``len(standing)``, ``memory()`` and ``is_known``).
    """

    __slots__ = (
        "_anomaly",
        "_answers",
        "_client",
        "_down_until",
        "_flush_at",
        "_history",
        "_known",
        "_lock",
        "_pending",
        "_queue",
        "_renew",
        "_storage",
        "_warned",
        "_when",
        "clock",
        "dry_run",
        "flush_interval",
        "max_clients",
        "min_age",
        "min_requests",
        "monitor",
        "promotions",
        "retry_after",
        "ttl",
    )

    def __init__(
        self, limiter: Any, *, when: Any, min_requests: int = 10, min_age: float = 60.0,
        ttl: float = 86400.0, max_clients: int = 100_000, storage: Any = _DEFAULT,
        flush_interval: float = 1.0, retry_after: float = 30.0,
        clock: Callable[[], float] | None = None, dry_run: bool = False,
    ) -> None:
        engine = getattr(limiter, "engine", None)
        if engine is None or not hasattr(engine, "standing"):
            raise ConfigError(f"standing: {limiter!r} is not a throttlekit Limiter")
        if engine.standing is not None:
            raise ConfigError("this limiter has a standing already (one per limiter)")
        self._when, self.monitor = _switch(when)
        self.min_requests: int = _positive("min_requests", min_requests, integer=True)
        self.min_age = float(_positive("min_age", min_age))
        self.ttl = float(_positive("ttl", ttl))
        self.max_clients: int = _positive("max_clients", max_clients, integer=True)
        self.flush_interval = float(_positive("flush_interval", flush_interval))
        self.retry_after = float(_positive("retry_after", retry_after))
        if not isinstance(dry_run, bool):
            raise ConfigError(f"standing: dry_run must be True or False, got {dry_run!r}")
        self.dry_run = dry_run
        if clock is not None and not callable(clock):
            raise ConfigError(f"standing: clock must be a zero-argument callable, got {clock!r}")
        self.clock: Callable[[], float] = clock or getattr(limiter, "clock", None) or time.time
        if storage is _DEFAULT:
            storage = getattr(limiter, "storage", None)
            self._client = _redis(storage)
        elif storage is None:
            self._client = None
        else:
            self._client = _redis(storage)
            if self._client is None:
                raise ConfigError("standing: storage must be a RedisStorage with a sync "
                                  f"client (or None: this worker only), got {storage!r}")
        self._storage: Any = storage if self._client is not None else None
        self._renew = self.ttl / 2
        #: client key -> [first request, requests allowed]
        self._history: dict[str, list[Any]] = {}
        #: client key -> when its standing ends
        self._known: dict[str, float] = {}
        #: client key -> the store's answer (during an anomaly)
        self._answers: dict[str, bool] = {}
        self._queue: list[str] = []
        #: keys being looked up in a worker thread (inside an event loop)
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._flush_at = self.clock() + self.flush_interval
        self._down_until = 0.0
        self._warned = False
        self._anomaly = False
        #: clients promoted by this worker (a counter)
        self.promotions = 0
        if self.monitor is not None:
            self._anomaly = bool(self.monitor.anomaly)
            self.monitor.on_anomaly(self._on_anomaly)
        engine.standing = self

    def __repr__(self) -> str:
        where = "shared" if self._client is not None else "local"
        return (f"Standing({where}, known={len(self._known)}, histories={len(self._history)}, "
                f"anomaly={self.active()})")

    def _on_anomaly(self, anomaly: Any) -> None:
        if getattr(anomaly, "scope", None) not in (None, "*"):
            return  # a rule's anomaly: not the traffic's
        self._anomaly = anomaly.kind == "anomaly_started"

    def active(self) -> bool:
        """True during an anomaly (``when``): promotion frozen, standing in effect."""
        when = self._when
        if when is None:
            return self._anomaly
        try:
            return bool(when())
        except Exception:  # a failing switch: no anomaly (standing has no effect)
            return False

    # -- the pipeline: every allowed request, and refusals -----------------------------

    def seen(self, view: RequestView) -> bool:
        """Count an allowed request of ``view``'s client (the pipeline calls this);
        returns whether the client is known (what :meth:`known` says), so that the
        pipeline asks once."""
        key = view.client_key
        if key is None:
            return self.known(view)
        now = self.clock()
        if self._queue and now >= self._flush_at:  # (a local standing queues nothing)
            self._flush(now)
        until = self._known.get(key)
        if until is not None and until > now:  # known (the common case: no anomaly asked)
            if until - now < self._renew and not (
                    self._anomaly if self._when is None else self.active()):
                self._promote(key, now)
            return not self.dry_run
        # during an anomaly nothing counts: a flood cannot earn standing
        if self._anomaly if self._when is None else self.active():
            return self.known(view)
        if until is not None:  # expired: earned again from the start
            self._known.pop(key, None)
        history = self._history.get(key)
        if history is None:
            self._start(key, now)
        else:
            history[1] += 1
            if history[1] >= self.min_requests and now - history[0] >= self.min_age:
                self._promote(key, now)
                return not self.dry_run
        return self._holds_pass(view)

    def refused(self, view: RequestView) -> None:
        """A request of ``view``'s client was refused by the rules: its history starts
        again, and its standing in this worker ends."""
        key = view.client_key
        if key is None:
            return
        self._history.pop(key, None)
        self._known.pop(key, None)
        self._answers.pop(key, None)

    def _start(self, key: str, now: float) -> None:
        history = self._history
        if len(history) >= self.max_clients:
            with self._lock:
                _evict(history, self.max_clients - 1)
        history[key] = [now, 1]

    def _promote(self, key: str, now: float) -> None:
        with self._lock:
            known = self._known
            known.pop(key, None)  # to the end: the oldest standing is evicted first
            if len(known) >= self.max_clients:
                _evict(known, self.max_clients - 1)
            known[key] = now + self.ttl
            self._history.pop(key, None)
            self.promotions += 1
            if self._client is not None and len(self._queue) < self.max_clients:
                self._queue.append(key)

    # -- the effects: is this request's client known? ------------------------------------

    def known(self, view: RequestView) -> bool:
        """Whether ``view``'s client is known: a valid pass of the challenge step, or
        standing here, or (during an anomaly) in the store."""
        if self.dry_run:
            return False  # promotions, counts and is_known only: no effect
        if self._holds_pass(view):
            return True
        key = view.client_key
        if key is None:
            return False
        until = self._known.get(key)
        if until is not None:
            return until > self.clock()
        if self._client is None or not self.active():
            return False
        answer = self._answers.get(key)
        if answer is None:
            answer = self._look_up(key)
        return answer

    def _holds_pass(self, view: RequestView) -> bool:
        """The challenge step found a valid pass on this request (not in dry run)."""
        mark = view.raw.get(CHALLENGE_KEY)
        return (mark is not None and getattr(mark, "action", None) == _KNOWN
                and not self.dry_run)

    def is_known(self, key: str) -> bool:
        """Whether the client ``key`` has standing in this worker (no store call)."""
        until = self._known.get(key)
        return until is not None and until > self.clock()

    def __len__(self) -> int:
        """Clients known in this worker."""
        return len(self._known)

    def memory(self) -> dict[str, int]:
        """Entries held: histories, known clients, cached store answers, queued writes."""
        return {"histories": len(self._history), "known": len(self._known),
                "answers": len(self._answers), "queued": len(self._queue)}

    # -- the store -----------------------------------------------------------------------

    def _key(self, client: str) -> str:
        family: str = self._storage.family(f"standing:{client}")
        return family

    def _look_up(self, key: str) -> bool:
        """The store's answer for ``key``, asked inline; inside an event loop, asked in a
        worker thread instead (the loop never waits on a round trip): unknown until the
        answer is in."""
        loop = _running_loop()
        if loop is None:
            return self._fetch(key)
        pending = self._pending
        if key not in pending and len(pending) < self.max_clients:
            pending.add(key)
            loop.run_in_executor(None, self._fetch, key)
        return False

    def _fetch(self, key: str) -> bool:
        now = self.clock()
        answer = False
        try:
            if now >= self._down_until:
                try:
                    answer = self._client.get(self._key(key)) is not None
                except Exception as exc:
                    self._failed(exc, now)
                    return False  # not cached: asked again once the store is back
            self._remember(key, answer, now)
        finally:
            self._pending.discard(key)
        return answer

    def _remember(self, key: str, answer: bool, now: float) -> None:
        answers = self._answers
        if len(answers) >= self.max_clients:
            with self._lock:
                _evict(answers, self.max_clients - 1)
        answers[key] = answer
        if answer:  # known elsewhere: known here too (until the store's expiry, about)
            with self._lock:
                known = self._known
                if len(known) >= self.max_clients:
                    _evict(known, self.max_clients - 1)
                known[key] = now + self._renew

    def _flush(self, now: float) -> None:
        """Write the queued promotions in one pipeline, once per interval: inline, or in a
        worker thread inside an event loop."""
        with self._lock:
            if now < self._flush_at or not self._queue:
                return
            self._flush_at = now + self.flush_interval
            queue, self._queue = self._queue, []
        if now < self._down_until:
            return  # local-only for now: these stay known here
        loop = _running_loop()
        if loop is None:
            self._write(queue, now)
        else:
            loop.run_in_executor(None, self._write, queue, now)

    def _write(self, queue: list[str], now: float) -> None:
        ttl = max(1, int(self.ttl))
        try:
            pipe = self._client.pipeline(transaction=False)
            for key in queue:
                pipe.set(self._key(key), b"1", ex=ttl)
            pipe.execute()
        except Exception as exc:
            self._failed(exc, now)

    def flush(self) -> None:
        """Write the queued promotions now, inline (tests, shutdown)."""
        with self._lock:
            queue, self._queue = self._queue, []
        if queue and self._client is not None:
            self._write(queue, self.clock())

    def _failed(self, exc: Exception, now: float) -> None:
        self._down_until = now + self.retry_after
        if not self._warned:
            self._warned = True
            logger.warning(
                "throttlekit standing: the store failed (%s); standing is local to this "
                "worker for %gs at a time until it answers", exc, self.retry_after,
                extra={"throttlekit_event": "standing_store_failed"},
            )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _evict(table: dict[str, Any], keep: int) -> None:
    """Drop the oldest entries of ``table`` down to ``keep`` (the caller holds the lock)."""
    try:
        while len(table) > keep:
            del table[next(iter(table))]
    except (RuntimeError, StopIteration, KeyError):  # changed meanwhile: next time
        pass
