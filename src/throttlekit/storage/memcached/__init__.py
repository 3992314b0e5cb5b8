"""The Memcached backend: ``memcached://host:11211`` (several hosts: ``memcached://h1,h2:11212``).

Memcached has no scripts and no transactions, so each strategy uses the one atomic
primitive that fits it:

* ``fixed_window`` and ``sliding_window``: one counter per window
  (``add`` to create it, ``incr`` to charge). A charge is *incr, then verify*: when the
  incremented count turns out to be over the limit (another worker got there first), the
  charge is taken back with ``decr``, so a denied request charges nothing and no more than
  the limit is ever admitted, whatever the concurrency.
* ``token_bucket`` and ``sliding_log``: the state (an integer; a compact log of at most
  ``limit`` entries) is read with ``gets`` and written back with ``cas``. A lost race is
  re-read and retried at once, then after a tiny jittered backoff (50 us doubling to 2 ms),
  for as long as the store ``timeout`` allows (and at most ``cas_retries`` attempts when
  set). Only a request whose every attempt lost the race within that time is *denied*,
  with a short ``retry_after``: that is contention, not a store failure.

A batch of checks is read in one ``gets_many`` (state, previous windows, blocklist entries
and the key families' reset markers together). Several rates for one request are
all-or-nothing by *charge, then roll back*: each is charged in turn and, if one denies, the
earlier charges are taken back (``decr``, or a ``cas`` that removes this request's share).
Between the charge and its rollback (well under a millisecond) a concurrent request may see
the transient charge and be refused; nothing is ever over-admitted.

Keys: memcached refuses keys with whitespace, control characters or non-ASCII bytes and keys
over 250 bytes. A key made of at most 128 printable ASCII characters is stored as it is
(readable in ``memcached`` tools); any other key is stored as a 144-bit BLAKE2b digest. The
two forms carry different markers, so distinct keys never share state.

Expiries: every key expires when its state says nothing any more (plus one second, since
memcached's clock ticks in whole seconds); expiries over 30 days are sent as absolute unix
timestamps, as the protocol requires. The ``now`` given by the limiter (its ``clock``) drives
the algorithms; without one, this host's ``time.time()`` (memcached has no clock to ask).

``reset``: memcached cannot list keys, so each key family has a generation number that is
part of its state keys; ``reset`` increments it and the old state becomes unreachable (and
expires on its own). The generation is read in the same ``gets_many`` as the state, so a
reset is seen at once by every worker. The marker exists only for families that were reset
and never expires (a few bytes; memcached evicts it once the family is idle).

Dynamic blocklist: one entry per blocked key, looked up in the request's ``gets_many``, plus
one index entry (a small JSON object updated with ``cas``) so that ``blocked()`` can list
them.

With several servers, keys are spread by rendezvous hashing (pymemcache's ``HashClient``). A
server that fails is *not* dropped from the ring (that would silently restart the counters
it held on another server): requests whose keys live there fail, and the limiter's
``on_storage_error`` policy answers them until it is back.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..._algorithms import Algorithm, FixedWindow, SlidingLog, SlidingWindow
from ..._decision import Decision
from ..._errors import ConfigError, StorageError
from ..base import BatchResult, Block, Check, Storage, at_instant
from ._codec import decode_state, encode_key, expire
from ._url import make_client, parse_url, servers
from ._writes import CAS, CONTENTION_RETRY_AFTER, FW, M32, STRIPES, SW, CasWrites, Slot

__all__ = [
    "CONTENTION_RETRY_AFTER",
    "DEFAULT_CAS_RETRIES",
    "DEFAULT_MAX_LOG_LIMIT",
    "DEFAULT_PREFIX",
    "DEFAULT_TIMEOUT",
    "MemcachedStorage",
    "from_url",
]

DEFAULT_PREFIX = "throttlekit:"
#: seconds, for connecting and for each reply: memcached answers in well under a millisecond
DEFAULT_TIMEOUT = 0.25
#: no bound on the attempts of a CAS update: the store ``timeout`` bounds them
DEFAULT_CAS_RETRIES: int | None = None
#: sliding_log keeps one entry per admitted microsecond: at most ``limit`` entries, all read
#: and rewritten on every hit, so the limit is capped (a 1,000-entry log is about 10 kB).
DEFAULT_MAX_LOG_LIMIT = 1000
_PREFIX_OK = re.compile(r"[!-~]{0,64}")
_INF = float("inf")
_GEN_CACHE_MAX = 10_000


class MemcachedStorage(CasWrites, Storage):
    """Rate-limit state in memcached, shared by every process and host that uses it.

    Args:
        client_or_clients: a pymemcache client (``PooledClient`` or ``HashClient`` with
            ``use_pooling=True`` when threads share the limiter; throttlekit passes
            ``noreply=False`` itself), or server addresses: ``"host:port"``, ``"h1:p1,h2:p2"``
            or a sequence of ``"host:port"`` / ``(host, port)`` (several servers: a
            ``HashClient``). Clients built here use short timeouts and are closed by
            :meth:`close`.
        prefix: put in front of every key (printable ASCII, no spaces, at most 64 chars).
        connect_timeout: seconds, for clients built here.
        timeout: seconds, for clients built here; also bounds how long a contended CAS
            update keeps retrying (for any client).
        cas_retries: the most attempts of a CAS update (token_bucket, sliding_log) before
            the request is denied as contended; default ``None``: as many as ``timeout``
            allows (lost races are retried with a tiny jittered backoff).
        max_log_limit: the largest ``limit`` accepted for ``sliding_log`` (its log is read and
            rewritten whole on every hit); larger ones are refused when the limiter is set up.
        max_pool_size: connections per server, for clients built here (default: unbounded).

    Raises:
        ConfigError: a bad argument, or pymemcache is not installed.
    """

    remote = True
    shared = True

    def __init__(
        self,
        client_or_clients: Any,
        *,
        prefix: str = DEFAULT_PREFIX,
        connect_timeout: float = DEFAULT_TIMEOUT,
        timeout: float = DEFAULT_TIMEOUT,
        cas_retries: int | None = DEFAULT_CAS_RETRIES,
        max_log_limit: int = DEFAULT_MAX_LOG_LIMIT,
        max_pool_size: int | None = None,
    ) -> None:
        if not isinstance(prefix, str) or not _PREFIX_OK.fullmatch(prefix):
            raise ConfigError(
                f"prefix must be at most 64 printable ASCII characters without spaces, "
                f"got {prefix!r}"
            )
        for name, value in (("cas_retries", cas_retries), ("max_log_limit", max_log_limit)):
            if name == "cas_retries" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name, t in (("connect_timeout", connect_timeout), ("timeout", timeout)):
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < _INF:
                raise ConfigError(f"{name} must be a positive number of seconds, got {t!r}")
        if max_pool_size is not None and (
            isinstance(max_pool_size, bool) or not isinstance(max_pool_size, int)
            or max_pool_size < 1
        ):
            raise ConfigError(f"max_pool_size must be a positive integer, got {max_pool_size!r}")
        errors: tuple[type[BaseException], ...] = (OSError,)
        try:
            from pymemcache.exceptions import MemcacheError  # type: ignore[import-untyped]
        except ImportError:
            have_pymemcache = False
        else:
            have_pymemcache = True
            errors = (MemcacheError, OSError)
        addresses = servers(client_or_clients)
        if addresses is not None:
            if not have_pymemcache:
                raise ConfigError(
                    "the memcached backend needs pymemcache: "
                    "pip install 'throttlekit-web[memcached]'"
                )
            self._client = make_client(addresses, connect_timeout, timeout, max_pool_size)
            self._owned = True
            self.servers: list[tuple[str, int]] = addresses
        else:
            self._client = client_or_clients
            self._owned = False
            self.servers = []
        # ValueError: a value under our prefix that is not ours (it cannot be parsed).
        self._errors: tuple[type[BaseException], ...] = (*errors, ValueError)
        self.prefix = prefix
        self.cas_retries = cas_retries
        self.timeout = float(timeout)
        self.max_log_limit = max_log_limit
        self._index_key = prefix + "B"
        #: families whose reset generation is not 0, as last seen (a guess, checked per read)
        self._gens: dict[str, int] = {}
        self._cas_locks = [threading.Lock() for _ in range(STRIPES)]

    def __repr__(self) -> str:
        where = ",".join(f"{h}:{p}" for h, p in self.servers) or repr(self._client)
        return f"MemcachedStorage({where!r}, prefix={self.prefix!r})"

    def unsupported_algorithm(self, algorithm: Algorithm) -> str | None:
        if isinstance(algorithm, SlidingLog) and algorithm.limit > self.max_log_limit:
            return (
                f"memcached rewrites a sliding log whole on every hit, so its limit is capped "
                f"at max_log_limit={self.max_log_limit} (got {algorithm.limit}); use "
                f"sliding_window or token_bucket, or raise max_log_limit"
            )
        return None

    # -- keys -------------------------------------------------------------------------------

    def _gen_key(self, family: str) -> str:
        return f"{self.prefix}g{encode_key(family)}"

    def _block_key(self, key: str) -> str:
        return f"{self.prefix}b{encode_key(key)}"

    def _place(self, slot: Slot, gen: int, now: int) -> None:
        check = slot.check
        alg = check.algorithm
        name = encode_key(f"{alg.id}|{check.key}")
        if isinstance(alg, (FixedWindow, SlidingWindow)):
            win = now // alg.period_us
            slot.win = win
            slot.key = f"{self.prefix}c{gen}:{win}:{name}"
            if isinstance(alg, SlidingWindow):
                slot.kind = SW
                slot.prev_key = f"{self.prefix}c{gen}:{win - 1}:{name}"
            else:
                slot.kind = FW
        else:
            slot.kind = CAS
            slot.key = f"{self.prefix}s{gen}:{name}"

    # -- limits -----------------------------------------------------------------------------

    def apply(self, checks: Sequence[Check], *, consume: bool = True, now: int | None = None,
              block_keys: Sequence[str] = ()) -> BatchResult:
        checks, now = at_instant(checks, now)  # calendar windows: this period's
        if now is None:
            now = int(time.time() * 1_000_000)
        try:
            bkeys = [self._block_key(k) for k in block_keys]
            slots, found = self._read(checks, now, bkeys)
            for slot in slots:
                slot.decision = self._peek(slot, found, now)
            blocked = self._blocked(block_keys, bkeys, found, now)
            # A blocked request charges nothing; probes are decided, never charged.
            if consume and not any(blocked):
                self._write(slots, now)
        except self._errors as exc:
            raise StorageError(f"memcached: {type(exc).__name__}: {exc}") from exc
        return BatchResult([s.decision for s in slots], blocked)  # type: ignore[misc]

    def _read(
        self, checks: Sequence[Check], now: int, bkeys: list[str]
    ) -> tuple[list[Slot], dict[str, Any]]:
        """The slots of ``checks`` and what one ``gets_many`` found: their state, the
        block entries and the families' reset generations (re-read where a reset moved it)."""
        client = self._client
        gens = self._gens
        families = {c.key for c in checks}
        gen_keys = {f: self._gen_key(f) for f in families}
        guess = {f: gens.get(f, 0) for f in families}
        slots = [Slot(c) for c in checks]
        for slot in slots:
            self._place(slot, guess[slot.check.key], now)
        keys = [*gen_keys.values(), *bkeys]
        for slot in slots:
            keys.append(slot.key)
            if slot.kind == SW:
                keys.append(slot.prev_key)
        found: dict[str, Any] = client.gets_many(keys)

        # A reset elsewhere (or a first sight of a reset family): re-read at the right generation.
        moved: list[Slot] = []
        for family, gkey in gen_keys.items():
            hit = found.get(gkey)
            gen = int(hit[0]) if hit is not None else 0
            if gen != guess[family]:
                if gen:
                    if len(gens) >= _GEN_CACHE_MAX:
                        gens.clear()
                    gens[family] = gen
                else:
                    gens.pop(family, None)
                for slot in slots:
                    if slot.check.key == family:
                        self._place(slot, gen, now)
                        moved.append(slot)
        if moved:
            again = [s.key for s in moved] + [s.prev_key for s in moved if s.kind == SW]
            found.update(client.gets_many(again))
        return slots, found

    @staticmethod
    def _peek(slot: Slot, found: dict[str, Any], now: int) -> Decision:
        """The decision of ``slot`` from what was read (``slot`` keeps what a charge needs)."""
        check = slot.check
        alg = check.algorithm
        hit = found.get(slot.key)
        if slot.kind == CAS:
            if hit is not None:
                slot.state = decode_state(alg, hit[0])
                slot.token = hit[1]
            state = slot.state
        else:
            cur = min(int(hit[0]), M32) if hit is not None else 0
            slot.state = hit  # for counters: whether the key existed when read
            if slot.kind == FW:
                state = (slot.win << 32) | cur if cur else None
            else:
                prev = found.get(slot.prev_key)
                slot.prev = min(int(prev[0]), M32) if prev is not None else 0
                state = ((((slot.win << 32) | cur) << 32) | slot.prev
                         if cur or slot.prev else None)
        return alg.peek(state, now, check.cost)

    def _blocked(
        self, block_keys: Sequence[str], bkeys: list[str], found: dict[str, Any], now: int
    ) -> list[Block | None]:
        blocked: list[Block | None] = []
        for key, bkey in zip(block_keys, bkeys, strict=True):
            hit = found.get(bkey)
            entry = None
            if hit is not None:
                at, _, reason = hit[0].partition(b"|")
                expires_at = float(at)
                if expires_at * 1_000_000 > now:
                    entry = Block(key, expires_at, reason.decode("utf-8", "replace"))
            blocked.append(entry)
        return blocked

    def _write(self, slots: list[Slot], now: int) -> None:
        """Charge the checks: the dependent ones all or nothing (charge, then roll back),
        the independent ones each on its own."""
        dependent = [s for s in slots if not s.check.independent]
        if all(s.decision.allowed for s in dependent):  # type: ignore[union-attr]
            done: list[Slot] = []
            for slot in dependent:
                if not slot.check.cost or slot.check.probe:
                    continue
                if self._charge(slot, now):
                    done.append(slot)
                else:
                    for earlier in reversed(done):
                        self._uncharge(earlier, now)
                    break
        for slot in slots:
            c = slot.check
            if c.independent and c.cost and not c.probe and slot.decision.allowed:  # type: ignore[union-attr]
                self._charge(slot, now)
            elif slot.kind == CAS and not slot.decision.allowed:  # type: ignore[union-attr]
                self._settle(slot, now)

    def _charge(self, slot: Slot, now: int) -> bool:
        """Charge one check whose peek allowed it; sets ``slot.decision``; True if charged."""
        check = slot.check
        alg = check.algorithm
        cost = check.cost
        client = self._client
        if slot.kind != CAS:
            n = self._incr(slot.key, cost, alg.ttl_us(0, now), slot.state is not None)
            before = min(n - cost, M32)
            if slot.kind == FW:
                state = (slot.win << 32) | before
            else:
                state = (((slot.win << 32) | before) << 32) | slot.prev
            counted = alg.hit(state, now, cost)[1]
            slot.decision = counted
            if not counted.allowed:
                # Over the limit because others charged first: take ours back.
                client.decr(slot.key, cost, noreply=False)
                return False
            return True

        state = slot.state
        token = slot.token
        decision = slot.decision
        assert decision is not None
        # Threads of this process take turns on a key (a lock per stripe of keys): racing
        # each other would only burn attempts, so only other processes contend for the CAS.
        lock = self._cas_locks[hash(slot.key) & (STRIPES - 1)]
        deadline = 0.0
        if not lock.acquire(blocking=False):
            deadline = time.monotonic() + self.timeout
            if not lock.acquire(timeout=self.timeout):
                slot.decision = self._contended(decision, cost)
                return False
            value, token = self._gets(slot.key)  # what the thread before us wrote
            state = decode_state(alg, value)
        try:
            return self._cas_loop(slot, alg, cost, now, state, token, deadline)
        finally:
            lock.release()

    def reset(self, keys: Sequence[str]) -> None:
        """Forget every state of these key families: their generation moves on, and then
        the store's generation of admin changes (every worker's cached refusals go)."""
        client = self._client
        try:
            for family in keys:
                gkey = self._gen_key(family)
                for _ in range(3):
                    n = client.incr(gkey, 1, noreply=False)
                    if n is not None:
                        break
                    # Never expires: it must outlive every state of the family (see module doc).
                    if client.add(gkey, b"1", expire=0, noreply=False):
                        break
                self._gens.pop(family, None)
        except self._errors as exc:
            raise StorageError(f"memcached: {type(exc).__name__}: {exc}") from exc
        if keys:  # (an incr after the deletes: who reads the move finds them made)
            self.next_generation()

    # -- dynamic blocklist --------------------------------------------------------------------

    def block(self, key: str, ttl: float | None, reason: str = "", now: int | None = None) -> None:
        if ttl is not None and (
            isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0
        ):
            raise ConfigError(f"ttl must be a positive number of seconds or None, got {ttl!r}")
        t = (time.time() * 1_000_000 if now is None else now) / 1_000_000
        forever = ttl is None or ttl == _INF
        expires_at = _INF if forever else t + ttl  # type: ignore[operator]
        exptime = 0 if forever else expire(math.ceil(ttl * 1_000_000))  # type: ignore[operator]
        value = f"{expires_at!r}|{reason}".encode("utf-8", "surrogatepass")
        # The index tracks when memcached drops the entry (real time, unlike ``expires_at``,
        # which follows the caller's clock).
        gone_at = None if forever else time.time() + ttl + 1  # type: ignore[operator]
        try:
            self._client.set(self._block_key(key), value, expire=exptime, noreply=False)
            self._edit_index(lambda index: index.__setitem__(key, gone_at))
        except self._errors as exc:
            raise StorageError(f"memcached: {type(exc).__name__}: {exc}") from exc

    def unblock(self, key: str) -> bool:
        """Remove ``key``'s entry; the generation of admin changes then moves on (every
        worker's cached blocks go), whether there was one or not."""
        try:
            existed = bool(self._client.delete(self._block_key(key), noreply=False))
            self._edit_index(lambda index: index.pop(key, None))
        except self._errors as exc:
            raise StorageError(f"memcached: {type(exc).__name__}: {exc}") from exc
        self.next_generation()  # (whether it existed or not: a retried call cannot tell)
        return existed

    def blocked(self, now: int | None = None) -> list[Block]:
        t = (time.time() * 1_000_000 if now is None else now) / 1_000_000
        client = self._client
        try:
            raw = client.get(self._index_key)
            index: dict[str, float | None] = json.loads(raw) if raw else {}
            if not index:
                return []
            bkeys = {self._block_key(k): k for k in index}
            found = client.get_many(list(bkeys))
            gone = [k for bk, k in bkeys.items() if bk not in found]
            if gone:  # expired or evicted: tidy the index
                self._edit_index(lambda index: [index.pop(k, None) for k in gone])
        except self._errors as exc:
            raise StorageError(f"memcached: {type(exc).__name__}: {exc}") from exc
        out = []
        for bkey, value in found.items():
            at, _, reason = value.partition(b"|")
            expires_at = float(at)
            if expires_at > t:
                out.append(Block(bkeys[bkey], expires_at, reason.decode("utf-8", "replace")))
        out.sort(key=lambda b: b.expires_at)
        return out

    def any_blocked(self) -> bool:
        """One get of the blocklist's index (not of its entries): an entry that never
        expires, or whose time has not come."""
        try:
            raw = self._client.get(self._index_key)
        except self._errors as exc:
            raise StorageError(f"memcached: {type(exc).__name__}: {exc}") from exc
        t = time.time()
        return bool(raw) and any(gone is None or gone > t for gone in json.loads(raw).values())

    def _edit_index(self, edit: Callable[[dict[str, float | None]], object]) -> None:
        """Apply ``edit`` to the blocklist index with a CAS loop, dropping expired entries.

        The index maps each blocked key to the unix time memcached drops its entry (``None``:
        never).
        """
        ikey = self._index_key
        client = self._client
        lost = 0
        deadline = time.monotonic() + self.timeout
        while lost == 0 or self._backoff(lost, deadline):
            lost += 1
            t = time.time()
            value, token = self._gets(ikey)
            index: dict[str, float | None] = json.loads(value) if value else {}
            edit(index)
            index = {k: e for k, e in index.items() if e is None or e > t}
            data = json.dumps(index, separators=(",", ":")).encode("ascii")
            if not index or any(e is None for e in index.values()):
                exptime = 0 if index else 1
            else:
                latest = max(e for e in index.values() if e is not None)
                exptime = expire(math.ceil((latest - t) * 1_000_000))
            if token is None:
                ok = client.add(ikey, data, expire=exptime, noreply=False)
            else:
                ok = client.cas(ikey, data, token, expire=exptime, noreply=False)
            if ok:
                return
        raise StorageError("memcached: the blocklist index is too contended; try again")

    # -- the rest -------------------------------------------------------------------------------

    def ping(self) -> bool:
        try:
            self._client.get_many([self.prefix + "ping"])
        except self._errors:
            return False
        return True

    def close(self) -> None:
        if self._owned:
            self._client.close()

    async def aapply(self, checks: Sequence[Check], *, consume: bool = True,
                     now: int | None = None, block_keys: Sequence[str] = ()) -> BatchResult:
        # pymemcache is synchronous: run it off the event loop.
        return await asyncio.to_thread(
            self.apply, checks, consume=consume, now=now, block_keys=block_keys
        )

    async def ahit(self, algorithm: Algorithm, key: str, cost: int, now: int | None) -> Decision:
        return await asyncio.to_thread(self.hit, algorithm, key, cost, now)

    async def areset(self, keys: Sequence[str]) -> None:
        await asyncio.to_thread(self.reset, keys)

    async def ablock(
        self, key: str, ttl: float | None, reason: str = "", now: int | None = None
    ) -> None:
        await asyncio.to_thread(self.block, key, ttl, reason, now)

    async def aunblock(self, key: str) -> bool:
        return await asyncio.to_thread(self.unblock, key)

    async def ablocked(self, now: int | None = None) -> list[Block]:
        return await asyncio.to_thread(self.blocked, now)

    # -- the generation of admin changes (see Storage.generation) ------------------------
    # ``<prefix>G``: a counter that never expires, created at the current time in
    # microseconds, so one evicted and made again never returns to a remembered value.

    def generation(self) -> int:
        """The counter's value; made first when missing (evicted, lost in a restart, or
        never made), from the clock, so that no worker reads a value it remembers."""
        key = self.prefix + "G"
        client = self._client
        try:
            value = client.get(key)
            if value is None:
                seed = str(time.time_ns() // 1000).encode("ascii")
                value = seed if client.add(key, seed, expire=0, noreply=False) \
                    else client.get(key)
        except self._errors as exc:
            raise StorageError(f"memcached: {type(exc).__name__}: {exc}") from exc
        return 0 if value is None else int(value)

    def next_generation(self) -> int:
        key = self.prefix + "G"
        client = self._client
        try:
            for _ in range(3):
                n = client.incr(key, 1, noreply=False)
                if n is not None:
                    return int(n)
                seed = time.time_ns() // 1000
                if client.add(key, str(seed).encode("ascii"), expire=0, noreply=False):
                    return seed
        except self._errors as exc:
            raise StorageError(f"memcached: {type(exc).__name__}: {exc}") from exc
        raise StorageError(f"memcached: the counter {key!r} keeps disappearing")

    async def ageneration(self) -> int:
        return await asyncio.to_thread(self.generation)

    async def anext_generation(self) -> int:
        return await asyncio.to_thread(self.next_generation)


def from_url(url: str, **options: Any) -> MemcachedStorage:
    """``memcached://host[:port][,host2[:port]...][?prefix=...&timeout=...]``.

    Options (query string or keyword arguments): ``prefix``, ``connect_timeout``,
    ``timeout``, ``cas_retries``, ``max_log_limit``, ``max_pool_size``
    (``socket_timeout``/``socket_connect_timeout`` are accepted too, as for Redis).
    """
    netloc, kwargs = parse_url(url, options)
    return MemcachedStorage(netloc, **kwargs)
