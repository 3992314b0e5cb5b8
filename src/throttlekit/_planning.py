"""Planning and concluding: the two halves of one request's decision around its store call.

``plan`` turns a request into the checks of one store call (list rules answered on the way,
keys and costs computed, the user's functions called); ``conclude`` reads the store's answer
back into a :class:`~throttlekit.Verdict` and the bans to make. Both are the engine's
(:mod:`throttlekit._engine`), the only caller; ``conclude_throttles`` is shared by its
fast path too, so a refusal reads the same whichever way it was decided.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from ._decision import Decision, most_restrictive
from ._keys import MAX_KEY_LENGTH, UNREADABLE_PREFIX, rule_key
from ._resilience import deny_decision
from ._rules import (
    DYNAMIC_RULE,
    NS,
    STORAGE_RULE,
    UNKNOWN_CLIENT,
    ResponseInfo,
    Verdict,
    _BanRule,
    _ListRule,
    _Throttle,
    client_ip_key,
    client_key,
)
from .storage.base import BatchResult, Block, Check

if TYPE_CHECKING:
    from ._engine import Engine
    from ._request import RequestView
    from ._rules import Rules

__all__ = ["Plan", "applies", "conclude", "conclude_throttles", "list_match", "plan"]

_new = tuple.__new__
_NOBODY: frozenset[str] = frozenset()

#: (rule, discriminator, cost, index of its first check)
Planned = tuple[_Throttle, str, int, int]
NewBans = list[tuple[str, float, str]]


class Plan:
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
        self.throttles: list[Planned] = []


# -- planning ------------------------------------------------------------------------------


def list_match(engine: Engine, rule: _ListRule, view: RequestView, kind: str) -> bool:
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
        engine.rule_error(kind, rule.name, exc, "predicate")
        return False


def lists(engine: Engine, rules: Rules, view: RequestView) -> Verdict | None:
    """The verdict of the safelists and static blocklists, None when none matches."""
    active = engine.listeners.active
    for lrule in rules.safelists:
        if list_match(engine, lrule, view, "safelist"):
            if "safelisted" in active:
                engine.emit("safelisted", lrule.name, None, view, None, False)
            return Verdict(True, "safelisted", lrule.name, None, None, [], False, view)
    for lrule in rules.blocklists:
        if list_match(engine, lrule, view, "blocklist"):
            if "blocked" in active:
                engine.emit("blocked", lrule.name, None, view, None, False)
            return Verdict(False, "blocked", lrule.name, None, None, [], False, view)
    return None


def plan(engine: Engine, rules: Rules, view: RequestView) -> Plan | Verdict:
    """Everything that needs no storage: list rules, keys, costs, the checks."""
    listed = lists(engine, rules, view)
    if listed is not None:
        return listed
    p = Plan(view)
    block_keys = p.block_keys
    ip = view.client_ip
    if ip is not None:
        block_keys.append(ip)
    ck = view.client_key
    if ck is not None and ck != ip:
        block_keys.append(ck)
    p.n_user = len(block_keys)
    for brule in rules.bans:
        _plan_ban(engine, p, brule, view)
    if p.refuse_ban is not None:
        return p  # refused whatever the storage says: charge no throttle for it
    checks = p.checks
    throttles = p.throttles
    for rule in rules.candidates(view):
        found = applies(engine, rule, view)
        if found is None:
            continue
        if rule.resolve is not None:  # rates that follow the caller: its own throttle
            own = rule.variant(engine, view)
            if own is None:
                continue
            rule = own
        disc, cost = found
        skey = NS + disc
        throttles.append((rule, disc, cost, len(checks)))
        # A count_when rule is only tested here (a probe: decided with its cost, never
        # charged); it is charged after the response (see Engine.settle).
        indep = rule.dry_run
        probe = rule.count_when is not None
        for alg in rule.algorithms:
            checks.append(_new(Check, (alg, skey, cost, indep, probe)))
    return p


def _plan_ban(engine: Engine, p: Plan, brule: _BanRule, view: RequestView) -> None:
    try:
        disc = brule.key(view)
        if disc is None:
            if not view.form_failed:
                return  # the rule does not apply to this request
            # a key that cannot be read never lets a request past a ban rule: count it
            # under its client (as a throttle's on_unreadable="client")
            ck = view.client_key
            disc = UNREADABLE_PREFIX + (ck or UNKNOWN_CLIENT)
            no_ip = ck is None
        else:
            disc = rule_key(disc if disc.__class__ is str else str(disc))
            no_ip = disc is UNKNOWN_CLIENT and (
                brule.key is client_key or brule.key is client_ip_key
            )
        matched = brule.match(view)
    except Exception as exc:
        engine.rule_error(brule.kind, brule.name, exc, "key or match function")
        return
    if no_ip:  # a client without an IP: refused when it trips the rule, never banned
        engine.no_client_ip()
        if p.no_ban is None:
            p.no_ban = []
        p.no_ban.append(len(p.bans))
    p.block_keys.append(brule.prefix + disc)
    idx = -1
    if matched:
        idx = len(p.checks)
        p.checks.append(Check(brule.algorithm, NS + disc, 1, True))
        if brule.refuses and p.refuse_ban is None:
            p.refuse_ban = (brule, disc, idx)
    p.bans.append((brule, disc, idx))


def applies(engine: Engine, rule: _Throttle, view: RequestView) -> tuple[str, int] | None:
    """The discriminator and cost of ``rule`` for this request, or None when it does not
    apply (no match, a key of None from a readable request, or a match or cost function
    that raised: logged, see ``Engine.rule_error``). A key that cannot be read (the key
    function raised, or returned None from a request whose form is unreadable) follows the
    rule's ``on_unreadable``."""
    match = rule.match
    if match is not None:
        try:
            if not match(view):
                return None
        except Exception as exc:
            engine.rule_error("throttle", rule.name, exc, "match function")
            return None
    key = rule.key
    if key is client_key:  # the default key, called inline
        disc = view.client_key
        if not disc:
            disc = UNKNOWN_CLIENT
            engine.no_client_ip()
    else:
        try:
            disc = key(view)
        except Exception as exc:
            engine.rule_error("throttle", rule.name, exc, "key function")
            disc = engine.unreadable_key(rule, view)
        else:
            if disc is None:
                if not view.form_failed:
                    return None  # the rule does not apply to this request
                disc = engine.unreadable_key(rule, view)
            else:
                if disc.__class__ is not str:
                    disc = str(disc)
                elif disc is UNKNOWN_CLIENT and key is client_ip_key:
                    engine.no_client_ip()
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
            engine.rule_error("throttle", rule.name, exc, "cost function")
            return None
    return disc, cost


# -- concluding ----------------------------------------------------------------------------


def banned(
    p: Plan, decisions: list[Decision], blocked: list[Block | None], new_bans: NewBans,
) -> tuple[_BanRule, str, Decision | None] | None:
    """The ban that refuses this request, if any; the bans to make go to ``new_bans``."""
    found: tuple[_BanRule, str, Decision | None] | None = None
    no_ban = p.no_ban
    for j, (brule, disc, idx) in enumerate(p.bans):
        k = p.n_user + j
        b = blocked[k] if k < len(blocked) else None
        if no_ban is not None and j in no_ban:
            # no client IP: never banned; the request that trips the rule is refused
            if idx >= 0 and found is None:
                d = decisions[idx]
                if not d.allowed or d.remaining <= 0:
                    found = (brule, disc, d)
            continue
        if b is not None:
            if found is None:
                found = (brule, disc, None)
            continue
        if idx >= 0:
            d = decisions[idx]
            if not d.allowed or d.remaining <= 0:
                # allow2ban: the request that reaches maxretry still goes through;
                # fail2ban refused it already (refuse_ban)
                new_bans.append((brule.prefix + disc, brule.bantime,
                                 f"{brule.kind} {brule.name}"))
    if found is None and p.refuse_ban is not None:
        brule, disc, idx = p.refuse_ban
        found = (brule, disc, decisions[idx])
    return found


def conclude(engine: Engine, p: Plan, result: BatchResult, silent: bool = False
             ) -> tuple[Verdict, NewBans]:
    """Read the storage's answer: the verdict, and the bans to make. ``silent``: emit no
    events (endpoint limits: events tell what the rules did)."""
    view = p.view
    active = _NOBODY if silent else engine.listeners.active
    blocked = result.blocked
    new_bans: NewBans = []
    policy = result.policy
    degraded = policy is not None
    if policy == "deny":
        d = deny_decision(p.checks, engine.retry_interval)
        if "throttled" in active:
            engine.emit("throttled", STORAGE_RULE, None, view, d, False)
        return Verdict(False, "throttled", STORAGE_RULE, None, d, [], True, view), new_bans
    for i in range(p.n_user):
        b = blocked[i] if i < len(blocked) else None
        if b is not None:
            if "blocked" in active:
                engine.emit("blocked", DYNAMIC_RULE, b.key, view, None, False)
            return Verdict(False, "blocked", DYNAMIC_RULE, b.key, None, [], degraded,
                           view), new_bans
    ban = banned(p, result.decisions, blocked, new_bans)
    if ban is not None:
        brule, disc, bd = ban
        if "banned" in active:
            engine.emit("banned", brule.name, disc, view, bd, False)
        return Verdict(False, "banned", brule.name, disc, bd, [], degraded, view), new_bans
    verdict = conclude_throttles(engine, view, p.throttles, result.decisions, degraded,
                                 silent)
    if verdict.allowed and "tracked" in active:
        engine.track(view)
    return verdict, new_bans


_remaining = itemgetter(2)  # (Decision.remaining)


class Allowed(Verdict):
    """An allowed verdict of several throttles of one rate each, whose decision (the
    tightest: the first with the least remaining) is found when first read: an entry that
    only sends the policies' header fields never pays a pass over them for it."""

    __slots__ = ("decisions",)
    decisions: list[Decision]  # the batch's, as it answered (policies may be added to)

    def __getattr__(self, name: str) -> Any:  # (only when a slot is empty: decision)
        if name != "decision":
            raise AttributeError(name)
        self.decision = d = min(self.decisions, key=_remaining)
        return d


def conclude_policy(engine: Engine, view: RequestView, throttles: list[Planned],
                    decisions: list[Decision], at: float | None = None) -> Verdict:
    """The verdict of a bound hit or batch the limiter's fail policy answered (the store
    failed on this call: ``decisions`` are degraded), as :func:`conclude` gives it on the
    general path: ``"deny"``'s one refusal by ``STORAGE_RULE``, else the throttles'
    verdict, marked degraded."""
    d = decisions[0]
    if not d.allowed and getattr(engine.store, "policy", None) == "deny":
        if "throttled" in engine.listeners.active:
            engine.emit("throttled", STORAGE_RULE, None, view, d, False, at)
        return Verdict(False, "throttled", STORAGE_RULE, None, d, [], True, view)
    return conclude_throttles(engine, view, throttles, decisions, True, at=at)


def conclude_throttles(
    engine: Engine, view: RequestView, throttles: list[Planned], decisions: list[Decision],
    degraded: bool, silent: bool = False, at: float | None = None,
) -> Verdict:
    """The verdict of the throttles that applied, from the store's decisions (all or
    nothing: if one refused, none was charged); ``at``: the events' time, when known.
    Decisions the fail policy answered (the store failed under the engine's common case)
    are concluded as :func:`conclude_policy` does."""
    if not degraded and decisions and decisions[0].degraded:
        return conclude_policy(engine, view, throttles, decisions, at)
    active = _NOBODY if silent else engine.listeners.active
    policies: list[tuple[str, Decision]] = []
    costs: list[int] = []
    refusal: tuple[_Throttle, str, Decision] | None = None
    refusals: list[tuple[_Throttle, str, Decision]] = []
    allowed: list[tuple[_Throttle, str, Decision]] = []
    pending: list[tuple[_Throttle, str, int]] | None = None
    tightest: Decision | None = None
    for rule, disc, cost, start in throttles:
        n = len(rule.algorithms)
        d = decisions[start] if n == 1 else most_restrictive(decisions[start:start + n])
        if rule.dry_run:
            if not d.allowed and "throttled" in active:
                engine.emit("throttled", rule.name, disc, view, d, True, at)
            elif d.allowed and "allowed" in active:
                engine.emit("allowed", rule.name, disc, view, d, True, at)
            if rule.count_when is not None and d.allowed:
                pending = pending or []
                pending.append((rule, disc, cost))
            continue
        names = rule.policy_names
        for i in range(n):
            policies.append((names[i], decisions[start + i]))
            costs.append(cost)
        if d.allowed:
            allowed.append((rule, disc, d))
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
                engine.emit("throttled", rule.name, disc, view, d, False, at)
        rule, disc, d = refusal
        # Nothing was charged: report what the allowing policies really have left.
        policies = [
            (name, pd if not pd.allowed or not c
             else pd._replace(remaining=min(pd.limit, pd.remaining + c)))
            for (name, pd), c in zip(policies, costs, strict=True)
        ]
        return Verdict(False, "throttled", rule.name, disc, d, policies, degraded, view)
    if "allowed" in active:
        for rule, disc, d in allowed:
            engine.emit("allowed", rule.name, disc, view, d, False, at)
    return Verdict(True, "allowed", None, None, tightest, policies, degraded, view, pending)


def settle_checks(engine: Engine, verdict: Verdict, status: int,
                  headers: Sequence[tuple[str, str]]) -> list[Check]:
    """The charges of a verdict's ``count_when`` throttles whose predicate matches the
    response (``Engine.settle``); the verdict is settled once: its ``pending`` cleared."""
    pending = verdict.pending
    verdict.pending = None
    info = ResponseInfo(status, headers)
    checks: list[Check] = []
    for rule, disc, cost in pending or ():
        try:
            hit = rule.count_when(info)  # type: ignore[misc]
        except Exception as exc:
            engine.log_once(rule.name, "count_when of throttle %r raised %s: %s",
                            rule.name, type(exc).__name__, exc)
            continue
        if hit and cost:
            skey = NS + disc
            for alg in rule.algorithms:
                checks.append(Check(alg, skey, cost, True, False))
    return checks
