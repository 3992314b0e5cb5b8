"""What the decorators do once the decorated view or function has answered: charge the
``count_when`` limits its outcome matches (``settle``/``asettle``, with the status
:func:`status_of` reads from what it returned or raised), and the Decision the call runs
with (:func:`current_decision`, reset when it returns)."""

from __future__ import annotations

import contextvars
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._decision import Decision
    from ._limiter import Limiter
    from ._rules import Verdict

__all__ = ["CURRENT", "DECISION_KEY", "PENDING_KEY", "VERDICT_KEY", "asettle",
           "current_decision", "settle", "status_of"]

logger = logging.getLogger("throttlekit")

#: environ/scope key of the rules' verdict (``_responder.VERDICT_KEY``, which imports
#: more than this module may): its count_when charges are the pipeline's to settle
VERDICT_KEY = "throttlekit.verdict"

#: environ/scope key: the verdicts of endpoint limits with ``count_when`` charges to
#: settle once the view has answered (the wrapper settles them, whoever evaluated)
PENDING_KEY = "throttlekit.pending"

#: environ/scope key: the Decision the view reads (also ``request.throttle`` and the like),
#: which the wrapper gives to :func:`current_decision` while the view runs
DECISION_KEY = "throttlekit.decision"

#: the Decision of the endpoint limits of the current call (see :func:`current_decision`)
CURRENT: contextvars.ContextVar[Decision | None] = contextvars.ContextVar(
    "throttlekit_decision", default=None)


def current_decision() -> Decision | None:
    """Inside a decorated view or function: the Decision of its limits (what
    ``request.throttle`` and the like hold), else None. With ``block=False`` a refusing
    Decision (``allowed`` False) tells the view it is over its limit."""
    return CURRENT.get()


#: exception classes of frameworks without a status attribute, by name (no imports)
_EXC_STATUS = {"Http404": 404, "PermissionDenied": 403, "SuspiciousOperation": 400,
               "BadRequest": 400, "ValidationError": 422, "RequestValidationError": 422}


def status_of(outcome: Any, failed: bool = False) -> int:
    """The HTTP status of what a view returned (a response's ``status_code``, Flask's
    ``(body, status)`` tuple; anything else: 200) or raised (an HTTP exception's
    ``status_code``/``code``, Django's ``Http404``/``PermissionDenied``; anything else:
    500). A plain function: 200 when it returns, 500 when it raises."""
    for attr in ("status_code", "code") if failed else ("status_code",):
        found = getattr(outcome, attr, None)
        if isinstance(found, int) and not isinstance(found, bool) and 100 <= found < 600:
            return found
    if failed:
        for cls in type(outcome).__mro__:
            if cls.__name__ in _EXC_STATUS:
                return _EXC_STATUS[cls.__name__]
        return 500
    if isinstance(outcome, tuple) and len(outcome) >= 2:
        found = outcome[1]
        if isinstance(found, int) and not isinstance(found, bool):
            return found
        status = getattr(found, "value", found)  # HTTPStatus
        if isinstance(status, int):
            return status
        if isinstance(status, str):  # Flask takes a status line: "404 NOT FOUND"
            code = status.strip()[:3]
            if code.isdigit() and code.isascii() and 100 <= int(code) < 600:
                return int(code)
    return 200


def settle(lim: Limiter, pending: list[Verdict], status: int) -> None:
    for verdict in pending:
        try:
            lim.engine.settle(verdict, status)
        except Exception as exc:  # a failing store never fails the request
            _log(verdict, exc)


async def asettle(lim: Limiter, pending: list[Verdict], status: int) -> None:
    for verdict in pending:
        try:
            await lim.engine.asettle(verdict, status)
        except Exception as exc:
            _log(verdict, exc)


def _log(verdict: Verdict, exc: BaseException) -> None:
    logger.error("throttlekit: settling the count_when of limit %r failed: %s: %s",
                 verdict.rule, type(exc).__name__, exc)
