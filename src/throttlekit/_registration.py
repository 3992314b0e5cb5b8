"""One registration at a time per limiter, on the rules in force.

``Rules`` are changed in place by registration (``Limiter.throttle``...), and replaced whole
by a rules-file reload (``_reload.install``: a copy without the file's old rules, the new
file's registered on it, then the swap). Both hold the engine's ``changing`` lock, so a rule
registered while a reload runs waits for the swap and lands on the rules swapped in (the old
ones are marked ``stale``), and two threads registering at once both land; before, either
could be lost (a Shield's ``set_rule_rates`` during a reload too). Evaluation takes no lock:
registration still publishes copy-on-write (see ``Rules``).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._rules import Rules

__all__ = ["registering"]

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
