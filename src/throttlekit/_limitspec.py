"""What a ``limit(...)`` is: its options (:class:`LimitOptions`, validated once by
:class:`LimitSpec`), the names its counters go by, and the :class:`Group` of the limits
stacked on one decorated function, with how their key and cost functions get a plain
call's arguments."""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypedDict

from ._algorithms import DEFAULT_STRATEGY, check_strategy
from ._errors import ConfigError
from ._frameworkview import user_key, user_or_ip_key
from ._rates import rates_function, resolved
from ._rules import (
    _Throttle,
    _throttle_algorithms,
    check_on_unreadable,
    key_function,
    limiter_defaults,
    uses_form,
)
from ._waiting import check_wait

if TYPE_CHECKING:
    from ._limiter import Limiter
    from ._rules import ResponseInfo

__all__ = [
    "ArgAdapter",
    "Entry",
    "Group",
    "LimitOptions",
    "LimitSpec",
    "NonBlocking",
    "endpoint_name",
    "group_of",
    "known_limiters",
    "make_spec",
    "named_arguments",
    "qualified_name",
    "signature_of",
]

#: every limiter a decorator or an integration was given (what the pytest fixtures reset)
known_limiters: weakref.WeakSet[Limiter] = weakref.WeakSet()
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
                      "CONNECT"})


class LimitOptions(TypedDict, total=False):
    """The keyword options of every ``limit(...)`` (``Limiter.limit``, ``depends``, Flask's
    ``Throttle.limit``, Django's ``limit``); :class:`LimitSpec` has their defaults and
    validates them. See ``docs/frameworks.md``."""

    key: Any
    strategy: str | None
    cost: Any
    methods: Iterable[str] | None
    per_method: bool
    burst: int | None
    override_defaults: bool
    scope: str | None
    on_unreadable: str
    count_when: Callable[[ResponseInfo], Any] | None
    dry_run: bool
    block: bool
    wait: float


def qualified_name(fn: Any) -> str:
    """``module.qualname`` of a function: what an endpoint's counters are named after."""
    fn = inspect.unwrap(fn) if callable(fn) else fn
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{module}.{name}"


def endpoint_name(fn: Any, route: str | None) -> str:
    """The counter name of an endpoint: its qualified name, or for a lambda or an object
    without a name (a mounted ASGI app, a ``partial``: named by a repr holding its address,
    another in every process) the route (Flask endpoint, route template)."""
    if route is not None:
        target = inspect.unwrap(fn) if callable(fn) else fn
        if not (getattr(target, "__qualname__", None) or getattr(target, "__name__", None)):
            return f"{getattr(target, '__module__', None) or '?'}.{route}"
    name = qualified_name(fn)
    if route is not None and "<lambda>" in name:
        return f"{name.partition('<lambda>')[0]}{route}"
    return name


# -- one limit -------------------------------------------------------------------------------


class LimitSpec:
    """One ``limit(...)``: rates, strategy, key, cost and which requests it counts.

    Validated when built (bad values are a ConfigError at decoration time). The throttle
    counting under each counter name is built on first use and cached (for the limiter
    serving it: another by then, after a settings change, builds them again).
    """

    __slots__ = (
        "_limiter", "_throttles", "block", "burst", "call_cost", "call_key", "cost", "count_when",
        "dry_run", "key", "methods", "on_unreadable", "override_defaults", "per_method",
        "rates", "rates_arity", "scope", "strategy", "uses_form", "wait",
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
        count_when: Callable[[ResponseInfo], Any] | None = None,
        dry_run: bool = False,
        block: bool = True,
        wait: float = 0.0,
        what: str = "limit",
    ) -> None:
        strategy, burst = _strategy_of(limiter, strategy, burst)
        #: None: the limiter's (an integration may build its limiter after decoration)
        self.strategy: str | None = strategy
        self.burst = burst
        self.rates = rates
        #: a rates function (per caller) is called with: 0 nothing, "key" the key, 1 the
        #: view (plain calls: the call's arguments, as ``key``), 2 (group, request);
        #: None: fixed rates
        self.rates_arity: int | str | None = None
        if callable(rates):
            sig = signature_of(rates)
            self.rates_arity = "key" if sig is not None and list(sig.parameters) == ["key"] \
                else rates_function(rates, what, 0, 1, 2)
        else:  # validates rates, strategy and burst now
            _throttle_algorithms("@", rates, DEFAULT_STRATEGY if strategy is None else strategy,
                                 burst, what)
        self.key = key_function(_USER_KEYS.get(key, key) if isinstance(key, str) else key,
                                what)
        check_on_unreadable(on_unreadable, what)
        #: a key that cannot be read from a request: "client" or "refuse" (Limiter.throttle)
        self.on_unreadable = on_unreadable
        #: the key or cost reads ``view.form`` (the ASGI integrations then read the body)
        self.uses_form = uses_form(self.key, cost, rates)
        #: plain functions: key(*args, **kwargs); a web-only shortcut gives one counter
        self.call_key: Callable[..., Any] | None = key if callable(key) else None
        if callable(cost):
            self.cost: Any = cost
            self.call_cost: Any = cost
        elif isinstance(cost, bool) or not isinstance(cost, int) or cost < 0:
            raise ConfigError(f"{what}: cost must be an integer >= 0 or a callable, got {cost!r}")
        else:
            self.cost = self.call_cost = cost
        self.methods = _methods(methods, what)
        for name, flag in (("per_method", per_method), ("override_defaults", override_defaults),
                           ("dry_run", dry_run), ("block", block)):
            if not isinstance(flag, bool):
                raise ConfigError(f"{what}: {name} must be True or False, got {flag!r}")
        self.per_method = per_method
        self.override_defaults = override_defaults
        if count_when is not None and not callable(count_when):
            raise ConfigError(f"{what}: count_when must be a callable of the response, "
                              f"got {count_when!r}")
        #: charged after the response, only when ``count_when(response)`` holds (the
        #: rules' ``count_when``: tested before the view, settled by the wrapper)
        self.count_when = count_when
        #: evaluated and charged on its own, never refuses (``throttled`` events tell)
        self.dry_run = dry_run
        #: False: never refuses; the view reads the Decision and decides (django-ratelimit)
        self.block = block
        if scope is not None and (not isinstance(scope, str) or not scope):
            raise ConfigError(f"{what}: scope must be a non-empty string, got {scope!r}")
        self.scope = scope
        #: a refused call due within ``wait`` seconds waits, then is decided once more
        self.wait = check_wait(wait, what)
        self._throttles: dict[str, _Throttle] = {}
        #: the limiter ``_throttles`` were built for (a decorator may serve several in turn)
        self._limiter: Limiter | None = None

    def __repr__(self) -> str:
        extra = f", scope={self.scope!r}" if self.scope else ""
        return f"LimitSpec({self.rates!r}, strategy={self.strategy!r}{extra})"

    def rates_of(self, name: str, disc: str, view: Any) -> Any:
        """What the rates function answers for a request (``view``; None: a plain call, of
        a function taking no view) counted under ``name`` for the key ``disc``."""
        fn, how = self.rates, self.rates_arity
        if how == 0:
            return fn()
        if how == "key":
            return fn(key=disc)
        if how == 2:  # django-ratelimit's rate(group, request): the framework's request
            return fn(name, getattr(view, "request", view))
        return fn(view)

    def throttle(self, name: str, lim: Limiter) -> _Throttle:
        """The throttle counting under ``name``: its algorithms, and its policy names (the
        headers'), each rate of several named by its period (``"search/60"``)."""
        if self._limiter is lim:
            try:
                return self._throttles[name]
            except KeyError:
                pass
        else:  # another limiter by now (settings overridden): its strategy and burst
            self._throttles = {}
            self._limiter = lim
        strategy, burst = limiter_defaults(lim, self.strategy, self.burst)
        if self.strategy is None:
            check_strategy(strategy, lim.storage)
        # a dry run and a non-blocking limit are both independent checks that never
        # refuse: the decorators read their decision from the store's answer
        cls = _Throttle if self.block else NonBlocking

        def build(rates: Any, storage: Any = None) -> _Throttle:
            algs = _throttle_algorithms("@" + name, rates, strategy, burst, name)
            rule = cls(name, algs, None, self.key, self.cost, self.dry_run or not self.block,
                       self.count_when, strategy, burst, self.on_unreadable)
            if len(algs) > 1:
                rule.policy_names = tuple(f"{name}/{_seconds(a.rate.period)}" for a in algs)
            return rule

        rule = build(self.rates) if self.rates_arity is None else resolved(
            build, self.rates, name, (0, 1, 2))
        if len(self._throttles) > 1024:  # per-method names are few; anything else is a bug
            self._throttles.clear()
        self._throttles[name] = rule
        return rule


#: key shortcuts of the decorators beyond the rules' (the user: per framework, see
#: ``FrameworkView.user_id``)
_USER_KEYS: dict[str, Any] = {"user": user_key, "user_or_ip": user_or_ip_key}


class NonBlocking(_Throttle):
    """The throttle of a ``limit(..., block=False)``: decided on its own like a dry run,
    its decision given to the view (which decides) instead of refusing."""

    __slots__ = ()


def _methods(methods: Iterable[str] | None, what: str) -> frozenset[str] | None:
    """The HTTP methods a limit counts (None: all), upper-cased and checked."""
    if methods is None:
        return None
    if isinstance(methods, str):
        methods = [methods]
    try:
        ms = frozenset(str(m).upper() for m in methods)
    except TypeError:
        raise ConfigError(f"{what}: methods must be a list of HTTP methods, "
                          f"got {methods!r}") from None
    if not ms or not ms <= _METHODS:
        raise ConfigError(f"{what}: methods must be HTTP methods, got {methods!r}")
    return ms


def _seconds(period: float) -> str:
    return str(int(period)) if period == int(period) else str(period)


#: (counter name, spec): one limit as it applies to one endpoint
Entry = tuple[str, LimitSpec]


def _strategy_of(limiter: Limiter | None, strategy: str | None, burst: int | None
                 ) -> tuple[str | None, int | None]:
    """A limit's strategy and burst: the limiter's for None (None still without a limiter
    yet); a bad name is a ConfigError now, even with rates only known per request."""
    if limiter is None:
        if strategy is not None:
            check_strategy(strategy, None)
        return strategy, burst
    strategy, burst = limiter_defaults(limiter, strategy, burst)
    check_strategy(strategy, limiter.storage)
    return strategy, burst


def make_spec(lim: Limiter | None, rates: Any, what: str = "limit", **options: Any
              ) -> LimitSpec:
    """A :class:`LimitSpec` validated against ``lim`` (None: a limiter not built yet)."""
    if lim is not None:
        known_limiters.add(lim)
    return LimitSpec(lim, rates, what=what, **options)


# -- endpoints: the decorated function's group -----------------------------------------------


class Group:
    """The throttlekit state of one decorated function: its limits (stacked decorators
    add to one group) and whether default limits apply to it."""

    __slots__ = ("adapters", "binds", "endpoint", "entries", "exempt", "lim", "owner", "sig",
                 "specs", "wait", "wrapper")

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
        self.adapters: tuple[tuple[ArgAdapter | None, ...], ...] = ()
        self.binds = False
        #: the longest ``wait`` of its limits (0: a refusal is never waited out)
        self.wait = 0.0

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
            for f in (s.call_key, s.call_cost if callable(s.call_cost) else None,
                      s.rates if s.rates_arity == 1 else None):
                if f is None:
                    pair.append(None)
                else:
                    a, b = _adapter(f, self.sig)
                    pair.append(a)
                    binds = binds or b
            adapters.append((pair[0], pair[1], pair[2]))
        self.adapters = tuple(adapters)
        self.binds = binds
        self.wait = max(s.wait for s in self.specs)

    @property
    def override_defaults(self) -> bool:
        return self.exempt or any(s.override_defaults for s in self.specs)

    def limiter(self) -> Limiter:
        return self.lim or self.owner.limiter


def group_of(fn: Any) -> Group | None:
    """The :class:`Group` of a decorated (or exempted) function, if any."""
    g = getattr(fn, "__throttlekit__", None)
    return g if isinstance(g, Group) else None


# -- plain calls: how key and cost functions get the call's arguments ------------------------


def signature_of(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def named_arguments(sig: inspect.Signature, args: tuple[Any, ...],
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
    ksig = signature_of(f)
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
