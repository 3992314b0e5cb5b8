"""Loading a rules file into a limiter, and reloading it while the app runs.

The rules of a file are compiled into a fresh rule engine, which then replaces the
limiter's engine in one attribute assignment: a request sees either the old rules or the
new ones, never a mix, and nothing is locked on the request path. A file with any error is
rejected whole: the rules in force stay, and the errors are logged (with their lines).

Rules registered in code (``limiter.throttle(...)``) are kept across reloads; event
subscribers (``limiter.on``, monitors) stay subscribed. State is keyed by rule name,
strategy and period, so a reloaded rule keeps its counters, and a changed limit applies to
them at once.

Three ways to reload, all opt-in:

- ``reload_interval=N``: the next request at least N seconds after the last check looks at
  the file's modification time (one ``os.stat``), and reloads it when it changed
  (``reload_interval=0``: every request looks). No thread;
- ``limiter.reload_on_signal(signal.SIGHUP)``: the signal marks the file for reloading by
  the next request (the handler itself does no I/O);
- ``limiter.reload()``: now, from an admin endpoint or a shell; returns whether it worked.

``reload_thread=True`` adds a daemon thread checking every ``reload_interval`` seconds, for
apps that want a reload to land while idle.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from ._errors import ConfigError
from ._registration import reapply
from ._rulesfile import RuleSet, load_rules

if TYPE_CHECKING:
    from ._limiter import Limiter

__all__ = ["RulesWatcher", "install"]

logger = logging.getLogger("throttlekit")

#: seconds a changed rules file must hold still before a watch installs it
SETTLE = 0.05


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def install(limiter: Limiter, ruleset: RuleSet, replaces: frozenset[str] = frozenset()
            ) -> frozenset[str]:
    """Swap ``ruleset`` in as the limiter's file rules, atomically.

    ``replaces``: the names of the rules a previous file installed (they go); every other
    rule already registered stays. Returns the names of the rules now from the file.

    Raises:
        RulesFileError: some rule cannot be registered; nothing changed.
    """
    engine = limiter.engine
    with engine.changing:  # registrations wait, then land on the new rules (_registration)
        return _swap(limiter, ruleset, replaces)


def _swap(limiter: Limiter, ruleset: RuleSet, replaces: frozenset[str]) -> frozenset[str]:
    from ._concurrency import ConcurrencyRules
    from ._rules import uses_form

    engine = limiter.engine
    old = engine.rules
    new = old.without(replaces)
    old_conc = engine.concurrency
    conc = ConcurrencyRules(limiter)
    if old_conc is not None:
        conc.rules = tuple(r for r in old_conc.rules if r.name not in replaces)
        conc.names = {n: k for n, k in old_conc.names.items() if n not in replaces}
        if "shedding" not in replaces:
            conc.shedding = old_conc.shedding
        conc.needs_form = any(uses_form(r.key, r.match) for r in conc.rules) or (
            conc.shedding is not None and uses_form(conc.shedding.priority)
        )
    for name, kind in conc.names.items():
        new.names.setdefault(name, kind)
    new.needs_form = new.needs_form or conc.needs_form
    ruleset.register(new, conc)
    names = ruleset.names()
    reapply(new, names)  # rates a Shield (set_rule_rates) set on file rules hold
    if ruleset.shedding is not None:
        names.add("shedding")
    # the swap: two assignments, each atomic; a request between them sees new rate rules
    # with old concurrency rules, both complete
    engine.rules = new
    old.stale = True
    engine.concurrency = conc if conc else None
    limiter.forget_local()
    return frozenset(names)


def load_into(limiter: Limiter, source: str | os.PathLike[str] | RuleSet,
              reload_interval: float | None, reload_thread: bool) -> None:
    """``Limiter.load_rules``: install a parsed ``RuleSet``, or watch the file at a path."""
    if isinstance(source, RuleSet):
        install(limiter, source)
        return
    engine = limiter.engine
    if engine.watcher is not None:
        raise ConfigError(f"this limiter already has a rules file: {engine.watcher.path!r}")
    watcher = RulesWatcher(limiter, source, reload_interval)
    watcher.load()
    engine.watcher = watcher
    if reload_thread:
        watcher.start_thread()


def watcher_of(limiter: Limiter) -> RulesWatcher:
    """The limiter's rules-file watcher; ConfigError when it has no rules file."""
    watcher = limiter.engine.watcher
    if watcher is None:
        raise ConfigError("this limiter has no rules file (use Limiter.from_file)")
    return watcher


class RulesWatcher:
    """The rules file of one limiter: loads it, and reloads it when asked or changed."""

    __slots__ = ("_lock", "_thread", "candidate", "interval", "last_error", "limiter", "loaded",
                 "names", "next_check", "path", "pending", "reloads", "signature")

    def __init__(self, limiter: Limiter, path: str | os.PathLike[str],
                 interval: float | None = None) -> None:
        if interval is not None and (
            isinstance(interval, bool) or not isinstance(interval, (int, float))
            or not interval >= 0 or not math.isfinite(interval)
        ):
            raise ConfigError(f"reload_interval must be a number of seconds >= 0 (0: check "
                              f"on every request) or None, got {interval!r}")
        self.limiter = limiter
        self.path = os.fspath(path)
        self.interval = interval
        self.next_check = math.inf if interval is None else time.monotonic() + interval
        #: a reload was asked for (signal): the next request does it
        self.pending = False
        self.signature: tuple[int, int, int] | None = None
        #: a changed signature seen once, waiting to be seen again (see _settled)
        self.candidate: tuple[int, int, int] | None = None
        self.names: frozenset[str] = frozenset()
        self.last_error: ConfigError | None = None
        #: successful loads (the first one included)
        self.reloads = 0
        #: wall-clock time of the last successful load
        self.loaded = 0.0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"RulesWatcher({self.path!r}, interval={self.interval!r})"

    def _strategies(self) -> list[str]:
        from ._algorithms import ALGORITHMS

        storage = self.limiter.storage
        return [s for s in ALGORITHMS if storage.unsupported(s) is None]

    def load(self) -> None:
        """Load the file now; raises on errors (the first load, where failing loudly is
        right)."""
        with self._lock:
            sig = _signature(self.path)
            ruleset = load_rules(self.path, strategies=self._strategies())
            self.names = install(self.limiter, ruleset, self.names)
            self.signature = sig
            self.reloads += 1
            self.loaded = time.time()
            self.last_error = None

    def reload(self) -> bool:
        """Reload now. A bad file is rejected (the rules in force stay) and logged; returns
        whether the new rules are in force. A file being written (empty, or changing while
        read) is waited for a little, then left alone."""
        with self._lock:
            for _ in range(5):
                done = self._reload(_signature(self.path))
                if done is not None:
                    return done
                time.sleep(SETTLE)
            logger.error("rules file %s is still being written; the rules in "
                         "force stay", self.path)
            return False

    def _read(self, sig: tuple[int, int, int] | None) -> RuleSet | None:
        """The file's rules, or None while it is being written: empty (a rewrite in place
        truncates it first, and an empty file is valid TOML with no rules), or changed
        while read."""
        if sig is not None and sig[1] == 0:
            return None
        try:
            ruleset = load_rules(self.path, strategies=self._strategies())
        except ConfigError:
            if sig is not None and _signature(self.path) != sig:
                return None  # half-written: the error is the writer's next bytes missing
            raise
        if _signature(self.path) != sig:
            return None
        return ruleset

    def _reload(self, sig: tuple[int, int, int] | None) -> bool | None:
        """Install the file's rules: True when done, False when the file is bad, None when
        it is being written (try again later)."""
        try:
            ruleset = self._read(sig)
            if ruleset is None:
                return None
            self.signature = sig  # a bad file is reported once per change, not every check
            self.names = install(self.limiter, ruleset, self.names)
        except ConfigError as exc:
            self.signature = sig
            self.last_error = exc
            logger.error("rules file %s rejected; the rules in force stay:\n%s",
                         self.path, exc)
            return False
        except Exception as exc:  # a bug of ours: reported once per change of the file too
            self.signature = sig
            self.last_error = ConfigError(f"{type(exc).__name__}: {exc}")
            logger.exception("reloading %s failed; the rules in force stay",
                             self.path)
            return False
        self.last_error = None
        self.reloads += 1
        self.loaded = time.time()
        try:  # every other worker drops its cached refusals too (see _denials)
            self.limiter.store.next_generation()
        except Exception as exc:
            logger.error("rules of %s reloaded, but the store could not tell the "
                         "other workers (%s: %s)", self.path, type(exc).__name__, exc)
        if ruleset.limiter:
            logger.info("[limiter] settings of %s apply at start only",
                        self.path)
        logger.info("reloaded %d rules from %s", len(self.names), self.path)
        return True

    def poll(self) -> None:
        """On the request path: reload when asked, or when the file changed (checked at
        most every ``interval`` seconds). Cheap when there is nothing to do."""
        if self.pending or time.monotonic() >= self.next_check:
            self._check()

    def _settled(self, sig: tuple[int, int, int]) -> bool:
        """Whether a changed file looks finished: a new file (an atomic replace, complete
        by construction), the same at two checks, or last modified more than
        :data:`SETTLE` seconds ago."""
        old = self.signature
        return (
            old is None or sig[2] != old[2] or sig == self.candidate
            or time.time_ns() - sig[0] >= SETTLE * 1e9
        )

    def _check(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is on it; this request goes on with the rules in force
        try:
            if self.interval is not None:
                self.next_check = time.monotonic() + self.interval
            forced, self.pending = self.pending, False
            sig = _signature(self.path)
            if sig is None:
                if sig != self.signature:
                    self.signature = sig
                    logger.error("rules file %s is gone; the rules in force stay",
                                 self.path)
                return
            if forced or sig != self.signature:
                # a signal says the writer is done; a change seen on its own may be a
                # rewrite in progress, so it must hold still first
                done = self._reload(sig) if forced or self._settled(sig) else None
                if done is None:  # being written: look again soon
                    self.candidate = sig
                    self.pending = forced
                    self.next_check = min(self.next_check, time.monotonic() + SETTLE)
                else:
                    self.candidate = None
        except Exception:  # never fail a request over a reload
            logger.exception("reloading %s failed", self.path)
        finally:
            self._lock.release()

    def on_signal(self, signum: int = signal.SIGHUP) -> None:
        """Reload on ``signum`` (by the next request: the handler only sets a flag)."""
        def handler(_signum: int, _frame: Any) -> None:
            self.pending = True

        try:
            signal.signal(signum, handler)
        except ValueError as exc:  # not the main thread
            raise ConfigError(f"cannot install a handler for signal {signum}: {exc}") from None

    def start_thread(self) -> None:
        """A daemon thread checking the file every ``interval`` seconds (opt-in)."""
        if not self.interval:
            raise ConfigError("reload_thread=True needs a reload_interval > 0, got "
                              f"{self.interval!r}")
        if self._thread is not None:
            return
        interval = self.interval

        def run() -> None:
            while True:
                time.sleep(interval)
                self.next_check = 0.0
                self.poll()

        self._thread = threading.Thread(target=run, name="throttlekit-rules-reload",
                                        daemon=True)
        self._thread.start()
