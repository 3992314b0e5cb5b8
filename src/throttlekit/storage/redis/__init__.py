"""The Redis backend: standalone, Cluster and Sentinel; sync and ``redis.asyncio`` clients.

* :class:`RedisStorage` (``_store``): the scripts' calls and answers, sync and async;
* :class:`RedisClusterStorage` (``cluster``): the same, one script per hash slot;
* ``sentinel``: the clients of a Sentinel master (a plain :class:`RedisStorage`);
* ``_client``: the clients, given or built on first use on waiting pools;
* ``_scripts`` and ``lua/``: the Lua scripts, one home per strategy (``lua/_*.lua``);
* ``_url``: :func:`from_url`.
"""

from __future__ import annotations

from ._client import DEFAULT_MAX_CONNECTIONS, DEFAULT_TIMEOUT
from ._store import RedisStorage
from ._url import from_url
from .cluster import RedisClusterStorage

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_TIMEOUT",
    "RedisClusterStorage",
    "RedisStorage",
    "from_url",
]
