"""The rule engine: safelists, blocklists, bans, throttles and tracks, per request.

Rules are registered on a :class:`~throttlekit.Limiter` (``limiter.throttle(...)`` and
friends) and evaluated for each request by ``limiter.evaluate(view)``, in this order:

1. **safelists**: a match lets the request through, no other rule is looked at;
2. **blocklists** (static IPs/CIDRs and predicates): a match refuses with 403;
3. **the dynamic blocklist and bans** (``limiter.block``, ``fail2ban``, ``allow2ban``),
   looked up in the storage, so a ban made by one worker holds on all of them;
4. **throttles**: every throttle that applies is checked; if any refuses, none is charged
   (429); ``dry_run`` throttles are charged on their own and never refuse;
5. **tracks**: emit events for requests that go through, never refuse.

Steps 3 and 4 are one storage call (one round trip on Redis). A throttle's state is keyed
by (rule name, strategy, period, discriminator) and not by the amount, so tightening a rule
takes effect at once rather than handing everyone a fresh quota.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ._algorithms import Algorithm, check_strategy, make_algorithm
from ._decision import Decision
from ._errors import ConfigError
from ._escalation import BanEscalation, Escalate, Escalation
from ._formuse import READS_FORM as READS_FORM
from ._formuse import reads_form as reads_form
from ._formuse import uses_form as uses_form
from ._frameworkview import user_key, user_or_ip_key
from ._ipset import IPSet
from ._rates import MAX_PERIOD, Rate, Variants, coerce_rates, resolved
from ._registration import Override, registering
from ._ruleindex import RuleIndex, Where, where_of
from .storage.base import BoundBatch, BoundHit, Storage

if TYPE_CHECKING:
    from ._limiter import Limiter
    from ._request import RequestView
    from ._responses import Denial

__all__ = [
    "DYNAMIC_RULE",
    "STORAGE_RULE",
    "BanEscalation",
    "Escalate",
    "ResponseInfo",
    "Rules",
    "Verdict",
    "escape_name",
]

logger = logging.getLogger("throttlekit")

Predicate = Callable[["RequestView"], Any]
KeyFunc = Callable[["RequestView"], Any]

#: The rule name reported for refusals by ``limiter.block(...)`` entries.
DYNAMIC_RULE = "blocklist"
#: The rule name reported when ``on_storage_error="deny"`` refuses during an outage.
STORAGE_RULE = "storage-unavailable"
#: What a throttle does when its key cannot be read from the request (a body too big or
#: unparsable, a key function that raised): count the request under its client
#: (``"client"``, in a namespace of its own) or refuse it (``"refuse"``).
ON_UNREADABLE = ("client", "refuse")
#: Prefix of the storage keys of rule state: a rule's state can never be confused with a
#: direct ``limiter.hit(key, ...)`` on the same key.
NS = "rule:"
_new = tuple.__new__
_INF = float("inf")


def escape_name(name: str) -> str:
    """A rule name made safe for an algorithm id (no ``|``, no ``:``)."""
    return name.replace("%", "%25").replace("|", "%7C").replace(":", "%3A")


class ResponseInfo(NamedTuple):
    """What a ``count_when`` predicate sees of the response."""

    status_code: int
    headers: Sequence[tuple[str, str]] = ()


class Verdict:
    """What the rules decided for one request.

    Attributes:
        allowed: the request may go to the app.
        kind: ``"allowed"``, ``"safelisted"``, ``"blocked"``, ``"banned"``, ``"throttled"``,
            ``"challenged"`` (``Limiter.challenge``) or ``"shed"`` (``Limiter.admission``).
        rule: the name of the deciding rule (None when nothing decided).
        key: the discriminator of the deciding rule.
        decision: the deciding Decision (the refusing throttle's, or for an allowed
            request the most restrictive throttle's), None for list rules.
        policies: ``(policy name, Decision)`` of every throttle (not dry-run) that
            applied: what the rate-limit headers report.
        degraded: the storage failed and ``on_storage_error`` answered.
        request: the request view.
        answer: a response prepared by a step before the app (a challenge's redirect or
            page), which the responder sends as it is; None for the responder's refusals.
    """

    __slots__ = (
        "allowed", "answer", "decision", "degraded", "key", "kind", "pending", "policies",
        "request", "rule",
    )

    def __init__(
        self,
        allowed: bool,
        kind: str,
        rule: str | None,
        key: str | None,
        decision: Decision | None,
        policies: list[tuple[str, Decision]],
        degraded: bool,
        request: RequestView,
        pending: list[tuple[_Throttle, str, int]] | None = None,
        answer: Denial | None = None,
    ) -> None:
        # (in twos and threes: CPython stores those without building a tuple)
        self.allowed, self.kind, self.rule = allowed, kind, rule
        self.key, self.decision, self.policies = key, decision, policies
        self.degraded, self.request = degraded, request
        #: count_when charges to settle after the response
        self.pending, self.answer = pending, answer

    def __repr__(self) -> str:
        return (
            f"Verdict(allowed={self.allowed}, kind={self.kind!r}, rule={self.rule!r}, "
            f"key={self.key!r}, decision={self.decision!r}, degraded={self.degraded})"
        )


# -- rules ---------------------------------------------------------------------------------


#: The shared key of requests whose client address cannot be determined (no peer, garbage):
#: limited together rather than not at all, and never banned (a ban of it would be a ban of
#: everyone behind the socket; see docs/client-ip.md).
UNKNOWN_CLIENT = "unknown"


def limiter_defaults(lim: Limiter, strategy: str | None, burst: int | None
                     ) -> tuple[str, int | None]:
    """``strategy`` and ``burst`` as a limit of ``lim`` runs them: its strategy for None
    (None alone: "" is a bad name, which ``check_strategy`` refuses), and for a token bucket
    without a burst, its burst."""
    if strategy is None:
        strategy = lim.strategy
    if burst is None and strategy == "token_bucket":
        burst = lim.burst
    return strategy, burst


def client_key(view: RequestView) -> str:
    return view.client_key or UNKNOWN_CLIENT


def client_ip_key(view: RequestView) -> str:
    return view.client_ip or UNKNOWN_CLIENT


def key_function(key: str | KeyFunc | None, what: str) -> KeyFunc:
    """The key function of a rule: a callable, or a shortcut string."""
    if key is None or key == "client":
        return client_key
    if key == "ip":
        return client_ip_key
    if key == "global":
        return _global_key
    if key == "path":
        return _path_key
    if key == "user":  # the framework's user (see FrameworkView.user_id); None: not limited
        return user_key
    if key == "user_or_ip":
        return user_or_ip_key
    if isinstance(key, str) and key.lower().startswith("header:") and key[7:].strip():
        name = key[7:].strip().lower()
        if not _TOKEN.fullmatch(name):  # (a space or colon: no request could send it)
            raise ConfigError(f"{what}: key {key!r}: {name!r} is not an HTTP header name")

        def header_key(view: RequestView) -> str | None:
            return view.headers.get(name) or None

        return header_key
    if isinstance(key, str) and key.lower().startswith("form:") and key[5:].strip():
        field = key[5:].strip()

        def form_key(view: RequestView) -> str | None:
            return view.form.get(field) or None

        return reads_form(form_key)
    if callable(key):
        return key
    raise ConfigError(
        f"{what}: key must be a callable, 'client', 'ip', 'global', 'path', 'user', "
        f"'user_or_ip', 'header:<name>' or 'form:<field>', got {key!r}"
    )


#: an HTTP header name (RFC 9110's token)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")


def check_on_unreadable(value: object, what: str) -> None:
    if value not in ON_UNREADABLE:
        raise ConfigError(f"{what}: on_unreadable must be one of "
                          f"{', '.join(map(repr, ON_UNREADABLE))}, got {value!r}")


def _global_key(view: RequestView) -> str:
    return "*"


def _path_key(view: RequestView) -> str:
    return view.path


def _callable_or_none(value: Any, what: str) -> Any:
    if value is not None and not callable(value):
        raise ConfigError(f"{what} must be a callable, got {value!r}")
    return value


class _ListRule:
    __slots__ = ("ips", "name", "predicate")

    def __init__(self, name: str, predicate: Predicate | None, ips: IPSet | None) -> None:
        self.name = name
        self.predicate = predicate
        self.ips = ips


class _BanRule:
    __slots__ = (
        "algorithm", "bantime", "escalation", "findtime", "key", "kind", "match", "maxretry",
        "name", "prefix", "refuses",
    )

    def __init__(
        self, kind: str, name: str, match: Predicate, key: KeyFunc, maxretry: int,
        findtime: float, bantime: float, algorithm: Algorithm,
        escalation: Escalation | None = None,
    ) -> None:
        self.kind, self.name, self.match, self.key = kind, name, match, key
        self.maxretry, self.findtime, self.bantime = maxretry, findtime, bantime
        self.algorithm = algorithm
        #: the dynamic-blocklist key of a ban is ``prefix + discriminator``
        self.prefix = f"{kind}:{name}:"
        #: fail2ban refuses every matching request; allow2ban lets them through
        self.refuses = kind == "fail2ban"
        #: repeat offenders banned longer (None: every ban lasts ``bantime``)
        self.escalation = escalation

    def offence(self, ban_key: str) -> str:
        """The storage key of the chain of bans of ``ban_key`` (``prefix +
        discriminator``): the discriminator's family, which ``reset`` and ``unblock``
        forget with the rule counters (escalating rules only)."""
        return NS + ban_key[len(self.prefix):]


class _Throttle:
    __slots__ = ("algorithms", "batch", "burst", "cost", "count_when", "dry_run", "hit", "key",
                 "match", "name", "on_unreadable", "policy_names", "rates", "resolve", "simple",
                 "strategy", "variants", "where")

    def __init__(
        self, name: str, algorithms: tuple[Algorithm, ...], match: Predicate | None,
        key: KeyFunc, cost: int | Callable[[RequestView], int], dry_run: bool,
        count_when: Callable[[ResponseInfo], Any] | None, strategy: str, burst: int | None,
        on_unreadable: str = "client", storage: Storage | None = None,
        where: Where | None = None,
    ) -> None:
        self.name = name
        #: what the rule declares it matches (``methods=``, ``paths=``...), decided by the
        #: rule set's index before the rule is looked at (see ``_ruleindex``)
        self.where = where
        self.on_unreadable = on_unreadable
        self.algorithms = algorithms
        #: the store's bound hit of a one-rate rule on a local store (``Storage.bind``),
        #: bound once under ``NS``: ``evaluate`` calls it with the discriminator
        self.hit: BoundHit | None = None
        #: the store's bound batch of a rule of several rates on a local store
        #: (``Storage.bind_batch`` under ``NS``): ``_fast`` calls it with ``(discriminator,)``
        self.batch: BoundBatch | None = None
        if storage is not None and (not storage.remote or storage.local_hits):
            if len(algorithms) == 1:
                self.hit = storage.bind(algorithms[0], NS)
            else:
                self.batch = storage.bind_batch((algorithms,), NS)
        self.rates = tuple(a.rate for a in algorithms)
        self.match, self.key, self.cost, self.dry_run = match, key, cost, dry_run
        self.count_when, self.strategy, self.burst = count_when, strategy, burst
        #: a rule whose rates follow the caller (``throttle(rates=callable)``, plans): the
        #: function of the view, and its answers' throttles (:meth:`variant`); else None
        self.resolve: Callable[[RequestView], Any] | None = None
        self.variants: Variants | None = None
        #: every request counts, per client, at a fixed cost: the engine's common case
        #: reads the client key itself (see Engine.evaluate)
        self.simple = match is None and key is client_key and cost.__class__ is int
        # The first rate's policy is the rule's name ("per-ip"); further rates of the same
        # rule need their own policy names ("per-ip/1" for its per-second rate).
        self.policy_names: tuple[str, ...] = (name, *(f"{name}/{_seconds(a.rate)}"
                                                      for a in algorithms[1:]))

    def variant(self, engine: Any, view: RequestView) -> _Throttle | None:
        """The throttle of this request's own rates (a rule with a rates function), under
        the rule's counters (ids of name, strategy and period: a new plan keeps the count);
        None when the function raised or answered bad rates (``engine.rule_error``)."""
        try:
            return self.variants.of(self.resolve(view))  # type: ignore[union-attr, misc, no-any-return]
        except Exception as exc:
            engine.rule_error("throttle", self.name, exc, "rates function")
            return None


def _throttle_algorithms(
    name: str, rates: Any, strategy: str, burst: int | None, what: str
) -> tuple[Algorithm, ...]:
    base = f"r:{escape_name(name)}"
    algorithms = []
    for rate in coerce_rates(rates):
        alg = make_algorithm(strategy, rate, burst)
        alg.id = f"{base}:{alg.code}{rate.period_us}"
        alg.rerated = True
        algorithms.append(alg)
    if len({a.id for a in algorithms}) != len(algorithms):
        raise ConfigError(f"{what}: two rates with the same period in {rates!r}")
    return tuple(algorithms)


def _seconds(rate: Rate) -> str:
    p = rate.period
    return str(int(p)) if p == int(p) else str(p)


def _plain(rule: _Throttle) -> bool:
    """A throttle the engine's common case decides: it refuses, and is charged at once."""
    return not rule.dry_run and rule.count_when is None


class _Track:
    __slots__ = ("key", "match", "name")

    def __init__(self, name: str, match: Predicate | None, key: KeyFunc) -> None:
        self.name = name
        self.match = match
        self.key = key


class _RuleFailed(Exception):
    """A predicate, key or cost function raised under ``on_storage_error="deny"``, or a
    throttle with ``on_unreadable="refuse"`` could not read its key (not degraded)."""

    def __init__(self, kind: str, rule: str, degraded: bool = True) -> None:
        self.kind = kind
        self.rule = rule
        self.degraded = degraded


# -- the rule set ------------------------------------------------------------------------


class Rules:
    """The rules of one limiter (``limiter.engine.rules``). Registration is copy-on-write:
    each kind's tuple is replaced whole, and a rule's flags (``fast``, ``needs_form``) are set
    before the rule is published, so an evaluation in another thread needs no lock. A
    rules-file reload builds a new ``Rules`` (``without`` the file's old rules) and swaps it
    in whole."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.safelists: tuple[_ListRule, ...] = ()
        self.blocklists: tuple[_ListRule, ...] = ()
        self.bans: tuple[_BanRule, ...] = ()
        self.throttles: tuple[_Throttle, ...] = ()
        self.tracks: tuple[_Track, ...] = ()
        self.names: dict[str, str] = {}
        #: some rule reads ``view.form``, a concurrency rule included (the ASGI middleware
        #: then reads small form bodies first)
        self.needs_form = False
        #: no bans, dry-run or count_when throttles: the engine's common case applies
        self.fast = True
        #: the throttles by what they declare they match; None when none declares anything
        #: (every throttle is then a candidate). A rule is published as ``fast`` (cleared if
        #: need be), then ``index``, then ``throttles``; readers go the other way round
        #: (``throttles``, ``index``, ``fast``), so a rule added by another thread meanwhile is
        #: never decided as plain, nor asked without its conditions.
        self.index: RuleIndex | None = None
        #: replaced by a reload: registration goes to the rules in force (_registration)
        self.stale = False
        self.overrides: dict[str, Override] = {}  # set_rule_rates' (see _registration)

    def without(self, names: frozenset[str] | set[str]) -> Rules:
        """A copy without the rules named ``names``, its flags derived from what is left."""
        new = Rules(self.limiter)
        new.safelists = tuple(r for r in self.safelists if r.name not in names)
        new.blocklists = tuple(r for r in self.blocklists if r.name not in names)
        new.bans = tuple(r for r in self.bans if r.name not in names)
        new.throttles = tuple(r for r in self.throttles if r.name not in names)
        new.index = _index_of(new.throttles)
        new.tracks = tuple(r for r in self.tracks if r.name not in names)
        new.names = {n: k for n, k in self.names.items() if n not in names}
        new.overrides = dict(self.overrides)  # (a reload re-applies the file rules')
        new.needs_form = (
            any(uses_form(r.predicate) for r in (*new.safelists, *new.blocklists))
            or any(uses_form(r.match, r.key) for r in new.bans)
            or any(uses_form(r.match, r.key, r.cost) for r in new.throttles)
            or any(uses_form(r.match, r.key) for r in new.tracks)
        )
        new.fast = not new.bans and all(_plain(t) for t in new.throttles)
        return new

    # -- registration ------------------------------------------------------------------

    def _name(self, name: object, kind: str) -> str:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a rule name must be a non-empty string, got {name!r}")
        if name in self.names:
            raise ConfigError(f"duplicate rule name {name!r} (already a {self.names[name]})")
        return name

    @registering
    def add_list(
        self, kind: str, name: str, predicate: Predicate | None,
        ips: Iterable[str] | None,
    ) -> None:
        name = self._name(name, kind)
        _callable_or_none(predicate, f"{kind} {name!r}: predicate")
        if isinstance(ips, str):
            raise ConfigError(f"{kind} {name!r}: ips must be a list of addresses/CIDRs, "
                              f"not the string {ips!r}")
        ipset = IPSet(ips) if ips is not None else None
        if predicate is None and ipset is None:
            raise ConfigError(f"{kind} {name!r} needs a predicate or ips=")
        rule = _ListRule(name, predicate, ipset)
        self.needs_form = self.needs_form or uses_form(predicate)
        if kind == "safelist":
            self.safelists = (*self.safelists, rule)
        else:
            self.blocklists = (*self.blocklists, rule)
        self.names[name] = kind

    @registering
    def add_ban(
        self, kind: str, name: str, match: Predicate, maxretry: int, findtime: float,
        bantime: float, key: str | KeyFunc | None, escalate: Escalate = False,
    ) -> None:
        name = self._name(name, kind)
        if not callable(match):
            raise ConfigError(f"{kind} {name!r}: match must be a callable, got {match!r}")
        if isinstance(maxretry, bool) or not isinstance(maxretry, int) or maxretry < 1:
            raise ConfigError(f"{kind} {name!r}: maxretry must be a positive integer, "
                              f"got {maxretry!r}")
        for what, value in (("findtime", findtime), ("bantime", bantime)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                0 < value <= MAX_PERIOD  # also refuses nan and inf
            ):
                raise ConfigError(f"{kind} {name!r}: {what} must be a positive number of "
                                  f"seconds, at most ten years, got {value!r}")
        keyf = key_function(key, f"{kind} {name!r}")
        # The counter is an exact sliding log: "maxretry matches within findtime", no
        # more and no fewer (a fixed window would allow twice that across its boundary, a
        # weighted counter could ban early). Its memory is bounded by maxretry.
        rate = Rate(maxretry, float(findtime))
        storage = self.limiter.storage
        strategy = "sliding_log"
        alg = make_algorithm(
            strategy, rate, None, id=f"b:{escape_name(name)}:{kind}:{rate.period_us}"
        )
        if storage.unsupported(strategy) or storage.unsupported_algorithm(alg):
            strategy = "fixed_window"  # what the store can count exactly
            alg = make_algorithm(
                strategy, rate, None, id=f"b:{escape_name(name)}:{kind}:{rate.period_us}"
            )
        escalation = Escalation.of(escalate, float(bantime), f"o:{escape_name(name)}",
                                   f"{kind} {name!r}", storage)
        rule = _BanRule(kind, name, match, keyf, maxretry, float(findtime), float(bantime), alg,
                        escalation)
        self.needs_form = self.needs_form or uses_form(match, keyf)
        self.fast = False
        self.bans = (*self.bans, rule)
        self.names[name] = kind

    @registering
    def add_throttle(
        self, name: str, rates: Any, match: Predicate | None, key: str | KeyFunc | None,
        strategy: str | None, cost: int | Callable[[RequestView], int] | None,
        burst: int | None, dry_run: bool, count_when: Callable[[ResponseInfo], Any] | None,
        on_unreadable: str = "client", **conditions: Any,
    ) -> None:
        """Register a throttle; ``conditions``: ``methods``, ``paths``, ``path_prefix``,
        ``hosts`` (see ``Limiter.throttle``)."""
        name = self._name(name, "throttle")
        what = f"throttle {name!r}"
        check_on_unreadable(on_unreadable, what)
        where = where_of(what=what, **conditions)
        _callable_or_none(match, f"{what}: match")
        _callable_or_none(count_when, f"{what}: count_when")
        keyf = key_function(key, what)
        lim = self.limiter
        strategy, burst = limiter_defaults(lim, strategy, burst)
        check_strategy(strategy, lim.storage)
        if cost is None:
            cost = 1
        elif not callable(cost) and (
            isinstance(cost, bool) or not isinstance(cost, int) or cost < 0
        ):
            raise ConfigError(f"{what}: cost must be an integer >= 0 or a callable, "
                              f"got {cost!r}")
        if not isinstance(dry_run, bool):
            raise ConfigError(f"{what}: dry_run must be True or False, got {dry_run!r}")

        def build(rates: Any, storage: Storage | None = lim.store) -> _Throttle:
            algorithms = _throttle_algorithms(name, rates, strategy, burst, what)
            self._check_supported(algorithms, strategy, what)
            return _Throttle(name, algorithms, match, keyf, cost, dry_run, count_when,
                             strategy, burst, on_unreadable, storage, where)

        rule = build(rates) if not callable(rates) else resolved(build, rates, what)
        self.needs_form = self.needs_form or uses_form(match, keyf, cost, rates)
        self.fast = self.fast and _plain(rule)
        self._publish((*self.throttles, rule))
        self.names[name] = "throttle"

    def _check_supported(self, algorithms: Sequence[Algorithm], strategy: str, what: str) -> None:
        """What the store cannot run is refused now, never at request time."""
        storage = self.limiter.storage
        for alg in algorithms:
            why = storage.unsupported_algorithm(alg)
            if why:
                raise ConfigError(f"{what}: strategy {strategy!r} at {alg.rate} is not "
                                  f"available: {why}")

    @registering
    def set_throttle_rates(self, name: str, rates: Any) -> tuple[Rate, ...]:
        """Replace the rates of throttle ``name`` (its state carries over for the periods
        kept); returns the previous rates."""
        old = next((t for t in self.throttles if t.name == name), None)
        if old is None or old.resolve is not None:
            raise ConfigError(f"no throttle rule named {name!r} with rates of its own")
        algorithms = _throttle_algorithms(
            name, rates, old.strategy, old.burst, f"throttle {name!r}"
        )
        self._check_supported(algorithms, old.strategy, f"throttle {name!r}")
        new = _Throttle(name, algorithms, old.match, old.key, old.cost, old.dry_run,
                        old.count_when, old.strategy, old.burst, old.on_unreadable,
                        self.limiter.store, old.where)
        self._publish(tuple(new if t is old else t for t in self.throttles))
        return old.rates

    def candidates(self, view: RequestView) -> tuple[_Throttle, ...]:
        """The throttles whose declared conditions hold for ``view``, in registration order
        (every throttle when none declares any). Reads ``throttles`` then ``index``."""
        throttles = self.throttles
        index = self.index
        return throttles if index is None else index.candidates(view)

    def _publish(self, throttles: tuple[_Throttle, ...]) -> None:
        # the index first: an evaluation reads ``throttles`` then ``index``
        self.index = _index_of(throttles, self.index)
        self.throttles = throttles

    @registering
    def add_track(self, name: str, match: Predicate | None, key: str | KeyFunc | None) -> None:
        name = self._name(name, "track")
        _callable_or_none(match, f"track {name!r}: match")
        keyf = key_function(key, f"track {name!r}")
        self.needs_form = self.needs_form or uses_form(match, keyf)
        self.tracks = (*self.tracks, _Track(name, match, keyf))
        self.names[name] = "track"

    def offence(self, ban_key: str) -> tuple[Escalation, str] | None:
        """The escalation of the rule making the ban ``ban_key`` and the storage key of the
        chain of the key's bans (None: the ban lasts its rule's ``bantime``)."""
        found = self.ban_rule_of(ban_key)
        if found is None or found[0].escalation is None:
            return None
        return found[0].escalation, found[0].offence(ban_key)

    def ban_rule_of(self, key: str) -> tuple[_BanRule, str] | None:
        """The ban rule and discriminator a dynamic-blocklist key was made by, if any."""
        for rule in self.bans:
            if key.startswith(rule.prefix):
                return rule, key[len(rule.prefix):]
        return None


def _index_of(throttles: tuple[_Throttle, ...], old: RuleIndex | None = None
              ) -> RuleIndex | None:
    """The index of ``throttles``: None while no rule declares conditions (and none did:
    an index once published stays, so a reader never meets a rule it should skip)."""
    if old is None and all(t.where is None for t in throttles):
        return None
    return RuleIndex(throttles)
