"""The admission step: an adaptive concurrency limit per worker in front of the app.

Opt-in (``Limiter.admission``). After the rules allow a request, and before its concurrency
leases, the request takes a slot of the worker's :class:`~throttlekit._admission.Admission`;
when the app saturates (its latency rises against its unloaded minimum) the limit comes down
and the excess is shed at once with 503 and ``Retry-After``, lowest priority first, instead
of queueing until every client times out. A client with standing
(:class:`~throttlekit.Standing`) gets the highest level, whatever ``priority`` says (its
standing is looked up in the store only during an anomaly). The slot is given back when
the response ends (:class:`~throttlekit._exchange.Exchange`), and its latency teaches the
limit.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._admission import AdaptiveLimit, Admission, AdmissionSnapshot, Ticket
from ._decision import Decision
from ._errors import ConfigError
from ._rates import Rate
from ._rules import Verdict, _RuleFailed

if TYPE_CHECKING:
    from ._engine import Engine
    from ._request import RequestView

__all__ = ["ADMISSION_RULE", "AdmissionStep"]

logger = logging.getLogger("throttlekit")

#: the rule name of a request shed by admission control
ADMISSION_RULE = "admission"
_new = tuple.__new__


class AdmissionStep:
    """One worker's admission control, as the pipeline runs it."""

    __slots__ = ("admission", "dry_run", "engine", "priority", "top", "try_acquire")

    def __init__(
        self, engine: Engine, *, priority: Callable[[RequestView], Any] | None,
        thresholds: Sequence[float] | None, initial_limit: int, min_limit: int,
        max_limit: int, dry_run: bool, clock: Callable[[], float] | None,
    ) -> None:
        if priority is not None and not callable(priority):
            raise ConfigError(f"admission: priority must be a callable, got {priority!r}")
        if not isinstance(dry_run, bool):
            raise ConfigError(f"admission: dry_run must be True or False, got {dry_run!r}")
        if thresholds is None:
            thresholds = (1.0,) if priority is None else (0.5, 0.8, 1.0)
        self.engine = engine
        self.priority = priority
        self.dry_run = dry_run
        self.admission = Admission(AdaptiveLimit(
            thresholds=tuple(thresholds), initial_limit=initial_limit, min_limit=min_limit,
            max_limit=max_limit, clock=clock or time.perf_counter,
        ))
        #: the highest priority level: known clients' during an anomaly (Standing)
        self.top = len(self.admission.limit.thresholds) - 1
        #: ``admission.try_acquire``, bound once (the limit's own method: no call between)
        self.try_acquire = self.admission.try_acquire

    def admit(self, verdict: Verdict, known: bool = False) -> tuple[Verdict, Ticket | None]:
        """A slot for an allowed request, or its refusal (503, ``kind="shed"``); in dry run,
        the request goes on without a slot and the refusal is only reported (event).
        ``known``: the client has standing (``Standing.seen``): the highest level."""
        if known:
            level = self.top  # shed last
        elif self.priority is None:
            level = 0
        else:
            level = self._level(self.priority, verdict.request)
        ticket = self.try_acquire(level)
        if ticket is not None:
            return verdict, ticket
        return self._shed(verdict, level)

    def _shed(self, verdict: Verdict, level: int) -> tuple[Verdict, Ticket | None]:
        view = verdict.request
        adm = self.admission
        retry = adm.retry_after(level)
        limit = max(1, adm.limit.limit)
        d = _new(Decision, (False, limit, 0, retry, retry, Rate(limit, 1.0), False))
        engine = self.engine
        if "shed" in engine.listeners.active:
            engine.emit("shed", ADMISSION_RULE, None, view, d, self.dry_run)
        if self.dry_run:
            return verdict, None
        return Verdict(False, "shed", ADMISSION_RULE, None, d, verdict.policies, False,
                       view), None

    def snapshot(self) -> AdmissionSnapshot:
        """The limit, requests in flight, latencies and shed counts (an operator view)."""
        return self.admission.snapshot()

    def _level(self, priority: Callable[[RequestView], Any], view: RequestView) -> int:
        try:
            level = priority(view)
            return int(level) if level is not None else 0
        except Exception as exc:  # a failing priority function: the lowest priority
            with contextlib.suppress(_RuleFailed):  # (under "deny" too: never a refusal)
                self.engine.rule_error("admission", ADMISSION_RULE, exc, "priority function")
            return 0
