"""Shield mode: contain an anomaly automatically, reversibly, and say what was done.

While the monitor reports an anomaly on all traffic, the shield

- bans the clients sending more than ``factor`` times the per-client baseline rate (see
  :meth:`Monitor.offenders`), through the limiter's dynamic blocklist
  (``limiter.block(key, ttl=ban_ttl, reason="shield: ...")``), so that on a shared
  store (Redis) the ban holds on every worker; it looks again every ``interval``
  seconds while the anomaly lasts;
- and/or tightens the named throttle rules to stricter rates (``tighten={"per-ip":
  "30/minute"}``), restored when the anomaly ends or on :meth:`Shield.release`.

Every action is logged on the ``throttlekit.shield`` logger with structured ``extra``
fields (``throttlekit_event``, ``key``, ``ttl``, ``requests``, ``rule``, ...). A ban is
undone by ``limiter.unblock(key)`` (or ``throttlekit unblock KEY``); bans expire by
themselves after ``ban_ttl`` seconds. Opt-in: nothing happens unless a Shield is built.

Requests without a client IP (a Unix socket and no trusted proxy) are never banned: the
monitor counts no client for them, and the shield skips the shared key ``"unknown"``. They
stay under the throttles' shared ``"unknown"`` budget, which ``tighten`` tightens too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

from .._errors import ConfigError
from .._rates import coerce_rates
from ._monitor import ALL, Anomaly, Monitor

__all__ = ["Shield"]

logger = logging.getLogger("throttlekit.shield")

#: the shared key of requests without a client IP (throttlekit._rules.UNKNOWN_CLIENT): never
#: banned, since a ban of it would be a ban of everyone behind the socket
_NO_CLIENT = "unknown"


class Shield:
    """Bans offenders and tightens rules while an anomaly lasts.

    Args:
        limiter: the Limiter (anything with ``block(key, ttl=, reason=)`` and
            ``unblock(key)``; rule tightening also needs ``set_rule_rates``).
        monitor: the Monitor whose anomalies trigger the shield.
        ban: ban offenders (default True).
        ban_ttl: seconds a ban lasts (default 600).
        factor: an offender sends more than ``factor`` times the per-client baseline
            rate (default 2.5). The baseline is a high quantile of legitimate clients'
            rates, so heavy legitimate clients stay under the bar.
        min_requests: never ban a client with fewer requests than this in the lookback
            (default 10).
        max_bans: the most bans per anomaly (default 10,000).
        interval: seconds between offender sweeps during an anomaly (default 1).
        tighten: rule name -> stricter rates, applied during an anomaly.
        scopes: anomaly scopes that engage the shield (default ``("*",)``: all traffic).
        dry_run: log what would be done, do nothing.
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
    ) -> None:
        if not isinstance(ban_ttl, (int, float)) or isinstance(ban_ttl, bool) or ban_ttl <= 0:
            raise ConfigError(f"ban_ttl must be a positive number of seconds, got {ban_ttl!r}")
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 1:
            raise ConfigError(f"factor must be a number above 1, got {factor!r}")
        if isinstance(min_requests, bool) or not isinstance(min_requests, int) or min_requests < 1:
            raise ConfigError(f"min_requests must be a positive integer, got {min_requests!r}")
        if isinstance(max_bans, bool) or not isinstance(max_bans, int) or max_bans < 0:
            raise ConfigError(f"max_bans must be an integer >= 0, got {max_bans!r}")
        if not isinstance(interval, (int, float)) or interval <= 0:
            raise ConfigError(f"interval must be a positive number of seconds, got {interval!r}")
        if ban and not callable(getattr(limiter, "block", None)):
            raise ConfigError(f"the shield bans through limiter.block(), which {limiter!r} lacks")
        self.tighten = dict(tighten or {})
        if self.tighten:
            setter = getattr(limiter, "set_rule_rates", None)
            if not callable(setter):
                raise ConfigError(
                    f"tightening rules needs limiter.set_rule_rates(), which {limiter!r} lacks"
                )
            kinds = _rule_kinds(limiter)
            for name, rates in self.tighten.items():
                if kinds is not None and kinds.get(name) != "throttle":
                    raise ConfigError(f"tighten names {name!r}, which is not a throttle rule")
                coerce_rates(rates)  # a bad rate fails now, not during an attack
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
        monitor.on_anomaly(self._on_anomaly)
        monitor.on_tick(self._on_tick)

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
        """Start containing: tighten rules and ban the current offenders."""
        if self.active:
            return
        self.active = True
        self.engagements += 1
        self._bans_this_time = 0
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
        """Ban the offenders of the lookback not banned yet; returns the new bans."""
        self._next = now + self.interval
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
        """Stop containing: restore the tightened rules (bans run out on their own; use
        :meth:`unban` to lift them now)."""
        if now is None:
            now = self.monitor.clock()
        for rule, previous in self._saved.items():
            try:
                self.limiter.set_rule_rates(rule, previous)
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
                "throttlekit shield released after banning %d clients", self._bans_this_time,
                extra={"throttlekit_event": "shield_released", "at": now,
                       "bans": self._bans_this_time},
            )

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


def _rule_kinds(limiter: Any) -> dict[str, str] | None:
    """Rule name -> kind of a throttlekit Limiter (None for other limiter-likes)."""
    kinds = getattr(getattr(getattr(limiter, "engine", None), "rules", None), "names", None)
    return kinds if isinstance(kinds, dict) else None
