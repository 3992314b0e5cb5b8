"""``RedisClusterStorage``: the Redis storage on a Redis Cluster.

All state of one storage key lives in one hash slot (its family's hash tag), so each
script touches one slot. A request whose checks, block keys or leases fall in several slots
takes one script per slot: all-or-nothing holds within each slot; slots holding block keys
go first, so that once a block is found the rest is only decided, never charged.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from ..._decision import Decision
from ..base import BatchResult, Block, Check
from ._client import no_retry, redis_module
from ._scripts import batch_result, named
from ._store import Calls, RedisStorage

__all__ = ["RedisClusterStorage", "cluster_clients"]


class RedisClusterStorage(RedisStorage, cluster=True):
    """Storage on a Redis Cluster: a ``redis.cluster.RedisCluster`` client, its
    ``redis.asyncio`` twin, or both (the arguments of :class:`RedisStorage`).
    ``RedisStorage(cluster_client)`` makes one of these; ``storage_from_url`` does for
    ``redis+cluster://`` URLs. No blocklist watch (``watch_blocks``): the blocklist is
    looked up per request, or per ``blocks_fresh``."""

    _can_watch = False
    _inline_blocks = False  # (block keys live in other slots: the batch script's, grouped)
    _one_slot = False  # (an unblock or reset moves the generation in a call of its own)

    def __init__(self, client: Any = None, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self._key_slot = redis_module().crc.key_slot

    def _slot(self, key: str) -> int:
        slot: int = self._key_slot(key.encode())
        return slot

    def _groups(
        self, checks: Sequence[Check], block_keys: Sequence[str]
    ) -> list[tuple[list[int], list[int]]] | None:
        """The check and block-key indexes grouped by hash slot (None: a single slot)."""
        slots: dict[int, tuple[list[int], list[int]]] = {}
        family = self.family
        for i, c in enumerate(checks):
            slots.setdefault(self._slot(family(c.key)), ([], []))[0].append(i)
        for j, k in enumerate(block_keys):
            slots.setdefault(self._slot(family(k)), ([], []))[1].append(j)
        if len(slots) == 1:
            return None
        return list(slots.values())

    def _batches(
        self, checks: Sequence[Check], consume: bool, now: int | None, block_keys: Sequence[str]
    ) -> Calls[BatchResult]:
        groups = self._groups(checks, block_keys)
        if groups is None:
            return (yield from self._batch_call(checks, consume, now, block_keys))
        decisions: list[Decision | None] = [None] * len(checks)
        blocked: list[Block | None] = [None] * len(block_keys)
        charge = consume
        for ci, bi in sorted(groups, key=lambda g: not g[1]):  # block keys first
            sub = [checks[i] for i in ci]
            sub_bk = [block_keys[j] for j in bi]
            keys, args = self._args(sub, charge, now, sub_bk)
            r = batch_result(sub, len(sub_bk), (yield keys, args))
            if any(r.blocked):
                charge = False  # a blocked request charges nothing
            for i, d in zip(ci, r.decisions, strict=True):
                decisions[i] = d
            for j, b in zip(bi, r.blocked, strict=True):
                blocked[j] = b
        return named(BatchResult(decisions, blocked), block_keys)  # type: ignore[arg-type]

    def _key_groups(self, keys: Sequence[str]) -> list[list[str]]:
        slots: dict[int, list[str]] = {}
        for f in (self.family(k) for k in keys):
            slots.setdefault(self._slot(f), []).append(f)
        return list(slots.values())

    def _lease_groups(self, keys: Sequence[str]) -> list[list[int]]:
        if len(keys) < 2:
            return [list(range(len(keys)))]
        slots: dict[int, list[int]] = {}
        for i, k in enumerate(keys):
            slots.setdefault(self._slot(f"{self.family(k)}:q"), []).append(i)
        return list(slots.values())


def cluster_clients(
    hosts: Sequence[tuple[str, int]], kw: dict[str, Any]
) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """The sync and async client makers of a Cluster seen from ``hosts`` (any nodes).

    As for a standalone server, a failed command is not retried (unless ``kw`` names a
    ``retry`` or ``cluster_error_retry_attempts``): redis-py's Cluster default retries 10
    times with a backoff, seconds per request on a dead or hung node. Redirections (MOVED,
    ASK) are still followed: they are not retries."""
    own_retry = "retry" in kw or "cluster_error_retry_attempts" in kw

    def make() -> Any:
        mod: Any = importlib.import_module("redis.cluster")
        nodes = [mod.ClusterNode(h, p) for h, p in hosts]
        retry: Any = importlib.import_module("redis.retry").Retry
        extra = {} if own_retry else {"retry": no_retry(retry)}
        return mod.RedisCluster(startup_nodes=nodes, **extra, **kw)

    def amake() -> Any:
        mod: Any = importlib.import_module("redis.asyncio.cluster")
        nodes = [mod.ClusterNode(h, p) for h, p in hosts]
        retry: Any = importlib.import_module("redis.asyncio.retry").Retry
        extra = {} if own_retry else {"retry": no_retry(retry)}
        return mod.RedisCluster(startup_nodes=nodes, **extra, **kw)

    return make, amake
