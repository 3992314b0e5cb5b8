"""Concurrency rules and priority load shedding: limits on requests *in flight*.

A rate limit counts requests over time; a concurrency rule counts those being served right
now. Each admitted request takes a **lease** in the storage (a slot with an expiry) for
every concurrency rule that applies, and gives it back when its response is finished. A
worker that dies mid-request never gives its lease back, so leases expire on their own after
``timeout`` seconds: a crashed worker cannot leak a slot for longer than that.

::

    limiter.concurrency("per-client", 4, timeout=30)            # 4 in flight per client
    limiter.concurrency("uploads", 10, key="global",             # 10 uploads in all
                        match=lambda r: r.path.startswith("/upload"))
    limiter.shed(capacity=200, priority=lambda r: 1 if r.path.startswith("/api/pay") else 0,
                 thresholds=(0.8, 1.0))

A request refused by a concurrency rule gets ``429`` (with ``Retry-After``); one refused by
load shedding gets ``503`` (with ``Retry-After``). Load shedding is Stripe's "fleet usage
load shedder": ``capacity`` is the number of requests all workers together serve at full
load; a request of priority ``p`` (``priority(view)``, an int, higher is more important) is
admitted only while fewer than ``thresholds[p] * capacity`` requests are in flight, so
low-priority traffic is refused first and the last slots are kept for critical work.

All leases of one request are taken in one storage call, all-or-nothing, after the rate
rules allowed it (the rate rules have then charged the request); safelisted requests take
no lease. They are released after the response (WSGI: when the server closes the response
iterable; ASGI: when the app returns), one more storage call.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._decision import Decision
from ._errors import ConfigError
from ._keys import admin_rule_key, rule_key
from ._rates import Rate
from ._resilience import Leased, ResilientStore
from ._rules import Verdict, escape_name, key_function, uses_form

if TYPE_CHECKING:
    from ._limiter import Limiter
    from ._request import RequestView
    from .storage.base import Storage

__all__ = ["DEFAULT_TIMEOUT", "SHED_RULE", "ConcurrencyRules", "Lease"]

logger = logging.getLogger("throttlekit")

#: default lease timeout, seconds: longer than any normal request
DEFAULT_TIMEOUT = 60.0
#: the rule name reported for load-shedding refusals
SHED_RULE = "shedding"
#: the kind of rule load shedding is, among the limiter's rule names
LOAD_SHEDDING = "load shedding rule"
_NS = "conc:"
_new = tuple.__new__
_ids = itertools.count()
_PROCESS = f"{os.getpid():x}.{os.urandom(4).hex()}."


def _lease_id() -> str:
    return _PROCESS + str(next(_ids))


def _global(view: RequestView) -> str:
    return "*"


def lease_key(rule: str, disc: str) -> str:
    """The storage key of the leases of ``rule`` for discriminator ``disc``."""
    return f"{_NS}{escape_name(rule)}:{disc}"


@dataclass(slots=True)
class _ConcRule:
    name: str
    limit: int
    key: Callable[[RequestView], Any]
    key_name: str
    match: Callable[[RequestView], Any] | None
    timeout: float
    retry_after: float
    #: the storage keys of its leases are ``prefix + discriminator``
    prefix: str = field(init=False)

    def __post_init__(self) -> None:
        self.prefix = f"{_NS}{escape_name(self.name)}:"


class _Shedding:
    __slots__ = ("capacity", "limits", "priority", "retry_after", "thresholds", "timeout")

    def __init__(self, capacity: int, priority: Callable[[RequestView], Any] | None,
                 thresholds: tuple[float, ...], timeout: float, retry_after: float) -> None:
        self.capacity = capacity
        self.priority = priority
        self.thresholds = thresholds
        #: in-flight limit per priority level
        self.limits = tuple(max(1, math.floor(t * capacity)) for t in thresholds)
        self.timeout = timeout
        self.retry_after = retry_after


class Lease:
    """The slots one request holds; :meth:`release` (or :meth:`arelease`) gives them back.
    Releasing twice is harmless; a failing store is logged, never raised (the leases then
    expire on their own)."""

    __slots__ = ("id", "keys", "owner", "storage")

    def __init__(self, owner: ConcurrencyRules, storage: Storage, keys: list[str],
                 lease_id: str) -> None:
        self.owner = owner
        self.storage = storage
        self.keys = keys
        self.id = lease_id

    def release(self) -> None:
        keys, self.keys = self.keys, []
        if keys:
            try:
                self.storage.release(keys, self.id)
            except Exception as exc:
                self.owner.log_failure("release", exc)

    async def arelease(self) -> None:
        keys, self.keys = self.keys, []
        if keys:
            try:
                await self.storage.arelease(keys, self.id)
            except Exception as exc:
                self.owner.log_failure("release", exc)


def _duration(value: Any, what: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        0 < value < 10 * 86400
    ):
        raise ConfigError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


class ConcurrencyRules:
    """The concurrency rules and load shedding of one limiter. Replaced whole on reload."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.rules: tuple[_ConcRule, ...] = ()
        self.shedding: _Shedding | None = None
        self.names: dict[str, str] = {}
        #: some rule's key, match or priority function reads ``view.form``
        self.needs_form = False
        self._last_log = -math.inf

    @classmethod
    def of(cls, limiter: Limiter) -> ConcurrencyRules:
        """The limiter's concurrency rules, or new empty ones to :meth:`install`."""
        conc = limiter.engine.concurrency
        return conc if conc is not None else cls(limiter)

    @classmethod
    @contextlib.contextmanager
    def editing(cls, limiter: Limiter) -> Iterator[ConcurrencyRules]:
        """The limiter's concurrency rules to change, put in force after the change; under
        the engine's ``changing`` lock (a reload swaps these rules too: _registration)."""
        with limiter.engine.changing:
            conc = cls.of(limiter)
            yield conc
            conc.install()

    def install(self) -> None:
        """Put these rules in force (after a change: ``Limiter.concurrency``/``shed``)."""
        engine = self.limiter.engine
        if self.needs_form:
            engine.rules.needs_form = True
        for name, kind in self.names.items():  # one name, one rule: a throttle named so
            engine.rules.names.setdefault(name, kind)  # is refused
        engine.concurrency = self

    def __bool__(self) -> bool:
        return bool(self.rules) or self.shedding is not None

    # -- registration --------------------------------------------------------------------

    def _check_storage(self) -> None:
        storage = self.limiter.storage
        if not getattr(storage, "supports_leases", False):
            raise ConfigError(
                f"concurrency rules need a storage with leases (memory, Redis); "
                f"{type(storage).__name__} has none"
            )

    def refuse_taken(self, name: str, ours: str | None = None) -> None:
        """A ConfigError when ``name`` is a rule of the limiter of another kind than
        ``ours`` (None: any rule)."""
        kind = self.limiter.engine.rules.names.get(name, ours)
        if kind != ours:
            raise ConfigError(f"duplicate rule name {name!r} (already a {kind})")

    def add(self, name: str, limit: int, *, key: Any = None,
            match: Callable[[RequestView], Any] | None = None, timeout: float | None = None,
            retry_after: float | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a rule name must be a non-empty string, got {name!r}")
        if name in self.names or name == SHED_RULE:
            kind = "concurrency rule" if self.names.get(name) == "concurrency" else LOAD_SHEDDING
            raise ConfigError(f"duplicate rule name {name!r} (already a {kind})")
        what = f"concurrency {name!r}"
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"{what}: limit must be a positive integer, got {limit!r}")
        if match is not None and not callable(match):
            raise ConfigError(f"{what}: match must be a callable, got {match!r}")
        self._check_storage()
        keyf: Callable[[RequestView], Any]
        if key is None or key == "global":
            keyf, key_name = _global, "global"
        else:
            keyf = key_function(key, what)
            key_name = key if isinstance(key, str) else getattr(key, "__name__", "function")
        rule = _ConcRule(name, limit, keyf, key_name, match,
                         _duration(timeout, f"{what}: timeout", DEFAULT_TIMEOUT),
                         _duration(retry_after, f"{what}: retry_after", 1.0))
        self.needs_form = self.needs_form or uses_form(keyf, match)
        self.rules = (*self.rules, rule)
        self.names[name] = "concurrency"

    def set_shedding(self, capacity: int, priority: Callable[[RequestView], Any] | None = None,
                     thresholds: Sequence[float] = (0.8, 1.0), timeout: float | None = None,
                     retry_after: float | None = None) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"shed: capacity must be a positive integer, got {capacity!r}")
        if priority is not None and not callable(priority):
            raise ConfigError(f"shed: priority must be a callable, got {priority!r}")
        th = tuple(thresholds) if isinstance(thresholds, (list, tuple)) else None
        if not th or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t <= 1 for t in th
        ) or any(a > b for a, b in itertools.pairwise(th)):
            raise ConfigError(f"shed: thresholds must be increasing fractions in (0, 1], "
                              f"got {thresholds!r}")
        self._check_storage()
        self.needs_form = self.needs_form or uses_form(priority)
        self.names[SHED_RULE] = LOAD_SHEDDING  # the name its refusals and events carry
        self.shedding = _Shedding(
            capacity, priority, tuple(float(t) for t in th),
            _duration(timeout, "shed: timeout", DEFAULT_TIMEOUT),
            _duration(retry_after, "shed: retry_after", 1.0),
        )

    # -- per request ---------------------------------------------------------------------

    def log_failure(self, what: str, exc: BaseException) -> None:
        """Log that ``what`` failed, at most once per ``error_log_interval``."""
        mono = time.monotonic()
        if mono - self._last_log >= self.limiter.error_log_interval:
            self._last_log = mono
            logger.error("concurrency %s failed (%s: %s)", what,
                         type(exc).__name__, exc)

    def _plan(self, view: RequestView) -> tuple[list[str], list[int], list[tuple[Any, str]],
                                                  float]:
        """The lease keys and limits of this request (and the rule of each)."""
        keys: list[str] = []
        limits: list[int] = []
        owners: list[tuple[Any, str]] = []
        timeout = 0.0
        for rule in self.rules:
            try:
                if rule.match is not None and not rule.match(view):
                    continue
                disc = rule.key(view)
            except Exception as exc:
                self.log_failure(f"rule {rule.name!r} (match or key function)", exc)
                continue
            if disc is None:
                continue
            disc = rule_key(disc if disc.__class__ is str else str(disc))
            keys.append(rule.prefix + disc)
            limits.append(rule.limit)
            owners.append((rule, disc))
            timeout = max(timeout, rule.timeout)
        shed = self.shedding
        if shed is not None:
            level = 0
            if shed.priority is not None:
                try:
                    level = int(shed.priority(view))
                except Exception as exc:  # a broken priority function: lowest priority
                    self.log_failure("priority function", exc)
            level = min(max(level, 0), len(shed.limits) - 1)
            keys.append(_NS + SHED_RULE)
            limits.append(shed.limits[level])
            owners.append((shed, str(level)))
            timeout = max(timeout, shed.timeout)
        return keys, limits, owners, timeout

    def _refusal(self, verdict: Verdict, owner: tuple[Any, str], degraded: bool) -> Verdict:
        rule, disc = owner
        if isinstance(rule, _Shedding):
            retry = rule.retry_after
            d = _new(Decision, (False, rule.capacity, 0, retry, retry,
                                Rate(rule.capacity, rule.timeout), degraded))
            kind, name, key = "shed", SHED_RULE, None
        else:
            retry = rule.retry_after
            d = _new(Decision, (False, rule.limit, 0, retry, retry,
                                Rate(rule.limit, rule.timeout), degraded))
            kind, name, key = "throttled", rule.name, disc
        engine = self.limiter.engine
        if "throttled" in engine.listeners.active and kind == "throttled":
            engine.emit("throttled", name, key, verdict.request, d, False)
        return Verdict(False, kind, name, key, d, verdict.policies, degraded, verdict.request)

    def acquire(self, verdict: Verdict) -> tuple[Verdict, Lease | None]:
        """Take the leases of an allowed request: ``(verdict, lease)``, or a refusal."""
        if verdict.kind == "safelisted":
            return verdict, None
        keys, limits, owners, timeout = self._plan(verdict.request)
        if not keys:
            return verdict, None
        lim = self.limiter
        store = lim.store
        lease_id = _lease_id()
        now = lim.engine.now()
        if isinstance(store, ResilientStore):  # a failing store: its fail policy answers
            leased = store.lease(keys, limits, lease_id, timeout, now)
        else:
            leased = Leased(store.acquire(keys, limits, lease_id, timeout, now), store, None)
        return self._leased(verdict, owners, keys, lease_id, leased)

    async def aacquire(self, verdict: Verdict) -> tuple[Verdict, Lease | None]:
        """Async twin of :meth:`acquire`."""
        lim = self.limiter
        store = lim.store
        if not isinstance(store, ResilientStore):
            return self.acquire(verdict)
        if verdict.kind == "safelisted":
            return verdict, None
        keys, limits, owners, timeout = self._plan(verdict.request)
        if not keys:
            return verdict, None
        lease_id = _lease_id()
        leased = await store.alease(keys, limits, lease_id, timeout, lim.engine.now())
        return self._leased(verdict, owners, keys, lease_id, leased)

    def _leased(self, verdict: Verdict, owners: list[tuple[Any, str]], keys: list[str],
                lease_id: str, leased: Leased) -> tuple[Verdict, Lease | None]:
        failed, holder, policy = leased
        if failed >= 0:
            return self._refusal(verdict, owners[failed], policy is not None), None
        if holder is None:  # the "allow" policy: nothing taken, nothing to give back
            return verdict, None
        return verdict, Lease(self, holder, keys, lease_id)

    # -- inspection ------------------------------------------------------------------------

    def inflight(self, name: str, disc: str = "*") -> int:
        """Requests in flight for concurrency rule ``name`` and discriminator ``disc``
        (``"shedding"``: all requests counted by load shedding)."""
        # (a long disc is stored as its hash)
        key = _NS + SHED_RULE if name == SHED_RULE else lease_key(name, admin_rule_key(disc))
        return self.limiter.storage.inflight(key, self.limiter.engine.now())
