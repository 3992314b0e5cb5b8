"""The in-memory backend: the embedded default.

One ``OrderedDict`` in least-recently-used order and one lock. A hit is one dict lookup,
the arithmetic and one store; no per-request scan, no timer thread. Memory is bounded by
``max_keys`` (least-recently-used keys are evicted first), and state that has expired is
reclaimed as new keys arrive: each insert looks at the oldest entries and drops those
that no longer say anything.

State lives in one process: under several worker processes each has its own counters, so
the effective limit is multiplied by the number of workers. Use Redis or Memcached there.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
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


class MemoryStorage(Storage):
    """Thread-safe, bounded, in-process storage.

    Args:
        max_keys: the most keys kept; beyond it the least recently used are evicted (an
            evicted key starts afresh, so keep it above the number of active clients).
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
        self._algorithms: dict[str, Algorithm] = {}
        self._blocks: dict[str, Block] = {}
        self._lock = threading.Lock()
        #: concurrency leases: key -> {lease id: expiry (microseconds)}
        self._leases: dict[str, dict[str, int]] = {}

    def __repr__(self) -> str:
        return f"MemoryStorage(max_keys={self.max_keys})"

    def __len__(self) -> int:
        return len(self._data)

    def _now(self) -> int:
        if self._clock is time.time:
            return time.time_ns() // 1000
        return int(self._clock() * 1_000_000)

    def make_hit(self, algorithm: Algorithm) -> Callable[[str, int, int | None], Decision]:
        """A specialised ``hit`` for one algorithm: the hot path, with every lookup bound."""
        data = self._data
        get = data.get
        touch = data.move_to_end
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
        if algorithm.id not in algorithms:
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
        if len(data) > self.max_keys:
            data.popitem(last=False)

    def reset(self, keys: Sequence[str]) -> None:
        with self._lock:
            data = self._data
            ids = list(self._algorithms)
            for key in keys:
                for alg_id in ids:
                    data.pop(f"{alg_id}|{key}", None)

    def clear(self) -> None:
        """Forget everything (limits and blocks)."""
        with self._lock:
            self._data.clear()
            self._blocks.clear()

    # -- dynamic blocklist ----------------------------------------------------------------

    def block(self, key: str, ttl: float | None, reason: str = "", now: int | None = None) -> None:
        if ttl is not None and not ttl > 0:
            raise ConfigError(f"ttl must be a positive number of seconds or None, got {ttl!r}")
        t = (self._now() if now is None else now) / 1_000_000
        with self._lock:
            self._blocks[key] = Block(key, _INF if ttl is None else t + ttl, reason)

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
