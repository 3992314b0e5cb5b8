"""The Lua scripts (``lua/*.lua``, loaded once), the arguments of a single-check script, and
the scripts' answers read as Decisions and Blocks.

A script's ``--#include NAME`` lines are replaced by the statements of ``lua/_NAME.lua``: the
parts several scripts share (the clock, the exact arithmetic, each strategy's decision and
charge) live in one file each, and cost nothing at run time.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any, Final

from ..._algorithms import Algorithm
from ..._decision import Decision
from ..base import BatchResult, Block, Check

__all__ = [
    "INF", "KIND", "SAFE", "SMALL", "Fixed", "One", "Script", "batch_result", "block_list",
    "bulk", "decision", "fixed_decision", "lean_decision", "lua", "named", "script",
    "script_kind", "text",
]

INF = float("inf")
SAFE = 1 << 53  # cost is capped below it: Lua numbers are doubles
KIND = {"fixed_window": "fw", "sliding_window": "sw", "token_bucket": "tb", "sliding_log": "sl"}
_GCRA_MAX = 1 << 50  # capacity x interval below it: the bucket's end stays below 2^53
SMALL = tuple(str(i).encode() for i in range(64))  # pre-encoded costs


def script_kind(alg: Algorithm) -> str:
    """The scripts' name of ``alg``'s strategy; ``"tg"`` for a token bucket whose emission
    interval (period / limit) is a whole number of microseconds, kept as one number (see
    ``lua/_gcra.lua``: cheaper than the general bucket's three), unless its state is read
    again under another limit (``Algorithm.rerated``: GCRA's one number means nothing
    without its interval)."""
    if alg.name == "token_bucket" and not alg.rerated:
        p, limit = alg.period_us, alg.limit
        if p % limit == 0 and alg.capacity * (p // limit) < _GCRA_MAX:
            return "tg"
    return KIND[alg.name]


class Script:
    __slots__ = ("sha", "source")

    def __init__(self, name: str) -> None:
        self.source = lua(name)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


_INCLUDE = re.compile(r"--#include (\w+)((?: \w+=\w+)*)\s*$")


def lua(name: str, args: dict[str, str] | None = None) -> str:
    """A script's source, with each ``--#include NAME a=x b=y`` line replaced by the text of
    ``lua/_NAME.lua`` in which each of its parameters (its ``--#params a b`` line) is renamed
    to the name given for it. Parts are statements pasted in place, not functions: a script
    runs on every request, and defining or calling a function per run costs Redis CPU."""
    source = resources.files(__package__).joinpath(f"lua/{name}.lua").read_text("utf-8")
    if source.startswith("--#params"):
        head, _, source = source.partition("\n")
        params = set(head.split()[1:])
    else:
        params = set()
    if args:
        if not args.keys() <= params:
            raise ValueError(f"lua/{name}.lua has no parameter {sorted(args.keys() - params)}")
        names = "|".join(args)
        source = re.sub(rf"\b({names})\b", lambda m: args[m[1]], source)
    lines = []
    for line in source.splitlines(keepends=True):
        m = _INCLUDE.match(line)
        if m:
            line = lua("_" + m[1], dict(a.split("=") for a in m[2].split()))
        elif line.startswith("--#"):
            raise ValueError(f"lua/{name}.lua: unknown directive {line.strip()!r}")
        lines.append(line)
    return "".join(lines)


_scripts: dict[str, Script] = {}


def script(name: str) -> Script:
    s = _scripts.get(name)
    if s is None:
        s = _scripts[name] = Script(name)
    return s


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class One:
    """A strategy's single-check script bound to one algorithm: the arguments that never
    change (after the key, now and cost), encoded once; with ``encoding`` (the direct path
    on our own client), also the packed command's head and tail."""

    __slots__ = ("alg", "encoding", "head", "lean", "log", "log_b", "packed", "script", "sha",
                 "tail")

    def __init__(
        self, script: Script, alg: Algorithm, tail: list[Any], encoding: tuple[str, str] | None,
        lean: bool = False,
    ) -> None:
        self.alg = alg
        #: the script answers the state it found (see :func:`lean_decision`), not a Decision
        self.lean = lean
        self.script = script
        self.sha = script.sha.encode()
        self.log = f":l:{alg.id}" if alg.name == "sliding_log" else None
        self.tail = tuple(tail)
        self.encoding = encoding
        self.head: bytes | None = None
        self.packed: bytes | None = None
        self.log_b = b""
        if encoding is not None:
            enc = [t if isinstance(t, bytes) else t.encode(*encoding) for t in tail]
            self.packed = b"".join(b"$%d\r\n%b\r\n" % (len(t), t) for t in enc)
            nkeys = 1 if self.log is None else 2
            self.head = b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%b\r\n$1\r\n%d\r\n" % (
                5 + nkeys + len(enc), len(self.sha), self.sha, nkeys
            )
            if self.log is not None:
                self.log_b = self.log.encode(*encoding)


def bulk(value: bytes) -> bytes:
    """``value`` as a RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


class Fixed:
    """``fixed_window.lua`` bound to one fixed-window algorithm: its arguments that never
    change, encoded once, and the packed command's head (see ``RedisStorage._fixed``);
    ``due``: when (microseconds) its id is to be registered again (see ``register.lua``)."""

    __slots__ = ("alg", "due", "heads", "id", "limit", "limit_b", "p", "script", "sha",
                 "suffix", "suffix_b")

    def __init__(self, alg: Algorithm, encoding: tuple[str, str]) -> None:
        self.alg = alg
        self.script = script("fixed_window")
        self.sha = self.script.sha.encode()
        self.p = alg.period_us
        self.limit = alg.limit
        self.limit_b = str(alg.limit).encode()
        self.id = alg.id
        self.suffix = f":w:{alg.id}"  # the window's string key: the family's name + this
        self.suffix_b = self.suffix.encode(*encoding)
        self.due = 0
        #: (number of keys, of arguments after the sha) -> the packed command's head
        self.heads: dict[tuple[int, int], bytes] = {}

    def head(self, nkeys: int, nargs: int) -> bytes:
        """The head of a packed ``EVALSHA sha nkeys ...`` with ``nargs`` arguments after
        the sha (kept for the next call)."""
        h = self.heads[nkeys, nargs] = b"*%d\r\n$7\r\nEVALSHA\r\n%b%b" % (
            nargs + 2, bulk(self.sha), bulk(b"%d" % nkeys))
        return h


#: what ``fixed_window.lua`` adds to a count of the next window (2^34)
NEXT: Final = 1 << 34


def fixed_decision(alg: Algorithm, r: int, cost: int, left: int, charged: bool) -> Decision:
    """The Decision of ``fixed_window.lua``'s answer ``r`` (see the script), ``left`` the
    microseconds to the window's end: the arithmetic of :class:`FixedWindow`, on the count
    (``NEXT`` added: the next window's, as at its start, ``left`` a period later)."""
    limit = alg.limit
    if charged:
        if r > 0:
            if r < NEXT:
                return alg.decide(True, limit - r, left, 0.0)
            return alg.decide(True, limit - r + NEXT, left + alg.period_us, 0.0)
        count = -r
    else:
        count = r
    if count >= NEXT:
        count -= NEXT
        left += alg.period_us
    if not charged and count + cost <= limit:
        return alg.decide(True, limit - count - cost, left if count + cost else 0, 0.0)
    return alg.decide(False, limit - count if count < limit else 0, left if count else 0,
                      INF if cost > limit else left / 1e6)


# -- the scripts' answers ---------------------------------------------------------------------


def lean_decision(alg: Algorithm, raw: Any, now: int, cost: int) -> Decision:
    """The Decision of a check at ``now`` whose script (``*_at.lua``) answered the state it
    found, ``"a b c"`` or nil: the algorithm's own arithmetic on that state, which the
    script mirrors (a token bucket's ``last W R``, a sliding window's ``window cur prev``)."""
    state = None
    if raw is not None:
        parts = raw.split()
        if len(parts) == 1:  # a token bucket kept as GCRA: the time it is full again
            state = int(parts[0]) << 96  # a debt of 0 then is limit x (that time - now) now
        elif alg.name == "token_bucket":
            if script_kind(alg) != "tg":  # (a "tg" one's state of another shape: none)
                a, b, c = parts
                state = int(a) << 96 | (int(b) * alg.period_us + int(c))
        else:
            a, b, c = parts
            state = (int(a) << 32 | int(b)) << 32 | int(c)
    return alg.hit(state, now, cost)[1]


def decision(alg: Algorithm, raw: Any) -> Decision:
    """The answer of a single-check script: ``"allowed remaining reset_us retry_us"``."""
    allowed, rem, reset, retry = raw.split()
    r = int(retry)
    return alg.decide(allowed == b"1" or allowed == "1", int(rem), int(reset),
                      INF if r < 0 else r / 1e6)


def batch_result(checks: Sequence[Check], nb: int, raw: Sequence[Any]) -> BatchResult:
    """The answer of the batch script for ``checks`` and ``nb`` block keys."""
    decisions: list[Decision] = []
    for i, c in enumerate(checks):
        allowed, rem, reset, retry = raw[4 * i : 4 * i + 4]
        decisions.append(
            c.algorithm.decide(allowed == 1, rem, reset, INF if retry < 0 else retry / 1e6)
        )
    blocked: list[Block | None] = []
    o = 4 * len(checks)
    for j in range(nb):
        exp = raw[o + 2 * j] if o + 2 * j < len(raw) else None
        if exp is None:
            blocked.append(None)
        else:
            e = text(exp)
            blocked.append(
                Block("", INF if e == "inf" else int(e) / 1e6, text(raw[o + 2 * j + 1]))
            )
    return BatchResult(decisions, blocked)


def named(result: BatchResult, block_keys: Sequence[str]) -> BatchResult:
    """``result`` with each found block named by its block key."""
    blocked = result.blocked
    for j, b in enumerate(blocked):
        if b is not None:
            blocked[j] = b._replace(key=block_keys[j])
    return result


def block_list(raw: Sequence[Any]) -> list[Block]:
    """The answer of ``blocks.lua``'s ``list``: key, expiry, reason, for each live entry."""
    out = []
    for i in range(0, len(raw), 3):
        e = text(raw[i + 1])
        out.append(Block(text(raw[i]), INF if e == "inf" else int(e) / 1e6, text(raw[i + 2])))
    return out
