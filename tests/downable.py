"""A real memory store that presents itself as remote and can be taken down (tests only)."""

from __future__ import annotations

from collections.abc import Sequence

from throttlekit.storage import MemoryStorage
from throttlekit.storage.base import BatchResult, Check


class DownableStore(MemoryStorage):
    """Answers as a memory store; while ``down``, every batch and lease call raises as an
    unreachable server would. ``calls`` counts the calls that reached it."""

    remote = True

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.calls = 0

    def apply(self, checks: Sequence[Check], *, consume: bool = True, now: int | None = None,
              block_keys: Sequence[str] = ()) -> BatchResult:
        self.calls += 1
        if self.down:
            raise ConnectionError("store down")
        return super().apply(checks, consume=consume, now=now, block_keys=block_keys)

    def acquire(self, keys: Sequence[str], limits: Sequence[int], lease_id: str,
                timeout: float, now: int | None = None) -> int:
        self.calls += 1
        if self.down:
            raise ConnectionError("store down")
        return super().acquire(keys, limits, lease_id, timeout, now)
