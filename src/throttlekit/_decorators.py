"""Per-endpoint and per-function limits: ``limiter.limit``, ``shared_limit``, ``exempt``,
``depends``.

>>> from throttlekit import Limiter, RateLimitExceeded
>>> limiter = Limiter()
>>> @limiter.limit("2/minute", key=lambda user: user)
... def send_mail(user):
...     return "sent"
>>> send_mail("ann"), send_mail("ann"), send_mail("bob")
('sent', 'sent', 'sent')
>>> try:
...     send_mail("ann")
... except RateLimitExceeded as exc:
...     print(exc.decision.allowed, exc.decision.retry_after > 0)
False True

One decorator works everywhere, and names no framework. When the decorated function runs,
the wrapper asks the registered adapters (``_adapters``: one per framework, registered by
``throttlekit.contrib.*`` or loaded through the ``throttlekit.adapters`` entry points) for
the current request: a Django ``HttpRequest`` or a Starlette ``Request`` among its
arguments, the request the ASGI integration is serving (a context variable), or Flask's
request context. With a request, the limit is an endpoint limit: keyed by the client (or
``key``), counted under the endpoint's qualified name (module + qualname), and a breach
answers with that framework's native 429 (the adapter's ``refuse``). Without one it is a
plain function limit: the key function gets the call's arguments, and a breach raises
:class:`RateLimitExceeded`.

The framework integrations (``throttlekit.contrib``) evaluate an endpoint's decorated limits
together with the default and application limits before the view runs, in one storage
call; the wrapper then sees the request was handled and only calls through.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ._adapters import Adapter, Found, adapters, discover, find_request
from ._algorithms import DEFAULT_STRATEGY, check_strategy
from ._decision import Decision, most_restrictive
from ._errors import ConfigError, RateLimitExceeded
from ._exchange import DENIED_KEY, POLICIES_KEY
from ._keys import UNREADABLE_PREFIX, rule_key
from ._request import _UNREADABLE, RequestView, _UnreadableForm
from ._resilience import deny_decision
from ._rules import (
    NS,
    STORAGE_RULE,
    UNKNOWN_CLIENT,
    Verdict,
    _throttle_algorithms,
    check_on_unreadable,
    key_function,
    uses_form,
)
from .storage import MemoryStorage
from .storage.base import BatchResult, Check

if TYPE_CHECKING:
    from ._algorithms import Algorithm
    from ._limiter import Limiter

__all__ = [
    "DENIED_KEY",
    "HANDLED_KEY",
    "HIDDEN_REQUEST",
    "POLICIES_KEY",
    "VIEW_KEY",
    "FrameworkView",
    "LimitSpec",
    "aevaluate",
    "answer",
    "decorate",
    "evaluate",
    "exempt",
    "group_of",
    "qualified_name",
    "record",
    "view_of",
    "warn_memory_multiworker",
]

logger = logging.getLogger("throttlekit")

F = TypeVar("F", bound=Callable[..., Any])

#: environ/scope key: the endpoint group an integration already evaluated for this request
HANDLED_KEY = "throttlekit.handled"
#: environ/scope key: the :class:`FrameworkView` of this request
VIEW_KEY = "throttlekit.view"

#: every limiter a decorator or an integration was given (what the pytest fixtures reset)
known_limiters: weakref.WeakSet[Limiter] = weakref.WeakSet()
_new = tuple.__new__
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
                      "CONNECT"})


class FrameworkView(RequestView):
    """A :class:`~throttlekit.RequestView` that also carries the framework's own request
    object as ``request`` (a Flask/werkzeug request, a Django ``HttpRequest``, a Starlette
    ``Request``), for key functions that need, say, ``request.user``."""

    __slots__ = ("request",)

    request: Any

    # A framework's view (``contrib``) reads a form (urlencoded, multipart) with the
    # framework's own parser, so that the rule sees exactly the fields the view will see
    # (parsers disagree on unusual bodies: UTF-7 names, filename*, base64 parts...):
    # Django's ``request.POST``, werkzeug's ``request.form`` (Flask), both over the body
    # they cached (the view still reads it), through ``_framework_form`` and
    # ``framework_body``. Starlette's ``request.form()`` is async: see ``use_form``.

    def _framework_form(self, req: Any, mimetype: Any, cached: str, attr: str,
                        read: Callable[[], bytes]) -> Mapping[str, str]:
        """The form as the framework parses it (``req.<attr>``, cached in
        ``req.__dict__[cached]`` once parsed), for the form types it parses, over the
        body its ``read`` caches."""
        if mimetype not in FRAMEWORK_FORMS:
            ctype = self.headers.get("content-type") or ""
            if ctype.partition(";")[0].strip().lower() in FRAMEWORK_FORMS:
                return _UNREADABLE  # we and the framework disagree on the type: no key
            return super()._read_form()  # JSON: read as the view does (json.loads)
        if cached not in req.__dict__ and framework_body(self, read) is None:
            # too big (or gone): not parsed, the view parses it (the stream is intact)
            return _UNREADABLE if self._has_body() else _EMPTY_FORM
        try:
            return form_fields(getattr(req, attr))
        except Exception:
            return _UNREADABLE  # the view's own parsing fails the same way

    def use_form(self, parsed: Any) -> None:
        """Take ``parsed`` (a framework's multidict: Starlette's ``FormData``) as the form,
        or None when the framework could not parse the body (the form is unreadable)."""
        self._form = _UNREADABLE if parsed is None else form_fields(parsed)

#: the form types frameworks parse themselves (JSON the views parse with json.loads)
FRAMEWORK_FORMS = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
_EMPTY_FORM: Mapping[str, str] = {}


def form_fields(parsed: Any) -> dict[str, str]:
    """A framework's parsed form (Django ``QueryDict``, werkzeug ``MultiDict``, Starlette
    ``FormData``) as the rule's form: each text field's value as the framework's ``get``
    gives it to views (the first of repeated fields in werkzeug, the last in Django and
    Starlette); files left out."""
    return {k: v for k in parsed if isinstance(v := parsed.get(k), str)}


def framework_body(view: RequestView, read: Callable[[], bytes]) -> bytes | None:
    """The body through the framework's own cached read, when its Content-Length is at
    most ``view.max_form_bytes`` (None otherwise, or when the framework cannot give it:
    Django after its multipart parser consumed the stream)."""
    text = view.headers.get("content-length")
    try:
        length = int(text) if text and text.strip() else 0
    except ValueError:
        return None
    if length < 0 or length > view.max_form_bytes:
        return None
    try:
        data = bytes(read())
    except Exception:
        return None
    return data if len(data) == length else None


def qualified_name(fn: Any) -> str:
    """``module.qualname`` of a function: what an endpoint's counters are named after."""
    fn = inspect.unwrap(fn) if callable(fn) else fn
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{module}.{name}"


def endpoint_name(fn: Any, route: str | None) -> str:
    """The counter name of an endpoint: its qualified name, or for a lambda (which has
    no name of its own) the route (Flask endpoint, route template)."""
    name = qualified_name(fn)
    if route is not None and "<lambda>" in name:
        return f"{name.partition('<lambda>')[0]}{route}"
    return name


# -- one limit -------------------------------------------------------------------------------


class LimitSpec:
    """One ``limit(...)``: rates, strategy, key, cost and which requests it counts.

    Validated when built (bad values are a ConfigError at decoration time). The algorithms
    are built per counter name on first use and cached.
    """

    __slots__ = (
        "_algs", "burst", "call_cost", "call_key", "cost", "key", "methods", "on_unreadable",
        "override_defaults", "per_method", "rates", "scope", "strategy", "uses_form",
    )

    def __init__(
        self,
        limiter: Limiter | None,
        rates: Any,
        *,
        key: Any = None,
        strategy: str | None = None,
        cost: Any = 1,
        methods: Iterable[str] | None = None,
        per_method: bool = False,
        scope: str | None = None,
        burst: int | None = None,
        override_defaults: bool = False,
        on_unreadable: str = "client",
        what: str = "limit",
    ) -> None:
        if limiter is not None:
            strategy = strategy or limiter.strategy
            check_strategy(strategy, limiter.storage)
            if burst is None and strategy == "token_bucket":
                burst = limiter.burst
        #: None: the limiter's (an integration may build its limiter after decoration)
        self.strategy: str | None = strategy
        self.burst = burst
        self.rates = rates
        # validates rates, strategy and burst now
        _throttle_algorithms("@", rates, strategy or DEFAULT_STRATEGY, burst, what)
        self.key = key_function(key, what)
        check_on_unreadable(on_unreadable, what)
        #: a key that cannot be read from a request: "client" or "refuse" (Limiter.throttle)
        self.on_unreadable = on_unreadable
        #: the key or cost reads ``view.form`` (the ASGI integrations then read the body)
        self.uses_form = uses_form(self.key, cost)
        #: plain functions: key(*args, **kwargs); a web-only shortcut gives one counter
        self.call_key: Callable[..., Any] | None = key if callable(key) else None
        if callable(cost):
            self.cost: Any = cost
            self.call_cost: Any = cost
        elif isinstance(cost, bool) or not isinstance(cost, int) or cost < 0:
            raise ConfigError(f"{what}: cost must be an integer >= 0 or a callable, got {cost!r}")
        else:
            self.cost = self.call_cost = cost
        if methods is None:
            self.methods: frozenset[str] | None = None
        else:
            if isinstance(methods, str):
                methods = [methods]
            try:
                ms = frozenset(str(m).upper() for m in methods)
            except TypeError:
                raise ConfigError(f"{what}: methods must be a list of HTTP methods, "
                                  f"got {methods!r}") from None
            if not ms or not ms <= _METHODS:
                raise ConfigError(f"{what}: methods must be HTTP methods, got {methods!r}")
            self.methods = ms
        for name, flag in (("per_method", per_method), ("override_defaults", override_defaults)):
            if not isinstance(flag, bool):
                raise ConfigError(f"{what}: {name} must be True or False, got {flag!r}")
        self.per_method = per_method
        self.override_defaults = override_defaults
        if scope is not None and (not isinstance(scope, str) or not scope):
            raise ConfigError(f"{what}: scope must be a non-empty string, got {scope!r}")
        self.scope = scope
        self._algs: dict[str, tuple[tuple[Algorithm, ...], tuple[str, ...]]] = {}

    def __repr__(self) -> str:
        extra = f", scope={self.scope!r}" if self.scope else ""
        return f"LimitSpec({self.rates!r}, strategy={self.strategy!r}{extra})"

    def algorithms(self, name: str, lim: Limiter) -> tuple[tuple[Algorithm, ...], tuple[str, ...]]:
        """The algorithms counting under ``name``, and their policy names (headers)."""
        try:
            return self._algs[name]
        except KeyError:
            pass
        strategy = self.strategy
        burst = self.burst
        if strategy is None:
            strategy = lim.strategy
            check_strategy(strategy, lim.storage)
            if burst is None and strategy == "token_bucket":
                burst = lim.burst
        algs = _throttle_algorithms("@" + name, self.rates, strategy, burst, name)
        if len(algs) == 1:
            names: tuple[str, ...] = (name,)
        else:
            names = tuple(f"{name}/{_seconds(a.rate.period)}" for a in algs)
        if len(self._algs) > 1024:  # per-method names are few; anything else is a bug
            self._algs.clear()
        self._algs[name] = (algs, names)
        return algs, names


def _seconds(period: float) -> str:
    return str(int(period)) if period == int(period) else str(period)


#: (counter name, spec): one limit as it applies to one endpoint
Entry = tuple[str, LimitSpec]


# -- evaluation ------------------------------------------------------------------------------


class _Pending:
    __slots__ = ("checks", "meta")

    def __init__(self) -> None:
        self.checks: list[Check] = []
        #: (policy names, disc, cost, first check index, number of checks, counter name)
        self.meta: list[tuple[tuple[str, ...], str, int, int, int, str]] = []

    def add(self, lim: Limiter, name: str, spec: LimitSpec, disc: Any, cost: Any) -> None:
        if disc.__class__ is not str:
            disc = str(disc)
        if (cost.__class__ is not int or cost < 0) and (
            isinstance(cost, bool) or not isinstance(cost, int) or cost < 0
        ):
            raise TypeError(f"cost must be an integer >= 0, got {cost!r}")
        algs, names = spec.algorithms(name, lim)
        checks = self.checks
        self.meta.append((names, disc, cost, len(checks), len(algs), name))
        skey = NS + disc
        for alg in algs:
            checks.append(_new(Check, (alg, skey, cost, False, False)))


_last_log: dict[str, float] = {}


def _log_error(lim: Limiter, name: str, exc: BaseException) -> None:
    mono = time.monotonic()
    if mono - _last_log.get(name, -1e18) >= lim.error_log_interval:
        _last_log[name] = mono
        logger.error("throttlekit: the key or cost function of limit %r raised %s: %s; "
                     "on_storage_error=%r", name, type(exc).__name__, exc, lim.on_storage_error)


def _plan_web(lim: Limiter, view: RequestView, entries: Sequence[Entry]) -> _Pending | Verdict:
    p = _Pending()
    method = view.method
    for name, spec in entries:
        methods = spec.methods
        if methods is not None and method not in methods:
            continue
        try:
            try:
                disc = spec.key(view)
            except Exception as exc:
                _log_error(lim, name, exc)
                if lim.on_storage_error == "deny":
                    return _refused(lim, view, name)
                disc = None
                unreadable = True
            else:
                unreadable = disc is None and view._form.__class__ is _UnreadableForm
            if unreadable:  # the key cannot be read: on_unreadable says what to do
                if spec.on_unreadable == "refuse":
                    return _refused(lim, view, name, degraded=False)
                disc = UNREADABLE_PREFIX + (view.client_key or UNKNOWN_CLIENT)
            elif disc is None:
                continue
            else:
                disc = rule_key(disc if disc.__class__ is str else str(disc))
            cost = spec.cost
            if cost.__class__ is not int:
                cost = cost(view)
            if spec.per_method:
                name = f"{name}#{method}"
            p.add(lim, name, spec, disc, cost)
        except Exception as exc:
            _log_error(lim, name, exc)
            if lim.on_storage_error == "deny":
                return _refused(lim, view, name)
    return p


def _plan_call(lim: Limiter, group: Group, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> _Pending | Verdict | None:
    p = _Pending()
    named: dict[str, Any] | None = None
    if group.binds:
        named = _named_arguments(group.sig, args, kwargs)  # type: ignore[arg-type]
        if named is None:
            return None  # the call itself does not fit the function: let it raise
    for (name, spec), (keya, costa) in zip(group.entries, group.adapters, strict=True):
        try:
            disc = "" if keya is None else keya(args, kwargs, named)
            if disc is None:
                continue
            disc = rule_key(disc if disc.__class__ is str else str(disc))
            cost = spec.call_cost
            if cost.__class__ is not int:
                cost = costa(args, kwargs, named)  # type: ignore[misc]
            p.add(lim, name, spec, disc, cost)
        except ConfigError:
            raise
        except Exception as exc:
            _log_error(lim, name, exc)
            if lim.on_storage_error == "deny":
                return _refused(lim, None, name)
    return p


def _named_arguments(sig: inspect.Signature, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The call's arguments by parameter name (defaults applied; a ``**kwargs``
    parameter's items merged in)."""
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    out: dict[str, Any] = {}
    params = sig.parameters
    for pname, value in bound.arguments.items():
        if params[pname].kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        else:
            out[pname] = value
    return out


#: calls a key or cost function with ``(args, kwargs, arguments by name)``
ArgAdapter = Callable[[tuple[Any, ...], dict[str, Any], "dict[str, Any] | None"], Any]

_P = inspect.Parameter
_NAMED_KINDS = (_P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY)


def _adapter(f: Callable[..., Any], fsig: inspect.Signature | None) -> tuple[ArgAdapter, bool]:
    """How ``f`` (a key or cost function) gets a call's arguments, and whether that needs
    the call bound to the decorated function's signature.

    By name when it can: every argument when ``f`` takes ``**kwargs``, else the ones it
    names; as the call was made (``f(*args, **kwargs)``) when its parameters are
    positional-only or do not name the function's parameters."""
    ksig = _signature(f)
    if ksig is None or fsig is None:
        return _raw_adapter(f, ksig), False
    kparams = list(ksig.parameters.values())
    fparams = fsig.parameters
    fnames = {n for n, p in fparams.items() if p.kind in _NAMED_KINDS
              or p.kind is _P.POSITIONAL_ONLY}
    f_varkw = any(p.kind is _P.VAR_KEYWORD for p in fparams.values())
    if any(p.kind in (_P.POSITIONAL_ONLY, _P.VAR_POSITIONAL) for p in kparams):
        return _raw_adapter(f, ksig), False
    names = tuple(p.name for p in kparams if p.kind in _NAMED_KINDS)
    required = {p.name for p in kparams if p.kind in _NAMED_KINDS and p.default is _P.empty}
    if any(p.kind is _P.VAR_KEYWORD for p in kparams):
        def all_named(args: tuple[Any, ...], kwargs: dict[str, Any],
                      named: dict[str, Any] | None) -> Any:
            try:
                return f(**named)  # type: ignore[arg-type]
            except TypeError:
                _check_fits(f, ksig, (), named or {})
                raise
        return all_named, True
    if not names or (set(names) & fnames and (required <= fnames or f_varkw)):
        def by_name(args: tuple[Any, ...], kwargs: dict[str, Any],
                    named: dict[str, Any] | None) -> Any:
            kw = {n: named[n] for n in names if n in named}  # type: ignore[index, operator]
            try:
                return f(**kw)
            except TypeError:
                _check_fits(f, ksig, (), kw)
                raise
        return by_name, bool(names)
    return _raw_adapter(f, ksig), False


def _raw_adapter(f: Callable[..., Any], ksig: inspect.Signature | None) -> ArgAdapter:
    def raw(args: tuple[Any, ...], kwargs: dict[str, Any], named: dict[str, Any] | None) -> Any:
        try:
            return f(*args, **kwargs)
        except TypeError:
            if ksig is not None:
                _check_fits(f, ksig, args, kwargs)
            raise
    return raw


def _check_fits(f: Callable[..., Any], ksig: inspect.Signature, args: tuple[Any, ...],
                kwargs: Mapping[str, Any]) -> None:
    """A TypeError from a key/cost function whose parameters do not fit the call is a
    programming error, not a failing key: raise it instead of skipping the limit."""
    try:
        ksig.bind(*args, **kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"the key or cost function {qualified_name(f)}{ksig} cannot take the call's "
            f"arguments ({exc}); name the decorated function's parameters it needs, or "
            "accept **kwargs"
        ) from None


def _refused(lim: Limiter, view: Any, rule: str, degraded: bool = True) -> Verdict:
    d = deny_decision((), lim.retry_interval, degraded)
    return Verdict(False, "throttled", rule, None, d, [], degraded, view)


def _now(lim: Limiter) -> int | None:
    clock = lim.clock
    return int(clock() * 1_000_000) if clock is not None else None


def _conclude(lim: Limiter, p: _Pending, result: BatchResult, view: Any) -> Verdict:
    decisions = result.decisions
    degraded = result.policy is not None
    if result.policy == "deny":
        d = deny_decision(p.checks, lim.retry_interval)
        return Verdict(False, "throttled", STORAGE_RULE, None, d, [], True, view)
    policies: list[tuple[str, Decision]] = []
    costs: list[int] = []
    refusal: tuple[str, str, Decision] | None = None
    tightest: Decision | None = None
    for names, disc, cost, start, n, name in p.meta:
        if n == 1:
            d = decisions[start]
            policies.append((names[0], d))
            costs.append(cost)
        else:
            ds = decisions[start:start + n]
            for i in range(n):
                policies.append((names[i], ds[i]))
                costs.append(cost)
            d = most_restrictive(ds)
        if d.allowed:
            if tightest is None or d.remaining < tightest.remaining:
                tightest = d
        elif refusal is None or d.retry_after > refusal[2].retry_after:
            refusal = (name, disc, d)
    if refusal is not None:
        # nothing was charged: report what the allowing limits really have left
        policies = [
            (pn, pd if not pd.allowed or not c
             else pd._replace(remaining=min(pd.limit, pd.remaining + c)))
            for (pn, pd), c in zip(policies, costs, strict=True)
        ]
        return Verdict(False, "throttled", refusal[0], refusal[1], refusal[2], policies,
                       degraded, view)
    return Verdict(True, "allowed", None, None, tightest, policies, degraded, view)


def evaluate(lim: Limiter, view: RequestView, entries: Sequence[Entry]) -> Verdict | None:
    """Check and charge the ``entries`` that apply to the request (all or nothing, one
    storage call). None when none applies. Never raises."""
    p = _plan_web(lim, view, entries)
    if p.__class__ is Verdict:
        return p
    assert isinstance(p, _Pending)
    if not p.checks:
        return None
    result = lim.engine.apply(p.checks)
    return _conclude(lim, p, result, view)


async def aevaluate(lim: Limiter, view: RequestView, entries: Sequence[Entry]) -> Verdict | None:
    """Async twin of :func:`evaluate` (async storage calls only)."""
    p = _plan_web(lim, view, entries)
    if p.__class__ is Verdict:
        return p
    assert isinstance(p, _Pending)
    if not p.checks:
        return None
    result = await lim.engine.aapply(p.checks)
    return _conclude(lim, p, result, view)


# -- endpoints: the decorated function's group -----------------------------------------------


class Group:
    """The throttlekit state of one decorated function: its limits (stacked decorators
    add to one group) and whether default limits apply to it."""

    __slots__ = ("adapters", "binds", "endpoint", "entries", "exempt", "lim", "owner", "sig",
                 "specs", "wrapper")

    def __init__(self, owner: Any, endpoint: str, sig: inspect.Signature | None = None,
                 lim: Limiter | None = None) -> None:
        #: a Limiter, or an integration whose ``limiter`` is built later (Flask's Throttle)
        self.owner = owner
        #: the limiter, when known at decoration time (else ``owner.limiter`` per call)
        self.lim = lim
        self.endpoint = endpoint
        self.specs: tuple[LimitSpec, ...] = ()
        self.entries: tuple[Entry, ...] = ()
        self.exempt = False
        self.wrapper: Any = None
        #: the decorated function's signature (computed once): key/cost get arguments by name
        self.sig = sig
        #: per entry: how its key and cost functions are called (plain function calls)
        self.adapters: tuple[tuple[ArgAdapter | None, ArgAdapter | None], ...] = ()
        self.binds = False

    def add(self, spec: LimitSpec) -> None:
        # the outermost decorator is applied last; list limits top to bottom
        self.specs = (spec, *self.specs)
        entries = []
        for i, s in enumerate(self.specs):
            if s.scope is not None:
                entries.append((s.scope, s))
            else:
                entries.append((self.endpoint if i == 0 else f"{self.endpoint}#{i}", s))
        self.entries = tuple(entries)
        adapters = []
        binds = False
        for s in self.specs:
            pair: list[ArgAdapter | None] = []
            for f in (s.call_key, s.call_cost if callable(s.call_cost) else None):
                if f is None:
                    pair.append(None)
                else:
                    a, b = _adapter(f, self.sig)
                    pair.append(a)
                    binds = binds or b
            adapters.append((pair[0], pair[1]))
        self.adapters = tuple(adapters)
        self.binds = binds

    @property
    def override_defaults(self) -> bool:
        return self.exempt or any(s.override_defaults for s in self.specs)

    def limiter(self) -> Limiter:
        return self.lim or self.owner.limiter


def group_of(fn: Any) -> Group | None:
    """The :class:`Group` of a decorated (or exempted) function, if any."""
    g = getattr(fn, "__throttlekit__", None)
    return g if isinstance(g, Group) else None


def make_spec(lim: Limiter | None, rates: Any, what: str = "limit", **options: Any
              ) -> LimitSpec:
    """A :class:`LimitSpec` validated against ``lim`` (None: a limiter not built yet)."""
    if lim is not None:
        known_limiters.add(lim)
    return LimitSpec(lim, rates, what=what, **options)


def decorate(owner: Any, spec: LimitSpec, lim: Limiter | None = None) -> Callable[[F], F]:
    """The decorator of ``owner.limit(...)``: ``owner`` is ``lim`` itself, or an integration
    whose ``limiter`` is built later (Flask's ``Throttle``: ``lim`` None)."""
    discover()  # the adapters of the frameworks loaded so far (entry points)

    def decorator(fn: F) -> F:
        if isinstance(fn, type):
            raise ConfigError(
                f"limit() decorates functions, not the class {fn.__name__}; for a class-based "
                "view use django.utils.decorators.method_decorator or decorate as_view()"
            )
        if not callable(fn):
            # a Flask Blueprint (or any container an integration reads): its own limits
            limits = fn.__dict__.setdefault("__throttlekit_limits__", [])
            limits.append(spec)
            return fn
        group = group_of(fn)
        if group is not None and group.wrapper is fn:
            group.add(spec)  # stacked: one wrapper, one storage call
            return fn
        group = Group(owner, qualified_name(fn), _signature(fn), lim)
        group.add(spec)
        if group_of(fn) is not None and group_of(fn).wrapper is None:  # type: ignore[union-attr]
            group.exempt = group_of(fn).exempt  # type: ignore[union-attr]
        wrapper = _wrap(fn, group)
        group.wrapper = wrapper
        wrapper.__throttlekit__ = group  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator


def exempt(owner: Any, fn: F) -> F:
    """Mark ``fn`` (a view, or a Flask blueprint) as exempt from default and application
    limits; its own decorated limits still apply."""
    if not callable(fn) or isinstance(fn, type):
        fn.__throttlekit_exempt__ = True  # type: ignore[attr-defined]
        return fn
    group = group_of(fn)
    if group is None or group.wrapper is not fn:
        group = Group(owner, qualified_name(fn))
        try:
            fn.__throttlekit__ = group  # type: ignore[attr-defined]
        except AttributeError:
            raise ConfigError(f"cannot mark {fn!r} as exempt") from None
    group.exempt = True
    return fn


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


#: the keyword-only ``Request`` parameter added to a FastAPI endpoint's signature when it
#: has none: FastAPI then passes the request (and keeps it out of the OpenAPI schema)
HIDDEN_REQUEST = "throttlekit_request"


def _wrap(fn: Callable[..., Any], group: Group) -> Callable[..., Any]:
    sig = group.sig
    hidden: Adapter | None = None
    new_sig = None
    for a in adapters():
        new_sig = a.signature(fn, sig)
        if new_sig is not None:
            hidden = a  # it added HIDDEN_REQUEST: it finds the request there
            break
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def awrapper(*args: Any, **kwargs: Any) -> Any:
            req = kwargs.pop(HIDDEN_REQUEST, None) if hidden is not None else None
            lim = group.lim or group.owner.limiter
            if lim.enabled:
                found = _found(hidden, req, args, kwargs)
                if found is None:
                    await _acall_limits(lim, group, args, kwargs)
                else:
                    answer = await _aweb_limits(lim, group, found)
                    if answer is not None:
                        return answer
            return await fn(*args, **kwargs)

        wrapper: Callable[..., Any] = awrapper
    else:
        @functools.wraps(fn)
        def swrapper(*args: Any, **kwargs: Any) -> Any:
            req = kwargs.pop(HIDDEN_REQUEST, None) if hidden is not None else None
            lim = group.lim or group.owner.limiter
            if lim.enabled:
                found = _found(hidden, req, args, kwargs)
                if found is None:
                    _call_limits(lim, group, args, kwargs)
                else:
                    answer = _web_limits(lim, group, found)
                    if answer is not None:
                        return answer
            return fn(*args, **kwargs)

        wrapper = swrapper
    if new_sig is not None:
        wrapper.__signature__ = new_sig  # type: ignore[attr-defined]
    elif sig is not None:
        wrapper.__signature__ = sig  # type: ignore[attr-defined]
    return wrapper


def _found(hidden: Adapter | None, req: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
           ) -> Found | None:
    """The request of a call: ``req`` (given in the parameter ``hidden`` added), else
    wherever an adapter finds one."""
    if req is not None and hidden is not None:
        return hidden.find((req,), {})
    return find_request(args, kwargs)


def view_of(lim: Limiter, raw: MutableMapping[str, Any], native: Any,
            cls: type[FrameworkView] = FrameworkView, *, asgi: bool = False) -> FrameworkView:
    """The request view for ``raw`` (an environ, Django's META, an ASGI scope), built once
    per request (as a ``cls``) and kept in it."""
    view = raw.get(VIEW_KEY)
    if view is not None:
        if view.request is None and native is not None:
            view.request = native
        return view  # type: ignore[no-any-return]
    resolver = lim.resolver
    made = (cls.from_scope(raw, resolver) if asgi  # type: ignore[arg-type]
            else cls.from_environ(raw, resolver))  # type: ignore[arg-type]
    assert isinstance(made, FrameworkView)
    made.request = native
    raw[VIEW_KEY] = made
    return made


# -- applying limits from the wrapper --------------------------------------------------------


def _call_limits(lim: Limiter, group: Group, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
    p = _plan_call(lim, group, args, kwargs)
    if p is None:
        return
    if p.__class__ is Verdict:
        raise RateLimitExceeded(p.decision)  # type: ignore[arg-type]
    assert isinstance(p, _Pending)
    if not p.checks:
        return
    result = lim.engine.apply(p.checks)
    verdict = _conclude(lim, p, result, None)
    if not verdict.allowed:
        raise _exceeded(verdict)


async def _acall_limits(lim: Limiter, group: Group, args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> None:
    p = _plan_call(lim, group, args, kwargs)
    if p is None:
        return
    if p.__class__ is Verdict:
        raise RateLimitExceeded(p.decision)  # type: ignore[arg-type]
    assert isinstance(p, _Pending)
    if not p.checks:
        return
    result = await lim.engine.aapply(p.checks)
    verdict = _conclude(lim, p, result, None)
    if not verdict.allowed:
        raise _exceeded(verdict)


def _exceeded(verdict: Verdict) -> RateLimitExceeded:
    assert verdict.decision is not None
    exc = RateLimitExceeded(
        verdict.decision, f"rate limit {verdict.rule!r} exceeded: {verdict.decision.rate}"
    )
    exc.verdict = verdict  # type: ignore[attr-defined]
    return exc


def _web_limits(lim: Limiter, group: Group, found: Found) -> Any:
    adapter, raw, native = found
    if raw.get(HANDLED_KEY) is group or not group.entries:
        return None
    view = adapter.view(lim, raw, native)
    return answer(lim, found, evaluate(lim, view, group.entries))


async def _aweb_limits(lim: Limiter, group: Group, found: Found) -> Any:
    adapter, raw, native = found
    if raw.get(HANDLED_KEY) is group or not group.entries:
        return None
    view = adapter.view(lim, raw, native)
    if any(spec.uses_form for _, spec in group.entries):
        await adapter.read_body(view)
    return answer(lim, found, await aevaluate(lim, view, group.entries))


def record(adapter: Adapter, raw: MutableMapping[str, Any], native: Any,
           verdict: Verdict) -> None:
    """Keep the verdict's policies for the response headers, and its Decision where the
    view can read it (the adapter's place: Flask ``g.throttle``, Django
    ``request.throttle``, Starlette ``request.state.throttle``)."""
    policies = raw.get(POLICIES_KEY)
    if policies is None:
        raw[POLICIES_KEY] = list(verdict.policies)
    else:
        policies.extend(verdict.policies)
    adapter.keep(raw, native, verdict.decision)


def answer(lim: Limiter, found: Found, verdict: Verdict | None) -> Any:
    """What an endpoint's wrapper does with its limits' verdict: nothing (None) when
    allowed, else the adapter's refusal (returned, or raised by the adapter)."""
    if verdict is None:
        return None
    adapter, raw, native = found
    record(adapter, raw, native, verdict)
    if verdict.allowed:
        adapter.allowed(lim, found, verdict)
        return None
    raw[DENIED_KEY] = True
    return adapter.refuse(lim, found, verdict)


# -- several workers on the memory store ------------------------------------------------------

_warned = False


def _argv_workers(argv: Sequence[str]) -> int:
    for i, arg in enumerate(argv):
        value = None
        if arg in ("-w", "--workers") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--workers="):
            value = arg.partition("=")[2]
        elif arg.startswith("-w") and arg[2:].isdigit():
            value = arg[2:]
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def worker_count(environ: Mapping[str, str] | None = None,
                 argv: Sequence[str] | None = None) -> int:
    """How many worker processes the server was asked for (gunicorn or uvicorn), from the
    command line, ``GUNICORN_CMD_ARGS``, ``WEB_CONCURRENCY`` or ``UVICORN_WORKERS``; 1
    when nothing says."""
    env = os.environ if environ is None else environ
    argv = sys.argv if argv is None else argv
    n = 0
    program = " ".join(argv[:3]).lower()
    if "gunicorn" in program or "uvicorn" in program:
        n = _argv_workers(argv)
    if not n:
        n = _argv_workers(env.get("GUNICORN_CMD_ARGS", "").split())
    for name in ("WEB_CONCURRENCY", "UVICORN_WORKERS"):
        if not n and env.get(name, "").strip().isdigit():
            n = int(env[name])
    return max(n, 1)


def warn_memory_multiworker(lim: Limiter, *, forked: bool = False) -> bool:
    """Warn (once per process) when ``lim`` keeps its counters in process memory while the
    server runs several workers: each worker then admits the full limit."""
    global _warned
    known_limiters.add(lim)
    if _warned or not isinstance(lim.storage, MemoryStorage):
        return False
    n = worker_count()
    if n <= 1 and not forked:
        return False
    _warned = True
    many = f"{n} worker processes" if n > 1 else "a forked worker process"
    warnings.warn(
        f"throttlekit: the in-memory store (memory://) is used under {many}; each process "
        "keeps its own counters, so every limit is multiplied by the number of workers. "
        "Use a shared store such as redis://.",
        RuntimeWarning,
        stacklevel=_outside_stacklevel(),
    )
    return True


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _outside_stacklevel() -> int:
    """The ``stacklevel`` (for a warning raised by the caller) of the first frame outside
    throttlekit: the user's setup line, not the integration's code."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and os.path.abspath(
            frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level


class ForkCheck:
    """Remembers the pid at setup; the first request in another process (a worker forked
    after the app was built, e.g. gunicorn ``--preload``) warns about the memory store."""

    __slots__ = ("pid",)

    def __init__(self) -> None:
        self.pid: int | None = os.getpid()

    def __call__(self, lim: Limiter) -> None:
        pid = self.pid
        if pid is not None:
            self.pid = None
            if pid != os.getpid():
                warn_memory_multiworker(lim, forked=True)
