"""What the monitor keeps per rule: counters by outcome, and for a watched rule its
detector and heavy hitters (:class:`Scope`, also the shape of all traffic's)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .detector import RateDetector
from .sketch import WindowedTopK

__all__ = ["FIRST", "Counted", "Latest", "Scope"]

#: held to count a rule's first event of a kind, or to add a rule: threads racing there
#: each stored their own count or Counted, and all but one were lost
FIRST = threading.Lock()


class Scope:
    """Detector + heavy hitters of one scope (all traffic, or one rule)."""

    __slots__ = ("detector", "hit", "hitters")

    def __init__(self, detector: RateDetector, hitters: WindowedTopK) -> None:
        self.detector = detector
        self.hitters = hitters
        #: the detector's ``hit``, bound once
        self.hit = detector.hit


class Counted:
    """One rule as the monitor's hot path finds it, in one dict lookup by name: its
    events by outcome (``counts``; ``dry``: in dry-run mode), keyed by the outcome's
    string (no tuple built per event), and its :class:`Scope` when it is watched."""

    __slots__ = ("counts", "dry", "hit", "scope")

    def __init__(self, scope: Scope | None) -> None:
        self.counts: dict[str, int] = {}
        self.dry: dict[str, int] = {}
        self.scope = scope
        #: the scope's detector ``hit``; None for a rule only counted
        self.hit: Callable[[float], None] | None = None if scope is None else scope.hit

    @staticmethod
    def first(counts: dict[str, int], kind: str) -> None:
        """Count an event of a kind ``counts`` holds none of yet (threads may race)."""
        with FIRST:
            counts[kind] = counts.get(kind, 0) + 1


class Latest(threading.local):
    """The request this thread told the monitor of last. A request's events come one after
    the other in its own thread (or event loop), so it is counted once however many rules
    acted on it, whatever other threads' events come in between (one ``_last_request``
    for all threads counted a request again when another thread's came in between)."""

    request: object = None
