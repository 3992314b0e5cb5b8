"""Small, obviously correct reference models of the four algorithms.

They keep the whole history, use exact fractions, and answer "when" questions by binary
search over whole microseconds on the definition itself (every algorithm's usage only falls
as time passes with no new requests), so they share no arithmetic with the implementation.

A clock stepped back (``t`` before the state's latest instant): the whole history moves
back, so that its latest instant is ``t`` (a window model's latest window, the log's latest
entry); the bucket loses the step's tokens (down to empty) and is updated at ``t``. A hit
that charges or is refused (cost > 0) keeps that; a test or a zero-cost hit only answers
from it. Except for a window model whose latest window is a later one (the next, or further
with a period under 1 s) starting at most ``CLOCK_SKEW_US`` after ``t`` (another host's
clock ahead, not a step back): that answers as at the window's start, its waits counted
from ``t``.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from dataclasses import dataclass, field
from fractions import Fraction

from throttlekit._decision import CLOCK_SKEW_US

INF = float("inf")


@dataclass
class Outcome:
    allowed: bool
    remaining: int
    retry_after: float
    reset_after: float


def _first(lo: int, hi: int, ok) -> int:
    """Smallest t in [lo, hi] with ok(t), given ok is monotone and ok(hi)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


@dataclass
class Model:
    limit: int
    period_us: int
    burst: int | None = None

    def usage(self, t: int) -> Fraction:  # pragma: no cover - per model
        raise NotImplementedError

    def capacity(self) -> int:
        return self.limit

    def record(self, t: int, cost: int) -> None:  # pragma: no cover - per model
        raise NotImplementedError

    def newer(self, t: int) -> bool:  # pragma: no cover - per model
        """Whether the state's latest instant is after ``t`` (the clock stepped back)."""
        raise NotImplementedError

    def step_back(self, t: int) -> None:  # pragma: no cover - per model
        """Move the whole history back so that its latest instant is ``t``."""
        raise NotImplementedError

    def keeps_step(self, cost: int) -> bool:
        """Whether a hit of ``cost`` (> 0) stores the history moved back."""
        return True

    def ahead(self, t: int) -> int:
        """How long after ``t`` the state's later window starts, when within
        ``CLOCK_SKEW_US`` (else 0)."""
        return 0

    def step(self, t: int, cost: int, consume: bool = True) -> Outcome:
        gap = self.ahead(t)
        if gap:
            out = self.step(t + gap, cost, consume)
            return Outcome(out.allowed, out.remaining,
                           out.retry_after + gap / 1e6 if out.retry_after else 0.0,
                           out.reset_after + gap / 1e6 if out.reset_after else 0.0)
        if self.newer(t):
            if not (consume and cost and self.keeps_step(cost)):
                moved = copy.deepcopy(self)
                moved.step_back(t)
                return moved.step(t, cost, consume)
            self.step_back(t)
        cap = self.capacity()
        used = self.usage(t)
        allowed = used + cost <= cap
        if allowed:
            if consume and cost:
                self.record(t, cost)
            after = used + cost
            retry = 0.0
        else:
            after = used
            if cost > cap:
                retry = INF
            else:
                horizon = t + 4 * self.period_us * max(1, cap)
                at = _first(t, horizon, lambda x: self.usage(x) + cost <= cap)
                retry = (at - t) / 1e6
        remaining = max(0, math.floor(cap - after))
        if allowed and consume:
            probe = self.usage
        else:
            base = self.usage

            def probe(x: int) -> Fraction:
                return base(x) + (cost if allowed else 0)

            if allowed and cost:
                # test(): the state as if charged, without charging it
                self.record(t, cost)
                probe = self.usage
        horizon = t + 4 * self.period_us * max(1, cap)
        reset_at = _first(t, horizon, lambda x: probe(x) == 0)
        if allowed and not consume and cost:
            self.unrecord()
        return Outcome(allowed, remaining, retry, (reset_at - t) / 1e6)

    def unrecord(self) -> None:  # pragma: no cover - per model
        raise NotImplementedError


@dataclass
class FixedWindowModel(Model):
    counts: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    last: list[tuple[int, int, int | None]] = field(default_factory=list)
    #: the latest window the state is of (None: no state)
    window: int | None = None

    def usage(self, t: int) -> Fraction:
        return Fraction(self.counts[t // self.period_us])

    def newer(self, t: int) -> bool:
        return self.window is not None and self.window > t // self.period_us

    def ahead(self, t: int) -> int:
        if self.window is None or self.window <= t // self.period_us:
            return 0
        start = self.window * self.period_us  # (the next, or further: a period under 1 s)
        return start - t if start - t <= CLOCK_SKEW_US else 0

    def keeps_step(self, cost: int) -> bool:
        return cost <= self.limit  # (a cost that can never fit is not sent to the store)

    def step_back(self, t: int) -> None:
        assert self.window is not None
        d = t // self.period_us - self.window
        self.counts = defaultdict(int, {w + d: c for w, c in self.counts.items()})
        self.last = [(w + d, c, None if was is None else was + d) for w, c, was in self.last]
        self.window += d

    def record(self, t: int, cost: int) -> None:
        self.counts[t // self.period_us] += cost
        self.last.append((t // self.period_us, cost, self.window))
        self.window = max(self.window or 0, t // self.period_us)

    def unrecord(self) -> None:
        w, c, self.window = self.last.pop()
        self.counts[w] -= c


@dataclass
class SlidingWindowModel(FixedWindowModel):
    def keeps_step(self, cost: int) -> bool:
        return True

    def usage(self, t: int) -> Fraction:
        p = self.period_us
        w = t // p
        elapsed = t - w * p
        return self.counts[w - 1] * Fraction(p - elapsed, p) + self.counts[w]


@dataclass
class SlidingLogModel(Model):
    log: list[tuple[int, int]] = field(default_factory=list)

    def usage(self, t: int) -> Fraction:
        return Fraction(sum(c for at, c in self.log if t - self.period_us < at <= t))

    def newer(self, t: int) -> bool:
        # (entries slid out at a step are gone: the log keeps only those still inside)
        self.log = [(at, c) for at, c in self.log if at > t - self.period_us or at > t]
        return any(at > t for at, _ in self.log)

    def step_back(self, t: int) -> None:
        d = max(at for at, _ in self.log) - t
        self.log = [(at - d, c) for at, c in self.log]

    def record(self, t: int, cost: int) -> None:
        self.log.append((t, cost))

    def unrecord(self) -> None:
        self.log.pop()


@dataclass
class TokenBucketModel(Model):
    """Tokens and a timestamp, refilled continuously at limit/period up to the burst."""

    tokens: Fraction | None = None
    updated: int = 0
    saved: list[tuple[Fraction | None, int]] = field(default_factory=list)

    def capacity(self) -> int:
        return self.burst or self.limit

    def _tokens(self, t: int) -> Fraction:
        if self.tokens is None:
            return Fraction(self.capacity())
        refill = Fraction((t - self.updated) * self.limit, self.period_us)
        return min(Fraction(self.capacity()), self.tokens + refill)

    def usage(self, t: int) -> Fraction:
        return self.capacity() - self._tokens(t)

    def newer(self, t: int) -> bool:
        return self.tokens is not None and self.updated > t

    def step_back(self, t: int) -> None:
        # the step's time counts as used (as a GCRA state reads it), down to an empty bucket
        assert self.tokens is not None
        used = Fraction((self.updated - t) * self.limit, self.period_us)
        self.tokens = max(self.tokens - used, Fraction(0))
        self.updated = t

    def record(self, t: int, cost: int) -> None:
        self.saved.append((self.tokens, self.updated))
        self.tokens = self._tokens(t) - cost
        self.updated = t

    def unrecord(self) -> None:
        self.tokens, self.updated = self.saved.pop()


MODELS = {
    "fixed_window": FixedWindowModel,
    "sliding_window": SlidingWindowModel,
    "sliding_log": SlidingLogModel,
    "token_bucket": TokenBucketModel,
}
