"""The memory store's compact state (issue 14): a sliding log as one flat array, states held
under a short tag of their algorithm, and what users rely on through them: expiry,
eviction at ``max_keys``, ``reset``, ``test`` (peek), and exact counts under threads.

Driven through ``Limiter`` with a ``FakeClock``; the log helpers directly.
"""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from throttlekit import Limiter, MemoryStorage
from throttlekit._algorithms import log_entries, log_total, log_uncharge, make_algorithm, new_log
from throttlekit._rates import parse_rates
from throttlekit.testing import FakeClock

START = 1_700_000_040.0  # a minute boundary
STRATEGIES = ["fixed_window", "sliding_window", "sliding_log", "token_bucket"]

_pairs = st.lists(st.tuples(st.integers(0, 2**52), st.integers(0, 2**32)), max_size=20)


@given(_pairs)
def test_a_log_keeps_its_entries_and_their_total(pairs: list[tuple[int, int]]) -> None:
    """new_log / log_entries round-trip (zero costs are not logged), total is their sum."""
    pairs.sort()
    log = new_log(pairs)
    kept = [(t, c) for t, c in pairs if c]
    assert log_entries(log) == kept
    assert log_total(log) == sum(c for _, c in kept)


@given(_pairs, st.integers(0, 2**33))
def test_uncharge_takes_back_from_the_newest_entry_at_that_time(
    pairs: list[tuple[int, int]], cost: int
) -> None:
    pairs.sort()
    log = new_log(pairs)
    kept = [(t, c) for t, c in pairs if c]
    if not kept:
        assert not log_uncharge(log, 7, cost)
        return
    t = kept[-1][0]
    i = max(i for i, (u, _) in enumerate(kept) if u == t)
    assert log_uncharge(log, t, cost)
    left = kept[i][1] - min(kept[i][1], cost)
    want = kept[:i] + ([(t, left)] if left else []) + kept[i + 1:]
    assert log_entries(log) == want
    assert log_total(log) == sum(c for _, c in want)


def test_a_busy_log_stays_within_twice_its_live_entries() -> None:
    """Entries that slid out are cut off on write: a key hit for many periods holds at
    most about twice the entries its limit allows, never its whole history."""
    alg = make_algorithm("sliding_log", parse_rates("10/second")[0])
    now = 1_700_000_000_000_000
    state = None
    longest = 0
    for i in range(5_000):
        state, _ = alg.hit(state, now + i * 37_000, 1)
        assert state is not None
        longest = max(longest, len(state))
    assert longest <= 2 + 2 * (2 * 10 + 1)
    # what is left is exactly the last second's admissions
    last = now + 4_999 * 37_000
    live = log_entries(state)
    assert all(last - 1_000_000 < t <= last for t, _ in live)
    assert log_total(state) == sum(c for _, c in live) == 10 - alg.peek(state, last, 0).remaining


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_expired_state_is_reclaimed_as_new_keys_arrive(strategy: str) -> None:
    clock = FakeClock(START)
    storage = MemoryStorage()
    limiter = Limiter(storage, clock=clock, strategy=strategy)
    for i in range(100):
        for _ in range(3):
            limiter.hit(f"old{i}", "5/second")
    assert len(storage) == 100
    clock.advance(3)  # every old key's state says nothing any more
    for i in range(100):
        limiter.hit(f"new{i}", "5/second")
    assert len(storage) == 100  # each insert dropped expired ones from the cold end
    assert limiter.test("old0", "5/second", cost=0).remaining == 5


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_eviction_at_max_keys_starts_the_least_recent_key_afresh(strategy: str) -> None:
    clock = FakeClock(START)
    storage = MemoryStorage(max_keys=3)
    limiter = Limiter(storage, clock=clock, strategy=strategy)
    for key in ("a", "b", "c"):
        limiter.hit(key, "5/minute", cost=2)
    limiter.hit("a", "5/minute")  # a is now the most recent
    limiter.hit("d", "5/minute")  # evicts b
    assert len(storage) == 3
    assert limiter.test("b", "5/minute", cost=0).remaining == 5
    assert limiter.test("a", "5/minute", cost=0).remaining == 2
    assert limiter.test("c", "5/minute", cost=0).remaining == 3


def test_reset_forgets_a_key_under_every_strategy_and_rate_only() -> None:
    clock = FakeClock(START)
    limiter = Limiter(clock=clock)
    for strategy in STRATEGIES:
        for rate in ("3/minute", "4/hour"):
            for key in ("k", "other"):
                limiter.hit(key, rate, strategy=strategy, cost=2)
    limiter.reset("k")
    for strategy in STRATEGIES:
        assert limiter.test("k", "3/minute", strategy=strategy, cost=0).remaining == 3
        assert limiter.test("k", "4/hour", strategy=strategy, cost=0).remaining == 4
        assert limiter.test("other", "3/minute", strategy=strategy, cost=0).remaining == 1
        assert limiter.test("other", "4/hour", strategy=strategy, cost=0).remaining == 2


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_peek_charges_nothing_and_agrees_with_hit(strategy: str) -> None:
    clock = FakeClock(START)
    limiter = Limiter(clock=clock, strategy=strategy)
    for step in range(12):
        peeked = limiter.test("k", "5/second")
        again = limiter.test("k", "5/second")
        assert peeked == again
        assert limiter.hit("k", "5/second") == peeked
        clock.advance(0.15 if step % 3 else 0.0)


def test_the_same_key_under_other_rates_never_shares_state() -> None:
    clock = FakeClock(START)
    limiter = Limiter(clock=clock, strategy="sliding_log")
    assert limiter.hit("k", "2/minute", cost=2).remaining == 0
    assert limiter.hit("k", "3/minute").remaining == 2
    assert limiter.hit("k", "2/minute", strategy="fixed_window").remaining == 1
    assert not limiter.hit("k", "2/minute").allowed


def test_rates_bound_from_many_threads_admit_exactly_their_limits() -> None:
    """Each rate's tag is made once, whichever thread binds it first: 8 threads on the same
    key, each rate hit from every thread, admit exactly each rate's limit."""
    clock = FakeClock(START)
    limiter = Limiter(clock=clock, strategy="sliding_log")
    rates = [f"{50 + i}/minute" for i in range(8)]
    admitted = {r: 0 for r in rates}
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def work(offset: int) -> None:
        barrier.wait()
        for j in range(8 * 60):
            rate = rates[(offset + j) % 8]
            if limiter.hit("same", rate).allowed:
                with lock:
                    admitted[rate] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert admitted == {r: 50 + i for i, r in enumerate(rates)}
