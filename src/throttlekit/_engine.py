"""The engine: one limiter's decision of a request, in one place.

Every entry (the WSGI and ASGI middleware, each framework integration, ``Limiter.evaluate``)
asks ``limiter.engine`` and nothing else: ``evaluate`` (sync) or ``aevaluate`` (async), then
``settle``/``asettle`` after the response. The engine holds what a decision reads: the rules
in force (a :class:`~throttlekit._rules.Rules`, swapped whole by a rules-file reload), the
concurrency rules, the rules-file watcher, the event listeners and the ``enabled`` switch.

A decision is planning (:func:`~throttlekit._planning.plan`), one store call, and concluding
(:func:`~throttlekit._planning.conclude`). The common case (lists and plain throttles on a
local store, nobody listening) is decided in ``evaluate``'s own frame through the store's
bound hit or batch (``Storage.bind``/``bind_batch``) and concluded the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any, cast

from ._decision import Decision
from ._denials import cached_denial, note_denials
from ._events import EventCallback, Listeners
from ._keys import UNREADABLE_PREFIX
from ._planning import (
    Allowed,
    Plan,
    Planned,
    applies,
    conclude,
    conclude_policy,
    conclude_throttles,
    lists,
    plan,
    settle_checks,
)
from ._resilience import ResilientStore, deny_decision
from ._rules import (
    NS,
    UNKNOWN_CLIENT,
    Rules,
    Verdict,
    _RuleFailed,
    _Throttle,
)
from .storage.base import BatchResult, BoundBatch, Check

if TYPE_CHECKING:
    from ._admit import AdmissionStep
    from ._challenge.step import ChallengeStep
    from ._concurrency import ConcurrencyRules
    from ._limiter import Limiter
    from ._reload import RulesWatcher
    from ._request import RequestView
    from ._standing import Standing

__all__ = ["Engine"]

logger = logging.getLogger("throttlekit")

_new_object = object.__new__
_allowed = itemgetter(0)  # (Decision.allowed, read in C)
NewBans = list[tuple[str, float, str]]
Steps = tuple["ChallengeStep | None", "Standing | None", "AdmissionStep | None",
              "ConcurrencyRules | None"]


class Engine:
    """What decides the requests of one limiter (``limiter.engine``)."""

    __slots__ = ("_admission", "_batches", "_challenge", "_concurrency", "_last_log",
                 "_last_simple", "_standing", "_warned_no_ip", "_warned_unreadable", "changing",
                 "enabled", "limiter", "listeners", "local_blocks", "refusal_policies", "remote",
                 "rules", "steps", "storage", "store", "watcher")

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        #: the backend, and what requests go through (its ResilientStore when remote)
        self.storage = limiter.storage
        self.store = limiter.store
        #: decisions need a network call (``aevaluate`` awaits it); a local store's
        #: ``evaluate`` never blocks, so async entries may call it directly
        self.remote = limiter.storage.remote
        #: the dynamic blocklist of a local store, or of a remote one answering the common
        #: case in process (Storage.local_hits), else None (see Storage.local_blocks): when
        #: it is empty, ``evaluate`` has no block to look up and takes its common case
        local = not self.remote or limiter.storage.local_hits
        self.local_blocks = limiter.storage.local_blocks if local else None
        #: held by registration and reloads (_registration): one change at a time
        self.changing = threading.RLock()
        #: the rules in force; registration and reloads replace it whole
        self.rules = Rules(limiter)
        self._concurrency: ConcurrencyRules | None = None
        self._admission: AdmissionStep | None = None
        self._challenge: ChallengeStep | None = None
        self._standing: Standing | None = None
        #: the steps after the rules (challenge, standing, admission, concurrency) when one
        #: is configured, else None: an allowed request goes through ``_exchange.begin``;
        #: kept by the setters below (one read instead of a property each per request)
        self.steps: Steps | None = None
        self.watcher: RulesWatcher | None = None
        self.enabled = True
        self.listeners = Listeners(limiter.error_log_interval)
        #: with the local denial cache: the rate-limit policies of a cached refusal, so a
        #: repeated 429 carries the same header fields as the first
        self.refusal_policies: dict[
            tuple[_Throttle, str],
            tuple[int, list[tuple[str, Decision]], tuple[tuple[_Throttle, str], ...]],
        ] = {}
        #: the throttles applying to a request (when several) -> the store's bound batch
        #: of their algorithms (``Storage.bind_batch``), bound on first use
        self._batches: dict[tuple[_Throttle, ...], tuple[BoundBatch, tuple[str, ...]]] = {}
        #: the last candidates ``_simple`` was asked about, and its answer
        self._last_simple: tuple[tuple[_Throttle, ...] | None, Any] = (None, None)
        self._last_log: dict[str, float] = {}
        self._warned_unreadable: set[str] = set()
        self._warned_no_ip = False

    def on(self, kind: str | None, callback: EventCallback) -> None:
        self.listeners.add(kind, callback)

    # -- the steps after the rules ---------------------------------------------------------

    @property
    def concurrency(self) -> ConcurrencyRules | None:
        """The concurrency rules (``Limiter.concurrency``), if any."""
        return self._concurrency

    @concurrency.setter
    def concurrency(self, rules: ConcurrencyRules | None) -> None:
        self._concurrency = rules
        self._restep()

    @property
    def admission(self) -> AdmissionStep | None:
        """The worker's adaptive concurrency limit (``Limiter.admission``), if any."""
        return self._admission

    @admission.setter
    def admission(self, step: AdmissionStep | None) -> None:
        self._admission = step
        self._restep()

    @property
    def challenge(self) -> ChallengeStep | None:
        """The challenge step (``Limiter.challenge``), if any."""
        return self._challenge

    @challenge.setter
    def challenge(self, step: ChallengeStep | None) -> None:
        self._challenge = step
        self._restep()

    @property
    def standing(self) -> Standing | None:  # which clients are known (throttlekit.Standing)
        return self._standing

    @standing.setter
    def standing(self, standing: Standing | None) -> None:
        self._standing = standing
        self._restep()

    def _restep(self) -> None:
        steps = (self._challenge, self._standing, self._admission, self._concurrency)
        self.steps = steps if any(step is not None for step in steps) else None

    # -- evaluation ----------------------------------------------------------------------

    def evaluate(self, view: RequestView) -> Verdict:
        """Run every rule on one request (one storage call at most); never raises."""
        if self.watcher is not None and self.enabled:
            self.watcher.poll()  # a reload swaps self.rules: read them after
        rules = self.rules
        throttles = rules.throttles  # then the index, then the flag (see Rules.index)
        if (index := rules.index) is not None:  # only the rules whose conditions hold
            throttles = index.candidates(view)
        if rules.fast and self.enabled:
            blocks = self.local_blocks
            if blocks is not None and not blocks:
                # The common case here: lists and plain throttles (no bans, dry runs, count_when)
                # on a local store, no dynamic block: bound hit, bound batch, _told (listeners).
                active = self.listeners.active
                try:
                    if rules.safelists or rules.blocklists:
                        listed = lists(self, rules, view)
                        if listed is not None:
                            return listed
                    if not active and len(throttles) > 1 and (disc := view.client_key) and (
                            simple := self._simple(throttles)) is not None:  # no loop here
                        return self._several(view, throttles, [disc] * len(throttles),
                                             simple[0], self.now(), simple[1])
                    rule1: _Throttle | None = None
                    disc1, cost1 = "", 0  # (a simple rule's cost is an int)
                    several: list[_Throttle] | None = None  # when several apply
                    for rule in throttles:
                        if rule.simple and (disc := view.client_key):  # applies()' 1st case
                            cost: int = rule.cost  # type: ignore[assignment]
                        elif (found := applies(self, rule, view)) is None:
                            continue
                        else:
                            disc, cost = found
                        if rule.resolve is not None:  # rates following the caller (plans)
                            if (own := rule.variant(self, view)) is None:
                                continue
                            rule = own
                        if rule1 is None:
                            rule1 = rule
                            disc1, cost1 = disc, cost
                        elif several is None:
                            several = [rule1, rule]
                            discs = [disc1, disc]
                            costs = [cost1, cost]
                        else:
                            several.append(rule)
                            discs.append(disc)
                            costs.append(cost)
                    if rule1 is None:
                        if active and "tracked" in active and rules.tracks:
                            self.track(view)
                        return Verdict(True, "allowed", None, None, None, [], False, view)
                    now = None if (clock := self.limiter.clock) is None else int(clock() * 1e6)
                    if active:
                        return self._told(view, [(rule1, disc1, cost1, 0)] if several is None
                                          else _planned(several, discs, costs), now)
                    if several is None:
                        hit = rule1.hit
                        if hit is None:  # one rule of several rates
                            batch = rule1.batch
                            assert batch is not None
                            return conclude_throttles(self, view, [(rule1, disc1, cost1, 0)],
                                                      batch((disc1,), (cost1,), now), False)
                        d = hit(disc1, cost1, now)
                        if not d.allowed:
                            return self._refused_one(view, rule1, disc1, cost1, d)
                        # Verdict(True, "allowed", None, None, d, [...], False, view)
                        # without the cost of a call to __init__
                        v = _new_object(Verdict)
                        v.allowed, v.kind, v.decision = True, "allowed", d
                        v.rule = v.key = v.pending = v.answer = None
                        v.policies, v.degraded, v.request = [(rule1.name, d)], d.degraded, view
                        return v
                    return self._several(view, several, discs, costs, now)
                except _RuleFailed as err:
                    return self.refused_by_error(view, err)
        return self._evaluate(view)

    def _told(self, view: RequestView, planned: list[Planned], now: int | None) -> Verdict:
        """``evaluate``'s common case with listeners: the same store calls, concluded as
        the general path concludes (its events: allowed, throttled, tracked)."""
        at = None if now is None else now / 1e6  # (the events' time: no second clock read)
        if len(planned) == 1:
            rule, disc, cost, _ = planned[0]
            hit = rule.hit
            if hit is not None:  # one plain rule of one rate: conclude_throttles' verdict
                d = hit(disc, cost, now)
                if d.degraded:  # the store failed: the fail policy answered
                    return conclude_policy(self, view, planned, [d], at)
                active = self.listeners.active
                name = rule.name
                if not d.allowed:
                    if "throttled" in active:
                        self.emit("throttled", name, disc, view, d, False, at)
                    return Verdict(False, "throttled", name, disc, d, [(name, d)], False, view)
                verdict = Verdict(True, "allowed", None, None, d, [(name, d)], False, view)
                if "allowed" in active:
                    self.emit("allowed", name, disc, view, d, False, at)
                if "tracked" in active and self.rules.tracks:
                    self.track(view)
                return verdict
            assert rule.batch is not None
            decisions = rule.batch((disc,), (cost,), now)
        else:
            applying = tuple(p[0] for p in planned)
            bound = self._batches.get(applying) or self._bind_batch(applying)
            decisions = bound[0]([p[1] for p in planned], [p[2] for p in planned], now)
        verdict = conclude_throttles(self, view, planned, decisions, False, at=at)
        if verdict.allowed and "tracked" in self.listeners.active and self.rules.tracks:
            self.track(view)
        return verdict

    def _several(self, view: RequestView, several: Sequence[_Throttle], discs: list[str],
                 costs: Sequence[int], now: int | None,
                 bound: tuple[BoundBatch, tuple[str, ...]] | None = None) -> Verdict:
        """``evaluate``'s common case when several throttles apply: the store's bound batch
        of their algorithms decides them all or nothing."""
        if bound is None:
            applying = tuple(several)
            bound = self._batches.get(applying) or self._bind_batch(applying)
        batch, names = bound
        decisions = batch(discs, costs, now)
        # One rate each (the common case) and all allowed (in C: no Python code per
        # throttle); the tightest is found when the verdict's decision is read
        if len(names) == len(several) and all(map(_allowed, decisions)) and not (
                decisions[0].degraded):
            v = _new_object(Allowed)  # (as evaluate makes its one-rule verdict)
            v.allowed, v.kind, v.decisions = True, "allowed", decisions
            v.rule = v.key = v.pending = v.answer = None
            v.policies, v.degraded, v.request = [*zip(names, decisions)], False, view  # noqa: B905
            return v
        return conclude_throttles(self, view, _planned(several, discs, costs), decisions,
                                  False)

    def _refused_one(self, view: RequestView, rule: _Throttle, disc: str, cost: int,
                     d: Decision) -> Verdict:
        """``evaluate``'s common case refused by its one throttle (by the fail policy when
        the store failed on it)."""
        if d.degraded:
            return conclude_policy(self, view, [(rule, disc, cost, 0)], [d])
        return Verdict(False, "throttled", rule.name, disc, d, [(rule.name, d)], False, view)

    def _simple(self, throttles: tuple[_Throttle, ...]
                ) -> tuple[tuple[int, ...], tuple[BoundBatch, tuple[str, ...]]] | None:
        """When every one of ``throttles`` is simple (no match callable, keyed by the
        client, a fixed cost, rates of its own): their costs and bound batch; else None.
        Remembered for the last tuple of candidates (the index's tuples are kept), and per
        tuple in ``_batches``."""
        last = self._last_simple
        if last[0] is throttles:
            return last[1]  # type: ignore[no-any-return]
        simple: tuple[tuple[int, ...], tuple[BoundBatch, tuple[str, ...]]] | None = None
        if all(r.simple and r.resolve is None for r in throttles):
            bound = self._batches.get(throttles) or self._bind_batch(throttles)
            simple = cast("tuple[int, ...]", tuple(r.cost for r in throttles)), bound
        self._last_simple = throttles, simple  # (one tuple: a racing reader sees both)
        return simple

    def _evaluate(self, view: RequestView) -> Verdict:
        """``evaluate`` beyond its common case (the rules file polled already): the plan,
        then :meth:`decide`."""
        if not self.enabled:
            return Verdict(True, "allowed", None, None, None, [], False, view)
        p = self._plan(view)
        return p if p.__class__ is Verdict else self.decide(p)  # type: ignore[arg-type]

    async def aevaluate(self, view: RequestView) -> Verdict:
        """Async twin of :meth:`evaluate` (only async storage calls)."""
        if not self.remote:
            return self.evaluate(view)
        if not self.enabled:
            return Verdict(True, "allowed", None, None, None, [], False, view)
        if self.watcher is not None:
            self.watcher.poll()
        p = self._plan(view)
        if p.__class__ is Verdict:
            return p
        return await self.adecide(p)  # type: ignore[arg-type]

    def _plan(self, view: RequestView) -> Plan | Verdict:
        try:
            return plan(self, self.rules, view)
        except _RuleFailed as err:
            return self.refused_by_error(view, err)

    def decide(self, p: Plan, silent: bool = False) -> Verdict:
        """The verdict of a plan: a refusal the local denial cache still holds (remote
        stores), else one store call, concluded. The rules' general path and the endpoint
        limits (``silent``: no events) both end here."""
        store = self.store
        now = self.now()
        if store.denials is not None:
            assert isinstance(store, ResilientStore)
            store.first_generation()
            cached = self._cached(p, now, silent)
            if p.recheck:
                store.check_generation()
                cached = self._recheck(p, now, silent)
            if cached is not None:
                return cached
        result = store.apply(p.checks, consume=True, now=now, block_keys=p.block_keys)
        verdict, new_bans = self._conclude(p, result, now, silent)
        if new_bans:
            self._ban(new_bans, result.policy, now)
        return verdict

    async def adecide(self, p: Plan, silent: bool = False) -> Verdict:
        """Async twin of :meth:`decide` (only async storage calls)."""
        if not self.remote:
            return self.decide(p, silent)
        store = self.store
        assert isinstance(store, ResilientStore)
        now = self.now()
        if store.denials is not None:
            await store.afirst_generation()
            cached = self._cached(p, now, silent)
            if p.recheck:
                await store.acheck_generation()
                cached = self._recheck(p, now, silent)
            if cached is not None:
                return cached
        result = await store.aapply(p.checks, consume=True, now=now, block_keys=p.block_keys)
        verdict, new_bans = self._conclude(p, result, now, silent)
        if new_bans:
            await self._aban(new_bans, result.policy, now)
        return verdict

    def _cached(self, p: Plan, now: int | None, silent: bool) -> Verdict | None:
        """The cached refusal of a plan, a block's or a throttle's (``p.recheck`` set: ask
        again after reading the store's generation); notes the denial cache's epoch."""
        denials = self.store.denials
        assert denials is not None
        cached = cached_denial(self, p, now, silent)
        p.epoch = denials.epoch
        return cached

    def _conclude(self, p: Plan, result: BatchResult, now: int | None, silent: bool = False
                  ) -> tuple[Verdict, NewBans]:
        verdict, new_bans = conclude(self, p, result, silent)
        denials = self.store.denials
        if denials is not None and (p.throttles or not verdict.allowed):
            note_denials(self, denials, p, verdict, result, now)
        return verdict, new_bans

    def _bind_batch(self, applying: tuple[_Throttle, ...]
                    ) -> tuple[BoundBatch, tuple[str, ...]]:
        """The store's bound batch of these throttles' algorithms and their policy names,
        bound on the first request they all apply to."""
        batch = self.store.bind_batch([r.algorithms for r in applying], NS)
        names = tuple(n for r in applying for n in r.policy_names)
        if len(self._batches) >= 256:  # match functions picking ever other subsets
            self._batches.clear()
        self._batches[applying] = batch, names
        return batch, names

    # -- the local cache of denials (remote stores) ---------------------------------------

    def _recheck(self, p: Plan, now: int | None, silent: bool = False) -> Verdict | None:
        """The cached refusal of ``p`` after the store's generation was read."""
        cached = cached_denial(self, p, now, silent)
        p.recheck = False
        denials = self.store.denials
        assert denials is not None
        p.epoch = denials.epoch
        return cached

    # -- bans ------------------------------------------------------------------------------

    def _ban(self, new_bans: NewBans, policy: str | None, now: int | None) -> None:
        store = self.store
        for key, ttl, reason in new_bans:
            offence = self.rules.offence(key)
            if offence is not None:  # escalating: the key's chain of bans sets the time
                ttl = offence[0].ban_time(store, offence[1], now)
            if isinstance(store, ResilientStore):
                store.ban(key, ttl, reason, now, policy)
            else:
                store.block(key, ttl, reason, now)

    async def _aban(self, new_bans: NewBans, policy: str | None, now: int | None) -> None:
        store = self.store
        assert isinstance(store, ResilientStore)  # aevaluate: remote stores only
        for key, ttl, reason in new_bans:
            offence = self.rules.offence(key)
            if offence is not None:
                ttl = await offence[0].aban_time(store, offence[1], now)
            await store.aban(key, ttl, reason, now, policy)

    # -- count_when: after the response --------------------------------------------------

    def apply(self, checks: list[Check]) -> BatchResult:
        """One store call deciding ``checks`` now (a failing remote store answers with the
        fail policy, ``BatchResult.policy`` set): endpoint limits and settling use it."""
        return self.store.apply(checks, consume=True, now=self.now(), block_keys=[])

    async def aapply(self, checks: list[Check]) -> BatchResult:
        """Async twin of :meth:`apply`."""
        if not self.remote:
            return self.apply(checks)
        return await self.store.aapply(checks, consume=True, now=self.now(), block_keys=[])

    def settle(self, verdict: Verdict, status: int,
               headers: Sequence[tuple[str, str]] = ()) -> None:
        """After the response: charge the ``count_when`` throttles whose predicate matches
        (an exception from the app counts as 500). Idempotent."""
        if verdict.pending:
            checks = settle_checks(self, verdict, status, headers)
            if checks:
                self.apply(checks)

    async def asettle(self, verdict: Verdict, status: int,
                      headers: Sequence[tuple[str, str]] = ()) -> None:
        """Async twin of :meth:`settle`."""
        if verdict.pending:
            checks = settle_checks(self, verdict, status, headers)
            if checks:
                await self.aapply(checks)

    # -- what planning reports -------------------------------------------------------------

    def now(self) -> int | None:
        """The limiter's clock in integer microseconds (None: the store's own clock)."""
        clock = self.limiter.clock
        return int(clock() * 1_000_000) if clock is not None else None

    @property
    def retry_interval(self) -> float:
        return self.limiter.retry_interval

    def log_once(self, rule: str, message: str, *args: Any) -> bool:
        """Log ``message`` at most once per rule and ``error_log_interval``."""
        mono = time.monotonic()
        if mono - self._last_log.get(rule, -1e18) < self.limiter.error_log_interval:
            return False
        self._last_log[rule] = mono
        logger.error(message, *args)
        return True

    def rule_error(self, kind: str, rule: str, exc: BaseException, what: str) -> None:
        """A user function raised: log (rate-limited per rule), then skip the rule, or
        refuse the request under ``on_storage_error="deny"``."""
        policy = self.limiter.on_storage_error
        self.log_once(rule, "the %s of %s rule %r raised %s: %s; on_storage_error=%r",
                       what, kind, rule, type(exc).__name__, exc, policy)
        if policy == "deny" and kind != "safelist" and kind != "track":
            raise _RuleFailed(kind, rule) from None

    def unreadable_key(self, rule: _Throttle, view: RequestView) -> str:
        """The discriminator of a request whose key cannot be read: its client's, in a
        namespace of its own; or refuse it (``on_unreadable="refuse"``). Warns once per
        rule."""
        refuse = rule.on_unreadable == "refuse"
        if rule.name not in self._warned_unreadable:
            self._warned_unreadable.add(rule.name)
            logger.warning(
                "throttle %r could not read its key from a request (a body "
                "over max_form_bytes, unparsable or of a type not read, or a key function "
                "that raised); %s (on_unreadable=%r; logged once per rule)",
                rule.name,
                "refusing such requests" if refuse
                else "counting such requests per client instead", rule.on_unreadable,
            )
        if refuse:
            raise _RuleFailed("throttle", rule.name, degraded=False)
        return UNREADABLE_PREFIX + (view.client_key or UNKNOWN_CLIENT)

    def no_client_ip(self) -> None:
        """A rule keyed by the client met a request without a client IP: say once how to
        give such clients keys of their own."""
        if not self._warned_no_ip:
            self._warned_no_ip = True
            logger.warning(
                "a request without a client IP (a Unix socket and no trusted "
                "proxy?): throttles keyed by client count it under the key %r, which all such "
                "requests share, and fail2ban/allow2ban refuse it when it trips them but ban "
                "no key. Set trusted_proxies (the number of proxies in front of the app, or "
                "their networks plus \"unix\") so each client gets its own key; see "
                "docs/client-ip.md", UNKNOWN_CLIENT,
            )

    def refused_by_error(self, view: RequestView, err: _RuleFailed) -> Verdict:
        kind = {"blocklist": "blocked", "fail2ban": "banned", "allow2ban": "banned"}.get(
            err.kind, "throttled"
        )
        d = None
        if kind == "throttled":
            d = deny_decision((), self.limiter.retry_interval, err.degraded)
        if kind in self.listeners.active:
            self.emit(kind, err.rule, None, view, d, False)
        return Verdict(False, kind, err.rule, None, d, [], err.degraded, view)

    def track(self, view: RequestView) -> None:
        for t in self.rules.tracks:
            try:
                if t.match is not None and not t.match(view):
                    continue
                disc = t.key(view)
            except Exception as exc:
                self.rule_error("track", t.name, exc, "match or key function")
                continue
            if disc is not None:
                self.emit("tracked", t.name, str(disc), view, None, False)

    def emit(
        self, kind: str, rule: str, key: str | None, view: RequestView,
        decision: Decision | None, dry_run: bool, at: float | None = None,
    ) -> None:
        """Tell the listeners of ``kind`` (``at``: the decision's time in seconds on the
        limiter's clock, when the caller read it already; else the clock is read)."""
        if at is None:
            clock = self.limiter.clock
            at = clock() if clock is not None else time.time()
        self.listeners.tell(kind, rule, key, view, decision, dry_run, at)


def _planned(several: Sequence[_Throttle], discs: Sequence[str], costs: Sequence[int]
             ) -> list[Planned]:
    """The throttles of a fast-path decision as ``conclude_throttles`` reads them."""
    out: list[Planned] = []
    start = 0
    for rule, disc, cost in zip(several, discs, costs, strict=True):
        out.append((rule, disc, cost, start))
        start += len(rule.algorithms)
    return out
