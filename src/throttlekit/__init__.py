"""throttlekit: rate limiting, throttling and blocklists for WSGI and ASGI apps.

>>> from throttlekit import Limiter
>>> limiter = Limiter()
>>> limiter.hit("user:42", "2/second").allowed
True
"""

from __future__ import annotations

from ._decision import Decision
from ._errors import ConfigError, RateLimitExceeded, StorageError, ThrottlekitError
from ._limiter import Limiter
from ._rates import Rate, parse_rates
from ._version import __version__
from .storage import MemoryStorage, Storage, storage_from_url

__all__ = [
    "ConfigError",
    "Decision",
    "Limiter",
    "MemoryStorage",
    "Rate",
    "RateLimitExceeded",
    "Storage",
    "StorageError",
    "ThrottlekitError",
    "__version__",
    "parse_rates",
    "storage_from_url",
]

for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and isinstance(_obj, type):
        _obj.__module__ = "throttlekit"
del _name, _obj
