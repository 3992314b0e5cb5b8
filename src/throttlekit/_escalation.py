"""Escalating bans, as fail2ban's ``bantime.increment``: a key banned again within
``forget_after`` seconds of its earlier bans is banned ``factor`` times longer each time,
up to ``max_ban``, with jitter. The count of a key's bans lives in the limiter's store (a
sliding log keyed by the rule and the key), so every worker sharing it agrees. The engine
counts the ban (one store call, only when a ban is made) and asks :meth:`Escalation.ban_time`
how long it lasts.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any, TypedDict, Union

from ._algorithms import Algorithm, make_algorithm
from ._errors import ConfigError
from ._rates import MAX_PERIOD, Rate

if TYPE_CHECKING:
    from .storage.base import BatchResult, Storage

__all__ = ["BanEscalation", "Escalate", "Escalation"]


class BanEscalation(TypedDict, total=False):
    """The options of an escalating ban (``fail2ban(..., escalate={...})``), as fail2ban's
    ``bantime.increment``: each ban of a key within ``forget_after`` seconds of its earlier
    ones lasts ``factor`` times the one before (``bantime``, then 2x, 4x, ...), at most
    ``max_ban`` seconds, shortened by a random share up to ``jitter`` (0 to under 1) so
    that banned bots do not all come back at once."""

    factor: float
    max_ban: float
    jitter: float
    forget_after: float


#: ``escalate=``: False (a ban always lasts ``bantime``), True (the defaults) or options
Escalate = Union[bool, BanEscalation]  # noqa: UP007  (a runtime alias on Python 3.10)


class Escalation:
    """A ban rule's validated escalation, and the store's count of a key's bans (an exact
    sliding log over ``forget_after``, its memory bounded by the steps to ``max_ban``)."""

    __slots__ = ("algorithm", "factor", "forget_after", "jitter", "max_ban")

    def __init__(self, factor: float, max_ban: float, jitter: float, forget_after: float,
                 algorithm: Algorithm) -> None:
        self.factor = factor
        self.max_ban = max_ban
        self.jitter = jitter
        self.forget_after = forget_after
        self.algorithm = algorithm


    @classmethod
    def of(cls, escalate: object, bantime: float, ident: str, what: str, storage: Storage
           ) -> Escalation | None:
        """``escalate=`` checked (ConfigError naming the bad value), or None: none."""
        return _escalation(escalate, bantime, ident, what, storage)

    def ban_time(self, bantime: float, result: BatchResult) -> float:
        """How long a ban lasts, from the store's count of the key's bans within
        ``forget_after`` (this one included): ``bantime * factor ** (n - 1)``, at most
        ``max_ban``, less a random share up to ``jitter``. A failing store: ``bantime``."""
        if result.policy is not None or not result.decisions:
            return bantime
        d = result.decisions[0]
        n = d.limit - d.remaining if d.allowed else d.limit
        ttl = min(bantime * self.factor ** max(n - 1, 0), self.max_ban)
        if self.jitter:
            ttl *= 1.0 - self.jitter * random.random()
        return ttl


def _escalation(escalate: object, bantime: float, ident: str, what: str,
                storage: Storage) -> Escalation | None:
    if escalate is False:
        return None
    if escalate is True:
        options: dict[str, Any] = {}
    elif isinstance(escalate, dict):
        options = dict(escalate)
        unknown = sorted(set(options) - set(BanEscalation.__annotations__))
        if unknown:
            raise ConfigError(f"{what}: unknown escalate option(s) {', '.join(unknown)} "
                              f"(factor, max_ban, jitter, forget_after)")
    else:
        raise ConfigError(f"{what}: escalate must be True, False or a dict of factor, "
                          f"max_ban, jitter, forget_after; got {escalate!r}")

    def number(name: str, default: float, low: float, high: float, *, open_low: bool = False,
               open_high: bool = False) -> float:
        value = options.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            (low < value if open_low else low <= value)
            and (value < high if open_high else value <= high)  # also refuses nan and inf
        ):
            raise ConfigError(f"{what}: escalate {name} must be a number "
                              f"{'above' if open_low else 'from'} {low:g} "
                              f"{'below' if open_high else 'to'} {high:g}, got {value!r}")
        return float(value)

    factor = number("factor", 2.0, 1.0, 1000.0, open_low=True)
    max_ban = number("max_ban", min(bantime * 64, MAX_PERIOD), bantime, MAX_PERIOD)
    jitter = number("jitter", 0.0, 0.0, 1.0, open_high=True)
    forget_after = number("forget_after", min(2 * max_ban, MAX_PERIOD), bantime, MAX_PERIOD,
                          open_low=True)
    # bans counted: up to the first that reaches max_ban (more would change nothing)
    steps = min(64, 1 + math.ceil(math.log(max_ban / bantime, factor) - 1e-9))
    rate = Rate(max(steps, 1), forget_after)
    ident = f"{ident}:{rate.period_us}"
    alg = make_algorithm("sliding_log", rate, None, id=ident)
    if storage.unsupported("sliding_log") or storage.unsupported_algorithm(alg):
        alg = make_algorithm("fixed_window", rate, None, id=ident)
    return Escalation(factor, max_ban, jitter, forget_after, alg)
