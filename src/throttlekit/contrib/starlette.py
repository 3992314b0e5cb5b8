"""Starlette (and FastAPI) integration: a pure ASGI middleware for default, application
and per-endpoint limits.

::

    from starlette.applications import Starlette
    from throttlekit import Limiter
    from throttlekit.contrib.starlette import ThrottleMiddleware

    limiter = Limiter("redis://127.0.0.1:6379/0")

    @limiter.limit("10/minute")
    async def search(request): ...

    app = Starlette(routes=[Route("/search", search)])
    app.add_middleware(ThrottleMiddleware, limiter=limiter, default_limits="100/minute")

For each ``http`` request the middleware finds the route the app will use (the same
matching as Starlette's router, so routes of included routers and mounts count), then
checks the limiter's rules (as :class:`~throttlekit.ASGIMiddleware` does), the default and
application limits and the endpoint's decorated limits: a refusal is answered with the
same 429 (or 403) as the ASGI middleware, before the app does any work. Allowed responses
get the rate-limit headers of every limit that applied, including those a decorated
function or a ``limiter.depends`` dependency checked later (unless an outer throttlekit
middleware writes the one header set), and hold the rules' concurrency leases until the app
ends, however it ends. WebSocket handshakes get the rules as
:class:`~throttlekit.ASGIMiddleware` applies them. The Decision is in
``request.state.throttle``; decorated endpoints find the request through a context variable,
so they need no ``Request`` parameter.

Limits checked inside the app (a decorated endpoint or helper, a dependency) raise
:class:`RateLimited`, a Starlette ``HTTPException`` carrying the middleware's refusal
(``exc.denial``): Starlette's own handler answers it with that refusal, as does the handler
of :data:`EXCEPTION_HANDLERS` (which ``contrib.fastapi.Throttle`` installs). An app's own
handler for 429 (or for ``RateLimited``) still wins; where FastAPI's default handler would
answer (no ``Throttle``), ``contrib.fastapi`` lets the refusal answer instead
(``answer_with_refusal``, through :data:`BEFORE_REFUSAL`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

from starlette import requests as _requests
from starlette.exceptions import HTTPException
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import Host, Match, Mount

from .._adapters import Adapter, Found, register_adapter
from .._decorators import DENIED_KEY, HANDLED_KEY, aevaluate, record
from .._errors import ConfigError
from .._exchange import CHALLENGE_KEY, OWNER_KEY, Exchange, abegin, serve_asgi
from .._frameworkview import FRAMEWORK_FORMS, FrameworkView, view_of
from .._headers import header_pairs
from .._limitspec import Group, endpoint_name, group_of
from .._responses import Denial, encode_headers
from .._workers import ForkCheck, warn_memory_multiworker
from ..asgi import ASGIMiddleware, has_small_form, read_ahead
from ..wsgi import VERDICT_KEY
from ._common import Limits, denial, load_rules_file, parse_limits

if TYPE_CHECKING:
    import os

    from .._decision import Decision
    from .._limiter import Limiter
    from .._request import RequestView
    from .._rules import Verdict
    from .._typing import RatesLike
    from ..asgi import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ADAPTER", "BEFORE_REFUSAL", "EXCEPTION_HANDLERS", "MiddlewareOptions", "RateLimited",
           "StarletteAdapter", "ThrottleMiddleware", "current_request", "rate_limited",
           "send_denial"]

#: The ASGI request being served: ``(scope, native request or None)``; set by the
#: Starlette/FastAPI integration so decorated endpoints without a ``Request`` parameter
#: still find their request.
current_request: contextvars.ContextVar[tuple[MutableMapping[str, Any], Any] | None] = (
    contextvars.ContextVar("throttlekit.request", default=None)
)

#: scope key: the integration is serving this request (dependencies leave headers to it)
MIDDLEWARE_KEY = "throttlekit.middleware"
_SKIP_HEADERS = frozenset({"content-type", "content-length"})


_DETAIL = "Too Many Requests: rate limit exceeded."


class RateLimited(HTTPException):
    """A throttlekit refusal raised inside a Starlette/FastAPI app; ``verdict`` and
    ``decision`` say which limit refused and for how long, ``denial`` is the refusal to
    send (:meth:`response`).

    ``detail`` and ``headers`` are what a generic ``HTTPException`` handler reads: the
    refusal's rate-limit header fields (without ``Content-Type``/``Content-Length``, which
    belong to the body such a handler writes); with ``plain`` (Starlette's own handler
    answers, a ``PlainTextResponse`` of them) the refusal's body and ``Content-Type`` too,
    so that handler sends the refusal as it is.
    """

    def __init__(self, verdict: Verdict, headers: dict[str, str] | None = None, *,
                 denial: Denial | None = None, plain: bool = False) -> None:
        detail = _DETAIL
        status = 429
        if denial is not None:
            status = denial.status
            skip = _LENGTH if plain else _SKIP_HEADERS
            if headers is None:
                headers = {k: v for k, v in denial.headers if k.lower() not in skip}
            if plain:
                detail = denial.body.decode("utf-8", "replace")
        super().__init__(status, detail, headers)
        self.verdict = verdict
        self.decision: Decision | None = verdict.decision
        self.denial = denial

    def response(self) -> Response:
        """The refusal as a Starlette response (the ``headers`` when there is no
        ``denial``)."""
        d = self.denial
        if d is None:
            return Response(self.detail, self.status_code, headers=self.headers)
        response = Response(d.body, d.status)
        response.raw_headers = encode_headers(d.headers)
        return response


async def send_denial(request: Request, exc: Exception) -> Response:
    """The exception handler answering :class:`RateLimited` with its refusal, the same
    as the middleware's."""
    if isinstance(exc, RateLimited):
        return exc.response()
    raise exc  # pragma: no cover - registered for RateLimited only


#: ``Starlette(exception_handlers=EXCEPTION_HANDLERS)``: a refusal raised inside the app is
#: answered as the middleware answers it (needed when the app has its own handler for
#: ``HTTPException``; ``contrib.fastapi.Throttle`` installs it)
EXCEPTION_HANDLERS: dict[Any, Any] = {RateLimited: send_denial}
_LENGTH = frozenset({"content-length"})


def _starlette_answers(scope: MutableMapping[str, Any] | None, status: int) -> bool:
    """Whether Starlette's own ``HTTPException`` handler (a ``PlainTextResponse`` of
    ``detail`` and ``headers``) will answer a :class:`RateLimited` of ``status`` raised in
    ``scope``'s app, rather than one of the app's or FastAPI's."""
    handlers = scope.get("starlette.exception_handlers") if scope is not None else None
    try:
        by_class, by_status = handlers  # type: ignore[misc]
        if status in by_status:
            return False
        handler = next((by_class[c] for c in RateLimited.__mro__ if c in by_class), None)
    except (TypeError, ValueError):
        return False
    return getattr(handler, "__func__", None) is ExceptionMiddleware.http_exception


def _host(scope: MutableMapping[str, Any]) -> bytes | None:
    for name, value in header_pairs(scope.get("headers")):
        if name == b"host":
            return bytes(value)
    return None


def _accept(scope: MutableMapping[str, Any]) -> str | None:
    for name, value in header_pairs(scope.get("headers")):
        if name == b"accept":
            try:
                return bytes(value).decode("latin-1")
            except (TypeError, ValueError):
                continue
    return None


def rate_limited(lim: Limiter, verdict: Verdict, accept: str | None = None,
                 scope: MutableMapping[str, Any] | None = None) -> RateLimited:
    """The exception a refused verdict raises inside the app (``scope``: the request's,
    to know which handler answers it)."""
    d = denial(lim, verdict, accept)
    return RateLimited(verdict, denial=d, plain=_starlette_answers(scope, d.status))


class StarletteAdapter(Adapter):
    """The decorators in Starlette (and FastAPI): a ``Request``/``WebSocket`` among the
    first two arguments or the keyword arguments, else the request the middleware is
    serving; a refusal raises :class:`RateLimited`."""

    name = "starlette"
    priority = 20

    def find(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Found | None:
        for arg in args[:2]:
            if isinstance(arg, HTTPConnection):
                return (self, arg.scope, arg)
        if kwargs:
            for arg in kwargs.values():
                if isinstance(arg, HTTPConnection):
                    return (self, arg.scope, arg)
        current = current_request.get()
        if current is not None:
            return (self, current[0], current[1])
        return None

    def view(self, lim: Limiter, raw: MutableMapping[str, Any], native: Any) -> FrameworkView:
        return view_of(lim, raw, native, asgi=True)

    async def read_body(self, view: RequestView) -> None:
        """Give ``view`` the body of its Starlette request when no middleware read it
        ahead, through the request's own cache (``request.body()``), so the app still
        reads it; and a form (urlencoded, multipart) as the request's own
        ``request.form()`` parses it."""
        assert isinstance(view, FrameworkView)
        req = view.request
        if view.body is not None or view.form_failed or req is None:
            return  # (a readable form read before came from the same caches: read them again)
        text = view.headers.get("content-length")
        try:
            length = int(text) if text and text.strip() else 0
        except ValueError:
            return
        if not 0 < length <= view.max_form_bytes:
            return
        with contextlib.suppress(Exception):  # consumed: the framework parsed the form
            view.body = bytes(await req.body())
        ctype = view.headers.get("content-type") or ""
        if ctype.partition(";")[0].strip().lower() in FRAMEWORK_FORMS and (
            view.body is None or getattr(_requests, "parse_options_header", None)
        ):  # Starlette's own parser (python-multipart), cached on the request: what the
            # endpoint will see
            try:
                form = await req.form()
            except Exception:
                form = None
            view.use_form(form)

    def keep(self, raw: MutableMapping[str, Any], native: Any, decision: Decision | None) -> None:
        state = raw.get("state")
        if state is None:
            raw["state"] = state = {}
        if isinstance(state, MutableMapping):
            state["throttle"] = decision

    def refuse(self, lim: Limiter, found: Found, verdict: Verdict) -> Any:
        scope = found[1]
        for prepare in BEFORE_REFUSAL:
            prepare(scope)
        raise rate_limited(lim, verdict, _accept(scope), scope)


#: called with the scope of a request an endpoint limit refuses, before the adapter raises
#: :class:`RateLimited` in it, whichever way the request was found (a ``Request``
#: argument, FastAPI's hidden parameter, the served scope): ``contrib.fastapi`` lets the
#: refusal answer where FastAPI's default handler would
BEFORE_REFUSAL: list[Callable[[MutableMapping[str, Any]], None]] = []

ADAPTER = StarletteAdapter()
register_adapter(ADAPTER)


async def read_form(view: FrameworkView, scope: Scope) -> None:
    """Give ``view`` the form of its pre-read body as Starlette's own parser
    (python-multipart) reads it: exactly the fields the endpoint's ``await request.form()``
    (FastAPI's ``Form()`` parameters) will see. JSON bodies are left to the view's reader
    (``json.loads``, as ``request.json()``); without python-multipart, so are forms."""
    body = view.body
    if body is None or getattr(_requests, "parse_options_header", None) is None:
        return  # (None: python-multipart, which Starlette's form parsing needs, is missing)
    ctype = view.headers.get("content-type") or ""
    if ctype.partition(";")[0].strip().lower() not in FRAMEWORK_FORMS:
        return
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, receive).form()
    except Exception:  # the endpoint's own parsing fails the same way
        view.use_form(None)
        return
    try:
        view.use_form(form)
    finally:
        await form.close()


class MiddlewareOptions(TypedDict, total=False):
    """The keyword options of :class:`ThrottleMiddleware` (and of FastAPI's ``Throttle``)."""

    default_limits: RatesLike | None
    application_limits: RatesLike | None
    rules: bool
    rules_file: str | os.PathLike[str] | None


def find_endpoint(routes: Sequence[Any], scope: Scope) -> tuple[Any, Any]:
    """``(endpoint, route)`` of the route Starlette's router will pick for ``scope``
    (descending into mounts), or ``(None, None)``."""
    for route in routes:
        try:
            match, child = route.matches(scope)
        except Exception:
            continue
        if match is not Match.FULL:
            continue
        candidates = getattr(route, "effective_candidates", None)
        if candidates is not None:  # FastAPI >= 0.120: an included router, routes built lazily
            try:
                found = find_endpoint(candidates(), scope)
            except Exception:
                found = (None, None)
            if found[1] is not None:
                return found
            continue
        if isinstance(route, Mount):
            inner = getattr(route.app, "routes", None) or getattr(
                getattr(route.app, "router", None), "routes", None
            )
            if inner:
                sub = dict(scope)
                sub.update(child)
                found = find_endpoint(inner, sub)
                if found[0] is not None:
                    return found
        return child.get("endpoint"), route
    return None, None


class ThrottleMiddleware:
    """Rules, default, application and per-endpoint limits for a Starlette or FastAPI app.

    Args:
        app: the ASGI app (``app.add_middleware(ThrottleMiddleware, limiter=...)``).
        limiter: the :class:`~throttlekit.Limiter` (its rules run first, as in
            :class:`~throttlekit.ASGIMiddleware`).
        default_limits: limits for every route, each route its own counter.
        application_limits: limits for the whole app, one counter per client.
        rules: also run the limiter's rules (default True; False when an
            ``ASGIMiddleware`` already does).
        rules_file: a rules file to load into the limiter (``limiter.load_rules``).
    """

    def __init__(
        self,
        app: ASGIApp,
        limiter: Limiter,
        *,
        default_limits: RatesLike | None = None,
        application_limits: RatesLike | None = None,
        rules: bool = True,
        rules_file: str | os.PathLike[str] | None = None,
    ) -> None:
        from .._limiter import Limiter

        if not isinstance(limiter, Limiter):
            raise ConfigError(f"limiter must be a throttlekit.Limiter, got {limiter!r}")
        load_rules_file(limiter, rules_file)
        self.app = app
        self.limiter = limiter
        self.limits = Limits(parse_limits(limiter, default_limits, "default_limits"),
                             parse_limits(limiter, application_limits, "application_limits"))
        self.rules = bool(rules)
        self._cache: dict[int, tuple[Any, Group | None, tuple[Any, ...]]] = {}
        self._paths: dict[Any, tuple[Group | None, tuple[Any, ...]]] = {}
        self._hosted: tuple[Any, bool] = (None, False)
        self._fork = ForkCheck()
        #: WebSocket scopes: the limiter's rules, as ASGIMiddleware runs them
        self._sockets = ASGIMiddleware(app, limiter)
        warn_memory_multiworker(limiter)

    def _routes(self, scope: Scope) -> Sequence[Any] | None:
        app = scope.get("app") or self.app
        router = getattr(app, "router", app)
        routes = getattr(router, "routes", None)
        return routes if isinstance(routes, list) else None

    def _has_hosts(self, routes: Sequence[Any]) -> bool:
        """Whether a route table routes by ``Host`` (then the host picks the route too);
        worked out once per table."""
        table = (id(routes), len(routes))
        if self._hosted[0] != table:
            self._hosted = (table, any(isinstance(r, Host) for r in routes))
        return self._hosted[1]

    def _entries(self, scope: Scope) -> tuple[Group | None, tuple[Any, ...]]:
        routes = self._routes(scope)
        # Matching costs a regex per route: remember the answer per (method, path), as
        # long as the route table is unchanged (bounded: many distinct paths just miss).
        ckey = (scope.get("method"), scope.get("path"), scope.get("root_path"),
                id(routes), len(routes) if routes else 0,
                _host(scope) if routes and self._has_hosts(routes) else None)
        hit = self._paths.get(ckey)
        if hit is not None:
            return hit
        found = self._lookup(routes, scope)
        if len(self._paths) >= 4096:
            self._paths.clear()
        self._paths[ckey] = found
        return found

    def _lookup(self, routes: Sequence[Any] | None, scope: Scope
                ) -> tuple[Group | None, tuple[Any, ...]]:
        endpoint, route = find_endpoint(routes, scope) if routes else (None, None)
        if route is None:
            return None, self.limits.entries(None, None, False)
        cached = self._cache.get(id(route))
        if cached is not None and cached[0] is route:
            return cached[1], cached[2]
        group = group_of(endpoint)
        own = group is not None and group.wrapper is endpoint
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            path = getattr(route, "host", None)  # a Host route
        if endpoint is not None:
            name = endpoint_name(endpoint, path if isinstance(path, str) else None)
        else:
            name = path if isinstance(path, str) else repr(route)
        entries = self.limits.entries(name, group, own)
        found = (group if own else None, entries)
        self._cache[id(route)] = (route, *found)
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lim = self.limiter
        kind = scope["type"]
        if kind != "http" or not lim.enabled:
            if kind == "websocket" and self.rules and lim.enabled:
                await self._sockets(scope, receive, send)  # the rules, as ASGIMiddleware's
            else:
                await self.app(scope, receive, send)
            return
        if self._fork.pid is not None:
            self._fork(lim)
        scope[MIDDLEWARE_KEY] = True
        outer = scope.get(OWNER_KEY)
        if outer is None:
            scope[OWNER_KEY] = lim
        view = view_of(lim, scope, None, asgi=True)
        try:
            group, entries = self._entries(scope)
            if (
                view.body is None
                and ((self.rules and lim.engine.rules.needs_form)
                     or any(s.uses_form for _, s in entries))
                and has_small_form(scope, view.max_form_bytes)
            ):  # a rule reads the form: read the body first, and replay it to the app
                view.body, receive = await read_ahead(receive, view.max_form_bytes)
                await read_form(view, scope)
            ex = None
            if self.rules and outer is not lim:  # (an outer entry of this limiter ran them)
                verdict = await lim.aevaluate(view)
                mark = scope.get(CHALLENGE_KEY)
                if mark is not None and mark.reads_form and view.body is None and has_small_form(
                    scope, view.max_form_bytes
                ):  # the challenge step answers this post itself: it reads its form
                    view.body, receive = await read_ahead(receive, view.max_form_bytes)
                    await read_form(view, scope)
                verdict, ex = await abegin(lim, verdict)
                scope[VERDICT_KEY] = verdict
                if not verdict.allowed:
                    await self._refuse(lim, verdict, scope, send)
                    return
                if verdict.policies:
                    record(ADAPTER, scope, None, verdict)
            if group is not None:
                scope[HANDLED_KEY] = group
            if ex is None:
                await self._serve(lim, scope, receive, send, view, entries, outer, None)
                return
            async with ex:  # the lease and count_when, whatever ends the request
                await self._serve(lim, scope, receive, send, view, entries, outer, ex)
        finally:
            view.detach()  # the response is over: no reference cycle

    async def _serve(self, lim: Limiter, scope: Scope, receive: Receive, send: Send,
                     view: RequestView, entries: tuple[Any, ...], outer: Any,
                     ex: Exchange | None) -> None:
        """The endpoint's limits, then the app (with the header set when this is the
        outermost entry)."""
        if entries:
            limited = await aevaluate(lim, view, entries)
            if limited is not None:
                record(ADAPTER, scope, None, limited)
                if not limited.allowed:
                    await self._refuse(lim, limited, scope, send, ex)
                    return
        own = None
        if outer is None and lim.headers_on_allowed and lim.header_style != "none":
            own = ()  # the policies are all under POLICIES_KEY (record)
        token = current_request.set((scope, None))
        try:
            await serve_asgi(self.app, scope, receive, send, ex, own, lim.header_style)
        finally:
            current_request.reset(token)

    async def _refuse(self, lim: Limiter, verdict: Verdict, scope: Scope, send: Send,
                      ex: Exchange | None = None) -> None:
        accept = view_of(lim, scope, None, asgi=True).headers.get("accept")
        d = denial(lim, verdict, accept)
        scope[DENIED_KEY] = True
        if ex is not None:
            ex.respond(d.status, d.headers)
        await send({"type": "http.response.start", "status": d.status,
                    "headers": encode_headers(d.headers)})
        await send({"type": "http.response.body", "body": d.body})
