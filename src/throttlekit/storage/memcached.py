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
import random
import re
import sys
import threading
import time
from base64 import urlsafe_b64encode
from collections.abc import Callable, Sequence
from hashlib import blake2b
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .._algorithms import Algorithm, FixedWindow, Log, SlidingLog, SlidingWindow, TokenBucket
from .._decision import Decision
from .._errors import ConfigError, StorageError
from .base import BatchResult, Block, Check, Storage

__all__ = [
    "CONTENTION_RETRY_AFTER",
    "DEFAULT_CAS_RETRIES",
    "DEFAULT_MAX_LOG_LIMIT",
    "DEFAULT_PREFIX",
    "DEFAULT_TIMEOUT",
    "MemcachedStorage",
    "from_url",
]

DEFAULT_PORT = 11211
DEFAULT_PREFIX = "throttlekit:"
#: seconds, for connecting and for each reply: memcached answers in well under a millisecond
DEFAULT_TIMEOUT = 0.25
#: no bound on the attempts of a CAS update: the store ``timeout`` bounds them
DEFAULT_CAS_RETRIES: int | None = None
#: sliding_log keeps one entry per admitted microsecond: at most ``limit`` entries, all read
#: and rewritten on every hit, so the limit is capped (a 1,000-entry log is about 10 kB).
DEFAULT_MAX_LOG_LIMIT = 1000
#: ``retry_after`` (seconds) of a request denied because every CAS attempt lost a race
CONTENTION_RETRY_AFTER = 0.01
#: the backoff after the second lost race of a CAS update, doubling up to ``_BACKOFF_MAX``;
#: each wait is drawn uniformly below it, so contending workers spread out
_BACKOFF_BASE = 0.00005
_BACKOFF_MAX = 0.002
#: attempts made even when the time is up, so that a pause of this process (a GC, a busy
#: host) between two attempts is not mistaken for contention
_MIN_ATTEMPTS = 4
#: locks by which the threads of one process take turns on a CAS key (a power of two)
_CAS_STRIPES = 64

_MAX_RELATIVE = 30 * 24 * 3600  # memcached reads larger expiries as unix timestamps
_RAW_MAX = 128  # prefix (<= 64) + markers and numbers (<= 45) + 1 + 128 < 250 bytes
_SAFE = re.compile(rf"[!-~]{{1,{_RAW_MAX}}}")  # printable ASCII, no space
_PREFIX_OK = re.compile(r"[!-~]{0,64}")
_M32 = (1 << 32) - 1
_M96 = (1 << 96) - 1
_INF = float("inf")
_new = tuple.__new__
_FW, _SW, _CAS = 0, 1, 2
_GEN_CACHE_MAX = 10_000


def _encode_key(text: str) -> str:
    """A memcached-safe, injective name for ``text``: as is when safe and short, else a digest."""
    if _SAFE.fullmatch(text):
        return "=" + text
    digest = blake2b(text.encode("utf-8", "surrogatepass"), digest_size=18).digest()
    return "#" + urlsafe_b64encode(digest).decode("ascii")


def _expire(ttl_us: int) -> int:
    """A memcached exptime for state needed ``ttl_us`` more microseconds."""
    # +1: memcached's clock ticks once a second, so an item may expire up to 1 s early.
    seconds = -(-ttl_us // 1_000_000) + 1
    if seconds > _MAX_RELATIVE:
        return int(time.time()) + seconds
    return seconds


def _encode_log(log: Log) -> bytes:
    # Deltas between entries, ",".joined; ":cost" only when the cost is not 1.
    parts = []
    last = 0
    for t, c in log.entries:
        parts.append(str(t - last) if c == 1 else f"{t - last}:{c}")
        last = t
    return ",".join(parts).encode("ascii")


def _decode_log(value: bytes) -> Log:
    log = Log()
    entries = log.entries
    t = total = 0
    for part in value.split(b","):
        if part:
            delta, _, cost = part.partition(b":")
            t += int(delta)
            c = int(cost) if cost else 1
            entries.append([t, c])
            total += c
    log.total = total
    return log


class _Slot:
    """One check of a batch: its keys, what was read, and the decision so far."""

    __slots__ = ("check", "decision", "key", "kind", "prev", "prev_key", "state", "token", "win")

    def __init__(self, check: Check) -> None:
        self.check = check
        self.kind = _FW
        self.key = ""
        self.prev_key = ""
        self.win = 0
        self.prev = 0
        self.state: Any = None
        self.token: Any = None
        self.decision: Decision | None = None


class MemcachedStorage(Storage):
    """Rate-limit state in memcached, shared by every process and host that uses it.

    Args:
        client_or_clients: a pymemcache client (``PooledClient`` or ``HashClient`` with
            ``use_pooling=True`` when threads share the limiter; throttlekit passes
            ``noreply=False`` itself), or server addresses: ``"host:port"``, ``"h1:p1,h2:p2"``
            or a sequence of ``"host:port"`` / ``(host, port)`` (several servers: a
            ``HashClient``). Clients built here use short timeouts and are closed by
            :meth:`close`.
        prefix: put in front of every key (printable ASCII, no spaces, at most 64 chars).
        connect_timeout, timeout: seconds, for clients built here; ``timeout`` also bounds
            how long a contended CAS update keeps retrying (for any client).
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
        servers = _servers(client_or_clients)
        if servers is not None:
            if not have_pymemcache:
                raise ConfigError(
                    "the memcached backend needs pymemcache: "
                    "pip install 'throttlekit-web[memcached]'"
                )
            self._client = _make_client(servers, connect_timeout, timeout, max_pool_size)
            self._owned = True
            self.servers: list[tuple[str, int]] = servers
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
        self._cas_locks = [threading.Lock() for _ in range(_CAS_STRIPES)]

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
        return f"{self.prefix}g{_encode_key(family)}"

    def _block_key(self, key: str) -> str:
        return f"{self.prefix}b{_encode_key(key)}"

    def _place(self, slot: _Slot, gen: int, now: int) -> None:
        check = slot.check
        alg = check.algorithm
        name = _encode_key(f"{alg.id}|{check.key}")
        if isinstance(alg, (FixedWindow, SlidingWindow)):
            win = now // alg.period_us
            slot.win = win
            slot.key = f"{self.prefix}c{gen}:{win}:{name}"
            if isinstance(alg, SlidingWindow):
                slot.kind = _SW
                slot.prev_key = f"{self.prefix}c{gen}:{win - 1}:{name}"
            else:
                slot.kind = _FW
        else:
            slot.kind = _CAS
            slot.key = f"{self.prefix}s{gen}:{name}"

    # -- limits -----------------------------------------------------------------------------

    def apply(
        self,
        checks: Sequence[Check],
        *,
        consume: bool = True,
        now: int | None = None,
        block_keys: Sequence[str] = (),
    ) -> BatchResult:
        if now is None:
            now = int(time.time() * 1_000_000)
        try:
            return self._apply(checks, consume, now, block_keys)
        except self._errors as exc:
            raise StorageError(f"memcached: {type(exc).__name__}: {exc}") from exc

    def _apply(
        self, checks: Sequence[Check], consume: bool, now: int, block_keys: Sequence[str]
    ) -> BatchResult:
        client = self._client
        gens = self._gens
        families = {c.key for c in checks}
        gen_keys = {f: self._gen_key(f) for f in families}
        guess = {f: gens.get(f, 0) for f in families}
        slots = [_Slot(c) for c in checks]
        for slot in slots:
            self._place(slot, guess[slot.check.key], now)
        bkeys = [self._block_key(k) for k in block_keys]
        keys = [*gen_keys.values(), *bkeys]
        for slot in slots:
            keys.append(slot.key)
            if slot.kind == _SW:
                keys.append(slot.prev_key)
        found: dict[str, Any] = client.gets_many(keys)

        # A reset elsewhere (or a first sight of a reset family): re-read at the right generation.
        moved: list[_Slot] = []
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
            again = [s.key for s in moved] + [s.prev_key for s in moved if s.kind == _SW]
            found.update(client.gets_many(again))

        # Decide from what was read.
        for slot in slots:
            check = slot.check
            alg = check.algorithm
            hit = found.get(slot.key)
            if slot.kind == _CAS:
                if hit is not None:
                    slot.state = self._decode(alg, hit[0])
                    slot.token = hit[1]
                state = slot.state
            else:
                cur = min(int(hit[0]), _M32) if hit is not None else 0
                slot.state = hit  # for counters: whether the key existed when read
                if slot.kind == _FW:
                    state = (slot.win << 32) | cur if cur else None
                else:
                    prev = found.get(slot.prev_key)
                    slot.prev = min(int(prev[0]), _M32) if prev is not None else 0
                    state = ((((slot.win << 32) | cur) << 32) | slot.prev
                             if cur or slot.prev else None)
            slot.decision = alg.peek(state, now, check.cost)

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

        # A blocked request charges nothing; probes are decided, never charged.
        if consume and not any(blocked):
            dependent = [s for s in slots if not s.check.independent]
            if all(s.decision.allowed for s in dependent):  # type: ignore[union-attr]
                done: list[_Slot] = []
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
        return BatchResult([s.decision for s in slots], blocked)  # type: ignore[misc]

    def _decode(self, alg: Algorithm, value: bytes | None) -> Any:
        if value is None:
            return None
        if isinstance(alg, TokenBucket):
            return int(value)
        return _decode_log(value)

    def _charge(self, slot: _Slot, now: int) -> bool:
        """Charge one check whose peek allowed it; sets ``slot.decision``; True if charged."""
        check = slot.check
        alg = check.algorithm
        cost = check.cost
        client = self._client
        if slot.kind != _CAS:
            n = self._incr(slot.key, cost, alg.ttl_us(0, now), slot.state is not None)
            before = min(n - cost, _M32)
            if slot.kind == _FW:
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
        lock = self._cas_locks[hash(slot.key) & (_CAS_STRIPES - 1)]
        deadline = 0.0
        if not lock.acquire(blocking=False):
            deadline = time.monotonic() + self.timeout
            if not lock.acquire(timeout=self.timeout):
                slot.decision = self._contended(decision, cost)
                return False
            value, token = self._gets(slot.key)  # what the thread before us wrote
            state = self._decode(alg, value)
        try:
            return self._cas_loop(slot, alg, cost, now, state, token, deadline)
        finally:
            lock.release()

    def _cas_loop(self, slot: _Slot, alg: Algorithm, cost: int, now: int, state: Any,
                  token: Any, deadline: float) -> bool:
        """The CAS update of ``_charge``, from ``state`` read with ``token``; ``deadline``
        (``time.monotonic``) is set on the first lost race when 0."""
        client = self._client
        decision = slot.decision
        assert decision is not None
        lost = 0
        while True:
            new, decision = alg.hit(state, now, cost)
            if not decision.allowed:
                slot.decision = decision
                return False
            data = self._encode(new)
            exptime = _expire(alg.ttl_us(new, now))
            if token is None:
                ok = client.add(slot.key, data, expire=exptime, noreply=False)
            else:
                ok = client.cas(slot.key, data, token, expire=exptime, noreply=False)
            if ok:
                slot.decision = decision
                return True
            lost += 1
            if not deadline:
                deadline = time.monotonic() + self.timeout
            if not self._backoff(lost, deadline):
                break
            value, token = self._gets(slot.key)
            state = self._decode(alg, value)
        slot.decision = self._contended(decision, cost)
        return False

    @staticmethod
    def _contended(decision: Decision, cost: int) -> Decision:
        """The denial of a request whose every attempt lost a race (contention), with
        what ``decision`` (an allowing one) left uncharged."""
        remaining = min(decision.limit, decision.remaining + cost)
        return _new(
            Decision,
            (False, decision.limit, remaining, decision.reset_after, CONTENTION_RETRY_AFTER,
             decision.rate, False),
        )

    def _uncharge(self, slot: _Slot, now: int) -> None:
        """Take back the charge of ``slot`` (a later check of its batch denied)."""
        check = slot.check
        client = self._client
        if slot.kind != _CAS:
            client.decr(slot.key, check.cost, noreply=False)
            return
        alg = check.algorithm
        lost = 0
        deadline = time.monotonic() + self.timeout
        while lost == 0 or self._backoff(lost, deadline):
            value, token = self._gets(slot.key)
            if value is None:
                return
            state = self._decode(alg, value)
            if isinstance(alg, TokenBucket):
                # GCRA debt is additive: remove this request's share from whatever is there now.
                debt = (state & _M96) - check.cost * alg.period_us
                new = (state >> 96 << 96) | (debt if debt > 0 else 0)
            else:
                log: Log = state
                for entry in reversed(log.entries):
                    if entry[0] == now:  # this request's entry (maybe merged with others')
                        take = min(entry[1], check.cost)
                        entry[1] -= take
                        log.total -= take
                        if not entry[1]:
                            log.entries.remove(entry)
                        break
                else:
                    return
                new = log
            data = self._encode(new)
            if client.cas(slot.key, data, token, expire=_expire(alg.ttl_us(new, now)),
                          noreply=False):
                return
            lost += 1
        # Out of attempts: the charge stays (conservative: this key is limited a bit more).

    def _backoff(self, lost: int, deadline: float) -> bool:
        """After ``lost`` lost races of one CAS update: True to try again (after a tiny
        jittered wait from the third attempt on), False when the attempts (``cas_retries``)
        or, after a few attempts, the time (``deadline``, on ``time.monotonic``) are used up."""
        retries = self.cas_retries
        if retries is not None and lost >= retries:
            return False
        delay = 0.0
        if lost > 1:
            delay = random.random() * min(_BACKOFF_MAX, _BACKOFF_BASE * (1 << (min(lost, 12) - 2)))
        if lost >= _MIN_ATTEMPTS and time.monotonic() + delay >= deadline:
            return False
        if delay:
            time.sleep(delay)
        return True

    def _encode(self, state: Any) -> bytes:
        if isinstance(state, int):
            return str(state).encode("ascii")
        return _encode_log(state)

    def _gets(self, key: str) -> tuple[Any, Any]:
        got = self._client.gets(key)
        if not got:
            return None, None
        value, token = got
        return value, token

    def _incr(self, key: str, cost: int, ttl_us: int, exists: bool) -> int:
        client = self._client
        data = str(cost).encode("ascii")
        # A key missing when read is most likely still missing: try ``add`` first.
        if not exists and client.add(key, data, expire=_expire(ttl_us), noreply=False):
            return cost
        for _ in range(3):
            n = client.incr(key, cost, noreply=False)
            if n is not None:
                return int(n)
            if client.add(key, data, expire=_expire(ttl_us), noreply=False):
                return cost
        raise StorageError(f"memcached: counter {key!r} keeps disappearing")

    def reset(self, keys: Sequence[str]) -> None:
        """Forget every state of these key families: their generation moves on."""
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

    # -- dynamic blocklist --------------------------------------------------------------------

    def block(self, key: str, ttl: float | None, reason: str = "", now: int | None = None) -> None:
        if ttl is not None and (
            isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0
        ):
            raise ConfigError(f"ttl must be a positive number of seconds or None, got {ttl!r}")
        t = (time.time() * 1_000_000 if now is None else now) / 1_000_000
        forever = ttl is None or ttl == _INF
        expires_at = _INF if forever else t + ttl  # type: ignore[operator]
        exptime = 0 if forever else _expire(math.ceil(ttl * 1_000_000))  # type: ignore[operator]
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
        try:
            existed = bool(self._client.delete(self._block_key(key), noreply=False))
            self._edit_index(lambda index: index.pop(key, None))
        except self._errors as exc:
            raise StorageError(f"memcached: {type(exc).__name__}: {exc}") from exc
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
                exptime = _expire(math.ceil((latest - t) * 1_000_000))
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

    async def aapply(
        self,
        checks: Sequence[Check],
        *,
        consume: bool = True,
        now: int | None = None,
        block_keys: Sequence[str] = (),
    ) -> BatchResult:
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
        try:
            value = self._client.get(self.prefix + "G")
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


def _servers(spec: Any) -> list[tuple[str, int]] | None:
    """Server addresses from ``spec``, or None when ``spec`` is a client object."""
    if isinstance(spec, str):
        items: list[Any] = [s for s in spec.split(",") if s.strip()]
    elif isinstance(spec, (list, tuple)) and spec and all(
        isinstance(s, (str, tuple, list)) for s in spec
    ):
        items = list(spec)
    elif all(hasattr(spec, m) for m in ("gets_many", "incr", "decr", "add", "cas", "gets")):
        return None
    else:
        raise ConfigError(
            f"expected a pymemcache client or memcached server addresses, got {spec!r}"
        )
    if not items:
        raise ConfigError(f"no memcached server in {spec!r}")
    return [_address(item) for item in items]


def _address(item: Any) -> tuple[str, int]:
    if isinstance(item, (tuple, list)):
        if len(item) != 2:
            raise ConfigError(f"a memcached server is (host, port), got {item!r}")
        host, port = item
    else:
        parts = urlsplit("//" + item.strip())
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            raise ConfigError(f"invalid memcached server address {item!r}: bad port") from None
    if not host or not isinstance(host, str):
        raise ConfigError(f"invalid memcached server address {item!r}")
    if port is None:
        port = DEFAULT_PORT
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"invalid memcached port in {item!r}")
    return host, port


def _make_client(
    servers: list[tuple[str, int]],
    connect_timeout: float,
    timeout: float,
    max_pool_size: int | None,
) -> Any:
    from pymemcache.client.base import PooledClient  # type: ignore[import-untyped]
    from pymemcache.client.hash import HashClient  # type: ignore[import-untyped]

    common: dict[str, Any] = {
        "connect_timeout": connect_timeout,
        "timeout": timeout,
        "no_delay": True,
        "default_noreply": False,
        "max_pool_size": max_pool_size,
    }
    if len(servers) == 1:
        return PooledClient(servers[0], **common)
    # Retry a failed server on every call and raise its errors (never a silent default
    # value, never a remap of its keys to another server).
    return HashClient(
        servers, use_pooling=True, retry_attempts=sys.maxsize, retry_timeout=-1,
        ignore_exc=False, **common,
    )


_ALIASES = {"socket_timeout": "timeout", "socket_connect_timeout": "connect_timeout"}
_INT_OPTIONS = ("cas_retries", "max_log_limit", "max_pool_size")
_FLOAT_OPTIONS = ("connect_timeout", "timeout")


def from_url(url: str, **options: Any) -> MemcachedStorage:
    """``memcached://host[:port][,host2[:port]...][?prefix=...&timeout=...]``.

    Options (query string or keyword arguments): ``prefix``, ``connect_timeout``,
    ``timeout``, ``cas_retries``, ``max_log_limit``, ``max_pool_size``
    (``socket_timeout``/``socket_connect_timeout`` are accepted too, as for Redis).
    """
    parts = urlsplit(url)
    query: dict[str, Any] = dict(parse_qsl(parts.query))
    query.update(options)
    for alias, name in _ALIASES.items():  # the Redis backend's names, for portable options
        if alias in query:
            query.setdefault(name, query.pop(alias))
    unknown = set(query) - {"prefix", *_INT_OPTIONS, *_FLOAT_OPTIONS}
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(sorted(unknown))} for storage {url!r}")
    for name in _INT_OPTIONS + _FLOAT_OPTIONS:
        if isinstance(query.get(name), str):
            try:
                query[name] = (int if name in _INT_OPTIONS else float)(query[name])
            except ValueError:
                raise ConfigError(
                    f"{name} must be a number, got {query[name]!r} in {url!r}"
                ) from None
    netloc = parts.netloc.rpartition("@")[2]
    if not netloc.strip(", "):
        raise ConfigError(f"no memcached server in {url!r}")
    return MemcachedStorage(netloc, **query)
