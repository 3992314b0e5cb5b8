"""``BlockWatch``: the server tells this process when the dynamic blocklist changes, so that
while it is empty a request need not look its block keys up.

A thread of the storage holds one connection of its own (RESP3) on which Redis tracks the
blocklist's keys (``CLIENT TRACKING ON BCAST PREFIX P{%b}:``): every change to them
(a block or ban made by any process, the admin CLI's included; an unblock) makes the
server push an ``invalidate`` message at once. The storage reads the index (``EXISTS``)
only after such a message, and while it found none, sends a request's checks without its
block keys; while it has entries, the index is read again once a second (so its expiry
is seen without a message). ``changes`` counts the messages (and every connect and
disconnect): a read of the index is trusted only if no message came in between.

Until the watch is live (connected, tracking on), after it fails, and in a forked child
(until its own thread runs), ``live`` is False and the storage looks block keys up on
every request as before. The connection is pinged every second; an answer missing for
two seconds counts as a failure. Servers without RESP3 or tracking (before Redis 6, or an
ACL that refuses ``CLIENT``) leave the watch off, retried every 30 s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..base import BatchResult, Check
from ._single import failed

__all__ = ["BlockLookups", "BlockWatch"]

logger = logging.getLogger("throttlekit")
_PING_EVERY = 1.0  # seconds without a message before a PING
_RETRY = (0.1, 30.0)  # reconnect backoff: first, longest (seconds)


class _Closed(Exception):
    pass


class BlockWatch:
    """The watch of one storage's blocklist keys (``prefix``: their common start), on
    connections made by ``connect`` (a ``weakref.WeakMethod`` of the storage's method that
    returns a connected redis-py ``Connection``: the thread ends once the storage is gone).
    Started on first use; ``live`` and ``changes`` are read by the storage on every request
    that has block keys."""

    __slots__ = ("__weakref__", "_conn", "_connect", "_stop", "_thread", "changes", "live",
                 "prefix")

    def __init__(self, connect: Any, prefix: str) -> None:
        self._connect = connect
        self.prefix = prefix
        self.live = False
        self.changes = 0
        self._thread: threading.Thread | None = None
        self._stop = False
        self._conn: Any = None
        _WATCHES.add(self)

    def start(self) -> None:
        """Start the thread unless it runs (cheap when it does)."""
        if self._thread is not None or self._stop:
            return
        thread = threading.Thread(target=self._run, name="throttlekit-blockwatch", daemon=True)
        self._thread = thread
        thread.start()

    def stop(self) -> None:
        self._stop = True
        self._down()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):  # (closing what may be gone already)
                conn.disconnect()

    def _down(self) -> None:
        self.live = False
        self.changes += 1

    def _run(self) -> None:
        delay = _RETRY[0]
        while not self._stop:
            try:
                self._watch()
                delay = _RETRY[0]
            except Exception as exc:
                self._down()
                if self._stop:
                    break
                logger.info("the Redis blocklist watch stopped (%s: %s); until it is back, "
                            "requests look their block keys up", type(exc).__name__, exc)
                time.sleep(delay)
                delay = min(delay * 4, _RETRY[1])
        self._down()

    def _watch(self) -> None:
        connect = self._connect()
        if connect is None:  # the storage is gone
            self._stop = True
            return
        conn = self._conn = connect()
        del connect
        try:
            conn.send_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", self.prefix)
            conn.read_response()  # (an error reply is raised)
            self.changes += 1
            self.live = True  # from here on, every change to the keys is pushed
            unanswered = 0
            while not self._stop:
                if not conn.can_read(timeout=_PING_EVERY):
                    if self._connect() is None:
                        self._stop = True  # the storage is gone
                        break
                    if unanswered >= 2:
                        raise _Closed("no answer to PING")
                    unanswered += 1
                    conn.send_command("PING")
                    continue
                message = conn.read_response(push_request=True)
                if message in (b"PONG", "PONG"):
                    unanswered = 0
                else:
                    self.changes += 1  # invalidate (or anything else): read the index again
        finally:
            self._conn = None
            self.live = False
            self.changes += 1
            with contextlib.suppress(Exception):
                conn.disconnect()

    def forked(self) -> None:
        """In a forked child: no thread runs, the watch is off until started again."""
        self.live = False
        self.changes += 1
        self._thread = None
        self._conn = None


_WATCHES: weakref.WeakSet[BlockWatch] = weakref.WeakSet()


def _forked() -> None:
    """In a forked child, no watch thread runs: every watch is off until started again."""
    for watch in list(_WATCHES):
        watch.forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class BlockLookups:
    """Whether a request's block keys are looked up: the part of :class:`RedisStorage` that
    keeps what it knows of the dynamic blocklist (a mixin: the state is the storage's, set
    in its ``__init__``)."""

    _watch: BlockWatch | None
    _clear: int
    _blocks_seen: tuple[bool, float]
    _index: tuple[str, str]
    _errors: tuple[type[BaseException], ...]
    clock: str
    watch_blocks: bool

    if TYPE_CHECKING:  # the storage's own (a stub here would shadow it)
        def sync_client(self) -> Any: ...

    #: Opt-in, where the watch (``watch_blocks``) is off or not live: how long (seconds)
    #: the dynamic blocklist is taken to be as last seen, so that while it is empty a
    #: request's block keys are not looked up. A block or a ban made by another process is
    #: then looked up by this one only within about that long (a fail2ban ban holds on the
    #: other workers up to that much later). None (default): every request looks its block
    #: keys up, unless the watch is live.
    blocks_fresh: float | None = None

    _can_watch = True  # (not on a Cluster: see cluster.py)

    def _lookups(self) -> bool | None:
        """Whether a request's block keys must be looked up; None when the blocklist must
        be read first (``EXISTS`` of its index): with a live watch, after it reported a
        change (and once a second while the blocklist has entries); else once per
        ``blocks_fresh`` seconds, or never (every request looks up)."""
        w = self._watch
        if w is not None and w.live:
            if self._clear == w.changes:
                return False  # the index was absent, and nothing changed since
            some, seen = self._blocks_seen
            if some and time.monotonic() - seen < 1.0:
                return True
            return None
        if w is not None:
            w.start()  # (after a fork: the child's own thread)
        elif self.watch_blocks:
            w = self._watch = BlockWatch(weakref.WeakMethod(self._watch_connection),
                                         self._index[0][:-1])
            w.start()
        fresh = self.blocks_fresh
        if fresh is None:
            return True
        some, seen = self._blocks_seen
        if time.monotonic() - seen < fresh:
            return some
        return None

    def any_blocked(self) -> bool:
        """Whether the dynamic blocklist has a live entry, in one command: on the client's
        clock, ``ZCOUNT`` of the index's entries expiring after now (as ``blocked()`` reads
        them); on the server's, ``EXISTS`` of the index (which then expires with its last
        entry, no slack added)."""
        index = self._index[0]
        command = ("ZCOUNT", index, f"({time.time_ns() // 1000}", "+inf") \
            if self.clock == "client" else ("EXISTS", index)
        mark = self._mark()
        try:
            live = self.sync_client().execute_command(*command)
        except self._errors as exc:
            raise failed(exc) from exc
        return self._saw_blocks(live, mark)

    def _mark(self) -> int:
        """What to note before reading the blocklist's index (see _saw_blocks)."""
        w = self._watch
        return w.changes if w is not None and w.live else -1

    def _saw_blocks(self, exists: Any, mark: int = -1) -> bool:
        """Note what a read of the index answered; ``mark``: :meth:`_mark` before it."""
        some = bool(exists)
        self._blocks_seen = (some, time.monotonic())
        self._clear = -1 if some else mark
        return some

    def _watch_connection(self) -> Any:
        """A RESP3 connection of the watch's own, like the sync client's (not pooled)."""
        pool = self.sync_client().connection_pool
        conn = pool.connection_class(**{**pool.connection_kwargs, "protocol": 3})
        conn.connect()  # (HELLO 3: a server before Redis 6 refuses it, the watch stays off)
        return conn

    @staticmethod
    def _unlooked(checks: Sequence[Check], nb: int) -> BatchResult | None:
        """The answer when the ``nb`` block keys were not looked up and there is no check;
        None when there are checks to send."""
        return BatchResult([], [None] * nb) if not checks else None

