"""Several workers on the memory store: each keeps its own counters, so the integrations
warn (once per process) when the server runs, or forked, more than one."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ._limitspec import known_limiters
from .storage import MemoryStorage

if TYPE_CHECKING:
    from ._limiter import Limiter

__all__ = ["ForkCheck", "warn_memory_multiworker", "worker_count"]

_warned = False


def _argv_workers(argv: Sequence[str]) -> int:
    for i, arg in enumerate(argv):
        value = None
        if arg in ("-w", "--workers") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--workers="):
            value = arg.partition("=")[2]
        elif arg.startswith("-w") and arg[2:].isdigit():
            value = arg[2:]
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def worker_count(environ: Mapping[str, str] | None = None,
                 argv: Sequence[str] | None = None) -> int:
    """How many worker processes the server was asked for (gunicorn or uvicorn), from the
    command line, ``GUNICORN_CMD_ARGS``, ``WEB_CONCURRENCY`` or ``UVICORN_WORKERS``; 1
    when nothing says."""
    env = os.environ if environ is None else environ
    argv = sys.argv if argv is None else argv
    n = 0
    program = " ".join(argv[:3]).lower()
    if "gunicorn" in program or "uvicorn" in program:
        n = _argv_workers(argv)
    if not n:
        n = _argv_workers(env.get("GUNICORN_CMD_ARGS", "").split())
    for name in ("WEB_CONCURRENCY", "UVICORN_WORKERS"):
        if not n and env.get(name, "").strip().isdigit():
            n = int(env[name])
    return max(n, 1)


def warn_memory_multiworker(lim: Limiter, *, forked: bool = False) -> bool:
    """Warn (once per process) when ``lim`` keeps its counters in process memory while the
    server runs several workers: each worker then admits the full limit."""
    global _warned
    known_limiters.add(lim)
    if _warned or not isinstance(lim.storage, MemoryStorage):
        return False
    n = worker_count()
    if n <= 1 and not forked:
        return False
    _warned = True
    many = f"{n} worker processes" if n > 1 else "a forked worker process"
    warnings.warn(
        f"throttlekit: the in-memory store (memory://) is used under {many}; each process "
        "keeps its own counters, so every limit is multiplied by the number of workers. "
        "Use a shared store such as redis://.",
        RuntimeWarning,
        stacklevel=_outside_stacklevel(),
    )
    return True


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _outside_stacklevel() -> int:
    """The ``stacklevel`` (for a warning raised by the caller) of the first frame outside
    throttlekit: the user's setup line, not the integration's code."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and os.path.abspath(
            frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level


class ForkCheck:
    """Remembers the pid at setup; the first request in another process (a worker forked
    after the app was built, e.g. gunicorn ``--preload``) warns about the memory store."""

    __slots__ = ("pid",)

    def __init__(self) -> None:
        self.pid: int | None = os.getpid()

    def __call__(self, lim: Limiter) -> None:
        pid = self.pid
        if pid is not None:
            self.pid = None
            if pid != os.getpid():
                warn_memory_multiworker(lim, forked=True)
