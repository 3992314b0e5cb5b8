"""A sliding log's state, as the memory store and memcached keep it."""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from typing import Final, TypeAlias

__all__ = ["BIAS", "HEAD", "TYPECODE", "Log", "log_entries", "log_newest", "log_step_back",
           "log_total", "log_uncharge", "new_log"]

#: A sliding log's state: one ``array`` of unsigned 64-bit integers (:data:`TYPECODE`),
#: ``[head, total, t0, c0, t1, c1, ...]``.
#: ``(t, c)`` pairs are the admitted entries (microsecond + :data:`BIAS`, cost), oldest
#: first; those before index ``head`` have slid out and are dropped on a later write;
#: ``total`` is the cost of the live ones. One flat array of machine integers, not an
#: object per entry: five entries take 16 slots (128 bytes) and one small object.
Log: TypeAlias = "array[int]"
HEAD: Final = 2  # index of the first pair in a compacted log (Final: inlined when compiled)
_EMPTY = (HEAD, 0)
#: the logs' item type, unsigned 64-bit: ``"L"`` where a C long is 64 bits (its item writes
#: cost a third of ``"q"``'s and ``"l"``'s, which parse the value with a format string; a
#: sliding log's hit writes four), ``"Q"`` elsewhere (Windows)
TYPECODE: Final = "L" if array("L").itemsize == 8 else "Q"
#: added to the times a log holds, so that an unsigned item holds any time (a clock may be
#: read before its epoch, or step back past it) and a biased time stays a machine integer
#: in the compiled build (under 2**62): times from -2**61 to 2**61 µs, ±73,000 years
BIAS: Final = 1 << 61


def new_log(pairs: Iterable[tuple[int, int]] = ()) -> Log:
    """A log of ``(time_us, cost)`` entries, oldest first (zero costs left out)."""
    log = array(TYPECODE, _EMPTY)
    total = 0
    for t, c in pairs:
        if c:
            log.append(t + BIAS)
            log.append(c)
            total += c
    log[1] = total
    return log


def log_entries(log: Log) -> list[tuple[int, int]]:
    """The live ``(time_us, cost)`` entries of ``log``, oldest first (a copy)."""
    it = iter(log[log[0]:])
    return [(t - BIAS, c) for t, c in zip(it, it, strict=True)]


def log_newest(log: Log) -> int:
    """The time of the newest entry of ``log`` (live or not; a log is never empty)."""
    return log[-2] - BIAS


def log_total(log: Log) -> int:
    """The cost of the live entries of ``log``."""
    return log[1]


def log_uncharge(log: Log, now: int, cost: int) -> bool:
    """Take back up to ``cost`` from the entry logged at ``now`` (the newest one at that
    microsecond); False when there is none.

    When the entries moved back since (a clock stepped back, in a process racing this one:
    see ``_algorithms.SlidingLog``), that entry is the newest one before ``now``: so the
    newest live entry at or before ``now`` is taken from."""
    i = len(log) - 2
    head = log[0]
    now += BIAS
    while i >= head:
        if log[i] <= now:
            take = min(log[i + 1], cost)
            log[1] -= take
            if take == log[i + 1]:
                del log[i:i + 2]
            else:
                log[i + 1] -= take
            return True
        i -= 2
    return False


def log_step_back(log: Log, now: int) -> None:
    """The clock stepped back (``now`` is before the log's newest live entry): the live
    entries move back together, in place, so that the newest is at ``now`` (the slid-out
    ones are cut off). So a client waits no longer than the period, and gets no request
    back (``_algorithms.SlidingLog``)."""
    h = log[0]
    if h > HEAD:
        del log[HEAD:h]
        log[0] = HEAD
    d = log[-2] - BIAS - now
    for i in range(HEAD, len(log), 2):
        log[i] -= d
