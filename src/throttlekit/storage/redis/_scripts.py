"""The Lua scripts (``lua/*.lua``, loaded once) and the arguments of a single-check script.

A script's ``--#include NAME`` lines are replaced by ``lua/_NAME.lua``: the parts several
scripts share (the clock, the exact arithmetic, each strategy's decision) live in one file.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

from ..._algorithms import Algorithm

__all__ = ["INF", "KIND", "SAFE", "SMALL", "One", "Script", "lua", "script", "text"]

INF = float("inf")
SAFE = 1 << 53  # cost is capped below it: Lua numbers are doubles
KIND = {"fixed_window": "fw", "sliding_window": "sw", "token_bucket": "tb", "sliding_log": "sl"}
SMALL = tuple(str(i).encode() for i in range(64))  # pre-encoded costs


class Script:
    __slots__ = ("sha", "source")

    def __init__(self, name: str) -> None:
        self.source = lua(name)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


def lua(name: str, seen: set[str] | None = None) -> str:
    """A script's source, with each ``--#include NAME`` line replaced by ``lua/_NAME.lua``
    (recursively; a part already included in this script is not included again)."""
    if seen is None:
        seen = set()
    source = resources.files(__package__).joinpath(f"lua/{name}.lua").read_text("utf-8")
    lines = []
    for line in source.splitlines(keepends=True):
        if line.startswith("--#include "):
            part = "_" + line.split()[1]
            if part in seen:
                continue
            seen.add(part)
            line = lua(part, seen)
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

    __slots__ = ("encoding", "head", "log", "log_b", "packed", "script", "sha", "tail")

    def __init__(
        self, script: Script, alg: Algorithm, tail: list[Any], encoding: tuple[str, str] | None
    ) -> None:
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
