"""``RedisStorage``: every check, or batch of checks of one request, is one round trip.

A Lua script run by ``EVALSHA`` (sent again with ``EVAL`` when the server answers
``NOSCRIPT``, e.g. after a restart) decides every check, charges them all-or-nothing and
looks up the blocklist keys. The script mirrors :mod:`throttlekit._algorithms` in integer
microseconds, so Redis and the memory backend give the same Decisions.

Key layout, for a prefix ``P`` and a storage key ``k`` (``{``, ``}`` and ``%`` in ``k`` are
percent-escaped, so the hash tag is ``k`` itself and distinct keys never collide):

* ``P{k}`` — a hash, one field per algorithm (``alg.id``) holding its state (a fixed
  window's: see below);
* ``P{k}:l:<alg.id>`` — a sliding log's list of ``"time cost"`` entries;
* ``P{k}:w:<alg.id>`` — a fixed window's count (``fixed_window.lua``);
* ``P{k}:b`` — the dynamic blocklist entry of ``k``;
* ``P{k}:q`` — the concurrency leases of ``k`` (see ``lua/lease.lua``);
* a field ``<escalation id>`` of ``P{k}`` — the chain of bans of ``k`` ("level until", see
  ``lua/escalate.lua``);
* ``P{%b}:e`` / ``P{%b}:r`` — the blocklist index (zset by expiry, hash of reasons);
* ``P{%g}`` — the generation of admin changes;
* ``P{%w}`` — the fixed-window ids in use (``register.lua``): ``reset`` deletes their keys.

All state of one key lives in one Cluster slot, ``reset`` deletes a family without
``KEYS``/``SCAN``, and every key has a TTL no longer than its state needs.

Time comes from the server's ``TIME`` unless the limiter passes ``now`` (``Limiter(clock=)``)
or the storage is built with ``clock="client"``; then TTLs get ``ttl_slack`` seconds more,
since the server cannot know how far the client's clock is from its own.

The batch and lease methods are written once, without I/O (generators that yield each
script call's keys and arguments and get its answer back); ``_run`` and ``_arun`` are the
sync and async shells that send them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..._algorithms import Algorithm
from ..._decision import CLOCK_SKEW_US, Decision
from ..._errors import ConfigError, StorageError
from ..base import BatchResult, Block, Check, Storage, at_instant
from ._changes import AdminCalls
from ._client import Clients, is_cluster, redis_module
from ._leases import Calls, LeaseCalls
from ._scripts import (
    INF,
    SAFE,
    Fixed,
    One,
    Script,
    batch_result,
    block_list,
    decision,
    lean_decision,
    named,
    script,
    script_kind,
    text,
)
from ._single import SingleChecks, failed
from ._watch import BlockLookups, BlockWatch

if TYPE_CHECKING:
    from ..._escalation import Escalation

__all__ = ["Calls", "RedisStorage"]

_CLUSTER_CLASS: list[type[RedisStorage]] = []  # the storage of Cluster clients (see cluster.py)
_R = TypeVar("_R")
# the store calls RedisStorage._applying yields, each with its arguments
_CALL, _ONE, _FIXED, _APPLY, _EVAL, _RUN = "call", "one", "fixed", "apply", "eval", "run"
_Op = tuple[str, tuple[Any, ...]]


class RedisStorage(AdminCalls, BlockLookups, SingleChecks, LeaseCalls, Clients, Storage):
    """Storage on Redis: standalone, Cluster (``RedisCluster``) or a Sentinel master.

    Args:
        client: a ``redis.Redis``, ``redis.cluster.RedisCluster`` or sentinel
            ``master_for(...)`` client; or their ``redis.asyncio`` twins (then only the
            async methods work, unless a sync client is given as well). Given a Cluster
            client, ``RedisStorage(...)`` makes a :class:`RedisClusterStorage`.
        async_client: a ``redis.asyncio`` client for ``aapply``/``ahit``/... Without one,
            the async methods run the sync client in a worker thread (never blocking the
            event loop).
        prefix: prepended to every key (must not contain ``{`` or ``}``).
        clock: ``"client"`` (default: ``time.time`` of this process, passed to the
            scripts, which then need not ask Redis for ``TIME``: less Redis CPU per check)
            or ``"server"`` (the Redis server's ``TIME``: clock skew between application
            hosts cannot move windows and refills, at a higher cost per check). A ``now``
            passed by the limiter always wins. See docs/backends.md, *Time*.
        ttl_slack: seconds added to TTLs when the time comes from the client, whose clock
            the server cannot check (default 5).
        watch_blocks: have the server tell this process when the dynamic blocklist changes
            (one connection and one thread of its own, see ``_watch.py``), so that while
            the blocklist is empty a request does not look its block keys up (opt-in,
            default False: it runs a thread; off, or where tracking is not available: a
            Cluster, a storage with only a ``redis.asyncio`` client, a server before Redis
            6, every request looks them up). See docs/backends.md, *The dynamic blocklist*.

    Client errors are raised as :class:`~throttlekit.StorageError` chained to the original;
    the limiter's ``on_storage_error`` policy then answers.
    """

    remote = True
    shared = True
    supports_leases = True
    #: a lone fixed-window check looks the request's block keys up in its own script (not
    #: on a Cluster, where they live in other slots)
    _inline_blocks = True

    def __init_subclass__(cls, *, cluster: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cluster:  # class RedisClusterStorage(RedisStorage, cluster=True)
            _CLUSTER_CLASS[:] = [cls]

    def __new__(cls, client: Any = None, *, async_client: Any = None, **_: Any) -> RedisStorage:
        # RedisStorage(cluster_client) keeps working: it is the Cluster storage.
        if cls is RedisStorage and _CLUSTER_CLASS and (
            is_cluster(client) or is_cluster(async_client)
        ):
            cls = _CLUSTER_CLASS[0]
        return super().__new__(cls)

    def __init__(
        self,
        client: Any = None,
        *,
        async_client: Any = None,
        prefix: str = "throttlekit:",
        clock: str = "client",
        ttl_slack: float = 5.0,
        watch_blocks: bool = False,
    ) -> None:
        redis = redis_module()
        if not isinstance(prefix, str) or "{" in prefix or "}" in prefix:
            raise ConfigError(f"prefix must be a string without '{{' or '}}', got {prefix!r}")
        if clock not in ("server", "client"):
            raise ConfigError(f"clock must be 'server' or 'client', got {clock!r}")
        if isinstance(ttl_slack, bool) or not isinstance(ttl_slack, (int, float)) or not (
            0 <= ttl_slack < 86400
        ):
            raise ConfigError(f"ttl_slack must be a number of seconds >= 0, got {ttl_slack!r}")
        if not isinstance(watch_blocks, bool):
            raise ConfigError(f"watch_blocks must be True or False, got {watch_blocks!r}")
        self._init_clients(client, async_client)
        self.prefix = prefix
        self.clock = clock
        self.ttl_slack = float(ttl_slack)
        self._slack_ms = str(round(ttl_slack * 1000))
        self._slack = round(ttl_slack * 1000)
        self._errors: tuple[type[BaseException], ...] = (
            redis.exceptions.RedisError,
            redis.exceptions.RedisClusterException,
            OSError,
        )
        self._noscript: type[BaseException] = redis.exceptions.NoScriptError
        self._batch = script("batch")
        self._ones: dict[Algorithm, One] = {}  # see _one
        self._fixeds: dict[Algorithm, Fixed] = {}  # see _fixed
        self._block = script("block")
        self._blocks = script("blocks")
        self._reset = script("reset")
        self._register = script("register")
        self._registry = f"{prefix}{{%w}}"
        self._registered: dict[str, int] = {}  # see _single.py
        self._lease = script("lease")
        self._escalate = script("escalate")
        self._index = (f"{prefix}{{%b}}:e", f"{prefix}{{%b}}:r")
        # Whether the dynamic blocklist had any entry when last looked at (``blocks_fresh``
        # seconds at most ago, on the monotonic clock): while it is empty, a request's
        # block keys are not looked up (see _lookups).
        self._blocks_seen = (True, -INF)  # (any, when seen)
        # With a live watch (see _watch.py): the watch's ``changes`` when the index was last
        # read and found absent (-1: not since), i.e. no lookups while it still is that.
        self._clear = -1
        self.watch_blocks = watch_blocks and self._can_watch and (  # (needs a sync client)
            self._client is not None or self._make_client is not None)
        self._watch: BlockWatch | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._where()}, prefix={self.prefix!r})"

    # -- keys and arguments -----------------------------------------------------------------

    def family(self, key: str) -> str:
        """The Redis key of the hash holding every state of storage key ``key``."""
        if "{" in key or "}" in key or "%" in key:
            key = key.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
        elif not key:
            key = "%"
        return f"{self.prefix}{{{key}}}"

    def _now(self, now: int | None) -> str:
        if now is not None:
            return str(now)
        if self.clock == "client":
            return str(int(time.time() * 1_000_000))
        return ""

    def _args(
        self, checks: Sequence[Check], consume: bool, now: int | None, block_keys: Sequence[str]
    ) -> tuple[list[str], list[Any]]:
        keys: list[str] = []
        args: list[Any] = [
            self._now(now), "1" if consume else "0", len(checks), len(block_keys), self._slack_ms
        ]
        family = self.family
        for c in checks:
            alg = c.algorithm
            kind = script_kind(alg)
            h = family(c.key)
            if kind == "sl":
                keys += (h, f"{h}:l:{alg.id}")
            elif kind == "fw":
                keys += (h, f"{h}:w:{alg.id}")
            else:
                keys += (h, h)
            args += (kind, alg.id, alg.limit, alg.period_us, alg.capacity,
                     min(c.cost, SAFE), (1 if c.independent else 0) | (2 if c.probe else 0))
        keys += [f"{family(k)}:b" for k in block_keys]
        return keys, args

    # -- the script calls of an operation, without I/O (a Cluster splits them by slot) ---------

    def _one_script(self, alg: Algorithm) -> bool:
        """Whether a lone check of ``alg`` runs its strategy's own script (a fixed window
        has its own path; on the server's clock, a "tg" bucket goes through the batch)."""
        return alg.name != "fixed_window" and (
            self.clock == "client" or script_kind(alg) != "tg"
        )

    def close(self) -> None:
        w, self._watch = self._watch, None
        if w is not None:
            w.stop()
        super().close()

    def _batch_call(
        self, checks: Sequence[Check], consume: bool, now: int | None, block_keys: Sequence[str]
    ) -> Calls[BatchResult]:
        """The batch-script call of ``apply`` with several checks or block keys."""
        keys, args = self._args(checks, consume, now, block_keys)
        raw = yield keys, args
        return named(batch_result(checks, len(block_keys), raw), block_keys)

    _batches = _batch_call  # the calls of such an ``apply`` (a Cluster: one per slot)

    def _key_groups(self, keys: Sequence[str]) -> list[list[str]]:
        """The families of ``keys``, in groups that one script may touch together."""
        families = [self.family(k) for k in keys]
        return [families] if families else []

    def _block_args(
        self, key: str, ttl: float | None, reason: str, now: int | None
    ) -> list[Any]:
        if ttl is not None and (
            isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0
        ):
            raise ConfigError(f"ttl must be a positive number of seconds or None, got {ttl!r}")
        if not isinstance(reason, str):
            raise ConfigError(f"reason must be a string, got {reason!r}")
        self._check_text(key, reason)
        ttl_us = "" if ttl is None or ttl == INF else str(round(ttl * 1_000_000))
        return [self._now(now), ttl_us, reason, self._slack_ms]

    # -- sync I/O -----------------------------------------------------------------------------

    def _eval(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        client = self.sync_client()
        try:
            try:
                return client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            except self._noscript:
                self._scripts_lost()
                return client.execute_command("EVAL", script.source, len(keys), *keys, *args)
        except self._errors as exc:
            raise failed(exc) from exc

    def _run(self, script: Script, calls: Calls[_R]) -> _R:
        """Send the script calls of ``calls`` one by one; their result."""
        try:
            keys, args = next(calls)
            while True:
                keys, args = calls.send(self._eval(script, keys, args))
        except StopIteration as done:
            result: _R = done.value
            return result

    def _sync_call(self, *args: Any) -> Any:
        client = self.sync_client()
        try:
            return client.execute_command(*args)
        except self._errors as exc:
            raise failed(exc) from exc

    def apply(self, checks: Sequence[Check], *, consume: bool = True, now: int | None = None,
              block_keys: Sequence[str] = ()) -> BatchResult:
        if self._client is None:
            self.sync_client()
        steps = self._applying(checks, consume, now, block_keys)
        answer: Any = None
        try:
            while True:  # the steps' I/O, done here (aapply does it awaited)
                op, a = steps.send(answer)
                if op is _CALL:
                    answer = self._sync_call(*a)
                elif op is _ONE:
                    if self._pool is not None:
                        answer = self._direct_one(*a)
                    else:
                        one, args = self._one(*a)
                        answer = one, self._eval_one(one.script, one.sha, args)
                elif op is _FIXED:
                    answer = self._fixed(*a)
                elif op is _APPLY:
                    answer = self.apply(a[0], consume=a[1], now=a[2])
                elif op is _EVAL:
                    answer = self._eval(*a)
                else:
                    answer = self._run(*a)
        except StopIteration as done:
            result: BatchResult = done.value
            return result

    def _applying(self, checks: Sequence[Check], consume: bool, now: int | None,
                  block_keys: Sequence[str]) -> Generator[_Op, Any, BatchResult]:
        """What ``apply`` and ``aapply`` do, written once: each store call is yielded as
        ``(op, args)`` and its answer sent back (the shells make the call, sync or async)."""
        checks, now = at_instant(checks, now)  # calendar windows: this period's
        if block_keys:
            look = self._lookups()
            if look is None:
                mark = self._mark()
                look = self._saw_blocks((yield _CALL, ("EXISTS", self._index[0])), mark)
            if not look:  # an empty blocklist: nothing to look up
                result = self._unlooked(checks, len(block_keys))
                if result is None:
                    result = yield _APPLY, (checks, consume, now)
                result.blocked[:] = [None] * len(block_keys)
                return result
        if len(checks) == 1:  # the common case: one specialised script
            c = checks[0]
            if now is None and self.clock == "client":
                now = int(time.time() * 1_000_000)
            if not block_keys and self._one_script(c.algorithm):
                one, raw = yield _ONE, (c, consume, now)
                if one.lean:
                    assert now is not None
                    return BatchResult([lean_decision(c.algorithm, raw, now, c.cost)], [])
                return BatchResult([decision(c.algorithm, raw)], [])
            if now is not None and c.algorithm.name == "fixed_window" and (
                self._inline_blocks or not block_keys
            ) and c.algorithm.period_us >= CLOCK_SKEW_US:  # (else: the batch; so too when a
                # block key has an entry, or a period shorter: several windows within skew)
                d = yield _FIXED, (c, consume, now, block_keys)
                if d is not None:
                    return BatchResult([d], [None] * len(block_keys))
        reg = self._unregistered(checks)
        if reg is not None:
            yield _EVAL, (self._register, [self._registry], reg)
        batched: BatchResult = yield _RUN, (self._batch, self._batches(checks, consume, now,
                                                                         block_keys))
        return batched

    def hit(self, algorithm: Algorithm, key: str, cost: int, now: int | None) -> Decision:
        return self.apply((Check(algorithm, key, cost),), now=now).decisions[0]

    def reset(self, keys: Sequence[str]) -> None:
        if self._client is None:
            self.sync_client()
        self._steps(self._resetting(keys))  # (and the generation: see _changes.py)

    def block(self, key: str, ttl: float | None, reason: str = "", now: int | None = None) -> None:
        self._saw_blocks(True)
        args = self._block_args(key, ttl, reason, now)
        exp = text(self._eval(self._block, [f"{self.family(key)}:b"], args))
        self._eval(self._blocks, self._index, ["add", args[0], self._slack_ms, key, exp, reason])

    def unblock(self, key: str) -> bool:
        return self._steps(self._unblocking(key))  # (and the generation: see _changes.py)

    def blocked(self, now: int | None = None) -> list[Block]:
        raw = self._eval(self._blocks, self._index, ["list", self._now(now), self._slack_ms])
        return block_list(raw)

    def ping(self) -> bool:
        try:
            return bool(self._sync_call("PING"))
        except StorageError:
            return False

    supports_escalation = True

    def _chain_args(self, escalation: Escalation, draw: float, now: int | None) -> list[Any]:
        e = escalation
        return [self._now(now), self._slack_ms, e.id, e.bantime_us, repr(e.factor),
                e.max_ban_us, e.steps, repr(e.jitter), repr(draw), e.forget_us]

    def escalate(self, escalation: Escalation, key: str, draw: float, now: int | None
                 ) -> tuple[int, int]:
        raw = self._eval(self._escalate, [self.family(key)],
                         self._chain_args(escalation, draw, now))
        return int(raw[0]), int(raw[1])

    def acquire(
        self, keys: Sequence[str], limits: Sequence[int], lease_id: str, timeout: float,
        now: int | None = None,
    ) -> int:
        return self._run(self._lease, self._leases(keys, limits, lease_id, timeout, now))

    def release(self, keys: Sequence[str], lease_id: str) -> None:
        self._run(self._lease, self._releases(keys, lease_id))

    def inflight(self, key: str, now: int | None = None) -> int:
        return int(self._eval(self._lease, [f"{self.family(key)}:q"], ["count", self._now(now)]))

    def generation(self) -> int:
        return self._steps(self._reading())  # (made when missing: see _changes.py)

    def next_generation(self) -> int:
        return self._steps(self._moving())

    # -- async I/O: the same, awaited; the sync methods in a thread without an async client -----

    async def _aeval(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        client = self._async()
        try:
            try:
                return await client.execute_command(
                    "EVALSHA", script.sha, len(keys), *keys, *args
                )
            except self._noscript:
                self._scripts_lost()
                return await client.execute_command(
                    "EVAL", script.source, len(keys), *keys, *args
                )
        except self._errors as exc:
            raise failed(exc) from exc

    async def _aeval_one(self, client: Any, script: Script, sha: bytes, args: list[Any]) -> Any:
        try:
            try:
                return await client.execute_command("EVALSHA", sha, *args)
            except self._noscript:
                self._scripts_lost()
                return await client.execute_command("EVAL", script.source, *args)
        except self._errors as exc:
            raise failed(exc) from exc

    async def _arun(self, script: Script, calls: Calls[_R]) -> _R:
        """Async twin of :meth:`_run`."""
        try:
            keys, args = next(calls)
            while True:
                keys, args = calls.send(await self._aeval(script, keys, args))
        except StopIteration as done:
            result: _R = done.value
            return result

    async def _acall(self, *args: Any) -> Any:
        client = self._async()
        try:
            return await client.execute_command(*args)
        except self._errors as exc:
            raise failed(exc) from exc

    async def aapply(self, checks: Sequence[Check], *, consume: bool = True,
                     now: int | None = None, block_keys: Sequence[str] = ()) -> BatchResult:
        client = self._async()
        if client is None:
            return await asyncio.to_thread(
                self.apply, checks, consume=consume, now=now, block_keys=block_keys
            )
        steps = self._applying(checks, consume, now, block_keys)
        answer: Any = None
        try:
            while True:  # (see apply)
                op, a = steps.send(answer)
                if op is _CALL:
                    answer = await self._acall(*a)
                elif op is _ONE:
                    one, args = self._one(*a)
                    answer = one, await self._aeval_one(client, one.script, one.sha, args)
                elif op is _FIXED:
                    answer = await self._afixed(client, *a)
                elif op is _APPLY:
                    answer = await self.aapply(a[0], consume=a[1], now=a[2])
                elif op is _EVAL:
                    answer = await self._aeval(*a)
                else:
                    answer = await self._arun(*a)
        except StopIteration as done:
            result: BatchResult = done.value
            return result

    async def ahit(self, algorithm: Algorithm, key: str, cost: int, now: int | None) -> Decision:
        return (await self.aapply((Check(algorithm, key, cost),), now=now)).decisions[0]

    async def areset(self, keys: Sequence[str]) -> None:
        if self._async() is None:
            await asyncio.to_thread(self.reset, keys)
            return
        await self._asteps(self._resetting(keys))

    async def ablock(
        self, key: str, ttl: float | None, reason: str = "", now: int | None = None
    ) -> None:
        if self._async() is None:
            await asyncio.to_thread(self.block, key, ttl, reason, now)
            return
        self._saw_blocks(True)
        args = self._block_args(key, ttl, reason, now)
        exp = text(await self._aeval(self._block, [f"{self.family(key)}:b"], args))
        await self._aeval(
            self._blocks, self._index, ["add", args[0], self._slack_ms, key, exp, reason]
        )

    async def aunblock(self, key: str) -> bool:
        if self._async() is None:
            return await asyncio.to_thread(self.unblock, key)
        return await self._asteps(self._unblocking(key))

    async def ablocked(self, now: int | None = None) -> list[Block]:
        if self._async() is None:
            return await asyncio.to_thread(self.blocked, now)
        raw = await self._aeval(
            self._blocks, self._index, ["list", self._now(now), self._slack_ms]
        )
        return block_list(raw)

    async def aping(self) -> bool:
        """Async twin of :meth:`ping`."""
        client = self._async()
        if client is None:
            return await asyncio.to_thread(self.ping)
        try:
            return bool(await client.execute_command("PING"))
        except self._errors:
            return False

    async def aescalate(self, escalation: Escalation, key: str, draw: float,
                        now: int | None) -> tuple[int, int]:
        raw = await self._aeval(self._escalate, [self.family(key)],
                                self._chain_args(escalation, draw, now))
        return int(raw[0]), int(raw[1])

    async def aacquire(
        self, keys: Sequence[str], limits: Sequence[int], lease_id: str, timeout: float,
        now: int | None = None,
    ) -> int:
        if self._async() is None:
            return await asyncio.to_thread(self.acquire, keys, limits, lease_id, timeout, now)
        return await self._arun(self._lease, self._leases(keys, limits, lease_id, timeout, now))

    async def arelease(self, keys: Sequence[str], lease_id: str) -> None:
        if self._async() is None:
            await asyncio.to_thread(self.release, keys, lease_id)
            return
        await self._arun(self._lease, self._releases(keys, lease_id))

    async def ainflight(self, key: str, now: int | None = None) -> int:
        if self._async() is None:
            return await asyncio.to_thread(self.inflight, key, now)
        return int(await self._aeval(self._lease, [f"{self.family(key)}:q"],
                                     ["count", self._now(now)]))

    async def ageneration(self) -> int:
        if self._async() is None:
            return await asyncio.to_thread(self.generation)
        return await self._asteps(self._reading())

    async def anext_generation(self) -> int:
        if self._async() is None:
            return await asyncio.to_thread(self.next_generation)
        return await self._asteps(self._moving())

