"""A sliding log's state, as the memory store and memcached keep it."""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from typing import Final, TypeAlias

__all__ = ["HEAD", "TYPECODE", "Log", "log_entries", "log_step_back", "log_total", "log_uncharge",
           "new_log"]

#: A sliding log's state: one ``array`` of signed 64-bit integers (:data:`TYPECODE`),
#: ``[head, total, t0, c0, t1, c1, ...]``.
#: ``(t, c)`` pairs are the admitted entries (microsecond, cost), oldest first; those
#: before index ``head`` have slid out and are dropped on a later write; ``total`` is the
#: cost of the live ones. One flat array of machine integers, not an object per entry:
#: five entries take 16 slots (128 bytes) and one small object.
Log: TypeAlias = "array[int]"
HEAD = 2  # index of the first pair in a compacted log
_EMPTY = (HEAD, 0)
#: the logs' item type, signed 64-bit: ``"l"`` where a C long is 64 bits (its item writes
#: are a third cheaper than ``"q"``'s, which parse the value with a format string; a
#: sliding log's hit writes four), ``"q"`` elsewhere (Windows)
TYPECODE: Final = "l" if array("l").itemsize == 8 else "q"


def new_log(pairs: Iterable[tuple[int, int]] = ()) -> Log:
    """A log of ``(time_us, cost)`` entries, oldest first (zero costs left out)."""
    log = array(TYPECODE, _EMPTY)
    total = 0
    for t, c in pairs:
        if c:
            log.append(t)
            log.append(c)
            total += c
    log[1] = total
    return log


def log_entries(log: Log) -> list[tuple[int, int]]:
    """The live ``(time_us, cost)`` entries of ``log``, oldest first (a copy)."""
    it = iter(log[log[0]:])
    return list(zip(it, it, strict=True))


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
    d = log[-2] - now
    for i in range(HEAD, len(log), 2):
        log[i] -= d
