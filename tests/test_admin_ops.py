"""The admin operations (``throttlekit._admin``) are written once: the sync and async
methods make the same storage calls in the same order and answer the same; the key readers
are the ones the admin CLI uses."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from throttlekit import ConfigError, Limiter
from throttlekit._admin import reset_keys, rule_keys
from throttlekit.storage import MemoryStorage
from throttlekit.storage.base import Block

IP = "198.51.100.7"


class RecordingStore(MemoryStorage):
    """A memory store that records the admin calls reaching it (the async twins of the
    base class run the sync methods, so both shells are recorded alike)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Any] = []
        self.listing_fails = False
        self.unblock_fails = False

    def blocked(self, now: int | None = None) -> list[Block]:
        self.calls.append("blocked")
        if self.listing_fails:
            raise ConnectionError("store down")
        return super().blocked(now)

    def unblock(self, key: str) -> bool:
        self.calls.append(("unblock", key))
        if self.unblock_fails:
            raise ConnectionError("store down")
        return super().unblock(key)

    def reset(self, keys: Sequence[str]) -> None:
        self.calls.append(("reset", tuple(keys)))
        super().reset(keys)

    def block(self, key: str, ttl: float | None, reason: str = "",
              now: int | None = None) -> None:
        self.calls.append(("block", key, ttl, reason))
        super().block(key, ttl, reason, now)

    def next_generation(self) -> int:
        self.calls.append("next_generation")
        return super().next_generation()


def _limiter() -> tuple[Limiter, RecordingStore]:
    store = RecordingStore()
    limiter = Limiter(store)
    limiter.fail2ban("scanners", match=lambda r: r.path.startswith("/wp-"), maxretry=2,
                     findtime=60, bantime=600)
    return limiter, store


def _both(op: str, *args: Any) -> list[tuple[Any, list[Any]]]:
    """(answer, storage calls) of ``op`` through the sync method, then the async twin,
    each on a fresh limiter holding a manual block and a ban of ``IP``."""
    out = []
    for name in (op, "a" + op):
        limiter, store = _limiter()
        store.block(IP, None, "manual")
        store.block(f"fail2ban:scanners:{IP}", 600, "banned")
        store.calls.clear()
        answer = getattr(limiter, name)(*args)
        if asyncio.iscoroutine(answer):
            answer = asyncio.run(answer)
        out.append((answer, store.calls))
    return out


@pytest.mark.parametrize(("op", "args"), [
    ("block", (" ::ffff:203.0.113.9 ", 30, "why")),
    ("unblock", (IP,)),
    ("unblock", (f"fail2ban:scanners:{IP}",)),
    ("reset_rules", (IP,)),
    ("reset", ("user:42",)),
])
def test_sync_and_async_make_the_same_calls(op: str, args: tuple[Any, ...]) -> None:
    sync, asynchronous = _both(op, *args)
    assert sync == asynchronous
    calls = sync[1]
    if op == "block":
        assert calls == [("block", "203.0.113.9", 30, "why"), "next_generation"]
    else:  # an admin change moves the store's generation on, last
        assert calls[-1] == "next_generation"


def test_unblock_lifts_the_block_and_the_ban_and_resets_its_counters() -> None:
    (found, calls), _ = _both("unblock", IP)
    assert found
    assert calls == [
        "blocked",
        ("unblock", IP),
        ("unblock", f"fail2ban:scanners:{IP}"),
        ("reset", (f"rule:{IP}",)),
        "next_generation",
    ]


@pytest.mark.parametrize("name", ["unblock", "aunblock"])
def test_unblock_without_the_listing_still_lifts_what_it_knows(name: str) -> None:
    """A store whose listing fails: the block and the bans of known rules are lifted."""
    limiter, store = _limiter()
    store.block(IP, None)
    store.block(f"fail2ban:scanners:{IP}", 600)
    store.listing_fails = True
    answer = getattr(limiter, name)(IP)
    assert (asyncio.run(answer) if asyncio.iscoroutine(answer) else answer) is True
    store.listing_fails = False
    assert store.blocked() == []


@pytest.mark.parametrize("name", ["unblock", "aunblock"])
def test_a_failing_unblock_raises(name: str) -> None:
    limiter, store = _limiter()
    store.unblock_fails = True
    with pytest.raises(ConnectionError):
        answer = getattr(limiter, name)(IP)
        if asyncio.iscoroutine(answer):
            asyncio.run(answer)


def test_the_key_readers_the_cli_shares() -> None:
    resolver = Limiter().resolver
    assert rule_keys(resolver, " 2001:DB8:1:2::5 ", "inspect") == [
        "2001:db8:1:2::5", "2001:db8:1:2::/64"
    ]
    assert rule_keys(resolver, "alice", "inspect") == ["alice"]
    assert reset_keys(resolver, IP) == [IP, f"#client:{IP}"]
    assert reset_keys(resolver, "alice") == ["alice"]
    for bad in ("", "  ", "10.0.0.0/8"):
        with pytest.raises(ConfigError):
            reset_keys(resolver, bad)
