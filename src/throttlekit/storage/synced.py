"""Local quota for many workers on one shared store (``SyncedStorage``).

Under ``gunicorn -w N`` every request of every worker is one round trip to Redis, and a sync
worker serves one request at a time, so there is nothing to batch *within* a worker. This
wrapper batches *over time* instead: when a key is hot in a worker, the worker charges the
shared store for several requests at once (a **lease** of quota) and admits the next
requests from it locally, with no round trip, until the lease is spent or ``sync_interval``
seconds have passed. It is the idea of Gubernator's GLOBAL mode (count locally, sync
periodically) with the charge taken *before* the requests rather than after them, so the
shared counter is never behind what the workers admitted.

How big a lease is adapts to the key's traffic in this worker: the first request of a key
is charged exactly (a lease of its cost); each lease used up before it expired doubles the
next one, each that expired with units left shrinks the next to what was used; and a lease
is never more than ``share`` of what the store said was left, nor more than the limit
refills in ``sync_interval`` (``limit * sync_interval / period``: all a client within its
limit can use before the lease ends). A key seen now and then is therefore one exact round
trip per request, as without the wrapper, and so is a key of a limit that refills less than
a unit per ``sync_interval`` (1,000/hour); a hot key of a faster limit is one round trip per
lease.

The limit's semantics (the over-admission bound):

* Fixed windows (and calendar windows): a lease never outlives the window it was charged in,
  so a window never admits more than its limit, whatever the number of workers. Quota leased
  but not used before the lease ends is lost to that window (under-admission): at most the
  unused leases of the workers, each at most ``limit * sync_interval / period``.
* Sliding window, sliding log, token bucket: a leased unit is charged before its request, so
  a window of the limit's period can admit, on top of its limit, the units the workers held
  leased when it began: at most ``workers * limit * sync_interval / period`` (0.1 s against
  a minute: 0.17 % a worker).
* Measured with 2 and 4 real processes on Redis: see docs/backends.md
  ("Many workers on one Redis") and ``tests/test_synced.py``.

What stays exact: denials (a denied request charged nothing; a lease the store refuses is
asked again for the request's exact cost, so the last units of a limit are handed out one
by one), peeks (``consume=False``), batches with independent or probe checks, blocks,
leases of concurrency slots and admin calls go to the store as they are. Dynamic blocklist
lookups made with a request are answered from the store's last answer for at most
``sync_interval``: a new ban, an ``unblock`` or a ``reset`` reaches every worker within
``sync_interval`` (at most one second, see DECISIONS "the local denial cache"). A key
refused alone is refused again here until its retry_after or for ``sync_interval``.

The engine's common case (``local_hits``): a bound hit admits from the lease; the shared
blocklist is seen through a copy read every ``sync_interval`` (``_synced_state``).

Concurrency: one lease per key is asked at a time, and requests that find it empty
meanwhile wait for that ask instead of a round trip of their own (a failed ask fails them
alike): tasks of one event loop await it, threads (gunicorn ``gthread``) block on it. A
thread's wait is at most the rest of a round trip it would otherwise make itself (see
docs/backends.md for why threads no longer charge exactly meanwhile).

Failures: no policy here. ``apply`` raises as the store does and bound hits go through the
limiter's resilience wrapper (``bind_through``), so ``on_storage_error``, breaker and fallback
answer (held leases keep admitting until they end). No thread: every sync is inline. The
lock is held for dictionary updates only, never across a round trip. Composes with any
backend (Redis, Cluster, Sentinel, memcached): it only calls the ``Storage`` protocol.

.. versionadded:: 0.19
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .._algorithms import Algorithm
from .._decision import Decision
from .._errors import ConfigError
from ._synced_state import (
    BlocksView,
    Lease,
    Leases,
    await_on_loop,
    awaited_by,
    held_by,
    hold,
    ident,
    lease_id,
)
from .base import BatchResult, Block, BoundBatch, BoundHit, Check, Storage

if TYPE_CHECKING:
    from .._escalation import Escalation

__all__ = ["SyncedStorage"]

_A = TypeVar("_A")  # an ask others wait on: Held (threads) or Asked (tasks on a loop)

#: a lease never grows past this many units, whatever the traffic
_MAX_CHUNK = 1 << 16


def _positive(name: str, value: Any, *, top: float | None = None) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
            or not math.isfinite(value) or (top is not None and value > top)):
        bound = f" and at most {top:g}" if top is not None else ""
        raise ConfigError(f"{name} must be a number above 0{bound}, got {value!r}")
    return float(value)


class SyncedStorage(Storage):
    """Wrap ``storage`` (a shared store) so each worker admits a hot key's requests from a
    local lease of quota, syncing with the store at most every ``sync_interval`` seconds.

    Args:
        storage: the shared store (Redis, Cluster, Sentinel, memcached...).
        sync_interval: seconds a lease may admit from (at most 1.0); also how long a
            dynamic-blocklist answer is reused. Default 0.1.
        share: a lease is at most this fraction of what the store says is left (0 < share
            <= 1). Default 0.05: four workers holding full leases hold a fifth of it.
        max_keys: leases kept per worker; beyond it, expired leases are dropped and new keys
            are decided exactly. Default 10,000.

    Raises:
        ConfigError: a bad option, named with its value.

    .. versionadded:: 0.19
    """

    def __init__(self, storage: Storage, *, sync_interval: float = 0.1, share: float = 0.05,
                 max_keys: int = 10_000) -> None:
        if not isinstance(storage, Storage):
            raise ConfigError(f"SyncedStorage wraps a Storage, got {storage!r}")
        self.storage = storage
        self.sync_interval = _positive("sync_interval", sync_interval, top=1.0)
        self.share = _positive("share", share, top=1.0)
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ConfigError(f"max_keys must be an integer above 0, got {max_keys!r}")
        self.max_keys = max_keys
        self.algorithms = storage.algorithms
        self.remote = storage.remote
        self.shared = storage.shared
        self.supports_leases = storage.supports_leases
        self.supports_escalation = storage.supports_escalation
        #: a local store's live blocklist, else a view of the store's (see BlocksView)
        self._view = BlocksView(storage.any_blocked, storage.blocked, self.sync_interval) \
            if storage.remote else None
        self.local_blocks = self._view if self._view is not None else storage.local_blocks
        self.local_hits = storage.remote  # (see bind_through, bind_batch_through)
        self._interval_us = int(self.sync_interval * 1e6)
        self._leases: dict[tuple[str, str], Lease] = {}
        self._clear: dict[str, int] = {}  # block key -> until when "not blocked" holds (us)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"SyncedStorage({self.storage!r}, sync_interval={self.sync_interval:g}, "
                f"share={self.share:g})")

    # -- pure steps: answer locally, size the leases, record the store's answer ----------

    def _local(self, checks: Sequence[Check], now: int,
               block_keys: Sequence[str]) -> BatchResult | None:
        """The decisions from the leases when every check has one with room, else None.
        Called under the lock."""
        clear = self._clear
        for k in block_keys:
            if clear.get(k, 0) <= now:
                return None
        leases = self._leases
        if len(checks) == 1 and (lease := leases.get(ident(checks[0]))):
            refusal = lease.refused(checks[0].cost, now)
            if refusal is not None:
                return BatchResult([refusal], [None] * len(block_keys))
        found = []
        for c in checks:
            lease = leases.get(ident(c))
            if lease is None or lease.left < c.cost or lease.expires <= now:
                return None
            found.append(lease)
        decisions = []
        for c, lease in zip(checks, found, strict=True):
            lease.left -= c.cost
            lease.used += c.cost
            alg = c.algorithm
            decisions.append(alg.decide(True, lease.remaining + lease.left,
                                        max(0, lease.reset_at - now), 0.0))
        return BatchResult(decisions, [None] * len(block_keys))

    def _sizes(self, checks: Sequence[Check], now: int) -> list[int]:
        """What to charge the store for each check: its cost plus the next lease. One lease
        per key is asked at a time: concurrent requests of a key (threads, tasks) that find
        it empty while it is asked are charged exactly. Called under the lock."""
        sizes = []
        leases = self._leases
        for c in checks:
            lease = leases.get(ident(c))
            if lease is None or lease.asking:
                sizes.append(c.cost)
                continue
            if lease.expires <= now:
                if lease.left > 0:
                    # expired with units left: the next lease is what this one used
                    lease.chunk = max(1, lease.used)
            elif lease.left < c.cost and lease.chunk < _MAX_CHUNK:
                lease.chunk *= 2  # spent before it expired: the key is hot here
            alg = c.algorithm
            # never more than the limit refills in one sync_interval: all that a client
            # within its limit can use before the lease ends (so a burst's last lease wastes
            # little, and a sliding limit's time shift stays under its bound)
            extra = min(lease.chunk, int(lease.remaining * self.share),
                        alg.limit * self._interval_us // alg.period_us)
            if extra > 0:
                lease.asking = True
            sizes.append(c.cost + extra)
        return sizes

    def _done(self, checks: Sequence[Check], sizes: Sequence[int]) -> None:
        """The leases asked by ``sizes`` are answered (or failed): others may ask again."""
        with self._lock:
            for c, size in zip(checks, sizes, strict=True):
                if size != c.cost:
                    lease = self._leases.get(ident(c))
                    if lease is not None:
                        lease.asking = False
                        lease.waiter = None
                        lease.held = None

    def _record(self, checks: Sequence[Check], sizes: Sequence[int], result: BatchResult,
                now: int, block_keys: Sequence[str]) -> BatchResult:
        """Turn the store's answer to leased sizes into the request's answer; keep the
        leases. Called under the lock."""
        leases = self._leases
        if len(leases) >= self.max_keys:
            for key in [k for k, v in leases.items() if v.expires <= now]:
                del leases[key]
        until = now + self._interval_us
        for k, b in zip(block_keys, result.blocked, strict=True):
            if b is None:
                self._clear[k] = until
            else:
                self._clear.pop(k, None)
        if len(self._clear) > self.max_keys:
            self._clear.clear()
        out = []
        for c, size, d in zip(checks, sizes, result.decisions, strict=True):
            extra = size - c.cost
            lid = ident(c)
            lease = leases.get(lid)
            if lease is None:
                if len(leases) >= self.max_keys:
                    out.append(d)
                    continue
                lease = leases[lid] = Lease(1)
            elif extra == 0 and (lease.asking or lease.left > 0):
                out.append(d)  # an exact charge beside a lease: the lease stays as it is
                continue
            reset_at = now + int(d.reset_after * 1e6)
            expires = until
            if c.algorithm.name == "fixed_window":
                # units charged in a window are never admitted in the next one
                expires = min(expires, reset_at)
            if lease.left > 0 and lease.expires > now:
                lease.left += extra  # the older units end first: keep the earlier end
                lease.expires = min(lease.expires, expires)
            else:
                lease.left = extra
                lease.used = 0
                lease.expires = expires
            lease.remaining = d.remaining
            lease.reset_at = reset_at
            lease.refusal = None
            out.append(d._replace(remaining=d.remaining + extra) if extra else d)
        return BatchResult(out, result.blocked, result.policy)

    @staticmethod
    def _exact(checks: Sequence[Check], consume: bool) -> bool:
        if not consume:
            return True
        return any(c.independent or c.probe for c in checks)

    @staticmethod
    def _sized(checks: Sequence[Check], sizes: Sequence[int]) -> list[Check]:
        return [c._replace(cost=s) if s != c.cost else c
                for c, s in zip(checks, sizes, strict=True)]

    @staticmethod
    def _retry(checks: Sequence[Check], sizes: Sequence[int], result: BatchResult) -> bool:
        """A leased batch refused where the exact one might pass: ask again exactly."""
        if any(b is not None for b in result.blocked) or result.policy is not None:
            return False
        return any(s != c.cost for c, s in zip(checks, sizes, strict=True)) and not all(
            d.allowed for d in result.decisions)

    @staticmethod
    def _now(now: int | None) -> int:
        return time.time_ns() // 1000 if now is None else now

    # -- the I/O shells ------------------------------------------------------------------

    def apply(self, checks: Sequence[Check], *, consume: bool = True, now: int | None = None,
              block_keys: Sequence[str] = ()) -> BatchResult:
        if self._exact(checks, consume):
            exact = self.storage.apply(checks, consume=consume, now=now, block_keys=block_keys)
            self._answered(True)  # (after a failure, the view's only way back: see there)
            return exact
        # A thread that finds its key's lease being asked by another waits for the answer
        # (a lease, or a refusal that dropped it) rather than making round trips meanwhile.
        while True:
            t = self._now(now)
            local, held, sizes, mine = self._turn(checks, t, block_keys, held_by, hold)
            if local is not None:
                return local
            if held is None:
                break
            held.done.wait()
            if held.failure is not None:  # the store failed the ask: fail alike
                raise held.failure
        try:
            try:
                result = self.storage.apply(self._sized(checks, sizes), now=now,
                                            block_keys=block_keys)
            finally:
                self._done(checks, sizes)
            if self._retry(checks, sizes, result):
                sizes = [c.cost for c in checks]
                result = self.storage.apply(checks, now=now, block_keys=block_keys)
            return self._answer(checks, sizes, result, t, block_keys)
        except Exception as exc:  # (an interrupt of this thread is not the store's failure)
            self._answered(False)
            if mine is not None:
                mine.failure = exc
            raise
        finally:
            if mine is not None:
                mine.done.set()

    def _turn(self, checks: Sequence[Check], t: int, block_keys: Sequence[str],
              asked: Callable[[Leases, Sequence[Check]], _A | None],
              ask: Callable[[Leases, Sequence[Check], list[int]], _A | None],
              ) -> tuple[BatchResult | None, _A | None, list[int], _A | None]:
        """Under the lock, what ``checks`` do now: answered from the leases (that result);
        or wait for another's ask of their leases (``asked``: that ask); or ask the store
        (the sizes to charge, and ``ask``: what the others wait on meanwhile)."""
        with self._lock:
            local = self._local(checks, t, block_keys)
            if local is not None:
                return local, None, [], None
            other = asked(self._leases, checks)
            if other is not None:
                return None, other, [], None
            sizes = self._sizes(checks, t)
            return None, None, sizes, ask(self._leases, checks, sizes)

    def _answer(self, checks: Sequence[Check], sizes: Sequence[int], result: BatchResult,
                t: int, block_keys: Sequence[str]) -> BatchResult:
        """The store answered: note a refusal, or keep the leases it granted."""
        self._answered(True)
        if not all(d.allowed for d in result.decisions):
            self._refused(checks, result.decisions, t)
            return result
        with self._lock:
            return self._record(checks, sizes, result, t, block_keys)

    async def aapply(self, checks: Sequence[Check], *, consume: bool = True,
                     now: int | None = None, block_keys: Sequence[str] = ()) -> BatchResult:
        if self._exact(checks, consume):
            exact = await self.storage.aapply(checks, consume=consume, now=now,
                                              block_keys=block_keys)
            self._answered(True)
            return exact
        # On an event loop, a request that finds its key's lease being asked waits for the
        # answer instead of a round trip of its own: many requests are in flight. Each wait
        # ends with a lease (twice the last, so a burst is served in a few round trips) or
        # with a refusal that dropped it, after which requests go to the store exactly.
        while True:
            t = self._now(now)
            local, waiter, sizes, mine = self._turn(checks, t, block_keys, awaited_by,
                                                    await_on_loop)
            if local is not None:
                return local
            if waiter is None:
                break
            failed = await asyncio.shield(waiter)
            if failed is not None:  # the store failed the ask: fail alike, do not queue
                raise failed
        failure: BaseException | None = None
        try:
            try:
                result = await self.storage.aapply(self._sized(checks, sizes), now=now,
                                                   block_keys=block_keys)
            finally:
                self._done(checks, sizes)
            if self._retry(checks, sizes, result):
                sizes = [c.cost for c in checks]
                result = await self.storage.aapply(checks, now=now, block_keys=block_keys)
            return self._answer(checks, sizes, result, t, block_keys)
        except BaseException as exc:
            failure = exc
            if isinstance(exc, Exception):
                self._answered(False)
            raise
        finally:
            if mine is not None:  # (a cancelled ask failed nobody: the waiters ask again)
                mine.set_result(failure if isinstance(failure, Exception) else None)

    def hit(self, algorithm: Algorithm, key: str, cost: int, now: int | None) -> Decision:
        return self.apply((Check(algorithm, key, cost),), now=now).decisions[0]

    async def ahit(self, algorithm: Algorithm, key: str, cost: int, now: int | None) -> Decision:
        return (await self.aapply((Check(algorithm, key, cost),), now=now)).decisions[0]

    # -- the engine's common case: bound hits and batches -----------------------------------

    def bind(self, algorithm: Algorithm, prefix: str = "") -> BoundHit:
        return self.bind_through(self.apply, algorithm, prefix)

    def bind_through(self, through: Callable[..., BatchResult], algorithm: Algorithm,
                     prefix: str = "") -> BoundHit:
        """``hit`` for one algorithm: admitted from this worker's lease of the key when it
        has room (one lock, no round trip), else ``through`` (a limiter's resilience
        wrapper's ``apply``: its breaker and fail policy) asks the lease or charges exactly."""
        aid, decide, lock = lease_id(algorithm), algorithm.decide, self._lock

        def hit(key: str, cost: int, now: int | None) -> Decision:
            k = prefix + key
            t = time.time_ns() // 1000 if now is None else now
            with lock:
                lease = self._leases.get((aid, k))
                if lease is not None and lease.left >= cost and lease.expires > t:
                    lease.left -= cost
                    lease.used += cost
                    return decide(True, lease.remaining + lease.left,
                                  max(0, lease.reset_at - t), 0.0)
                if lease is not None and (refusal := lease.refused(cost, t)) is not None:
                    return refusal
            return through((Check(algorithm, k, cost),), now=now).decisions[0]

        return hit

    def bind_batch(self, groups: Sequence[Sequence[Algorithm]], prefix: str = "") -> BoundBatch:
        return self.bind_batch_through(self.apply, groups, prefix)

    def bind_batch_through(self, through: Callable[..., BatchResult],
                           groups: Sequence[Sequence[Algorithm]], prefix: str = "") -> BoundBatch:
        """``apply`` for fixed algorithms: admitted from the leases when every check's has
        room, else ``through`` (see :meth:`bind_through`)."""
        frozen = tuple(tuple(g) for g in groups)

        def batch(keys: Sequence[str], costs: Sequence[int], now: int | None) -> list[Decision]:
            checks = [Check(alg, prefix + key, cost)
                      for algs, key, cost in zip(frozen, keys, costs, strict=True)
                      for alg in algs]
            t = self._now(now)
            with self._lock:
                local = self._local(checks, t, ())
            if local is not None:
                return local.decisions
            return through(checks, now=now).decisions

        return batch

    def _refused(self, checks: Sequence[Check], decisions: Sequence[Decision],
                 now: int) -> None:
        """A refusal: these keys start again from an exact charge (a lease's units stay);
        a key refused alone is refused here again at that cost (``Lease.refuse``)."""
        with self._lock:
            leases, alone = self._leases, len(checks) == 1
            for c, d in zip(checks, decisions, strict=True):
                lease = leases.pop(lid := ident(c), None)
                if lease is not None and lease.left > 0 and lease.expires > now:
                    leases[lid] = lease
                elif alone and len(leases) < self.max_keys:
                    lease = leases[lid] = Lease(1)
                if alone and lease is not None and lid in leases:
                    lease.refuse(d, now, c.cost, self.sync_interval)

    def _forget_keys(self, keys: Sequence[str]) -> None:
        # A reset here takes effect here at once; other workers' leases end within
        # sync_interval.
        with self._lock:
            self._leases = {k: v for k, v in self._leases.items()
                            if not any(k[1].startswith(f) for f in keys)}
            self._clear.clear()

    # -- everything else goes to the store as it is --------------------------------------

    def unsupported(self, strategy: str) -> str | None:
        return self.storage.unsupported(strategy)

    def unsupported_algorithm(self, algorithm: Algorithm) -> str | None:
        return self.storage.unsupported_algorithm(algorithm)

    def reset(self, keys: Sequence[str]) -> None:
        self._forget_keys(keys)
        self.storage.reset(keys)

    async def areset(self, keys: Sequence[str]) -> None:
        self._forget_keys(keys)
        await self.storage.areset(keys)

    def block(self, key: str, ttl: float | None, reason: str = "", now: int | None = None) -> None:
        with self._lock:
            self._clear.pop(key, None)
        try:
            self.storage.block(key, ttl, reason, now)
        finally:
            self._stale()

    async def ablock(self, key: str, ttl: float | None, reason: str = "",
                     now: int | None = None) -> None:
        with self._lock:
            self._clear.pop(key, None)
        try:
            await self.storage.ablock(key, ttl, reason, now)
        finally:
            self._stale()

    def unblock(self, key: str) -> bool:
        try:
            return self.storage.unblock(key)
        finally:
            self._stale()

    async def aunblock(self, key: str) -> bool:
        try:
            return await self.storage.aunblock(key)
        finally:
            self._stale()

    def _answered(self, answered: bool) -> None:
        """A round trip was answered, or raised: the view takes the engine off its common
        case while the store fails (see _synced_state)."""
        view = self._view
        if view is not None:
            view.answered() if answered else view.failed()

    def _stale(self) -> None:
        """A change of the blocklist made here: the view reads it again on its next look."""
        if self._view is not None:
            self._view.stale()

    def blocked(self, now: int | None = None) -> list[Block]:
        return self.storage.blocked(now)

    async def ablocked(self, now: int | None = None) -> list[Block]:
        return await self.storage.ablocked(now)

    def ping(self) -> bool:
        return self.storage.ping()

    def generation(self) -> int:
        return self.storage.generation()

    def next_generation(self) -> int:
        with self._lock:
            self._leases.clear()
            self._clear.clear()
        self._stale()
        return self.storage.next_generation()

    async def ageneration(self) -> int:
        return await self.storage.ageneration()

    async def anext_generation(self) -> int:
        with self._lock:
            self._leases.clear()
            self._clear.clear()
        self._stale()
        return await self.storage.anext_generation()

    def close(self) -> None:
        self.storage.close()

    async def aclose(self) -> None:
        await self.storage.aclose()

    def escalate(self, escalation: Escalation, key: str, draw: float, now: int | None
                 ) -> tuple[int, int]:
        return self.storage.escalate(escalation, key, draw, now)

    async def aescalate(self, escalation: Escalation, key: str, draw: float,
                        now: int | None) -> tuple[int, int]:
        return await self.storage.aescalate(escalation, key, draw, now)

    def acquire(self, keys: Sequence[str], limits: Sequence[int], lease_id: str,
                timeout: float, now: int | None = None) -> int:
        return self.storage.acquire(keys, limits, lease_id, timeout, now)

    def release(self, keys: Sequence[str], lease_id: str) -> None:
        self.storage.release(keys, lease_id)

    def inflight(self, key: str, now: int | None = None) -> int:
        return self.storage.inflight(key, now)

    async def aacquire(self, keys: Sequence[str], limits: Sequence[int], lease_id: str,
                       timeout: float, now: int | None = None) -> int:
        return await self.storage.aacquire(keys, limits, lease_id, timeout, now)

    async def arelease(self, keys: Sequence[str], lease_id: str) -> None:
        await self.storage.arelease(keys, lease_id)

    async def ainflight(self, key: str, now: int | None = None) -> int:
        return await self.storage.ainflight(key, now)
