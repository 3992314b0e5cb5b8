"""The storage protocol every backend implements.

A backend answers one question atomically: given a batch of checks (an algorithm bound
to a rate, a storage key and a cost), which are allowed? Checks in a batch are
all-or-nothing: a batch with any denied check charges none of them, except checks marked
``independent`` (dry-run rules, ban counters), which are decided and charged on their own;
``probe`` checks are decided but never charged. The same call looks up keys in the dynamic
blocklist, so one request is one round trip, and a batch in which any of them is found
charges nothing at all (a blocked request never reaches the throttles).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

from .._algorithms import Algorithm
from .._decision import Decision

if TYPE_CHECKING:
    from .._denials import DenialCache
    from .._escalation import Escalation

__all__ = ["BatchResult", "Block", "BoundBatch", "BoundHit", "Check", "Storage", "at_instant"]

#: ``hit(key, cost, now) -> Decision`` for one algorithm: see ``Storage.bind``
BoundHit = Callable[[str, int, int | None], Decision]
#: ``batch(keys, costs, now) -> decisions`` for fixed groups of algorithms: see
#: ``Storage.bind_batch``
BoundBatch = Callable[[Sequence[str], Sequence[int], int | None], list[Decision]]


class Check(NamedTuple):
    """One limit of one request: ``algorithm`` applied to ``key`` with ``cost``.

    ``key`` is the key family (the user's key, or a rule's namespaced discriminator).
    ``independent`` checks are decided and charged on their own (dry-run rules, ban
    counters). A ``probe`` is decided with its cost and takes part in the all-or-nothing
    decision but is never charged (``count_when`` rules are charged after the response).
    """

    algorithm: Algorithm
    key: str
    cost: int = 1
    independent: bool = False
    probe: bool = False


def at_instant(checks: Sequence[Check], now: int | None
               ) -> tuple[Sequence[Check], int | None]:
    """The checks as a store computing outside Python (Lua, memcached) decides them at
    ``now``: a calendar window becomes the fixed window of its current period
    (``Algorithm.at``), which needs this process's clock (``now`` None: read here)."""
    for c in checks:
        if c.algorithm.periodic:
            break
    else:
        return checks, now
    if now is None:
        now = time.time_ns() // 1000
    return [c._replace(algorithm=c.algorithm.at(now)) for c in checks], now


class Block(NamedTuple):
    """An entry of the dynamic blocklist."""

    key: str
    expires_at: float  # seconds since the epoch; ``inf`` for no expiry
    reason: str


class BatchResult(NamedTuple):
    """The decisions of a batch, in order, and the blocks found among ``block_keys``.

    ``policy``: None when the store answered; ``"allow"``, ``"deny"`` or ``"local"`` when
    the fail policy of a failing store did (see ``throttlekit._resilience``).
    """

    decisions: list[Decision]
    blocked: list[Block | None]
    policy: str | None = None


class Storage(abc.ABC):
    """Base class of the storage backends.

    ``now`` arguments are integer microseconds since the epoch, or ``None`` for the
    backend's own clock (the Redis server's ``TIME``, the memory backend's ``time.time``).
    """

    #: strategy names this backend can run
    algorithms: frozenset[str] = frozenset(
        {"fixed_window", "sliding_window", "sliding_log", "token_bucket"}
    )
    #: True for backends that talk to a server (the limiter then applies its failure policy)
    remote: bool = False
    #: True for backends shared by several processes
    shared: bool = False
    #: The dynamic blocklist as a live read-only mapping (key -> Block, expired entries
    #: included until reclaimed) when the store keeps it in this process, so a caller sees
    #: without a call that a request has nothing to look up; None when it lives on a server
    #: (ask ``apply(block_keys=...)`` or ``blocked()``), unless the store is ``local_hits``.
    local_blocks: Mapping[str, Block] | None = None
    #: True for a remote store that answers the engine's common case in process where it
    #: can (SyncedStorage, from its leases): its bound hits and batches send their round
    #: trips through the resilience wrapper (``bind_through``), which never raises, and its
    #: ``local_blocks`` is a copy of the store's blocklist read again every few tenths of a
    #: second. The engine then takes its common case with it, as with a local store.
    local_hits: bool = False
    #: the local cache of refusals; set only on a ResilientStore (see _resilience)
    denials: DenialCache | None = None

    def unsupported(self, strategy: str) -> str | None:
        """Why this backend cannot run ``strategy``, or ``None`` when it can."""
        if strategy in self.algorithms:
            return None
        return f"the {type(self).__name__} backend does not implement {strategy}"

    def unsupported_algorithm(self, algorithm: Algorithm) -> str | None:
        """Why this backend cannot run ``algorithm`` (a strategy bound to a rate), or ``None``."""
        return None

    @abc.abstractmethod
    def apply(self, checks: Sequence[Check], *, consume: bool = True, now: int | None = None,
              block_keys: Sequence[str] = ()) -> BatchResult:
        """Decide ``checks`` (charging them when ``consume`` and every dependent check
        allows) and look up ``block_keys`` in the dynamic blocklist."""

    def hit(self, algorithm: Algorithm, key: str, cost: int, now: int | None) -> Decision:
        """Decide and charge one check (the common case; backends may specialise it)."""
        return self.apply((Check(algorithm, key, cost),), now=now).decisions[0]

    def bind(self, algorithm: Algorithm, prefix: str = "") -> BoundHit:
        """``hit`` for one algorithm, as ``fn(key, cost, now) -> Decision`` deciding
        ``prefix + key``: the single check of a hot path, bound once and called per request.
        Backends may return a function specialised for the algorithm (the memory store does,
        joining the prefix once); the default calls ``self.hit``."""
        if not prefix:
            return partial(self.hit, algorithm)
        hit = self.hit

        def prefixed(key: str, cost: int, now: int | None) -> Decision:
            return hit(algorithm, prefix + key, cost, now)

        return prefixed

    def bind_batch(self, groups: Sequence[Sequence[Algorithm]], prefix: str = "") -> BoundBatch:
        """``apply`` for fixed algorithms, as ``fn(keys, costs, now) -> decisions``: the
        several dependent checks of a hot path (several limits, or a limit of several
        rates), bound once and called per request. Group ``i``'s algorithms are checked on
        ``prefix + keys[i]`` at ``costs[i]`` (the prefix joined once, at bind time where a
        backend can); the decisions come flat, in order; all are charged only if every one
        allows (``apply``'s all-or-nothing); no blocklist lookup.
        Backends may return a function specialised for the algorithms (the memory store
        does); the default builds the ``Check``s and calls ``apply``."""
        frozen = tuple(tuple(g) for g in groups)

        def batch(keys: Sequence[str], costs: Sequence[int], now: int | None) -> list[Decision]:
            checks = [
                Check(alg, prefix + key, cost)
                for algs, key, cost in zip(frozen, keys, costs, strict=True)
                for alg in algs
            ]
            return self.apply(checks, now=now).decisions

        return batch

    @abc.abstractmethod
    def reset(self, keys: Sequence[str]) -> None:
        """Forget the state of these storage key families (see ``Limiter.reset``). A
        shared backend with a generation (Redis, Memcached) moves it on too, once the state
        is gone."""

    @abc.abstractmethod
    def block(self, key: str, ttl: float | None, reason: str = "", now: int | None = None) -> None:
        """Add ``key`` to the dynamic blocklist for ``ttl`` seconds (``None``: no expiry)."""

    @abc.abstractmethod
    def unblock(self, key: str) -> bool:
        """Remove ``key`` from the dynamic blocklist; True when it was there. A shared
        backend with a generation (Redis, Memcached) then moves it on too."""

    @abc.abstractmethod
    def blocked(self, now: int | None = None) -> list[Block]:
        """Every live entry of the dynamic blocklist."""

    def any_blocked(self) -> bool:
        """Whether the dynamic blocklist may have an entry (a store may answer True for an
        expired one not reclaimed yet): cheaper than ``blocked()`` where the store can."""
        return bool(self.blocked())

    def ping(self) -> bool:
        """True when the store answers (a health check)."""
        return True

    # -- the generation of admin changes -------------------------------------------------
    # A number shared by every process using the store (a missing one is made from the clock
    # when read: it never reads as a value from before), moved on by an admin ``reset``,
    # ``unblock``, ``block`` or rule reload; workers drop their local caches of refusals when
    # it moves (see throttlekit._denials). A backend's own ``unblock`` and ``reset``, the
    # changes that lift refusals, move it themselves after the change (Redis: in the same
    # script on one server), so that one made on a storage object directly (an admin
    # script's) reaches every worker too; a ``Limiter`` moves it once more after its admin
    # calls (harmless). A backend without one reports 0 forever: then only the process
    # making a change sees it before its caches expire.

    def generation(self) -> int:
        """The store's generation of admin changes (one cheap read)."""
        return 0

    def next_generation(self) -> int:
        """Move the generation on (after an admin change); returns the new value."""
        return 0

    async def ageneration(self) -> int:
        return self.generation()

    async def anext_generation(self) -> int:
        return self.next_generation()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what the store opened for the running event loop (async clients)."""

    def bind_through(self, through: Callable[..., BatchResult], algorithm: Algorithm,
                     prefix: str = "") -> BoundHit:
        """:meth:`bind`, for a limiter's resilience wrapper (breaker, fail policy: see
        throttlekit._resilience): a ``local_hits`` store sends the round trips of the bound
        hit through ``through`` (the wrapper's ``apply``, which never raises); the default
        is :meth:`bind`."""
        return self.bind(algorithm, prefix)

    def bind_batch_through(self, through: Callable[..., BatchResult],
                           groups: Sequence[Sequence[Algorithm]], prefix: str = "") -> BoundBatch:
        """:meth:`bind_batch`, for a limiter's resilience wrapper (see :meth:`bind_through`)."""
        return self.bind_batch(groups, prefix)

    # Async twins. Backends with real I/O override them; the defaults run the sync
    # method inline, which is right for the in-memory backend (microseconds, no I/O).
    async def aapply(self, checks: Sequence[Check], *, consume: bool = True,
                     now: int | None = None, block_keys: Sequence[str] = ()) -> BatchResult:
        return self.apply(checks, consume=consume, now=now, block_keys=block_keys)

    async def ahit(self, algorithm: Algorithm, key: str, cost: int, now: int | None) -> Decision:
        return self.hit(algorithm, key, cost, now)

    async def areset(self, keys: Sequence[str]) -> None:
        self.reset(keys)

    async def ablock(
        self, key: str, ttl: float | None, reason: str = "", now: int | None = None
    ) -> None:
        self.block(key, ttl, reason, now)

    async def aunblock(self, key: str) -> bool:
        return self.unblock(key)

    async def ablocked(self, now: int | None = None) -> list[Block]:
        return self.blocked(now)

    # -- escalating bans (issue 16) -----------------------------------------------------
    # The chain of a key's bans, ``(level, until)``, kept beside the rule counters of its
    # family (``reset`` forgets it with them) until ``until``; see throttlekit._escalation.

    #: True for backends implementing escalate (an escalating ban rule needs it)
    supports_escalation: bool = False

    def escalate(self, escalation: Escalation, key: str, draw: float, now: int | None
                 ) -> tuple[int, int]:
        """Move the chain of bans of ``key`` on by one ban at ``now``, atomically
        (``Escalation.step``, ``draw`` its random share); returns the new level and the
        ban's length in microseconds."""
        raise NotImplementedError(f"{type(self).__name__} keeps no chains of bans")

    async def aescalate(self, escalation: Escalation, key: str, draw: float,
                        now: int | None) -> tuple[int, int]:
        return self.escalate(escalation, key, draw, now)

    # -- concurrency leases (issue 7) ----------------------------------------------------
    # A lease is a slot in a per-key set of lease ids, each with an expiry, so a worker that
    # dies mid-request cannot hold its slot longer than the lease timeout.

    #: True for backends implementing acquire/release/inflight
    supports_leases: bool = False

    def acquire(
        self, keys: Sequence[str], limits: Sequence[int], lease_id: str, timeout: float,
        now: int | None = None,
    ) -> int:
        """Take a slot for ``lease_id`` in every lease set of ``keys`` (key ``i`` holds at
        most ``limits[i]`` unexpired leases), all or none; the leases expire ``timeout``
        seconds from now. Returns -1 when taken, else the index of the first full set."""
        raise NotImplementedError(f"{type(self).__name__} has no concurrency leases")

    def release(self, keys: Sequence[str], lease_id: str) -> None:
        """Give back the slots of ``lease_id`` in ``keys`` (a no-op for expired ones)."""
        raise NotImplementedError(f"{type(self).__name__} has no concurrency leases")

    def inflight(self, key: str, now: int | None = None) -> int:
        """The number of unexpired leases in the set ``key``."""
        raise NotImplementedError(f"{type(self).__name__} has no concurrency leases")

    async def aacquire(
        self, keys: Sequence[str], limits: Sequence[int], lease_id: str, timeout: float,
        now: int | None = None,
    ) -> int:
        return self.acquire(keys, limits, lease_id, timeout, now)

    async def arelease(self, keys: Sequence[str], lease_id: str) -> None:
        self.release(keys, lease_id)

    async def ainflight(self, key: str, now: int | None = None) -> int:
        return self.inflight(key, now)
