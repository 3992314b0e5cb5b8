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
import time
import weakref
from collections.abc import Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ._adapters import (
    Adapter,
    Found,
    adapters,
    discover,
    find_request,
    on_register,
    unwatch_imports,
    watch_imports,
)
from ._decision import most_restrictive
from ._errors import ConfigError, RateLimitExceeded
from ._exchange import DENIED_KEY, POLICIES_KEY
from ._frameworkview import VIEW_KEY, FrameworkView, view_of
from ._keys import UNREADABLE_PREFIX, rule_key
from ._limitspec import (
    Entry,
    Group,
    LimitSpec,
    NonBlocking,
    group_of,
    known_limiters,
    named_arguments,
    qualified_name,
    signature_of,
)
from ._planning import Plan, conclude
from ._resilience import deny_decision
from ._rules import NS, UNKNOWN_CLIENT, Verdict
from ._settling import (
    CURRENT,
    DECISION_KEY,
    PENDING_KEY,
    VERDICT_KEY,
    asettle,
    current_decision,
    settle,
    status_of,
)
from ._waiting import awaited, wait_of, waited
from .storage.base import BatchResult, Check

if TYPE_CHECKING:
    from ._limiter import Limiter
    from ._request import RequestView

__all__ = [
    "DENIED_KEY", "HANDLED_KEY", "HIDDEN_REQUEST", "PENDING_KEY", "POLICIES_KEY",
    "VIEW_KEY", "FrameworkView", "LimitSpec", "aevaluate", "answer", "current_decision",
    "decorate", "evaluate", "exempt", "group_of", "known_limiters", "qualified_name",
    "record", "status_of", "view_of"
]

logger = logging.getLogger("throttlekit")

F = TypeVar("F", bound=Callable[..., Any])
#: what ``limit``/``exempt`` decorate: a function, or a container an integration reads (a
#: Flask Blueprint), handed back with its own type
T = TypeVar("T")

#: environ/scope key: the endpoint group an integration already evaluated for this request
HANDLED_KEY = "throttlekit.handled"
_new = tuple.__new__


# -- evaluation ------------------------------------------------------------------------------


def _add(p: Plan, lim: Limiter, name: str, spec: LimitSpec, disc: str, cost: Any,
         rates: Any = None) -> None:
    """Plan ``spec``'s checks under ``name`` for ``disc`` at ``cost`` (and ``rates``)."""
    if (cost.__class__ is not int or cost < 0) and (
        isinstance(cost, bool) or not isinstance(cost, int) or cost < 0
    ):
        raise TypeError(f"cost must be an integer >= 0, got {cost!r}")
    rule = spec.throttle(name, lim)
    if rule.variants is not None:
        try:
            rule = rule.variants.of(rates)
        except ConfigError as exc:  # bad rates answered: this call's error, not a misfit
            raise ValueError(str(exc)) from None
    checks = p.checks
    p.throttles.append((rule, disc, cost, len(checks)))
    skey = NS + disc
    # as the rules plan them: a dry run (or block=False) on its own, a count_when probed
    indep = rule.dry_run
    probe = rule.count_when is not None
    for alg in rule.algorithms:
        checks.append(_new(Check, (alg, skey, cost, indep, probe)))


_last_log: dict[str, float] = {}


def _shared(name: str) -> bool:
    """An application limit: one counter for every route (``contrib._common.Limits``)."""
    return name == "application" or name.startswith("application#")


def _log_error(lim: Limiter, name: str, exc: BaseException) -> None:
    mono = time.monotonic()
    if mono - _last_log.get(name, -1e18) >= lim.error_log_interval:
        _last_log[name] = mono
        logger.error("the key, cost or rates function of limit %r raised %s: %s; "
                     "on_storage_error=%r", name, type(exc).__name__, exc, lim.on_storage_error)


def _plan_web(lim: Limiter, view: RequestView, entries: Sequence[Entry]
              ) -> Plan | Verdict | None:
    """The checks of the ``entries`` applying to a request (None: none applies), or the
    refusal of a key or cost function that failed."""
    p = Plan(view)
    method = view.method
    route = view.route if isinstance(view, FrameworkView) else None
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
                unreadable = disc is None and view.form_failed
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
            if route is not None and spec.scope is None and not _shared(name):
                name = f"{name}@{route}"  # one view behind two routes: two counters
            rates = None if spec.rates_arity is None else spec.rates_of(name, disc, view)
            _add(p, lim, name, spec, disc, cost, rates)
        except Exception as exc:
            _log_error(lim, name, exc)
            if lim.on_storage_error == "deny":
                return _refused(lim, view, name)
    return p if p.checks else None


def _plan_call(lim: Limiter, group: Group, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> Plan | Verdict | None:
    """The checks of a plain call's limits (None: none applies), or the refusal of a key
    or cost function that failed."""
    named: dict[str, Any] | None = None
    if group.binds:
        named = named_arguments(group.sig, args, kwargs)  # type: ignore[arg-type]
        if named is None:
            return None  # the call itself does not fit the function: let it raise
    p = Plan(None)  # type: ignore[arg-type]  # a plain call has no request
    for (name, spec), (keya, costa, ratesa) in zip(group.entries, group.adapters, strict=True):
        try:
            disc = "" if keya is None else keya(args, kwargs, named)
            if disc is None:
                continue
            disc = rule_key(disc if disc.__class__ is str else str(disc))
            cost = spec.call_cost
            if cost.__class__ is not int:
                cost = costa(args, kwargs, named)  # type: ignore[misc]
            rates = None if spec.rates_arity is None else ratesa(args, kwargs, named) \
                if ratesa is not None else spec.rates_of(name, disc, None)
            _add(p, lim, name, spec, disc, cost, rates)
        except ConfigError:
            raise
        except Exception as exc:
            _log_error(lim, name, exc)
            if lim.on_storage_error == "deny":
                return _refused(lim, None, name)
    return p if p.checks else None


def _refused(lim: Limiter, view: Any, rule: str, degraded: bool = True) -> Verdict:
    d = deny_decision((), lim.retry_interval, degraded)
    return Verdict(False, "throttled", rule, None, d, [], degraded, view)


def evaluate(lim: Limiter, view: RequestView, entries: Sequence[Entry], wait: bool = True
             ) -> Verdict | None:
    """Check and charge the ``entries`` that apply to the request (all or nothing, one
    storage call; a refusal due within their ``wait`` waits, then is decided once more).
    None when none applies. Never raises."""
    p = _plan_web(lim, view, entries)
    if isinstance(p, Plan):
        if not _on_their_own(p):
            p = lim.engine.decide(p, silent=True)  # no events: they tell what rules did
        else:
            p = _concluded(lim, p, lim.engine.apply(p.checks))
    if wait and p is not None and not p.allowed and (w := wait_of(entries)):
        return waited(lim, w, p, evaluate, lim, view, entries, False)
    return p


async def aevaluate(lim: Limiter, view: RequestView, entries: Sequence[Entry],
                    wait: bool = True) -> Verdict | None:
    """Async twin of :func:`evaluate` (async storage calls only)."""
    p = _plan_web(lim, view, entries)
    if isinstance(p, Plan):
        if not _on_their_own(p):
            p = await lim.engine.adecide(p, silent=True)
        else:
            p = _concluded(lim, p, await lim.engine.aapply(p.checks))
    if wait and p is not None and not p.allowed and (w := wait_of(entries)):
        return await awaited(lim, w, p, aevaluate, lim, view, entries, False)
    return p


def _on_their_own(p: Plan) -> bool:
    """Some limit of the plan is a dry run or does not block (decided on its own)."""
    for planned in p.throttles:  # noqa: SIM110  (no generator per request)
        if planned[0].dry_run:
            return True
    return False


def _concluded(lim: Limiter, p: Plan, result: BatchResult) -> Verdict:
    """The verdict of a plan with limits decided on their own (a dry run, ``block=False``),
    from the store's answer (a denial cache never holds such a plan: see
    ``Engine._cached_refusal``). A dry run's decision is told by a ``throttled`` (or
    ``allowed``) event with ``dry_run=True``; a non-blocking limit's refusal becomes the
    verdict's decision and policy, which the view reads, and the request goes on."""
    engine = lim.engine
    verdict = conclude(engine, p, result, silent=True)[0]
    if result.policy is not None:
        return verdict
    active = engine.listeners.active
    view = p.view
    for rule, disc, _cost, start in p.throttles:
        if not rule.dry_run:
            continue
        d = most_restrictive(result.decisions[start:start + len(rule.algorithms)])
        if rule.__class__ is NonBlocking:  # block=False: the view decides
            verdict.policies.append((rule.policy_names[0], d))
            if verdict.allowed and (not d.allowed or verdict.decision is None
                                    or (verdict.decision.allowed
                                        and d.remaining < verdict.decision.remaining)):
                verdict.decision = d
        elif not d.allowed and "throttled" in active:
            engine.emit("throttled", rule.name, disc, view, d, True)
        elif d.allowed and "allowed" in active:
            engine.emit("allowed", rule.name, disc, view, d, True)
    return verdict


# -- decorating ----------------------------------------------------------------------------


def decorate(owner: Any, spec: LimitSpec, lim: Limiter | None = None) -> Callable[[T], T]:
    """The decorator of ``owner.limit(...)``: ``owner`` is ``lim`` itself, or an integration
    whose ``limiter`` is built later (Flask's ``Throttle``: ``lim`` None)."""
    discover()  # the adapters of the frameworks loaded so far (entry points)

    def decorator(fn: T) -> T:
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
        group = Group(owner, qualified_name(fn), signature_of(fn), lim)
        group.add(spec)
        if group_of(fn) is not None and group_of(fn).wrapper is None:  # type: ignore[union-attr]
            group.exempt = group_of(fn).exempt  # type: ignore[union-attr]
        wrapper = _wrap(fn, group)
        group.wrapper = wrapper
        wrapper.__throttlekit__ = group  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator


def exempt(owner: Any, fn: T) -> T:
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


#: the keyword-only ``Request`` parameter added to a FastAPI endpoint's signature when it
#: has none: FastAPI then passes the request (and keeps it out of the OpenAPI schema)
HIDDEN_REQUEST = "throttlekit_request"


#: wrappers no adapter gave a signature yet -> (function, its signature, the cell of the
#: adapter whose parameter holds the request): an adapter registered later (its framework
#: imported after the decoration) may still give one (see ``_resign``)
_unsigned: weakref.WeakKeyDictionary[Callable[..., Any], tuple[
    Callable[..., Any], inspect.Signature, list[Adapter | None]]] = weakref.WeakKeyDictionary()


_listening = False


def _await_signature(wrapper: Callable[..., Any], fn: Callable[..., Any],
                     sig: inspect.Signature, hidden: list[Adapter | None]) -> None:
    """A framework imported later may want another signature for ``wrapper`` (FastAPI's
    request parameter): its adapter is loaded when it is imported, and re-signs it."""
    global _listening
    if not _listening:
        on_register(_resign)
        _listening = True
    _unsigned[wrapper] = (fn, sig, hidden)
    watch_imports()


def _resign(adapter: Adapter) -> None:
    for wrapper, (fn, sig, hidden) in list(_unsigned.items()):
        new_sig = adapter.signature(fn, sig)
        if new_sig is not None:
            wrapper.__signature__ = new_sig  # type: ignore[attr-defined]
            hidden[0] = adapter
            _unsigned.pop(wrapper, None)
    if not _unsigned:  # nobody waits for a framework's signature any more
        unwatch_imports()


def _wrap(fn: Callable[..., Any], group: Group) -> Callable[..., Any]:
    sig = group.sig
    #: the adapter whose added parameter holds the request (FastAPI's), if any
    hidden: list[Adapter | None] = [None]
    new_sig = None
    for a in adapters():
        new_sig = a.signature(fn, sig)
        if new_sig is not None:
            hidden[0] = a
            break
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def awrapper(*args: Any, **kwargs: Any) -> Any:
            lim, found = _context(hidden[0], group, args, kwargs)
            if lim is None:
                return await fn(*args, **kwargs)
            outer = CURRENT.get()  # a decorated caller's decision, back when this returns
            if found is None:
                pending = await _acall_limits(lim, group, args, kwargs)
            else:
                answer = await _aweb_limits(lim, group, found)
                if answer is not None:
                    return answer
                pending = _served(found[1])
            try:
                if pending is None:
                    return await fn(*args, **kwargs)
                try:  # count_when: charged once the outcome is known
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    await asettle(lim, pending, status_of(exc, failed=True))
                    raise
                await asettle(lim, pending, status_of(result))
                return result
            finally:
                CURRENT.set(outer)  # (None outside a decorated call: not the next view's)

        wrapper: Callable[..., Any] = awrapper
    else:
        @functools.wraps(fn)
        def swrapper(*args: Any, **kwargs: Any) -> Any:
            lim, found = _context(hidden[0], group, args, kwargs)
            if lim is None:
                return fn(*args, **kwargs)
            outer = CURRENT.get()  # a decorated caller's decision, back when this returns
            if found is None:
                pending = _call_limits(lim, group, args, kwargs)
            else:
                answer = _web_limits(lim, group, found)
                if answer is not None:
                    return answer
                pending = _served(found[1])
            try:
                if pending is None:
                    return fn(*args, **kwargs)
                try:  # count_when: charged once the outcome is known
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    settle(lim, pending, status_of(exc, failed=True))
                    raise
                settle(lim, pending, status_of(result))
                return result
            finally:
                CURRENT.set(outer)  # (None outside a decorated call: not the next view's)

        wrapper = swrapper
    if new_sig is not None:
        wrapper.__signature__ = new_sig  # type: ignore[attr-defined]
    elif sig is not None:
        wrapper.__signature__ = sig  # type: ignore[attr-defined]
        _await_signature(wrapper, fn, sig, hidden)
    return wrapper


def _context(adapter: Adapter | None, group: Group, args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> tuple[Limiter | None, Found | None]:
    """The limiter of a decorated call (None: disabled) and the request it is called in
    (None: a plain call); pops the hidden request parameter ``adapter`` added."""
    req = kwargs.pop(HIDDEN_REQUEST, None) if adapter is not None else None
    lim = group.lim or group.owner.limiter
    if not lim.enabled:
        return None, None
    return lim, _found(adapter, req, args, kwargs)


def _found(hidden: Adapter | None, req: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
           ) -> Found | None:
    """The request of a call: ``req`` (given in the parameter ``hidden`` added), else
    wherever an adapter finds one."""
    if req is not None and hidden is not None:
        return hidden.find((req,), {})
    return find_request(args, kwargs)


# -- applying limits from the wrapper --------------------------------------------------------


def _call_limits(lim: Limiter, group: Group, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> list[Verdict] | None:
    """Check and charge a plain call's limits (``wait=``: a refusal due soon waits, then is
    decided once more); raise :class:`RateLimitExceeded` if they refuse it. Returns the
    verdict to settle after the call (``count_when``), if any."""
    verdict = _decide_call(lim, group, args, kwargs)
    if group.wait:
        verdict = waited(lim, group.wait, verdict, _decide_call, lim, group, args, kwargs)
    return _raise_refused(verdict)


def _decide_call(lim: Limiter, group: Group, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Verdict | None:
    p = _plan_call(lim, group, args, kwargs)
    if not isinstance(p, Plan):
        return p
    if not _on_their_own(p):
        return lim.engine.decide(p, silent=True)
    return _concluded(lim, p, lim.engine.apply(p.checks))


async def _acall_limits(lim: Limiter, group: Group, args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> list[Verdict] | None:
    """Async twin of :func:`_call_limits`."""
    verdict = await _adecide_call(lim, group, args, kwargs)
    if group.wait:
        verdict = await awaited(lim, group.wait, verdict, _adecide_call, lim, group, args, kwargs)
    return _raise_refused(verdict)


async def _adecide_call(lim: Limiter, group: Group, args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> Verdict | None:
    p = _plan_call(lim, group, args, kwargs)
    if not isinstance(p, Plan):
        return p
    if not _on_their_own(p):
        return await lim.engine.adecide(p, silent=True)
    return _concluded(lim, p, await lim.engine.aapply(p.checks))


def _raise_refused(verdict: Verdict | None) -> list[Verdict] | None:
    """A plain call's limits refused it: raise :class:`RateLimitExceeded`. Else its
    Decision for :func:`current_decision`, and the verdict to settle, if any."""
    if verdict is not None and verdict.allowed:
        CURRENT.set(verdict.decision)
        return [verdict] if verdict.pending else None
    if verdict is not None:
        assert verdict.decision is not None
        exc = RateLimitExceeded(
            verdict.decision, f"rate limit {verdict.rule!r} exceeded: {verdict.decision.rate}"
        )
        exc.verdict = verdict  # type: ignore[attr-defined]
        raise exc
    return None


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
    if verdict.pending and raw.get(VERDICT_KEY) is not verdict:  # not the rules' verdict
        found = raw.get(PENDING_KEY)
        if found is None:
            raw[PENDING_KEY] = [verdict]
        else:
            found.append(verdict)
    if verdict.allowed:
        raw[DECISION_KEY] = verdict.decision  # the wrapper gives it to current_decision()
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


def _served(raw: Any) -> Any:
    """The count_when charges an integration left to settle; sets what the view reads."""
    pending = raw.pop(PENDING_KEY, None)
    if (kept := raw.get(DECISION_KEY)) is not None:  # current_decision()
        CURRENT.set(kept)
    return pending
