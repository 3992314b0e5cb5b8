"""Memcached: the machine's server on 127.0.0.1:11211 (or ``THROTTLEKIT_MEMCACHED_URL``), else
a throwaway one on a spare port; a random prefix per storage, so nothing is ever flushed.

Memcached cannot list keys, so nothing is deleted afterwards either: every key the tests
write expires on its own (reset markers, a few bytes, are evicted by memcached's LRU).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from servers import MemcachedServer, memcached_version, start_or_skip
from throttlekit._algorithms import ALGORITHMS
from throttlekit.storage.memcached import MemcachedStorage, from_url

MARKS: list[Any] = [pytest.mark.memcached]
STRATEGIES = frozenset(ALGORITHMS)
URL = os.environ.get("THROTTLEKIT_MEMCACHED_URL", "memcached://127.0.0.1:11211")


class Context:
    """The URL of a memcached that answers; hands out storages with their own prefix."""

    def __init__(self, url: str) -> None:
        self.url = url

    def storage(self, **options: Any) -> MemcachedStorage:
        options.setdefault("prefix", f"tk-test:{uuid.uuid4().hex[:12]}:")
        return from_url(self.url, **options)


def _answers(url: str) -> bool:
    host_port = url.split("://", 1)[1].split(",")[0].split("?")[0]
    host, _, port = host_port.rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        return True  # not ours to probe; a failure will show in the tests
    try:
        memcached_version(int(port or 11211), timeout=1.0)
    except (OSError, ValueError):
        return False
    return True


@contextlib.contextmanager
def session() -> Iterator[Context]:
    if _answers(URL):
        yield Context(URL)
        return
    # No shared server: start one (a missing binary skips, or fails under CI=true).
    server = start_or_skip(MemcachedServer())
    try:
        yield Context(server.url)
    finally:
        server.close()


def make_storage(ctx: Context) -> MemcachedStorage:
    return ctx.storage()
