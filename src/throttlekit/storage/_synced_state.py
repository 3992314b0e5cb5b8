"""SyncedStorage's state in a worker: its leases of quota and its view of the shared
dynamic blocklist (see ``synced.py``).

The view:

The engine takes its common case (a bound hit, no block lookup) only while a store's
``local_blocks`` is empty. A shared store keeps its blocklist on the server, so
``SyncedStorage`` keeps whether it has an entry here: asked of the store again
(``any_blocked()``, one round trip: an ``EXISTS`` on Redis, however many bans there are)
when the answer is ``sync_interval`` old, inline, by the first request to look (no
thread). Only its emptiness is kept: while it has entries the engine takes its general
path, which looks each request's own block keys up. A ban written by another worker or by
the admin CLI is therefore in every worker's view within ``sync_interval``; after this
worker's own ``block``/``unblock`` the next look asks again.

While the store fails (a read of the blocklist, or a round trip of the wrapper, raised)
the view is true whatever it holds: it cannot tell that a request has nothing to look up,
so the engine takes its general path, where the limiter's resilience wrapper (breaker,
fail policy) answers as for any remote store. The first round trip the store answers again
ends that, and the blocklist is read again before the view says it is empty.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

from .._algorithms import Algorithm
from .._decision import Decision
from .base import Block, Check

__all__ = ["Asked", "BlocksView", "Held", "Lease", "Leases", "await_on_loop", "awaited_by",
           "held_by", "hold", "ident", "lease_id"]

_A = TypeVar("_A")

#: resolved when a lease asked of the store is answered: with the failure, if it failed
Asked = asyncio.Future[BaseException | None]


def lease_id(alg: Algorithm) -> str:
    """What a lease of ``alg`` is kept under, beside the key: its id, and the limit too
    when the id outlives it (``Algorithm.rerated``: a rule's counter under a plan's or a
    tightened rate), so units leased under one limit are never admitted under another."""
    return f"{alg.id}={alg.capacity}/{alg.limit}" if alg.rerated else alg.id


def ident(check: Check) -> tuple[str, str]:
    """The lease of a check: (lease_id, key)."""
    return lease_id(check.algorithm), check.key


class BlocksView(Mapping[str, Block]):
    """The shared dynamic blocklist as this worker sees it. Its truth (what the engine asks)
    is the store's ``any_blocked()`` (one ``EXISTS`` on Redis, whatever the number of bans),
    read again when older than ``interval`` seconds; true while the store fails (see the
    module's doc). Its items (key -> Block) are the store's ``blocked()``, read at each
    look (nothing on the request path reads them)."""

    __slots__ = ("_any", "_blocked", "_due", "_failing", "_interval", "_lock", "_reading",
                 "_some", "_stales")

    def __init__(self, any_blocked: Callable[[], bool], blocked: Callable[[], list[Block]],
                 interval: float) -> None:
        self._any = any_blocked
        self._blocked = blocked
        self._interval = interval
        self._some = False  # the blocklist had an entry at the last read
        self._due = 0.0  # time.monotonic() from which the store is asked again
        self._reading = False  # one thread reads at a time; the others use the last answer
        self._failing = False  # the store failed and has not answered since
        self._stales = 0  # changes made here (a read that began before one is stale)
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Ask the store now whether its blocklist has an entry (a failure keeps the last
        answer, and the view is true until the store answers again)."""
        with self._lock:
            if self._reading:
                return
            self._reading = True
        try:
            stales = self._stales
            try:
                some = self._any()
            except Exception:  # the store's failure is the wrapper's to answer
                self._failing = True
                return
            self._some = some
            # a change made here while the store was asked may be missing from its
            # answer: then it is asked again on the next look, not an interval later
            self._due = time.monotonic() + self._interval if stales == self._stales else 0.0
            self._failing = False
        finally:
            self._reading = False

    def failed(self) -> None:
        """A round trip to the store raised: true until the store answers again."""
        self._failing = True

    def answered(self) -> None:
        """A round trip to the store was answered (after a failure: read again first)."""
        if self._failing:
            self._due = 0.0
            self._failing = False

    def __bool__(self) -> bool:
        if self._failing:  # (not asked again: the wrapper's next answered round trip ends it)
            return True
        if time.monotonic() >= self._due:
            self.refresh()
        return self._failing or self._some

    def stale(self) -> None:
        """Read the store again on the next look (after a change made here), also when a
        read already under way answers from before the change."""
        self._stales += 1
        self._due = 0.0

    def _items(self) -> dict[str, Block]:
        return {b.key: b for b in self._blocked()}

    def __len__(self) -> int:
        return len(self._items())

    def __getitem__(self, key: str) -> Block:
        return self._items()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __contains__(self, key: object) -> bool:
        return key in self._items()

    def __repr__(self) -> str:
        return f"BlocksView(some={self._some}, failing={self._failing})"


class Lease:
    """Quota charged to the store and not yet admitted, for one (algorithm, key)."""

    __slots__ = ("asking", "chunk", "expires", "held", "left", "refusal", "refused_at",
                 "refused_cost", "refused_until", "remaining", "reset_at", "used", "waiter")

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk  # the next lease's size
        self.asking = False  # a lease of this key is being asked of the store
        self.waiter: Asked | None = None  # resolved when the ask (on a loop) is answered
        self.held: Held | None = None  # done when the ask (by a thread) is answered
        self.left = 0  # units charged and not yet admitted
        self.used = 0  # units of the current lease admitted so far
        self.expires = 0  # microseconds; the lease's units are void from then on
        self.remaining = 0  # the store's remaining after the lease was charged
        self.reset_at = 0  # microseconds; the store's reset_after, as an instant
        #: the store's last refusal of this key alone, at ``refused_cost``, made at
        #: ``refused_at`` and repeated here until ``refused_until`` (microseconds)
        self.refusal: Decision | None = None
        self.refused_at = self.refused_until = self.refused_cost = 0

    def refuse(self, d: Decision, now: int, cost: int, interval: float) -> None:
        """The store refused this key alone at ``cost``: repeat it until its retry_after
        or for ``interval`` seconds."""
        self.refusal, self.refused_at, self.refused_cost = d, now, cost
        self.refused_until = now + int(min(d.retry_after, interval) * 1e6)

    def refused(self, cost: int, now: int) -> Decision | None:
        """The store's refusal of this key at ``cost`` as it stands at ``now``, while it is
        known to hold (before its retry_after and within sync_interval), else None."""
        d = self.refusal
        if d is None or not self.refused_at <= now < self.refused_until or (
                cost != self.refused_cost):  # (a clock stepped back: ask the store)
            return None
        waited = (now - self.refused_at) / 1e6
        return d._replace(retry_after=max(0.0, d.retry_after - waited),
                          reset_after=max(0.0, d.reset_after - waited))


class Held:
    """A lease being asked of the store by a thread: the other threads wait for the
    answer (``done``), and fail alike if it failed."""

    __slots__ = ("done", "failure")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.failure: BaseException | None = None


#: a worker's leases: (lease_id, key) -> Lease
Leases = dict[tuple[str, str], Lease]


def held_by(leases: Leases, checks: Sequence[Check]) -> Held | None:
    """The ask a thread is making of a lease of one of ``checks``, if any."""
    for c in checks:
        lease = leases.get(ident(c))
        if lease is not None and lease.held is not None:
            return lease.held
    return None


def awaited_by(leases: Leases, checks: Sequence[Check]) -> Asked | None:
    """The answer being awaited of a lease of one of ``checks`` on this event loop, if
    any (an ask on another loop cannot be awaited here: the request asks exactly)."""
    for c in checks:
        lease = leases.get(ident(c))
        if lease is not None and (w := lease.waiter) is not None and (
                w.get_loop() is asyncio.get_running_loop()):
            return w
    return None


def hold(leases: Leases, checks: Sequence[Check], sizes: Sequence[int]) -> Held | None:
    """What the other threads wait on while the leases asked by ``sizes`` are asked."""
    return _noted(leases, checks, sizes, "held", Held)


def await_on_loop(leases: Leases, checks: Sequence[Check], sizes: Sequence[int]
                  ) -> Asked | None:
    """A future the leases asked by ``sizes`` resolve when answered (on a loop)."""
    return _noted(leases, checks, sizes, "waiter", asyncio.get_running_loop().create_future)


def _noted(leases: Leases, checks: Sequence[Check], sizes: Sequence[int], by: str,
           make: Callable[[], _A]) -> _A | None:
    """``make()``, noted as ``by`` on the leases ``sizes`` asks for; None if it asks none."""
    if all(s == c.cost for c, s in zip(checks, sizes, strict=True)):
        return None
    ask = make()
    for c, s in zip(checks, sizes, strict=True):
        if s != c.cost:
            setattr(leases[ident(c)], by, ask)
    return ask
