"""Flask integration: default, application, blueprint and per-view limits.

::

    from flask import Flask
    from throttlekit.contrib.flask import Throttle

    app = Flask(__name__)
    app.config["THROTTLEKIT_STORAGE_URL"] = "redis://127.0.0.1:6379/0"
    app.config["THROTTLEKIT_DEFAULT_LIMITS"] = "100/minute"
    throttle = Throttle(app)

    @app.get("/search")
    @throttle.limit("10/minute")
    def search(): ...

``Throttle(app, limiter)`` uses your :class:`~throttlekit.Limiter` instead of building one
from ``app.config`` (then ``@limiter.limit`` works the same). The limiter's rules
(``limiter.throttle``, lists, bans, ``THROTTLEKIT_RULES_FILE``) run around the app:
``Throttle`` wraps ``app.wsgi_app`` in a :class:`~throttlekit.WSGIMiddleware` (``rules=False``
not to; inside a werkzeug ``ProxyFix`` already there, so that the rules see the client's
address as the app does). The limits of a request are checked in a ``before_request``
hook, all in one storage call; a breach raises :class:`RateLimited`, a werkzeug
``TooManyRequests`` (so ``@app.errorhandler(429)`` sees it) whose response carries the
middleware's headers. The Decision is in ``g.throttle``.

Settings (``app.config``): ``THROTTLEKIT_STORAGE_URL``, ``THROTTLEKIT_DEFAULT_LIMITS``,
``THROTTLEKIT_APPLICATION_LIMITS``, ``THROTTLEKIT_ENABLED``, ``THROTTLEKIT_STRATEGY``,
``THROTTLEKIT_HEADER_STYLE``, ``THROTTLEKIT_HEADERS_ON_ALLOWED``,
``THROTTLEKIT_TRUSTED_PROXIES``, ``THROTTLEKIT_IPV6_PREFIX``,
``THROTTLEKIT_ON_STORAGE_ERROR``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Blueprint, Flask, after_this_request, current_app, g, has_request_context, request
from werkzeug.exceptions import TooManyRequests
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Request as WerkzeugRequest
from werkzeug.wrappers import Response

from .._adapters import Adapter, Found, register_adapter
from .._decorators import DENIED_KEY, HANDLED_KEY, POLICIES_KEY, decorate, evaluate, exempt, record
from .._errors import ConfigError
from .._exchange import OWNER_KEY
from .._frameworkview import FrameworkView, detach_view, framework_body, user_id_of, view_of
from .._limitspec import Group, endpoint_name, group_of, make_spec
from .._responder import status_line
from .._responses import rate_limit_headers
from .._workers import ForkCheck, warn_memory_multiworker
from ..wsgi import WSGIMiddleware
from ._common import Limits, denial, limiter_from, parse_limits

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .._decision import Decision
    from .._limiter import Limiter
    from .._limitspec import LimitOptions
    from .._rules import Verdict
    from .._typing import RatesLike

__all__ = ["ADAPTER", "FlaskAdapter", "RateLimited", "Throttle"]

#: a view, or a Blueprint (a limit for each of its routes), handed back as it was given
F = TypeVar("F", bound="Callable[..., Any] | Blueprint")
_EXT = "throttlekit"
_HOOKED = "throttlekit.headers_hook"
#: environ key: the rate-limit headers of this request's 429 (put back on a response an
#: ``errorhandler(429)`` made)
_DENIAL_HEADERS = "throttlekit.denial_headers"
_BODY_HEADERS = frozenset({"content-type", "content-length"})


class RateLimited(TooManyRequests):
    """The 429 of a throttlekit limit. ``decision`` and ``verdict`` say which limit and
    for how long; ``response`` is the answer sent unless an error handler replaces it."""

    def __init__(self, verdict: Verdict, response: Response) -> None:
        super().__init__(response=response)
        self.verdict = verdict
        self.decision: Decision | None = verdict.decision


def rate_limited(lim: Limiter, verdict: Verdict) -> RateLimited:
    """The exception a refused verdict raises in a Flask request."""
    d = denial(lim, verdict, request.headers.get("Accept"))
    environ = request.environ
    environ[_DENIAL_HEADERS] = [(k, v) for k, v in d.headers if k.lower() not in _BODY_HEADERS]
    if _EXT not in current_app.extensions and not environ.get(_HOOKED):
        environ[_HOOKED] = True  # a decorated view without a Throttle: put them back here

        @after_this_request
        def add(response: Response) -> Response:
            return _add_headers(lim, response)

    # the status line as a string: werkzeug would write "429 TOO MANY REQUESTS"
    return RateLimited(verdict, Response(d.body, status=status_line(d.status),
                                         headers=d.headers))


class FlaskView(FrameworkView):
    """The request view of a Flask request: its form as werkzeug's ``request.form``
    parses it, over the body werkzeug caches (the view still reads it)."""

    __slots__ = ()

    def _read_form(self) -> Mapping[str, str]:
        req = self.request
        if req is not None and self.is_wsgi and isinstance(req, WerkzeugRequest):
            return self._framework_form(req, req.mimetype, "form", "form",
                                        lambda: req.get_data(cache=True))
        return super()._read_form()

    def framework_user(self) -> Any:
        """flask_login's ``current_user`` when authenticated (and flask_login is in use),
        else ``g.user`` (its ``get_id()``, ``id`` or the value itself)."""
        if "flask_login" in sys.modules and has_request_context():
            user = getattr(sys.modules["flask_login"], "current_user", None)
            if user is not None and getattr(user, "is_authenticated", False):
                return user_id_of(user)
        return user_id_of(g.get("user")) if has_request_context() else None

    def _read_body(self) -> bytes | None:
        # werkzeug holds the stream once something touched ``request.stream``: read
        # through it, so that ``request.form`` still sees the whole body
        req = self.request
        if (req is not None and self.is_wsgi and isinstance(req, WerkzeugRequest)
                and "stream" in req.__dict__):
            return framework_body(self, lambda: req.get_data(cache=True))
        return super()._read_body()


class FlaskAdapter(Adapter):
    """The decorators in Flask: the request of the current request context; a refusal
    raises :class:`RateLimited`; a view served without a :class:`Throttle` gets its
    rate-limit headers from an ``after_this_request`` hook."""

    name = "flask"
    priority = 30

    def find(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Found | None:
        if has_request_context():
            return (self, request.environ, request)
        return None

    def view(self, lim: Limiter, raw: MutableMapping[str, Any], native: Any) -> FrameworkView:
        return view_of(lim, raw, native, FlaskView)

    def keep(self, raw: MutableMapping[str, Any], native: Any, decision: Decision | None) -> None:
        g.throttle = decision

    def allowed(self, lim: Limiter, found: Found, verdict: Verdict) -> None:
        headers_after_this_request(lim)

    def refuse(self, lim: Limiter, found: Found, verdict: Verdict) -> Any:
        raise rate_limited(lim, verdict)


ADAPTER = FlaskAdapter()
register_adapter(ADAPTER)


def _add_headers(lim: Limiter, response: Response) -> Response:
    environ = request.environ
    if environ.get(DENIED_KEY):
        # the 429 may come from an errorhandler(429) that knows nothing of the headers
        headers = response.headers
        for name, value in environ.get(_DENIAL_HEADERS, ()):
            if name not in headers:
                headers[name] = value
        return response
    if environ.get(OWNER_KEY) is not None:
        return response  # a WSGIMiddleware around the app writes the one header set
    policies = environ.get(POLICIES_KEY)
    if policies and lim.headers_on_allowed and lim.header_style != "none":
        for name, value in rate_limit_headers(policies, lim.header_style):
            response.headers[name] = value
    return response


def headers_after_this_request(lim: Limiter) -> None:
    """A decorated view served without a Throttle: add the rate-limit headers itself."""
    if _EXT in current_app.extensions or not lim.headers_on_allowed:
        return
    environ = request.environ
    if lim.header_style == "none" or environ.get(_HOOKED):
        return
    environ[_HOOKED] = True

    @after_this_request
    def add(response: Response) -> Response:
        return _add_headers(lim, response)


class Throttle:
    """Rate limits for a Flask app (or several, through :meth:`init_app`).

    Without a ``limiter``, each :meth:`init_app` builds one from that app's config, which
    the Throttle then uses (an app factory called per test gets its own settings and fresh
    counts); apps alive at once share the Throttle's newest limiter, so give them a
    Throttle each (or one ``limiter``) to keep them apart.

    Args:
        app: the app (or call :meth:`init_app` later).
        limiter: the :class:`~throttlekit.Limiter` to use; default: one built from
            ``app.config`` at :meth:`init_app`.
        default_limits: limits for every route, each route its own counter (a rate string,
            or a list: one limit each); default: ``THROTTLEKIT_DEFAULT_LIMITS``.
        application_limits: limits counted once for the whole app (all routes share a
            counter per client); default: ``THROTTLEKIT_APPLICATION_LIMITS``.
        rules: run the limiter's rules (throttles, lists, bans, a rules file) around the
            app: ``app.wsgi_app`` is wrapped in a :class:`~throttlekit.WSGIMiddleware`
            unless one of this limiter is there already. ``False`` when you wrap it
            yourself further out.
    """

    def __init__(
        self,
        app: Flask | None = None,
        limiter: Limiter | None = None,
        *,
        default_limits: RatesLike | None = None,
        application_limits: RatesLike | None = None,
        rules: bool = True,
    ) -> None:
        if not isinstance(rules, bool):
            raise ConfigError(f"Throttle: rules must be True or False, got {rules!r}")
        self._rules = rules
        self._limiter_obj = limiter
        self._given = limiter  # (None: each init_app builds one from its app's config)
        self._default_arg = default_limits
        self._application_arg = application_limits
        self._limits = Limits((), ())
        self._cache: dict[str | None, tuple[Group | None, tuple[Any, ...]]] = {}
        self._fork = ForkCheck()
        if app is not None:
            self.init_app(app)

    @property
    def limiter(self) -> Limiter:
        """The limiter (built from ``app.config`` by :meth:`init_app` if not given)."""
        lim = self._limiter_obj
        if lim is None:
            raise RuntimeError("Throttle has no limiter yet: call throttle.init_app(app)")
        return lim

    def init_app(self, app: Flask) -> None:
        """Read ``app.config`` and install the hooks."""
        options = {k[12:]: v for k, v in app.config.items() if k.startswith("THROTTLEKIT_")}
        # a limiter given to the Throttle serves every app; else each init_app builds its
        # own from its app's config (an app factory: the newest app's settings and counts)
        self._limiter_obj = lim = limiter_from(options, self._given)
        defaults = self._default_arg
        if defaults is None:
            defaults = options.get("DEFAULT_LIMITS")
        application = self._application_arg
        if application is None:
            application = options.get("APPLICATION_LIMITS")
        self._limits = Limits(parse_limits(lim, defaults, "default_limits"),
                              parse_limits(lim, application, "application_limits"))
        self._cache.clear()
        app.extensions[_EXT] = self
        app.before_request(self._before)
        app.after_request(self._after)
        app.teardown_request(self._teardown)
        wrapped = _wrapped(app.wsgi_app)
        if self._rules and not any(
            isinstance(w, WSGIMiddleware) and w.limiter is lim for w in wrapped
        ):
            fixes = [w for w in wrapped if isinstance(w, ProxyFix)]
            if fixes:  # inside the innermost: the rules see the client's address, as the app
                fixes[-1].app = WSGIMiddleware(fixes[-1].app, lim)
            else:
                app.wsgi_app = WSGIMiddleware(app.wsgi_app, lim)  # type: ignore[method-assign]
        warn_memory_multiworker(lim)

    # -- decorators (the same as the limiter's; usable before init_app) -------------------

    def limit(self, rates: RatesLike, **options: Unpack[LimitOptions]) -> Callable[[F], F]:
        """:meth:`throttlekit.Limiter.limit` (the same options), bound to this Throttle's
        limiter. On a Blueprint: a limit for each of its routes."""
        return decorate(self, make_spec(self._limiter_obj, rates, **options))

    def shared_limit(self, rates: RatesLike, scope: str, **options: Any) -> Callable[[F], F]:
        """One counter for every view decorated with this ``scope``."""
        return self.limit(rates, scope=scope, **options)

    def exempt(self, fn: F) -> F:
        """Exempt a view or a blueprint from default and application limits (the rules of
        a ``WSGIMiddleware`` run before routing: safelist the path to take it out of them)."""
        return exempt(self, fn)

    # -- hooks ---------------------------------------------------------------------------

    def _entries(self, endpoint: str | None) -> tuple[Group | None, tuple[Any, ...]]:
        try:
            return self._cache[endpoint]
        except KeyError:
            pass
        app = current_app
        view_func = app.view_functions.get(endpoint) if endpoint else None
        group = group_of(view_func)
        own = group is not None and group.wrapper is view_func
        exempted = False
        extra: list[tuple[str, Any]] = []
        for bp_name in request.blueprints:
            bp = app.blueprints.get(bp_name)
            if bp is None:
                continue
            if bp.__dict__.get("__throttlekit_exempt__"):
                exempted = True
            for spec in bp.__dict__.get("__throttlekit_limits__", ()):
                extra.append((f"blueprint:{bp_name}", spec))
        name = endpoint_name(view_func, endpoint) if view_func is not None else endpoint
        entries = self._limits.entries(name, group, own, extra, exempted)
        found = (group if own else None, entries)
        self._cache[endpoint] = found
        return found

    def _before(self) -> None:
        lim = self.limiter
        if not lim.enabled:
            return
        if self._fork.pid is not None:
            self._fork(lim)
        group, entries = self._entries(request.endpoint)
        environ = request.environ
        if group is not None:
            environ[HANDLED_KEY] = group
        if not entries:
            return
        view = view_of(lim, environ, request._get_current_object(), FlaskView)  # type: ignore[attr-defined]
        verdict = evaluate(lim, view, entries)
        if verdict is None:
            return
        record(ADAPTER, environ, request, verdict)
        if not verdict.allowed:
            environ[DENIED_KEY] = True
            raise rate_limited(lim, verdict)

    @staticmethod
    def _teardown(exc: BaseException | None) -> None:
        # the request is over: its view lets go of the environ and of Flask's request,
        # which hold it (no reference cycle; see FrameworkView.detach)
        detach_view(request.environ)

    def _after(self, response: Response) -> Response:
        lim = self._limiter_obj
        if lim is not None:
            return _add_headers(lim, response)
        return response


def _wrapped(wsgi_app: Any) -> list[Any]:
    """``wsgi_app`` and what it wraps, through ``.app`` (at most 16 deep)."""
    chain = [wsgi_app]
    while len(chain) < 16 and (wsgi_app := getattr(wsgi_app, "app", None)) is not None:
        chain.append(wsgi_app)
    return chain


def decision() -> Decision | None:
    """The Decision of the current request's limits (also ``flask.g.throttle``)."""
    found: Decision | None = g.get("throttle")
    return found
