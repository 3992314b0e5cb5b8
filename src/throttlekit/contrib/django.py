"""Django integration: a middleware (sync and async) for rules, default, application and
per-view limits, decorators for views, and a Django REST framework throttle class.

``settings.py``::

    MIDDLEWARE = [..., "throttlekit.contrib.django.ThrottleMiddleware"]
    THROTTLEKIT = {
        "STORAGE_URL": "redis://127.0.0.1:6379/0",
        "DEFAULT_LIMITS": "100/minute",              # every view, each its own counter
        "APPLICATION_LIMITS": "1000/minute",         # the whole site, per client
        "RULES": "myproject.throttling.configure",   # configure(limiter): throttles, bans...
    }

``views.py``::

    from throttlekit.contrib.django import limit

    @limit("5/minute", methods=["POST"])
    def login(request): ...

    class Search(View):
        @method_decorator(limit("10/minute"))
        def get(self, request): ...

Or point ``"LIMITER"`` at your own :class:`~throttlekit.Limiter` (``"myproject.throttling
.limiter"``) and use ``@limiter.limit`` — the same thing. A refusal is an ``HttpResponse``
with status 429 (403 for blocks and bans) and the middleware's headers; the Decision is in
``request.throttle``. Other settings: ``ENABLED``, ``STRATEGY``, ``HEADER_STYLE``,
``HEADERS_ON_ALLOWED``, ``TRUSTED_PROXIES``, ``IPV6_PREFIX``, ``ON_STORAGE_ERROR``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings  # type: ignore[import-untyped]
from django.core.signals import setting_changed  # type: ignore[import-untyped]
from django.http import HttpRequest, HttpResponse  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]

from .._adapters import Adapter, Found, register_adapter
from .._decorators import DENIED_KEY, HANDLED_KEY, aevaluate, decorate, evaluate, record
from .._decorators import exempt as _exempt
from .._errors import ConfigError
from .._exchange import OWNER_KEY, abegin, begin, header_policies
from .._frameworkview import FrameworkView, detach_view, framework_body, view_of
from .._limitspec import Group, group_of, make_spec, qualified_name
from .._responder import reason
from .._responses import rate_limit_headers
from .._workers import ForkCheck, warn_memory_multiworker
from ..wsgi import VERDICT_KEY
from ._common import Limits, denial, limiter_from, parse_limits

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .._decision import Decision
    from .._limiter import Limiter
    from .._limitspec import LimitOptions
    from .._rules import Verdict
    from .._typing import RatesLike

__all__ = ["ADAPTER", "DjangoAdapter", "ThrottleMiddleware", "exempt", "get_limiter", "limit",
           "shared_limit"]

F = TypeVar("F", bound=Callable[..., Any])
_state: dict[str, Any] = {}
#: bumped when settings.THROTTLEKIT changes: middleware instances then read it again
_generation = [0]


def _settings_changed(*, setting: str, **_: Any) -> None:
    if setting == "THROTTLEKIT":  # override_settings in tests: build the limiter again
        _state.pop("limiter", None)
        _drf_specs.clear()  # (made with the old limiter: its strategy, burst, storage)
        _generation[0] += 1


setting_changed.connect(_settings_changed)


def _options() -> dict[str, Any]:
    options = getattr(settings, "THROTTLEKIT", None) or {}
    if not isinstance(options, dict):
        raise ConfigError(f"settings.THROTTLEKIT must be a dict, got {options!r}")
    return options


def get_limiter() -> Limiter:
    """The limiter of ``settings.THROTTLEKIT``: its ``"LIMITER"`` (a Limiter or a dotted
    path to one), else one built from the settings, with ``"RULES"`` applied. Built once."""
    lim = _state.get("limiter")
    if lim is not None:
        return lim  # type: ignore[no-any-return]
    from .._limiter import Limiter

    options = _options()
    given = options.get("LIMITER")
    if isinstance(given, str):
        given = import_string(given)
    if given is not None and not isinstance(given, Limiter):
        raise ConfigError(f"THROTTLEKIT['LIMITER'] must be a Limiter, got {given!r}")
    lim = limiter_from(options, given)
    rules = options.get("RULES")
    if isinstance(rules, str):
        rules = import_string(rules)
    if rules is not None:
        if callable(rules):
            rules(lim)
        elif isinstance(rules, (list, tuple)):
            for rule in rules:
                _add_rule(lim, rule)
        else:
            raise ConfigError(f"THROTTLEKIT['RULES'] must be a callable or a list, got {rules!r}")
    _state["limiter"] = lim
    return lim


def _add_rule(lim: Limiter, rule: Any) -> None:
    """One rule as a dict: ``{"kind": "throttle", "name": "login", "rates": "5/minute",
    ...}``; the other keys are the keyword arguments of ``limiter.<kind>``."""
    if not isinstance(rule, dict) or rule.get("kind") not in (
        "safelist", "blocklist", "fail2ban", "allow2ban", "throttle", "track"
    ):
        raise ConfigError(f"a THROTTLEKIT rule must be a dict with a 'kind', got {rule!r}")
    options = dict(rule)
    kind = options.pop("kind")
    name = options.pop("name", None)
    method = getattr(lim, kind)
    if kind == "throttle":
        method(name, options.pop("rates", None), **options)
    else:
        method(name, **options)


class _SettingsOwner:
    """Decorators bound to the settings' limiter, built on first use."""

    _limiter_obj = None

    @property
    def limiter(self) -> Limiter:
        return get_limiter()


_owner = _SettingsOwner()


def limit(rates: RatesLike, **options: Unpack[LimitOptions]) -> Callable[[F], F]:
    """:meth:`throttlekit.Limiter.limit` (the same options) with the settings' limiter.
    ``key`` functions get the request view; ``view.request`` is the Django request (e.g.
    ``view.request.user``)."""
    return decorate(_owner, make_spec(None, rates, **options))


def shared_limit(rates: RatesLike, scope: str, **options: Any) -> Callable[[F], F]:
    """One counter for every view decorated with this ``scope``."""
    return limit(rates, scope=scope, **options)


def exempt(fn: F) -> F:
    """Exempt a view from default and application limits."""
    return _exempt(_owner, fn)


def rate_limited(lim: Limiter, verdict: Verdict) -> HttpResponse:
    """The 429 (or 403) response of a refused verdict."""
    accept = None
    req = getattr(verdict.request, "request", None)
    if req is not None:
        accept = req.headers.get("Accept")
    d = denial(lim, verdict, accept)
    response = HttpResponse(d.body, status=d.status, reason=reason(d.status))
    for name, value in d.headers:
        response[name] = value
    return response


class DjangoView(FrameworkView):
    """The request view of a Django request: its form as ``request.POST`` parses it, over
    the body Django caches (``request.body``: the view still reads it)."""

    __slots__ = ()

    def _read_form(self) -> Mapping[str, str]:
        req = self.request
        if req is not None and self.is_wsgi and isinstance(req, HttpRequest):
            return self._framework_form(req, req.content_type, "_post", "POST",
                                        lambda: req.body)
        return super()._read_form()

    @property
    def route(self) -> str | None:
        """The URL pattern that matched (``"items/<int:pk>/"``): a view behind two
        routes counts each on its own (``scope=`` shares one counter)."""
        match = getattr(self.request, "resolver_match", None)
        if match is None:
            return None
        return getattr(match, "route", None) or getattr(match, "view_name", None) or None

    def framework_user(self) -> Any:
        """``request.user``'s primary key when authenticated."""
        user = getattr(self.request, "user", None)
        if user is None or not getattr(user, "is_authenticated", False):
            return None
        return getattr(user, "pk", None)

    def _read_body(self) -> bytes | None:
        # Django holds the body stream: read through it, so that ``request.POST`` still
        # sees the whole body
        req = self.request
        if req is not None and self.is_wsgi and isinstance(req, HttpRequest):
            return framework_body(self, lambda: req.body)
        return super()._read_body()


def _django_request(arg: Any) -> HttpRequest | None:
    if isinstance(arg, HttpRequest):
        return arg
    inner = getattr(arg, "_request", None)  # Django REST framework's Request
    return inner if isinstance(inner, HttpRequest) else None


class DjangoAdapter(Adapter):
    """The decorators in Django: an ``HttpRequest`` (or a DRF ``Request``) among the first
    two arguments (a function view, a method of a class-based view); a refusal is the
    429 ``HttpResponse``."""

    name = "django"
    priority = 10

    def find(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Found | None:
        for arg in args[:2]:
            req = _django_request(arg)
            if req is not None:
                return (self, req.META, req)
        return None

    def view(self, lim: Limiter, raw: MutableMapping[str, Any], native: Any) -> FrameworkView:
        return view_of(lim, raw, native, DjangoView)

    def keep(self, raw: MutableMapping[str, Any], native: Any, decision: Decision | None) -> None:
        if native is not None:
            native.throttle = decision

    def refuse(self, lim: Limiter, found: Found, verdict: Verdict) -> Any:
        return rate_limited(lim, verdict)


ADAPTER = DjangoAdapter()
register_adapter(ADAPTER)


def _view_name(view_func: Any) -> str:
    cls = getattr(view_func, "view_class", None) or getattr(view_func, "cls", None)
    return qualified_name(cls if cls is not None else view_func)


class ThrottleMiddleware:
    """Rules, default, application and per-view limits for a Django project (WSGI or
    ASGI: the async request path makes only async storage calls)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        lim = self._setup()
        self._fork = ForkCheck()
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
            self.process_view = self._aprocess_view  # type: ignore[method-assign]
        warn_memory_multiworker(lim)

    def _setup(self) -> Limiter:
        """(Re)read ``settings.THROTTLEKIT``: the limiter and the default limits."""
        self._generation = _generation[0]
        self.limiter = lim = get_limiter()
        options = _options()
        self.limits = Limits(
            parse_limits(lim, options.get("DEFAULT_LIMITS"), "DEFAULT_LIMITS"),
            parse_limits(lim, options.get("APPLICATION_LIMITS"), "APPLICATION_LIMITS"),
        )
        self._cache: dict[Any, tuple[Group | None, tuple[Any, ...]]] = {}
        return lim

    # -- the rules, around the whole request ---------------------------------------------

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        if self._generation != _generation[0]:
            self._setup()  # the settings changed (override_settings)
        lim = self.limiter
        if not lim.enabled:
            return self.get_response(request)
        if self._fork.pid is not None:
            self._fork(lim)
        meta = request.META
        outer = self._owner(lim, meta)
        if outer is lim:  # an outer entry of this limiter ran the pipeline already
            return self.get_response(request)
        try:
            verdict, ex = begin(lim, lim.evaluate(view_of(lim, meta, request, DjangoView)))
            refusal = self._admit(lim, request, verdict)
            if refusal is not None:
                return refusal
            if ex is None:
                return self._headers(lim, meta, self.get_response(request), outer)
            with ex:  # the lease and count_when, whatever ends the request
                response = self.get_response(request)
                ex.respond(response.status_code, list(response.items()))
            return self._headers(lim, meta, response, outer)
        finally:
            detach_view(meta)  # the response is over: no reference cycle

    async def __acall__(self, request: HttpRequest) -> Any:
        if self._generation != _generation[0]:
            self._setup()
        lim = self.limiter
        if not lim.enabled:
            return await self.get_response(request)
        if self._fork.pid is not None:
            self._fork(lim)
        meta = request.META
        outer = self._owner(lim, meta)
        if outer is lim:  # an outer entry of this limiter ran the pipeline already
            return await self.get_response(request)
        try:
            verdict, ex = await abegin(
                lim, await lim.aevaluate(view_of(lim, meta, request, DjangoView)))
            refusal = self._admit(lim, request, verdict)
            if refusal is not None:
                return refusal
            if ex is None:
                return self._headers(lim, meta, await self.get_response(request), outer)
            async with ex:  # the lease and count_when, whatever ends the request
                response = await self.get_response(request)
                ex.respond(response.status_code, list(response.items()))
            return self._headers(lim, meta, response, outer)
        finally:
            detach_view(meta)  # the response is over: no reference cycle

    @staticmethod
    def _owner(lim: Limiter, meta: dict[str, Any]) -> Any:
        """The limiter of an outer throttlekit entry (a ``WSGIMiddleware`` around Django),
        which then writes the header set; else None, and this middleware writes it."""
        outer = meta.get(OWNER_KEY)
        if outer is None:
            meta[OWNER_KEY] = lim
        return outer

    @staticmethod
    def _admit(lim: Limiter, request: HttpRequest, verdict: Verdict) -> HttpResponse | None:
        """Keep the rules' verdict; the refusal to answer, or None."""
        meta = request.META
        meta[VERDICT_KEY] = verdict
        if not verdict.allowed:
            meta[DENIED_KEY] = True
            return rate_limited(lim, verdict)
        if verdict.policies:
            record(ADAPTER, meta, request, verdict)
        return None

    @staticmethod
    def _headers(lim: Limiter, meta: dict[str, Any], response: Any, outer: Any) -> Any:
        if outer is None and lim.headers_on_allowed and lim.header_style != "none":
            policies = header_policies(meta, ())
            if policies:
                for name, value in rate_limit_headers(policies, lim.header_style):
                    response[name] = value
        return response

    # -- per-view limits, once the view is known -------------------------------------------

    def _entries(self, view_func: Any) -> tuple[Group | None, tuple[Any, ...]]:
        """The view's limits (the route joins their names when they are evaluated:
        one view behind two routes counts each on its own, see ``DjangoView.route``)."""
        try:
            return self._cache[view_func]
        except (KeyError, TypeError):
            pass
        group = group_of(view_func)
        own = group is not None and group.wrapper is view_func
        entries = self.limits.entries(_view_name(view_func), group, own)
        found = (group if own else None, entries)
        with contextlib.suppress(TypeError):  # an unhashable view: not cached
            self._cache[view_func] = found
        return found

    def _before_view(self, request: HttpRequest, view_func: Any) -> tuple[Any, Any] | None:
        lim = self.limiter
        if not lim.enabled:
            return None
        group, entries = self._entries(view_func)
        meta = request.META
        if group is not None:
            meta[HANDLED_KEY] = group
        if not entries:
            return None
        return lim, view_of(lim, meta, request, DjangoView), entries  # type: ignore[return-value]

    def process_view(self, request: HttpRequest, view_func: Any, view_args: Any,
                     view_kwargs: Any) -> HttpResponse | None:
        found = self._before_view(request, view_func)
        if found is None:
            return None
        lim, view, entries = found  # type: ignore[misc]
        return self._conclude(lim, request, evaluate(lim, view, entries))

    async def _aprocess_view(self, request: HttpRequest, view_func: Any, view_args: Any,
                             view_kwargs: Any) -> HttpResponse | None:
        found = self._before_view(request, view_func)
        if found is None:
            return None
        lim, view, entries = found  # type: ignore[misc]
        return self._conclude(lim, request, await aevaluate(lim, view, entries))

    @staticmethod
    def _conclude(lim: Limiter, request: HttpRequest, verdict: Verdict | None
                  ) -> HttpResponse | None:
        if verdict is None:
            return None
        meta = request.META
        record(ADAPTER, meta, request, verdict)
        if verdict.allowed:
            return None
        meta[DENIED_KEY] = True
        return rate_limited(lim, verdict)


def _drf_throttle() -> Any:
    try:
        from rest_framework.throttling import BaseThrottle  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:  # pragma: no cover - DRF is optional
        return None

    class ThrottlekitThrottle(BaseThrottle):  # type: ignore[misc]
        """A Django REST framework throttle backed by throttlekit (atomic, any strategy,
        trusted-proxy aware). Subclass and set ``rate`` (and optionally ``scope``,
        ``strategy`` and ``key``), or set ``throttle_rate`` on the view."""

        rate: Any = None
        scope: str | None = None
        strategy: str | None = None
        key: Any = None

        def allow_request(self, request: Any, view: Any) -> bool:
            lim = get_limiter()
            rate = getattr(view, "throttle_rate", None) or self.rate
            if not lim.enabled or rate is None:
                return True
            spec = _drf_specs.get((type(self), rate))
            if spec is None:
                spec = make_spec(lim, rate, key=self.key, strategy=self.strategy,
                                 scope=self.scope, what=type(self).__name__)
                _drf_specs[type(self), rate] = spec
            django_request = getattr(request, "_request", request)
            v = view_of(lim, django_request.META, django_request, DjangoView)
            name = spec.scope or f"drf:{qualified_name(type(view))}"
            verdict = evaluate(lim, v, ((name, spec),))
            self.verdict = verdict
            if verdict is None:
                return True
            record(ADAPTER, django_request.META, django_request, verdict)
            return verdict.allowed

        def wait(self) -> float | None:
            verdict = getattr(self, "verdict", None)
            if verdict is None or verdict.decision is None:
                return None
            retry = verdict.decision.retry_after
            return None if retry == float("inf") else retry

    return ThrottlekitThrottle


_drf_specs: dict[Any, Any] = {}


def __getattr__(name: str) -> Any:
    if name == "ThrottlekitThrottle":
        cls = _state.get("drf")
        if cls is None:
            cls = _state["drf"] = _drf_throttle()
        if cls is None:
            raise AttributeError("ThrottlekitThrottle needs Django REST framework "
                                 "(pip install djangorestframework)")
        return cls
    raise AttributeError(name)
