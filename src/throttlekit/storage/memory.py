"""The in-memory backend: the embedded default.

One ``OrderedDict`` in least-recently-used order and one lock. A hit is one dict lookup,
the arithmetic and one store; no per-request scan, no timer thread. Memory is bounded by
``max_keys``, and state that has expired is reclaimed as new keys arrive: each insert looks
at the oldest entries and drops those that no longer say anything.

Eviction spares refusals: when the store is full, the least recently used key is evicted
only if its next request would be allowed. A key inside a refusal moves to a second,
*protected* tier instead (still found by every lookup, which moves it back), so flooding
the store with fresh keys cannot hand a refused client a fresh quota. A protected key is
evicted once its refusal is over, or when no key outside the tier is left to evict.

Dynamic blocklist entries with an expiry are also kept in a heap by expiry; each request
that looks the blocklist up (and each new block) pops a few expired ones, so expired bans
are reclaimed as they expire, in amortised O(1) per request.

State lives in one process: under several worker processes each has its own counters, so
the effective limit is multiplied by the number of workers. Use Redis or Memcached there.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from heapq import heapify, heappop, heappush
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .._algorithms import Algorithm
from .._decision import Decision
from .._errors import ConfigError
from .base import BatchResult, Block, Check, Storage

__all__ = ["DEFAULT_MAX_KEYS", "MemoryStorage"]

#: About 200 bytes a live key: a million keys stay near 200 MB.
DEFAULT_MAX_KEYS = 1_000_000
_INF = float("inf")
#: expired blocklist entries reclaimed per request (amortised O(1): each is popped once)
_RECLAIM_BLOCKS = 8


class MemoryStorage(Storage):
    """Thread-safe, bounded, in-process storage.

    Args:
        max_keys: the most keys kept; beyond it the least recently used key whose next
            request would be allowed is evicted (an evicted key starts afresh, so keep it
            above the number of active clients). Keys inside a refusal are evicted last.
        clock: zero-argument callable returning seconds since the epoch, used when the
            limiter passes no time of its own. Defaults to ``time.time``.
    """

    remote = False
    shared = False

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS, *, clock: Any = None) -> None:
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ConfigError(f"max_keys must be a positive integer, got {max_keys!r}")
        self.max_keys = max_keys
        self._clock = clock or time.time
        self._data: OrderedDict[str, Any] = OrderedDict()
        #: keys inside a refusal that reached the cold end of ``_data`` (see module doc);
        #: a lookup that misses ``_data`` looks here (``_revive``) when it is not empty
        self._protected: OrderedDict[str, Any] = OrderedDict()
        self._algorithms: dict[str, Algorithm] = {}
        self._blocks: dict[str, Block] = {}
        #: (expires_at, key) of blocks with an expiry; stale entries are skipped
        self._expiries: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        #: concurrency leases: key -> {lease id: expiry (microseconds)}
        self._leases: dict[str, dict[str, int]] = {}

    def __repr__(self) -> str:
        return f"MemoryStorage(max_keys={self.max_keys})"

    def __len__(self) -> int:
        """The number of rate-limit states held (at most ``max_keys``)."""
        return len(self._data) + len(self._protected)

    def stats(self) -> dict[str, int]:
        """Sizes, for monitoring and tests: ``keys`` (rate-limit states held, as ``len``),
        ``protected`` (of those, keys kept from eviction because they are inside a
        refusal), ``blocks`` (dynamic blocklist entries held, including expired ones not
        reclaimed yet) and ``leases`` (concurrency lease sets)."""
        with self._lock:
            return {
                "keys": len(self._data) + len(self._protected),
                "protected": len(self._protected),
                "blocks": len(self._blocks),
                "leases": len(self._leases),
            }

    def _now(self) -> int:
        if self._clock is time.time:
            return time.time_ns() // 1000
        return int(self._clock() * 1_000_000)

    def make_hit(self, algorithm: Algorithm) -> Callable[[str, int, int | None], Decision]:
        """A specialised ``hit`` for one algorithm: the hot path, with every lookup bound."""
        data = self._data
        get = data.get
        touch = data.move_to_end
        protected = self._protected
        revive = self._revive
        acquire = self._lock.acquire
        release = self._lock.release
        decide = algorithm.hit
        insert = self._insert
        prefix = algorithm.id + "|"
        clock = self._clock
        time_ns = time.time_ns

        def hit(key: str, cost: int, now: int | None) -> Decision:
            if now is None:
                now = time_ns() // 1000 if clock is time.time else int(clock() * 1_000_000)
            k = prefix + key
            acquire()  # bound acquire/release: half the cost of `with lock` here
            try:
                state = get(k)
                if state is None and protected:
                    state = revive(k)
                new, decision = decide(state, now, cost)
                if new is not state:
                    if state is None:
                        insert(k, new, algorithm, now)
                    else:
                        data[k] = new
                        touch(k)
                elif state is not None:
                    touch(k)
            finally:
                release()
            return decision

        return hit

    # -- limits -------------------------------------------------------------------------

    def hit(self, algorithm: Algorithm, key: str, cost: int, now: int | None) -> Decision:
        if now is None:
            now = int(self._clock() * 1_000_000)
        k = f"{algorithm.id}|{key}"
        with self._lock:
            data = self._data
            state = data.get(k)
            if state is None and self._protected:
                state = self._revive(k)
            new, decision = algorithm.hit(state, now, cost)
            if new is not state:
                if state is None:
                    self._insert(k, new, algorithm, now)
                else:
                    data[k] = new
                    data.move_to_end(k)
            elif state is not None:
                data.move_to_end(k)
        return decision

    def apply(
        self,
        checks: Sequence[Check],
        *,
        consume: bool = True,
        now: int | None = None,
        block_keys: Sequence[str] = (),
    ) -> BatchResult:
        if now is None:
            now = self._now()
        blocked: list[Block | None] = []
        with self._lock:
            expiries = self._expiries
            if expiries and expiries[0][0] * 1_000_000 <= now:
                self._reclaim_blocks(now)
            if block_keys:
                blocks = self._blocks
                for bk in block_keys:
                    b = blocks.get(bk)
                    if b is not None and b.expires_at * 1_000_000 <= now:
                        del blocks[bk]
                        b = None
                    blocked.append(b)
            data = self._data
            keys = [f"{c.algorithm.id}|{c.key}" for c in checks]
            states = [data.get(k) for k in keys]
            if self._protected:
                revive = self._revive
                states = [revive(k) if s is None else s for k, s in zip(keys, states, strict=True)]
            decisions = [
                c.algorithm.peek(s, now, c.cost) for c, s in zip(checks, states, strict=True)
            ]
            # A blocked request charges nothing; probes are decided, never charged.
            if consume and not any(blocked):
                together = all(
                    d.allowed for c, d in zip(checks, decisions, strict=True) if not c.independent
                )
                for c, k, s, d in zip(checks, keys, states, decisions, strict=True):
                    if d.allowed and (together or c.independent) and c.cost and not c.probe:
                        new = c.algorithm.charge(s, now, c.cost)
                        if s is None:
                            self._insert(k, new, c.algorithm, now)
                        else:
                            data[k] = new
                            data.move_to_end(k)
        return BatchResult(decisions, blocked)

    def _insert(self, k: str, state: Any, algorithm: Algorithm, now: int) -> None:
        data = self._data
        algorithms = self._algorithms
        # The latest algorithm of an id: a rule's id outlives a change of its rates.
        algorithms[algorithm.id] = algorithm
        data[k] = state
        # Reclaim: drop up to two expired entries from the cold end, so expired state
        # goes away as fast as new keys come in, with no scan and no timer.
        for _ in range(2):
            oldest = next(iter(data))
            if oldest == k:
                break
            alg = algorithms.get(oldest[: oldest.index("|")])
            if alg is None or not alg.expired(data[oldest], now):
                break
            del data[oldest]
        if len(data) + len(self._protected) > self.max_keys:
            self._evict(now)

    def _revive(self, k: str) -> Any:
        """The state of ``k`` if it is protected, moved back to the ordinary tier (it is in
        use again); else None. Called with the lock held, on a miss of ``_data``."""
        state = self._protected.pop(k, None)
        if state is not None:
            self._data[k] = state
        return state

    def _refusing(self, k: str, state: Any, now: int) -> bool:
        """Whether the next request of ``k`` would be refused."""
        alg = self._algorithms.get(k[: k.index("|")])
        return alg is not None and not alg.peek(state, now, 1).allowed

    def _evict(self, now: int) -> None:
        """Make room for the key just inserted (at the hot end of ``_data``): evict the
        protected key longest in the tier if its refusal is over, else the least recently
        used key of ``_data`` that is not refusing, moving refusing ones to the protected
        tier on the way; only when nothing else is left, the oldest protected key.

        Amortised O(1): a key moves to the protected tier at most once per use."""
        data = self._data
        protected = self._protected
        refusing = self._refusing
        if protected:
            k = next(iter(protected))
            if not refusing(k, protected[k], now):
                del protected[k]
                return
        while len(data) > 1:  # never the key just inserted
            k = next(iter(data))
            state = data.pop(k)
            if not refusing(k, state, now):
                return
            protected[k] = state
        protected.popitem(last=False)

    def _reclaim_blocks(self, now: int) -> None:
        """Drop a few blocklist entries that have expired (the lock is held)."""
        expiries = self._expiries
        blocks = self._blocks
        for _ in range(_RECLAIM_BLOCKS):
            if not expiries or expiries[0][0] * 1_000_000 > now:
                return
            at, key = heappop(expiries)
            b = blocks.get(key)
            if b is not None and b.expires_at == at:  # not re-blocked or lifted since
                del blocks[key]

    def reset(self, keys: Sequence[str]) -> None:
        with self._lock:
            data = self._data
            protected = self._protected
            ids = list(self._algorithms)
            for key in keys:
                for alg_id in ids:
                    k = f"{alg_id}|{key}"
                    if data.pop(k, None) is None and protected:
                        protected.pop(k, None)

    def clear(self) -> None:
        """Forget everything (limits and blocks)."""
        with self._lock:
            self._data.clear()
            self._protected.clear()
            self._blocks.clear()
            self._expiries.clear()

    # -- dynamic blocklist ----------------------------------------------------------------

    def block(self, key: str, ttl: float | None, reason: str = "", now: int | None = None) -> None:
        if ttl is not None and not ttl > 0:
            raise ConfigError(f"ttl must be a positive number of seconds or None, got {ttl!r}")
        us = self._now() if now is None else now
        t = us / 1_000_000
        with self._lock:
            blocks = self._blocks
            b = blocks[key] = Block(key, _INF if ttl is None else t + ttl, reason)
            expiries = self._expiries
            if b.expires_at != _INF:
                heappush(expiries, (b.expires_at, key))
                if len(expiries) > 2 * len(blocks) + 64:  # mostly stale: rebuild
                    expiries[:] = [(x.expires_at, k) for k, x in blocks.items()
                                   if x.expires_at != _INF]
                    heapify(expiries)
            if expiries and expiries[0][0] * 1_000_000 <= us:
                self._reclaim_blocks(us)

    def unblock(self, key: str) -> bool:
        with self._lock:
            return self._blocks.pop(key, None) is not None

    def blocked(self, now: int | None = None) -> list[Block]:
        t = (self._now() if now is None else now) / 1_000_000
        with self._lock:
            for k in [k for k, b in self._blocks.items() if b.expires_at <= t]:
                del self._blocks[k]
            return sorted(self._blocks.values(), key=lambda b: b.expires_at)

    # -- concurrency leases (issue 7) ---------------------------------------------------

    supports_leases = True

    def acquire(
        self, keys: Sequence[str], limits: Sequence[int], lease_id: str, timeout: float,
        now: int | None = None,
    ) -> int:
        t = self._now() if now is None else now
        expiry = t + round(timeout * 1_000_000)
        with self._lock:
            leases = self._leases
            sets = []
            for i, key in enumerate(keys):
                held = leases.get(key)
                if held:
                    for lid in [lid for lid, e in held.items() if e <= t]:
                        del held[lid]
                    if len(held) >= limits[i]:
                        return i
                sets.append(held)
            for key, held in zip(keys, sets, strict=True):
                if held is None:
                    held = leases[key] = {}
                held[lease_id] = expiry
        return -1

    def release(self, keys: Sequence[str], lease_id: str) -> None:
        with self._lock:
            leases = self._leases
            for key in keys:
                held = leases.get(key)
                if held is not None:
                    held.pop(lease_id, None)
                    if not held:
                        del leases[key]

    def inflight(self, key: str, now: int | None = None) -> int:
        t = self._now() if now is None else now
        with self._lock:
            held = self._leases.get(key)
            return 0 if not held else sum(1 for e in held.values() if e > t)

    # -- the generation of admin changes (see Storage.generation) ------------------------

    _generation = 0

    def generation(self) -> int:
        return self._generation

    def next_generation(self) -> int:
        with self._lock:
            self._generation += 1
            return self._generation


def from_url(url: str, **options: Any) -> MemoryStorage:
    """``memory://`` or ``memory://?max_keys=N``."""
    query: dict[str, Any] = dict(parse_qsl(urlsplit(url).query))
    query.update(options)
    max_keys = query.pop("max_keys", DEFAULT_MAX_KEYS)
    clock = query.pop("clock", None)
    if query:
        raise ConfigError(f"unknown option(s) {', '.join(sorted(query))} for storage {url!r}")
    try:
        max_keys = int(max_keys)
    except (TypeError, ValueError):
        raise ConfigError(f"max_keys must be an integer, got {max_keys!r} in {url!r}") from None
    return MemoryStorage(max_keys, clock=clock)
