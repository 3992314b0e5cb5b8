"""The Redis backend: standalone, Cluster and Sentinel; sync and ``redis.asyncio`` clients.

Every check, or batch of checks of one request, is one round trip: a Lua script run by
``EVALSHA`` (sent again with ``EVAL`` when the server answers ``NOSCRIPT``, e.g. after a
restart) decides every check, charges them all-or-nothing and looks up the blocklist keys.
The script mirrors :mod:`throttlekit._algorithms` in integer microseconds, so Redis and the
memory backend give the same Decisions.

Key layout, for a prefix ``P`` and a storage key ``k`` (``{``, ``}`` and ``%`` in ``k`` are
percent-escaped, so the hash tag is ``k`` itself and distinct keys never collide):

* ``P{k}`` — a hash, one field per algorithm (``alg.id``) holding its state;
* ``P{k}:l:<alg.id>`` — a sliding log's list of ``"time cost"`` entries;
* ``P{k}:b`` — the dynamic blocklist entry of ``k``;
* ``P{%b}:e`` / ``P{%b}:r`` — the blocklist index (zset by expiry, hash of reasons).

All state of one key lives in one Cluster slot, ``reset`` deletes a family without
``KEYS``/``SCAN``, and every key has a TTL no longer than its state needs.

Time comes from the server's ``TIME`` unless the limiter passes ``now`` (``Limiter(clock=)``)
or the storage is built with ``clock="client"``; then TTLs get ``ttl_slack`` seconds more,
since the server cannot know how far the client's clock is from its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import re
import threading
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .._algorithms import Algorithm
from .._decision import Decision
from .._errors import ConfigError, StorageError
from .base import BatchResult, Block, Check, Storage

__all__ = ["DEFAULT_MAX_CONNECTIONS", "DEFAULT_TIMEOUT", "RedisStorage", "from_url"]

#: Default socket connect and operation timeout (seconds) of clients built from a URL.
DEFAULT_TIMEOUT = 0.25
#: Default size of the connection pool of clients built from a URL (one per event loop for
#: async clients). A request waits for a free connection up to the socket timeout.
DEFAULT_MAX_CONNECTIONS = 50
_INF = float("inf")
_SAFE = 1 << 53  # cost is capped below it: Lua numbers are doubles
_KIND = {"fixed_window": "fw", "sliding_window": "sw", "token_bucket": "tb", "sliding_log": "sl"}
_SMALL = tuple(str(i).encode() for i in range(64))  # pre-encoded costs
_MAX_ONES = 4096  # bound of the per-algorithm argument cache


def _redis() -> Any:
    try:
        import redis
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "the Redis backend needs the redis package: pip install 'throttlekit-web[redis]'"
        ) from None
    return redis


class _Script:
    __slots__ = ("sha", "source")

    def __init__(self, name: str) -> None:
        self.source = _lua(name)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


def _lua(name: str) -> str:
    """A script's source, with each ``--#include NAME`` line replaced by ``lua/_NAME.lua``
    (the parts the scripts share, kept in one place)."""
    text = resources.files(__package__).joinpath(f"lua/{name}.lua").read_text("utf-8")
    lines = []
    for line in text.splitlines(keepends=True):
        if line.startswith("--#include "):
            line = _lua("_" + line.split()[1])
        lines.append(line)
    return "".join(lines)


_scripts: dict[str, _Script] = {}


def _script(name: str) -> _Script:
    s = _scripts.get(name)
    if s is None:
        s = _scripts[name] = _Script(name)
    return s


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _One:
    """A strategy's single-check script bound to one algorithm: the arguments that never
    change (after the key, now and cost), encoded once; with ``encoding`` (the direct path
    on our own client), also the packed command's head and tail."""

    __slots__ = ("encoding", "head", "log", "log_b", "packed", "script", "sha", "tail")

    def __init__(
        self, script: _Script, alg: Algorithm, tail: list[Any], encoding: tuple[str, str] | None
    ) -> None:
        self.script = script
        self.sha = script.sha.encode()
        self.log = f":l:{alg.id}" if alg.name == "sliding_log" else None
        self.tail = tuple(tail)
        self.encoding = encoding
        self.head: bytes | None = None
        self.packed: bytes | None = None
        self.log_b = b""
        if encoding is not None:
            enc = [t if isinstance(t, bytes) else t.encode(*encoding) for t in tail]
            self.packed = b"".join(b"$%d\r\n%b\r\n" % (len(t), t) for t in enc)
            nkeys = 1 if self.log is None else 2
            self.head = b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%b\r\n$1\r\n%d\r\n" % (
                5 + nkeys + len(enc), len(self.sha), self.sha, nkeys
            )
            if self.log is not None:
                self.log_b = self.log.encode(*encoding)


def _send_read(conn: Any, cmd: bytes) -> Any:
    conn.send_packed_command((cmd,))
    return conn.read_response()


class RedisStorage(Storage):
    """Storage on Redis: standalone, Cluster (``RedisCluster``) or a Sentinel master.

    Args:
        client: a ``redis.Redis``, ``redis.cluster.RedisCluster`` or sentinel
            ``master_for(...)`` client; or their ``redis.asyncio`` twins (then only the
            async methods work, unless a sync client is given as well).
        async_client: a ``redis.asyncio`` client for ``aapply``/``ahit``/... Without one,
            the async methods run the sync client in a worker thread (never blocking the
            event loop).
        prefix: prepended to every key (must not contain ``{`` or ``}``).
        clock: ``"server"`` (default: the Redis server's ``TIME``, so clock skew between
            application hosts cannot loosen a limit) or ``"client"`` (``time.time`` of
            this process). A ``now`` passed by the limiter always wins.
        ttl_slack: seconds added to TTLs when the time comes from the client, whose clock
            the server cannot check (default 5).

    Client errors are raised as :class:`~throttlekit.StorageError` chained to the original;
    the limiter's ``on_storage_error`` policy then answers.
    """

    remote = True
    shared = True

    def __init__(
        self,
        client: Any = None,
        *,
        async_client: Any = None,
        prefix: str = "throttlekit:",
        clock: str = "server",
        ttl_slack: float = 5.0,
    ) -> None:
        redis = _redis()
        if not isinstance(prefix, str) or "{" in prefix or "}" in prefix:
            raise ConfigError(f"prefix must be a string without '{{' or '}}', got {prefix!r}")
        if clock not in ("server", "client"):
            raise ConfigError(f"clock must be 'server' or 'client', got {clock!r}")
        if isinstance(ttl_slack, bool) or not isinstance(ttl_slack, (int, float)) or not (
            0 <= ttl_slack < 86400
        ):
            raise ConfigError(f"ttl_slack must be a number of seconds >= 0, got {ttl_slack!r}")
        if client is not None and _is_async(client):
            if async_client is not None:
                raise ConfigError("client is a redis.asyncio client and async_client is given")
            client, async_client = None, client
        if client is None and async_client is None:
            raise ConfigError("RedisStorage needs a redis client (or use storage_from_url)")
        self.prefix = prefix
        self.clock = clock
        self.ttl_slack = float(ttl_slack)
        self._slack_ms = str(round(ttl_slack * 1000))
        self._client = client
        self._async_client = async_client
        self._make_client: Callable[[], Any] | None = None
        self._make_async: Callable[[], Any] | None = None
        self._client_lock = threading.Lock()  # one client per storage, however many threads
        self._loop_client: tuple[Any, Any] | None = None
        self._cluster: bool | None = None if client is None else _is_cluster(client)
        self._errors: tuple[type[BaseException], ...] = (
            redis.exceptions.RedisError,
            redis.exceptions.RedisClusterException,
            OSError,
        )
        self._noscript: type[BaseException] = redis.exceptions.NoScriptError
        self._key_slot: Callable[[bytes], int] = redis.crc.key_slot
        self._batch = _script("batch")
        self._ones: dict[Algorithm, _One] = {}  # see _one
        # the direct path (see _direct_one): our own plain client's pool and encoding
        self._pool: Any = None
        self._encoding: tuple[str, str] | None = None
        self._reconnect_check = False
        self._block = _script("block")
        self._blocks = _script("blocks")
        self._reset = _script("reset")
        self._index = (f"{prefix}{{%b}}:e", f"{prefix}{{%b}}:r")
        self._url = ""

    def __repr__(self) -> str:
        where = self._url or repr(self._client or self._async_client)
        return f"RedisStorage({where}, prefix={self.prefix!r})"

    # -- keys -----------------------------------------------------------------------------

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
            kind = _KIND[alg.name]
            h = family(c.key)
            if kind == "sl":
                keys += (h, f"{h}:l:{alg.id}")
            else:
                keys += (h, h)
            args += (kind, alg.id, alg.limit, alg.period_us, alg.capacity,
                     min(c.cost, _SAFE), (1 if c.independent else 0) | (2 if c.probe else 0))
        keys += [f"{family(k)}:b" for k in block_keys]
        return keys, args

    def _one(self, check: Check, consume: bool, now: int | None) -> tuple[_One, list[Any]]:
        """The specialised script and the EVALSHA arguments after the sha of one check
        without block keys (see :class:`_One`)."""
        alg = check.algorithm
        one = self._ones.get(alg)
        if one is None:
            one = self._prepare(alg)
        h = self.family(check.key)
        if now is None:
            now_arg: Any = b"" if self.clock == "server" else int(time.time() * 1_000_000)
        else:
            now_arg = now
        cost = check.cost
        cost_arg: Any
        if consume and not check.probe:
            cost_arg = _SMALL[cost] if cost < 64 else min(cost, _SAFE)
        else:  # decided, not charged: the scripts read -1 - cost
            cost_arg = -1 - min(cost, _SAFE)
        if one.log is None:
            return one, [1, h, now_arg, cost_arg, *one.tail]
        return one, [2, h, h + one.log, now_arg, cost_arg, *one.tail]

    def _prepare(self, alg: Algorithm) -> _One:
        tail: list[Any] = [self._slack_ms.encode(), alg.id, str(alg.limit).encode(),
                           str(alg.period_us).encode()]
        if alg.name == "token_bucket":
            tail.append(str(alg.capacity).encode())
        one = _One(_script(alg.name), alg, tail, self._encoding)
        if len(self._ones) >= _MAX_ONES:
            self._ones.clear()
        self._ones[alg] = one
        return one

    def _direct_one(self, check: Check, consume: bool, now: int | None) -> Any:
        """One check on our own plain client: the command packed here (most of it once per
        algorithm) and sent on a pooled connection, without redis-py's per-command layers."""
        alg = check.algorithm
        one = self._ones.get(alg)
        if one is None or one.packed is None:
            one = self._prepare(alg)
        head, packed, encoding = one.head, one.packed, one.encoding
        assert head is not None and packed is not None and encoding is not None
        key = self.family(check.key)
        if now is None:
            now_b = b"" if self.clock == "server" else b"%d" % int(time.time() * 1_000_000)
        else:
            now_b = b"%d" % now
        cost = check.cost
        if consume and not check.probe:
            cost_b = _SMALL[cost] if cost < 64 else b"%d" % min(cost, _SAFE)
        else:  # decided, not charged: the scripts read -1 - cost
            cost_b = b"%d" % (-1 - min(cost, _SAFE))
        k = key.encode(*encoding)
        keys = b"$%d\r\n%b\r\n" % (len(k), k)
        if one.log is not None:
            k += one.log_b
            keys += b"$%d\r\n%b\r\n" % (len(k), k)
        cmd = b"%b%b$%d\r\n%b\r\n$%d\r\n%b\r\n%b" % (
            head, keys, len(now_b), now_b, len(cost_b), cost_b, packed
        )
        pool = self._pool
        try:
            conn = pool.get_connection()
        except self._errors as exc:
            raise StorageError(f"Redis: {type(exc).__name__}: {exc}") from exc
        try:
            try:
                return conn.retry.call_with_retry(
                    lambda: _send_read(conn, cmd), lambda _error: conn.disconnect()
                )
            except self._noscript:
                pass
        except self._errors as exc:
            raise StorageError(f"Redis: {type(exc).__name__}: {exc}") from exc
        finally:
            if self._reconnect_check and conn.should_reconnect():
                conn.disconnect()
            pool.release(conn)
        _, args = self._one(check, consume, now)  # NOSCRIPT: send the source (and cache it)
        return self._eval_one(one.script, one.sha, args)

    @staticmethod
    def _decision(alg: Algorithm, raw: Any) -> Decision:
        allowed, rem, reset, retry = raw.split()
        r = int(retry)
        return alg.decide(allowed == b"1" or allowed == "1", int(rem), int(reset),
                          _INF if r < 0 else r / 1e6)

    @staticmethod
    def _result(checks: Sequence[Check], nb: int, raw: Sequence[Any]) -> BatchResult:
        decisions: list[Decision] = []
        for i, c in enumerate(checks):
            allowed, rem, reset, retry = raw[4 * i : 4 * i + 4]
            decisions.append(
                c.algorithm.decide(allowed == 1, rem, reset, _INF if retry < 0 else retry / 1e6)
            )
        blocked: list[Block | None] = []
        o = 4 * len(checks)
        for j in range(nb):
            exp = raw[o + 2 * j] if o + 2 * j < len(raw) else None
            if exp is None:
                blocked.append(None)
            else:
                e = _text(exp)
                blocked.append(
                    Block("", _INF if e == "inf" else int(e) / 1e6, _text(raw[o + 2 * j + 1]))
                )
        return BatchResult(decisions, blocked)

    def _groups(
        self, checks: Sequence[Check], block_keys: Sequence[str]
    ) -> list[tuple[list[int], list[int]]] | None:
        """On a Cluster, the check and block-key indexes grouped by hash slot (else None)."""
        if not self._cluster:
            return None
        slots: dict[int, tuple[list[int], list[int]]] = {}
        slot = self._key_slot
        family = self.family
        for i, c in enumerate(checks):
            slots.setdefault(slot(family(c.key).encode()), ([], []))[0].append(i)
        for j, k in enumerate(block_keys):
            slots.setdefault(slot(family(k).encode()), ([], []))[1].append(j)
        if len(slots) == 1:
            return None
        return list(slots.values())

    # -- sync -----------------------------------------------------------------------------

    def _sync(self) -> Any:
        client = self._client
        if client is None:
            if self._make_client is None:
                raise ConfigError(
                    "this RedisStorage has only a redis.asyncio client: use the async methods "
                    "(ahit, aapply, ...) or give it a sync client too"
                )
            # Built once, under a lock: threads making their first call together must share
            # one client. A second one would replace the first, whose collection closes the
            # pooled connections other threads are still using ("Bad file descriptor").
            with self._client_lock:
                client = self._client
                if client is None:
                    client = self._make_client()
                    self._cluster = _is_cluster(client)
                    self._direct_path(client)
                    self._client = client  # published last, with the direct path ready
        return client

    def _direct_path(self, client: Any) -> None:
        """Single checks skip redis-py's per-command layers on a client we built: a plain
        pooled ``redis.Redis`` (standalone or Sentinel master) without retries to honour."""
        redis = _redis()
        if (
            type(client) is not redis.Redis
            or client.connection is not None  # single_connection_client
            or _version(redis.__version__) < (5, 3)  # get_connection() takes no args
        ):
            return
        pool = client.connection_pool
        encoder = client.get_encoder()
        self._encoding = (encoder.encoding, encoder.encoding_errors)
        self._reconnect_check = hasattr(pool.connection_class, "should_reconnect")
        self._pool = pool

    def _eval(self, script: _Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        client = self._sync()
        try:
            try:
                return client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            except self._noscript:
                return client.execute_command("EVAL", script.source, len(keys), *keys, *args)
        except self._errors as exc:
            raise StorageError(f"Redis: {type(exc).__name__}: {exc}") from exc

    def _eval_one(self, script: _Script, sha: bytes, args: list[Any]) -> Any:
        client = self._client
        if client is None:
            client = self._sync()
        try:
            try:
                return client.execute_command("EVALSHA", sha, *args)
            except self._noscript:
                return client.execute_command("EVAL", script.source, *args)
        except self._errors as exc:
            raise StorageError(f"Redis: {type(exc).__name__}: {exc}") from exc

    def apply(
        self,
        checks: Sequence[Check],
        *,
        consume: bool = True,
        now: int | None = None,
        block_keys: Sequence[str] = (),
    ) -> BatchResult:
        if self._client is None:
            self._sync()
        if len(checks) == 1 and not block_keys:  # the common case: one specialised script
            c = checks[0]
            if self._pool is not None:
                raw = self._direct_one(c, consume, now)
            else:
                one, args = self._one(c, consume, now)
                raw = self._eval_one(one.script, one.sha, args)
            return BatchResult([self._decision(c.algorithm, raw)], [])
        groups = self._groups(checks, block_keys) if self._cluster else None
        if groups is None:
            keys, args = self._args(checks, consume, now, block_keys)
            result = self._result(checks, len(block_keys), self._eval(self._batch, keys, args))
            return _named(result, block_keys)
        # One script per slot: all-or-nothing holds within each slot.
        decisions: list[Decision | None] = [None] * len(checks)
        blocked: list[Block | None] = [None] * len(block_keys)
        # Slots holding block keys go first: once a block is found, the rest of the
        # batch is only decided, never charged (a blocked request charges nothing).
        charge = consume
        for ci, bi in sorted(groups, key=lambda g: not g[1]):
            sub = [checks[i] for i in ci]
            sub_bk = [block_keys[j] for j in bi]
            keys, args = self._args(sub, charge, now, sub_bk)
            r = self._result(sub, len(sub_bk), self._eval(self._batch, keys, args))
            if any(r.blocked):
                charge = False
            for i, d in zip(ci, r.decisions, strict=True):
                decisions[i] = d
            for j, b in zip(bi, r.blocked, strict=True):
                blocked[j] = b
        return _named(BatchResult(decisions, blocked), block_keys)  # type: ignore[arg-type]

    def hit(self, algorithm: Algorithm, key: str, cost: int, now: int | None) -> Decision:
        return self.apply((Check(algorithm, key, cost),), now=now).decisions[0]

    def reset(self, keys: Sequence[str]) -> None:
        if self._client is None:
            self._sync()
        for group in self._key_groups(keys):
            self._eval(self._reset, group, ())

    def _key_groups(self, keys: Sequence[str]) -> list[list[str]]:
        families = [self.family(k) for k in keys]
        if not self._cluster:
            return [families] if families else []
        slots: dict[int, list[str]] = {}
        for f in families:
            slots.setdefault(self._key_slot(f.encode()), []).append(f)
        return list(slots.values())

    def _block_args(
        self, key: str, ttl: float | None, reason: str, now: int | None
    ) -> list[Any]:
        if ttl is not None and (
            isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0
        ):
            raise ConfigError(f"ttl must be a positive number of seconds or None, got {ttl!r}")
        if not isinstance(reason, str):
            raise ConfigError(f"reason must be a string, got {reason!r}")
        ttl_us = "" if ttl is None or ttl == _INF else str(round(ttl * 1_000_000))
        return [self._now(now), ttl_us, reason, self._slack_ms]

    def block(self, key: str, ttl: float | None, reason: str = "", now: int | None = None) -> None:
        args = self._block_args(key, ttl, reason, now)
        exp = _text(self._eval(self._block, [f"{self.family(key)}:b"], args))
        self._eval(self._blocks, self._index, ["add", args[0], self._slack_ms, key, exp, reason])

    def unblock(self, key: str) -> bool:
        n = self._sync_call("DEL", f"{self.family(key)}:b")
        removed = self._eval(self._blocks, self._index, ["del", "", "0", key, "", ""])
        return bool(n or removed)

    def blocked(self, now: int | None = None) -> list[Block]:
        raw = self._eval(self._blocks, self._index, ["list", self._now(now), self._slack_ms])
        return _blocks(raw)

    def _sync_call(self, *args: Any) -> Any:
        client = self._sync()
        try:
            return client.execute_command(*args)
        except self._errors as exc:
            raise StorageError(f"Redis: {type(exc).__name__}: {exc}") from exc

    def ping(self) -> bool:
        try:
            return bool(self._sync_call("PING"))
        except StorageError:
            return False

    def close(self) -> None:
        if self._make_client is None:
            return  # not ours: the caller closes it
        with self._client_lock:
            client, self._client = self._client, None
            self._pool = None
        if client is not None:
            client.close()
            for sentinel in _sentinels(client):
                sentinel.close()

    # -- async ----------------------------------------------------------------------------

    def _async(self) -> Any:
        if self._async_client is not None:
            return self._async_client
        if self._make_async is None:
            return None
        loop = asyncio.get_running_loop()
        cached = self._loop_client
        if cached is None or cached[0] is not loop:
            # redis.asyncio connections belong to one event loop: one client per loop.
            cached = self._loop_client = (loop, self._make_async())
            if self._cluster is None:
                self._cluster = _is_cluster(cached[1])
        return cached[1]

    async def _aeval(self, script: _Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        client = self._async()
        try:
            try:
                return await client.execute_command(
                    "EVALSHA", script.sha, len(keys), *keys, *args
                )
            except self._noscript:
                return await client.execute_command(
                    "EVAL", script.source, len(keys), *keys, *args
                )
        except self._errors as exc:
            raise StorageError(f"Redis: {type(exc).__name__}: {exc}") from exc

    async def aapply(
        self,
        checks: Sequence[Check],
        *,
        consume: bool = True,
        now: int | None = None,
        block_keys: Sequence[str] = (),
    ) -> BatchResult:
        client = self._async()
        if client is None:
            return await asyncio.to_thread(
                self.apply, checks, consume=consume, now=now, block_keys=block_keys
            )
        if len(checks) == 1 and not block_keys:  # the common case: one specialised script
            c = checks[0]
            one, args = self._one(c, consume, now)
            try:
                try:
                    raw = await client.execute_command("EVALSHA", one.sha, *args)
                except self._noscript:
                    raw = await client.execute_command("EVAL", one.script.source, *args)
            except self._errors as exc:
                raise StorageError(f"Redis: {type(exc).__name__}: {exc}") from exc
            return BatchResult([self._decision(c.algorithm, raw)], [])
        groups = self._groups(checks, block_keys) if self._cluster else None
        if groups is None:
            keys, args = self._args(checks, consume, now, block_keys)
            raw = await self._aeval(self._batch, keys, args)
            return _named(self._result(checks, len(block_keys), raw), block_keys)
        decisions: list[Decision | None] = [None] * len(checks)
        blocked: list[Block | None] = [None] * len(block_keys)
        # Slots holding block keys go first: once a block is found, the rest of the
        # batch is only decided, never charged (a blocked request charges nothing).
        charge = consume
        for ci, bi in sorted(groups, key=lambda g: not g[1]):
            sub = [checks[i] for i in ci]
            sub_bk = [block_keys[j] for j in bi]
            keys, args = self._args(sub, charge, now, sub_bk)
            r = self._result(sub, len(sub_bk), await self._aeval(self._batch, keys, args))
            if any(r.blocked):
                charge = False
            for i, d in zip(ci, r.decisions, strict=True):
                decisions[i] = d
            for j, b in zip(bi, r.blocked, strict=True):
                blocked[j] = b
        return _named(BatchResult(decisions, blocked), block_keys)  # type: ignore[arg-type]

    async def ahit(self, algorithm: Algorithm, key: str, cost: int, now: int | None) -> Decision:
        return (await self.aapply((Check(algorithm, key, cost),), now=now)).decisions[0]

    async def areset(self, keys: Sequence[str]) -> None:
        if self._async() is None:
            await asyncio.to_thread(self.reset, keys)
            return
        for group in self._key_groups(keys):
            await self._aeval(self._reset, group, ())

    async def ablock(
        self, key: str, ttl: float | None, reason: str = "", now: int | None = None
    ) -> None:
        if self._async() is None:
            await asyncio.to_thread(self.block, key, ttl, reason, now)
            return
        args = self._block_args(key, ttl, reason, now)
        exp = _text(await self._aeval(self._block, [f"{self.family(key)}:b"], args))
        await self._aeval(
            self._blocks, self._index, ["add", args[0], self._slack_ms, key, exp, reason]
        )

    async def aunblock(self, key: str) -> bool:
        client = self._async()
        if client is None:
            return await asyncio.to_thread(self.unblock, key)
        try:
            n = await client.execute_command("DEL", f"{self.family(key)}:b")
        except self._errors as exc:
            raise StorageError(f"Redis: {type(exc).__name__}: {exc}") from exc
        removed = await self._aeval(self._blocks, self._index, ["del", "", "0", key, "", ""])
        return bool(n or removed)

    async def ablocked(self, now: int | None = None) -> list[Block]:
        if self._async() is None:
            return await asyncio.to_thread(self.blocked, now)
        raw = await self._aeval(
            self._blocks, self._index, ["list", self._now(now), self._slack_ms]
        )
        return _blocks(raw)

    async def aping(self) -> bool:
        """Async twin of :meth:`ping`."""
        client = self._async()
        if client is None:
            return await asyncio.to_thread(self.ping)
        try:
            return bool(await client.execute_command("PING"))
        except self._errors:
            return False

    async def aclose(self) -> None:
        """Close the async client this storage made for the running event loop."""
        cached, self._loop_client = self._loop_client, None
        if cached is not None:
            await cached[1].aclose()
            for sentinel in _sentinels(cached[1]):
                await sentinel.aclose()

    # -- concurrency leases (issue 7) ---------------------------------------------------
    # ``P{k}:q``: a zset of lease ids scored by expiry (microseconds); see lua/lease.lua.
    # On a Cluster, keys in different slots are taken one slot at a time, and released
    # again when a later one is full.

    supports_leases = True

    def _lease_groups(self, keys: Sequence[str]) -> list[list[int]]:
        if not self._cluster or len(keys) < 2:
            return [list(range(len(keys)))]
        slots: dict[int, list[int]] = {}
        for i, k in enumerate(keys):
            slots.setdefault(self._key_slot(f"{self.family(k)}:q".encode()), []).append(i)
        return list(slots.values())

    def _lease_args(self, keys: Sequence[str], limits: Sequence[int], lease_id: str,
                    timeout: float, now: int | None) -> tuple[list[str], list[Any]]:
        if now is None and self.clock == "client":
            now = int(time.time() * 1_000_000)
        slack = self._slack_ms if now is not None else "1000"
        args: list[Any] = ["acquire", "" if now is None else str(now), lease_id,
                           str(round(timeout * 1_000_000)), slack, *limits]
        return [f"{self.family(k)}:q" for k in keys], args

    def acquire(
        self, keys: Sequence[str], limits: Sequence[int], lease_id: str, timeout: float,
        now: int | None = None,
    ) -> int:
        script = _script("lease")
        taken: list[str] = []
        for group in self._lease_groups(keys):
            rkeys, args = self._lease_args([keys[i] for i in group], [limits[i] for i in group],
                                           lease_id, timeout, now)
            failed = int(self._eval(script, rkeys, args))
            if failed:
                if taken:
                    self.release(taken, lease_id)
                return group[failed - 1]
            taken += [keys[i] for i in group]
        return -1

    def release(self, keys: Sequence[str], lease_id: str) -> None:
        script = _script("lease")
        for group in self._lease_groups(keys):
            self._eval(script, [f"{self.family(keys[i])}:q" for i in group],
                       ["release", "", lease_id])

    def inflight(self, key: str, now: int | None = None) -> int:
        return int(self._eval(_script("lease"), [f"{self.family(key)}:q"],
                              ["count", self._now(now)]))

    async def aacquire(
        self, keys: Sequence[str], limits: Sequence[int], lease_id: str, timeout: float,
        now: int | None = None,
    ) -> int:
        if self._async() is None:
            return await asyncio.to_thread(self.acquire, keys, limits, lease_id, timeout, now)
        script = _script("lease")
        taken: list[str] = []
        for group in self._lease_groups(keys):
            rkeys, args = self._lease_args([keys[i] for i in group], [limits[i] for i in group],
                                           lease_id, timeout, now)
            failed = int(await self._aeval(script, rkeys, args))
            if failed:
                if taken:
                    await self.arelease(taken, lease_id)
                return group[failed - 1]
            taken += [keys[i] for i in group]
        return -1

    async def arelease(self, keys: Sequence[str], lease_id: str) -> None:
        if self._async() is None:
            await asyncio.to_thread(self.release, keys, lease_id)
            return
        script = _script("lease")
        for group in self._lease_groups(keys):
            await self._aeval(script, [f"{self.family(keys[i])}:q" for i in group],
                              ["release", "", lease_id])

    async def ainflight(self, key: str, now: int | None = None) -> int:
        if self._async() is None:
            return await asyncio.to_thread(self.inflight, key, now)
        return int(await self._aeval(_script("lease"), [f"{self.family(key)}:q"],
                                     ["count", self._now(now)]))

    # -- the generation of admin changes (see Storage.generation) ------------------------
    # ``P{%g}``: a plain counter (``%`` never starts an escaped family: no clash). It is
    # created at the current time in microseconds rather than 0, so a counter lost (evicted,
    # flushed) and made again never comes back to a value a worker still remembers.

    def _gen_seed(self) -> tuple[str, str]:
        return f"{self.prefix}{{%g}}", str(time.time_ns() // 1000)

    def generation(self) -> int:
        value = self._sync_call("GET", self._gen_seed()[0])
        return 0 if value is None else int(value)

    def next_generation(self) -> int:
        key, seed = self._gen_seed()
        self._sync_call("SET", key, seed, "NX")
        return int(self._sync_call("INCR", key))

    async def _acall(self, *args: Any) -> Any:
        client = self._async()
        try:
            return await client.execute_command(*args)
        except self._errors as exc:
            raise StorageError(f"Redis: {type(exc).__name__}: {exc}") from exc

    async def ageneration(self) -> int:
        if self._async() is None:
            return await asyncio.to_thread(self.generation)
        value = await self._acall("GET", self._gen_seed()[0])
        return 0 if value is None else int(value)

    async def anext_generation(self) -> int:
        if self._async() is None:
            return await asyncio.to_thread(self.next_generation)
        key, seed = self._gen_seed()
        await self._acall("SET", key, seed, "NX")
        return int(await self._acall("INCR", key))


def _named(result: BatchResult, block_keys: Sequence[str]) -> BatchResult:
    blocked = result.blocked
    for j, b in enumerate(blocked):
        if b is not None:
            blocked[j] = b._replace(key=block_keys[j])
    return result


def _blocks(raw: Sequence[Any]) -> list[Block]:
    out = []
    for i in range(0, len(raw), 3):
        e = _text(raw[i + 1])
        out.append(Block(_text(raw[i]), _INF if e == "inf" else int(e) / 1e6, _text(raw[i + 2])))
    return out


def _sentinels(client: Any) -> list[Any]:
    """The sentinel clients behind a ``master_for`` client we made (closed with it)."""
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    return list(getattr(manager, "sentinels", ()))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:2])


def _is_async(client: Any) -> bool:
    return type(client).__module__.startswith("redis.asyncio")


def _is_cluster(client: Any) -> bool:
    return "cluster" in type(client).__module__


# -- URLs -------------------------------------------------------------------------------

_OWN_OPTIONS = ("prefix", "clock", "ttl_slack")


def from_url(url: str, **options: Any) -> RedisStorage:
    """Build a RedisStorage from a URL; clients are created on first use.

    * ``redis://[[user]:password@]host[:port][/db]`` and ``rediss://`` (TLS): standalone;
    * ``redis+cluster://host:port[,host:port...]``: a Redis Cluster (any nodes as seeds);
    * ``redis+sentinel://host:port[,host:port...]/service[/db]``: the master of ``service``.

    Options (keyword arguments or query parameters): ``prefix``, ``clock``, ``ttl_slack``
    (see :class:`RedisStorage`); anything else goes to the redis client (e.g.
    ``socket_timeout``, ``password``). Socket timeouts default to ``DEFAULT_TIMEOUT``
    (0.25 s) and failed commands are not retried, so a dead store fails fast.

    Standalone and Sentinel clients get a blocking pool of ``max_connections`` connections
    (default ``DEFAULT_MAX_CONNECTIONS``, 50; for async clients, one pool per event loop):
    when every connection is busy, a call waits for one, at most ``socket_timeout``, instead
    of failing at once. A Cluster client keeps redis-py's per-node pools.
    """
    redis = _redis()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = dict(parse_qsl(parts.query))
    own: dict[str, Any] = {k: query.pop(k) for k in _OWN_OPTIONS if k in query}
    own.update({k: options.pop(k) for k in _OWN_OPTIONS if k in options})
    if "ttl_slack" in own:
        try:
            own["ttl_slack"] = float(own["ttl_slack"])
        except (TypeError, ValueError):
            raise ConfigError(f"ttl_slack must be a number, got {own['ttl_slack']!r}") from None
    kw: dict[str, Any] = {
        "socket_timeout": DEFAULT_TIMEOUT,
        "socket_connect_timeout": DEFAULT_TIMEOUT,
    }
    for k, v in query.items():
        kw[k] = _coerce(v)
    kw.update(options)
    _check_client_options(redis, scheme, kw, url)
    if scheme == "redis+cluster":
        if "max_connections" in kw:
            _pool_size(kw["max_connections"])
    else:
        size = _pool_size(kw.pop("max_connections", DEFAULT_MAX_CONNECTIONS))
        wait = kw["socket_timeout"]  # the wait for a free connection: the store timeout
    hosts, user, password = _netloc(parts.netloc, url)
    if user and "username" not in kw:
        kw["username"] = user
    if password and "password" not in kw:
        kw["password"] = password

    make: Callable[[], Any]
    amake: Callable[[], Any]
    if scheme in ("redis", "rediss"):
        if len(hosts) != 1:
            raise ConfigError(f"{scheme}:// takes one host, got {parts.netloc!r} in {url!r}")
        host, port = hosts[0]
        db = _db(parts.path.strip("/"), url)
        kw.setdefault("db", db)
        if scheme == "rediss":
            kw.setdefault("ssl", True)

        def make() -> Any:
            template = redis.Redis(host=host, port=port, retry=_no_retry(redis.retry), **kw)
            return _blocking(template, redis.BlockingConnectionPool, size, wait)

        def amake() -> Any:
            import redis.asyncio as aredis
            from redis.asyncio.retry import Retry

            template = aredis.Redis(host=host, port=port, retry=_no_retry_async(Retry), **kw)
            return _blocking(template, _async_pool(), size, wait)

    elif scheme == "redis+cluster":
        if parts.path.strip("/"):
            raise ConfigError(f"a Redis Cluster has no database number: {url!r}")

        def make() -> Any:
            mod: Any = importlib.import_module("redis.cluster")
            nodes = [mod.ClusterNode(h, p) for h, p in hosts]
            return mod.RedisCluster(startup_nodes=nodes, **kw)

        def amake() -> Any:
            mod: Any = importlib.import_module("redis.asyncio.cluster")
            nodes = [mod.ClusterNode(h, p) for h, p in hosts]
            return mod.RedisCluster(startup_nodes=nodes, **kw)

    elif scheme == "redis+sentinel":
        path = [p for p in parts.path.split("/") if p]
        if not path or len(path) > 2:
            raise ConfigError(
                f"redis+sentinel:// needs the service name: redis+sentinel://host:port/service, "
                f"got {url!r}"
            )
        service = unquote(path[0])
        if len(path) == 2:
            kw.setdefault("db", _db(path[1], url))
        sentinel_kw = {
            k: kw[k] for k in ("socket_timeout", "socket_connect_timeout") if k in kw
        }

        def make() -> Any:
            mod: Any = importlib.import_module("redis.sentinel")
            pool = _blocking_sentinel_pool(
                mod.SentinelConnectionPool, redis.BlockingConnectionPool, size, wait
            )
            return mod.Sentinel(hosts, sentinel_kwargs=sentinel_kw, **kw).master_for(
                service, connection_pool_class=pool
            )

        def amake() -> Any:
            mod: Any = importlib.import_module("redis.asyncio.sentinel")
            pool = _blocking_sentinel_pool(mod.SentinelConnectionPool, _async_pool(), size, wait)
            return mod.Sentinel(hosts, sentinel_kwargs=sentinel_kw, **kw).master_for(
                service, connection_pool_class=pool
            )

    else:
        raise ConfigError(f"not a Redis URL: {url!r}")

    storage = RedisStorage(_LAZY, **own)
    storage._client = None
    storage._make_client = make
    storage._make_async = amake
    storage._cluster = scheme == "redis+cluster"
    storage._url = f"{scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    return storage


def _check_client_options(redis: Any, scheme: str, kw: dict[str, Any], url: str) -> None:
    """Unknown client options are a ConfigError now, not a failing store at request time
    (clients are only built on first use)."""
    import inspect

    known = set(inspect.signature(redis.Redis.__init__).parameters)
    if scheme == "redis+cluster":
        cluster: Any = importlib.import_module("redis.cluster")
        known |= set(inspect.signature(cluster.RedisCluster.__init__).parameters)
    unknown = sorted(set(kw) - known - {"self", "kwargs"})
    if unknown:
        raise ConfigError(
            f"unknown Redis option(s) {', '.join(unknown)} for {url!r} "
            f"(throttlekit's own: {', '.join(sorted(_OWN_OPTIONS))}; see redis.Redis)"
        )


#: stands for the client while from_url's real clients wait to be built on first use
_LAZY = object()


def _pool_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"max_connections must be a positive integer, got {value!r}")
    return value


def _blocking(template: Any, pool_class: Any, size: int, wait: float | None) -> Any:
    """A client like ``template`` (sync or async) on a pool of ``size`` connections that
    waits up to ``wait`` seconds for a free one (redis-py's own pools raise at once)."""
    pool = template.connection_pool
    blocking = pool_class(max_connections=size, timeout=wait,
                          connection_class=pool.connection_class, **pool.connection_kwargs)
    client = type(template)(connection_pool=blocking)
    client.auto_close_connection_pool = True  # closing the client closes its pool
    return client


_ASYNC_POOL: Any = None


def _async_pool() -> Any:
    """redis.asyncio's BlockingConnectionPool, waiting while the store makes progress.

    On an event loop, a wait's clock also runs while the loop is busy with other requests
    (a burst of a thousand takes longer than a store timeout to start), so a plain bounded
    wait gives up on a healthy store. This one gives up only when no connection came back
    healthy during a whole timeout: the store itself is stuck (or dead)."""
    global _ASYNC_POOL
    if _ASYNC_POOL is not None:
        return _ASYNC_POOL
    import redis.asyncio as aredis

    class WaitingConnectionPool(aredis.BlockingConnectionPool):
        _answered = 0  # connections released still connected: the store answered

        async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            while True:
                seen = self._answered
                try:
                    return await super().get_connection(  # type: ignore[no-untyped-call]
                        *args, **kwargs
                    )
                except aredis.ConnectionError as exc:
                    # only the pool's own wait is retried, never a failed connect
                    if self._answered == seen or not isinstance(
                        exc.__cause__, asyncio.TimeoutError
                    ):
                        raise

        async def release(self, connection: Any) -> None:
            if connection.is_connected:
                self._answered += 1
            await super().release(connection)

    _ASYNC_POOL = WaitingConnectionPool
    return _ASYNC_POOL


def _blocking_sentinel_pool(sentinel_pool: Any, blocking_pool: Any, size: int,
                            wait: float | None) -> Any:
    """A Sentinel master pool class that waits for a free connection like ``blocking_pool``."""

    class BlockingSentinelConnectionPool(sentinel_pool, blocking_pool):  # type: ignore[misc]
        def __init__(self, service_name: str, sentinel_manager: Any, **kwargs: Any) -> None:
            kwargs["max_connections"] = size
            kwargs["timeout"] = wait
            super().__init__(service_name, sentinel_manager, **kwargs)

    return BlockingSentinelConnectionPool


def _no_retry(retry_module: Any) -> Any:
    from redis.backoff import NoBackoff

    return retry_module.Retry(NoBackoff(), 0)


def _no_retry_async(retry_cls: Any) -> Any:
    from redis.backoff import NoBackoff

    return retry_cls(NoBackoff(), 0)


def _netloc(netloc: str, url: str) -> tuple[list[tuple[str, int]], str, str]:
    userinfo, _, hostlist = netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    hosts: list[tuple[str, int]] = []
    default_port = 26379 if url.lower().startswith("redis+sentinel") else 6379
    for item in hostlist.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):  # [ipv6]:port
            host, _, rest = item[1:].partition("]")
            port_text = rest.lstrip(":")
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise ConfigError(f"bad port {port_text!r} in {url!r}") from None
        hosts.append((host or "localhost", port))
    if not hosts:
        hosts = [("localhost", default_port)]
    return hosts, unquote(user), unquote(password)


def _db(text: str, url: str) -> int:
    if not text:
        return 0
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"bad database number {text!r} in {url!r}") from None


def _coerce(value: str) -> Any:
    low = value.lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    return value
