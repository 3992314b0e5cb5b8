"""The memory store's single-check hit (see ``MemoryStorage.bind``): one lock, one dict
lookup, the algorithm's arithmetic, one store.

A module of its own so that the optional compiled build (``THROTTLEKIT_COMPILE=1``, see
``docs/index.md``) compiles it with the algorithms, and calls their ``hit`` directly;
this source is what runs otherwise.
"""

from __future__ import annotations

import time
from typing import Any

from .._algorithms import Algorithm
from .._decision import Decision
from .base import BoundHit

__all__ = ["bound_hit"]


def bound_hit(refs: tuple[Any, ...], algorithm: Algorithm, prefix: str,
              lifetime: object) -> BoundHit:
    """``algorithm``'s hit on the store whose ``_refs()`` are ``refs``, its states stored
    under ``prefix`` + key; it keeps ``lifetime`` alive for as long as it lives (the store
    weakly references that, never the hit: mypyc reuses a compiled function's memory
    without clearing weak references to it)."""
    data, get, touch, protected, revive, acquire, release, insert, clock, wall = refs
    time_ns = time.time_ns
    # the last key and its storage key (and the lifetime, held by the hit through it)
    last: tuple[str | None, str, object] = (None, "", lifetime)

    def hit(key: str, cost: int, now: int | None) -> Decision:
        nonlocal last
        # (t: a machine integer in the compiled build; now, an object that may be None)
        t = (time_ns() // 1000 if wall else int(clock() * 1_000_000)) if now is None else now
        seen = last  # (one tuple: a racing call never reads half of another's)
        if key == seen[0]:  # a hot key: its storage key made and hashed once
            k = seen[1]
        else:
            k = prefix + key
            last = (key, k, lifetime)
        acquire()  # bound acquire/release: half the cost of `with lock` here
        try:
            state = get(k)
            if state is None and protected:
                state = revive(k)
            new, decision = algorithm.hit(state, t, cost)
            if new is not state:
                if state is None:
                    insert(k, new, algorithm, t)
                else:
                    data[k] = new
                    touch(k)
            elif state is not None:
                touch(k)
        finally:
            release()
        return decision

    return hit
