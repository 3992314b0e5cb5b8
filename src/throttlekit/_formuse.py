"""Which user functions read ``view.form``: declared with :func:`reads_form`, or guessed
from their code. The ASGI middleware reads a small form body before the rules run only when
some rule's function reads it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["READS_FORM", "reads_form", "uses_form"]

#: the attribute ``reads_form`` sets on a function
READS_FORM = "throttlekit_reads_form"
_F = TypeVar("_F", bound=Callable[..., Any])


def reads_form(fn: _F, reads: bool = True) -> _F:
    """Declare that ``fn`` (a match, key, cost or priority function) reads ``view.form``
    (``reads=False``: that it does not). The ASGI middleware reads a small form body before
    the rules run only when some rule's function reads it, sparing every other request that
    cost. Needed for a function that reads the form without naming ``form`` in its own code
    (through a helper, say); ``"form:<field>"`` keys and rules files declare it themselves.

    >>> @reads_form
    ... def user(view):
    ...     return field_of(view, "user")
    """
    try:
        setattr(fn, READS_FORM, reads)
    except AttributeError:  # a bound method, a builtin: wrap it
        inner = fn

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return inner(*args, **kwargs)

        setattr(wrapper, READS_FORM, reads)
        return wrapper  # type: ignore[return-value]
    return fn


def uses_form(*functions: Any) -> bool:
    """Whether one of ``functions`` reads ``view.form``: as declared (:func:`reads_form`),
    else when its own code names ``form`` (``lambda v: v.form.get("user")``)."""
    for fn in functions:
        declared = getattr(fn, READS_FORM, None)
        if declared is not None:
            if declared:
                return True
            continue
        code = getattr(fn, "__code__", None)
        if code is not None and "form" in code.co_names:
            return True
    return False
