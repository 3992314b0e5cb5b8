"""Resilience: one wrapper around a remote store that owns what a store failure means.

:class:`ResilientStore` wraps a remote backend (Redis, memcached, a custom ``remote``
store) and owns, in one place:

* the **breaker**: a failed store is left alone for ``retry_interval`` seconds, then a
  request tries it again (lazily, no thread);
* the **fail policy** (``on_storage_error``): what the store answers while it fails:
  ``"allow"`` (fail open), ``"deny"`` (fail closed) or ``"local"`` (the same limits in an
  in-process :class:`~throttlekit.storage.MemoryStorage`, the one fallback store);
  failures are logged at most once per ``error_log_interval`` seconds;
* the **local denial cache** (:class:`~throttlekit._denials.DenialCache`) and the reads of
  the store's generation that keep it honest after admin changes.

Request paths call :meth:`ResilientStore.apply` / :meth:`aapply` (which never raise: a
policy answer carries ``BatchResult.policy``), :meth:`decide` / :meth:`adecide` (one key,
denial cache first), :meth:`lease` / :meth:`alease` and :meth:`ban` / :meth:`aban`. Admin
operations (``reset``, ``block``, ``unblock``, ``blocked``, leases' ``release``, ...) pass
through to the inner store and raise its errors: an operator must know a change failed.

A memory store is never wrapped (:func:`resilient` returns it as it is): it cannot fail
the way a server does, and its fast paths stay free of the wrapper.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

from ._algorithms import Algorithm
from ._decision import Decision, most_restrictive
from ._denials import DenialCache
from ._rates import Rate
from .storage.base import BatchResult, Block, BoundBatch, BoundHit, Check, Storage
from .storage.memory import MemoryStorage

if TYPE_CHECKING:
    from ._escalation import Escalation

__all__ = [
    "ON_STORAGE_ERROR",
    "Breaker",
    "Leased",
    "ResilientStore",
    "deny_decision",
    "resilient",
]

logger = logging.getLogger("throttlekit")

#: the fail policies: what a failing remote store answers
ON_STORAGE_ERROR = ("allow", "deny", "local")
_new = tuple.__new__
_NO_RATE = Rate(1, 1.0)
_T = TypeVar("_T")


class _Failed(enum.Enum):
    """What :meth:`ResilientStore._call` answers when the store was left alone or failed."""

    FAILED = 0


_FAILED: Literal[_Failed.FAILED] = _Failed.FAILED


def deny_decision(checks: Sequence[Check], retry: float, degraded: bool = True) -> Decision:
    """The one refusal of the ``"deny"`` policy (and of a rule function that raised under
    it): the first dependent check's rate, waiting ``retry`` seconds; with no dependent
    check the first check's; with no check at all ``Rate(1, 1.0)`` and limit 0."""
    alg: Algorithm | None = None
    for c in checks:
        if not c.independent:
            alg = c.algorithm
            break
    if alg is None and checks:
        alg = checks[0].algorithm
    if alg is None:
        return _new(Decision, (False, 0, 0, retry, retry, _NO_RATE, degraded))
    return _new(Decision, (False, alg.capacity, 0, retry, retry, alg.rate, degraded))


class Breaker:
    """Open (the store is left alone) for ``retry_interval`` seconds after a failure."""

    __slots__ = ("retry_interval", "until")

    def __init__(self, retry_interval: float) -> None:
        self.retry_interval = retry_interval
        #: time.monotonic() until which the breaker is open (0.0: closed)
        self.until = 0.0

    def trip(self, mono: float) -> None:
        self.until = mono + self.retry_interval


class Leased(NamedTuple):
    """The answer of :meth:`ResilientStore.lease`: the index of the first full lease set
    (-1: every slot taken), the store holding the slots (None: nothing to release) and
    the fail policy that answered (None: the store did)."""

    failed: int
    holder: Storage | None
    policy: str | None


class ResilientStore(Storage):
    """A remote store with a breaker, a fail policy, a fallback store and a denial cache.

    ``policy``: ``"allow"``, ``"deny"`` or ``"local"``; ``denial_cache_size``: refused keys
    remembered (0: no denial cache); ``clock``: the limiter's clock, or None.
    """

    remote = True

    def __init__(
        self,
        inner: Storage,
        *,
        policy: str = "local",
        retry_interval: float = 1.0,
        error_log_interval: float = 60.0,
        denial_cache_size: int = 10_000,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.inner = inner
        self.policy = policy
        self.retry_interval = retry_interval
        self.error_log_interval = error_log_interval
        self.breaker = Breaker(retry_interval)
        #: the in-process store of the "local" policy, made on its first use
        self.fallback: MemoryStorage | None = None
        #: the local cache of refusals (see throttlekit._denials); None when turned off
        self.denials: DenialCache | None = (
            DenialCache(denial_cache_size, clock) if denial_cache_size else None
        )
        self.last_error_log = -math.inf
        self.algorithms = inner.algorithms
        self.shared = inner.shared
        self.supports_leases = inner.supports_leases
        self.supports_escalation = inner.supports_escalation
        self.local_hits = inner.local_hits  # (see bind)
        self.local_blocks = inner.local_blocks

    def __repr__(self) -> str:
        return f"ResilientStore({self.inner!r}, policy={self.policy!r})"

    def bind(self, algorithm: Algorithm, prefix: str = "") -> BoundHit:
        """The inner store's bound hit, its round trips through this wrapper's ``apply``
        (a ``local_hits`` store: each limiter's own policy and breaker)."""
        return self.inner.bind_through(self.apply, algorithm, prefix)

    def bind_batch(self, groups: Sequence[Sequence[Algorithm]], prefix: str = "") -> BoundBatch:
        return self.inner.bind_batch_through(self.apply, groups, prefix)

    # -- failures ------------------------------------------------------------------------

    def failed(self, exc: BaseException) -> None:
        """The store raised ``exc``: open the breaker and log (at most once per
        ``error_log_interval``)."""
        mono = time.monotonic()
        if isinstance(exc, UnicodeEncodeError):
            # A string the store cannot encode is this call's fault, not the store's: the
            # breaker stays closed (keys are made encodable in _keys; this is a backstop).
            if mono - self.last_error_log >= self.error_log_interval:
                self.last_error_log = mono
                logger.error("a value could not be encoded for the store (%s); "
                             "this call answered with on_storage_error=%r", exc, self.policy)
            return
        self.breaker.trip(mono)
        if mono - self.last_error_log >= self.error_log_interval:
            self.last_error_log = mono
            logger.error(
                "storage %r failed (%s: %s); answering with on_storage_error=%r "
                "and retrying the store in %.1fs",
                self.inner, type(exc).__name__, exc, self.policy, self.retry_interval,
            )

    def local(self) -> MemoryStorage:
        """The fallback store (made on first use): the one store of the "local" policy."""
        fallback = self.fallback
        if fallback is None:
            fallback = self.fallback = MemoryStorage()
        return fallback

    def answer(self, checks: Sequence[Check], consume: bool, now: int | None,
               block_keys: Sequence[str]) -> BatchResult:
        """What the fail policy answers for a batch the store cannot."""
        policy = self.policy
        if policy == "local":
            r = self.local().apply(checks, consume=consume, now=now, block_keys=block_keys)
            return BatchResult([d._replace(degraded=True) for d in r.decisions], r.blocked,
                               policy)
        if policy == "allow":
            decisions = [
                _new(Decision, (True, a.capacity, a.capacity, 0.0, 0.0, a.rate, True))
                for a in (c.algorithm for c in checks)
            ]
        else:
            retry = self.retry_interval
            decisions = [deny_decision((c,), retry) for c in checks]
        return BatchResult(decisions, [None] * len(block_keys), policy)

    def _call(self, method: Callable[..., _T], *args: Any,
              **kwargs: Any) -> _T | Literal[_Failed.FAILED]:
        """``method(*args, **kwargs)``, a method of the inner store, behind the breaker: its
        answer (the breaker closes), or ``_FAILED`` when the breaker is open or it raised
        (then :meth:`failed` records it). The one guard of the request paths."""
        breaker = self.breaker
        if breaker.until and time.monotonic() < breaker.until:
            return _FAILED
        try:
            result = method(*args, **kwargs)
        except Exception as exc:  # a failing store must never fail the request
            self.failed(exc)
            return _FAILED
        breaker.until = 0.0
        return result

    async def _acall(self, method: Callable[..., Awaitable[_T]], *args: Any,
                     **kwargs: Any) -> _T | Literal[_Failed.FAILED]:
        """Async twin of :meth:`_call`."""
        breaker = self.breaker
        if breaker.until and time.monotonic() < breaker.until:
            return _FAILED
        try:
            result = await method(*args, **kwargs)
        except Exception as exc:
            self.failed(exc)
            return _FAILED
        breaker.until = 0.0
        return result

    # -- requests: the policy answers for a failing store ---------------------------------

    def apply(self, checks: Sequence[Check], *, consume: bool = True, now: int | None = None,
              block_keys: Sequence[str] = ()) -> BatchResult:
        """The inner store's answer, or the fail policy's (``policy`` set); never raises."""
        result = self._call(self.inner.apply, checks, consume=consume, now=now,
                            block_keys=block_keys)
        return self.answer(checks, consume, now, block_keys) if result is _FAILED else result

    async def aapply(self, checks: Sequence[Check], *, consume: bool = True,
                     now: int | None = None, block_keys: Sequence[str] = ()) -> BatchResult:
        """Async twin of :meth:`apply`."""
        result = await self._acall(self.inner.aapply, checks, consume=consume, now=now,
                                   block_keys=block_keys)
        return self.answer(checks, consume, now, block_keys) if result is _FAILED else result

    def decide(self, owner: Hashable, key: str, checks: Sequence[Check], consume: bool,
               now: int | None) -> Decision:
        """One key under every check of ``checks`` (``Limiter.hit``/``test``): a cached
        refusal of (``owner``, ``key``) first, then the store (or the fail policy)."""
        cost = checks[0].cost
        denials = self.denials
        epoch = 0
        if denials is not None:
            cached = self.refusal(owner, key, cost, now)
            if cached is not None:
                return cached
            epoch = denials.epoch
        result = self.apply(checks, consume=consume, now=now)
        return self._decided(result, owner, key, cost, consume, now, epoch)

    async def adecide(self, owner: Hashable, key: str, checks: Sequence[Check],
                      consume: bool, now: int | None) -> Decision:
        """Async twin of :meth:`decide` (the denial cache first there too)."""
        cost = checks[0].cost
        denials = self.denials
        epoch = 0
        if denials is not None:
            cached = await self.arefusal(owner, key, cost, now)
            if cached is not None:
                return cached
            epoch = denials.epoch
        result = await self.aapply(checks, consume=consume, now=now)
        return self._decided(result, owner, key, cost, consume, now, epoch)

    def _decided(self, result: BatchResult, owner: Hashable, key: str, cost: int,
                 consume: bool, now: int | None, epoch: int) -> Decision:
        policy = result.policy
        if policy is not None:
            # "allow"/"deny" speak with the first rate; "local" decided like the store
            return most_restrictive(result.decisions) if policy == "local" else \
                result.decisions[0]
        decision = most_restrictive(result.decisions)
        self.note(owner, key, cost, consume, now, decision, epoch)
        return decision

    def lease(self, keys: Sequence[str], limits: Sequence[int], lease_id: str,
              timeout: float, now: int | None) -> Leased:
        """Take concurrency slots in the store, or as the fail policy says; never raises."""
        failed = self._call(self.inner.acquire, keys, limits, lease_id, timeout, now)
        if failed is _FAILED:
            return self._lease_policy(keys, limits, lease_id, timeout, now)
        return Leased(failed, self.inner, None)

    async def alease(self, keys: Sequence[str], limits: Sequence[int], lease_id: str,
                     timeout: float, now: int | None) -> Leased:
        """Async twin of :meth:`lease`."""
        failed = await self._acall(self.inner.aacquire, keys, limits, lease_id, timeout, now)
        if failed is _FAILED:
            return self._lease_policy(keys, limits, lease_id, timeout, now)
        return Leased(failed, self.inner, None)

    def _lease_policy(self, keys: Sequence[str], limits: Sequence[int], lease_id: str,
                      timeout: float, now: int | None) -> Leased:
        policy = self.policy
        if policy == "allow":
            return Leased(-1, None, policy)
        if policy == "deny":
            return Leased(0, None, policy)
        local = self.local()
        return Leased(local.acquire(keys, limits, lease_id, timeout, now), local, policy)

    def escalate(self, escalation: Escalation, key: str, draw: float, now: int | None
                 ) -> tuple[int, int]:
        """The store's chain of bans moved on, or the fail policy's: the fallback store's
        chain (``"local"``), else an unescalated ban (level 1); never raises."""
        result = self._call(self.inner.escalate, escalation, key, draw, now)
        return self._unchained(escalation, key, draw, now) if result is _FAILED else result

    async def aescalate(self, escalation: Escalation, key: str, draw: float,
                        now: int | None) -> tuple[int, int]:
        """Async twin of :meth:`escalate`."""
        result = await self._acall(self.inner.aescalate, escalation, key, draw, now)
        return self._unchained(escalation, key, draw, now) if result is _FAILED else result

    def _unchained(self, escalation: Escalation, key: str, draw: float, now: int | None
                   ) -> tuple[int, int]:
        if self.policy == "local":
            return self.local().escalate(escalation, key, draw, now)
        return 1, escalation.step(None, 0, draw)[1]

    def ban(self, key: str, ttl: float | None, reason: str, now: int | None,
            policy: str | None) -> None:
        """A ban a rule made: into the fallback store when ``policy`` (the one of the
        batch that made it) is ``"local"``, else into the store; a failure is logged.
        The ban is cached here at once (see :meth:`_banned`), and every other worker drops
        its cached refusals with the generation: they would answer the banned client 429
        where the store answers 403."""
        target = self.fallback if policy == "local" and self.fallback is not None else self.inner
        try:
            target.block(key, ttl, reason, now)
        except Exception as exc:
            self.failed(exc)
            return
        if self._banned(target, key, ttl, now):
            self._call(self.next_generation)

    async def aban(self, key: str, ttl: float | None, reason: str, now: int | None,
                   policy: str | None) -> None:
        """Async twin of :meth:`ban`."""
        target = self.fallback if policy == "local" and self.fallback is not None else self.inner
        try:
            await target.ablock(key, ttl, reason, now)
        except Exception as exc:
            self.failed(exc)
            return
        if self._banned(target, key, ttl, now):
            await self._acall(self.anext_generation)

    def _banned(self, target: Storage, key: str, ttl: float | None, now: int | None) -> bool:
        """A ban just made in ``target``: whether it is the store's (then the generation
        moves on). There it is cached at once, and this worker's cached refusals stay: a
        cached block is looked up before them (``_denials.cached_denial``), so the banned
        client gets 403 here while the other clients' refusals still hold (a ban storm
        does not empty the cache). A ban in the fallback store drops them."""
        denials = self.denials
        if target is not self.inner:
            if denials is not None:
                denials.forget(blocks=False)
            return False
        if denials is not None:
            denials.banned(key, ttl, now)
        return True

    # -- the local denial cache ------------------------------------------------------------

    def refusal(self, owner: Hashable, key: str, cost: int, now: int | None) -> Decision | None:
        """The cached refusal of (``owner``, ``key``), the store's generation read first
        when due (see throttlekit._denials). Only with a denial cache."""
        denials = self.denials
        assert denials is not None
        if denials.generation is None and denials.stale():
            self.check_generation()
        cached = denials.get(owner, key, cost, now)
        if cached is not None and denials.due():
            self.check_generation()  # about once a second: did an admin change it?
            cached = denials.get(owner, key, cost, now)
        return cached

    async def arefusal(self, owner: Hashable, key: str, cost: int,
                       now: int | None) -> Decision | None:
        """Async twin of :meth:`refusal`."""
        denials = self.denials
        assert denials is not None
        if denials.generation is None and denials.stale():
            await self.acheck_generation()
        cached = denials.get(owner, key, cost, now)
        if cached is not None and denials.due():
            await self.acheck_generation()
            cached = denials.get(owner, key, cost, now)
        return cached

    def note(self, owner: Hashable, key: str, cost: int, consume: bool, now: int | None,
             decision: Decision, epoch: int) -> None:
        """What the store answered for (``owner``, ``key``): a refusal is remembered, our
        own charge makes a remembered refusal's numbers stale."""
        denials = self.denials
        if denials is None:
            return
        if decision.allowed:
            if consume and cost:
                denials.charged(owner, key)
        else:
            denials.remember(owner, key, cost, now, decision, epoch)

    def first_generation(self) -> None:
        """Read the store's generation if it was never read (before the first store call:
        then refusals cached later are known not to predate an admin change)."""
        denials = self.denials
        if denials is not None and denials.generation is None and denials.stale():
            self.check_generation()

    async def afirst_generation(self) -> None:
        """Async twin of :meth:`first_generation`."""
        denials = self.denials
        if denials is not None and denials.generation is None and denials.stale():
            await self.acheck_generation()

    def check_generation(self) -> None:
        """Read the store's generation and drop every cached refusal when an admin change
        moved it (a failing read is logged; the cached refusals stay)."""
        denials = self.denials
        assert denials is not None
        generation = self._call(self.inner.generation)
        denials.saw(None if generation is _FAILED else generation)

    async def acheck_generation(self) -> None:
        """Async twin of :meth:`check_generation`."""
        denials = self.denials
        assert denials is not None
        generation = await self._acall(self.inner.ageneration)
        denials.saw(None if generation is _FAILED else generation)

    def forget(self, key: str | None = None) -> None:
        """Drop what this process remembers of ``key`` (``None``: of every key): its state
        in the fallback store and its cached refusals. The one owner of both."""
        fallback = self.fallback
        if fallback is not None:
            if key is None:
                fallback.clear()
            else:
                fallback.reset((key,))
        if self.denials is not None:
            self.denials.forget(key)

    # -- admin and the rest of the protocol: the inner store's, errors raised -------------

    def next_generation(self) -> int:
        """Move the store's generation on (an admin change of ours: our cached refusals
        went already, every other worker's go within about a second)."""
        generation = self.inner.next_generation()
        if self.denials is not None:
            self.denials.bumped(generation)
        return generation

    async def anext_generation(self) -> int:
        generation = await self.inner.anext_generation()
        if self.denials is not None:
            self.denials.bumped(generation)
        return generation

    def generation(self) -> int:
        return self.inner.generation()

    async def ageneration(self) -> int:
        return await self.inner.ageneration()

    def unsupported(self, strategy: str) -> str | None:
        return self.inner.unsupported(strategy)

    def unsupported_algorithm(self, algorithm: Algorithm) -> str | None:
        return self.inner.unsupported_algorithm(algorithm)

    def reset(self, keys: Sequence[str]) -> None:
        self.inner.reset(keys)

    async def areset(self, keys: Sequence[str]) -> None:
        await self.inner.areset(keys)

    def block(self, key: str, ttl: float | None, reason: str = "", now: int | None = None) -> None:
        self.inner.block(key, ttl, reason, now)

    async def ablock(
        self, key: str, ttl: float | None, reason: str = "", now: int | None = None
    ) -> None:
        await self.inner.ablock(key, ttl, reason, now)

    def unblock(self, key: str) -> bool:
        if self.denials is not None:  # (here at once; other workers with the generation)
            self.denials.forget()
        return self.inner.unblock(key)

    async def aunblock(self, key: str) -> bool:
        if self.denials is not None:
            self.denials.forget()
        return await self.inner.aunblock(key)

    def blocked(self, now: int | None = None) -> list[Block]:
        return self.inner.blocked(now)

    async def ablocked(self, now: int | None = None) -> list[Block]:
        return await self.inner.ablocked(now)

    def ping(self) -> bool:
        return self.inner.ping()

    def close(self) -> None:
        self.inner.close()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def acquire(
        self, keys: Sequence[str], limits: Sequence[int], lease_id: str, timeout: float,
        now: int | None = None,
    ) -> int:
        return self.inner.acquire(keys, limits, lease_id, timeout, now)

    async def aacquire(
        self, keys: Sequence[str], limits: Sequence[int], lease_id: str, timeout: float,
        now: int | None = None,
    ) -> int:
        return await self.inner.aacquire(keys, limits, lease_id, timeout, now)

    def release(self, keys: Sequence[str], lease_id: str) -> None:
        self.inner.release(keys, lease_id)

    async def arelease(self, keys: Sequence[str], lease_id: str) -> None:
        await self.inner.arelease(keys, lease_id)

    def inflight(self, key: str, now: int | None = None) -> int:
        return self.inner.inflight(key, now)

    async def ainflight(self, key: str, now: int | None = None) -> int:
        return await self.inner.ainflight(key, now)


def resilient(store: Storage, **options: Any) -> Storage:
    """``store`` wrapped in a :class:`ResilientStore` (``options``: its keyword arguments)
    when it is remote; else ``store``."""
    return ResilientStore(store, **options) if store.remote else store
