"""SyncedStorage under the rule engine: the common case a local store gets (a bound hit
answered from the worker's lease, no plan, no block lookup per request), and what must
still hold on it: a ban made by another worker or the admin CLI refuses within
``sync_interval``, a failing store gets the limiter's ``on_storage_error``, and real
processes on a real Redis stay within the documented over-admission bound.
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
import redis
from werkzeug.test import EnvironBuilder

from downable import DownableStore
from throttlekit import Limiter, Rate, RequestView, storage_from_url
from throttlekit.storage import BatchResult, Check
from throttlekit.storage.redis import RedisStorage
from throttlekit.storage.synced import SyncedStorage
from throttlekit.testing import FakeClock

REDIS = "redis://127.0.0.1:6379/0"


def _view(limiter: Limiter, ip: str = "198.51.100.7") -> RequestView:
    env = EnvironBuilder("/", environ_base={"REMOTE_ADDR": ip}).get_environ()
    return RequestView.from_environ(env, limiter.resolver)


class CountingRedis(RedisStorage):
    """A real Redis store that counts the batches it is asked to decide."""

    calls = 0

    def apply(self, checks: Sequence[Check], *, consume: bool = True, now: int | None = None,
              block_keys: Sequence[str] = ()) -> BatchResult:
        self.calls += 1
        return super().apply(checks, consume=consume, now=now, block_keys=block_keys)


def _prefix() -> str:
    return f"tk-test-synced-engine:{uuid.uuid4().hex}:"


@pytest.mark.redis
@pytest.mark.parametrize("rates", ["1000000/hour", "1000000/hour; 100000/minute"])
def test_rules_on_synced_redis_answer_from_the_lease_with_exact_remaining(rates: str) -> None:
    """500 requests of one client through the rules: a few dozen batches reach Redis (a
    round trip per lease, none for a block lookup), every request is allowed and the
    remaining count it reports goes down by one each time, as with the plain store."""
    inner = CountingRedis(redis.Redis.from_url(REDIS), prefix=_prefix())
    # (exact counts: a clock of its own)
    limiter = Limiter(SyncedStorage(inner, sync_interval=1.0), clock=FakeClock())
    limiter.throttle("all", rates, key="ip")
    try:
        assert limiter.engine.local_blocks is not None  # the common case applies
        verdicts = [limiter.evaluate(_view(limiter)) for _ in range(500)]
        assert all(v.allowed and not v.degraded for v in verdicts)
        left = [v.policies[0][1].remaining for v in verdicts]
        assert left == list(range(999_999, 999_499, -1))
        assert inner.calls <= 40, inner.calls
    finally:
        limiter.storage.close()


@pytest.mark.redis
def test_a_ban_by_another_worker_or_the_cli_holds_within_sync_interval() -> None:
    """A block written by another process's limiter refuses this worker's requests once
    ``sync_interval`` has passed (its view of the blocklist is read again by then), and
    an unblock lets them through again within the interval; this worker's own block
    holds at once."""
    prefix, interval = _prefix(), 0.2
    here = Limiter(SyncedStorage(storage_from_url(REDIS, prefix=prefix),
                                 sync_interval=interval))
    there = Limiter(storage_from_url(REDIS, prefix=prefix))  # another worker, the CLI
    here.throttle("all", "1000000/hour", key="ip")
    try:
        assert here.evaluate(_view(here)).allowed
        there.block("198.51.100.7", 60, "abuse")
        time.sleep(interval)  # the time the bound allows, not a synchronisation
        verdict = here.evaluate(_view(here))
        assert (verdict.allowed, verdict.kind) == (False, "blocked")
        assert here.evaluate(_view(here, "198.51.100.8")).allowed  # other clients pass
        assert there.unblock("198.51.100.7")
        time.sleep(interval)
        assert here.evaluate(_view(here)).allowed
        here.block("198.51.100.9", 60)
        assert not here.evaluate(_view(here, "198.51.100.9")).allowed  # at once
    finally:
        here.unblock("198.51.100.9")
        here.storage.close()
        there.storage.close()


@pytest.mark.parametrize(("policy", "outcomes"), [
    ("allow", [True] * 4), ("deny", [False] * 4), ("local", [True, True, True, False]),
])
def test_a_failing_store_gets_the_fail_policy_on_the_common_case(
        policy: str, outcomes: list[bool]) -> None:
    """The store fails while a key's lease is spent: the verdicts come from
    ``on_storage_error`` (degraded decisions and verdicts; the "local" policy counts the
    limit in the fallback store), nothing raises, and the breaker keeps the dead store out
    of the path. Every verdict is the one any failing remote store gets ("storage-
    unavailable" under "deny"): the first, answered on the common case as the store failed
    under it, as those after it, which take the engine's general path."""
    store = DownableStore()
    limiter = Limiter(SyncedStorage(store), on_storage_error=policy, retry_interval=600,
                      clock=FakeClock())  # (exact counts: a clock of its own)
    limiter.throttle("per-ip", "3/hour", key="ip")
    assert not limiter.engine.local_blocks  # the common case applies
    store.down = True
    verdicts = [limiter.evaluate(_view(limiter)) for _ in range(4)]
    assert [v.allowed for v in verdicts] == outcomes
    assert all(v.decision is not None and v.decision.degraded for v in verdicts)
    assert all(v.degraded for v in verdicts)
    if policy == "deny":
        assert {v.rule for v in verdicts} == {"storage-unavailable"}
    else:
        assert {v.rule for v in verdicts if not v.allowed} <= {"per-ip"}
    assert store.calls == 1


def test_the_common_case_comes_back_with_the_store() -> None:
    """Once the store answers again (the breaker's retry_interval over), the blocklist is
    read again and requests are answered from the leases once more."""
    store = DownableStore()
    limiter = Limiter(SyncedStorage(store), on_storage_error="allow", retry_interval=0.05)
    limiter.throttle("per-ip", "1000000/hour", key="ip")
    store.down = True
    assert limiter.evaluate(_view(limiter)).decision.degraded  # type: ignore[union-attr]
    assert limiter.engine.local_blocks  # the general path while the store fails
    store.down = False
    time.sleep(0.05)  # the breaker's retry_interval: the time the wrapper waits
    store.block("203.0.113.1", 60)  # made during the outage: must be seen
    verdict = limiter.evaluate(_view(limiter))
    assert verdict.allowed and not verdict.degraded
    blocks = limiter.engine.local_blocks
    assert blocks is not None and set(blocks) == {"203.0.113.1"}
    assert not limiter.evaluate(_view(limiter, "203.0.113.1")).allowed
    assert limiter.storage.unblock("203.0.113.1")  # this worker's own: read at once
    assert not limiter.engine.local_blocks
    calls = store.calls
    assert all(limiter.evaluate(_view(limiter)).allowed for _ in range(50))
    assert store.calls - calls < 10  # from the leases again


def test_a_refused_client_is_refused_from_the_worker_until_retry_or_sync_interval() -> None:
    """A client over its limit keeps hammering: its refusals are repeated by the worker
    (the store's answer, its retry_after counting down) instead of a round trip each, for
    sync_interval at most; they charge nothing, and a reset here lets it in at once."""
    store = DownableStore()
    # (exact counts: a clock of its own)
    limiter = Limiter(SyncedStorage(store, sync_interval=1.0), clock=FakeClock())
    limiter.throttle("per-ip", "3/hour", key="ip")
    assert [limiter.evaluate(_view(limiter)).allowed for _ in range(3)] == [True] * 3
    first = limiter.evaluate(_view(limiter))
    calls = store.calls
    again = [limiter.evaluate(_view(limiter)) for _ in range(20)]
    assert not any(v.allowed for v in again)
    assert store.calls == calls  # no round trip for the repeated refusals
    assert first.decision is not None and all(
        v.decision is not None and v.decision.retry_after <= first.decision.retry_after
        and v.decision.remaining == 0 and v.rule == "per-ip" for v in again)
    limiter.reset_rules("198.51.100.7")
    assert limiter.evaluate(_view(limiter)).allowed


# -- real processes on a real Redis, through the rules ----------------------------------------

LIMIT, SECONDS = 1000, 2.0


def _worker(prefix: str, strategy: str, ready: Any, out: Any) -> None:
    store = SyncedStorage(storage_from_url(REDIS, prefix=prefix, socket_timeout=5.0))
    limiter = Limiter(store, strategy=strategy, on_storage_error="deny")
    limiter.throttle("hot", Rate(LIMIT, 86400.0 * 30), key=lambda r: "hot")
    view = _view(limiter)
    limiter.evaluate(_view(limiter, "198.51.100.99"))  # connect before the start
    ready.wait()  # every worker starts together, however slow spawning is
    end = time.time() + SECONDS
    admitted = 0
    while time.time() < end:
        admitted += limiter.evaluate(view).allowed
    store.close()
    out.put(admitted)


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fixed_window", "sliding_window", "token_bucket"])
def test_four_processes_through_the_rules_stay_within_the_bound(strategy: str) -> None:
    """Four processes hammer one key through the rule engine's common case: together they
    admit the limit, give or take the documented bound (none over for a fixed window, 5 %
    for the others; 5 % under at most, quota leased and lost when leases end unused)."""
    if 86400.0 * 30 - time.time() % (86400.0 * 30) < 120:  # pragma: no cover - monthly
        pytest.skip("too close to a window boundary")
    ctx = multiprocessing.get_context("spawn")
    ready, out = ctx.Barrier(4), ctx.Queue()
    prefix = _prefix()
    procs = [ctx.Process(target=_worker, args=(prefix, strategy, ready, out))
             for _ in range(4)]
    for p in procs:
        p.start()
    counts = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(10)
    client = redis.Redis.from_url(REDIS)
    for key in client.scan_iter(match=prefix + "*"):  # this test's own keys only
        client.delete(key)
    client.close()
    total = sum(counts)
    print(f"4 processes through the rules, {strategy}: admitted {total} of {LIMIT} {counts}")
    over = 0.0 if strategy == "fixed_window" else 0.05
    assert LIMIT * 0.95 <= total <= LIMIT * (1 + over), counts


def test_a_block_made_here_while_the_view_is_read_holds_at_once() -> None:
    """This worker blocks a client while its view of the blocklist is being read (another
    thread's request asked the store just before the block was written): the answer may
    be from before the block, so the next request reads the store again and refuses the
    client at once, not a ``sync_interval`` later."""
    inner = storage_from_url(REDIS, prefix=_prefix())
    asked = inner.any_blocked
    racing = ["198.51.100.7"]

    def any_blocked_then_block() -> bool:
        answer = asked()  # read before the block below: no entry
        if racing:
            limiter.block(racing.pop(), 60)  # another thread's block, after the read
        return answer

    inner.any_blocked = any_blocked_then_block  # type: ignore[method-assign]
    synced = SyncedStorage(inner, sync_interval=1)
    limiter = Limiter(synced)
    limiter.throttle("all", "1000000/hour", key="ip")
    try:
        assert limiter.evaluate(_view(limiter, "198.51.100.8")).allowed  # the view is read
        verdict = limiter.evaluate(_view(limiter))
        assert (verdict.allowed, verdict.kind) == (False, "blocked")
    finally:
        limiter.unblock("198.51.100.7")
        synced.close()


@pytest.mark.parametrize("policy", ["allow", "deny", "local"])
@pytest.mark.parametrize("shape", ["two rules", "two rates", "listened"])
def test_every_common_case_answers_a_failing_store_as_the_general_path(
        policy: str, shape: str) -> None:
    """Whatever form of the common case meets the failing store (several throttles in one
    batch, one throttle of two rates, one throttle with an event listener), the request
    gets the verdict the general path gives a failing store: degraded, and under "deny"
    the one refusal by "storage-unavailable" (told as such to a listener)."""
    store = DownableStore()
    limiter = Limiter(SyncedStorage(store), on_storage_error=policy, retry_interval=600)
    limiter.throttle("per-ip", "3/hour; 100/day" if shape == "two rates" else "3/hour",
                     key="ip")
    if shape == "two rules":
        limiter.throttle("per-ip-daily", "100/day", key="ip")
    told: list[tuple[str, str | None]] = []
    if shape == "listened":
        limiter.on("throttled", lambda e: told.append((e.kind, e.rule)))
    store.down = True
    verdict = limiter.evaluate(_view(limiter))
    assert verdict.degraded
    assert verdict.decision is not None and verdict.decision.degraded
    if policy == "deny":
        assert (verdict.allowed, verdict.rule) == (False, "storage-unavailable")
        if shape == "listened":
            assert told == [("throttled", "storage-unavailable")]
    else:
        assert verdict.allowed
