"""Escalating bans, as fail2ban's ``bantime.increment``: a key banned again within
``forget_after`` seconds of the end of its last ban is banned ``factor`` times longer than
then, up to ``max_ban``, with jitter; a key that keeps offending stays at ``max_ban`` (its
bans chain), one that keeps away for ``forget_after`` starts again at ``bantime``. The
chain of a key's bans (its level and when it is forgotten) lives in the limiter's store,
keyed by the rule and the key, so every worker sharing it agrees: the engine asks
:meth:`Escalation.ban_time` how long a ban lasts (one store call, only when a ban is made).
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any, TypedDict, Union

from ._errors import ConfigError
from ._rates import MAX_PERIOD

if TYPE_CHECKING:
    from .storage.base import Storage

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
    """A ban rule's validated escalation, and the chained count of a key's bans the store
    keeps for it: ``(level, until)`` per key, where ``until`` is the end of the key's last
    ban plus ``forget_after``. A ban before ``until`` goes one level up (at most ``steps``,
    the first level at ``max_ban``); a later one starts again at level 1. Every backend
    runs :meth:`step` (Redis in ``lua/escalate.lua``, the same arithmetic), atomically."""

    __slots__ = ("bantime_us", "factor", "forget_us", "id", "jitter", "max_ban", "max_ban_us",
                 "steps")

    def __init__(self, bantime: float, factor: float, max_ban: float, jitter: float,
                 forget_after: float, id: str) -> None:
        self.bantime_us = round(bantime * 1_000_000)
        self.factor = factor
        self.max_ban = max_ban
        self.max_ban_us = round(max_ban * 1_000_000)
        self.jitter = jitter
        self.forget_us = round(forget_after * 1_000_000)
        #: the store's name of the chain (beside the rule counters of the key's family)
        self.id = id
        #: levels counted: up to the first that reaches max_ban (more would change
        #: nothing). Not capped lower: a gentle factor (1.01) takes hundreds of levels to
        #: get there, and a chain's level is one integer however high it goes.
        self.steps = 1 + math.ceil(math.log(max_ban / bantime) / math.log(factor) - 1e-9)

    @property
    def forget_after(self) -> float:
        return self.forget_us / 1_000_000

    @classmethod
    def of(cls, escalate: object, bantime: float, ident: str, what: str, storage: Storage
           ) -> Escalation | None:
        """``escalate=`` checked (ConfigError naming the bad value, or a store that keeps
        no chains), or None: none."""
        escalation = _escalation(escalate, bantime, ident, what)
        if escalation is not None and not storage.supports_escalation:
            raise ConfigError(f"{what}: the {type(storage).__name__} backend cannot count "
                              f"escalating bans (escalate={escalate!r})")
        return escalation

    def step(self, state: tuple[int, int] | None, now: int, draw: float
             ) -> tuple[tuple[int, int], int]:
        """The chain after one more ban at ``now`` (microseconds), from ``state`` (None:
        none, or it expired), and the ban's length in microseconds:
        ``bantime * factor ** (level - 1)``, at most ``max_ban``, less the share
        ``jitter * draw`` (``draw``: uniform in [0, 1), drawn by the caller)."""
        level = 1
        if state is not None and now < state[1]:
            level = min(state[0] + 1, self.steps)
        length = math.floor(min(self.bantime_us * self.factor ** (level - 1),
                                self.max_ban_us))
        ttl = math.floor(length * (1.0 - self.jitter * draw))
        return (level, now + ttl + self.forget_us), ttl

    def ban_time(self, store: Storage, key: str, now: int | None) -> float:
        """How long the ban of ``key`` made at ``now`` lasts (seconds): one store call
        moving the key's chain on. A failing store answers ``bantime`` (see
        ``ResilientStore.escalate``). At least a microsecond: a length the jitter (or a
        sub-microsecond ``bantime``) rounds down to 0 is no ban a store accepts."""
        return max(store.escalate(self, key, random.random(), now)[1], 1) / 1_000_000

    async def aban_time(self, store: Storage, key: str, now: int | None) -> float:
        """Async twin of :meth:`ban_time`."""
        return max((await store.aescalate(self, key, random.random(), now))[1], 1) / 1_000_000


def _escalation(escalate: object, bantime: float, ident: str, what: str
                ) -> Escalation | None:
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
    return Escalation(bantime, factor, max_ban, jitter, forget_after, f"{ident}:chain")
