"""The writes of the memcached storage: counters charged by ``incr`` (and taken back by
``decr``), states updated by ``gets``/``cas`` with a bounded, jittered retry (the chains of
escalating bans too: ``e<generation>:<id|key>`` holds "level until")."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..._algorithms import Algorithm, Log, TokenBucket, log_uncharge
from ..._decision import Decision
from ..._errors import StorageError
from ..._log import log_newest
from ..base import Check
from ._codec import decode_state, encode_key, encode_state, expire

if TYPE_CHECKING:
    from ..._escalation import Escalation

__all__ = ["CAS", "CONTENTION_RETRY_AFTER", "FW", "M32", "STRIPES", "SW", "CasWrites", "Slot"]

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
STRIPES = 64
M32 = (1 << 32) - 1
M96 = (1 << 96) - 1
_new = tuple.__new__
FW, SW, CAS = 0, 1, 2


class Slot:
    """One check of a batch: its keys, what was read, and the decision so far."""

    __slots__ = ("check", "decision", "key", "kind", "prev", "prev_key", "state", "token", "win")

    def __init__(self, check: Check) -> None:
        self.check = check
        self.kind = FW
        self.key = ""
        self.prev_key = ""
        self.win = 0
        self.prev = 0
        self.state: Any = None
        self.token: Any = None
        self.decision: Decision | None = None


class CasWrites:
    """The CAS half of :class:`MemcachedStorage`."""

    _client: Any
    timeout: float
    cas_retries: int | None
    _cas_locks: list[threading.Lock]
    _errors: tuple[type[BaseException], ...]
    prefix: str
    _gen_key: Callable[[str], str]

    supports_escalation = True

    def escalate(self, escalation: Escalation, key: str, draw: float, now: int | None
                 ) -> tuple[int, int]:
        """The chain of bans "level until" under the family's generation, moved on with
        ``gets``/``cas`` (a lost race is read again, as a CAS charge is)."""
        us = int(time.time() * 1_000_000) if now is None else now
        client = self._client
        try:
            gen = client.get(self._gen_key(key))
            ckey = f"{self.prefix}e{int(gen or 0)}:{encode_key(f'{escalation.id}|{key}')}"
            deadline = time.monotonic() + self.timeout
            lost = 0
            while True:
                value, token = self._gets(ckey)
                old = None
                if value is not None:
                    level, _, until = value.partition(b" ")
                    old = (int(level), int(until))
                state, ttl = escalation.step(old, us, draw)
                data = f"{state[0]} {state[1]}".encode("ascii")
                exptime = expire(state[1] - us)
                if (client.add(ckey, data, expire=exptime, noreply=False) if token is None
                        else client.cas(ckey, data, token, expire=exptime, noreply=False)):
                    return state[0], ttl
                lost += 1
                if not self._backoff(lost, deadline):
                    raise StorageError(f"memcached: the chain {ckey!r} stays contended")
        except self._errors as exc:
            raise StorageError(f"memcached: {type(exc).__name__}: {exc}") from exc

    async def aescalate(self, escalation: Escalation, key: str, draw: float,
                        now: int | None) -> tuple[int, int]:
        return await asyncio.to_thread(self.escalate, escalation, key, draw, now)

    def _cas_loop(self, slot: Slot, alg: Algorithm, cost: int, now: int, state: Any,
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
            data = encode_state(new)
            exptime = expire(alg.ttl_us(new, now))
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
            state = decode_state(alg, value)
        slot.decision = self._contended(decision, cost)
        return False

    def _settle(self, slot: Slot, now: int) -> None:
        """A refused check of a CAS kind: when its state is newer than ``now`` (the clock
        stepped back), store the state moved to now, as a refusal does in every store
        (``_algorithms``); one attempt (a lost race: another request wrote it)."""
        check = slot.check
        state = slot.state
        if state is None or not check.cost or check.probe or slot.token is None:
            return
        alg = check.algorithm
        if isinstance(state, array):  # a log: moved in place by a refused hit
            if not (len(state) > state[0] and log_newest(state) > now):
                return
            new = alg.hit(state, now, check.cost)[0]
        else:
            new = alg.hit(state, now, check.cost)[0]
            if new is state:
                return
        self._client.cas(slot.key, encode_state(new), slot.token,
                         expire=expire(alg.ttl_us(new, now)), noreply=False)

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

    def _uncharge(self, slot: Slot, now: int) -> None:
        """Take back the charge of ``slot`` (a later check of its batch denied)."""
        check = slot.check
        client = self._client
        if slot.kind != CAS:
            client.decr(slot.key, check.cost, noreply=False)
            return
        alg = check.algorithm
        lost = 0
        deadline = time.monotonic() + self.timeout
        while lost == 0 or self._backoff(lost, deadline):
            value, token = self._gets(slot.key)
            if value is None:
                return
            state = decode_state(alg, value)
            if isinstance(alg, TokenBucket):
                # GCRA debt is additive: remove this request's share from whatever is there now.
                debt = (state & M96) - check.cost * alg.period_us
                new = (state >> 96 << 96) | (debt if debt > 0 else 0)
            else:
                log: Log = state
                if not log_uncharge(log, now, check.cost):  # this request's entry is gone
                    return
                new = log
            data = encode_state(new)
            if client.cas(slot.key, data, token, expire=expire(alg.ttl_us(new, now)),
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
        if not exists and client.add(key, data, expire=expire(ttl_us), noreply=False):
            return cost
        for _ in range(3):
            n = client.incr(key, cost, noreply=False)
            if n is not None:
                return int(n)
            if client.add(key, data, expire=expire(ttl_us), noreply=False):
                return cost
        raise StorageError(f"memcached: counter {key!r} keeps disappearing")
