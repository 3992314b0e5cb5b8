"""Events: what the rules did to a request, for logging, metrics and alerting.

Subscribe with ``limiter.on(callback)`` (every kind) or ``limiter.on("throttled", callback)``;
both return the callback, so they also work as decorators::

    @limiter.on("banned")
    def alert(event: Event) -> None:
        log.warning("banned %s by %s", event.key, event.rule)

Events are built only when someone subscribed to their kind, so an unobserved limiter
pays nothing. Callbacks run synchronously in the request's thread (or event loop), right
after the rules decided; keep them short, and hand slow work to a queue. A callback that
raises is logged and never breaks the request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, NamedTuple

from ._errors import ConfigError

if TYPE_CHECKING:
    from ._decision import Decision
    from ._request import RequestView

__all__ = ["EVENT_KINDS", "HELD", "Event", "EventCallback", "Listeners"]

logger = logging.getLogger("throttlekit")

#: Every kind of event, in evaluation order.
EVENT_KINDS = (
    "safelisted", "blocked", "banned", "throttled", "allowed", "tracked", "challenged", "shed",
    "waited",
)


class Event(NamedTuple):
    """One rule acting on one request.

    Attributes:
        kind: ``"safelisted"``, ``"blocked"``, ``"banned"``, ``"throttled"``, ``"allowed"``
            (a throttle applied and allowed), ``"tracked"``, ``"challenged"`` (a challenge
            answered an allowed request: its redirect or page, or 403) or ``"shed"``
            (admission control refused an allowed request: 503) or ``"waited"`` (a
            decorated call waited ``decision.retry_after`` seconds instead of being
            refused: ``limit(..., wait=)``).
        rule: the rule's name.
        key: the discriminator the rule used (client key, user name, the network of a
            challenged client, ...), or None.
        request: the request view.
        decision: the throttle's (or ban counter's) Decision, None for list rules.
        dry_run: the rule is in dry-run mode: it would have refused, but did not.
        at: seconds since the epoch, on the limiter's clock.
    """

    kind: str
    rule: str
    key: str | None
    request: RequestView
    decision: Decision | None
    dry_run: bool
    at: float


EventCallback = Callable[[Event], object]


#: the events of the current request held back instead of emitted (a list), or None:
#: emitted (see ``_waiting.adecide_waiting``: a refusal waited out is not told)
HELD: ContextVar[list[Event] | None] = ContextVar("throttlekit_held", default=None)


#: an Event's fields, in order: what a callback with an ``event_fields`` method is given
FieldsCallback = Callable[[str, str, "str | None", "RequestView", "Decision | None", bool, float],
                          object]

_new = tuple.__new__


class Listeners:
    """The subscriptions of one limiter: per kind, the callbacks to call, precomputed.

    A callback with an ``event_fields`` method (a :class:`throttlekit.monitor.Monitor`, say)
    is called through that method with the event's fields, in :class:`Event`'s order,
    instead of with an :class:`Event`: an event whose listeners all take the fields is never
    built (``tell``)."""

    __slots__ = ("_by_kind", "_last_log", "_only", "active", "holding", "log_interval")

    def __init__(self, log_interval: float = 60.0) -> None:
        #: per kind: (callable, takes the fields) per subscription, in subscription order
        self._by_kind: dict[str, tuple[tuple[Callable[..., object], bool], ...]] = {}
        #: per kind whose one subscriber takes the fields: that callable
        self._only: dict[str, FieldsCallback] = {}
        self._last_log: dict[int, float] = {}
        self.log_interval = log_interval
        #: kinds somebody listens to (the hot path tests membership before building events)
        self.active: frozenset[str] = frozenset()
        #: set for good once a request held its events back (``HELD``): only then does
        #: ``emit`` read the context variable
        self.holding = False

    def add(self, kind: str | None, callback: EventCallback) -> None:
        if not callable(callback):
            raise ConfigError(f"an event callback must be callable, got {callback!r}")
        kinds = EVENT_KINDS if kind is None else self._kinds((kind,))
        # (looked up on the type: a Mock, say, answers every attribute of its instances)
        takes_fields = callable(getattr(type(callback), "event_fields", None))
        entry = ((callback.event_fields, True) if takes_fields  # type: ignore[attr-defined]
                 else (callback, False))
        by_kind = dict(self._by_kind)
        for k in kinds:
            by_kind[k] = (*by_kind.get(k, ()), entry)
        self._swap(by_kind)

    def remove(self, kind: str | None, callback: EventCallback) -> bool:
        """Unsubscribe ``callback`` from ``kind`` (None: every kind); whether it was
        subscribed there. (Each of its subscriptions goes.)"""
        kinds = EVENT_KINDS if kind is None else self._kinds((kind,))
        told = (callback.event_fields  # type: ignore[attr-defined]
                if callable(getattr(type(callback), "event_fields", None)) else callback)
        by_kind = dict(self._by_kind)
        found = False
        for k in kinds:
            each = by_kind.get(k, ())
            kept = tuple(e for e in each if e[0] != told)
            if len(kept) < len(each):
                found = True
                if kept:
                    by_kind[k] = kept
                else:
                    del by_kind[k]
        self._swap(by_kind)
        return found

    @staticmethod
    def _kinds(kinds: tuple[str, ...]) -> tuple[str, ...]:
        for k in kinds:
            if k not in EVENT_KINDS:
                raise ConfigError(
                    f"unknown event kind {k!r}; expected one of {', '.join(EVENT_KINDS)}"
                )
        return kinds

    def _swap(self, by_kind: dict[str, tuple[tuple[Callable[..., object], bool], ...]]) -> None:
        """Put ``by_kind`` in force: a request reads the old or the new, each whole."""
        self._only = {k: each[0][0] for k, each in by_kind.items()
                      if len(each) == 1 and each[0][1]}
        self._by_kind = by_kind
        self.active = frozenset(by_kind)

    def tell(self, kind: str, rule: str, key: str | None, request: RequestView,
             decision: Decision | None, dry_run: bool, at: float) -> None:
        """Tell the listeners of ``kind`` of one event, given by its fields: the
        :class:`Event` is built only for a callback that takes one (or held back)."""
        only = None if self.holding else self._only.get(kind)
        if only is None:
            self.emit(_new(Event, (kind, rule, key, request, decision, dry_run, at)))
            return
        try:
            only(kind, rule, key, request, decision, dry_run, at)
        except Exception:
            self._failed(only, kind, rule)

    def emit(self, event: Event) -> None:
        if self.holding:
            held = HELD.get()
            if held is not None:
                held.append(event)
                return
        for callback, fields in self._by_kind.get(event.kind, ()):
            try:
                if fields:
                    callback(*event)
                else:
                    callback(event)
            except Exception:
                self._failed(callback, event.kind, event.rule)

    def _failed(self, callback: Callable[..., object], kind: str, rule: str) -> None:
        # at most one log line per callback and interval: a broken hook under attack
        # traffic must not flood the logs (called from the except block: the traceback)
        mono = time.monotonic()
        if mono - self._last_log.get(id(callback), -1e18) >= self.log_interval:
            self._last_log[id(callback)] = mono
            logger.exception(
                "event callback %r failed on a %r event of rule %r", callback, kind, rule,
            )
