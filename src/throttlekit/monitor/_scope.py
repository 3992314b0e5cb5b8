"""What the monitor keeps per rule: counters by outcome, and for a watched rule its
detector and heavy hitters (:class:`Scope`, also the shape of all traffic's)."""

from __future__ import annotations

from collections.abc import Callable

from .detector import RateDetector
from .sketch import WindowedTopK

__all__ = ["Counted", "Scope"]


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
