"""The Limiter: rates and strategies in, Decisions out, through one storage backend.

A facade: the direct API's plans and store calls are in ``_direct``, the admin operations
in ``_admin``, the rules' decisions in ``_engine`` (``limiter.engine``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, overload

from . import _admin as admin
from ._algorithms import DEFAULT_STRATEGY, check_strategy
from ._challenge.step import ChallengeOptions, install_challenge
from ._clientip import ClientIPResolver
from ._concurrency import LOAD_SHEDDING, SHED_RULE, ConcurrencyRules
from ._direct import Plan, adecide, check_cost, check_key, decide, prepared
from ._engine import Engine
from ._errors import ConfigError
from ._keys import MAX_KEY_LENGTH, bound_key
from ._plans import Plans
from ._registration import set_rule_rates
from ._resilience import ON_STORAGE_ERROR, ResilientStore, resilient
from ._rules import limiter_defaults
from ._settings import check_settings, storage_of
from ._subscribe import subscribe, unsubscribe
from ._typing import CallbackT, FuncT, KeyLike, RatesLike, Strings
from .storage import Storage

if TYPE_CHECKING:
    import os
    from collections.abc import Awaitable, Iterable

    from typing_extensions import Unpack

    from ._decision import Decision
    from ._events import EventCallback
    from ._limitspec import LimitOptions
    from ._rates import Rate
    from ._request import RequestView
    from ._rules import Escalate, ResponseInfo, Verdict
    from ._rulesfile import RuleSet
    from .storage.base import Block

__all__ = ["DEFAULT_STRATEGY", "ON_STORAGE_ERROR", "Limiter"]


class Limiter:
    """Rate limits on top of a storage backend.

    Args:
        storage: a storage URL (``"memory://"``, ``"redis://..."``, ...) or a Storage object.
        strategy: the default algorithm: ``"fixed_window"`` (default; also for None),
            ``"sliding_window"``, ``"sliding_log"`` or ``"token_bucket"``.
        clock: zero-argument callable returning seconds since the epoch (float). When given,
            every decision uses it (backends that have their own clock, like Redis' server
            time, use this one instead). Default: the backend's own clock.
        burst: default token-bucket capacity (default: the rate's limit).
        on_storage_error: what a failing remote store answers: ``"allow"`` (fail open),
            ``"deny"`` (fail closed) or ``"local"`` (default: the same limits in an
            in-process memory store until the store answers again). Decisions made this
            way have ``degraded=True``; failures are logged at most once per
            ``error_log_interval`` seconds.
        retry_interval: seconds a failed store is left alone (circuit breaker open) before a
            request tries it again.
        denial_cache_size: with a remote store, a key refused until T is refused in-process
            until T without a round trip (safe: other workers can only push T later). The
            number of refused keys remembered; 0 turns the cache off. An admin ``reset``,
            ``unblock`` or rule reload anywhere empties it in every worker within about a
            second (see ``docs/backends.md``).
        trusted_proxies: how far ``X-Forwarded-For`` is believed when finding the client IP
            for rules: ``0`` (default, the socket peer only), a number of proxies in front
            of the app, or a list of trusted proxy CIDRs. See ``docs/middleware.md``.
        ipv6_prefix: IPv6 clients are keyed by this network prefix (default 64).
        forwarded_header: the header the trusted proxies write: ``"x-forwarded-for"``
            (default) or ``"forwarded"`` (RFC 7239). Only that one is read; the other is
            client-controlled.
        header_style: rate-limit headers the middleware writes: ``"draft10"`` (default,
            ``RateLimit-Policy``/``RateLimit``), ``"legacy"`` (``X-RateLimit-*``),
            ``"both"`` or ``"none"``.
        headers_on_allowed: write them on allowed responses too, not only on 429s.
        enabled: ``False`` switches the rules, middleware, decorators and framework
            integrations off (for tests); direct ``hit``/``test`` calls still count.

    Thread-safe. ``hit``/``test``/``reset`` have async twins ``ahit``/``atest``/``areset``
    that never block the event loop.
    """

    def __init__(
        self,
        storage: str | Storage = "memory://",
        *,
        strategy: str | None = DEFAULT_STRATEGY,
        clock: Callable[[], float] | None = None,
        burst: int | None = None,
        on_storage_error: str = "local",
        retry_interval: float = 1.0,
        error_log_interval: float = 60.0,
        denial_cache_size: int = 10_000,
        trusted_proxies: int | Sequence[str] = 0,
        ipv6_prefix: int = 64,
        forwarded_header: str = "x-forwarded-for",
        header_style: str = "draft10",
        headers_on_allowed: bool = True,
        enabled: bool = True,
    ) -> None:
        storage = storage_of(storage)
        strategy = DEFAULT_STRATEGY if strategy is None else strategy  # (None: the default)
        check_settings(
            storage, clock=clock, on_storage_error=on_storage_error,
            retry_interval=retry_interval, error_log_interval=error_log_interval,
            strategy=strategy, burst=burst, denial_cache_size=denial_cache_size,
            header_style=header_style, headers_on_allowed=headers_on_allowed,
        )
        self.storage: Storage = storage
        self.clock, self.on_storage_error = clock, on_storage_error
        self.retry_interval = float(retry_interval)
        self.error_log_interval = float(error_log_interval)
        self.strategy, self.burst = strategy, burst
        self._plans: dict[Any, Plan] = {}
        self._default_plans: dict[Any, Plan] = {}  # by rates alone: the common call
        #: what requests go through: a remote ``storage`` wrapped with its breaker, fail
        #: policy, fallback store and denial cache (see throttlekit._resilience); a local
        #: one as it is
        self.store: Storage = resilient(
            storage, policy=on_storage_error, retry_interval=self.retry_interval,
            error_log_interval=self.error_log_interval, denial_cache_size=denial_cache_size,
            clock=clock,
        )
        self.resolver = ClientIPResolver(trusted_proxies, ipv6_prefix, header=forwarded_header)
        self.resolver_args = (trusted_proxies, ipv6_prefix, forwarded_header)
        self.header_style = header_style
        self.headers_on_allowed = headers_on_allowed
        #: what decides requests: the rules in force, concurrency rules, rules-file
        #: watcher and event listeners (see throttlekit._engine)
        self.engine = Engine(self)
        if not isinstance(enabled, bool):
            raise ConfigError(f"enabled must be True or False, got {enabled!r}")
        self.engine.enabled = enabled

    @property
    def enabled(self) -> bool:
        """False turns the rules, middleware, decorators and framework integrations off
        (for tests)."""
        return self.engine.enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self.engine.enabled = value

    def __repr__(self) -> str:
        return f"Limiter(storage={self.storage!r}, strategy={self.strategy!r})"

    # -- configuration --------------------------------------------------------------------

    def plan(self, rates: RatesLike, strategy: str | None = None, burst: int | None = None) -> Plan:
        """Parse and validate ``rates`` under ``strategy`` once; cached (by burst and type)."""
        cache_key = (rates if not isinstance(rates, list) else tuple(rates), strategy,
                     burst if burst is None or burst.__class__ is int else (burst.__class__, burst))
        try:
            return self._plans[cache_key]
        except KeyError:
            pass
        except TypeError:
            if strategy is not None:  # (an unhashable strategy, not the rates)
                check_strategy(strategy, self.storage)
            raise ConfigError(f"invalid rates {rates!r}") from None
        strategy, burst = limiter_defaults(self, strategy, burst)  # (Plan.of checks them)
        plan = Plan.of(self.storage, rates, strategy, burst)
        if len(self._plans) > 4096:  # rates built per request must not grow this forever
            self._plans.clear()
            self._default_plans.clear()
        self._plans[cache_key] = plan
        if cache_key[1] is None and cache_key[2] is None:
            self._default_plans[cache_key[0]] = plan
        return plan

    # -- the API --------------------------------------------------------------------------

    # (not keyword-only: CPython never specialises such a call, ~530 instructions a hit)
    def hit(
        self, key: str, rates: RatesLike, strategy: str | None = None, cost: int = 1,
        burst: int | None = None,
    ) -> Decision:
        """Decide and, when allowed, charge ``cost`` against every rate of ``rates``.

        ``rates``: a rate string ("10/second; 1000/hour"), a Rate, or a list of them. A
        request is allowed only when every rate allows it; a denied request charges none.
        A ``key`` over 200 characters is stored as ``"#sha256:<hex>"`` (bounded memory
        per key, whatever the key); ``test`` and ``reset`` find it the same way.
        """
        try:
            if strategy is None and burst is None:
                plan = self._default_plans[rates]
            elif burst is None or burst.__class__ is int:  # (2.0 == 2: plan keys it apart)
                plan = self._plans[rates, strategy, burst]
            else:
                plan = self.plan(rates, strategy, burst)
        except (KeyError, TypeError):
            plan = self.plan(rates, strategy, burst)
        if cost.__class__ is not int or cost < 0:
            check_cost(cost)
        clock = self.clock
        now = int(clock() * 1_000_000) if clock is not None else None
        fast = plan.fast
        if fast is not None:
            try:
                if len(key) > MAX_KEY_LENGTH or not key.isascii():
                    key = bound_key(key)
                return fast(key, cost, now)
            except (TypeError, AttributeError):
                check_key(key)
                raise
        check_key(key)
        return decide(self, plan, bound_key(key), cost, True, now)

    def test(
        self, key: str, rates: RatesLike, strategy: str | None = None, cost: int = 1,
        burst: int | None = None,
    ) -> Decision:
        """The Decision ``hit`` would return now, charging nothing."""
        plan, key, now = prepared(self, key, rates, strategy, cost, burst)
        return decide(self, plan, key, cost, False, now)

    def reset(self, key: str) -> None:
        """Forget all state of ``key``, under every rate and strategy.

        An admin operation: a failing remote store raises ``StorageError`` here (the
        ``on_storage_error`` policy is for answering requests, not for pretending a reset
        happened). Keys are stored bounded (see ``hit``): a long key is found by its
        hash as ``hit`` stored it. An empty key is a ConfigError.
        """
        admin.run(admin.reset(self, key))

    def forget_local(self, key: str | None = None) -> None:
        """Drop what this process remembers of ``key`` (``None``: of every key) with a
        remote store: its state in the ``"local"`` fallback store and its cached refusals
        (admin changes do this themselves; for tests and rule reloads)."""
        store = self.store
        if isinstance(store, ResilientStore):
            store.forget(key)

    async def ahit(self, key: str, rates: RatesLike, strategy: str | None = None,
                   cost: int = 1, burst: int | None = None) -> Decision:
        """Async twin of :meth:`hit`."""
        return await self._adirect(key, rates, strategy, cost, burst, True)

    async def atest(self, key: str, rates: RatesLike, strategy: str | None = None,
                    cost: int = 1, burst: int | None = None) -> Decision:
        """Async twin of :meth:`test`."""
        return await self._adirect(key, rates, strategy, cost, burst, False)

    async def _adirect(self, key: str, rates: RatesLike, strategy: str | None, cost: int,
                       burst: int | None, consume: bool) -> Decision:
        if not self.storage.remote:  # a local store never blocks: the sync call
            call = self.hit if consume else self.test
            return call(key, rates, strategy=strategy, cost=cost, burst=burst)
        plan, key, now = prepared(self, key, rates, strategy, cost, burst)
        return await adecide(self, plan, key, cost, consume, now)

    async def areset(self, key: str) -> None:
        """Async twin of :meth:`reset`."""
        await admin.arun(admin.reset(self, key))

    # -- rules: safelists, blocklists, bans, throttles, tracks (see _engine, _rules) ------

    def safelist(self, name: str, predicate: Callable[[RequestView], Any] | None = None, *,
                 ips: Iterable[str] | None = None) -> None:
        """Let requests through untouched when ``predicate(view)`` is true and/or the client
        IP is in ``ips`` (addresses or CIDRs); with both, both must hold."""
        self.engine.rules.add_list("safelist", name, predicate, ips)

    def blocklist(self, name: str, predicate: Callable[[RequestView], Any] | None = None, *,
                  ips: Iterable[str] | None = None) -> None:
        """Refuse (403) requests for which ``predicate(view)`` is true and/or whose client
        IP is in ``ips`` (addresses or CIDRs); with both, both must hold."""
        self.engine.rules.add_list("blocklist", name, predicate, ips)

    def fail2ban(
        self, name: str, *, match: Callable[[RequestView], Any], maxretry: int,
        findtime: float, bantime: float, key: KeyLike = None, escalate: Escalate = False,
    ) -> None:
        """Refuse requests that ``match``; a key (default: the client) matching ``maxretry``
        times in ``findtime`` s is banned for ``bantime`` s (``escalate``: see docs/rules.md)."""
        self.engine.rules.add_ban("fail2ban", name, match, maxretry, findtime, bantime, key,
                                  escalate)

    def allow2ban(
        self, name: str, *, match: Callable[[RequestView], Any], maxretry: int,
        findtime: float, bantime: float, key: KeyLike = None, escalate: Escalate = False,
    ) -> None:
        """Like :meth:`fail2ban`, but matching requests go through until the key is banned."""
        self.engine.rules.add_ban("allow2ban", name, match, maxretry, findtime, bantime, key,
                                  escalate)

    def throttle(
        self,
        name: str,
        rates: RatesLike | Callable[[RequestView], RatesLike],
        *,
        match: Callable[[RequestView], Any] | None = None,
        key: KeyLike = None,
        strategy: str | None = None,
        cost: int | Callable[[RequestView], int] | None = None,
        burst: int | None = None,
        dry_run: bool = False,
        count_when: Callable[[ResponseInfo], Any] | None = None,
        on_unreadable: str = "client", methods: Strings = None, paths: Strings = None,
        path_prefix: Strings = None, hosts: Strings = None,
    ) -> None:
        """Limit requests that ``match`` (default: all) to ``rates`` per ``key``; ``rates``
        may be a function of the view (per caller: :meth:`plans`; counts kept across plans).
        ``key``: a function of the view (None skips the rule), ``"ip"``, ``"client"``
        (default: the IPv4 address or IPv6 /64) or ``"header:<name>"``. ``cost``: an int or
        a function of the view. ``dry_run``: count and emit events, never refuse.
        ``count_when``: a function of the response (``.status_code``); the rule is tested
        before the app and charged after it answers, only when the function returns true.

        ``on_unreadable``: what happens when the key cannot be read (the key function
        raised, or returned None after reading a ``view.form`` that could not be read):
        ``"client"`` (default) counts it under its client key, in a namespace of its own
        (``"#client:<key>"``); ``"refuse"`` refuses it (429). Keys over 200 characters, or
        starting with ``#``, are stored as their SHA-256. ``methods``, ``paths``,
        ``path_prefix``, ``hosts``: what the rule matches, declared (indexed: requests they
        rule out skip the rule unasked). See ``docs/rules.md``.
        """
        self.engine.rules.add_throttle(name, rates, match, key, strategy, cost, burst, dry_run,
                                       count_when, on_unreadable, methods=methods, paths=paths,
                                       path_prefix=path_prefix, hosts=hosts)

    def set_rule_rates(self, name: str, rates: RatesLike | None) -> tuple[Rate, ...]:
        """Replace the rates of the throttle rule ``name`` (shield mode tightens a rule so)
        until set again, a rules-file reload included; None: its own rates again. Returns
        the previous rates. State is keyed by rule, strategy and period: it bites at once."""
        return set_rule_rates(self.engine.rules, name, rates)

    def plans(self, rates: Mapping[str, RatesLike], plan: str | Callable[[RequestView], object],
              default: str | None = None) -> Plans:
        """A rates function by plan for ``throttle(rates=...)`` and ``limit``: see Plans."""
        return Plans(rates, plan, default)

    def track(
        self, name: str, match: Callable[[RequestView], Any] | None = None, *, key: KeyLike = None
    ) -> None:
        """Emit a ``"tracked"`` event for requests that ``match`` and reach the app."""
        self.engine.rules.add_track(name, match, key)

    @overload
    def on(self, kind: CallbackT, callback: None = None) -> CallbackT: ...
    @overload
    def on(self, kind: str, callback: None = None) -> Callable[[CallbackT], CallbackT]: ...
    @overload
    def on(self, kind: str, callback: CallbackT) -> CallbackT: ...
    def on(self, kind: Any, callback: EventCallback | None = None) -> Any:
        """Subscribe ``callback(event)`` to events of ``kind`` (or to every kind when the
        first argument is the callback). Returns the callback; ``@limiter.on("banned")``
        works as a decorator."""
        return subscribe(self.engine, kind, callback)

    def off(self, kind: Any, callback: EventCallback | None = None) -> bool:
        """Undo :meth:`on`: ``callback`` is told no more of ``kind`` (of any kind when the
        first argument is the callback). Whether it was subscribed."""
        return unsubscribe(self.engine, kind, callback)

    def evaluate(self, view: RequestView) -> Verdict:
        """Run every rule on one request (one storage call); never raises."""
        return self.engine.evaluate(view)

    async def aevaluate(self, view: RequestView) -> Verdict:
        """Async twin of :meth:`evaluate` (only async storage calls)."""
        return await self.engine.aevaluate(view)

    def settle(
        self, verdict: Verdict, status: int, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        """After the response: charge the ``count_when`` throttles whose predicate matches
        ``status`` (an exception from the app counts as 500). Idempotent."""
        self.engine.settle(verdict, status, headers)

    async def asettle(
        self, verdict: Verdict, status: int, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Async twin of :meth:`settle`."""
        await self.engine.asettle(verdict, status, headers)

    # -- admin: the dynamic blocklist, forgetting state (see _admin) ----------------------

    def block(self, key: str, ttl: float | None = None, reason: str = "") -> str:
        """Refuse every request from ``key`` for ``ttl`` seconds (None: until unblocked), in
        every worker sharing the storage; returns the key as stored.

        ``key``: a client address, normalised as requests' addresses are (IPv4-mapped IPv6
        to IPv4, IPv6 compressed lower-case, whitespace stripped, ``/32`` and ``/128``
        taken as the address), or an IPv6 network of ``ipv6_prefix`` bits (a client key:
        ``"2001:db8:1:2::/64"``).

        Raises:
            ConfigError: anything else, which would block nobody: another network (list it
                with :meth:`blocklist` ``ips=``), an ambiguous ``010.0.0.1``, a name, a ban
                (``"fail2ban:<rule>:<key>"``: bans are made by rules; block the client's
                address or network instead).
        """
        return admin.run(admin.block(self, key, ttl, reason))

    def unblock(self, key: str) -> bool:
        """Lift a block or ban: ``key`` as :meth:`blocked` lists it
        (``"fail2ban:scanners:192.0.2.7"``), or a client key (``"192.0.2.7"``, any spelling
        :meth:`block` takes) or other discriminator of bans (a user name), which lifts its
        manual block and every ban of it. An IPv6 address also lifts what the blocklist
        holds for its network (its client key: ``"2001:db8:1:2::/64"``). Lifting a ban
        also resets the rule counters of its key. True when there was one.

        Raises:
            ConfigError: a key :meth:`block` would refuse (``010.0.0.1``, another
                network), or a ban of a rule this limiter does not have when it has rules
                and there is no such ban.
        """
        return admin.run(admin.unblock(self, key))

    def blocked(self) -> list[Block]:
        """Every live block and ban, soonest to expire first."""
        return self.storage.blocked(self.engine.now())

    async def ablock(self, key: str, ttl: float | None = None, reason: str = "") -> str:
        """Async twin of :meth:`block`."""
        return await admin.arun(admin.block(self, key, ttl, reason))

    async def aunblock(self, key: str) -> bool:
        """Async twin of :meth:`unblock`."""
        return await admin.arun(admin.unblock(self, key))

    async def ablocked(self) -> list[Block]:
        """Async twin of :meth:`blocked`."""
        return await self.storage.ablocked(self.engine.now())

    def reset_rules(self, key: str) -> None:
        """Forget the state every rule keeps for the discriminator ``key`` (for example a
        user name after a successful login).

        ``key`` as the rules store it or as an operator has it at hand: a client address
        in any spelling :meth:`block` takes resets the address, its client key (an IPv6
        address: its ``ipv6_prefix`` network) and its ``on_unreadable`` bucket
        (``"#client:<client key>"``); a long value, or one starting with ``#``, is found
        by its hash, as the rules stored it (``#sha256:...`` and ``#client:...`` are taken
        as they are).

        Raises:
            ConfigError: an empty key, or a network that is not a client key.
        """
        admin.run(admin.reset_rules(self, key))

    async def areset_rules(self, key: str) -> None:
        """Async twin of :meth:`reset_rules`."""
        await admin.arun(admin.reset_rules(self, key))

    # -- rules files, reload, concurrency (issue 7; see _rulesfile, _reload, _concurrency) --

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, reload_interval: float | None = None,
        reload_thread: bool = False, **limiter_kwargs: Any,
    ) -> Limiter:
        """A Limiter with the rules of a TOML rules file (see ``docs/rules-file.md``).

        The file's ``[limiter]`` table gives settings (``storage``, ``trusted_proxies``, ...);
        ``limiter_kwargs`` override them. ``reload_interval``: check the file for changes
        at most every that many seconds, on requests (no thread unless ``reload_thread``).

        Raises:
            RulesFileError: the file has errors (every one listed with its line).
        """
        from ._rulesfile import load_rules

        ruleset = load_rules(path)
        limiter = cls(**{**ruleset.limiter, **limiter_kwargs})
        limiter.load_rules(path, reload_interval=reload_interval, reload_thread=reload_thread)
        return limiter

    def load_rules(
        self, source: str | os.PathLike[str] | RuleSet, *, reload_interval: float | None = None,
        reload_thread: bool = False,
    ) -> None:
        """Add the rules of a rules file (a path, or a parsed ``RuleSet``) to this limiter.
        With a path, :meth:`reload` re-reads it later; ``reload_interval`` watches it."""
        from ._reload import load_into

        load_into(self, source, reload_interval, reload_thread)

    def reload(self) -> bool:
        """Re-read the rules file now; a bad file is rejected (the rules in force stay) and
        its errors logged. Returns whether the file's rules are now in force."""
        from ._reload import watcher_of

        return watcher_of(self).reload()

    def reload_on_signal(self, signum: int | None = None) -> None:
        """Reload the rules file when the process receives ``signum`` (default SIGHUP);
        the next request does the reload. Call from the main thread."""
        import signal

        from ._reload import watcher_of

        watcher_of(self).on_signal(signal.SIGHUP if signum is None else signum)

    def concurrency(
        self, name: str, limit: int, *, key: KeyLike = "global",
        match: Callable[[RequestView], Any] | None = None, timeout: float | None = None,
        retry_after: float | None = None,
    ) -> None:
        """At most ``limit`` requests in flight per ``key`` (``"global"``, ``"client"``,
        ``"ip"``, ``"header:<name>"``, a function of the view) among those that ``match``;
        more get 429. Leases expire after ``timeout`` s (60): a crashed worker's come back."""
        with ConcurrencyRules.editing(self) as conc:
            conc.refuse_taken(name)  # (under the lock: a throttle meanwhile)
            conc.add(name, limit, key=key, match=match, timeout=timeout, retry_after=retry_after)

    def shed(
        self, capacity: int, *, priority: Callable[[RequestView], Any] | None = None,
        thresholds: Sequence[float] = (0.8, 1.0), timeout: float | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Priority load shedding: with ``capacity`` requests in flight as full load (all
        workers sharing the storage), a request of priority ``p`` (``priority(view)``, an
        int, higher is more important; default 0) is refused with 503 once
        ``thresholds[p] * capacity`` requests are in flight."""
        with ConcurrencyRules.editing(self) as conc:
            conc.refuse_taken(SHED_RULE, LOAD_SHEDDING)  # its refusals' and events' name
            conc.set_shedding(capacity, priority, thresholds, timeout, retry_after)

    def admission(
        self, *, priority: Callable[[RequestView], Any] | None = None,
        thresholds: Sequence[float] | None = None, initial_limit: int = 20,
        min_limit: int = 4, max_limit: int = 1000, dry_run: bool = False,
    ) -> None:
        """Adaptive concurrency control in this worker (docs/under-attack.md): the number of
        requests in flight follows the app's latency against its unloaded minimum, and
        allowed requests beyond it are shed at once (503, ``Retry-After``). ``priority(view)``
        (an int, higher is more important) lets level ``p`` fill ``thresholds[p]`` of the
        limit (default ``(0.5, 0.8, 1.0)``), the lowest shed first. ``dry_run``: only
        report (``"shed"`` events)."""
        from ._admit import AdmissionStep

        self.engine.admission = AdmissionStep(
            self.engine, priority=priority, thresholds=thresholds, initial_limit=initial_limit,
            min_limit=min_limit, max_limit=max_limit, dry_run=dry_run, clock=self.clock)

    def challenge(self, **options: Unpack[ChallengeOptions]) -> None:
        """Challenge unknown clients before the app (``ChallengeOptions``, under-attack.md)."""
        install_challenge(self, options)

    def inflight(self, name: str, key: str = "*") -> int:
        """Requests in flight under concurrency rule ``name`` for discriminator ``key``
        (``"*"`` for a global rule; ``name="shedding"``: everything load shedding counts)."""
        return ConcurrencyRules.of(self).inflight(name, key)

    # -- decorators and framework integrations (see _decorators.py, throttlekit.contrib) --

    def limit(self, rates: RatesLike | Callable[..., RatesLike],
              **options: Unpack[LimitOptions]) -> Callable[[FuncT], FuncT]:
        """Decorate a view, endpoint, function or coroutine with ``rates`` (or a function
        of nothing, the view, ``key`` or ``(group, request)``: per caller, see :meth:`plans`).
        In a request (Flask, Django, Starlette/FastAPI), counted per client (or ``key``: a
        function of the view, ``"ip"``, ``"user"``, ``"user_or_ip"``, ``"header:<name>"``)
        under the endpoint's name; a breach answers the framework's native 429. Plain calls:
        ``key(*args, **kwargs)`` picks the counter, a breach raises ``RateLimitExceeded``.
        Options: ``key, strategy, cost, methods, per_method, burst, override_defaults,
        scope, on_unreadable, count_when, dry_run, block``; see ``docs/frameworks.md``."""
        from ._decorators import decorate
        from ._limitspec import make_spec

        return decorate(self, make_spec(self, rates, **options), self)

    def shared_limit(self, rates: RatesLike, scope: str,
                     **options: Any) -> Callable[[FuncT], FuncT]:
        """Like :meth:`limit`, but every function decorated with this ``scope`` shares one
        counter per key."""
        return self.limit(rates, scope=scope, **options)

    def exempt(self, fn: FuncT) -> FuncT:
        """Exempt a view (or Flask blueprint) from default and application limits. Rules
        run before routing: safelist the view's path to take it out of them too."""
        from ._decorators import exempt
        return exempt(self, fn)

    def depends(self, rates: RatesLike,
                **options: Unpack[LimitOptions]) -> Callable[..., Awaitable[Decision | None]]:
        """A FastAPI dependency: ``Depends(limiter.depends("10/minute"))``.

        Raises:
            ConfigError: FastAPI (and its throttlekit adapter) is not installed.
        """
        from ._adapters import adapter_named
        from ._limitspec import make_spec

        spec = make_spec(self, rates, what="depends", **options)
        adapter = adapter_named("fastapi")
        if adapter is None:
            raise ConfigError("limiter.depends() makes FastAPI dependencies: "
                              "pip install 'throttlekit-web[fastapi]'")
        return adapter.dependency(self, spec)
