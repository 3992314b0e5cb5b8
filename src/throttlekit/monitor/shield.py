"""Shield mode: contain an anomaly automatically, reversibly, and say what was done.

While the monitor reports an anomaly on all traffic, the shield asks it every
``interval`` seconds which dimension explains the surge (:meth:`Monitor.attribute`) and
contains the surge there:

- the **clients**: it bans those sending more than ``factor`` times the per-client
  baseline rate (see :meth:`Monitor.offenders`), through the limiter's dynamic blocklist
  (``limiter.block(key, ttl=ban_ttl, reason="shield: ...")``), so that on a shared store
  (Redis) the ban holds on every worker;
- a **path, user agent, header fingerprint or network**: it throttles the values named,
  all their clients together, to their own baseline times ``factor`` (at least
  ``min_allowance`` requests per second), through the one throttle rule it registered
  when it was built (:mod:`throttlekit.monitor._containment`); requests without those
  values, and clients with standing (:class:`throttlekit.Standing`), are never refused by
  it. The throttle is lifted when the anomaly ends;
- **everything** (nothing narrower explains it: a flash crowd of new visitors, each at a
  user's rate, asking for the usual mix of pages): nothing. The excess is for admission
  control, not for bans.

It also tightens the named throttle rules to stricter rates (``tighten={"per-ip":
"30/minute"}``) for the anomaly's length, restored when it ends or on
:meth:`Shield.release`.

Every action is logged on the ``throttlekit.shield`` logger with structured ``extra``
fields (``throttlekit_event``, ``key``, ``ttl``, ``requests``, ``rule``, ``dimension``,
``value``, ...). A ban is undone by ``limiter.unblock(key)`` (or ``throttlekit unblock
KEY``); bans expire by themselves after ``ban_ttl`` seconds. Opt-in: nothing happens
unless a Shield is built.

Requests without a client IP (a Unix socket and no trusted proxy) are never banned: the
monitor counts no client for them, and the shield skips the shared key ``"unknown"``. They
stay under the throttles' shared ``"unknown"`` budget, which ``tighten`` tightens too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from .._errors import ConfigError
from .._rates import coerce_rates
from ._containment import Containment, ContainmentRule
from ._monitor import ALL, Anomaly, Monitor
from .attribution import Attribution
from .dimensions import CLIENT

__all__ = ["Shield"]

logger = logging.getLogger("throttlekit.shield")

#: the shared key of requests without a client IP (throttlekit._rules.UNKNOWN_CLIENT): never
#: banned, since a ban of it would be a ban of everyone behind the socket
_NO_CLIENT = "unknown"


class Shield:
    """Contains an anomaly where it is explained (bans or a throttle on the values
    found) and tightens rules while it lasts.

    Args:
        limiter: the Limiter (anything with ``block(key, ttl=, reason=)`` and
            ``unblock(key)``; rule tightening also needs ``set_rule_rates``).
        monitor: the Monitor whose anomalies trigger the shield.
        ban: ban offenders (default True).
        ban_ttl: seconds a ban lasts (default 600).
        factor: an offender sends more than ``factor`` times the per-client baseline
            rate (default 2.5). The baseline is a high quantile of legitimate clients'
            rates, so heavy legitimate clients stay under the bar. A contained value
            keeps ``factor`` times its own baseline.
        min_requests: never ban a client with fewer requests than this in the lookback
            (default 10).
        max_bans: the most bans per anomaly (default 10,000).
        interval: seconds between offender sweeps during an anomaly (default 1).
        tighten: rule name -> stricter rates, applied during an anomaly.
        scopes: anomaly scopes that engage the shield (default ``("*",)``: all traffic).
        dry_run: log what would be done, do nothing.
        contain: throttle the path, user agent, fingerprint or network values that explain
            a surge (default True; needs ``limiter.throttle`` and ``set_rule_rates``).
        min_allowance: requests per second a contained value keeps at least (default 1).
        max_contained: the most values contained at once (default 64).
        rule: the name of the containment rule the shield registers (default
            ``"shield"``).
    """

    def __init__(
        self,
        limiter: Any,
        monitor: Monitor,
        *,
        ban: bool = True,
        ban_ttl: float = 600.0,
        factor: float = 2.5,
        min_requests: int = 10,
        max_bans: int = 10_000,
        interval: float = 1.0,
        tighten: Mapping[str, Any] | None = None,
        scopes: Iterable[str] = (ALL,),
        dry_run: bool = False,
        contain: bool = True,
        min_allowance: float = 1.0,
        max_contained: int = 64,
        rule: str = "shield",
    ) -> None:
        _check(limiter, ban=ban, contain=contain, tighten=tighten, ban_ttl=ban_ttl,
               factor=factor, min_requests=min_requests, max_bans=max_bans,
               interval=interval, min_allowance=min_allowance, max_contained=max_contained)
        self.tighten = dict(tighten or {})
        self.limiter = limiter
        self.monitor = monitor
        self.ban = ban
        self.ban_ttl = float(ban_ttl)
        self.factor = float(factor)
        self.min_requests = min_requests
        self.max_bans = max_bans
        self.interval = float(interval)
        self.scopes = frozenset(scopes)
        self.dry_run = dry_run
        self.active = False
        #: keys this shield banned, with the time of the ban
        self.banned: dict[Hashable, float] = {}
        self.engagements = 0
        #: bans made since the shield was built (a counter, for metrics)
        self.bans_total = 0
        self._since: float | None = None
        self._next = 0.0
        self._bans_this_time = 0
        self._saved: dict[str, Any] = {}
        self.min_allowance = float(min_allowance)
        self.max_contained = max_contained
        #: the attribution of the latest sweep (None before the first)
        self.attribution: Attribution | None = None
        #: values contained since the shield was built, by dimension (counters)
        self.containments_total: dict[str, int] = {}
        self._unexplained = False
        self._rule = ContainmentRule(limiter, rule) if contain else None
        if contain:
            monitor.quiet_rule(rule)
        monitor.on_anomaly(self._on_anomaly)
        monitor.on_tick(self._on_tick)
        monitor.on_snapshot(self._section)

    def __repr__(self) -> str:
        return f"<Shield {'active' if self.active else 'idle'} bans={len(self.banned)}>"

    def _on_anomaly(self, anomaly: Anomaly) -> None:
        if anomaly.scope not in self.scopes:
            return
        if anomaly.kind == "anomaly_started":
            self.engage(anomaly.at, since=anomaly.started_at)
        elif anomaly.kind == "anomaly_ended" and self.active:
            detector = self.monitor.detector
            if anomaly.scope != ALL or not detector.active:
                self.release(anomaly.at)

    def _on_tick(self, now: float) -> None:
        if self.active and now >= self._next:
            self.sweep(now)

    def engage(self, now: float, since: float | None = None) -> None:
        """Start containing: tighten rules, then contain where the surge is explained."""
        if self.active:
            return
        self.active = True
        self.engagements += 1
        self._bans_this_time = 0
        self._unexplained = False
        det = self.monitor.detector
        self._since = det.rising_since if since is None else since
        logger.warning(
            "throttlekit shield engaged (baseline %.1f req/s, now %.1f req/s)",
            det.baseline, det.peak_rate,
            extra={"throttlekit_event": "shield_engaged", "at": now,
                   "baseline": det.baseline, "rate": det.peak_rate, "dry_run": self.dry_run},
        )
        for rule, rates in self.tighten.items():
            self._tighten(rule, rates, now)
        self.sweep(now)

    def sweep(self, now: float) -> list[Hashable]:
        """Attribute the surge since it began and contain it there: ban the offending
        clients not banned yet, or throttle the values found; returns the new bans."""
        self._next = now + self.interval
        found = self.monitor.attribute(
            now, self._since, client_factor=self.factor, min_requests=self.min_requests
        )
        self.attribution = found
        if not found.narrow:
            self._unexplained_surge(found, now)
            return []
        if found.dimension != CLIENT:
            self._contain(found, now)
            return []
        return self._ban_offenders(now)

    def _unexplained_surge(self, found: Attribution, now: float) -> None:
        if self._unexplained:
            return  # once per engagement
        self._unexplained = True
        logger.warning(
            "throttlekit shield: no dimension explains the surge (a flash crowd?): nobody "
            "banned, nothing throttled; the excess is for admission control",
            extra={"throttlekit_event": "shield_unexplained", "at": now,
                   "attribution": found.as_dict(), "dry_run": self.dry_run},
        )

    def _contain(self, found: Attribution, now: float) -> None:
        """Throttle the culprits of ``found`` not contained yet."""
        rule = self._rule
        if rule is None:
            return
        new: list[Containment] = []
        room = self.max_contained - len(rule.contained)
        for c in found.culprits:
            value = str(c.value)
            if (found.dimension, value) in rule.contained or len(new) >= room:
                continue
            allowance = max(self.factor * c.baseline, self.min_allowance)
            new.append(Containment(found.dimension, value, allowance, c.rate, c.baseline,
                                   c.share, now))
        for held in new:
            logger.warning(
                "throttlekit shield %s %s %r to %.2f req/s: %s",
                "would throttle" if self.dry_run else "throttled", held.dimension,
                held.value, held.allowance, held.reason,
                extra={"throttlekit_event": "shield_contain", "dimension": held.dimension,
                       "value": held.value, "allowance": held.allowance, "rate": held.rate,
                       "baseline": held.baseline, "share": held.share, "at": now,
                       "rule": rule.name, "dry_run": self.dry_run},
            )
        if new and not self.dry_run:
            totals = self.containments_total
            totals[found.dimension] = totals.get(found.dimension, 0) + len(new)
            try:
                rule.add(new)
            except Exception:
                logger.exception("throttlekit shield: containing %s failed", found.dimension)

    def _ban_offenders(self, now: float) -> list[Hashable]:
        """Ban the offenders of the lookback not banned yet; returns the new bans."""
        if not self.ban:
            return []
        room = self.max_bans - self._bans_this_time
        if room <= 0:
            return []
        found = self.monitor.offenders(
            now, factor=self.factor, min_requests=self.min_requests, since=self._since,
            limit=room + len(self.banned),
        )
        new: list[Hashable] = []
        to_block: list[tuple[str, str]] = []
        baseline = self.monitor.client_baseline or 0.0
        lookback = now - max(self._since or now - self.monitor.window, now - self.monitor.window)
        for key, count in found:
            if key in self.banned or key == _NO_CLIENT:
                continue
            if len(new) >= room:
                break
            reason = (
                f"shield: {count} requests in {lookback:.0f}s, over {self.factor:g}x the "
                f"per-client baseline of {baseline:.2f}/s"
            )
            if not self.dry_run:
                to_block.append((str(key), reason))
            self.banned[key] = now
            new.append(key)
            logger.warning(
                "throttlekit shield %s %s for %gs: %s",
                "would ban" if self.dry_run else "banned", key, self.ban_ttl, reason,
                extra={"throttlekit_event": "shield_ban", "key": str(key),
                       "ttl": self.ban_ttl, "requests": count, "at": now,
                       "dry_run": self.dry_run},
            )
        self._bans_this_time += len(new)
        if not self.dry_run:
            self.bans_total += len(new)
        if to_block:
            self._block_all(to_block)
        return new

    def _block_all(self, to_block: list[tuple[str, str]]) -> None:
        """Make the bans. Inside an event loop with a remote store, in a worker thread, so
        a sweep never blocks the loop for a round trip per ban."""

        def block_all() -> None:
            for key, reason in to_block:
                try:
                    self.limiter.block(key, ttl=self.ban_ttl, reason=reason)
                except Exception:
                    logger.exception("throttlekit shield: banning %s failed", key)

        storage = getattr(self.limiter, "storage", None)
        if getattr(storage, "remote", False):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                loop.run_in_executor(None, block_all)
                return
        block_all()

    def _tighten(self, rule: str, rates: Any, now: float) -> None:
        if self.dry_run:
            previous = None
        else:
            try:
                previous = self.limiter.set_rule_rates(rule, rates)
            except Exception:
                logger.exception("throttlekit shield: tightening rule %r failed", rule)
                return
            self._saved.setdefault(rule, previous)
        logger.warning(
            "throttlekit shield %s rule %s to %s",
            "would tighten" if self.dry_run else "tightened", rule, rates,
            extra={"throttlekit_event": "shield_tighten", "rule": rule, "rates": str(rates),
                   "previous": str(previous), "at": now, "dry_run": self.dry_run},
        )

    def release(self, now: float | None = None) -> None:
        """Stop containing: lift the throttles on contained values and restore the
        tightened rules (bans run out on their own; use :meth:`unban` to lift them now)."""
        if now is None:
            now = self.monitor.clock()
        lifted = self._rule.clear() if self._rule is not None else []
        for c in lifted:
            logger.warning(
                "throttlekit shield lifted the throttle on %s %r", c.dimension, c.value,
                extra={"throttlekit_event": "shield_uncontain", "dimension": c.dimension,
                       "value": c.value, "since": c.since, "at": now},
            )
        for rule, previous in self._saved.items():
            try:  # its own rates: the file's, if a reload changed them meanwhile
                self.limiter.set_rule_rates(rule, None)
            except Exception:
                logger.exception("throttlekit shield: restoring rule %r failed", rule)
                continue
            logger.warning(
                "throttlekit shield restored rule %s to %s", rule, previous,
                extra={"throttlekit_event": "shield_restore", "rule": rule,
                       "rates": str(previous), "at": now},
            )
        self._saved.clear()
        if self.active:
            self.active = False
            logger.warning(
                "throttlekit shield released after banning %d clients and throttling %d "
                "values", self._bans_this_time, len(lifted),
                extra={"throttlekit_event": "shield_released", "at": now,
                       "bans": self._bans_this_time, "contained": len(lifted)},
            )

    def containment(self) -> list[Containment]:
        """The values throttled now, oldest first."""
        return [] if self._rule is None else list(self._rule.contained.values())

    def _section(self, now: float) -> dict[str, Any]:
        """The shield's part of the monitor's snapshot (and so of the status endpoint)."""
        return {"containment": {
            "rule": None if self._rule is None else self._rule.name,
            "values": [c.as_dict() for c in self.containment()],
            "total": dict(self.containments_total),
            "attribution": None if self.attribution is None else self.attribution.summary(),
        }}

    def unban(self, keys: Iterable[Hashable] | None = None) -> int:
        """Lift the shield's bans (all of them by default); returns how many were lifted."""
        chosen = list(self.banned) if keys is None else list(keys)
        lifted = 0
        for key in chosen:
            self.banned.pop(key, None)
            if self.limiter.unblock(str(key)):
                lifted += 1
            logger.warning(
                "throttlekit shield lifted the ban on %s", key,
                extra={"throttlekit_event": "shield_unban", "key": str(key)},
            )
        return lifted


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(limiter: Any, *, ban: bool, contain: bool, tighten: Mapping[str, Any] | None,
           **settings: Any) -> None:
    """ConfigError for a setting out of range or a limiter that cannot do what is asked."""
    rules: dict[str, tuple[Callable[[Any], bool], str]] = {  # name: (valid, what it must be)
        "ban_ttl": (lambda v: _number(v) and v > 0, "a positive number of seconds"),
        "factor": (lambda v: _number(v) and v > 1, "a number above 1"),
        "min_requests": (lambda v: _integer(v) and v >= 1, "a positive integer"),
        "max_bans": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
        "interval": (lambda v: _number(v) and v > 0, "a positive number of seconds"),
        "min_allowance": (lambda v: _number(v) and v > 0, "a positive number"),
        "max_contained": (lambda v: _integer(v) and v >= 1, "a positive integer"),
    }
    for name, value in settings.items():
        valid, what = rules[name]
        if not valid(value):
            raise ConfigError(f"{name} must be {what}, got {value!r}")
    if ban and not callable(getattr(limiter, "block", None)):
        raise ConfigError(f"the shield bans through limiter.block(), which {limiter!r} lacks")
    if contain and not all(
        callable(getattr(limiter, m, None)) for m in ("throttle", "set_rule_rates")
    ):
        raise ConfigError(
            f"containment needs limiter.throttle() and set_rule_rates(), which "
            f"{limiter!r} lacks (contain=False turns it off)"
        )
    if not tighten:
        return
    if not callable(getattr(limiter, "set_rule_rates", None)):
        raise ConfigError(
            f"tightening rules needs limiter.set_rule_rates(), which {limiter!r} lacks"
        )
    kinds = _rule_kinds(limiter)
    throttles = getattr(getattr(getattr(limiter, "engine", None), "rules", None),
                        "throttles", ())
    for name, rates in tighten.items():
        if kinds is not None and kinds.get(name) != "throttle":
            raise ConfigError(f"tighten names {name!r}, which is not a throttle rule")
        if any(t.name == name and t.resolve is not None for t in throttles):
            raise ConfigError(
                f"tighten names {name!r}, a throttle whose rates follow the caller (plans "
                f"or a rates function): the shield tightens rules with rates of their own; "
                f"tighten a fixed-rate rule beside it (per client) instead")
        coerce_rates(rates)  # a bad rate fails now, not during an attack


def _rule_kinds(limiter: Any) -> dict[str, str] | None:
    """Rule name -> kind of a throttlekit Limiter (None for other limiter-likes)."""
    kinds = getattr(getattr(getattr(limiter, "engine", None), "rules", None), "names", None)
    return kinds if isinstance(kinds, dict) else None
