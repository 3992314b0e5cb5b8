"""A real Sentinel watching a local master and its replica; storages talk to the master."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from servers import RedisSentinel, ServerStartError, start_or_skip, unavailable
from throttlekit._algorithms import ALGORITHMS
from throttlekit.storage.redis import RedisStorage, from_url

MARKS: list[Any] = [pytest.mark.redis, pytest.mark.sentinel]
STRATEGIES = frozenset(ALGORITHMS)


@contextlib.contextmanager
def session() -> Iterator[RedisSentinel]:
    sentinel = RedisSentinel()
    try:
        start_or_skip(sentinel)
    except ServerStartError as exc:
        sentinel.close()
        unavailable(f"could not start a Redis Sentinel: {exc}")
    try:
        yield sentinel
    finally:
        sentinel.close()


def make_storage(ctx: RedisSentinel) -> RedisStorage:
    return from_url(ctx.url, prefix=f"tk-test:{uuid.uuid4().hex[:12]}:")
