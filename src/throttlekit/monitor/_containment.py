"""The shield's containment: one throttle rule over the values an attribution named.

The rule is registered once, when the shield is built (``limiter.throttle(name, ...,
key=rule.key, cost=rule.cost)``); nothing is added to or removed from the rule set at
runtime. Its key function answers None (the rule does not apply) for every request
outside the contained values, and for a client with standing (:class:`throttlekit.Standing`:
known before the anomaly, or holding a pass), so neither is ever refused by it; a
request inside one is counted under that value's key (``"net16=198.51.0.0/16"``), shared
by every client sending it.

Each value keeps an allowance in requests per second (its own baseline times the
shield's factor, at least ``min_allowance``). One rule has one rate, so the rate is the
largest allowance over :data:`PERIOD` seconds and a request of a value with a smaller
allowance costs proportionally more (``cost``): the value with the largest allowance
costs 1 and reads true in the RateLimit header fields.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from ._features import Features

__all__ = ["PERIOD", "Containment", "ContainmentRule"]

#: seconds of the containment rule's sliding window
PERIOD = 10


class _Every:
    """Equal to anything: the one item of a containment rule's gate while it contains."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = None  # type: ignore[assignment]


_EVERY = _Every()


class Containment(NamedTuple):
    """One value the shield throttles.

    Attributes:
        dimension: the dimension (``path``, ``user_agent``, ``fingerprint``, ``net24``,
            ``net16``).
        value: the value contained.
        allowance: requests per second the value keeps, all its clients together.
        rate: its requests per second when it was contained.
        baseline: its requests per second in normal traffic.
        share: the share of the surge's excess it accounted for.
        since: when it was contained.
    """

    dimension: str
    value: str
    allowance: float
    rate: float
    baseline: float
    share: float
    since: float

    @property
    def reason(self) -> str:
        """Why it is contained, in words."""
        return (f"{self.rate:.1f} req/s against a baseline of {self.baseline:.2f} req/s, "
                f"{self.share:.0%} of the surge's excess")

    def as_dict(self) -> dict[str, Any]:
        return {"dimension": self.dimension, "value": self.value,
                "allowance": round(self.allowance, 3), "rate": round(self.rate, 3),
                "baseline": round(self.baseline, 3), "share": round(self.share, 3),
                "since": self.since, "reason": self.reason}


class ContainmentRule:
    """The throttle rule named ``name`` on ``limiter``, throttling what is contained.

    Args:
        limiter: a Limiter (``throttle`` and ``set_rule_rates``).
        name: the rule's name.
    """

    __slots__ = ("_by_dimension", "_gate", "contained", "features", "limiter", "name")

    def __init__(self, limiter: Any, name: str) -> None:
        self.limiter = limiter
        self.name = name
        self.features = Features()
        #: what is contained, by (dimension, value)
        self.contained: dict[tuple[str, str], Containment] = {}
        #: dimension -> value -> (key, cost); replaced whole, read by request threads
        self._by_dimension: dict[str, dict[str, tuple[str, int]]] = {}
        #: the rule's match is ``_gate.count``: 0 (the rule does not apply) in one C call
        #: while nothing is contained, the gate empty, so no key function runs per request
        #: without an anomaly; 1 while the gate holds ``_EVERY`` (equal to any request)
        self._gate: list[_Every] = []
        limiter.throttle(name, f"1 per {PERIOD} seconds", strategy="sliding_window",
                         match=self._gate.count, key=self.key, cost=self.cost)

    def _find(self, view: Any) -> tuple[str, int] | None:
        for dimension, values in self._by_dimension.items():
            found = values.get(self.features.value(dimension, view))  # type: ignore[arg-type]
            if found is not None:
                return found
        return None

    def key(self, view: Any) -> str | None:
        """The rule's key: the contained value this request has, or None."""
        if not self._by_dimension:
            return None
        try:
            found = self._find(view)
            if found is not None:
                standing = getattr(getattr(self.limiter, "engine", None), "standing", None)
                if standing is not None and standing.known(view):
                    return None  # a client with standing is never contained
        except Exception:  # never refuse a request the rule cannot read
            return None
        return None if found is None else found[0]

    def cost(self, view: Any) -> int:
        """The rule's cost: more for a value with a smaller allowance."""
        try:
            found = self._find(view)
        except Exception:
            return 0
        return 0 if found is None else found[1]

    def add(self, containments: list[Containment]) -> None:
        """Contain these values too (the rate and the costs are worked out again)."""
        contained = dict(self.contained)
        for c in containments:
            contained[(c.dimension, c.value)] = c
        self._install(contained)

    def clear(self) -> list[Containment]:
        """Contain nothing any more; returns what was contained."""
        lifted = list(self.contained.values())
        self._install({})
        return lifted

    def _install(self, contained: dict[tuple[str, str], Containment]) -> None:
        by_dimension: dict[str, dict[str, tuple[str, int]]] = {}
        if contained:
            largest = max(c.allowance for c in contained.values())
            limit = max(1, math.ceil(largest * PERIOD))
            self.limiter.set_rule_rates(self.name, f"{limit} per {PERIOD} seconds")
            for (dimension, value), c in contained.items():
                cost = max(1, round(limit / (c.allowance * PERIOD)))
                by_dimension.setdefault(dimension, {})[value] = (f"{dimension}={value}", cost)
        self.contained = contained
        self._by_dimension = by_dimension
        self._gate[:] = [_EVERY] if by_dimension else []  # in place: the match is bound to it
