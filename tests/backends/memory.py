from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from throttlekit import MemoryStorage
from throttlekit._algorithms import ALGORITHMS

MARKS: list[Any] = []
STRATEGIES = frozenset(ALGORITHMS)


@contextlib.contextmanager
def session() -> Iterator[None]:
    yield None


def make_storage(ctx: None) -> MemoryStorage:
    return MemoryStorage()
