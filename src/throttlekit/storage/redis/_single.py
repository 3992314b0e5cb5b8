"""The single-check path of ``RedisStorage``: one check without block keys (the common
case) runs its strategy's own small script instead of the generic batch script. On our own
plain client (built from a URL) the command is packed here, most of it once per algorithm,
and sent on a pooled connection without redis-py's per-command layers.

A fixed window on the caller's clock runs ``fixed_window.lua``, with or without the
request's block keys: the window and its TTL are computed here, the script only counts (one
``INCRBY`` of the window's string key when it allows; one ``EXISTS`` more for block keys),
and the Decision is made here from the count it returns. The ids of the fixed windows in use
are registered (``register.lua``, once a minute per id and process: one more round trip then;
a registry lost without the scripts (an eviction) is back within the minute)
so that ``reset`` finds their keys without ``KEYS``/``SCAN``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..._algorithms import Algorithm
from ..._decision import CLOCK_SKEW_US, Decision
from ..._errors import StorageError
from ..base import Check
from ._scripts import (
    SAFE,
    SMALL,
    Fixed,
    One,
    Script,
    bulk,
    fixed_decision,
    script,
    script_kind,
)

__all__ = ["MISSING", "SingleChecks", "failed"]

_MAX_ONES = 4096  # bound of the per-algorithm argument caches
MISSING = object()  # the server does not know the script (NOSCRIPT)
_WINDOWS = 1 << 19  # a fixed window's key holds (window mod this) << 33 | count
_LEAN = frozenset({"token_bucket", "sliding_window"})  # their *_at.lua scripts
_REGISTER_EVERY = 60_000_000  # a fixed window's id is registered once a minute (us)


def _send_read(conn: Any, cmd: bytes) -> Any:
    conn.send_packed_command((cmd,))
    return conn.read_response()


def failed(exc: BaseException) -> StorageError:
    return StorageError(f"Redis: {type(exc).__name__}: {exc}")


class SingleChecks:
    """The single-check methods of :class:`RedisStorage` (a mixin: the state is the
    storage's, set in its ``__init__``)."""

    clock: str
    _ones: dict[Algorithm, One]
    _fixeds: dict[Algorithm, Fixed]
    _slack_ms: str
    _slack: int
    _encoding: tuple[str, str] | None
    _pool: Any
    _client: Any
    _reconnect_check: bool
    _errors: tuple[type[BaseException], ...]
    _noscript: type[BaseException]
    _register: Script
    _registry: str
    _registered: dict[str, int]  # fixed-window id -> when it is due again (microseconds)

    if TYPE_CHECKING:  # the storage's own (a stub here would shadow them)
        def family(self, key: str) -> str: ...

        def sync_client(self) -> Any: ...

        def _eval(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any: ...

        async def _aeval(
            self, script: Script, keys: Sequence[str], args: Sequence[Any]
        ) -> Any: ...

        async def _aeval_one(
            self, client: Any, script: Script, sha: bytes, args: list[Any]
        ) -> Any: ...

    def _one(self, check: Check, consume: bool, now: int | None) -> tuple[One, list[Any]]:
        """The specialised script and the EVALSHA arguments after the sha of one check
        without block keys (see :class:`One`)."""
        alg = check.algorithm
        one = self._ones.get(alg)
        if one is None:
            one = self._prepare(alg)
        h = self.family(check.key)
        if now is None:
            now_arg: Any = b"" if self.clock == "server" else int(time.time() * 1_000_000)
        else:
            now_arg = now
        cost = check.cost
        cost_arg: Any
        if consume and not check.probe:
            cost_arg = SMALL[cost] if cost < 64 else min(cost, SAFE)
        else:  # decided, not charged: the scripts read -1 - cost
            cost_arg = -1 - min(cost, SAFE)
        if one.log is None:
            return one, [1, h, now_arg, cost_arg, *one.tail]
        return one, [2, h, h + one.log, now_arg, cost_arg, *one.tail]

    def _prepare(self, alg: Algorithm) -> One:
        tail: list[Any] = [self._slack_ms.encode(), alg.id, str(alg.limit).encode(),
                           str(alg.period_us).encode()]
        if alg.name == "token_bucket":
            tail.append(str(alg.capacity).encode())
        # on the caller's clock, the scripts that answer the state they found (_LEAN)
        lean = self.clock == "client" and alg.name in _LEAN
        name = alg.name
        if lean:
            name = "gcra_at" if script_kind(alg) == "tg" else f"{name}_at"
        one = One(script(name), alg, tail, self._encoding, lean)
        if len(self._ones) >= _MAX_ONES:
            self._ones.clear()
        self._ones[alg] = one
        return one

    def _direct_one(self, check: Check, consume: bool, now: int | None) -> tuple[One, Any]:
        """One check on our own plain client: the command packed here (most of it once per
        algorithm) and sent on a pooled connection, without redis-py's per-command layers.
        The script and its answer."""
        alg = check.algorithm
        one = self._ones.get(alg)
        if one is None or one.packed is None:
            one = self._prepare(alg)
        head, packed, encoding = one.head, one.packed, one.encoding
        assert head is not None and packed is not None and encoding is not None
        key = self.family(check.key)
        if now is None:
            now_b = b"" if self.clock == "server" else b"%d" % int(time.time() * 1_000_000)
        else:
            now_b = b"%d" % now
        cost = check.cost
        if consume and not check.probe:
            cost_b = SMALL[cost] if cost < 64 else b"%d" % min(cost, SAFE)
        else:  # decided, not charged: the scripts read -1 - cost
            cost_b = b"%d" % (-1 - min(cost, SAFE))
        k = key.encode(*encoding)
        keys = b"$%d\r\n%b\r\n" % (len(k), k)
        if one.log is not None:
            k += one.log_b
            keys += b"$%d\r\n%b\r\n" % (len(k), k)
        cmd = b"%b%b$%d\r\n%b\r\n$%d\r\n%b\r\n%b" % (
            head, keys, len(now_b), now_b, len(cost_b), cost_b, packed
        )
        raw = self._direct(cmd)
        if raw is MISSING:  # NOSCRIPT: send the source (and cache it)
            _, args = self._one(check, consume, now)
            raw = self._eval_one(one.script, one.sha, args)
        return one, raw

    def _direct(self, cmd: bytes) -> Any:
        """Send a packed command on a pooled connection of our own plain client and read
        its answer (``MISSING`` when the server answers NOSCRIPT)."""
        pool = self._pool
        try:
            conn = pool.get_connection()
        except self._errors as exc:
            raise failed(exc) from exc
        try:
            try:
                return conn.retry.call_with_retry(
                    lambda: _send_read(conn, cmd), lambda _error: conn.disconnect()
                )
            except self._noscript:
                self._scripts_lost()
                return MISSING
        except self._errors as exc:
            raise failed(exc) from exc
        finally:
            if self._reconnect_check and conn.should_reconnect():
                conn.disconnect()
            pool.release(conn)

    def _fixed_of(self, alg: Algorithm) -> Fixed:
        fx = self._fixeds.get(alg)
        if fx is None:
            fx = Fixed(alg, self._encoding or ("utf-8", "strict"))
            if len(self._fixeds) >= _MAX_ONES:
                self._fixeds.clear()
            self._fixeds[alg] = fx
        return fx

    def _fixed_args(
        self, check: Check, consume: bool, now: int, block_keys: Sequence[str] = ()
    ) -> tuple[Fixed, list[Any], int, bool]:
        """``fixed_window.lua``'s arguments for one check at ``now`` (the caller's clock)
        and the request's ``block_keys``: the script, its EVALSHA arguments after the sha,
        the microseconds left in the window and whether the script charges (else it only
        reads the count)."""
        fx = self._fixeds.get(check.algorithm)
        if fx is None:
            fx = self._fixed_of(check.algorithm)
        p = fx.p
        win = now // p
        left = (win + 1) * p - now
        cost = check.cost
        charged = consume and not check.probe and 0 < cost <= fx.limit
        base = (win % _WINDOWS) << 33  # see fixed_window.lua
        args: list[Any] = [1, self.family(check.key) + fx.suffix]
        if block_keys:
            args[0] += len(block_keys)
            args += [f"{self.family(k)}:b" for k in block_keys]
        # (near the window's end: the script counts in the next window, if the key's count
        # is of it; told by a negative TTL, 'n' to read)
        near = left <= CLOCK_SKEW_US
        if not charged:
            args += [b"%d" % base, b"n" if near else b"r"]
        else:
            ttl = (left + 999) // 1000 + self._slack
            args += [b"%d" % (base + cost), fx.limit_b, b"%d" % (-ttl if near else ttl)]
            if cost != 1:  # (else INCR: one argument less)
                args.append(SMALL[cost] if cost < 64 else b"%d" % cost)
        return fx, args, left, charged

    def _fixed(
        self, check: Check, consume: bool, now: int, block_keys: Sequence[str] = ()
    ) -> Decision | None:
        """One fixed-window check on the caller's clock: ``fixed_window.lua``, whose answer
        is a count (see the script); the Decision is computed here. None (nothing charged)
        when one of ``block_keys`` has an entry: the batch script reads it."""
        fx, args, left, charged = self._fixed_args(check, consume, now, block_keys)
        t = time.time_ns() // 1000
        if t >= fx.due and self._due(fx, t):
            self._eval(self._register, [self._registry], self._registration([fx], t))
        if self._pool is not None:
            enc = self._encoding
            assert enc is not None
            n = args[0]
            head = fx.heads.get((n, len(args)))
            if head is None:
                head = fx.head(n, len(args))
            cmd = b"%b%b%b" % (
                head, b"".join([bulk(k.encode(*enc)) for k in args[1 : n + 1]]),
                b"".join([bulk(a) for a in args[n + 1 :]]),
            )
            raw = self._direct(cmd)
            if raw is MISSING:
                raw = self._eval_one(fx.script, fx.sha, args)
        else:
            raw = self._eval_one(fx.script, fx.sha, args)
        if not fx.due:  # NOSCRIPT: the server restarted, its registry maybe gone with it
            self._eval(self._register, [self._registry], self._registration([fx], t))
        if raw is None:
            return None
        return fixed_decision(check.algorithm, int(raw), check.cost, left, charged)

    async def _afixed(
        self, client: Any, check: Check, consume: bool, now: int, block_keys: Sequence[str]
    ) -> Decision | None:
        """Async twin of :meth:`_fixed` (on the async client)."""
        fx, args, left, charged = self._fixed_args(check, consume, now, block_keys)
        t = time.time_ns() // 1000
        if t >= fx.due and self._due(fx, t):
            await self._aeval(self._register, [self._registry], self._registration([fx], t))
        raw = await self._aeval_one(client, fx.script, fx.sha, args)
        if not fx.due:  # (see _fixed)
            await self._aeval(self._register, [self._registry], self._registration([fx], t))
        if raw is None:
            return None
        return fixed_decision(check.algorithm, int(raw), check.cost, left, charged)

    def _registration(self, fixeds: Sequence[Fixed], t: int) -> list[Any]:
        """``register.lua``'s arguments for the ids of ``fixeds`` at ``t`` (this host's
        time, microseconds: the registry outlives keys in real time, whatever clock the
        checks run on), each due again ``_REGISTER_EVERY`` later: scored by when a window
        written before then may expire at the latest (a period, or a calendar window's
        time left, after that; its TTL's slack; a minute for other hosts' clocks)."""
        args: list[Any] = [t // 1000]
        for fx in fixeds:
            fx.due = self._registered[fx.id] = t + _REGISTER_EVERY
            p = fx.p  # (a calendar window's: its end since the epoch)
            life = p if p <= t else p - t
            args += ((t + _REGISTER_EVERY + life) // 1000 + self._slack + 60_000, fx.id)
        return args

    def _due(self, fx: Fixed, t: int) -> bool:
        """Whether ``fx``'s id is to be registered at ``t`` (another algorithm of the same
        id may have registered it)."""
        if len(self._registered) >= _MAX_ONES:
            self._registered.clear()
        fx.due = self._registered.get(fx.id, 0)
        return t >= fx.due

    def _scripts_lost(self) -> None:
        """The server answered NOSCRIPT: it restarted (or its scripts were flushed), and
        the id registry may be gone with its keys: every id is registered again, the
        checking one at once (:meth:`_fixed`), the others on their next check."""
        self._registered.clear()
        for fx in self._fixeds.values():
            fx.due = 0

    def _unregistered(self, checks: Sequence[Check]) -> list[Any] | None:
        """``register.lua``'s arguments for the fixed windows among ``checks`` whose ids
        are due (see :meth:`_registration`); None when none is."""
        due = None
        t = time.time_ns() // 1000
        for c in checks:
            if c.algorithm.name == "fixed_window":
                fx = self._fixed_of(c.algorithm)
                if t >= fx.due and self._due(fx, t):
                    due = [fx] if due is None else [*due, fx]
        return None if due is None else self._registration(due, t)

    def _eval_one(self, script: Script, sha: bytes, args: list[Any]) -> Any:
        client = self._client
        if client is None:
            client = self.sync_client()
        try:
            try:
                return client.execute_command("EVALSHA", sha, *args)
            except self._noscript:
                self._scripts_lost()
                return client.execute_command("EVAL", script.source, *args)
        except self._errors as exc:
            raise failed(exc) from exc
