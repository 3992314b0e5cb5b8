"""The Storage protocol, on every backend: batches, probes, independent checks, blocks."""

from __future__ import annotations

import pytest

from throttlekit import Rate
from throttlekit._algorithms import make_algorithm
from throttlekit.storage import Check

STRATEGIES = ["fixed_window", "sliding_window", "sliding_log", "token_bucket"]


def _now(clock) -> int:
    return int(clock() * 1_000_000)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_batch_is_all_or_nothing_but_independent_checks_stand_alone(make_limiter, clock, strategy):
    """A denied dependent check stops every dependent charge; independent ones are charged."""
    storage = make_limiter(strategy).storage
    roomy = make_algorithm(strategy, Rate(10, 60))
    full = make_algorithm(strategy, Rate(1, 60))
    now = _now(clock)
    assert storage.apply([Check(full, "k")], now=now).decisions[0].allowed
    r = storage.apply(
        [Check(roomy, "k"), Check(full, "k"), Check(roomy, "dry", 1, True)], now=now
    )
    assert [d.allowed for d in r.decisions] == [True, False, True]
    after = storage.apply(
        [Check(roomy, "k", 0), Check(roomy, "dry", 0)], consume=False, now=now
    ).decisions
    assert after[0].remaining == 10  # the dependent roomy check was not charged
    assert after[1].remaining == 9  # the independent one was


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_probe_is_decided_with_its_cost_and_never_charged(make_limiter, clock, strategy):
    """A probe answers for its cost, joins the all-or-nothing decision, and charges nothing."""
    storage = make_limiter(strategy).storage
    alg = make_algorithm(strategy, Rate(3, 60))
    other = make_algorithm(strategy, Rate(5, 60))
    now = _now(clock)
    for _ in range(3):
        d = storage.apply([Check(alg, "k", 2, False, True)], now=now).decisions[0]
        assert d.allowed and d.remaining == 1
    storage.apply([Check(alg, "k", 3)], now=now)  # fills it
    r = storage.apply([Check(alg, "k", 1, False, True), Check(other, "k")], now=now)
    assert [d.allowed for d in r.decisions] == [False, True]
    assert storage.apply([Check(other, "k", 0)], consume=False, now=now).decisions[0].remaining == 5


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_blocked_batch_charges_nothing(make_limiter, clock, strategy):
    """When a looked-up block key is found, no check of the batch is charged."""
    storage = make_limiter(strategy).storage
    alg = make_algorithm(strategy, Rate(2, 60))
    now = _now(clock)
    storage.block("bad", 60, "test", now=now)
    for _ in range(3):
        r = storage.apply(
            [Check(alg, "bad"), Check(alg, "bad-dry", 1, True)], now=now, block_keys=["bad"]
        )
        assert r.blocked[0] is not None and r.blocked[0].reason == "test"
    left = storage.apply(
        [Check(alg, "bad", 0), Check(alg, "bad-dry", 0)], consume=False, now=now
    ).decisions
    assert [d.remaining for d in left] == [2, 2]
    assert storage.unblock("bad")
    r = storage.apply([Check(alg, "bad")], now=now, block_keys=["bad"])
    assert r.blocked == [None] and r.decisions[0].remaining == 1


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_bound_hit_answers_and_counts_as_hit_does(make_limiter, clock, strategy):
    """``bind(algorithm)`` is ``hit`` for one algorithm: the same decisions, and the state
    it leaves is the state ``apply`` reads (checked on two keys driven side by side)."""
    storage = make_limiter(strategy).storage
    alg = make_algorithm(strategy, Rate(3, 10))
    bound = storage.bind(alg)
    assert storage.bind(alg)("fresh", 0, _now(clock)).remaining == 3
    for step, cost in enumerate([1, 2, 1, 0, 1, 3, 1, 1, 4, 1]):
        now = _now(clock)
        by_bound = bound("bound", cost, now)
        by_hit = storage.hit(alg, "hit", cost, now)
        assert by_bound == by_hit, step
        left = storage.apply(
            [Check(alg, "bound", 0), Check(alg, "hit", 0)], consume=False, now=now
        ).decisions
        assert left[0] == left[1], step
        clock.advance(1.5)
    assert not storage.apply([Check(alg, "bound", 4)], consume=False,
                             now=_now(clock)).decisions[0].allowed  # over capacity


def test_local_blocks_when_kept_list_the_live_blocks(make_limiter, clock):
    """``local_blocks`` is None for a store keeping its blocklist on a server; a store
    keeping it in-process shows the live entries there, the same ones ``blocked()`` lists."""
    storage = make_limiter().storage
    blocks = storage.local_blocks
    if blocks is None:
        assert storage.remote
        return
    assert not blocks
    now = _now(clock)
    storage.block("a", 60, "one", now=now)
    storage.block("b", None, "two", now=now)
    assert dict(blocks) == {b.key: b for b in storage.blocked(now=now)}
    assert storage.unblock("a")
    assert set(blocks) == {"b"}
    with pytest.raises(TypeError):
        blocks["c"] = blocks["b"]  # type: ignore[index]


def test_a_stores_own_answer_carries_no_fail_policy(make_limiter, clock):
    """``BatchResult.policy`` is None when the store itself answered, for every batch shape
    (one check, several, with block keys): the engine reads a set policy as a failure."""
    storage = make_limiter().storage
    alg = make_algorithm("fixed_window", Rate(3, 60))
    now = _now(clock)
    for checks, block_keys in [
        ([Check(alg, "p1")], ()),
        ([Check(alg, "p2"), Check(alg, "p3")], ()),
        ([Check(alg, "p4")], ["nobody"]),
        ([Check(alg, "p5", 1, False, True)], ()),
    ]:
        r = storage.apply(checks, now=now, block_keys=block_keys)
        assert r.policy is None
        assert len(r.decisions) == len(checks) and len(r.blocked) == len(block_keys)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_bound_batch_answers_and_charges_as_apply_does(make_limiter, clock, strategy):
    """``bind_batch(groups, prefix)`` is ``apply`` for fixed algorithms: group i's rates
    checked on prefix + keys[i] at costs[i], decisions flat and in order, all charged only
    if every one allows (checked against ``apply`` on twin keys driven side by side)."""
    storage = make_limiter(strategy).storage
    a = make_algorithm(strategy, Rate(4, 10))
    b = make_algorithm(strategy, Rate(3, 60))
    c = make_algorithm(strategy, Rate(5, 10))
    batch = storage.bind_batch([(a, b), (c,)], "p:")
    assert storage.bind_batch([(a, b), (c,)])(["f", "g"], [0, 0], _now(clock))[2].remaining == 5
    refused = 0
    for step, (cost1, cost2) in enumerate([(1, 1), (2, 1), (1, 3), (1, 1), (0, 2), (1, 1),
                                           (2, 0), (1, 1)]):
        now = _now(clock)
        got = batch(["b1", "b2"], [cost1, cost2], now)
        want = storage.apply(
            [Check(a, "a1", cost1), Check(b, "a1", cost1), Check(c, "a2", cost2)], now=now
        ).decisions
        assert got == want, step
        refused += not all(d.allowed for d in got)
        left = storage.apply(
            [Check(a, "p:b1", 0), Check(b, "p:b1", 0), Check(c, "p:b2", 0),
             Check(a, "a1", 0), Check(b, "a1", 0), Check(c, "a2", 0)],
            consume=False, now=now,
        ).decisions
        assert left[:3] == left[3:], step
        clock.advance(2.5)
    assert refused  # the sequence reaches a refusal, so all-or-nothing was exercised
