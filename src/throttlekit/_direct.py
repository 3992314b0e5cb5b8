"""The direct API below ``Limiter.hit``/``test`` and their async twins: plans (rates bound
to a strategy once) and the one store call deciding a key.

``Limiter.hit``'s common case (one rate on a local store) stays in its own frame, calling
the plan's bound hit; everything else comes here: the arguments read once
(:func:`prepared`), then :func:`decide` or :func:`adecide`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._algorithms import Algorithm, check_strategy, make_algorithm
from ._decision import Decision, most_restrictive
from ._errors import ConfigError
from ._keys import bound_key
from ._rates import coerce_rates
from ._resilience import ResilientStore
from .storage.base import Check, Storage

if TYPE_CHECKING:
    from ._limiter import Limiter

__all__ = ["Plan", "adecide", "check_cost", "check_key", "decide", "prepared"]


class Plan:
    """Rates bound to a strategy, parsed and validated once and cached by the limiter.

    ``fast`` is the storage's single-check hit (``Storage.bind``) for one rate on a local
    store (a remote one answers through the limiter's failure policy).
    """

    __slots__ = ("algorithms", "fast")

    def __init__(self, algorithms: tuple[Algorithm, ...], storage: Storage) -> None:
        self.algorithms = algorithms
        self.fast: Callable[[str, int, int | None], Decision] | None = None
        if len(algorithms) == 1 and not storage.remote:
            self.fast = storage.bind(algorithms[0])

    @classmethod
    def of(cls, storage: Storage, rates: Any, strategy: str, burst: int | None) -> Plan:
        """``rates`` under ``strategy``, validated against what ``storage`` supports."""
        check_strategy(strategy, storage)
        # rates that count the same state (equal once in microseconds) are one limit
        same: dict[str, Algorithm] = {}
        for r in coerce_rates(rates):
            alg = make_algorithm(strategy, r, burst)
            same.setdefault(alg.id, alg)
        algorithms = tuple(same.values())
        for alg in algorithms:
            why = storage.unsupported_algorithm(alg)
            if why:
                raise ConfigError(f"strategy {strategy!r} at {alg.rate} is not available: {why}")
        return cls(algorithms, storage)


def prepared(limiter: Limiter, key: str, rates: Any, strategy: str | None, cost: int,
             burst: int | None) -> tuple[Plan, str, int | None]:
    """A direct call's plan, its key as stored and the time; ConfigError for a bad
    cost or key."""
    plan = limiter.plan(rates, strategy, burst)
    check_cost(cost)
    check_key(key)
    return plan, bound_key(key), limiter.engine.now()


def decide(limiter: Limiter, plan: Plan, key: str, cost: int, consume: bool,
           now: int | None) -> Decision:
    """``key`` (as stored) under every rate of ``plan``: a local store asked directly, a
    remote one through its ResilientStore (the denial cache, the failure policy)."""
    checks = [Check(a, key, cost) for a in plan.algorithms]
    if not limiter.storage.remote:
        result = limiter.storage.apply(checks, consume=consume, now=now)
        return most_restrictive(result.decisions)
    store = limiter.store
    assert isinstance(store, ResilientStore)
    return store.decide(plan, key, checks, consume, now)


async def adecide(limiter: Limiter, plan: Plan, key: str, cost: int, consume: bool,
                  now: int | None) -> Decision:
    """Async twin of :func:`decide`, for a remote store."""
    store = limiter.store
    assert isinstance(store, ResilientStore)
    checks = [Check(a, key, cost) for a in plan.algorithms]
    return await store.adecide(plan, key, checks, consume, now)


def check_key(key: object) -> None:
    if key.__class__ is not str and not isinstance(key, str):
        raise ConfigError(f"key must be a string, got {key!r}")


def check_cost(cost: object) -> None:
    if isinstance(cost, bool) or not isinstance(cost, int) or cost < 0:
        raise ConfigError(f"cost must be an integer >= 0, got {cost!r}")
