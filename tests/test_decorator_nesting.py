"""Decorated functions calling decorated functions: each sees its own Decision while it
runs, the outer one included once the inner one has returned."""

from __future__ import annotations

import asyncio

from throttlekit import Limiter
from throttlekit.contrib import current_decision
from throttlekit.storage import MemoryStorage


def test_an_inner_decorated_call_leaves_the_outer_decision():
    """After a nested decorated call returns, ``current_decision()`` in the outer
    function is the outer limit's Decision again, not None."""
    lim = Limiter(MemoryStorage())

    @lim.limit("5/minute", key=lambda *a, **k: "inner")
    def inner() -> int:
        found = current_decision()
        assert found is not None
        return found.limit

    @lim.limit("100/minute", key=lambda *a, **k: "outer")
    def outer() -> tuple[int | None, int, int | None]:
        before = current_decision()
        seen = inner()
        after = current_decision()
        return (before.limit if before else None, seen, after.limit if after else None)

    assert outer() == (100, 5, 100)


def test_an_inner_decorated_coroutine_leaves_the_outer_decision():
    """The same with coroutines."""
    lim = Limiter(MemoryStorage())

    @lim.limit("5/minute", key=lambda *a, **k: "inner")
    async def inner() -> int:
        found = current_decision()
        assert found is not None
        return found.limit

    @lim.limit("100/minute", key=lambda *a, **k: "outer")
    async def outer() -> tuple[int | None, int, int | None]:
        before = current_decision()
        seen = await inner()
        after = current_decision()
        return (before.limit if before else None, seen, after.limit if after else None)

    assert asyncio.run(outer()) == (100, 5, 100)
