"""Smoke: the README's Python snippet works on every backend."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "strategy", ["fixed_window", "sliding_window", "sliding_log", "token_bucket"]
)
def test_limit_is_enforced(make_limiter, strategy):
    """Exactly `limit` hits pass within one period, the next is refused with a retry time."""
    limiter = make_limiter(strategy)
    results = [limiter.hit("user:42", "10/second") for _ in range(11)]
    assert [d.allowed for d in results] == [True] * 10 + [False]
    assert [d.remaining for d in results[:10]] == list(range(9, -1, -1))
    assert results[-1].retry_after > 0
