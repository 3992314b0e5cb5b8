"""The Limiter API: rates, strategies, costs, keys, multi-rate, test(), reset(), async."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

from throttlekit import ConfigError, Decision, Limiter, MemoryStorage, Rate, parse_rates
from throttlekit.storage import BatchResult, Check, storage_from_url
from throttlekit.testing import FakeClock

STRATEGIES = ["fixed_window", "sliding_window", "sliding_log", "token_bucket"]


# -- rates --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10/second", [Rate(10, 1.0)]),
        ("100 per minute", [Rate(100, 60.0)]),
        ("5/10 seconds", [Rate(5, 10.0)]),
        ("10/second; 1000/hour", [Rate(10, 1.0), Rate(1000, 3600.0)]),
        ("1/day, 2 per 2 hours", [Rate(1, 86400.0), Rate(2, 7200.0)]),
    ],
)
def test_parse_rates_accepts_limits_syntax(text, expected):
    """The rate syntax of `limits` parses to (limit, period-in-seconds) pairs."""
    assert parse_rates(text) == expected


@pytest.mark.parametrize(
    "text", ["", "abc", "10", "10/fortnight", "0/second", "-1/second", "1.5/second", "10/0 seconds"]
)
def test_parse_rates_rejects_bad_text_quoting_it(text):
    """Bad rate strings raise ConfigError (a ValueError) that quotes the text."""
    with pytest.raises(ConfigError) as info:
        parse_rates(text)
    assert repr(text) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_rate_str_is_readable():
    """A Rate prints the way users write it."""
    assert str(Rate(10, 60.0)) == "10 per 60 seconds"
    assert str(Rate(1, 1.0)) == "1 per 1 second"


# -- configuration errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"strategy": "leaky"}, "leaky"),
        ({"on_storage_error": "explode"}, "explode"),
        ({"burst": 0}, "0"),
        ({"clock": 42}, "42"),
        ({"storage": "nosuch://x"}, "nosuch://x"),
        ({"storage": 3.5}, "3.5"),
        ({"denial_cache_size": -1}, "-1"),
    ],
)
def test_limiter_config_errors_name_the_value(kwargs, needle):
    """Bad Limiter arguments are a ConfigError at construction, naming the bad value."""
    with pytest.raises(ConfigError, match=None) as info:
        Limiter(**kwargs)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda lim: lim.hit("k", "10/second", strategy="nope"), "nope"),
        (lambda lim: lim.hit("k", "ten per second"), "ten per second"),
        (lambda lim: lim.hit("k", "1/second", cost=-1), "-1"),
        (lambda lim: lim.hit("k", "1/second", cost=1.5), "1.5"),
        (lambda lim: lim.hit("k", Rate(0, 1.0)), "limit"),
        (lambda lim: lim.hit("k", Rate(1, 0.0)), "period"),
        (lambda lim: lim.hit("k", []), "empty"),
        (lambda lim: lim.hit("k", 42), "42"),
        (lambda lim: lim.hit("k", "1/second", burst=3), "token_bucket"),
        (lambda lim: lim.hit("k", "1/second", strategy="token_bucket", burst=-2), "-2"),
    ],
)
def test_bad_call_arguments_raise_config_error(call, needle):
    """Invalid strategies, rates, costs and bursts raise ConfigError naming the value."""
    with pytest.raises(ConfigError) as info:
        call(Limiter())
    assert needle in str(info.value)


def test_memory_storage_rejects_bad_max_keys():
    """max_keys must be a positive integer."""
    for bad in (0, -5, "many", True):
        with pytest.raises(ConfigError):
            MemoryStorage(max_keys=bad)
    assert storage_from_url("memory://?max_keys=7").max_keys == 7
    with pytest.raises(ConfigError, match="bogus"):
        storage_from_url("memory://?bogus=1")


# -- semantics over every backend ---------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_rates_forms_are_equivalent(make_limiter, strategy):
    """A rate string, a Rate and a list of Rates are the same limit."""
    limiter = make_limiter(strategy)
    for key, rates in [("a", "3/minute"), ("b", Rate(3, 60.0)), ("c", [Rate(3, 60.0)])]:
        got = [limiter.hit(key, rates).allowed for _ in range(4)]
        assert got == [True, True, True, False], key


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_multi_rate_denial_charges_nothing(make_limiter, clock, strategy):
    """With several rates, a request denied by one rate consumes from none of them."""
    limiter = make_limiter(strategy)
    rates = "2/second; 5/minute"
    assert [limiter.hit("k", rates).allowed for _ in range(3)] == [True, True, False]
    denied = limiter.hit("k", rates)
    assert not denied.allowed
    assert denied.rate == Rate(2, 1.0)
    # Had the denied hits been charged against 5/minute, fewer than 3 more would pass.
    clock.advance(2)
    assert [limiter.hit("k", rates).allowed for _ in range(2)] == [True, True]
    clock.advance(2)
    last = limiter.hit("k", rates)
    assert last.allowed
    assert last.rate == Rate(5, 60.0)
    assert last.remaining == 0
    refused = limiter.hit("k", rates)
    assert not refused.allowed and refused.rate == Rate(5, 60.0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_multi_rate_reports_longest_wait_and_least_remaining(make_limiter, strategy):
    """Allowed: the rate with least remaining; denied: the denying rate with the longest wait."""
    limiter = make_limiter(strategy)
    d = limiter.hit("k", "10/second; 3/hour")
    assert d.rate == Rate(3, 3600.0) and d.remaining == 2
    limiter.hit("k", "10/second; 3/hour")
    limiter.hit("k", "10/second; 3/hour")
    denied = limiter.hit("k", "10/second; 3/hour")
    assert not denied.allowed and denied.rate == Rate(3, 3600.0)
    assert denied.retry_after > 1


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_test_consumes_nothing(make_limiter, strategy):
    """test() answers what hit() would, and charges nothing."""
    limiter = make_limiter(strategy)
    for _ in range(5):
        t = limiter.test("k", "3/minute")
        assert t.allowed and t.remaining == 2
    h = limiter.hit("k", "3/minute")
    assert (h.allowed, h.remaining) == (t.allowed, t.remaining)
    limiter.hit("k", "3/minute")
    limiter.hit("k", "3/minute")
    assert not limiter.test("k", "3/minute").allowed
    assert limiter.test("k", "3/minute", cost=0).allowed


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cost_above_capacity_is_never_allowed(make_limiter, strategy):
    """A cost above the capacity is denied with an infinite retry_after, never raised."""
    limiter = make_limiter(strategy)
    d = limiter.hit("k", "5/second", cost=6)
    assert not d.allowed and math.isinf(d.retry_after) and d.remaining == 5
    assert limiter.hit("k", "5/second", cost=5).allowed


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_denied_remaining_is_uncharged_value(make_limiter, strategy):
    """On denial nothing is charged: remaining stays what is really left."""
    limiter = make_limiter(strategy)
    assert limiter.hit("k", "5/minute", cost=3).remaining == 2
    d = limiter.hit("k", "5/minute", cost=3)
    assert not d.allowed and d.remaining == 2 and d.retry_after > 0
    assert limiter.hit("k", "5/minute", cost=2).allowed


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_same_key_under_other_rates_or_strategies_is_separate(make_limiter, strategy):
    """A key's state under one rate or strategy never leaks into another."""
    limiter = make_limiter(strategy)
    assert limiter.hit("k", "1/minute").allowed
    assert not limiter.hit("k", "1/minute").allowed
    assert limiter.hit("k", "2/minute").allowed
    assert limiter.hit("k", "1/hour").allowed
    other = "fixed_window" if strategy != "fixed_window" else "token_bucket"
    if other in limiter.storage.algorithms:
        assert limiter.hit("k", "1/minute", strategy=other).allowed


@pytest.mark.parametrize(
    ("a", "b"),
    [("a/b", "a"), ("a|b", "a"), ("x", "x "), ("", " "), ("é", "e"), ("k:1", "k"), ("{t}", "t")],
)
def test_distinct_keys_never_collide(make_limiter, a, b):
    """Keys that differ in any way (separators, spaces, unicode, braces) have separate state."""
    limiter = make_limiter()
    assert limiter.hit(a, "1/minute").allowed
    assert limiter.hit(b, "1/minute").allowed
    assert not limiter.hit(a, "1/minute").allowed


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_reset_forgets_every_rate_and_strategy(make_limiter, strategy):
    """reset(key) restores a full quota under every rate of that key, and no other key."""
    limiter = make_limiter(strategy)
    for rates in ("1/minute", "1/hour"):
        limiter.hit("k", rates)
        limiter.hit("other", rates)
        assert not limiter.hit("k", rates).allowed
    limiter.reset("k")
    assert limiter.hit("k", "1/minute").allowed
    assert limiter.hit("k", "1/hour").allowed
    assert not limiter.hit("other", "1/minute").allowed


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_async_twins_share_state_with_sync(make_limiter, strategy):
    """ahit/atest/areset behave like hit/test/reset on the same state."""
    limiter = make_limiter(strategy)

    async def scenario() -> list[bool]:
        out = [(await limiter.ahit("k", "2/minute")).allowed]
        out.append(limiter.hit("k", "2/minute").allowed)
        out.append((await limiter.atest("k", "2/minute")).allowed)
        out.append((await limiter.ahit("k", "2/minute")).allowed)
        await limiter.areset("k")
        out.append((await limiter.ahit("k", "2/minute")).allowed)
        aclose = getattr(limiter.storage, "aclose", None)
        if aclose is not None:  # async clients belong to this event loop
            await aclose()
        return out

    assert asyncio.run(scenario()) == [True, True, False, False, True]


def test_token_bucket_burst_and_refill(make_limiter, clock):
    """burst sets the capacity; tokens refill continuously at limit/period."""
    limiter = make_limiter("token_bucket")
    results = [limiter.hit("k", "2/second", burst=5) for _ in range(6)]
    assert [d.allowed for d in results] == [True] * 5 + [False]
    assert results[0].limit == 5
    assert results[-1].retry_after == pytest.approx(0.5)
    clock.advance(0.5)
    assert limiter.hit("k", "2/second", burst=5).allowed
    assert not limiter.hit("k", "2/second", burst=5).allowed


def test_limiter_default_burst_applies_to_token_bucket_only(clock):
    """Limiter(burst=...) is the token-bucket default and leaves other strategies alone."""
    limiter = Limiter(clock=clock, burst=4)
    assert limiter.hit("k", "1/minute", strategy="token_bucket").limit == 4
    assert limiter.hit("k", "1/minute", strategy="fixed_window").limit == 1


def test_fixed_windows_align_to_the_epoch(clock):
    """Fixed windows start at multiples of the period, whatever the first hit's time."""
    limiter = Limiter(clock=clock, strategy="fixed_window")
    clock.set(1_699_920_040.0)  # 40 s into a minute window
    d = limiter.hit("k", "1/minute")
    assert d.reset_after == pytest.approx(20.0)
    assert limiter.hit("k", "1/minute").retry_after == pytest.approx(20.0)
    clock.advance(20)
    assert limiter.hit("k", "1/minute").allowed


def test_decision_is_immutable():
    """Decisions cannot be modified."""
    d = Limiter().hit("k", "1/second")
    assert isinstance(d, Decision)
    with pytest.raises(AttributeError):
        d.allowed = False  # type: ignore[misc]


# -- the memory backend -------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_threads_admit_exactly_the_limit(strategy):
    """8 threads x 10,000 hits on one key admit exactly the limit."""
    limiter = Limiter(strategy=strategy, clock=FakeClock())  # (exact counts: a clock of its own)
    admitted = [0] * 8
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        n = 0
        for _ in range(10_000):
            if limiter.hit("hot", "500/hour").allowed:
                n += 1
        admitted[i] = n

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 500


def test_max_keys_evicts_least_recently_used(clock):
    """Beyond max_keys the least recently used key is evicted and starts afresh."""
    storage = MemoryStorage(max_keys=3)
    limiter = Limiter(storage, clock=clock)
    for key in ("a", "b", "c"):
        limiter.hit(key, "1/hour")
    limiter.hit("a", "1/hour")  # a is now the most recently used
    limiter.hit("d", "1/hour")  # evicts b
    assert len(storage) == 3
    assert limiter.hit("b", "1/hour").allowed  # b was forgotten (and evicts c)
    assert not limiter.hit("a", "1/hour").allowed
    assert not limiter.hit("d", "1/hour").allowed


def test_expired_state_is_reclaimed_without_a_thread(clock):
    """Expired keys are dropped as new keys arrive; no background thread is started."""
    before = threading.active_count()
    storage = MemoryStorage()
    limiter = Limiter(storage, clock=clock)
    for i in range(1000):
        limiter.hit(f"old{i}", "5/second")
    clock.advance(10)
    for i in range(1000):
        limiter.hit(f"new{i}", "5/second")
    assert len(storage) <= 1001
    assert threading.active_count() == before


def test_flood_of_random_keys_stays_bounded():
    """A flood of distinct keys cannot grow memory past max_keys."""
    storage = MemoryStorage(max_keys=1000)
    limiter = Limiter(storage)
    for i in range(20_000):
        limiter.hit(f"attacker-{i}", "10/minute")
    assert len(storage) == 1000


class CountingRemote(MemoryStorage):
    """A memory store that presents itself as remote and counts round trips."""

    remote = True

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.fail = False

    def apply(self, checks, *, consume=True, now=None, block_keys=()) -> BatchResult:
        self.calls += 1
        if self.fail:
            raise ConnectionError("store down")
        return super().apply(checks, consume=consume, now=now, block_keys=block_keys)


def test_denial_cache_spares_round_trips_until_retry_time(clock):
    """A key refused until T is refused locally until T, then the store is asked again."""
    store = CountingRemote()
    limiter = Limiter(store, clock=clock, strategy="fixed_window")
    clock.set(1_699_920_000.0)
    assert limiter.hit("k", "2/minute").allowed
    assert limiter.hit("k", "2/minute").allowed
    first = limiter.hit("k", "2/minute")
    assert not first.allowed and store.calls == 3
    for _ in range(100):
        again = limiter.hit("k", "2/minute")
        assert not again.allowed
    assert store.calls == 3
    clock.advance(30)
    assert limiter.hit("k", "2/minute").retry_after == pytest.approx(30)
    assert store.calls == 3
    clock.advance(30)
    assert limiter.hit("k", "2/minute").allowed
    assert store.calls == 4


def test_reset_clears_the_denial_cache(clock):
    """An admin reset takes effect at once in the process that made it."""
    store = CountingRemote()
    limiter = Limiter(store, clock=clock)
    limiter.hit("k", "1/minute")
    assert not limiter.hit("k", "1/minute").allowed
    limiter.reset("k")
    assert limiter.hit("k", "1/minute").allowed


@pytest.mark.parametrize(
    ("policy", "allowed"),
    [("allow", [True] * 4), ("deny", [False] * 4), ("local", [True, True, False, False])],
)
def test_failing_store_answers_by_policy(clock, caplog, policy, allowed):
    """A failing store never raises: the policy answers, degraded, logged once."""
    store = CountingRemote()
    store.fail = True
    limiter = Limiter(store, clock=clock, on_storage_error=policy)
    with caplog.at_level("ERROR", logger="throttlekit"):
        got = [limiter.hit("k", "2/minute") for _ in range(4)]
    assert [d.allowed for d in got] == allowed
    assert all(d.degraded for d in got)
    assert store.calls == 1  # the breaker is open: no call per request
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1


def test_store_recovers_after_retry_interval(clock, monkeypatch):
    """Once the store answers again, decisions come from it and are no longer degraded."""
    store = CountingRemote()
    store.fail = True
    limiter = Limiter(store, clock=clock, retry_interval=0.0)
    assert limiter.hit("k", "5/minute").degraded
    store.fail = False
    d = limiter.hit("k", "5/minute")
    assert d.allowed and not d.degraded and d.remaining == 4


def test_check_results_match_single_fast_path(clock):
    """The batch path and the single-check fast path give identical Decisions."""
    a = MemoryStorage()
    b = MemoryStorage()
    la = Limiter(a, clock=clock)
    plan = la.plan("3/second")
    alg = plan.algorithms[0]
    now = int(clock() * 1e6)
    for _ in range(5):
        one = a.hit(alg, "k", 1, now)
        many = b.apply([Check(alg, "k", 1)], now=now).decisions[0]
        assert one == many


@pytest.mark.parametrize("rates", ["3/minute; 3/minute", ["3/minute", Rate(3, 60)],
                                   "3/minute; 10/hour; 3 per 1 minute",
                                   [Rate(3, 0.1 + 0.2), Rate(3, 0.3)],  # one period in µs
                                   [Rate(3, 60.0), Rate(3, 60.0000001)]])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_rate_given_twice_is_one_limit(strategy: str, rates: object) -> None:
    """The same rate twice (in one string, as a string and a Rate, or as periods equal once
    in microseconds, the unit states are counted in) is one limit: every strategy admits
    exactly its amount, as with the rate once (a sliding log charged each hit once per copy,
    so it admitted 2 of 3), and the plan holds it once."""
    limiter = Limiter(strategy=strategy, clock=FakeClock())  # (exact counts: a clock of its own)
    admitted = sum(limiter.hit("k", rates).allowed for _ in range(5))  # type: ignore[arg-type]
    assert admitted == 3
    distinct = 2 if "hour" in str(rates) else 1
    assert len(limiter.plan(rates).algorithms) == distinct  # type: ignore[arg-type]
    assert parse_rates("3/minute; 3/minute") == [Rate(3, 60.0)]
