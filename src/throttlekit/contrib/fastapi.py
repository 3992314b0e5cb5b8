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

import inspect
from collections.abc import Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from fastapi.exception_handlers import http_exception_handler
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from .._adapters import register_adapter
from .._decorators import (
    DENIED_KEY,
    HIDDEN_REQUEST,
    aevaluate,
    current_decision,
    exempt,
    record,
)
from .._errors import ConfigError
from .._exchange import OWNER_KEY
from .._frameworkview import view_of
from .._limitspec import LimitSpec, endpoint_name, group_of
from .._responses import rate_limit_headers
from ._common import load_rules_file
from .starlette import (
    BEFORE_REFUSAL,
    EXCEPTION_HANDLERS,
    MIDDLEWARE_KEY,
    MiddlewareOptions,
    RateLimited,
    StarletteAdapter,
    ThrottleMiddleware,
    rate_limited,
    send_denial,
)

if TYPE_CHECKING:
    from fastapi import FastAPI
    from typing_extensions import Unpack

    from .._decision import Decision
    from .._limiter import Limiter
    from .._rules import Verdict

__all__ = ["ADAPTER", "RATE_LIMITED_RESPONSE", "FastAPIAdapter", "RateLimited", "Throttle",
           "decision", "exempt_doc_routes", "hook_openapi", "rate_limited"]


def decision() -> Decision | None:
    """The Decision of the decorated limits of the endpoint being served (also
    ``request.state.throttle``), for an endpoint without a ``Request`` parameter; with
    ``block=False``, ``allowed`` False says the caller is over the limit."""
    return current_decision()

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
        exempt_docs: exempt FastAPI's own pages (``openapi_url``, ``docs_url``,
            ``redoc_url`` and the Swagger UI OAuth2 redirect) from default and application
            limits, as ``@limiter.exempt`` would (default True: a developer browsing
            ``/docs`` should not spend the API's quota). The limiter's rules still apply.
        options: those of :class:`~throttlekit.contrib.starlette.ThrottleMiddleware`
            (``default_limits`` apply to the routes of included routers too).
    """

    def __init__(self, app: FastAPI, limiter: Limiter, *, exempt_docs: bool = True,
                 **options: Unpack[MiddlewareOptions]) -> None:
        self.limiter = limiter
        if exempt_docs:
            exempt_doc_routes(app, limiter)
        # now, not when the app builds its middleware: an unknown option, a bad rules file
        inspect.signature(ThrottleMiddleware).bind(app, limiter, **options)
        load_rules_file(limiter, options.pop("rules_file", None))
        app.add_middleware(ThrottleMiddleware, limiter=limiter, **options)
        for exc_class, handler in EXCEPTION_HANDLERS.items():
            # a refusal raised inside the app (a dependency, a decorated endpoint) is
            # answered as the middleware answers one; an app's own handler is kept
            if exc_class not in app.exception_handlers:
                app.add_exception_handler(exc_class, handler)
        every = bool(options.get("default_limits") or options.get("application_limits"))
        original = app.openapi

        def openapi() -> dict[str, Any]:
            if app.openapi_schema is None:
                document_429(app, every_route=every)
            return original()

        app.openapi = openapi  # type: ignore[method-assign]


def exempt_doc_routes(app: FastAPI, limiter: Limiter) -> None:
    """Mark the endpoints of FastAPI's documentation routes exempt from default and
    application limits (the routes ``FastAPI.setup`` added for ``openapi_url``,
    ``docs_url``, ``redoc_url`` and ``swagger_ui_oauth2_redirect_url``)."""
    paths = {app.openapi_url, app.docs_url, app.redoc_url}
    if app.docs_url:
        paths.add(app.swagger_ui_oauth2_redirect_url)
    paths.discard(None)
    for route in app.router.routes:
        endpoint = getattr(route, "endpoint", None)
        if getattr(route, "path", None) in paths and callable(endpoint):
            exempt(limiter, endpoint)


# -- the decorators and dependencies in FastAPI -------------------------------------------------


class FastAPIAdapter(StarletteAdapter):
    """The decorators in FastAPI: Starlette's requests (the Starlette adapter finds them),
    plus the hidden ``Request`` parameter that lets an endpoint without one find its
    request without the middleware, the 429 in OpenAPI, and ``limiter.depends``."""

    name = "fastapi"
    priority = 25
    claims = False

    def signature(self, fn: Callable[..., Any], sig: inspect.Signature | None
                  ) -> inspect.Signature | None:
        hook_openapi()
        return hidden_request_signature(sig)

    def dependency(self, lim: Limiter, spec: LimitSpec) -> Callable[..., Any]:
        return make_dependency(lim, spec)


def answer_with_refusal(scope: MutableMapping[str, Any]) -> None:
    """Where FastAPI's default ``HTTPException`` handler would answer a :class:`RateLimited`
    raised in this request's app (its JSON ``{"detail": ...}``), let the refusal answer
    instead, as under ``Throttle``: ``send_denial`` joins the handlers of the app's
    exception middleware (in the scope) for ``RateLimited``. An app's own handler for 429,
    ``RateLimited`` or ``HTTPException`` still answers."""
    handlers = scope.get("starlette.exception_handlers")
    try:
        by_class, by_status = handlers  # type: ignore[misc]
        if 429 in by_status:
            return
        handler = next((by_class[c] for c in RateLimited.__mro__ if c in by_class), None)
        if handler is http_exception_handler:
            by_class[RateLimited] = send_denial
    except (TypeError, ValueError, AttributeError):
        return


def hidden_request_signature(sig: inspect.Signature | None) -> inspect.Signature | None:
    """The signature of a function without a request parameter plus an optional
    keyword-only ``Request`` one (``HIDDEN_REQUEST``), so that as a FastAPI endpoint the
    wrapper finds the request and answers a native 429 even without the middleware; None
    when nothing is to add. Harmless to plain calls: its default is None, and the wrapper
    pops it."""
    if sig is None:
        return None
    params = list(sig.parameters.values())
    for p in params:
        if p.name == HIDDEN_REQUEST:
            return None
        ann = p.annotation
        if isinstance(ann, str):
            if ann.rpartition(".")[2] in ("Request", "WebSocket", "HTTPConnection"):
                return None
        elif isinstance(ann, type) and issubclass(ann, HTTPConnection):
            return None
    extra = inspect.Parameter(HIDDEN_REQUEST, inspect.Parameter.KEYWORD_ONLY, default=None,
                              annotation=Request)
    if params and params[-1].kind is inspect.Parameter.VAR_KEYWORD:
        params.insert(len(params) - 1, extra)
    else:
        params.append(extra)
    return sig.replace(parameters=params)


def route_name(scope: Mapping[str, Any]) -> str:
    """The counter name of the endpoint serving ``scope``: its qualified name, else the
    route template, else the path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    endpoint = scope.get("endpoint")
    if endpoint is not None:
        return endpoint_name(endpoint, path if isinstance(path, str) else None)
    if isinstance(path, str):
        return path
    return str(scope.get("path", "/"))


def make_dependency(lim: Limiter, spec: LimitSpec) -> Callable[..., Any]:
    """``Depends(limiter.depends("10/minute"))``: a FastAPI dependency applying ``spec``
    to the route it is used on (its counter: the route's endpoint, or ``scope``). The
    dependency's value is the Decision (with ``block=False``, a refusing one too)."""
    if spec.count_when is not None:
        raise ConfigError("depends(): count_when needs the endpoint's response, which a "
                          "dependency never sees; decorate the endpoint with "
                          "@limiter.limit(..., count_when=...) instead")
    hook_openapi()

    async def throttlekit_limit(request: Any, response: Any) -> Decision | None:
        if not lim.enabled:
            return None
        scope = request.scope
        name = spec.scope or route_name(scope)
        view = view_of(lim, scope, request, asgi=True)
        if spec.uses_form:
            await ADAPTER.read_body(view)
        verdict = await aevaluate(lim, view, ((name, spec),))
        if verdict is None:
            return None
        return _answer_dependency(lim, scope, request, response, verdict)

    # FastAPI reads the parameters' types from the signature (the annotations of this
    # module are strings it could not resolve)
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    throttlekit_limit.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("request", kind, annotation=Request),
         inspect.Parameter("response", kind, annotation=Response)],
        return_annotation=Any,
    )
    throttlekit_limit.__throttlekit_dependency__ = spec  # type: ignore[attr-defined]
    return throttlekit_limit


def _answer_dependency(lim: Limiter, scope: MutableMapping[str, Any], request: Any,
                       response: Any, verdict: Verdict) -> Decision | None:
    record(ADAPTER, scope, request, verdict)
    if not verdict.allowed:
        scope[DENIED_KEY] = True
        answer_with_refusal(scope)
        raise rate_limited(lim, verdict, request.headers.get("accept"), scope)
    if (
        lim.headers_on_allowed and verdict.policies and lim.header_style != "none"
        and not scope.get(MIDDLEWARE_KEY) and scope.get(OWNER_KEY) is None
    ):
        # without a middleware, FastAPI merges these into the endpoint's response
        for hname, value in rate_limit_headers(verdict.policies, lim.header_style):
            response.headers[hname] = value
    return verdict.decision


ADAPTER = FastAPIAdapter()
register_adapter(ADAPTER)
# every endpoint limit refused in a FastAPI app, whichever adapter found its request (the
# Starlette one finds an endpoint's own ``Request`` parameter)
if answer_with_refusal not in BEFORE_REFUSAL:
    BEFORE_REFUSAL.append(answer_with_refusal)
