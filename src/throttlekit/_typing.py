"""Types of the public API that users' code is checked against (``mypy --strict``).

``RatesLike`` is every form ``rates`` takes (``Limiter.hit``, ``throttle``, ``limit``, the
integrations' ``default_limits``): a rate string (``"10/second; 1000/hour"``), a
:class:`~throttlekit.Rate`, or a list or tuple of them. An int (``hit("k", 5)``) is a type
error here and a :class:`~throttlekit.ConfigError` at run time.

Decorators are typed with a TypeVar bound to a callable, so ``@limiter.limit(...)`` hands
back the decorated function's own type: its parameters, its return type, sync or async.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from ._rates import Rate

if TYPE_CHECKING:
    from ._events import Event
    from ._request import RequestView

__all__ = ["CallbackT", "FuncT", "KeyLike", "RatesLike", "Strings"]

#: every form ``rates`` takes: a rate string, a Rate, or a list or tuple of them
RatesLike: TypeAlias = str | Rate | Sequence[str | Rate]

#: a rule's or limit's key: a function of the request view (None skips the request) or a
#: shortcut string (``"client"``, ``"ip"``, ``"header:X-Api-Key"``, ...)
KeyLike: TypeAlias = "str | Callable[[RequestView], object] | None"

#: what a throttle declares it matches (``methods=``, ``paths=``...): one, or several
Strings: TypeAlias = str | Iterable[str] | None

#: a decorated function or coroutine function, handed back with its own signature
FuncT = TypeVar("FuncT", bound=Callable[..., Any])

#: an event callback (``limiter.on``), handed back as it was given
CallbackT = TypeVar("CallbackT", bound="Callable[[Event], object]")
