"""The in-memory store under rates made without end (a rate per request, say): what it
keeps per algorithm id stays bounded, and a counter in use keeps counting through it.

The store holds each state under a short tag of its algorithm's id; a tag no state and no
bound hit uses is forgotten (``MemoryStorage._sweep_tags``). Driven through the public API
with a ``FakeClock``.
"""

from __future__ import annotations

import gc
import tracemalloc

from throttlekit import Limiter, MemoryStorage, Rate
from throttlekit._algorithms import make_algorithm
from throttlekit.storage import Check
from throttlekit.testing import FakeClock


def _distinct_rates(store: MemoryStorage, start: int, n: int, now: int) -> None:
    """``n`` rates never seen before, each hit once on a key of its own."""
    for i in range(start, start + n):
        store.hit(make_algorithm("fixed_window", Rate(i + 1, 60.0)), f"k{i}", 1, now)


def test_rates_made_without_end_do_not_grow_the_store() -> None:
    """40,000 more distinct rates on a store of 1,000 keys leave no more than what its
    bounds allow (the tags of its keys and of the bound hits it caches, swept at twice
    that) behind: each used to leave about 450 bytes, 18 MB here."""
    store = MemoryStorage(max_keys=1000)
    now = 1_700_000_000_000_000
    _distinct_rates(store, 0, 5000, now)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        _distinct_rates(store, 5000, 40_000, now)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(store) == 1000
    assert grown < 4_000_000, grown


def test_counters_in_use_keep_counting_while_unused_tags_go() -> None:
    """A direct limit and a throttle counted before thousands of passing rates are still
    counted after them, by the bound hit and by the batch path alike (one state each:
    a tag in use is never renumbered)."""
    clock = FakeClock()
    lim = Limiter(clock=clock)
    store = lim.storage
    assert isinstance(store, MemoryStorage)
    for _ in range(3):
        assert lim.hit("ann", "5/minute").allowed
    now = int(clock() * 1_000_000)
    _distinct_rates(store, 0, 6000, now)  # a few sweeps
    assert lim.test("ann", "5/minute").remaining == 1  # the batch path: same state
    assert lim.hit("ann", "5/minute").remaining == 1  # the bound hit: same state
    alg = lim.plan("5/minute").algorithms[0]
    [d] = store.apply([Check(alg, "ann", 1)], now=now).decisions
    assert d.allowed and d.remaining == 0
    assert not lim.hit("ann", "5/minute").allowed


def test_a_tag_only_probed_is_forgotten_and_its_rate_counts_afresh() -> None:
    """A rate only ever tested (no state stored) is forgotten by a sweep; used again, it
    counts from zero, as a fresh key does."""
    store = MemoryStorage(max_keys=1000)
    now = 1_700_000_000_000_000
    alg = make_algorithm("fixed_window", Rate(2, 60.0))
    [d] = store.apply([Check(alg, "bob", 1)], consume=False, now=now).decisions
    assert d.remaining == 1
    _distinct_rates(store, 100, 3000, now)
    assert alg.id not in store._tags
    res = store.apply([Check(alg, "bob", 1)], now=now)
    assert [d.remaining for d in res.decisions] == [1]
    assert store.apply([Check(alg, "bob", 1)], now=now).decisions[0].remaining == 0
    assert not store.apply([Check(alg, "bob", 1)], now=now).decisions[0].allowed


def test_a_bound_batch_refused_late_charges_none_of_its_checks() -> None:
    """The one-pass batch (checks on distinct states) charges each check as it allows and
    puts them back when a later one refuses: a fresh key is not left behind, a counted
    one keeps its count, whichever tier the store moved it to meanwhile."""
    for max_keys in (1000, 3):
        store = MemoryStorage(max_keys=max_keys)
        now = 1_700_000_000_000_000
        roomy, counted, tight = (make_algorithm("fixed_window", Rate(n, 60.0))
                                 for n in (10, 5, 1))
        batch = store.bind_batch([(roomy,), (counted,), (tight,)], "p:")
        assert [d.remaining for d in batch(["old", "old", "x"], [1, 1, 1], now)] == [9, 4, 0]
        got = batch(["new", "old", "x"], [1, 1, 1], now)  # the last one refuses
        assert [d.allowed for d in got] == [True, True, False]
        left = store.apply([Check(roomy, "p:new", 0), Check(counted, "p:old", 0)],
                           consume=False, now=now).decisions
        assert [d.remaining for d in left] == [10, 4], max_keys
        middle = store.bind_batch([(roomy,), (tight,), (counted,)], "p:")
        got = middle(["new", "x", "old"], [1, 1, 1], now)  # refused in the middle
        assert [d.allowed for d in got] == [True, False, True]
        assert [d.remaining for d in got] == [9, 0, 3]  # decided, none charged
        left = store.apply([Check(roomy, "p:new", 0), Check(counted, "p:old", 0)],
                           consume=False, now=now).decisions
        assert [d.remaining for d in left] == [10, 4], max_keys
