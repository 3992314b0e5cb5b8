"""throttlekit: rate limiting, throttling and blocklists for WSGI and ASGI apps.

>>> from throttlekit import Limiter
>>> limiter = Limiter()
>>> limiter.hit("user:42", "2/second").allowed
True
"""

from __future__ import annotations

from ._clientip import ClientIPResolver
from ._compiled import COMPILED
from ._decision import Decision
from ._errors import ConfigError, RateLimitExceeded, StorageError, ThrottlekitError
from ._events import Event
from ._ipset import IPSet
from ._limiter import Limiter
from ._rates import Rate, parse_rates
from ._request import RequestView
from ._responses import Denial, default_responder, retry_after_header
from ._rules import Verdict, reads_form
from ._standing import Standing
from ._version import __version__
from .asgi import ASGIMiddleware
from .storage import MemoryStorage, Storage, storage_from_url
from .wsgi import WSGIMiddleware

__all__ = [
    "COMPILED",
    "ASGIMiddleware",
    "ClientIPResolver",
    "ConfigError",
    "Decision",
    "Denial",
    "Event",
    "IPSet",
    "Limiter",
    "MemoryStorage",
    "Rate",
    "RateLimitExceeded",
    "RequestView",
    "Standing",
    "Storage",
    "StorageError",
    "ThrottlekitError",
    "Verdict",
    "WSGIMiddleware",
    "__version__",
    "default_responder",
    "parse_rates",
    "reads_form",
    "retry_after_header",
    "storage_from_url",
]

for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and isinstance(_obj, type):
        _obj.__module__ = "throttlekit"
del _name, _obj
