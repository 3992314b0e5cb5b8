"""The memory store's bound batches (see ``MemoryStorage.bind_batch``): when its checks are
on distinct states, each check decided and charged in one pass, the charges undone if one
refuses (``distinct_batch``); otherwise every check decided first, then all charged
(``staged_batch``).

Every check of such a batch reads a state no other check of it writes (no two checks share
an algorithm id, and none is a sliding log, whose hit appends in place), so charging a
check as soon as it allows decides the next ones as deciding them all first would; the
common batch, where every check allows, then pays one pass and no staging. A refusal
puts back the states charged before it and decides the rest without charging: all or
nothing, as the two-pass batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from operator import add, itemgetter
from typing import Any

from .._algorithms import Algorithm
from .._decision import Decision
from .._log import log_newest
from .base import BoundBatch

__all__ = ["CHARGE_LATER", "distinct_batch", "staged_batch", "store_refused"]

#: a sliding log's staged charge, made once every check of the batch allows
CHARGE_LATER: Any = object()

#: (algorithm, storage prefix, is a sliding log, group) per check
Entry = tuple[Algorithm, str, bool, int]


def distinct_batch(refs: tuple[Any, ...], plan: tuple[Entry, ...]) -> BoundBatch:
    """The one-pass batch of ``plan`` on the store whose ``_refs()`` are ``refs``."""
    data, get, touch, protected, revive, acquire, release, insert, clock, wall = refs
    time_ns = time.time_ns
    algorithms = tuple(alg for alg, _, _, _ in plan)
    prefixes = tuple(prefix for _, prefix, _, _ in plan)
    groups = tuple(i for _, _, _, i in plan)
    one_each = groups == tuple(range(len(plan)))  # one algorithm per key (one rate each)
    # each check's key (or cost) from the groups' (in C: no Python call per batch)
    pick = itemgetter(*groups) if len(groups) > 1 else itemgetter(slice(0, 1))
    #: the keys of the last call and their storage keys: a hot client's are made (and
    #: hashed) once, not per check and request (one tuple: a racing call reads both)
    last: tuple[Sequence[str] | None, list[str]] = (None, [])

    def batch(keys: Sequence[str], costs: Sequence[int], now: int | None) -> list[Decision]:
        nonlocal last
        if now is None:
            now = time_ns() // 1000 if wall else int(clock() * 1_000_000)
        seen = last
        if keys == seen[0]:
            ks = seen[1]
        else:
            ks = list(map(add, prefixes, pick(keys)))
            last = (keys if keys.__class__ is tuple else list(keys), ks)  # (a copy of a list)
        given = costs
        if not one_each:
            costs = pick(costs)
        decisions: list[Decision] = []
        olds: list[Any] = []  # each check's state before it was charged
        acquire()
        try:
            for alg, k, cost in zip(algorithms, ks, costs):  # noqa: B905
                s = get(k)
                if s is None and protected:
                    s = revive(k)
                new, d = alg.hit(s, now, cost)
                decisions.append(d)
                if not d[0]:  # (d.allowed: a tuple's item, cheaper than its name)
                    store_refused(data, k, s, new, alg, now, cost)
                    _refused(refs, plan, keys, given, now, decisions, olds)
                    break
                olds.append(s)
                if cost:
                    if s is None:
                        insert(k, new, alg, now)
                    else:
                        data[k] = new
                        touch(k)
        finally:
            release()
        return decisions

    return batch


def _refused(refs: tuple[Any, ...], plan: tuple[Entry, ...], keys: Sequence[str],
             costs: Sequence[int], now: int, decisions: list[Decision],
             olds: list[Any]) -> None:
    """A check refused (the last of ``decisions``): put back the states charged before it
    and decide the checks after it, charging nothing (the lock is held)."""
    data, get, _, protected, revive = refs[:5]
    refused = len(olds)
    for n, s in enumerate(olds):
        _, prefix, _, i = plan[n]
        if costs[i]:
            k = prefix + keys[i]
            # (a later check's insert may have moved it to the protected tier)
            if data.pop(k, None) is None and protected:
                protected.pop(k, None)
            if s is not None:
                data[k] = s
    for alg, prefix, _, i in plan[refused + 1:]:
        k = prefix + keys[i]
        s = get(k)
        if s is None and protected:
            s = revive(k)
        decisions.append(alg.peek(s, now, costs[i]))


def staged_batch(refs: tuple[Any, ...], plan: tuple[Entry, ...]) -> BoundBatch:
    """The two-pass batch of ``plan``: every check decided, then all charged only if every
    one allows (a sliding log's hit appends in place: decided now, charged later)."""
    data, get, touch, protected, revive, acquire, release, insert, clock, wall = refs
    time_ns = time.time_ns

    def batch(keys: Sequence[str], costs: Sequence[int], now: int | None) -> list[Decision]:
        if now is None:
            now = time_ns() // 1000 if wall else int(clock() * 1_000_000)
        decisions: list[Decision] = []
        staged = []
        together = True
        acquire()
        try:
            # Decide every check (a sliding log's hit appends in place: it is decided
            # now and charged later), then charge them all only if every one allows.
            for alg, prefix, log, i in plan:
                k = prefix + keys[i]
                cost = costs[i]
                s = get(k)
                if s is None and protected:
                    s = revive(k)
                if log:
                    d = alg.peek(s, now, cost)
                    new = CHARGE_LATER
                else:
                    new, d = alg.hit(s, now, cost)
                decisions.append(d)
                if not d.allowed:
                    together = False
                    store_refused(data, k, s, new, alg, now, cost)
                elif cost:
                    staged.append((k, s, new, alg, cost))
            if together:
                for k, s, new, alg, cost in staged:
                    if new is CHARGE_LATER:
                        new = alg.charge(s, now, cost)
                    if s is None:
                        insert(k, new, alg, now)
                    else:
                        data[k] = new
                        touch(k)
        finally:
            release()
        return decisions

    return batch


def store_refused(data: Any, k: str, s: Any, new: Any, alg: Algorithm, now: int, cost: int) -> None:
    """A batch's refused check (``cost`` 0: a probe, or not consumed): when its state is
    newer than ``now`` (the clock stepped back), store the state moved to now, as a refusal
    does (``_algorithms``); a sliding log's (decided by peek) is moved in place by a hit."""
    if s is None or not cost:
        return
    if new is CHARGE_LATER:
        if log_newest(s) > now:
            alg.hit(s, now, cost)
    elif new is not s:
        data[k] = new
