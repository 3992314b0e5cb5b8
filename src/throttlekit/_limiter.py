"""The Limiter: rates and strategies in, Decisions out, through one storage backend."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from ._algorithms import ALGORITHMS, Algorithm, make_algorithm
from ._decision import Decision
from ._errors import ConfigError, StorageError
from ._rates import Rate, coerce_rates
from .storage import MemoryStorage, Storage, storage_from_url
from .storage.base import Check

__all__ = ["DEFAULT_STRATEGY", "ON_STORAGE_ERROR", "Limiter"]

logger = logging.getLogger("throttlekit")

#: The two-window weighted counter: smooth (no double burst at a window boundary, unlike
#: a fixed window), O(1) state per key, one atomic operation on every backend including
#: Memcached, and within a few percent of an exact sliding log in practice.
DEFAULT_STRATEGY = "sliding_window"
ON_STORAGE_ERROR = ("allow", "deny", "local")
_new = tuple.__new__


class _Plan:
    """Rates bound to a strategy, parsed and validated once and cached by the limiter."""

    __slots__ = ("algorithms", "single")

    def __init__(self, algorithms: tuple[Algorithm, ...]) -> None:
        self.algorithms = algorithms
        self.single = algorithms[0] if len(algorithms) == 1 else None


def combine(decisions: Sequence[Decision]) -> Decision:
    """The Decision of several rates: denied when any denies, reporting the denying rate
    with the longest wait; when allowed, the rate with the least remaining."""
    if len(decisions) == 1:
        return decisions[0]
    denied = [d for d in decisions if not d.allowed]
    if denied:
        return max(denied, key=lambda d: d.retry_after)
    return min(decisions, key=lambda d: (d.remaining, -d.reset_after))


class Limiter:
    """Rate limits on top of a storage backend.

    Args:
        storage: a storage URL (``"memory://"``, ``"redis://..."``, ...) or a Storage object.
        strategy: the default algorithm: ``"sliding_window"`` (default), ``"fixed_window"``,
            ``"sliding_log"`` or ``"token_bucket"``.
        clock: zero-argument callable returning seconds since the epoch (float). When given,
            every decision uses it (backends that have their own clock, like Redis' server
            time, use this one instead). Default: the backend's own clock.
        burst: default token-bucket capacity (default: the rate's limit).
        on_storage_error: what a failing remote store answers: ``"allow"`` (fail open),
            ``"deny"`` (fail closed) or ``"local"`` (default: the same limits in an
            in-process memory store until the store answers again). Decisions made this
            way have ``degraded=True``; failures are logged at most once per
            ``error_log_interval`` seconds.
        retry_interval: seconds a failed store is left alone (circuit breaker open) before a
            request tries it again.

    Thread-safe. ``hit``/``test``/``reset`` have async twins ``ahit``/``atest``/``areset``
    that never block the event loop.
    """

    def __init__(
        self,
        storage: str | Storage = "memory://",
        *,
        strategy: str = DEFAULT_STRATEGY,
        clock: Callable[[], float] | None = None,
        burst: int | None = None,
        on_storage_error: str = "local",
        retry_interval: float = 1.0,
        error_log_interval: float = 60.0,
    ) -> None:
        if isinstance(storage, str):
            storage = storage_from_url(storage)
        elif not isinstance(storage, Storage):
            raise ConfigError(f"storage must be a URL or a Storage object, got {storage!r}")
        if clock is not None and not callable(clock):
            raise ConfigError(f"clock must be a zero-argument callable, got {clock!r}")
        if on_storage_error not in ON_STORAGE_ERROR:
            raise ConfigError(
                f"on_storage_error must be one of {', '.join(ON_STORAGE_ERROR)}, "
                f"got {on_storage_error!r}"
            )
        for name, value in (("retry_interval", retry_interval),
                            ("error_log_interval", error_log_interval)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{name} must be a non-negative number, got {value!r}")
        self.storage: Storage = storage
        self.clock = clock
        self.on_storage_error = on_storage_error
        self.retry_interval = float(retry_interval)
        self.error_log_interval = float(error_log_interval)
        self._check_strategy(strategy)
        self.strategy = strategy
        if burst is not None:
            make_algorithm("token_bucket", Rate(1, 1.0), burst)  # validates
        self.burst = burst
        self._plans: dict[Any, _Plan] = {}
        self._fallback: MemoryStorage | None = None
        self._broken_until = 0.0
        self._last_error_log = -float("inf")

    def __repr__(self) -> str:
        return f"Limiter(storage={self.storage!r}, strategy={self.strategy!r})"

    # -- configuration --------------------------------------------------------------------

    def _check_strategy(self, strategy: str) -> None:
        if strategy not in ALGORITHMS:
            raise ConfigError(
                f"unknown strategy {strategy!r}; expected one of {', '.join(sorted(ALGORITHMS))}"
            )
        why = self.storage.unsupported(strategy)
        if why:
            raise ConfigError(f"strategy {strategy!r} is not available: {why}")

    def plan(self, rates: Any, strategy: str | None = None, burst: int | None = None) -> _Plan:
        """Parse and validate ``rates`` under ``strategy`` once; cached."""
        cache_key = (rates if not isinstance(rates, list) else tuple(rates), strategy, burst)
        try:
            return self._plans[cache_key]
        except KeyError:
            pass
        except TypeError:
            raise ConfigError(f"invalid rates {rates!r}") from None
        strategy = strategy or self.strategy
        self._check_strategy(strategy)
        if burst is None and strategy == "token_bucket":
            burst = self.burst
        rate_list = coerce_rates(rates)
        plan = _Plan(tuple(make_algorithm(strategy, r, burst) for r in rate_list))
        for alg in plan.algorithms:
            why = self.storage.unsupported_algorithm(alg)
            if why:
                raise ConfigError(f"strategy {strategy!r} at {alg.rate} is not available: {why}")
        if len(self._plans) > 4096:  # rates built per request must not grow this forever
            self._plans.clear()
        self._plans[cache_key] = plan
        return plan

    # -- the API --------------------------------------------------------------------------

    def hit(
        self,
        key: str,
        rates: Any,
        *,
        strategy: str | None = None,
        cost: int = 1,
        burst: int | None = None,
    ) -> Decision:
        """Decide and, when allowed, charge ``cost`` against every rate of ``rates``.

        ``rates``: a rate string ("10/second; 1000/hour"), a Rate, or a list of them. A
        request is allowed only when every rate allows it; a denied request charges none.
        """
        try:
            plan = self._plans[rates, strategy, burst]
        except (KeyError, TypeError):
            plan = self.plan(rates, strategy, burst)
        if cost.__class__ is not int or cost < 0:
            _check_cost(cost)
        clock = self.clock
        now = int(clock() * 1_000_000) if clock is not None else None
        alg = plan.single
        storage = self.storage
        if not storage.remote:
            if alg is not None:
                return storage.hit(alg, key, cost, now)
            return _apply(storage, plan, key, cost, True, now)
        return self._remote(plan, key, cost, True, now)

    def test(
        self,
        key: str,
        rates: Any,
        *,
        strategy: str | None = None,
        cost: int = 1,
        burst: int | None = None,
    ) -> Decision:
        """The Decision ``hit`` would return now, charging nothing."""
        plan = self.plan(rates, strategy, burst)
        _check_cost(cost)
        now = int(self.clock() * 1_000_000) if self.clock is not None else None
        if not self.storage.remote:
            return _apply(self.storage, plan, key, cost, False, now)
        return self._remote(plan, key, cost, False, now)

    def reset(self, key: str) -> None:
        """Forget all state of ``key``, under every rate and strategy."""
        self.storage.reset((key,))
        if self._fallback is not None:
            self._fallback.reset((key,))

    async def ahit(
        self,
        key: str,
        rates: Any,
        *,
        strategy: str | None = None,
        cost: int = 1,
        burst: int | None = None,
    ) -> Decision:
        """Async twin of :meth:`hit`."""
        if not self.storage.remote:
            return self.hit(key, rates, strategy=strategy, cost=cost, burst=burst)
        plan = self.plan(rates, strategy, burst)
        _check_cost(cost)
        now = int(self.clock() * 1_000_000) if self.clock is not None else None
        return await self._aremote(plan, key, cost, True, now)

    async def atest(
        self,
        key: str,
        rates: Any,
        *,
        strategy: str | None = None,
        cost: int = 1,
        burst: int | None = None,
    ) -> Decision:
        """Async twin of :meth:`test`."""
        if not self.storage.remote:
            return self.test(key, rates, strategy=strategy, cost=cost, burst=burst)
        plan = self.plan(rates, strategy, burst)
        _check_cost(cost)
        now = int(self.clock() * 1_000_000) if self.clock is not None else None
        return await self._aremote(plan, key, cost, False, now)

    async def areset(self, key: str) -> None:
        """Async twin of :meth:`reset`."""
        await self.storage.areset((key,))
        if self._fallback is not None:
            self._fallback.reset((key,))

    # -- remote stores: failure policy ----------------------------------------------------

    def _remote(self, plan: _Plan, key: str, cost: int, consume: bool, now: int | None) -> Decision:
        if self._broken_until and time.monotonic() < self._broken_until:
            return self._degraded(plan, key, cost, consume, now)
        try:
            decision = _apply(self.storage, plan, key, cost, consume, now)
        except Exception as exc:  # a failing store must never fail the request
            self._storage_failed(exc)
            return self._degraded(plan, key, cost, consume, now)
        self._broken_until = 0.0
        return decision

    async def _aremote(
        self, plan: _Plan, key: str, cost: int, consume: bool, now: int | None
    ) -> Decision:
        if self._broken_until and time.monotonic() < self._broken_until:
            return self._degraded(plan, key, cost, consume, now)
        try:
            result = await self.storage.aapply(
                [Check(a, key, cost) for a in plan.algorithms], consume=consume, now=now
            )
        except Exception as exc:
            self._storage_failed(exc)
            return self._degraded(plan, key, cost, consume, now)
        self._broken_until = 0.0
        return combine(result.decisions)

    def _storage_failed(self, exc: BaseException) -> None:
        mono = time.monotonic()
        self._broken_until = mono + self.retry_interval
        if mono - self._last_error_log >= self.error_log_interval:
            self._last_error_log = mono
            logger.error(
                "throttlekit: storage %r failed (%s: %s); answering with on_storage_error=%r "
                "and retrying the store in %.1fs",
                self.storage, type(exc).__name__, exc, self.on_storage_error,
                self.retry_interval,
            )

    def _degraded(
        self, plan: _Plan, key: str, cost: int, consume: bool, now: int | None
    ) -> Decision:
        policy = self.on_storage_error
        if policy == "local":
            if self._fallback is None:
                self._fallback = MemoryStorage()
            d = _apply(self._fallback, plan, key, cost, consume, now)
            return d._replace(degraded=True)
        alg = plan.algorithms[0]
        if policy == "allow":
            return _new(Decision, (True, alg.capacity, alg.capacity, 0.0, 0.0, alg.rate, True))
        return _new(
            Decision,
            (False, alg.capacity, 0, self.retry_interval, self.retry_interval, alg.rate, True),
        )


def _apply(
    storage: Storage, plan: _Plan, key: str, cost: int, consume: bool, now: int | None
) -> Decision:
    result = storage.apply([Check(a, key, cost) for a in plan.algorithms], consume=consume, now=now)
    return combine(result.decisions)


def _check_cost(cost: object) -> None:
    if isinstance(cost, bool) or not isinstance(cost, int) or cost < 0:
        raise ConfigError(f"cost must be an integer >= 0, got {cost!r}")


def wrap_storage_errors(exc: BaseException) -> StorageError:
    """Used by backends: a StorageError chained to the client's exception."""
    err = StorageError(f"{type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err
