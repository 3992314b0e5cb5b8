"""The redis clients of a storage: given, or built on first use (once, under a lock; one
async client per event loop) on pools that wait for a free connection."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Any

from ..._errors import ConfigError

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_TIMEOUT",
    "ClientFactory",
    "Clients",
    "async_pool",
    "blocking",
    "is_async",
    "is_cluster",
    "no_retry",
    "redis_module",
    "standalone_clients",
]

#: Default socket connect and operation timeout (seconds) of clients built from a URL.
DEFAULT_TIMEOUT = 0.25
#: Default size of the connection pool of clients built from a URL (one per event loop for
#: async clients). A request waits for a free connection up to the socket timeout.
DEFAULT_MAX_CONNECTIONS = 50


def redis_module() -> Any:
    try:
        import redis
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "the Redis backend needs the redis package: pip install 'throttlekit-web[redis]'"
        ) from None
    return redis


def is_async(client: Any) -> bool:
    return type(client).__module__.startswith("redis.asyncio")


def is_cluster(client: Any) -> bool:
    return "cluster" in type(client).__module__


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:2])


def _sentinels(client: Any) -> list[Any]:
    """The sentinel clients behind a ``master_for`` client we made (closed with it)."""
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    return list(getattr(manager, "sentinels", ()))


class ClientFactory:
    """Stands for the clients of a storage built from a URL: ``make`` and ``amake`` build
    the sync and the async client on first use; ``where`` names them (the URL without the
    credentials). The storage owns (and closes) the clients it builds."""

    __slots__ = ("amake", "make", "where")

    def __init__(self, make: Callable[[], Any], amake: Callable[[], Any], where: str) -> None:
        self.make = make
        self.amake = amake
        self.where = where


class Clients:
    """The client half of :class:`RedisStorage`: which clients it talks to, and how."""

    _client: Any
    _async_client: Any
    _make_client: Callable[[], Any] | None
    _make_async: Callable[[], Any] | None
    _client_lock: threading.Lock
    _loop_client: tuple[Any, Any] | None
    _loop_clients: dict[Any, tuple[Any, AsyncGenerator[None, None] | None]]
    _pool: Any
    _encoding: tuple[str, str] | None
    _reconnect_check: bool
    _url: str

    def _init_clients(self, client: Any, async_client: Any) -> None:
        self._make_client = self._make_async = None
        self._url = ""
        if isinstance(client, ClientFactory):
            if async_client is not None:
                raise ConfigError("async_client is given with clients built from a URL")
            self._make_client, self._make_async, self._url = client.make, client.amake, client.where
            client = None
        elif client is not None and is_async(client):
            if async_client is not None:
                raise ConfigError("client is a redis.asyncio client and async_client is given")
            client, async_client = None, client
        elif client is None and async_client is None:
            raise ConfigError("RedisStorage needs a redis client (or use storage_from_url)")
        self._client = client
        self._async_client = async_client
        self._client_lock = threading.Lock()  # one client per storage, however many threads
        self._loop_client = None  # (the last loop, its client): the common case
        self._loop_clients = {}
        # the direct path (see RedisStorage._direct_one): our own plain client's pool
        self._pool = None
        self._encoding = None
        self._reconnect_check = False

    def _where(self) -> str:
        return self._url or repr(self._client or self._async_client)

    # -- sync -----------------------------------------------------------------------------

    def sync_client(self) -> Any:
        """The sync redis client, built on first use (also for callers sending commands of
        their own: ``testing.clear_limiter``, the monitor's shared top offenders); a
        ConfigError when this storage has only a redis.asyncio client."""
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
                    self._direct_path(client)
                    self._client = client  # published last, with the direct path ready
        return client

    def _direct_path(self, client: Any) -> None:
        """Single checks skip redis-py's per-command layers on a client we built: a plain
        pooled ``redis.Redis`` (standalone or Sentinel master) without retries to honour."""
        redis = redis_module()
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
            cached = self._loop_client = (loop, self._async_of(loop, self._make_async))
        return cached[1]

    def _async_of(self, loop: asyncio.AbstractEventLoop, make: Callable[[], Any]) -> Any:
        """The async client of ``loop``, made on its first call there. redis.asyncio
        connections belong to one event loop: one client per loop, closed as it ends (see
        :func:`_closer`); a loop closed without that leaves them to the garbage collector."""
        with self._client_lock:
            clients = self._loop_clients
            entry = clients.get(loop)
            if entry is not None:
                return entry[0]
            gone = [clients.pop(other) for other in [o for o in clients if o.is_closed()]]
            client = make()
            clients[loop] = (client, _closer(client, self._ended, loop))
        # dropped out of the lock: a closer a loop never finalized may run its
        # ``finally`` (and ``_ended``, which takes the lock) as it goes
        del gone
        return client

    def _ended(self, loop: asyncio.AbstractEventLoop) -> None:
        """``loop``'s client was closed: the next call there makes another."""
        with self._client_lock:
            self._loop_clients.pop(loop, None)
            cached = self._loop_client
            if cached is not None and cached[0] is loop:
                self._loop_client = None

    async def aclose(self) -> None:
        """Close the async client this storage made for the running event loop (those of
        other loops close as their loops end)."""
        loop = asyncio.get_running_loop()
        entry = self._loop_clients.get(loop)
        if entry is None:
            return
        if entry[1] is not None:
            await entry[1].aclose()
            return
        self._ended(loop)
        await _aclose(entry[0])


async def _aclose(client: Any) -> None:
    await client.aclose()
    for sentinel in _sentinels(client):
        await sentinel.aclose()


def _closer(client: Any, ended: Callable[[Any], None], loop: Any
            ) -> AsyncGenerator[None, None] | None:
    """An async generator on the running loop that closes ``client`` when it is closed:
    by ``aclose``, or by the loop as it ends (``asyncio.run`` and the other runners call
    ``loop.shutdown_asyncgens()``); then ``ended(loop)``. None on a loop that installs no
    asyncgen hooks: nothing would close it there, and its finalization would try to."""
    hooks = sys.get_asyncgen_hooks()
    if hooks.firstiter is None or hooks.finalizer is None:
        return None

    async def closer() -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            ended(loop)
            await _aclose(client)

    gen = closer()
    with contextlib.suppress(StopIteration):  # to its yield, now: the loop's hooks
        gen.asend(None).send(None)  # register it (firstiter)
    return gen


# -- pools of clients built from a URL ------------------------------------------------------


def blocking(template: Any, pool_class: Any, size: int, wait: float | None) -> Any:
    """A client like ``template`` (sync or async) on a pool of ``size`` connections that
    waits up to ``wait`` seconds for a free one (redis-py's own pools raise at once)."""
    pool = template.connection_pool
    waiting = pool_class(max_connections=size, timeout=wait,
                         connection_class=pool.connection_class, **pool.connection_kwargs)
    client = type(template)(connection_pool=waiting)
    client.auto_close_connection_pool = True  # closing the client closes its pool
    return client


_ASYNC_POOL: Any = None


def async_pool() -> Any:
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


def no_retry(retry_cls: Any) -> Any:
    """A redis-py ``Retry`` (sync or async class) that never retries: a dead store fails fast."""
    from redis.backoff import NoBackoff

    return retry_cls(NoBackoff(), 0)


def standalone_clients(
    host: str, port: int, kw: dict[str, Any], size: int, wait: float | None
) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """The sync and async client makers of one Redis server, on waiting pools."""
    redis = redis_module()

    def make() -> Any:
        template = redis.Redis(host=host, port=port, retry=no_retry(redis.retry.Retry), **kw)
        return blocking(template, redis.BlockingConnectionPool, size, wait)

    def amake() -> Any:
        import redis.asyncio as aredis
        from redis.asyncio.retry import Retry

        template = aredis.Redis(host=host, port=port, retry=no_retry(Retry), **kw)
        return blocking(template, async_pool(), size, wait)

    return make, amake
