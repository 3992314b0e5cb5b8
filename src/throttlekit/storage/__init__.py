"""Storage backends and ``storage_from_url``.

``memory://`` is the embedded default. Later backends register their URL schemes in
``_SCHEMES``; their client libraries are imported only when such a URL is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

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

    Raises:
        ConfigError: unknown scheme, bad option, or the backend's client library is missing.
    """
    if not isinstance(url, str):
        raise ConfigError(f"storage URL must be a string, got {url!r}")
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


def __getattr__(name: str) -> Any:
    # Backends with a client library load on first use, never at import time.
    if name == "RedisStorage":
        from .redis import RedisStorage

        return RedisStorage
    if name == "MemcachedStorage":
        from .memcached import MemcachedStorage

        return MemcachedStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
