"""Redis Sentinel: the clients of the master of a service, found through its sentinels.

A Sentinel master client is a plain Redis client (on a pool that asks the sentinels where
the master is), so the storage is a :class:`RedisStorage`; what is Sentinel's is how its
clients are built (``redis+sentinel://`` URLs) and that the sentinel connections close with
them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from ._client import async_pool, redis_module

__all__ = ["sentinel_clients"]


def sentinel_clients(
    hosts: Sequence[tuple[str, int]], service: str, kw: dict[str, Any], size: int,
    wait: float | None,
) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """The sync and async client makers of the master of ``service``, on waiting pools of
    ``size`` connections (the sentinels themselves get the socket timeouts of ``kw``)."""
    redis = redis_module()
    sentinel_kw = {k: kw[k] for k in ("socket_timeout", "socket_connect_timeout") if k in kw}

    def make() -> Any:
        mod: Any = importlib.import_module("redis.sentinel")
        pool = _waiting_pool(mod.SentinelConnectionPool, redis.BlockingConnectionPool, size, wait)
        return mod.Sentinel(hosts, sentinel_kwargs=sentinel_kw, **kw).master_for(
            service, connection_pool_class=pool
        )

    def amake() -> Any:
        mod: Any = importlib.import_module("redis.asyncio.sentinel")
        pool = _waiting_pool(mod.SentinelConnectionPool, async_pool(), size, wait)
        return mod.Sentinel(hosts, sentinel_kwargs=sentinel_kw, **kw).master_for(
            service, connection_pool_class=pool
        )

    return make, amake


def _waiting_pool(sentinel_pool: Any, blocking_pool: Any, size: int, wait: float | None) -> Any:
    """A Sentinel master pool class that waits for a free connection like ``blocking_pool``."""

    class BlockingSentinelConnectionPool(sentinel_pool, blocking_pool):  # type: ignore[misc]
        def __init__(self, service_name: str, sentinel_manager: Any, **kwargs: Any) -> None:
            kwargs["max_connections"] = size
            kwargs["timeout"] = wait
            super().__init__(service_name, sentinel_manager, **kwargs)

    return BlockingSentinelConnectionPool
