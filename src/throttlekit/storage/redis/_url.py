"""``from_url``: a Redis storage from a ``redis://``, ``rediss://``, ``redis+cluster://`` or
``redis+sentinel://`` URL, its clients built on first use."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from ..._errors import ConfigError
from ._client import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_TIMEOUT,
    ClientFactory,
    redis_module,
    standalone_clients,
)
from ._store import RedisStorage
from .cluster import RedisClusterStorage, cluster_clients
from .sentinel import sentinel_clients

__all__ = ["from_url"]

_OWN_OPTIONS = ("prefix", "clock", "ttl_slack", "watch_blocks")


def from_url(url: str, **options: Any) -> RedisStorage:
    """Build a RedisStorage from a URL; clients are created on first use.

    * ``redis://[[user]:password@]host[:port][/db]`` and ``rediss://`` (TLS): standalone;
    * ``redis+cluster://host:port[,host:port...]``: a Redis Cluster (any nodes as seeds);
    * ``redis+sentinel://host:port[,host:port...]/service[/db]``: the master of ``service``.

    Options (keyword arguments or query parameters): ``prefix``, ``clock``, ``ttl_slack``,
    ``watch_blocks`` (``?watch_blocks=false``; see :class:`RedisStorage`); anything else
    goes to the redis client (e.g. ``socket_timeout``, ``password``). Socket timeouts
    default to ``DEFAULT_TIMEOUT`` (0.25 s) and failed commands are not retried, so a dead
    store fails fast.

    Standalone and Sentinel clients get a blocking pool of ``max_connections`` connections
    (default ``DEFAULT_MAX_CONNECTIONS``, 50; for async clients, one pool per event loop):
    when every connection is busy, a call waits for one, at most ``socket_timeout``, instead
    of failing at once. A Cluster client keeps redis-py's per-node pools.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    own, kw = _options(parts.query, options)
    _check_client_options(scheme, kw, url)
    if scheme == "redis+cluster":
        if "max_connections" in kw:
            _pool_size(kw["max_connections"])
        size, wait = 0, None
    else:
        size = _pool_size(kw.pop("max_connections", DEFAULT_MAX_CONNECTIONS))
        wait = kw["socket_timeout"]  # the wait for a free connection: the store timeout
    hosts, user, password = _netloc(parts.netloc, url)
    if user and "username" not in kw:
        kw["username"] = user
    if password and "password" not in kw:
        kw["password"] = password
    where = f"{scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    if scheme == "redis+cluster":
        if parts.path.strip("/"):
            raise ConfigError(f"a Redis Cluster has no database number: {url!r}")
        make, amake = cluster_clients(hosts, kw)
        return RedisClusterStorage(ClientFactory(make, amake, where), **own)
    if scheme in ("redis", "rediss"):
        make, amake = _standalone(scheme, parts, hosts, kw, url, size, wait)
    elif scheme == "redis+sentinel":
        service = _service(parts.path, kw, url)
        make, amake = sentinel_clients(hosts, service, kw, size, wait)
    else:
        raise ConfigError(f"not a Redis URL: {url!r}")
    return RedisStorage(ClientFactory(make, amake, where), **own)


def _options(query_text: str, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """throttlekit's own options and the client's (query parameters, then keyword
    arguments, which win), the client's with the default timeouts."""
    query = dict(parse_qsl(query_text))
    own: dict[str, Any] = {k: query.pop(k) for k in _OWN_OPTIONS if k in query}
    own.update({k: options.pop(k) for k in _OWN_OPTIONS if k in options})
    if "ttl_slack" in own:
        try:
            own["ttl_slack"] = float(own["ttl_slack"])
        except (TypeError, ValueError):
            raise ConfigError(f"ttl_slack must be a number, got {own['ttl_slack']!r}") from None
    flag = own.get("watch_blocks")
    if isinstance(flag, str):
        own["watch_blocks"] = {"true": True, "1": True, "false": False, "0": False}.get(
            flag.lower(), flag)  # (anything else: the storage's ConfigError names it)
    kw: dict[str, Any] = {
        "socket_timeout": DEFAULT_TIMEOUT,
        "socket_connect_timeout": DEFAULT_TIMEOUT,
    }
    for k, v in query.items():
        kw[k] = _coerce(v)
    kw.update(options)
    return own, kw


def _standalone(scheme: str, parts: SplitResult, hosts: list[tuple[str, int]],
                kw: dict[str, Any], url: str, size: int, wait: float | None
                ) -> tuple[Callable[[], Any], Callable[[], Any]]:
    if len(hosts) != 1:
        raise ConfigError(f"{scheme}:// takes one host, got {parts.netloc!r} in {url!r}")
    host, port = hosts[0]
    kw.setdefault("db", _db(parts.path.strip("/"), url))
    if scheme == "rediss":
        kw.setdefault("ssl", True)
    return standalone_clients(host, port, kw, size, wait)


def _service(path_text: str, kw: dict[str, Any], url: str) -> str:
    """The service name of a Sentinel URL's path (and its database number into ``kw``)."""
    path = [p for p in path_text.split("/") if p]
    if not path or len(path) > 2:
        raise ConfigError(
            f"redis+sentinel:// needs the service name: redis+sentinel://host:port/service, "
            f"got {url!r}"
        )
    if len(path) == 2:
        kw.setdefault("db", _db(path[1], url))
    return unquote(path[0])


def _check_client_options(scheme: str, kw: dict[str, Any], url: str) -> None:
    """Unknown client options are a ConfigError now, not a failing store at request time
    (clients are only built on first use)."""
    redis = redis_module()
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


def _pool_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"max_connections must be a positive integer, got {value!r}")
    return value


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
