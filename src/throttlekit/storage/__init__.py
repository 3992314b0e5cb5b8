"""Storage backends and ``storage_from_url``.

``memory://`` is the embedded default. Later backends register their URL schemes in
``_SCHEMES``; their client libraries are imported only when such a URL is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from .._errors import ConfigError
from .base import BatchResult, Block, Check, Storage
from .memory import MemoryStorage

if TYPE_CHECKING:
    from .memcached import MemcachedStorage
    from .redis import RedisStorage

__all__ = [
    "BatchResult",
    "Block",
    "Check",
    "MemcachedStorage",
    "MemoryStorage",
    "RedisStorage",
    "Storage",
    "storage_from_url",
]

# scheme -> "module:factory"; the factory takes (url, **options) and returns a Storage.
_SCHEMES: dict[str, str] = {
    "memory": "throttlekit.storage.memory:from_url",
    "memcached": "throttlekit.storage.memcached:from_url",
    "redis": "throttlekit.storage.redis:from_url",
    "rediss": "throttlekit.storage.redis:from_url",
    "redis+cluster": "throttlekit.storage.redis:from_url",
    "redis+sentinel": "throttlekit.storage.redis:from_url",
}


def storage_from_url(url: str, **options: Any) -> Storage:
    """Build a storage backend from a URL such as ``memory://`` or ``redis://host:6379/0``.

    ``sync_interval`` (and ``sync_share``), as an option or a query parameter of a shared
    store's URL (``redis://host/0?sync_interval=0.1``), wraps the store in
    :class:`~throttlekit.storage.synced.SyncedStorage`: local leases of quota for many
    workers (see docs/backends.md, "Many workers on one Redis").

    Raises:
        ConfigError: unknown scheme, bad option, or the backend's client library is missing.
    """
    if not isinstance(url, str):
        raise ConfigError(f"storage URL must be a string, got {url!r}")
    url, synced = _sync_options(url, options)
    if synced:
        from .synced import SyncedStorage

        return SyncedStorage(storage_from_url(url, **options), **synced)
    scheme = urlsplit(url).scheme.lower()
    target = _SCHEMES.get(scheme)
    if target is None:
        raise ConfigError(
            f"unknown storage URL {url!r}; supported schemes: "
            + ", ".join(f"{s}://" for s in sorted(_SCHEMES))
        )
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    storage: Storage = getattr(module, attr)(url, **options)
    return storage


_SYNC_OPTIONS = {"sync_interval": "sync_interval", "sync_share": "share"}


def _sync_options(url: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Take SyncedStorage's options out of ``options`` and of the URL's query."""
    synced = {_SYNC_OPTIONS[k]: options.pop(k) for k in list(options) if k in _SYNC_OPTIONS}
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = []
    for name, value in query:
        if name not in _SYNC_OPTIONS:
            kept.append((name, value))
            continue
        try:
            synced[_SYNC_OPTIONS[name]] = float(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number of seconds, got {value!r}") from None
    if len(kept) != len(query):
        url = parts._replace(query=urlencode(kept)).geturl()
    return url, synced


def __getattr__(name: str) -> Any:
    # Backends with a client library load on first use, never at import time.
    if name == "RedisStorage":
        from .redis import RedisStorage

        return RedisStorage
    if name == "MemcachedStorage":
        from .memcached import MemcachedStorage

        return MemcachedStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
