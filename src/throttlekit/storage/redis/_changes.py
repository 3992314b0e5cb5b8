"""The admin changes of ``RedisStorage`` that lift refusals, ``unblock`` and ``reset``, and the
generation of admin changes they move on themselves (see ``Storage.generation``): every
worker's cached blocks and refusals go within about a second, whoever made the change (a
``Limiter``, the CLI, or an admin script's own storage object).

Written once without I/O: generators that yield each store call, ``(CALL, command)`` or
``(EVAL, (script, keys, args))``, and get its answer back; :meth:`AdminCalls._steps` and
:meth:`AdminCalls._asteps` send them, sync or async. On one server (standalone, Sentinel's
master) the change and the generation's move are one script, atomic; on a Cluster, whose
scripts touch one slot each, the move is one more call, after the change (a worker that reads
the new generation finds the change made).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Generator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..._errors import ConfigError
from ._scripts import Script

__all__ = ["CALL", "EVAL", "AdminCalls", "Steps"]

_R = TypeVar("_R")
CALL, EVAL = "call", "eval"
#: the store calls of one operation: yields (CALL or EVAL, its arguments), is sent each answer
Steps = Generator[tuple[str, tuple[Any, ...]], Any, _R]


class AdminCalls:
    """``unblock``, ``reset`` and the generation of :class:`RedisStorage` (a mixin: the
    state is the storage's)."""

    prefix: str
    _blocks: Script
    _reset: Script
    _index: tuple[str, str]
    _registry: str
    _registered: dict[str, int]
    #: whether one script may touch every key of the store (not on a Cluster)
    _one_slot = True

    if TYPE_CHECKING:  # the storage's own (a stub here would shadow them)
        def family(self, key: str) -> str: ...
        def _key_groups(self, keys: Sequence[str]) -> list[list[str]]: ...
        def _sync_call(self, *args: Any) -> Any: ...
        def _eval(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any: ...
        def _acall(self, *args: Any) -> Awaitable[Any]: ...
        def _aeval(self, script: Script, keys: Sequence[str], args: Sequence[Any]
                   ) -> Awaitable[Any]: ...

    @staticmethod
    def _check_text(*values: str) -> None:
        """An admin call's keys and reason are text Redis can hold (UTF-8): a ConfigError
        naming one that is not (a lone surrogate), not the client's UnicodeEncodeError."""
        for value in values:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ConfigError(f"{value!r} is not UTF-8 text (a lone surrogate): Redis "
                                  "cannot hold it as a key or a reason") from None

    def _gen_seed(self) -> tuple[str, str]:
        # ``P{%g}``: a plain counter (``%`` never starts an escaped family: no clash), created
        # at the current time in microseconds rather than 0, so a counter lost (evicted,
        # flushed) and made again never comes back to a value a worker still remembers.
        return f"{self.prefix}{{%g}}", str(time.time_ns() // 1000)

    def _reading(self) -> Steps[int]:
        """``generation``: its value; made first when missing (lost in a restart or an
        eviction, or never made), from the clock, so that no worker reads a value it
        remembers from before: an absent counter is never a number."""
        key, seed = self._gen_seed()
        value = yield CALL, ("GET", key)
        if value is None:
            yield CALL, ("SET", key, seed, "NX")
            value = yield CALL, ("GET", key)
        return int(value)

    def _moving(self) -> Steps[int]:
        """``next_generation``: the generation moved on; its new value."""
        key, seed = self._gen_seed()
        yield CALL, ("SET", key, seed, "NX")
        return int((yield CALL, ("INCR", key)))

    def _unblocking(self, key: str) -> Steps[bool]:
        """``unblock``: whether ``key`` had an entry (its own key or the index's); the
        generation moves on, whether it had or not (a call retried after a failure cannot
        tell whether the first one removed it)."""
        self._check_text(key)
        entry = f"{self.family(key)}:b"
        gen, seed = self._gen_seed()
        args = ["del", "", "0", key, seed, ""]
        if self._one_slot:  # the entry, the index and the generation: one script
            return bool((yield EVAL, (self._blocks, [*self._index, entry, gen], args)))
        n = yield CALL, ("DEL", entry)
        removed = yield EVAL, (self._blocks, self._index, args)
        yield from self._moving()
        return bool(n or removed)

    def _resetting(self, keys: Sequence[str]) -> Steps[None]:
        """``reset``: the families of ``keys`` forgotten; the generation moves on (as for
        ``unblock``, whether there was anything to forget or not)."""
        self._check_text(*keys)
        ids = [*(yield CALL, ("ZRANGEBYSCORE", self._registry, time.time_ns() // 10**6,
                              "+inf")), *self._registered]  # (and this process's own)
        gen, seed = self._gen_seed()
        for group in self._key_groups(keys):
            if self._one_slot:  # (one group) the generation moves in the script
                yield EVAL, (self._reset, [*group, gen], [seed, *ids])
            else:
                yield EVAL, (self._reset, group, ["", *ids])
        if not self._one_slot and keys:
            yield from self._moving()

    def _steps(self, steps: Steps[_R]) -> _R:
        """Make the store calls of ``steps`` one by one; its result."""
        answer: Any = None
        try:
            while True:
                op, a = steps.send(answer)
                answer = self._sync_call(*a) if op is CALL else self._eval(*a)
        except StopIteration as done:
            result: _R = done.value
            return result

    async def _asteps(self, steps: Steps[_R]) -> _R:
        """Async twin of :meth:`_steps`."""
        answer: Any = None
        try:
            while True:
                op, a = steps.send(answer)
                answer = await (self._acall(*a) if op is CALL else self._aeval(*a))
        except StopIteration as done:
            result: _R = done.value
            return result
