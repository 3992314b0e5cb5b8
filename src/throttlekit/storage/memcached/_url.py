"""Memcached server addresses and ``memcached://`` URLs; the clients built from them."""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..._errors import ConfigError

__all__ = ["DEFAULT_PORT", "make_client", "parse_url", "servers"]

DEFAULT_PORT = 11211


def servers(spec: Any) -> list[tuple[str, int]] | None:
    """Server addresses from ``spec``, or None when ``spec`` is a client object."""
    if isinstance(spec, str):
        items: list[Any] = [s for s in spec.split(",") if s.strip()]
    elif isinstance(spec, (list, tuple)) and spec and all(
        isinstance(s, (str, tuple, list)) for s in spec
    ):
        items = list(spec)
    elif all(hasattr(spec, m) for m in ("gets_many", "incr", "decr", "add", "cas", "gets")):
        return None
    else:
        raise ConfigError(
            f"expected a pymemcache client or memcached server addresses, got {spec!r}"
        )
    if not items:
        raise ConfigError(f"no memcached server in {spec!r}")
    return [_address(item) for item in items]


def _address(item: Any) -> tuple[str, int]:
    if isinstance(item, (tuple, list)):
        if len(item) != 2:
            raise ConfigError(f"a memcached server is (host, port), got {item!r}")
        host, port = item
    else:
        parts = urlsplit("//" + item.strip())
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            raise ConfigError(f"invalid memcached server address {item!r}: bad port") from None
    if not host or not isinstance(host, str):
        raise ConfigError(f"invalid memcached server address {item!r}")
    if port is None:
        port = DEFAULT_PORT
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"invalid memcached port in {item!r}")
    return host, port


def make_client(
    servers: list[tuple[str, int]],
    connect_timeout: float,
    timeout: float,
    max_pool_size: int | None,
) -> Any:
    from pymemcache.client.base import PooledClient  # type: ignore[import-untyped]
    from pymemcache.client.hash import HashClient  # type: ignore[import-untyped]

    common: dict[str, Any] = {
        "connect_timeout": connect_timeout,
        "timeout": timeout,
        "no_delay": True,
        "default_noreply": False,
        "max_pool_size": max_pool_size,
    }
    if len(servers) == 1:
        return PooledClient(servers[0], **common)
    # Retry a failed server on every call and raise its errors (never a silent default
    # value, never a remap of its keys to another server).
    return HashClient(
        servers, use_pooling=True, retry_attempts=sys.maxsize, retry_timeout=-1,
        ignore_exc=False, **common,
    )


_ALIASES = {"socket_timeout": "timeout", "socket_connect_timeout": "connect_timeout"}
_INT_OPTIONS = ("cas_retries", "max_log_limit", "max_pool_size")
_FLOAT_OPTIONS = ("connect_timeout", "timeout")


def parse_url(url: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The servers and the options (query string, then ``options``) of a memcached URL:
    the arguments of ``MemcachedStorage``."""
    parts = urlsplit(url)
    query: dict[str, Any] = dict(parse_qsl(parts.query))
    query.update(options)
    for alias, name in _ALIASES.items():  # the Redis backend's names, for portable options
        if alias in query:
            query.setdefault(name, query.pop(alias))
    unknown = set(query) - {"prefix", *_INT_OPTIONS, *_FLOAT_OPTIONS}
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(sorted(unknown))} for storage {url!r}")
    for name in _INT_OPTIONS + _FLOAT_OPTIONS:
        if isinstance(query.get(name), str):
            try:
                query[name] = (int if name in _INT_OPTIONS else float)(query[name])
            except ValueError:
                raise ConfigError(
                    f"{name} must be a number, got {query[name]!r} in {url!r}"
                ) from None
    netloc = parts.netloc.rpartition("@")[2]
    if not netloc.strip(", "):
        raise ConfigError(f"no memcached server in {url!r}")
    return netloc, query
