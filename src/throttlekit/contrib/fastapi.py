"""FastAPI integration: the Starlette middleware, dependencies, and the 429 in OpenAPI.

::

    from fastapi import Depends, FastAPI
    from throttlekit import Limiter
    from throttlekit.contrib.fastapi import Throttle

    limiter = Limiter("redis://127.0.0.1:6379/0")
    app = FastAPI()
    Throttle(app, limiter, default_limits="100/minute")

    @app.get("/items/{item_id}")
    @limiter.limit("10/minute")
    async def read_item(item_id: int) -> dict[str, int]: ...

    @app.get("/search", dependencies=[Depends(limiter.depends("5/minute"))])
    async def search(q: str) -> list[str]: ...

:class:`Throttle` adds :class:`~throttlekit.contrib.starlette.ThrottleMiddleware` and
documents the ``429`` response (with ``Retry-After`` and the rate-limit headers) on every
limited route of the OpenAPI schema. Decorated endpoints keep their signature, so path,
query and body parameters and dependency injection work as before. A dependency made by
``limiter.depends`` returns the Decision, so ``decision = Depends(limiter.depends(...))``
gives it to the endpoint; on a router
(``APIRouter(dependencies=[Depends(limiter.depends("5/minute"))])``) it limits each route
of the router with its own counter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._decorators import group_of
from ._common import load_rules_file
from .starlette import RateLimited, ThrottleMiddleware, rate_limited

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .._limiter import Limiter

__all__ = ["RATE_LIMITED_RESPONSE", "RateLimited", "Throttle", "hook_openapi", "rate_limited"]

#: The OpenAPI description of a throttlekit 429, for ``responses=`` of a route.
RATE_LIMITED_RESPONSE: dict[int | str, dict[str, Any]] = {
    429: {
        "description": "Too Many Requests: a rate limit refused the request.",
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "integer"},
            },
            "RateLimit-Policy": {
                "description": "The limits that applied (draft-ietf-httpapi-ratelimit-headers).",
                "schema": {"type": "string"},
            },
            "RateLimit": {
                "description": "What is left of each limit and when it resets.",
                "schema": {"type": "string"},
            },
        },
    }
}


def _uses_throttlekit(dependant: Any) -> bool:
    for dep in getattr(dependant, "dependencies", ()):
        if hasattr(getattr(dep, "call", None), "__throttlekit_dependency__"):
            return True
        if _uses_throttlekit(dep):
            return True
    return False


def is_limited(route: Any) -> bool:
    """Whether a route has throttlekit limits of its own (decorator or dependency)."""
    group = group_of(getattr(route, "endpoint", None))
    if group is not None and group.entries:
        return True
    return _uses_throttlekit(getattr(route, "dependant", None))


def document_429(app: FastAPI, *, every_route: bool = False) -> None:
    """Add the 429 response to the OpenAPI operations of limited routes (of every route
    with ``every_route``, e.g. when default limits apply)."""
    for route in _api_routes(app.routes):
        if every_route or is_limited(route):
            responses = route.responses
            if 429 not in responses and "429" not in responses:
                responses[429] = RATE_LIMITED_RESPONSE[429]


def hook_openapi() -> None:
    """Make ``FastAPI.openapi`` document the 429 of limited routes, also on apps without
    :class:`Throttle` (done once, when a limit is first put on a FastAPI endpoint or a
    ``limiter.depends`` dependency is made)."""
    from fastapi import FastAPI

    original = FastAPI.openapi
    if getattr(original, "__throttlekit__", False):
        return

    def openapi(self: FastAPI) -> dict[str, Any]:
        if self.openapi_schema is None:
            document_429(self)
        return original(self)

    openapi.__throttlekit__ = True  # type: ignore[attr-defined]
    openapi.__doc__ = original.__doc__
    FastAPI.openapi = openapi  # type: ignore[method-assign]


def _api_routes(routes: Any) -> Any:
    """Every API route, including those of included routers (and, on FastAPI versions
    that build them lazily, their effective copies)."""
    from fastapi.routing import APIRoute

    for route in routes:
        if isinstance(route, APIRoute) or (
            hasattr(route, "original_route") and isinstance(route.responses, dict)
            and hasattr(route, "dependant")
        ):
            yield route
            continue
        original = getattr(route, "original_router", None)
        if original is not None:
            yield from _api_routes(original.routes)
            candidates = getattr(route, "effective_candidates", None)
            if candidates is not None:
                yield from _api_routes(candidates())


class Throttle:
    """Rate limits for a FastAPI app: adds the middleware (rules, default, application and
    per-endpoint limits) and the 429 to the OpenAPI schema.

    Args:
        app: the FastAPI app.
        limiter: the :class:`~throttlekit.Limiter`.
        default_limits: limits for every route (routers included), each its own counter.
        application_limits: limits for the whole app, one counter per client.
        rules: also run the limiter's rules in the middleware (default True).
        rules_file: a rules file to load into the limiter (``limiter.load_rules``).
    """

    def __init__(
        self,
        app: FastAPI,
        limiter: Limiter,
        *,
        default_limits: Any = None,
        application_limits: Any = None,
        rules: bool = True,
        rules_file: Any = None,
    ) -> None:
        self.limiter = limiter
        load_rules_file(limiter, rules_file)  # now: a bad file fails at setup
        app.add_middleware(
            ThrottleMiddleware,
            limiter=limiter,
            default_limits=default_limits,
            application_limits=application_limits,
            rules=rules,
        )
        every = bool(default_limits or application_limits)
        original = app.openapi

        def openapi() -> dict[str, Any]:
            if app.openapi_schema is None:
                document_429(app, every_route=every)
            return original()

        app.openapi = openapi  # type: ignore[method-assign]
