"""The local denial cache of a limiter on a remote store, and how admin changes reach it.

A key refused until T is refused in-process until T without a round trip (safe: other
workers can only push T later). An admin ``reset``, ``unblock`` or rule reload changes
that: it bumps the store's *generation* (``Storage.next_generation``), and a worker that
serves a refusal from this cache reads the generation (``Storage.generation``, one cheap
read) first if its last read is ``CHECK_INTERVAL`` seconds old; when it moved, the whole
cache goes. So an operator undoing a mistake reaches every running worker within about a
second, while requests that go to the store anyway pay nothing for it. A worker reads the
generation once before its first store call (:meth:`DenialCache.stale`), so that it knows
whether the refusals it caches later predate a change.

Blocks and bans the store reported are cached the same way (:attr:`DenialCache.blocks`),
until the block's end and :data:`BLOCK_HOLD` seconds at most: a blocked or banned client's
next requests are refused in-process with the store's verdict.

Every read and write of the cache goes through :class:`DenialCache`; the
:class:`~throttlekit._resilience.ResilientStore` around a remote store owns one
(``store.denials``: ``None`` when the store is local or the cache is turned off).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from math import inf as INF
from typing import TYPE_CHECKING

from cachetools import TLRUCache

from ._decision import Decision
from ._rules import DYNAMIC_RULE, Verdict
from .storage.base import Block

if TYPE_CHECKING:
    from ._engine import Engine
    from ._planning import Plan, Planned
    from .storage.base import BatchResult

__all__ = ["BLOCK_HOLD", "CHECK_INTERVAL", "DenialCache", "cached_denial", "cached_refusal",
           "note_denials"]

#: seconds between two reads of the store's generation while refusals are served from cache
CHECK_INTERVAL = 1.0
#: seconds a block without an end (or a long one) is refused from the cache before the
#: store is asked again
BLOCK_HOLD = 60.0
_Entry = tuple[int, int, int, Decision]  # (refused until, cost, made at, decision), in µs


class DenialCache:
    """Refusals of (plan or rule, key) remembered until their retry time.

    ``clock``: the limiter's clock (seconds since the epoch), or None for the wall clock;
    it times both the entries and the generation checks.

    The refusals' TLRUCache is held under a lock (cachetools' caches are not thread-safe: a
    write that expires or evicts while another thread reads or pops raised ``KeyError`` or
    ``RuntimeError`` into the request); the blocks are a plain dict, whose single calls
    are atomic. Between calls, a lost race only costs a round trip (a refusal not
    remembered, or an entry dropped twice). ``epoch`` moves on at each clear, so a refusal
    the store gave *before* a clear is never remembered after it (see :meth:`remember`).
    """

    __slots__ = ("_cache", "_clock", "_lock", "blocks", "epoch", "generation", "maxsize",
                 "next_check")

    def __init__(self, maxsize: int, clock: Callable[[], float] | None) -> None:
        self.maxsize = maxsize
        #: block key -> (refused until, made at), in µs: the blocks the store reported
        self.blocks: dict[str, tuple[int, int]] = {}
        self._cache: TLRUCache[tuple[object, str], _Entry] = TLRUCache(
            maxsize=maxsize, ttu=lambda _k, v, _now: v[0] / 1e6, timer=clock or time.time,
        )
        self._lock = threading.Lock()  # around every use of _cache
        self._clock = clock or time.monotonic
        self.epoch = 0
        #: the store's generation when last read (None: never read)
        self.generation: int | None = None
        self.next_check = -float("inf")

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)

    def get(self, owner: object, key: str, cost: int, now: int | None) -> Decision | None:
        """The cached refusal of (``owner``, ``key``) for this cost, if still due."""
        cache = self._cache
        if (owner, key) not in cache:  # (the common answer, without the lock)
            return None
        with self._lock:
            entry = cache.get((owner, key))
        if entry is None or cost != entry[1]:  # another cost has another retry time
            return None
        until, _cost, made, decision = entry
        if now is None:
            now = time.time_ns() // 1000
        if now >= until or now < made:  # (before it was made: the clock stepped back)
            return None
        reset = round(decision.reset_after * 1e6) - (now - made)
        return decision._replace(
            retry_after=(until - now) / 1e6, reset_after=max(reset, until - now) / 1e6
        )

    def remember(
        self, owner: object, key: str, cost: int, now: int | None, decision: Decision,
        epoch: int,
    ) -> None:
        """Cache a refusal the store gave; ``epoch`` is :attr:`epoch` as read before the
        store call (a clear since then means the refusal may predate an admin change)."""
        wait = decision.retry_after
        # Only when nothing about the answer changes until the retry time: with
        # remaining == cost - 1 the count cannot move before then (without our own charges,
        # which drop the entry), so a cached answer is exactly the store's.
        if 0 < wait < float("inf") and decision.remaining == cost - 1 and epoch == self.epoch:
            if now is None:
                now = time.time_ns() // 1000
            with self._lock:
                self._cache[owner, key] = (now + round(wait * 1e6), cost, now, decision)

    def blocked(self, key: str, now: int) -> bool:
        """Whether the store reported ``key`` blocked (or banned) until a time not yet
        reached."""
        entry = self.blocks.get(key)  # (another thread may have dropped it since `in`)
        if entry is None:
            return False
        until, made = entry
        if now < until:
            return now >= made  # (before it was made: the clock stepped back)
        self.blocks.pop(key, None)
        return False

    def remember_blocks(self, keys: Sequence[str], blocked: Sequence[Block | None],
                        now: int | None, epoch: int) -> None:
        """Cache the blocks the store found among a request's block ``keys``, until their
        end and for :data:`BLOCK_HOLD` seconds at most; ``epoch`` as in :meth:`remember`."""
        if epoch != self.epoch:
            return
        if now is None:
            now = time.time_ns() // 1000
        blocks = self.blocks
        hold = now + round(BLOCK_HOLD * 1e6)
        for key, b in zip(keys, blocked, strict=False):  # (a shorter answer: none found)
            if b is None:
                continue
            end = b.expires_at
            until = hold if end == INF else min(hold, round(end * 1e6))
            if until <= now:
                continue
            if len(blocks) >= self.maxsize and key not in blocks:
                self._prune(now)
            blocks[key] = (until, now)

    def _prune(self, now: int) -> None:
        """Make room in the full :attr:`blocks`: the ended blocks go, then the oldest until
        a quarter is free (the next requests of their clients ask the store again), so
        that a prune comes once per quarter of the bound new blocks at most."""
        blocks = self.blocks
        for k, v in list(blocks.items()):  # (a copy: other threads write too)
            if v[0] <= now:
                blocks.pop(k, None)
        excess = len(blocks) - self.maxsize * 3 // 4
        if excess > 0:
            for k in list(blocks)[:excess]:  # (insertion order: the oldest first)
                blocks.pop(k, None)

    def banned(self, key: str, ttl: float | None, now: int | None) -> None:
        """This process just banned ``key`` for ``ttl`` seconds (None: no end) in the
        store: cache it as the store would report it."""
        end = INF if ttl is None else ttl
        if now is None:
            now = time.time_ns() // 1000
        self.remember_blocks((key,), (Block(key, now / 1e6 + end, ""),), now, self.epoch)

    def charged(self, owner: object, key: str) -> None:
        """Our own charge on (``owner``, ``key``): a cached refusal's numbers are stale."""
        cache = self._cache
        # `in` first: it is cheap (and needs no lock: a dict lookup), while the cache's pop
        # runs its timer and expiry
        if (owner, key) in cache:
            with self._lock:
                cache.pop((owner, key), None)

    def forget(self, key: str | None = None, blocks: bool = True) -> None:
        """Drop the refusals of ``key`` (every owner), or all of them (``None``), and
        every cached block unless ``blocks`` is False (a ban: it lifts none)."""
        self.epoch += 1
        # every cached block too: an unblock names a client, the bans it lifts have keys
        # of their own (and other workers drop everything with the generation anyway)
        if blocks:
            self.blocks.clear()
        cache = self._cache
        with self._lock:
            if key is None:
                cache.clear()
                return
            for cached in [k for k in list(cache.keys()) if k[1] == key]:
                cache.pop(cached, None)

    def stale(self) -> bool:
        """Whether the generation was never read (and a read is not failing right now):
        then read it before the store call."""
        return self.generation is None and self._clock() >= self.next_check

    def due(self) -> bool:
        """On serving a cached refusal: whether the generation's last read is
        ``CHECK_INTERVAL`` old (then read it first)."""
        return self._clock() >= self.next_check

    def saw(self, generation: int | None) -> None:
        """The store's generation was just read (None: the read failed, try later): when
        it moved, or was never seen, every cached refusal goes (and those the store is
        giving right now are not remembered: they may predate the change)."""
        self.next_check = self._clock() + CHECK_INTERVAL
        if generation is not None and generation != self.generation:
            self.forget()
            self.generation = generation

    def bumped(self, generation: int) -> None:
        """This process moved the generation to ``generation`` (after dropping what it
        changed): if nobody else moved it meanwhile, no need to drop the rest."""
        if self.generation is not None and self.generation == generation - 1:
            self.generation = generation


def cached_denial(engine: Engine, p: Plan, now: int | None, silent: bool = False
                  ) -> Verdict | None:
    """``Engine.decide``'s local denial cache: a block or ban the store reported for one of
    this request's block keys (:func:`cached_block`), else a throttle's refusal
    (:func:`cached_refusal`); None (and ``p.recheck`` set) when the store's generation
    must be read first."""
    denials = engine.store.denials
    assert denials is not None
    if denials.blocks and p.block_keys:
        recheck = p.recheck
        found = cached_block(engine, denials, p, now, silent)
        if found is not None or p.recheck is not recheck:
            return found
    return cached_refusal(engine, p, now, silent) if p.throttles else None


def cached_block(engine: Engine, denials: DenialCache, p: Plan, now: int | None,
                 silent: bool) -> Verdict | None:
    """The verdict the store gave while one of this request's block keys is blocked: the
    first such key in the order ``conclude`` reads them. A blocked request charges nothing
    in the store (dry runs and ban counters included), so the verdict is the store's; but a
    ban rule that counts this request (another than the one found) or that refuses clients
    without an IP may answer otherwise: then the store is asked."""
    blocks = denials.blocks
    keys = p.block_keys
    for i in range(len(keys)):
        if keys[i] in blocks:
            if now is None:
                now = time.time_ns() // 1000
            if denials.blocked(keys[i], now):
                break
    else:
        return None
    n = p.n_user
    if i >= n:
        if p.no_ban is not None:
            return None
        bans = p.bans
        for j in range(len(bans)):
            if bans[j][2] >= 0 and j != i - n:
                return None
    if not p.recheck and denials.due():
        p.recheck = True  # evaluate/aevaluate read the generation, then look again
        return None
    view = p.view
    active = () if silent else engine.listeners.active
    if i < n:
        if "blocked" in active:
            engine.emit("blocked", DYNAMIC_RULE, keys[i], view, None, False)
        return Verdict(False, "blocked", DYNAMIC_RULE, keys[i], None, [], False, view)
    brule, disc, _idx = p.bans[i - n]
    if "banned" in active:
        engine.emit("banned", brule.name, disc, view, None, False)
    return Verdict(False, "banned", brule.name, disc, None, [], False, view)


def cached_refusal(engine: Engine, p: Plan, now: int | None, silent: bool = False
                   ) -> Verdict | None:
    """``Engine.decide``'s local denial cache: a throttle of this request refused this
    client until a time not yet reached: refuse again without a round trip. Not for
    requests that must still be counted somewhere: ban counters and dry-run rules."""
    if p.refuse_ban is not None:
        return None
    for _brule, _disc, idx in p.bans:
        if idx >= 0:
            return None
    denials = engine.store.denials
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
    rule, disc, d = found
    remembered = engine.refusal_policies.get((rule, disc))
    if remembered is not None and not _same_throttles(remembered[2], p.throttles):
        # the store's last refusal reported other throttles' counters than this request's
        # (a path-keyed throttle, another path): only the store knows this request's
        return None
    if not p.recheck and denials.due():
        p.recheck = True  # evaluate/aevaluate read the generation, then look again
        return None
    name = rule.policy_names[0]
    for alg, policy in zip(rule.algorithms, rule.policy_names, strict=True):
        if alg.rate == d.rate:
            name = policy
            break
    policies: list[tuple[str, Decision]] = [(name, d)]
    if remembered is not None:
        # The policies the store reported with this refusal, their clocks moved on (the
        # counts of the others can only have risen: a refusal charged nothing).
        made, earlier, _throttles = remembered
        elapsed = ((now if now is not None else time.time_ns() // 1000) - made) / 1e6
        policies = [
            (n, d if n == name else pd._replace(
                reset_after=max(pd.reset_after - elapsed, 0.0)))
            for n, pd in earlier
        ]
    if not silent and "throttled" in engine.listeners.active:
        engine.emit("throttled", rule.name, disc, p.view, d, False)
    return Verdict(False, "throttled", rule.name, disc, d, policies, False, p.view)

def _same_throttles(
    remembered: tuple[tuple[object, str], ...], throttles: list[Planned]
) -> bool:
    """Whether this request's throttles (rule and key) are those of a remembered refusal,
    so its policies report this request's counters."""
    if len(remembered) != len(throttles):
        return False
    for (rule, disc), t in zip(remembered, throttles, strict=True):
        if t[0] is not rule or t[1] != disc:
            return False
    return True


def note_denials(
engine: Engine, denials: DenialCache, p: Plan, verdict: Verdict, result: BatchResult,
now: int | None,
) -> None:
    """Remember a refusal of ``p`` (and its policies) or the blocks the store found, or
    note this request's charges."""
    degraded = result.policy is not None
    if verdict.kind == "blocked" or verdict.kind == "banned":
        if not degraded:
            denials.remember_blocks(p.block_keys, result.blocked, now, p.epoch)
    elif verdict.kind == "throttled" and not degraded and verdict.decision is not None:
        for rule, disc, cost, _start in p.throttles:
            if rule.name == verdict.rule and disc == verdict.key:
                denials.remember(rule, disc, cost, now, verdict.decision, p.epoch)
                cache = engine.refusal_policies
                if len(cache) >= 10_000:  # bounded: old entries only lose header detail
                    cache.clear()
                cache[rule, disc] = (
                    now if now is not None else time.time_ns() // 1000, verdict.policies,
                    tuple([(t[0], t[1]) for t in p.throttles]),
                )
                break
    elif verdict.allowed and len(denials):
        # our own charges make a cached denial's numbers stale
        for rule, disc, cost, _start in p.throttles:
            if cost:
                denials.charged(rule, disc)
