"""The four rate-limiting algorithms as pure functions of (state, now, cost).

All arithmetic is on integers: time in microseconds since the epoch, so every backend
(Python here, Lua in Redis) computes exactly the same answers. ``docs/algorithms.md``
states the semantics; the Lua scripts in ``storage/redis/lua`` mirror this file.

Each :class:`Algorithm` is bound to one rate (and burst): ``hit(state, now, cost) ->
(new_state, Decision)`` decides and charges (``new_state is state``: nothing changed),
``peek`` decides only, ``charge`` applies an allowed request, ``expired`` says the state
means nothing any more, ``ttl_us`` how long it must be kept.

State is ``None`` for an unknown key. For the counters and the bucket the state is one
Python ``int`` (fields packed into bit ranges, so a live key costs one small object);
the sliding log keeps a :data:`Log` (one flat array of integers).
"""

from __future__ import annotations

from array import array
from typing import Any, ClassVar, Final

from ._calendar import calendar_of
from ._decision import CLOCK_SKEW_US, Decision, later
from ._errors import ConfigError
from ._log import BIAS as _BIAS
from ._log import HEAD as _HEAD
from ._log import TYPECODE as _TYPECODE
from ._log import Log, log_entries, log_step_back, log_total, log_uncharge, new_log
from ._rates import Rate

__all__ = [
    "ALGORITHMS", "DEFAULT_STRATEGY", "Algorithm", "CalendarWindow", "FixedWindow", "Log",
    "SlidingLog", "SlidingWindow", "TokenBucket", "log_entries", "log_total", "log_uncharge",
    "make_algorithm", "new_log",
]

INF: Final = float("inf")  # (Final: a constant, not a lookup, in the compiled build)
_new: Final = tuple.__new__
_Decision: Final = Decision  # (a static in the compiled build: no module-dict lookup per hit)
_M32: Final = (1 << 32) - 1
_M64: Final = (1 << 64) - 1
_M96: Final = (1 << 96) - 1
MAX_LIMIT: Final = _M32


class Algorithm:
    """One algorithm bound to one rate; subclasses implement the arithmetic."""

    __slots__ = ("burst", "capacity", "id", "limit", "name", "period", "period_us", "rate",
                 "rerated")
    name_: ClassVar[str] = ""
    code: ClassVar[str] = ""
    #: decided per calendar period (:meth:`at` gives the period's algorithm)
    periodic: ClassVar[bool] = False

    def __init__(self, rate: Rate, burst: object = None) -> None:
        self.rate = rate
        self.limit = rate.limit
        self.period = rate.period
        self.period_us = rate.period_us
        if burst is not None:
            raise ConfigError(f"burst={burst!r} is only meaningful for the token_bucket strategy")
        self.burst = rate.limit
        self.capacity = rate.limit
        self.name = self.name_
        #: identifies this state in storage, next to the key: the same key under another
        #: strategy, rate or burst never shares state. Rules replace it (see ``_limiter``).
        self.id = f"{self.code}{rate.limit}/{self.period_us}"
        #: the id outlives the rate (a rule's counter, read again under a plan's or a
        #: tightened rate): a store must keep a state whose meaning does not depend on
        #: the limit
        self.rerated = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.rate}>"

    def decide(self, allowed: bool, remaining: int, reset_us: int, retry: float) -> Decision:
        """Build the Decision (used by backends that compute outside Python, e.g. Lua)."""
        return _new(
            _Decision,
            (allowed, self.capacity, remaining, reset_us / 1e6, retry, self.rate, False),
        )

    # The methods below are implemented by each algorithm.
    def hit(self, state: Any, now: int, cost: int) -> tuple[Any, Decision]:
        raise NotImplementedError

    def peek(self, state: Any, now: int, cost: int) -> Decision:
        return self.hit(state, now, cost)[1]

    def charge(self, state: Any, now: int, cost: int) -> Any:
        raise NotImplementedError

    def expired(self, state: Any, now: int) -> bool:
        raise NotImplementedError

    def ttl_us(self, state: Any, now: int) -> int:
        raise NotImplementedError

    def at(self, now: int) -> Algorithm:
        """The algorithm that stands for this one at ``now`` in a store computing outside
        Python: itself, except for a calendar window (:class:`CalendarWindow`)."""
        return self


class FixedWindow(Algorithm):
    """A counter per window; windows aligned to multiples of the period since the epoch.

    State: ``window_index << 32 | count``.
    """

    __slots__ = ()
    name_ = "fixed_window"
    code = "fw"

    def hit(self, state: Any, now: int, cost: int) -> tuple[Any, Decision]:
        p = self.period_us
        win = now // p
        # (typed: int arithmetic once compiled; a new key reads as the window before)
        s: int = state if state is not None else (win - 1) << 32
        if s >> 32 == win:
            count = s & _M32
            new = s  # the same window: the count is the low bits, added to in place
        elif s >> 32 > win:
            if (s >> 32) * p - now <= CLOCK_SKEW_US:  # a host ahead: as at its window's
                new, d = self.hit(s, (s >> 32) * p, cost)  # start (see later)
                return new, later(d, (s >> 32) * p - now)
            # the clock stepped back: the count carries into now's window, stored by a refusal
            new, count = s, s & _M32
            if 0 < cost <= self.limit:  # too (one that fits: as fixed_window.lua)
                state = new = (win << 32) | count
        else:
            count = 0
            new = win << 32
        limit = self.limit
        c = count + cost
        if c <= limit:
            if c:
                return new + cost, _new(_Decision, (True, limit, limit - c,
                                                   (p - now % p) / 1e6, 0.0,
                                                   self.rate, False))
            return state, _new(_Decision, (True, limit, limit, 0.0, 0.0, self.rate, False))
        retry = INF if cost > limit else (p - now % p) / 1e6  # (win + 1) * p - now
        reset = (p - now % p) / 1e6 if count else 0.0
        rem = limit - count if count < limit else 0
        return state, _new(_Decision, (False, limit, rem, reset, retry, self.rate, False))

    def charge(self, state: Any, now: int, cost: int) -> Any:
        p = self.period_us
        win = now // p
        if state is not None and state >> 32 > win and (state >> 32) * p - now <= CLOCK_SKEW_US:
            win = state >> 32  # (a host ahead: as hit)
        count = state & _M32 if state is not None and state >> 32 >= win else 0
        return (win << 32) | (count + cost)

    def expired(self, state: Any, now: int) -> bool:
        return bool(state >> 32 < now // self.period_us)

    def ttl_us(self, state: Any, now: int) -> int:
        p = self.period_us
        return int((max(state >> 32, now // p) + 1) * p - now)


class CalendarWindow(FixedWindow):
    """A counter per calendar period (a day, ISO week or month in a time zone): the fixed
    window of a calendar rate (``"1000/calendar-month"``), whatever the rule's strategy.

    State: ``period_index << 32 | count`` (see :mod:`throttlekit._calendar`). Stores that
    compute elsewhere (Lua, memcached) decide :meth:`at` instead: a fixed window ending
    where the period ends, under a storage id of its own per period.
    """

    __slots__ = ("_at", "calendar")
    name_ = "fixed_window"
    code = "cal"
    periodic = True

    def __init__(self, rate: Rate, burst: object = None) -> None:
        super().__init__(rate)  # a burst means nothing here: ignored (token_bucket rules)
        assert rate.calendar is not None
        self.calendar = calendar_of(rate.calendar, rate.tz)
        self._at: tuple[int, FixedWindow] | None = None
        # another unit or zone is another rate: never the same state (direct hits)
        self.id = f"cal{rate.limit}/{rate.calendar}/{rate.tz or 'UTC'}"

    def hit(self, state: Any, now: int, cost: int) -> tuple[Any, Decision]:
        win, _start, end = self.calendar.window(now)
        count = 0
        if state is not None and state >> 32 >= win:
            if state >> 32 == win + 1 and end - now <= CLOCK_SKEW_US:  # see FixedWindow
                new, d = self.hit(state, end, cost)
                return new, later(d, end - now)
            count = state & _M32
            if 0 < cost <= self.limit and state >> 32 > win:  # stepped back: FixedWindow
                state = (win << 32) | count
        limit = self.limit
        left = (end - now) / 1e6
        if count + cost <= limit:
            if not count + cost:  # nothing counted: nothing stored
                return state, _new(_Decision, (True, limit, limit, 0.0, 0.0, self.rate, False))
            count += cost
            return (win << 32) | count, _new(
                _Decision, (True, limit, limit - count, left, 0.0, self.rate, False))
        retry = INF if cost > limit else left
        rem = limit - count if count < limit else 0
        return state, _new(_Decision, (False, limit, rem, left if count else 0.0, retry,
                                      self.rate, False))

    def charge(self, state: Any, now: int, cost: int) -> Any:
        win, _start, end = self.calendar.window(now)
        if state is not None and state >> 32 == win + 1 and end - now <= CLOCK_SKEW_US:
            win += 1  # (a host ahead: as hit)
        count = state & _M32 if state is not None and state >> 32 >= win else 0
        return (win << 32) | (count + cost)

    def expired(self, state: Any, now: int) -> bool:
        return bool(state >> 32 < self.calendar.window(now)[0])

    def ttl_us(self, state: Any, now: int) -> int:
        win, _start, end = self.calendar.window(now)
        return (self.calendar.window(end)[2] if state >> 32 > win else end) - now

    def at(self, now: int) -> Algorithm:
        """The algorithm a store computing outside Python decides at ``now``: a fixed
        window whose period is the period's end since the epoch (so its one window ends
        exactly there, ``reset_after`` = the time left), stored under this id plus the
        period's index (the previous period's count is never read again, and expires)."""
        win, _start, end = self.calendar.window(now)
        found = self._at
        if found is not None and found[0] == win:
            return found[1]
        alg = FixedWindow(Rate(self.limit, end / 1e6))
        alg.period_us = end  # exact (the float above is only its label)
        alg.rate = self.rate
        alg.id = f"{self.id}:{win}"
        self._at = (win, alg)
        return alg


class SlidingWindow(Algorithm):
    """The two-window weighted counter.

    The previous window's count is weighted by the share of it still inside the sliding
    period: ``prev * (period - elapsed) / period + cur``. Compared in integers, scaled by
    the period. State: ``(window_index << 32 | cur) << 32 | prev``.
    """

    __slots__ = ()
    name_ = "sliding_window"
    code = "sw"

    def _load(self, state: Any, win: int) -> tuple[int, int]:
        if state is None:
            return 0, 0
        swin = state >> 64
        if swin >= win:  # (later: the clock stepped back, see hit)
            return (state >> 32) & _M32, state & _M32
        if swin == win - 1:
            return 0, (state >> 32) & _M32
        return 0, 0

    def hit(self, state: Any, now: int, cost: int) -> tuple[Any, Decision]:
        p = self.period_us
        win = now // p
        cur = prev = 0
        same = False
        s: int  # (typed, the counts a word apart: machine arithmetic once compiled)
        if state is not None:  # (self._load, inlined: every hit pays it)
            s = state
            swin = s >> 64
            counts = s & _M64
            if swin == win:
                cur = counts >> 32
                prev = counts & _M32
                same = True
            elif swin == win - 1:
                prev = counts >> 32
            elif swin > win:
                if swin * p - now <= CLOCK_SKEW_US:  # as FixedWindow.hit
                    new, d = self.hit(s, swin * p, cost)
                    return new, later(d, swin * p - now)
                # the clock stepped back: the counts carry into now's windows, stored by a
                cur, prev = counts >> 32, counts & _M32  # refusal too
                if cost:
                    state = s = (win << 64) | counts
                    same = True
        limit = self.limit
        left = p - now % p  # weight of the previous window, scaled by p: (win + 1) * p - now
        # prev * left + (cur + cost) * p <= limit * p, in whole requests: the previous
        # window weighs ceil(prev * left / p), and what is left is the remaining
        rem = limit - cur - (-(-prev * left // p) if prev else 0)
        if cost <= rem:
            if cost:
                cur += cost
                rem -= cost
                # (the same windows: cur is bits 32-63, added to in place)
                state = s + (cost << 32) if same else (win << 64) | (cur << 32) | prev
            reset = (p + left) / 1e6 if cur else left / 1e6 if prev else 0.0
            return state, _new(_Decision, (True, limit, rem, reset, 0.0, self.rate, False))
        return state, self._deny(cur, prev, left, prev * left + cur * p, cost)

    def _deny(self, cur: int, prev: int, left: int, used: int, cost: int) -> Decision:
        p = self.period_us
        limit = self.limit
        if cost > limit:
            retry = INF
        elif cur + cost <= limit:
            # Within this window, once enough of the previous one has slid out.
            retry = (left - ((limit - cur - cost) * p) // prev) / 1e6
        else:
            # In the next window, where this window becomes the weighted previous one.
            retry = (p + left - ((limit - cost) * p) // cur) / 1e6
        rem = (limit * p - used) // p
        if rem < 0:
            rem = 0
        reset = (p + left) / 1e6 if cur else left / 1e6 if prev else 0.0
        return _new(_Decision, (False, limit, rem, reset, retry, self.rate, False))

    def charge(self, state: Any, now: int, cost: int) -> Any:
        p = self.period_us
        win = now // p
        if state is not None and state >> 64 > win and (state >> 64) * p - now <= CLOCK_SKEW_US:
            win = state >> 64  # (a host ahead: as hit)
        cur, prev = self._load(state, win)
        return (((win << 32) | (cur + cost)) << 32) | prev

    def expired(self, state: Any, now: int) -> bool:
        return bool((state >> 64) + 1 < now // self.period_us)

    def ttl_us(self, state: Any, now: int) -> int:
        p = self.period_us
        return int((max(state >> 64, now // p) + 2) * p - now)


class TokenBucket(Algorithm):
    """A token bucket of capacity ``burst`` refilled at ``limit/period``, starting full.

    Kept as GCRA's debt, in integers: ``debt`` is the tokens in use scaled by the period
    (one token = ``period_us`` units, refilled at ``limit`` units per microsecond), so no
    division is needed to decide. State: ``last_update_us << 96 | debt``.
    """

    __slots__ = ()
    name_ = "token_bucket"
    code = "tb"

    def __init__(self, rate: Rate, burst: object = None) -> None:
        super().__init__(rate)
        if burst is not None:
            if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
                raise ConfigError(f"burst must be a positive integer, got {burst!r}")
            if burst > MAX_LIMIT:
                raise ConfigError(f"burst={burst!r} is too large (at most {MAX_LIMIT})")
            self.burst = burst
            self.capacity = burst
            self.id = f"{self.id}/{burst}"

    def _debt(self, state: Any, now: int) -> int:
        if state is None:
            return 0
        s: int = state
        d = s & _M96
        debt = d - (now - (s >> 96)) * self.limit
        if debt > d:  # the clock stepped back (see hit)
            return int(self._back(state, d, debt, now, 0)[0])
        return debt if debt > 0 else 0

    def _back(self, state: Any, d: int, debt: int, now: int, cost: int) -> tuple[int, Any]:
        """The clock stepped back (``now`` before the state's time): the debt seen from now
        (the step counts as used, as a GCRA state reads it), at most a full bucket (or the
        state's own, over a lowered capacity), moved to now (stored if ``cost``)."""
        cap = self.capacity * self.period_us
        if debt > cap:
            debt = d if d > cap else cap
        return debt, (now << 96) | debt if cost else state

    def hit(self, state: Any, now: int, cost: int) -> tuple[Any, Decision]:
        debt = 0
        if state is not None:
            s: int = state  # (typed: the compiled build does int arithmetic, not generic)
            d = s & _M96
            debt = d - (now - (s >> 96)) * self.limit
            if debt < 0:
                debt = 0
            elif debt > d:  # the clock stepped back
                debt, state = self._back(state, d, debt, now, cost)
        p = self.period_us
        new = debt + cost * p
        cap = self.capacity * p
        if new <= cap:
            lim = self.limit
            return (now << 96) | new if cost else state, _new(
                _Decision,
                (True, self.capacity, (cap - new) // p, -(-new // lim) / 1e6, 0.0, self.rate,
                 False),
            )
        return state, self._deny(debt, new, cost)

    def _deny(self, debt: int, new: int, cost: int) -> Decision:
        p = self.period_us
        lim = self.limit
        cap = self.capacity * p
        retry = INF if cost > self.capacity else -(-(new - cap) // lim) / 1e6
        rem = (cap - debt) // p if debt < cap else 0  # a debt over a lowered capacity
        return _new(
            _Decision,
            (False, self.capacity, rem, -(-debt // lim) / 1e6, retry, self.rate, False),
        )

    def charge(self, state: Any, now: int, cost: int) -> Any:
        return (now << 96) | (self._debt(state, now) + cost * self.period_us)

    def expired(self, state: Any, now: int) -> bool:
        return self._debt(state, now) == 0

    def ttl_us(self, state: Any, now: int) -> int:
        return int(-(-self._debt(state, now) // self.limit))


class SlidingLog(Algorithm):
    """Exact: the cost admitted in ``(now - period, now]`` plus this cost must fit the limit.

    Entries at the same microsecond are merged and zero-cost requests are not logged, so a
    log never holds more than ``limit`` live entries; entries that slid out are skipped
    (``head``) and cut off once they are more than the live ones, so a hit is amortised
    O(1) and a log at most twice its live size. The state (a :data:`Log`) is changed in
    place: ``hit`` returns the same array.
    """

    __slots__ = ()
    name_ = "sliding_log"
    code = "sl"

    def _trimmed(self, log: Log, now: int) -> int:
        """The cost logged in ``(now - period, now]``, the older entries dropped."""
        h = log[0]
        n = len(log)
        horizon = now + _BIAS - self.period_us  # (log times are biased: see _log.BIAS)
        if h < n and log[h] <= horizon:
            total = log[1]
            while h < n and log[h] <= horizon:
                total -= log[h + 1]
                h += 2
            if h + h > n + _HEAD:  # more slid out than live: cut them off
                del log[_HEAD:h]
                h = _HEAD
            log[0] = h
            log[1] = total
            return total
        return log[1]

    def hit(self, state: Any, now: int, cost: int) -> tuple[Any, Decision]:
        log: Log | None = state
        limit = self.limit
        if log is None:
            if cost > limit:
                return None, self._deny(None, now, cost)
            if not cost:
                return None, _new(_Decision, (True, limit, limit, 0.0, 0.0, self.rate, False))
            log = array(_TYPECODE, (_HEAD, cost, now + _BIAS, cost))
            return log, _new(_Decision, (True, limit, limit - cost, self.period_us / 1e6, 0.0,
                                        self.rate, False))
        b = now + _BIAS  # now as the log holds times (see _log.BIAS)
        last = log[-2]  # the newest entry (read once: the merge below needs it too)
        if last > b and len(log) > log[0]:  # the clock stepped back
            if not cost:
                return log, self.peek(log, now, cost)
            log_step_back(log, now)  # stored by a refusal too (so the log slides on this clock)
            last = b
        # (self._trimmed, inlined: every hit pays it)
        p = self.period_us
        h = log[0]
        n = len(log)
        total = log[1]
        horizon = b - p
        if h < n and log[h] <= horizon:
            total -= log[h + 1]
            h += 2
            while h < n and log[h] <= horizon:
                total -= log[h + 1]
                h += 2
            if h + h > n + _HEAD:  # more slid out than live: cut them off
                del log[_HEAD:h]
                h = _HEAD
                n = len(log)
            log[0] = h
            if total + cost > limit:
                log[1] = total
                return log, self._deny(log, now, cost)
        elif total + cost > limit:
            return log, self._deny(log, now, cost)
        if cost:
            total += cost
            log[1] = total
            if n > h and last == b:
                log[-1] += cost
            else:
                log.fromlist([b, cost])  # (one call, not two appends)
                return log, _new(_Decision, (True, limit, limit - total, p / 1e6, 0.0,
                                            self.rate, False))
        else:
            log[1] = total
        reset = (log[-2] + p - b) / 1e6 if total else 0.0
        return log, _new(_Decision, (True, limit, limit - total, reset, 0.0, self.rate, False))

    def _deny(self, log: Log | None, now: int, cost: int) -> Decision:
        limit = self.limit
        p = self.period_us
        total = 0 if log is None else log[1]
        if cost > limit:
            retry = INF
        else:
            assert log is not None  # cost <= limit is refused only with entries logged
            need = total + cost - limit
            freed = 0
            at = now + _BIAS  # (log times are biased: see _log.BIAS)
            for i in range(log[0], len(log), 2):
                freed += log[i + 1]
                if freed >= need:
                    at = log[i] + p
                    break
            retry = (at - _BIAS - now) / 1e6
        reset = (log[-2] - _BIAS + p - now) / 1e6 if total and log is not None else 0.0
        rem = limit - total if total < limit else 0
        return _new(_Decision, (False, limit, rem, reset, retry, self.rate, False))

    def peek(self, state: Any, now: int, cost: int) -> Decision:
        log: Log | None = state
        if log is not None and log[-2] > now + _BIAS and len(log) > log[0]:  # stepped back
            log = array(log.typecode, log)  # a peek stores nothing: a copy moves back
            log_step_back(log, now)
        total = 0 if log is None else self._trimmed(log, now)
        limit = self.limit
        if total + cost <= limit:
            total += cost
            if cost:
                last = now
            elif total:
                assert log is not None
                last = log[-2] - _BIAS
            reset = (last + self.period_us - now) / 1e6 if total else 0.0
            return _new(_Decision, (True, limit, limit - total, reset, 0.0, self.rate, False))
        return self._deny(log, now, cost)

    def charge(self, state: Any, now: int, cost: int) -> Any:
        return self.hit(state, now, cost)[0]

    def expired(self, state: Any, now: int) -> bool:
        log: Log = state
        return len(log) <= log[0] or log[-2] - _BIAS <= now - self.period_us

    def ttl_us(self, state: Any, now: int) -> int:
        log: Log = state
        if len(log) <= log[0]:
            return 0
        return int(log[-2] - _BIAS + self.period_us - now)


#: Epoch-aligned fixed windows: what users of Flask-Limiter and rack-attack know, the
#: cheapest check on every backend; up to twice the limit across a boundary (docs/algorithms.md).
DEFAULT_STRATEGY = "fixed_window"

ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name_: cls for cls in (FixedWindow, SlidingWindow, SlidingLog, TokenBucket)
}


def check_strategy(strategy: object, storage: Any | None) -> None:
    """Refuse (``ConfigError``) a strategy that is unknown or that ``storage`` cannot run
    (None: a storage not known yet, the name alone is checked)."""
    if not isinstance(strategy, str) or strategy not in ALGORITHMS:
        raise ConfigError(
            f"unknown strategy {strategy!r}; expected one of {', '.join(sorted(ALGORITHMS))}"
        )
    why = storage.unsupported(strategy) if storage is not None else None
    if why:
        raise ConfigError(f"strategy {strategy!r} is not available: {why}")


def make_algorithm(
    strategy: object, rate: Rate, burst: object = None, id: str | None = None
) -> Algorithm:
    """Bind ``strategy`` to ``rate``; unknown names and bad bursts raise ConfigError (typed
    ``object`` here and in the constructors: not a compiled signature's TypeError). ``id``
    replaces the default storage identity (strategy, limit, period, burst); it must not
    contain ``|``."""
    check_strategy(strategy, None)
    cls = ALGORITHMS[str(strategy)]
    if rate.limit > MAX_LIMIT:
        raise ConfigError(f"rate {rate} is too large: a limit is at most {MAX_LIMIT}")
    if rate.calendar is not None:  # a calendar rate counts per period, whatever the strategy
        cls = CalendarWindow
    alg = cls(rate, burst)
    if id is not None:
        alg.id = id
    return alg
