"""One registration at a time per limiter, on the rules in force.

``Rules`` are changed in place by registration (``Limiter.throttle``...), and replaced whole
by a rules-file reload (``_reload.install``: a copy without the file's old rules, the new
file's registered on it, then the swap). Both hold the engine's ``changing`` lock, so a rule
registered while a reload runs waits for the swap and lands on the rules swapped in (the old
ones are marked ``stale``), and two threads registering at once both land; before, either
could be lost (a Shield's ``set_rule_rates`` during a reload too). Evaluation takes no lock:
registration still publishes copy-on-write (see ``Rules``).

Rates set at runtime (``Limiter.set_rule_rates``: a Shield tightening a rule during an attack)
hold until set again or restored (``rates=None``), a reload included: the file's version of
the rule gets them again, and the file's own rates become what a restore goes back to.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._rates import Rate
    from ._rules import Rules

__all__ = ["Override", "reapply", "registering", "set_rule_rates"]

#: a rule's own rates (its registration's or its file's) and those set_rule_rates gave it
Override = tuple["tuple[Rate, ...]", "tuple[Rate, ...]"]

F = TypeVar("F", bound="Callable[..., Any]")


def registering(method: F) -> F:
    """A registration method of ``Rules``: under the engine's ``changing`` lock, and on the
    rules in force (when a reload swapped ``self`` out meanwhile, on the new ones)."""
    name = method.__name__

    @functools.wraps(method)
    def register(self: Rules, *args: Any, **kwargs: Any) -> Any:
        engine = self.limiter.engine
        with engine.changing:
            if self.stale:  # swapped out by a reload: the rules in force now
                return getattr(engine.rules, name)(*args, **kwargs)
            return method(self, *args, **kwargs)

    return cast("F", register)


def _rates_of(rules: Rules, name: str) -> tuple[Rate, ...] | None:
    """The rates of throttle ``name`` in ``rules``; None when it has none of its own."""
    rule = next((t for t in rules.throttles if t.name == name), None)
    return None if rule is None or rule.resolve is not None else rule.rates


def set_rule_rates(rules: Rules, name: str, rates: Any) -> tuple[Rate, ...]:
    """``Limiter.set_rule_rates``: ``rates`` on throttle ``name`` (None: its own rates
    again); the rates it had before."""
    engine = rules.limiter.engine
    with engine.changing:
        rules = engine.rules  # (the rules in force, read under the lock)
        own = rules.overrides[name][0] if name in rules.overrides else _rates_of(rules, name)
        if rates is None:
            if own is None:
                raise ConfigError(f"no throttle rule named {name!r} with rates of its own")
            rates = own
        previous = rules.set_throttle_rates(name, rates)
        now = _rates_of(rules, name)
        if own is None or now is None or now == own:
            rules.overrides.pop(name, None)
        else:
            rules.overrides[name] = (own, now)
        return previous


def reapply(new: Rules, from_file: set[str]) -> None:
    """A reload registered ``from_file`` on ``new``: each of them whose rates were set at
    runtime gets them again, its file's rates now its own; gone, it is forgotten. (Rules
    registered in code are carried over as they were, their rates included.)"""
    for name, (_, rates) in list(new.overrides.items()):
        if name not in from_file:
            if not any(t.name == name for t in new.throttles):
                del new.overrides[name]
            continue
        own = _rates_of(new, name)
        if own is None or own == rates:
            del new.overrides[name]
            continue
        try:
            new.set_throttle_rates(name, rates)
        except ConfigError:  # the file's version takes them no more (another strategy...)
            del new.overrides[name]
            continue
        new.overrides[name] = (own, rates)
