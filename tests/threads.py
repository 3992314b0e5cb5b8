"""Threads racing one another in tests: the interpreter made to switch between them often."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def switching(every: float = 1e-5) -> Iterator[None]:
    """Inside, threads switch every ``every`` seconds (not once per 5 ms), so they race
    inside the code under test."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(every)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def run_threads(*targets: Callable[[], object], every: float = 1e-5) -> None:
    """Each of ``targets`` in a thread of its own, all started, then all joined, switching
    every ``every`` seconds."""
    threads = [threading.Thread(target=target) for target in targets]
    with switching(every):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
