"""The answer to one rate-limit question."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple

from ._rates import Rate

__all__ = ["CLOCK_SKEW_US", "Decision", "later", "most_restrictive"]

#: How far behind another host's clock a host's may be (microseconds) and still count in
#: the window the other has started: a key's fixed or sliding window state of a later
#: window, which starts at most this much after now, is counted in as of that window's
#: start (not taken for a clock stepped back: docs/algorithms.md, "Clocks of several hosts")
CLOCK_SKEW_US: Final = 1_000_000


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


def later(d: Decision, gap_us: int) -> Decision:
    """``d``, decided as of ``gap_us`` from now, with its waits counted from now: whole
    microseconds added, divided once (as the Redis scripts' answers; inf stays inf)."""
    return d._replace(reset_after=_plus(d.reset_after, gap_us),
                      retry_after=_plus(d.retry_after, gap_us))


def _plus(wait: float, gap_us: int) -> float:
    """``wait`` (seconds, of whole microseconds) plus ``gap_us``; 0 stays 0."""
    if not wait or wait == float("inf"):
        return wait
    return (round(wait * 1e6) + gap_us) / 1e6
