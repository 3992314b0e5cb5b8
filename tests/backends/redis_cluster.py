"""A real Redis Cluster (three masters on spare loopback ports), a random prefix per storage."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from servers import RedisCluster, ServerStartError, start_or_skip, unavailable
from throttlekit._algorithms import ALGORITHMS
from throttlekit.storage.redis import RedisStorage, from_url

MARKS: list[Any] = [pytest.mark.redis, pytest.mark.cluster]
STRATEGIES = frozenset(ALGORITHMS)


@contextlib.contextmanager
def session() -> Iterator[RedisCluster]:
    cluster = RedisCluster()
    try:
        start_or_skip(cluster)
    except ServerStartError as exc:
        cluster.close()
        unavailable(f"could not start a Redis Cluster: {exc}")
    try:
        yield cluster
    finally:
        cluster.close()


def make_storage(ctx: RedisCluster) -> RedisStorage:
    return from_url(ctx.url, prefix=f"tk-test:{uuid.uuid4().hex[:12]}:")
