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

import itertools
import logging
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from heapq import heapify, heappop, heappush
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from .._algorithms import Algorithm, SlidingLog
from .._decision import Decision
from .._errors import ConfigError
from ._memory_batch import CHARGE_LATER, distinct_batch, staged_batch, store_refused
from ._memory_hit import bound_hit
from .base import BatchResult, Block, BoundBatch, BoundHit, Check, Storage

if TYPE_CHECKING:
    from .._escalation import Escalation

__all__ = ["DEFAULT_MAX_KEYS", "MemoryStorage"]

logger = logging.getLogger("throttlekit")

#: A live key costs about 190 bytes with a counter, 260-360 with a sliding log of one to
#: five entries (benchmarks/bench_memory_footprint.py): a full default store of random keys
#: holds about 175 MB (counters) to 255 MB (sliding log, one entry a key).
DEFAULT_MAX_KEYS = 1_000_000
_INF = float("inf")
#: expired blocklist entries reclaimed per request (amortised O(1): each is popped once)
_RECLAIM_BLOCKS = 8
#: bound hits kept (see ``bind``); past it the cache starts afresh
_BOUND_CACHE = 1024
#: algorithm ids tagged before tags without a live state or a bound hit are dropped (at
#: least; the bound grows with the store: see ``_sweep_tags``)
_TAGS_FLOOR = 1024
_new = tuple.__new__
#: see MemoryStorage._refs
_Refs = tuple[
    OrderedDict[str, Any], Callable[[str], Any], Callable[[str], None],
    OrderedDict[str, Any], Callable[[str], Any], Callable[[], bool], Callable[[], None],
    Callable[[str, Any, Algorithm, int], None], Callable[[], float], bool,
]


class _Lifetime:
    """Alive as long as the bound hit holding it (``_held``'s weak key)."""

    __slots__ = ("__weakref__",)


class MemoryStorage(Storage):
    """Thread-safe, bounded, in-process storage.

    Args:
        max_keys: the most keys kept; beyond it the least recently used key whose next
            request would be allowed is evicted (an evicted key starts afresh, so keep it
            above the number of active clients). Keys inside a refusal are evicted last.
            Each live key costs about 190 bytes (counters) to 360 (a sliding log of five
            entries), so the default bounds a random-key flood near 175-255 MB. It bounds
            the dynamic blocklist too: beyond ``max_keys`` timed bans, those ending soonest
            are dropped (logged once; ``stats()["blocks_evicted"]``); blocks without an
            expiry are never dropped.
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
        #: the latest algorithm of each tag (``_insert``), and each algorithm id's tag: a
        #: state is held under ``tag|key``, a short stand-in for the id (``fw100/60000000``
        #: or a rule's longer one), so a live key does not carry its id's bytes
        self._algorithms: dict[str, Algorithm] = {}
        self._tags: dict[str, str] = {}
        self._tag_numbers = itertools.count()
        #: the tags each bound hit or batch holds (for as long as it lives), and how many
        #: tags may be held before ``_insert`` sweeps those no longer in use
        self._held: weakref.WeakKeyDictionary[object, tuple[str, ...]] = (
            weakref.WeakKeyDictionary())
        self._tags_limit = _TAGS_FLOOR
        self._tags_mark = 0  # the first tag number made after the last sweep
        self._blocks: dict[str, Block] = {}
        self.local_blocks = MappingProxyType(self._blocks)
        #: (expires_at, key) of blocks with an expiry; stale entries are skipped
        self._expiries: list[tuple[float, str]] = []
        self._blocks_evicted = 0
        self._lock = threading.Lock()
        #: concurrency leases: key -> {lease id: expiry (microseconds)}
        self._leases: dict[str, dict[str, int]] = {}
        #: algorithm -> its bound hit (see ``bind``)
        self._bound: dict[Algorithm, BoundHit] = {}
        self._bound_prefixed: dict[tuple[Algorithm, str], BoundHit] = {}
        #: groups of algorithms -> their bound batch (see ``bind_batch``)
        self._batches: dict[tuple[tuple[tuple[Algorithm, ...], ...], str], BoundBatch] = {}
        #: chains of bans (``escalate``): "id|key" -> (level, until), oldest first; and
        #: the escalation ids seen (``reset`` forgets a family's chains)
        self._chains: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._chain_ids: set[str] = set()

    def __repr__(self) -> str:
        return f"MemoryStorage(max_keys={self.max_keys})"

    def __len__(self) -> int:
        """The number of rate-limit states held (at most ``max_keys``)."""
        return len(self._data) + len(self._protected)

    def stats(self) -> dict[str, int]:
        """Sizes, for monitoring and tests: ``keys`` (rate-limit states held, as ``len``),
        ``protected`` (of those, keys kept from eviction because they are inside a
        refusal), ``blocks`` (dynamic blocklist entries held, including expired ones not
        reclaimed yet), ``blocks_evicted`` (bans dropped beyond ``max_keys``) and ``leases``
        (concurrency lease sets)."""
        with self._lock:
            return {
                "keys": len(self._data) + len(self._protected),
                "protected": len(self._protected),
                "blocks": len(self._blocks),
                "blocks_evicted": self._blocks_evicted,
                "leases": len(self._leases),
            }

    def _now(self) -> int:
        if self._clock is time.time:
            return time.time_ns() // 1000
        return int(self._clock() * 1_000_000)

    def _refs(self) -> _Refs:
        """What a bound hit or batch uses on every call, looked up once: the dict with its
        ``get`` and ``move_to_end``, the protected tier and ``_revive``, the lock's
        ``acquire`` and ``release``, ``_insert``, the clock and whether it is the wall
        clock (the store's clock is fixed)."""
        data = self._data
        lock = self._lock
        clock = self._clock
        return (data, data.get, data.move_to_end, self._protected, self._revive,
                lock.acquire, lock.release, self._insert, clock, clock is time.time)

    def _tag(self, algorithm: Algorithm) -> str:
        """The prefix of ``algorithm``'s states: a tag of its id and ``|`` (the lock is
        held: ``_sweep_tags`` may drop a tag nothing uses)."""
        tag = self._tags.get(algorithm.id)
        if tag is None:
            tag = self._tags[algorithm.id] = f"{next(self._tag_numbers):x}|"
        return tag

    def _sweep_tags(self) -> None:
        """Forget the tags (and their latest algorithm) that no state and no living bound
        hit or batch uses, so distinct rates made without end (a rate per request, say)
        do not grow the store. Called by ``_insert`` (the lock is held) when more than
        ``_tags_limit`` ids are tagged; O(keys), so the limit grows with the store: at
        least twice the tags in use and a 64th of the keys (amortised O(64) a new tag).
        Tags are dicts mutated in place (``apply`` holds ``_tags``), never renumbered: a
        tag in use keeps its id's states; a tag made since the last sweep is kept (the
        ``apply`` that made it may be about to store under it)."""
        mark, self._tags_mark = self._tags_mark, next(self._tag_numbers)
        data, protected = self._data, self._protected
        used = {k[: k.index("|") + 1] for k in data}
        used.update(k[: k.index("|") + 1] for k in protected)
        for held in list(self._held.values()):
            used.update(held)
        tags = self._tags
        for aid in [aid for aid, tag in tags.items()
                    if tag not in used and int(tag[:-1], 16) < mark]:
            del tags[aid]
        algorithms = self._algorithms
        for tag in [tag for tag in algorithms if tag + "|" not in used and int(tag, 16) < mark]:
            del algorithms[tag]
        self._tags_limit = max(_TAGS_FLOOR, 2 * len(tags),
                               (len(data) + len(protected)) // 64)

    def bind(self, algorithm: Algorithm, prefix: str = "") -> BoundHit:
        """``hit`` specialised for one algorithm, every lookup bound: one lock, one dict
        lookup, the arithmetic, one store. The one single-check hit of this store (``hit``
        and ``apply`` call it); cached per algorithm (and ``prefix``, joined to the key
        here once instead of by every caller)."""
        cache: dict[Any, BoundHit] = self._bound if not prefix else self._bound_prefixed
        ckey = algorithm if not prefix else (algorithm, prefix)
        bound = cache.get(ckey)
        if bound is not None:
            return bound
        with self._lock:  # the tag is held while this hit lives (see _sweep_tags)
            tag = self._tag(algorithm)
            held = _Lifetime()  # (see bound_hit: a compiled hit is never weakly referenced)
            hit = bound_hit(self._refs(), algorithm, tag + prefix, held)
            self._held[held] = (tag,)
            if len(cache) >= _BOUND_CACHE:  # callers that make an algorithm per call
                cache.clear()
            cache[ckey] = hit
        return hit

    def bind_batch(self, groups: Sequence[Sequence[Algorithm]], prefix: str = "") -> BoundBatch:
        """``apply``'s all-or-nothing loop specialised for fixed algorithms (see
        ``Storage.bind_batch``): one lock, each check's storage prefix and kind worked out
        once; cached per groups of algorithms."""
        frozen = tuple(tuple(g) for g in groups)
        bound = self._batches.get((frozen, prefix))
        if bound is not None:
            return bound
        with self._lock:  # its tags are held while it lives (see _sweep_tags)
            # one flat entry per check: (algorithm, storage prefix, is a sliding log, group)
            plan = tuple(
                (alg, self._tag(alg) + prefix, alg.__class__ is SlidingLog, i)
                for i, algs in enumerate(frozen) for alg in algs
            )
            tags = {self._tag(alg) for algs in frozen for alg in algs}
            # one pass where no two checks share a state (the common batch), else two
            distinct = len(tags) == len(plan) and not any(log for _, _, log, _ in plan)
            bound = (distinct_batch if distinct else staged_batch)(self._refs(), plan)
            self._held[bound] = tuple(tags)
            if len(self._batches) >= _BOUND_CACHE:
                self._batches.clear()
            self._batches[frozen, prefix] = bound
        return bound

    def make_hit(self, algorithm: Algorithm) -> BoundHit:
        """Deprecated: use ``bind`` (the same function)."""
        warnings.warn("MemoryStorage.make_hit is deprecated: use bind (the same bound hit)",
                      DeprecationWarning, stacklevel=2)
        return self.bind(algorithm)

    # -- limits -------------------------------------------------------------------------

    def hit(self, algorithm: Algorithm, key: str, cost: int, now: int | None) -> Decision:
        bound = self._bound.get(algorithm)
        if bound is None:
            bound = self.bind(algorithm)
        return bound(key, cost, now)

    def apply(
        self,
        checks: Sequence[Check],
        *,
        consume: bool = True,
        now: int | None = None,
        block_keys: Sequence[str] = (),
    ) -> BatchResult:
        if now is None:  # (self._now(), inlined: the request path pays it)
            clock = self._clock
            now = time.time_ns() // 1000 if clock is time.time else int(clock() * 1_000_000)
        blocks = self._blocks
        if not blocks and consume and len(checks) == 1:
            # The common batch: one check and no blocklist to look up (a lone independent
            # check is charged as a dependent one would be).
            c = checks[0]
            if not c.probe:
                bound = self._bound.get(c.algorithm)
                if bound is None:
                    bound = self.bind(c.algorithm)
                d = bound(c.key, c.cost, now)
                return _new(BatchResult, ([d], [None] * len(block_keys), None))
        blocked: list[Block | None] = [None] * len(block_keys)
        decisions: list[Decision] = []
        staged: list[tuple[str, Any, Any, Algorithm, int, bool]] | None = None
        together = True
        data = self._data
        get = data.get
        protected = self._protected
        tags = self._tags
        tag = self._tag
        lock = self._lock
        lock.acquire()
        try:
            if blocks:  # nothing to reclaim or look up in an empty blocklist
                expiries = self._expiries
                if expiries and expiries[0][0] * 1_000_000 <= now:
                    self._reclaim_blocks(now)
                for i, bk in enumerate(block_keys):
                    b = blocks.get(bk)
                    if b is not None:
                        if b.expires_at * 1_000_000 <= now:
                            del blocks[bk]
                        else:
                            blocked[i] = b
                            consume = False  # a blocked request charges nothing
            # Decide every check (hit: the charged state comes with the decision), then charge
            # all if every dependent one allows (probes never, independent ones alone).
            for alg, key, cost, independent, probe in checks:
                k = (tags.get(alg.id) or tag(alg)) + key
                s = get(k)
                if s is None and protected:
                    s = self._revive(k)
                if consume and not probe and alg.__class__ is not SlidingLog:
                    new, d = alg.hit(s, now, cost)
                else:  # a sliding log's hit appends in place: decide now, charge later
                    d = alg.peek(s, now, cost)
                    new = CHARGE_LATER
                decisions.append(d)
                if d.allowed:
                    if consume and cost and not probe:
                        if staged is None:
                            staged = []
                        staged.append((k, s, new, alg, cost, independent))
                else:
                    store_refused(data, k, s, new, alg, now, cost if consume and not probe else 0)
                    together = together and independent
            if staged is not None:
                for k, s, new, alg, cost, independent in staged:
                    if together or independent:
                        if new is CHARGE_LATER:
                            new = alg.charge(s, now, cost)
                        if s is None:
                            self._insert(k, new, alg, now)
                        else:
                            data[k] = new
                            data.move_to_end(k)
        finally:
            lock.release()
        return _new(BatchResult, (decisions, blocked, None))

    def _insert(self, k: str, state: Any, algorithm: Algorithm, now: int) -> None:
        data = self._data
        algorithms = self._algorithms
        # The id's algorithm of the lowest limit: a rule's id outlives a change of its
        # rates and is shared by its plans' rates, so its states are reclaimed (and kept
        # from eviction) as the slowest of them reads them (a token bucket refilled at a
        # pro plan's rate would find a free client's emptied bucket full and drop it).
        tag = k[: k.index("|")]
        known = algorithms.get(tag)
        if known is None or algorithm.limit < known.limit:
            algorithms[tag] = algorithm
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
        if len(self._tags) > self._tags_limit:
            self._sweep_tags()

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
            tags = list(self._tags.values())
            for key in keys:
                for cid in self._chain_ids:
                    self._chains.pop(f"{cid}|{key}", None)
                for tag in tags:
                    k = tag + key
                    if data.pop(k, None) is None and protected:
                        protected.pop(k, None)

    def clear(self) -> None:
        """Forget everything (limits and blocks)."""
        with self._lock:
            self._data.clear()
            self._protected.clear()
            self._chains.clear()
            self._blocks.clear()
            self._expiries.clear()
            self._blocks_evicted = 0

    # -- escalating bans ------------------------------------------------------------------

    supports_escalation = True

    def escalate(self, escalation: Escalation, key: str, draw: float, now: int | None
                 ) -> tuple[int, int]:
        us = self._now() if now is None else now
        k = f"{escalation.id}|{key}"
        with self._lock:
            chains = self._chains
            self._chain_ids.add(escalation.id)
            state, ttl = escalation.step(chains.pop(k, None), us, draw)
            chains[k] = state  # the hot end: chains are kept in order of their last ban
            for _ in range(2):  # reclaim forgotten chains from the cold end
                oldest = next(iter(chains))
                if chains[oldest][1] > us:
                    break
                del chains[oldest]
            if len(chains) > self.max_keys:
                chains.popitem(last=False)
        return state[0], ttl

    # -- dynamic blocklist ----------------------------------------------------------------

    def block(self, key: str, ttl: float | None, reason: str = "", now: int | None = None) -> None:
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float))
                                or not ttl > 0):  # (True is not a 1-second ban)
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
            if len(blocks) > self.max_keys:
                self._evict_blocks()

    def _evict_blocks(self) -> None:
        """Drop the timed bans ending soonest until at most ``max_keys`` are held (the lock
        is held): a flood of distinct offenders cannot grow the blocklist without bound."""
        expiries, blocks = self._expiries, self._blocks
        first = not self._blocks_evicted
        while len(blocks) > self.max_keys and expiries:
            at, key = heappop(expiries)
            b = blocks.get(key)
            if b is not None and b.expires_at == at:  # not re-blocked or lifted since
                del blocks[key]
                self._blocks_evicted += 1
        if first and self._blocks_evicted:  # (not while only bans without expiry are held)
            logger.warning("more than max_keys=%d bans: the ones ending soonest are dropped "
                           "(logged once; stats()['blocks_evicted'] counts them)", self.max_keys)

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
