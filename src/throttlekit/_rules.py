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
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ._algorithms import Algorithm, make_algorithm
from ._decision import Decision, most_restrictive
from ._errors import ConfigError
from ._events import Event, EventCallback, Listeners
from ._ipset import IPSet
from ._keys import MAX_KEY_LENGTH, UNREADABLE_PREFIX, rule_key
from ._rates import MAX_PERIOD, Rate, coerce_rates
from ._request import _UNSET, _UnreadableForm
from ._resilience import ResilientStore, deny_decision
from .storage.base import BatchResult, Block, BoundBatch, BoundHit, Check, Storage

if TYPE_CHECKING:
    from ._denials import DenialCache
    from ._limiter import Limiter
    from ._request import RequestView

__all__ = [
    "DYNAMIC_RULE",
    "STORAGE_RULE",
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
        kind: ``"allowed"``, ``"safelisted"``, ``"blocked"``, ``"banned"`` or ``"throttled"``.
        rule: the name of the deciding rule (None when nothing decided).
        key: the discriminator of the deciding rule.
        decision: the deciding Decision (the refusing throttle's, or for an allowed
            request the most restrictive throttle's), None for list rules.
        policies: ``(policy name, Decision)`` of every throttle (not dry-run) that
            applied: what the rate-limit headers report.
        degraded: the storage failed and ``on_storage_error`` answered.
        request: the request view.
    """

    __slots__ = (
        "allowed", "decision", "degraded", "key", "kind", "pending", "policies", "request",
        "rule",
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
    ) -> None:
        self.allowed = allowed
        self.kind = kind
        self.rule = rule
        self.key = key
        self.decision = decision
        self.policies = policies
        self.degraded = degraded
        self.request = request
        #: count_when charges to settle after the response
        self.pending = pending

    def __repr__(self) -> str:
        return (
            f"Verdict(allowed={self.allowed}, kind={self.kind!r}, rule={self.rule!r}, "
            f"key={self.key!r}, decision={self.decision!r}, degraded={self.degraded})"
        )


_new_object = object.__new__


def _allowed(decision: Decision | None, policies: list[tuple[str, Decision]],
             view: RequestView) -> Verdict:
    """``Verdict(True, "allowed", None, None, decision, policies, False, view)``, without
    the cost of a call to ``__init__`` (the fast path makes one per request)."""
    v = _new_object(Verdict)
    v.allowed = True
    v.kind = "allowed"
    v.rule = None
    v.key = None
    v.decision = decision
    v.policies = policies
    v.degraded = False
    v.request = view
    v.pending = None
    return v


# -- rules ---------------------------------------------------------------------------------


#: The shared key of requests whose client address cannot be determined (no peer, garbage):
#: limited together rather than not at all, and never banned (a ban of it would be a ban of
#: everyone behind the socket; see docs/client-ip.md).
UNKNOWN_CLIENT = "unknown"


def _client_key(view: RequestView) -> str:
    return view.client_key or UNKNOWN_CLIENT


def _client_ip(view: RequestView) -> str:
    return view.client_ip or UNKNOWN_CLIENT


def _key_func(key: str | KeyFunc | None, what: str) -> KeyFunc:
    """The key function of a rule: a callable, or a shortcut string."""
    if key is None or key == "client":
        return _client_key
    if key == "ip":
        return _client_ip
    if key == "global":
        return _global_key
    if key == "path":
        return _path_key
    if isinstance(key, str) and key.lower().startswith("header:") and key[7:].strip():
        name = key[7:].strip().lower()

        def header_key(view: RequestView) -> str | None:
            return view.headers.get(name) or None

        return header_key
    if isinstance(key, str) and key.lower().startswith("form:") and key[5:].strip():
        field = key[5:].strip()

        def form_key(view: RequestView) -> str | None:
            return view.form.get(field) or None

        return form_key
    if callable(key):
        return key
    raise ConfigError(
        f"{what}: key must be a callable, 'client', 'ip', 'global', 'path', "
        f"'header:<name>' or 'form:<field>', got {key!r}"
    )


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


def _uses_form(*functions: Any) -> bool:
    """Whether a predicate or key function reads ``view.form`` (by its code's names).

    An ASGI middleware must read the body before the rules run for ``form`` to have
    anything in it; this spares every other request that cost.
    """
    for fn in functions:
        code = getattr(fn, "__code__", None)
        if code is not None and "form" in code.co_names:
            return True
    return False


class _ListRule:
    __slots__ = ("ips", "name", "predicate")

    def __init__(self, name: str, predicate: Predicate | None, ips: IPSet | None) -> None:
        self.name = name
        self.predicate = predicate
        self.ips = ips


class _BanRule:
    __slots__ = (
        "algorithm", "bantime", "findtime", "key", "kind", "match", "maxretry", "name",
        "prefix", "refuses",
    )

    def __init__(
        self, kind: str, name: str, match: Predicate, key: KeyFunc, maxretry: int,
        findtime: float, bantime: float, algorithm: Algorithm,
    ) -> None:
        self.kind = kind
        self.name = name
        self.match = match
        self.key = key
        self.maxretry = maxretry
        self.findtime = findtime
        self.bantime = bantime
        self.algorithm = algorithm
        #: the dynamic-blocklist key of a ban is ``prefix + discriminator``
        self.prefix = f"{kind}:{name}:"
        #: fail2ban refuses every matching request; allow2ban lets them through
        self.refuses = kind == "fail2ban"


class _Throttle:
    __slots__ = (
        "algorithms",
        "batch",
        "burst",
        "cost",
        "count_when",
        "dry_run",
        "hit",
        "key",
        "match",
        "name",
        "on_unreadable",
        "policy_names",
        "rates",
        "strategy",
    )

    def __init__(
        self, name: str, algorithms: tuple[Algorithm, ...], match: Predicate | None,
        key: KeyFunc, cost: int | Callable[[RequestView], int], dry_run: bool,
        count_when: Callable[[ResponseInfo], Any] | None, strategy: str, burst: int | None,
        on_unreadable: str = "client", storage: Storage | None = None,
    ) -> None:
        self.name = name
        self.on_unreadable = on_unreadable
        self.algorithms = algorithms
        #: the store's bound hit of a one-rate rule on a local store (``Storage.bind``),
        #: bound once: ``_fast`` calls it with ``NS + discriminator``
        self.hit: BoundHit | None = None
        #: the store's bound batch of a rule of several rates on a local store
        #: (``Storage.bind_batch`` under ``NS``): ``_fast`` calls it with ``(discriminator,)``
        self.batch: BoundBatch | None = None
        if storage is not None and not storage.remote:
            if len(algorithms) == 1:
                self.hit = storage.bind(algorithms[0])
            else:
                self.batch = storage.bind_batch((algorithms,), NS)
        self.rates = tuple(a.rate for a in algorithms)
        self.match = match
        self.key = key
        self.cost = cost
        self.dry_run = dry_run
        self.count_when = count_when
        self.strategy = strategy
        self.burst = burst
        # The first rate's policy is the rule's name ("per-ip"); further rates of the same
        # rule need their own policy names ("per-ip/1" for its per-second rate).
        self.policy_names: tuple[str, ...] = (
            name, *(f"{name}/{_seconds(a.rate)}" for a in algorithms[1:])
        )


def _throttle_algorithms(
    name: str, rates: Any, strategy: str, burst: int | None, what: str
) -> tuple[Algorithm, ...]:
    base = f"r:{escape_name(name)}"
    algorithms = []
    for rate in coerce_rates(rates):
        alg = make_algorithm(strategy, rate, burst)
        alg.id = f"{base}:{alg.code}{rate.period_us}"
        algorithms.append(alg)
    if len({a.id for a in algorithms}) != len(algorithms):
        raise ConfigError(f"{what}: two rates with the same period in {rates!r}")
    return tuple(algorithms)


def _seconds(rate: Rate) -> str:
    p = rate.period
    return str(int(p)) if p == int(p) else str(p)


class _Track:
    __slots__ = ("key", "match", "name")

    def __init__(self, name: str, match: Predicate | None, key: KeyFunc) -> None:
        self.name = name
        self.match = match
        self.key = key


class _Plan:
    """One request between the rules' local work and the storage's answer."""

    __slots__ = ("bans", "block_keys", "checks", "epoch", "n_user", "no_ban", "recheck",
                 "refuse_ban", "throttles", "view")

    def __init__(self, view: RequestView) -> None:
        self.view = view
        #: the denial cache's epoch before the store call (see DenialCache.remember)
        self.epoch = 0
        #: a cached refusal was found, but the store's generation must be read first
        self.recheck = False
        self.checks: list[Check] = []
        self.block_keys: list[str] = []
        self.n_user = 0
        #: (rule, discriminator, index of its counter check or -1)
        self.bans: list[tuple[_BanRule, str, int]] = []
        #: a fail2ban rule whose filter matched: the request is refused whatever happens
        self.refuse_ban: tuple[_BanRule, str, int] | None = None
        #: indexes in ``bans`` of rules keyed by a client IP this request lacks: they refuse
        #: the request that trips them and ban no key
        self.no_ban: list[int] | None = None
        #: (rule, discriminator, cost, index of its first check)
        self.throttles: list[tuple[_Throttle, str, int, int]] = []


class _RuleFailed(Exception):
    """A predicate, key or cost function raised under ``on_storage_error="deny"``, or a
    throttle with ``on_unreadable="refuse"`` could not read its key (not degraded)."""

    def __init__(self, kind: str, rule: str, degraded: bool = True) -> None:
        self.kind = kind
        self.rule = rule
        self.degraded = degraded


# -- the engine ----------------------------------------------------------------------------


class Rules:
    """The rules of one limiter and their evaluation. Registration is copy-on-write
    (tuples replaced whole), so evaluation needs no lock."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.safelists: tuple[_ListRule, ...] = ()
        self.blocklists: tuple[_ListRule, ...] = ()
        self.bans: tuple[_BanRule, ...] = ()
        self.throttles: tuple[_Throttle, ...] = ()
        self.tracks: tuple[_Track, ...] = ()
        self.names: dict[str, str] = {}
        #: with the local denial cache: the rate-limit policies of a cached refusal, so a
        #: repeated 429 carries the same header fields as the first
        self._refusal_policies: dict[
            tuple[_Throttle, str], tuple[int, list[tuple[str, Decision]]]
        ] = {}
        self.listeners = Listeners(limiter.error_log_interval)
        #: some rule reads ``view.form`` (the ASGI middleware then reads form bodies first)
        self.needs_form = False
        #: no bans, dry-run or count_when throttles: ``_fast`` may answer
        self.fast = True
        #: the throttles applying to a request (when several) -> the store's bound batch
        #: of their algorithms (``Storage.bind_batch``), bound on first use
        self._batches: dict[tuple[_Throttle, ...], tuple[BoundBatch, tuple[str, ...]]] = {}
        self._last_log: dict[str, float] = {}
        self._warned_unreadable: set[str] = set()
        #: the warning about requests without a client IP was logged
        self._warned_no_ip = False

    # -- registration ------------------------------------------------------------------

    def _name(self, name: object, kind: str) -> str:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a rule name must be a non-empty string, got {name!r}")
        if name in self.names:
            raise ConfigError(f"duplicate rule name {name!r} (already a {self.names[name]})")
        return name

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
        self.needs_form = self.needs_form or _uses_form(predicate)
        if kind == "safelist":
            self.safelists = (*self.safelists, rule)
        else:
            self.blocklists = (*self.blocklists, rule)
        self.names[name] = kind

    def add_ban(
        self, kind: str, name: str, match: Predicate, maxretry: int, findtime: float,
        bantime: float, key: str | KeyFunc | None,
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
        keyf = _key_func(key, f"{kind} {name!r}")
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
        rule = _BanRule(kind, name, match, keyf, maxretry, float(findtime), float(bantime), alg)
        self.needs_form = self.needs_form or _uses_form(match, keyf)
        self.bans = (*self.bans, rule)
        self.fast = False
        self.names[name] = kind

    def add_throttle(
        self, name: str, rates: Any, match: Predicate | None, key: str | KeyFunc | None,
        strategy: str | None, cost: int | Callable[[RequestView], int] | None,
        burst: int | None, dry_run: bool, count_when: Callable[[ResponseInfo], Any] | None,
        on_unreadable: str = "client",
    ) -> None:
        name = self._name(name, "throttle")
        what = f"throttle {name!r}"
        check_on_unreadable(on_unreadable, what)
        _callable_or_none(match, f"{what}: match")
        _callable_or_none(count_when, f"{what}: count_when")
        keyf = _key_func(key, what)
        lim = self.limiter
        strategy = strategy or lim.strategy
        lim._check_strategy(strategy)
        if burst is None and strategy == "token_bucket":
            burst = lim.burst
        if cost is None:
            cost = 1
        elif not callable(cost) and (
            isinstance(cost, bool) or not isinstance(cost, int) or cost < 0
        ):
            raise ConfigError(f"{what}: cost must be an integer >= 0 or a callable, "
                              f"got {cost!r}")
        if not isinstance(dry_run, bool):
            raise ConfigError(f"{what}: dry_run must be True or False, got {dry_run!r}")
        algorithms = _throttle_algorithms(name, rates, strategy, burst, what)
        self._check_supported(algorithms, strategy, what)
        rule = _Throttle(name, algorithms, match, keyf, cost, dry_run, count_when,
                         strategy, burst, on_unreadable, lim.storage)
        self.needs_form = self.needs_form or _uses_form(match, keyf, cost)
        self.throttles = (*self.throttles, rule)
        if dry_run or count_when is not None:
            self.fast = False
        self.names[name] = "throttle"

    def _check_supported(self, algorithms: Sequence[Algorithm], strategy: str, what: str) -> None:
        """What the store cannot run is refused now, never at request time."""
        storage = self.limiter.storage
        for alg in algorithms:
            why = storage.unsupported_algorithm(alg)
            if why:
                raise ConfigError(f"{what}: strategy {strategy!r} at {alg.rate} is not "
                                  f"available: {why}")

    def set_throttle_rates(self, name: str, rates: Any) -> tuple[Rate, ...]:
        """Replace the rates of throttle ``name`` (its state carries over for the periods
        kept); returns the previous rates."""
        old = next((t for t in self.throttles if t.name == name), None)
        if old is None:
            raise ConfigError(f"no throttle rule named {name!r}")
        algorithms = _throttle_algorithms(
            name, rates, old.strategy, old.burst, f"throttle {name!r}"
        )
        self._check_supported(algorithms, old.strategy, f"throttle {name!r}")
        new = _Throttle(name, algorithms, old.match, old.key, old.cost, old.dry_run,
                        old.count_when, old.strategy, old.burst, old.on_unreadable,
                        self.limiter.storage)
        self.throttles = tuple(new if t is old else t for t in self.throttles)
        return old.rates

    def add_track(self, name: str, match: Predicate | None, key: str | KeyFunc | None) -> None:
        name = self._name(name, "track")
        _callable_or_none(match, f"track {name!r}: match")
        keyf = _key_func(key, f"track {name!r}")
        self.needs_form = self.needs_form or _uses_form(match, keyf)
        self.tracks = (*self.tracks, _Track(name, match, keyf))
        self.names[name] = "track"

    def ban_rule_of(self, key: str) -> tuple[_BanRule, str] | None:
        """The ban rule and discriminator a dynamic-blocklist key was made by, if any."""
        for rule in self.bans:
            if key.startswith(rule.prefix):
                return rule, key[len(rule.prefix):]
        return None

    # -- failures ----------------------------------------------------------------------

    def _rule_error(self, kind: str, rule: str, exc: BaseException, what: str) -> None:
        """A user function raised: log (rate-limited per rule), then skip the rule, or
        refuse the request under ``on_storage_error="deny"``."""
        lim = self.limiter
        mono = time.monotonic()
        if mono - self._last_log.get(rule, -1e18) >= lim.error_log_interval:
            self._last_log[rule] = mono
            logger.error(
                "throttlekit: the %s of %s rule %r raised %s: %s; on_storage_error=%r",
                what, kind, rule, type(exc).__name__, exc, lim.on_storage_error,
            )
        if lim.on_storage_error == "deny" and kind != "safelist" and kind != "track":
            raise _RuleFailed(kind, rule) from None

    # -- evaluation --------------------------------------------------------------------

    def _plan(self, view: RequestView) -> _Plan | Verdict:
        """Everything that needs no storage: list rules, keys, costs, the checks."""
        active = self.listeners.active
        for lrule in self.safelists:
            if self._list_match(lrule, view, "safelist"):
                if "safelisted" in active:
                    self._emit("safelisted", lrule.name, None, view, None, False)
                return Verdict(True, "safelisted", lrule.name, None, None, [], False, view)
        for lrule in self.blocklists:
            if self._list_match(lrule, view, "blocklist"):
                if "blocked" in active:
                    self._emit("blocked", lrule.name, None, view, None, False)
                return Verdict(False, "blocked", lrule.name, None, None, [], False, view)

        p = _Plan(view)
        checks = p.checks
        block_keys = p.block_keys
        ip = view.client_ip
        if ip is not None:
            block_keys.append(ip)
        ck = view.client_key
        if ck is not None and ck != ip:
            block_keys.append(ck)
        p.n_user = len(block_keys)

        for brule in self.bans:
            try:
                disc = brule.key(view)
                if disc is None:
                    if view._form.__class__ is not _UnreadableForm:
                        continue  # the rule does not apply to this request
                    # a key that cannot be read never lets a request past a ban rule:
                    # count it under its client (as a throttle's on_unreadable="client")
                    ck = view.client_key
                    disc = UNREADABLE_PREFIX + (ck or UNKNOWN_CLIENT)
                    no_ip = ck is None
                else:
                    disc = rule_key(disc if disc.__class__ is str else str(disc))
                    no_ip = disc is UNKNOWN_CLIENT and (
                        brule.key is _client_key or brule.key is _client_ip
                    )
                matched = brule.match(view)
            except Exception as exc:
                self._rule_error(brule.kind, brule.name, exc, "key or match function")
                continue
            if no_ip:  # a client without an IP: refused when it trips the rule, never banned
                self._no_client_ip()
                if p.no_ban is None:
                    p.no_ban = []
                p.no_ban.append(len(p.bans))
            block_keys.append(brule.prefix + disc)
            idx = -1
            if matched:
                idx = len(checks)
                checks.append(Check(brule.algorithm, NS + disc, 1, True))
                if brule.refuses and p.refuse_ban is None:
                    p.refuse_ban = (brule, disc, idx)
            p.bans.append((brule, disc, idx))

        if p.refuse_ban is not None:
            # refused whatever the storage says: charge no throttle for it
            return p
        throttles = p.throttles
        for rule in self.throttles:
            applies = self._applies(rule, view)
            if applies is None:
                continue
            disc, cost = applies
            skey = NS + disc
            throttles.append((rule, disc, cost, len(checks)))
            # A count_when rule is only tested here (a probe: decided with its cost, never
            # charged); it is charged after the response (see settle).
            indep = rule.dry_run
            probe = rule.count_when is not None
            for alg in rule.algorithms:
                checks.append(_new(Check, (alg, skey, cost, indep, probe)))
        return p

    def _applies(self, rule: _Throttle, view: RequestView) -> tuple[str, int] | None:
        """The discriminator and cost of ``rule`` for this request, or None when it does not
        apply (no match, a key of None from a readable request, or a match or cost function
        that raised: logged, see ``_rule_error``). A key that cannot be read (the key
        function raised, or returned None from a request whose form is unreadable) follows
        the rule's ``on_unreadable``."""
        match = rule.match
        if match is not None:
            try:
                if not match(view):
                    return None
            except Exception as exc:
                self._rule_error("throttle", rule.name, exc, "match function")
                return None
        key = rule.key
        if key is _client_key:  # the default key, inlined (view.client_key cached)
            disc = view._client_key
            if disc is _UNSET:
                disc = view.client_key
            if not disc:
                disc = UNKNOWN_CLIENT
                self._no_client_ip()
        else:
            try:
                disc = key(view)
            except Exception as exc:
                self._rule_error("throttle", rule.name, exc, "key function")
                disc = self._unreadable_key(rule, view)
            else:
                if disc is None:
                    if view._form.__class__ is not _UnreadableForm:
                        return None  # the rule does not apply to this request
                    disc = self._unreadable_key(rule, view)
                else:
                    if disc.__class__ is not str:
                        disc = str(disc)
                    elif disc is UNKNOWN_CLIENT and key is _client_ip:
                        self._no_client_ip()
                    # rule_key's test, inlined (not ASCII: rule_key checks it encodes)
                    if len(disc) > MAX_KEY_LENGTH or disc[:1] == "#" or not disc.isascii():
                        disc = rule_key(disc)
        cost = rule.cost
        if cost.__class__ is not int:
            try:
                cost = cost(view)  # type: ignore[operator]
                if cost.__class__ is not int or cost < 0:
                    raise TypeError(f"cost must be an integer >= 0, got {cost!r}")
            except Exception as exc:
                self._rule_error("throttle", rule.name, exc, "cost function")
                return None
        return disc, cost

    def _unreadable_key(self, rule: _Throttle, view: RequestView) -> str:
        """The discriminator of a request whose key cannot be read: its client's, in a
        namespace of its own; or refuse it (``on_unreadable="refuse"``). Warns once per
        rule."""
        refuse = rule.on_unreadable == "refuse"
        if rule.name not in self._warned_unreadable:
            self._warned_unreadable.add(rule.name)
            logger.warning(
                "throttlekit: throttle %r could not read its key from a request (a body "
                "over max_form_bytes, unparsable or of a type not read, or a key function "
                "that raised); %s (on_unreadable=%r; logged once per rule)",
                rule.name,
                "refusing such requests" if refuse
                else "counting such requests per client instead", rule.on_unreadable,
            )
        if refuse:
            raise _RuleFailed("throttle", rule.name, degraded=False)
        return UNREADABLE_PREFIX + (view.client_key or UNKNOWN_CLIENT)

    def _no_client_ip(self) -> None:
        """A rule keyed by the client met a request without a client IP: say once how to
        give such clients keys of their own."""
        if not self._warned_no_ip:
            self._warned_no_ip = True
            logger.warning(
                "throttlekit: a request without a client IP (a Unix socket and no trusted "
                "proxy?): throttles keyed by client count it under the key %r, which all such "
                "requests share, and fail2ban/allow2ban refuse it when it trips them but ban "
                "no key. Set trusted_proxies (the number of proxies in front of the app, or "
                "their networks plus \"unix\") so each client gets its own key; see "
                "docs/client-ip.md", UNKNOWN_CLIENT,
            )

    def _list_match(self, rule: _ListRule, view: RequestView, kind: str) -> bool:
        ips = rule.ips
        if ips is not None:
            ip = view.client_ip
            if ip is None or ip not in ips:
                return False
        predicate = rule.predicate
        if predicate is None:
            return True
        try:
            return bool(predicate(view))
        except Exception as exc:
            self._rule_error(kind, rule.name, exc, "predicate")
            return False

    @staticmethod
    def _banned(
        p: _Plan, decisions: list[Decision], blocked: list[Block | None],
        new_bans: list[tuple[str, float, str]],
    ) -> tuple[_BanRule, str, Decision | None] | None:
        """The ban that refuses this request, if any; the bans to make go to ``new_bans``."""
        banned: tuple[_BanRule, str, Decision | None] | None = None
        no_ban = p.no_ban
        for j, (brule, disc, idx) in enumerate(p.bans):
            k = p.n_user + j
            b = blocked[k] if k < len(blocked) else None
            if no_ban is not None and j in no_ban:
                # no client IP: never banned; the request that trips the rule is refused
                if idx >= 0 and banned is None:
                    d = decisions[idx]
                    if not d.allowed or d.remaining <= 0:
                        banned = (brule, disc, d)
                continue
            if b is not None:
                if banned is None:
                    banned = (brule, disc, None)
                continue
            if idx >= 0:
                d = decisions[idx]
                if not d.allowed or d.remaining <= 0:
                    # allow2ban: the request that reaches maxretry still goes through;
                    # fail2ban refused it already (refuse_ban)
                    new_bans.append((brule.prefix + disc, brule.bantime,
                                     f"{brule.kind} {brule.name}"))
        if banned is None and p.refuse_ban is not None:
            brule, disc, idx = p.refuse_ban
            banned = (brule, disc, decisions[idx])
        return banned

    def _finish(self, p: _Plan, result: BatchResult) -> tuple[
        Verdict, list[tuple[str, float, str]]
    ]:
        """Read the storage's answer: the verdict, and the bans to make."""
        view = p.view
        active = self.listeners.active
        decisions = result.decisions
        blocked = result.blocked
        new_bans: list[tuple[str, float, str]] = []
        policy = result.policy
        degraded = policy is not None

        if policy == "deny":
            d = deny_decision(p.checks, self.limiter.retry_interval)
            if "throttled" in active:
                self._emit("throttled", STORAGE_RULE, None, view, d, False)
            return Verdict(False, "throttled", STORAGE_RULE, None, d, [], True, view), new_bans

        for i in range(p.n_user):
            b = blocked[i] if i < len(blocked) else None
            if b is not None:
                if "blocked" in active:
                    self._emit("blocked", DYNAMIC_RULE, b.key, view, None, False)
                return Verdict(False, "blocked", DYNAMIC_RULE, b.key, None, [], degraded,
                               view), new_bans

        banned = self._banned(p, decisions, blocked, new_bans)
        if banned is not None:
            brule, disc, bd = banned
            if "banned" in active:
                self._emit("banned", brule.name, disc, view, bd, False)
            return Verdict(False, "banned", brule.name, disc, bd, [], degraded, view), new_bans

        policies: list[tuple[str, Decision]] = []
        refusal: tuple[_Throttle, str, Decision] | None = None
        refusals: list[tuple[_Throttle, str, Decision]] = []
        allowed_rules: list[tuple[_Throttle, str, Decision]] = []
        pending: list[tuple[_Throttle, str, int]] | None = None
        costs: list[int] = []
        tightest: Decision | None = None
        for rule, disc, cost, start in p.throttles:
            n = len(rule.algorithms)
            ds = [decisions[start]] if n == 1 else decisions[start:start + n]
            d = ds[0] if len(ds) == 1 else most_restrictive(ds)
            if rule.dry_run:
                if not d.allowed and "throttled" in active:
                    self._emit("throttled", rule.name, disc, view, d, True)
                elif d.allowed and "allowed" in active:
                    self._emit("allowed", rule.name, disc, view, d, True)
                if rule.count_when is not None and d.allowed:
                    pending = pending or []
                    pending.append((rule, disc, cost))
                continue
            names = rule.policy_names
            charged = cost
            for n in range(len(ds)):
                policies.append((names[n], ds[n]))
                costs.append(charged)
            if d.allowed:
                allowed_rules.append((rule, disc, d))
                if tightest is None or d.remaining < tightest.remaining:
                    tightest = d
                if rule.count_when is not None:
                    pending = pending or []
                    pending.append((rule, disc, cost))
            else:
                refusals.append((rule, disc, d))
                if refusal is None or d.retry_after > refusal[2].retry_after:
                    refusal = (rule, disc, d)

        if refusal is not None:
            if "throttled" in active:
                for rule, disc, d in refusals:
                    self._emit("throttled", rule.name, disc, view, d, False)
            rule, disc, d = refusal
            # Nothing was charged: report what the allowing policies really have left.
            policies = [
                (name, pd if not pd.allowed or not c
                 else pd._replace(remaining=min(pd.limit, pd.remaining + c)))
                for (name, pd), c in zip(policies, costs, strict=True)
            ]
            return Verdict(False, "throttled", rule.name, disc, d, policies, degraded,
                           view), new_bans

        if active:
            if "allowed" in active:
                for rule, disc, d in allowed_rules:
                    self._emit("allowed", rule.name, disc, view, d, False)
            if "tracked" in active:
                self._track(view)
        return Verdict(True, "allowed", None, None, tightest, policies, degraded, view,
                       pending), new_bans

    def _track(self, view: RequestView) -> None:
        for t in self.tracks:
            try:
                if t.match is not None and not t.match(view):
                    continue
                disc = t.key(view)
            except Exception as exc:
                self._rule_error("track", t.name, exc, "match or key function")
                continue
            if disc is not None:
                self._emit("tracked", t.name, str(disc), view, None, False)

    def _emit(
        self, kind: str, rule: str, key: str | None, view: RequestView,
        decision: Decision | None, dry_run: bool,
    ) -> None:
        clock = self.limiter.clock
        at = clock() if clock is not None else time.time()
        self.listeners.emit(_new(Event, (kind, rule, key, view, decision, dry_run, at)))

    def _now(self) -> int | None:
        clock = self.limiter.clock
        return int(clock() * 1_000_000) if clock is not None else None

    def _call(self, checks: list[Check], block_keys: list[str],
              now: int | None) -> BatchResult:
        """One store call (never raises on a remote store: its ResilientStore answers
        with the fail policy, ``BatchResult.policy`` set; a memory store answers one
        check through its bound hit and skips an empty blocklist itself)."""
        return self.limiter.store.apply(checks, consume=True, now=now, block_keys=block_keys)

    async def _acall(self, checks: list[Check], block_keys: list[str],
                     now: int | None) -> BatchResult:
        storage = self.limiter.store
        if not storage.remote:
            return self._call(checks, block_keys, now)
        return await storage.aapply(checks, consume=True, now=now, block_keys=block_keys)

    def _ban(self, new_bans: list[tuple[str, float, str]], policy: str | None,
             now: int | None) -> None:
        store = self.limiter.store
        for key, ttl, reason in new_bans:
            if isinstance(store, ResilientStore):
                store.ban(key, ttl, reason, now, policy)
            else:
                store.block(key, ttl, reason, now)

    async def _aban(self, new_bans: list[tuple[str, float, str]], policy: str | None,
                    now: int | None) -> None:
        store = self.limiter.store
        for key, ttl, reason in new_bans:
            if isinstance(store, ResilientStore):
                await store.aban(key, ttl, reason, now, policy)
            else:
                await store.ablock(key, ttl, reason, now)

    def _refused_by_error(self, view: RequestView, err: _RuleFailed) -> Verdict:
        kind = {"blocklist": "blocked", "fail2ban": "banned", "allow2ban": "banned"}.get(
            err.kind, "throttled"
        )
        d = None
        if kind == "throttled":
            d = deny_decision((), self.limiter.retry_interval, err.degraded)
        if kind in self.listeners.active:
            self._emit(kind, err.rule, None, view, d, False)
        return Verdict(False, kind, err.rule, None, d, [], err.degraded, view)

    def _fast(self, view: RequestView, storage: Storage) -> Verdict:
        """The common case in one pass: lists and plain throttles (no bans, dry runs or
        ``count_when``) on a local store with an empty dynamic blocklist, nobody
        listening. The same answers as ``_plan`` + ``apply`` + ``_finish``, without
        building a plan or block-key lookups: one throttle of one rate is decided by the
        store's bound hit (``Storage.bind``), several by its bound batch
        (``Storage.bind_batch``, all or nothing)."""
        for lrule in self.safelists:
            if self._list_match(lrule, view, "safelist"):
                return Verdict(True, "safelisted", lrule.name, None, None, [], False, view)
        for lrule in self.blocklists:
            if self._list_match(lrule, view, "blocklist"):
                return Verdict(False, "blocked", lrule.name, None, None, [], False, view)
        rule1: _Throttle | None = None
        disc1 = ""
        cost1 = 0
        several: list[_Throttle] | None = None  # with discs and costs, when several apply
        for rule in self.throttles:
            applies = self._applies(rule, view)
            if applies is None:
                continue
            if rule1 is None:
                rule1 = rule
                disc1, cost1 = applies
            elif several is None:
                several = [rule1, rule]
                discs = [disc1, applies[0]]
                costs = [cost1, applies[1]]
            else:
                several.append(rule)
                discs.append(applies[0])
                costs.append(applies[1])
        if rule1 is None:
            return _allowed(None, [], view)
        clock = self.limiter.clock
        now = int(clock() * 1_000_000) if clock is not None else None
        if several is None:
            hit = rule1.hit
            if hit is not None:
                d = hit(NS + disc1, cost1, now)
                if d.allowed:
                    return _allowed(d, [(rule1.name, d)], view)
                return Verdict(False, "throttled", rule1.name, disc1, d, [(rule1.name, d)],
                               False, view)
            batch = rule1.batch  # one rule of several rates
            assert batch is not None
            decisions = batch((disc1,), (cost1,), now)
            policies = [*zip(rule1.policy_names, decisions)]  # noqa: B905 - one per rate
            d = most_restrictive(decisions)  # the rule's own choice among its rates
            if d.allowed:
                return Verdict(True, "allowed", None, None, d, policies, False, view)
            return self._fast_refused(view, [rule1], [disc1], [cost1], decisions, policies)
        applying = tuple(several)
        bound = self._batches.get(applying)
        if bound is None:
            bound = self._bind_batch(applying, storage)
        batch, names = bound
        decisions = batch(discs, costs, now)
        if len(names) == len(several):  # one rate each (the common case, inlined)
            tightest = decisions[0]
            for d in decisions:
                if not d.allowed:
                    break
                if d.remaining < tightest.remaining:
                    tightest = d
            else:  # (zip without strict=, whose keyword sends zip down its slow path)
                return Verdict(True, "allowed", None, None, tightest,
                               [*zip(names, decisions)], False, view)  # noqa: B905
        return self._fast_many(view, several, discs, costs, names, decisions)

    def _fast_many(
        self, view: RequestView, several: list[_Throttle], discs: list[str], costs: list[int],
        names: tuple[str, ...], decisions: list[Decision],
    ) -> Verdict:
        """The verdict of several checks decided all or nothing by the store's bound batch
        (group ``i``: the rates of ``several[i]``, on ``NS + discs[i]`` at ``costs[i]``), as
        ``_finish`` reads it for plain throttles."""
        policies = [*zip(names, decisions)]  # noqa: B905 - as many names as decisions
        if len(names) == len(several):  # one rate each: refused (_fast answers allowed)
            return self._fast_refused(view, several, discs, costs, decisions, policies)
        tightest: Decision | None = None
        i = 0
        for rule in several:
            n = len(rule.policy_names)
            d = most_restrictive(decisions[i:i + n])  # the rule's own choice among its rates
            if not d.allowed:
                return self._fast_refused(view, several, discs, costs, decisions, policies)
            if tightest is None or d.remaining < tightest.remaining:
                tightest = d
            i += n
        return Verdict(True, "allowed", None, None, tightest, policies, False, view)

    def _bind_batch(
        self, applying: tuple[_Throttle, ...], storage: Storage
    ) -> tuple[BoundBatch, tuple[str, ...]]:
        """The store's bound batch of these throttles' algorithms and their policy names,
        bound on the first request they all apply to."""
        batch = storage.bind_batch([r.algorithms for r in applying], NS)
        names = tuple(n for r in applying for n in r.policy_names)
        if len(self._batches) >= 256:  # match functions picking ever other subsets
            self._batches.clear()
        self._batches[applying] = batch, names
        return batch, names

    def _fast_refused(
        self, view: RequestView, several: list[_Throttle], discs: list[str], costs: list[int],
        decisions: list[Decision], policies: list[tuple[str, Decision]],
    ) -> Verdict:
        """The refusal of several checks decided all or nothing (nothing was charged), as
        ``_finish`` reads it for plain throttles."""
        refusal: tuple[_Throttle, str, Decision] | None = None
        i = 0
        for rule, disc, cost in zip(several, discs, costs, strict=True):
            n = len(rule.policy_names)
            d = decisions[i] if n == 1 else most_restrictive(decisions[i:i + n])
            if not d.allowed and (refusal is None or d.retry_after > refusal[2].retry_after):
                refusal = (rule, disc, d)
            if cost:
                # Nothing was charged: report what the allowing policies really have left.
                for j in range(i, i + n):
                    name, pd = policies[j]
                    if pd.allowed:
                        policies[j] = (name, pd._replace(remaining=min(pd.limit,
                                                                       pd.remaining + cost)))
            i += n
        assert refusal is not None
        rule, disc, d = refusal
        return Verdict(False, "throttled", rule.name, disc, d, policies, False, view)

    def _prepare(self, view: RequestView) -> tuple[Verdict | None, _Plan | None, int | None]:
        """Everything before the storage call, shared by evaluate and aevaluate: a verdict
        when the request is answered without the store (fast path, lists, cached denial),
        else the plan and the time."""
        if self.fast:
            storage = self.limiter.storage
            blocks = storage.local_blocks  # nothing to look up: see Storage.local_blocks
            if (
                blocks is not None and not blocks and not storage.remote
                and not self.listeners.active
            ):
                try:
                    return self._fast(view, storage), None, None
                except _RuleFailed as err:
                    return self._refused_by_error(view, err), None, None
        try:
            p = self._plan(view)
        except _RuleFailed as err:
            return self._refused_by_error(view, err), None, None
        if p.__class__ is Verdict:
            return p, None, None
        assert isinstance(p, _Plan)
        now = self._now()
        denials = self.limiter.store.denials
        if denials is not None and p.throttles:
            cached = self._cached_refusal(p, now)
            if cached is not None:
                return cached, None, None
            p.epoch = denials.epoch
        return None, p, now

    def _conclude(
        self, p: _Plan, result: BatchResult, now: int | None
    ) -> tuple[Verdict, list[tuple[str, float, str]]]:
        verdict, new_bans = self._finish(p, result)
        denials = self.limiter.store.denials
        if denials is not None and p.throttles:
            self._note_denials(denials, p, verdict, result.policy is not None, now)
        return verdict, new_bans

    def _recheck(self, p: _Plan, now: int | None) -> Verdict | None:
        """The cached refusal of ``p`` after the store's generation was read."""
        cached = self._cached_refusal(p, now)
        p.recheck = False
        denials = self.limiter.store.denials
        assert denials is not None
        p.epoch = denials.epoch
        return cached

    def evaluate(self, view: RequestView) -> Verdict:
        answered, p, now = self._prepare(view)
        if answered is not None:
            return answered
        assert p is not None
        if p.recheck:
            store = self.limiter.store
            assert isinstance(store, ResilientStore)
            store.check_generation()
            answered = self._recheck(p, now)
            if answered is not None:
                return answered
        result = self._call(p.checks, p.block_keys, now)
        verdict, new_bans = self._conclude(p, result, now)
        if new_bans:
            self._ban(new_bans, result.policy, now)
        return verdict

    # -- the local cache of denials (remote stores) ---------------------------------------

    def _cached_refusal(self, p: _Plan, now: int | None) -> Verdict | None:
        """A throttle of this request refused this client until a time not yet reached:
        refuse again without a round trip (Limiter's denial cache). Not for requests that
        must still be counted somewhere: ban counters and dry-run rules."""
        if p.refuse_ban is not None:
            return None
        for _brule, _disc, idx in p.bans:
            if idx >= 0:
                return None
        denials = self.limiter.store.denials
        assert denials is not None
        found = None
        for rule, disc, cost, _start in p.throttles:
            if rule.dry_run:
                return None
            if found is None:
                d = denials.get(rule, disc, cost, now)
                if d is not None:
                    found = rule, disc, d
        if found is None:
            return None
        if not p.recheck and denials.due():
            p.recheck = True  # evaluate/aevaluate read the generation, then look again
            return None
        rule, disc, d = found
        name = rule.policy_names[0]
        for alg, policy in zip(rule.algorithms, rule.policy_names, strict=True):
            if alg.rate == d.rate:
                name = policy
                break
        policies: list[tuple[str, Decision]] = [(name, d)]
        remembered = self._refusal_policies.get((rule, disc))
        if remembered is not None:
            # The policies the store reported with this refusal, their clocks moved on (the
            # counts of the others can only have risen: a refusal charged nothing).
            made, earlier = remembered
            elapsed = ((now if now is not None else time.time_ns() // 1000) - made) / 1e6
            policies = [
                (n, d if n == name else pd._replace(
                    reset_after=max(pd.reset_after - elapsed, 0.0)))
                for n, pd in earlier
            ]
        if "throttled" in self.listeners.active:
            self._emit("throttled", rule.name, disc, p.view, d, False)
        return Verdict(False, "throttled", rule.name, disc, d, policies, False, p.view)

    def _note_denials(
        self, denials: DenialCache, p: _Plan, verdict: Verdict, degraded: bool,
        now: int | None,
    ) -> None:
        if verdict.kind == "throttled" and not degraded and verdict.decision is not None:
            for rule, disc, cost, _start in p.throttles:
                if rule.name == verdict.rule and disc == verdict.key:
                    denials.remember(rule, disc, cost, now, verdict.decision, p.epoch)
                    cache = self._refusal_policies
                    if len(cache) >= 10_000:  # bounded: old entries only lose header detail
                        cache.clear()
                    cache[rule, disc] = (
                        now if now is not None else time.time_ns() // 1000, verdict.policies
                    )
                    break
        elif verdict.allowed and len(denials):
            # our own charges make a cached denial's numbers stale
            for rule, disc, cost, _start in p.throttles:
                if cost:
                    denials.charged(rule, disc)

    async def aevaluate(self, view: RequestView) -> Verdict:
        answered, p, now = self._prepare(view)
        if answered is not None:
            return answered
        assert p is not None
        store = self.limiter.store
        if p.recheck:
            assert isinstance(store, ResilientStore)
            await store.acheck_generation()
            answered = self._recheck(p, now)
            if answered is not None:
                return answered
        if store.remote:
            result = await self._acall(p.checks, p.block_keys, now)
        else:
            result = self._call(p.checks, p.block_keys, now)
        verdict, new_bans = self._conclude(p, result, now)
        if new_bans:
            await self._aban(new_bans, result.policy, now)
        return verdict

    # -- count_when: after the response --------------------------------------------------

    def _settle_checks(self, verdict: Verdict, status: int,
                       headers: Sequence[tuple[str, str]]) -> list[Check]:
        pending = verdict.pending
        if not pending:
            return []
        info = ResponseInfo(status, headers)
        checks: list[Check] = []
        for rule, disc, cost in pending:
            try:
                hit = rule.count_when(info)  # type: ignore[misc]
            except Exception as exc:
                self._log_settle_error(rule.name, exc)
                continue
            if hit and cost:
                skey = NS + disc
                for alg in rule.algorithms:
                    checks.append(_new(Check, (alg, skey, cost, True, False)))
        verdict.pending = None  # settle once
        return checks

    def _log_settle_error(self, rule: str, exc: BaseException) -> None:
        mono = time.monotonic()
        if mono - self._last_log.get(rule, -1e18) >= self.limiter.error_log_interval:
            self._last_log[rule] = mono
            logger.error("throttlekit: count_when of throttle %r raised %s: %s",
                         rule, type(exc).__name__, exc)

    def settle(self, verdict: Verdict, status: int,
               headers: Sequence[tuple[str, str]] = ()) -> None:
        checks = self._settle_checks(verdict, status, headers)
        if checks:
            self._call(checks, [], self._now())

    async def asettle(self, verdict: Verdict, status: int,
                      headers: Sequence[tuple[str, str]] = ()) -> None:
        checks = self._settle_checks(verdict, status, headers)
        if checks:
            await self._acall(checks, [], self._now())

    # -- events ----------------------------------------------------------------------------

    def on(self, kind: str | None, callback: EventCallback) -> None:
        self.listeners.add(kind, callback)
