"""Plans: rates that follow the caller (a free plan gets 100/hour, a paid one 10,000/hour).

A rule or a limit takes a *rates function* in place of its rates: ``throttle(name,
rates=fn)`` calls ``fn(view)`` on each request, ``@limiter.limit(fn)`` calls it with what the
peers pass (see ``docs/frameworks.md``). :class:`Plans` is the rates function of the common
case, a table of rates per plan and where a request's plan comes from::

    >>> from throttlekit import Limiter
    >>> limiter = Limiter()
    >>> plans = limiter.plans({"free": "100/hour", "pro": "10000/hour"},
    ...                       plan="header:X-Plan", default="free")
    >>> limiter.throttle("api", rates=plans, key="header:X-Api-Key")

Each distinct answer is parsed once (a bounded cache keyed by the value returned), and every
plan of a rule counts under the rule's own counters: state is keyed by (rule name, strategy,
period, key), never by the amount, so moving a caller from 100/hour to 10,000/hour keeps the
100 it has used this hour. The rate-limit headers report the caller's own plan.

Where the plan comes from: ``"header:<name>"`` (a header the authentication layer or the
gateway sets; strip it from clients' requests, or a client names its own plan), or a function
of the request view (the user's plan from a session, a database, a verified token). A JWT
claim is not read here: the limiter runs before the token is verified, so an unverified claim
is the client's word; have the layer that verifies it set a header, or read the verified
claim in a function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._errors import ConfigError
from ._rates import Rate, coerce_rates, rates_function
from ._rules import READS_FORM, key_function, uses_form

if TYPE_CHECKING:
    from ._request import RequestView
    from ._typing import RatesLike

__all__ = ["Plans", "describe"]


class Plans:
    """A rates function by plan: ``plans(view)`` is the rates of the request's plan.

    Args:
        rates: plan name -> its rates (a rate string, a Rate or a list of them).
        plan: ``"header:<name>"``, or a function of the request view returning the plan's
            name (None: no plan, the default's).
        default: the plan of requests without one, or naming none in ``rates`` (None:
            such a request fails the rule, which ``on_storage_error`` then answers: the
            rule is skipped, or under ``"deny"`` the request refused).

    Raises:
        ConfigError: an empty table, a plan's bad rates, a ``default`` not in the table, or
            a ``plan`` that is neither a header nor a function of one argument.

    .. versionadded:: 0.19
    """

    __slots__ = ("_default", "_plan", "default", "plan", "rates", READS_FORM)

    def __init__(self, rates: Mapping[str, RatesLike],
                 plan: str | Callable[[RequestView], object],
                 default: str | None = None) -> None:
        if not isinstance(rates, Mapping) or not rates:
            raise ConfigError(f"plans: rates must be a non-empty table of plan name -> "
                              f"rates, got {rates!r}")
        table: dict[str, str | tuple[Rate, ...]] = {}
        for name, value in rates.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"plans: a plan name must be a non-empty string, "
                                  f"got {name!r}")
            try:
                parsed = coerce_rates(value)
            except ConfigError as exc:
                raise ConfigError(f"plans: plan {name!r}: {exc}") from None
            # a string is kept as given (its hash is cached: one dict lookup per request)
            table[name] = value if isinstance(value, str) else parsed
        if default is not None and default not in table:
            raise ConfigError(f"plans: default {default!r} is not a plan "
                              f"(plans: {', '.join(table)})")
        self.rates = table
        self.default = default
        self._default = None if default is None else table[default]
        #: as given, for the repr and ``throttlekit rules``
        self.plan = plan
        if isinstance(plan, str):
            if not plan.lower().startswith("header:") or not plan[7:].strip():
                raise ConfigError(
                    f"plans: plan must be 'header:<name>' or a function of the request "
                    f"view, got {plan!r}")
            self._plan: Callable[[RequestView], object] = key_function(plan, "plans")
        elif callable(plan):
            rates_function(plan, "plans: plan", 1)
            self._plan = plan
        else:
            raise ConfigError(f"plans: plan must be 'header:<name>' or a function of the "
                              f"request view, got {plan!r}")
        setattr(self, READS_FORM, uses_form(self._plan))

    def __call__(self, view: RequestView) -> str | tuple[Rate, ...]:
        """The rates of this request's plan."""
        name: Any = self._plan(view)
        try:
            found = self.rates.get(name) if name is not None else None
        except TypeError:  # unhashable (a list of roles, a dict): names no plan
            found = None
        if found is not None:
            return found
        if self._default is None:
            raise LookupError(f"no plan {name!r} and no default "
                              f"(plans: {', '.join(self.rates)})")
        return self._default

    def __repr__(self) -> str:
        default = f", default={self.default!r}" if self.default is not None else ""
        return f"Plans({self.rates!r}, plan={self.plan!r}{default})"


def describe(rates: Any) -> str:
    """How ``throttlekit rules`` shows a rule's rates (a Plans table shows its plans)."""
    if isinstance(rates, Plans):
        return "; ".join(f"{n}: {v if isinstance(v, str) else '; '.join(map(str, v))}"
                         for n, v in rates.rates.items())
    return str(rates)
