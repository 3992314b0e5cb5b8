"""The answer to one rate-limit question."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from ._rates import Rate

__all__ = ["Decision", "most_restrictive"]


class Decision(NamedTuple):
    """Whether a request may go ahead, and the state of the limit that decided.

    Immutable. Times are seconds (float).

    Attributes:
        allowed: the request is admitted (and, for ``hit``, charged).
        limit: the capacity of the deciding rate (its ``burst`` for a token bucket).
        remaining: what is left after this request; on a denial nothing was charged, so this
            is the true uncharged value (it can be above 0 when the cost is above 1).
        reset_after: seconds until the key is fully replenished.
        retry_after: seconds until this same request would be allowed; ``0.0`` when allowed,
            ``inf`` when the cost exceeds the capacity and can never be allowed.
        rate: the rate that decided (with several rates: the denying one with the longest
            wait, or, when allowed, the one with the least remaining).
        degraded: the storage failed and the limiter's ``on_storage_error`` policy answered.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float
    rate: Rate
    degraded: bool = False


def most_restrictive(decisions: Sequence[Decision]) -> Decision:
    """The Decision that speaks for several rates: when any denies, the denying one with the
    longest wait; when all allow, the one with the least remaining."""
    if len(decisions) == 1:
        return decisions[0]
    denied = [d for d in decisions if not d.allowed]
    if denied:
        return max(denied, key=lambda d: d.retry_after)
    return min(decisions, key=lambda d: (d.remaining, -d.reset_after))
