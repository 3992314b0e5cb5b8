"""The chain of a key's bans (issue 16, fail2ban's ``bantime.increment``), on every backend,
against a reference model: a ban before the end of the last one plus ``forget_after`` goes
one level up (at most the first level at ``max_ban``), a later one starts again at level 1.
The model is written here from that rule alone; the stores run ``Escalation.step`` (memory,
memcached with CAS) or ``lua/escalate.lua`` (Redis, one atomic script)."""

from __future__ import annotations

import math
import multiprocessing
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from throttlekit import ConfigError, Limiter, storage_from_url
from throttlekit._escalation import Escalation

REDIS = "redis://127.0.0.1:6379/0"
T0 = 1_800_000_000_000_000  # microseconds


def model(bantime: float, factor: float, max_ban: float, forget_after: float,
          gaps: list[float]) -> list[tuple[int, float]]:
    """(level, length) of each ban, the ``i``-th ban ``gaps[i]`` seconds after the end of
    the one before (no jitter)."""
    out: list[tuple[int, float]] = []
    level, end = 0, -math.inf
    t = 0.0
    for gap in gaps:
        t = end + gap if out else t
        level = level + 1 if out and t < end + forget_after else 1
        length = min(bantime * factor ** (level - 1), max_ban)
        if length >= max_ban:  # levels past the cap change nothing: the store stops there
            level = min(level, _first_capped(bantime, factor, max_ban))
        out.append((level, length))
        end = t + length
    return out


def _first_capped(bantime: float, factor: float, max_ban: float) -> int:
    n = 1
    while bantime * factor ** (n - 1) < max_ban:
        n += 1
    return n


escalations = st.tuples(
    st.integers(1, 100),                       # bantime (s)
    st.sampled_from([1.5, 2.0, 3.0, 10.0]),    # factor
    st.integers(1, 200),                       # max_ban / bantime
    st.integers(1, 50),                        # forget_after / bantime
)
gap_lists = st.lists(st.one_of(st.floats(0, 5), st.floats(5, 20_000)), min_size=1,
                     max_size=30)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(options=escalations, gaps=gap_lists)
def test_the_level_sequence_matches_the_model(backend: Any, options: Any,
                                              gaps: list[float]) -> None:
    """Random bantime, factor, max_ban, forget_after and gaps between bans: every store's
    levels and lengths are the model's."""
    bantime, factor, span, memory = options
    max_ban, forget_after = float(bantime * span), float(bantime * memory) + 0.5
    esc = Escalation.of({"factor": factor, "max_ban": max_ban, "forget_after": forget_after},
                        float(bantime), "o:model", "test", _storage(backend))
    assert esc is not None
    store = _storage(backend)
    key = f"rule:{uuid.uuid4().hex}"
    expected = model(bantime, factor, max_ban, forget_after, gaps)
    now, got = T0, []
    for i, gap in enumerate(gaps):
        if i:
            now += round(gap * 1_000_000)
        level, length = store.escalate(esc, key, 0.0, now)
        got.append((level, length / 1_000_000))
        now += length
    assert [g[0] for g in got] == [e[0] for e in expected]
    assert [g[1] for g in got] == pytest.approx([e[1] for e in expected], abs=1e-6)


_STORES: dict[int, Any] = {}


@pytest.fixture(scope="module", autouse=True)
def _close_stores() -> Any:
    yield
    for store in _STORES.values():
        store.close()
    _STORES.clear()


def _storage(backend: Any) -> Any:
    """One store per backend context for the whole property test (keys are unique)."""
    store = _STORES.get(id(backend.ctx))
    if store is None:
        store = _STORES[id(backend.ctx)] = backend.make_storage(backend.ctx)
    return store


def test_jitter_and_reset(backend: Any) -> None:
    """jitter shortens by the share drawn (the same arithmetic everywhere); ``reset`` of the
    key's family forgets its chain."""
    store = backend.make_storage(backend.ctx)
    try:
        esc = Escalation.of({"jitter": 0.5, "max_ban": 80}, 10.0, "o:j", "test", store)
        assert esc is not None
        key = f"rule:{uuid.uuid4().hex}"
        assert store.escalate(esc, key, 0.5, T0) == (1, 7_500_000)
        assert store.escalate(esc, key, 0.0, T0 + 8_000_000) == (2, 20_000_000)
        store.reset([key])
        assert store.escalate(esc, key, 0.0, T0 + 30_000_000) == (1, 10_000_000)
    finally:
        store.close()


def test_a_store_without_chains_is_refused_at_configuration() -> None:
    """An escalating rule on a store that keeps no chains: ConfigError at registration."""
    from throttlekit.storage.memory import MemoryStorage

    class Plain(MemoryStorage):
        supports_escalation = False

    with pytest.raises(ConfigError, match="cannot count escalating bans"):
        Limiter(Plain()).fail2ban("s", match=lambda v: True, maxretry=2, findtime=60,
                                  bantime=10, escalate=True)


# -- Redis: one chain, atomic across processes -----------------------------------------------


def _escalate_many(prefix: str, key: str, n: int) -> list[int]:
    store = storage_from_url(REDIS, prefix=prefix)
    try:
        esc = Escalation.of({"factor": 1.01, "max_ban": 1000}, 1.0, "o:race", "test", store)
        assert esc is not None
        return [store.escalate(esc, key, 0.0, T0)[0] for _ in range(n)]
    finally:
        store.close()


@pytest.mark.redis
def test_two_processes_move_one_chain_without_losing_a_ban(redis_prefix: str) -> None:
    """Two processes ban one key 25 times each at once: the 50 levels are exactly 1..50,
    each once (every step is one atomic script: no two bans read the same level)."""
    ctx = multiprocessing.get_context("spawn")
    key = f"rule:{uuid.uuid4().hex}"
    with ctx.Pool(2) as pool:
        runs = [pool.apply_async(_escalate_many, (redis_prefix, key, 25)) for _ in range(2)]
        levels = [lv for r in runs for lv in r.get(timeout=120)]
    assert sorted(levels) == list(range(1, 51))


def test_the_async_twin_moves_the_same_chain(backend: Any) -> None:
    """aescalate (the engine's _aban, ASGI on a remote store) and escalate share one chain."""
    import asyncio

    store = backend.make_storage(backend.ctx)
    try:
        esc = Escalation.of({"max_ban": 1000}, 10.0, "o:a", "test", store)
        assert esc is not None
        key = f"rule:{uuid.uuid4().hex}"

        async def two() -> list[tuple[int, int]]:
            got = [await store.aescalate(esc, key, 0.0, T0 + i * 1_000_000) for i in (1, 2)]
            aclose = getattr(store, "aclose", None)
            if aclose is not None:  # the async client, in this loop
                await aclose()
            return got

        assert store.escalate(esc, key, 0.0, T0) == (1, 10_000_000)
        assert asyncio.run(two()) == [(2, 20_000_000), (3, 40_000_000)]
    finally:
        store.close()
