"""The lease-script calls of ``RedisStorage`` (``lua/lease.lua``), written once without I/O:
generators that yield each script call's keys and arguments and get its answer back (the
storage's ``_run`` and ``_arun`` send them; a Cluster groups the keys by slot).
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

__all__ = ["Calls", "LeaseCalls"]

_R = TypeVar("_R")
#: the script calls of one operation: yields (keys, args), is sent each answer
Calls = Generator[tuple[Sequence[str], Sequence[Any]], Any, _R]


class LeaseCalls:
    """The lease calls of :class:`RedisStorage` (a mixin: the state is the storage's)."""

    clock: str
    _slack_ms: str

    if TYPE_CHECKING:  # the storage's own (a stub here would shadow it)
        def family(self, key: str) -> str: ...

    def _lease_groups(self, keys: Sequence[str]) -> list[list[int]]:
        """The indexes of lease ``keys``, in groups that one script may take together."""
        return [list(range(len(keys)))]

    def _leases(self, keys: Sequence[str], limits: Sequence[int], lease_id: str,
                timeout: float, now: int | None) -> Calls[int]:
        """The lease-script calls of ``acquire``: groups are taken in turn, and the ones
        taken released again when a later one is full."""
        taken: list[str] = []
        for group in self._lease_groups(keys):
            rkeys, args = self._lease_args([keys[i] for i in group], [limits[i] for i in group],
                                           lease_id, timeout, now)
            failed = int((yield rkeys, args))
            if failed:
                if taken:
                    yield from self._releases(taken, lease_id)
                return group[failed - 1]
            taken += [keys[i] for i in group]
        return -1

    def _releases(self, keys: Sequence[str], lease_id: str) -> Calls[None]:
        for group in self._lease_groups(keys):
            yield [f"{self.family(keys[i])}:q" for i in group], ["release", "", lease_id]

    def _lease_args(self, keys: Sequence[str], limits: Sequence[int], lease_id: str,
                    timeout: float, now: int | None) -> tuple[list[str], list[Any]]:
        if now is None and self.clock == "client":
            now = int(time.time() * 1_000_000)
        slack = self._slack_ms if now is not None else "1000"
        args: list[Any] = ["acquire", "" if now is None else str(now), lease_id,
                           str(round(timeout * 1_000_000)), slack, *limits]
        return [f"{self.family(k)}:q" for k in keys], args
