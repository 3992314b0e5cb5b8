"""Redis standalone: the machine's shared server on 127.0.0.1:6379, a random prefix per storage.

Nothing is flushed: each storage gets its own prefix, and the session deletes its own keys
(found with SCAN on the prefix) at the end.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from servers import unavailable
from throttlekit._algorithms import ALGORITHMS
from throttlekit.storage.redis import RedisStorage, from_url

MARKS: list[Any] = [pytest.mark.redis]
STRATEGIES = frozenset(ALGORITHMS)
URL = "redis://127.0.0.1:6379/0"


class Context:
    """A server URL and the prefixes handed out, for cleanup."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefixes: list[str] = []

    def storage(self, **options: Any) -> RedisStorage:
        prefix = f"tk-test:{uuid.uuid4().hex[:12]}:"
        self.prefixes.append(prefix)
        return from_url(self.url, prefix=prefix, **options)

    def cleanup(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            for prefix in self.prefixes:
                batch = list(client.scan_iter(match=f"{prefix}*", count=1000))
                if batch:
                    client.delete(*batch)
        finally:
            client.close()


def require(url: str) -> None:
    """Skip (or fail under CI=true) when no Redis answers at ``url``."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        unavailable(f"no Redis server at {url}: {exc}")
    finally:
        client.close()


@contextlib.contextmanager
def session() -> Iterator[Context]:
    require(URL)
    ctx = Context(URL)
    try:
        yield ctx
    finally:
        ctx.cleanup()


def make_storage(ctx: Context) -> RedisStorage:
    return ctx.storage()
