"""How memcached holds throttlekit's state: key names, expiries and encoded states."""

from __future__ import annotations

import re
import time
from base64 import urlsafe_b64encode
from hashlib import blake2b
from typing import Any

from ..._algorithms import Algorithm, Log, TokenBucket, log_entries, new_log

__all__ = ["decode_state", "encode_key", "encode_state", "expire"]

MAX_RELATIVE = 30 * 24 * 3600  # memcached reads larger expiries as unix timestamps
RAW_MAX = 128  # prefix (<= 64) + markers and numbers (<= 45) + 1 + 128 < 250 bytes
_SAFE = re.compile(rf"[!-~]{{1,{RAW_MAX}}}")  # printable ASCII, no space


def encode_key(text: str) -> str:
    """A memcached-safe, injective name for ``text``: as is when safe and short, else a digest."""
    if _SAFE.fullmatch(text):
        return "=" + text
    digest = blake2b(text.encode("utf-8", "surrogatepass"), digest_size=18).digest()
    return "#" + urlsafe_b64encode(digest).decode("ascii")


def expire(ttl_us: int) -> int:
    """A memcached exptime for state needed ``ttl_us`` more microseconds."""
    # +1: memcached's clock ticks once a second, so an item may expire up to 1 s early.
    seconds = -(-ttl_us // 1_000_000) + 1
    if seconds > MAX_RELATIVE:
        return int(time.time()) + seconds
    return seconds


def _encode_log(log: Log) -> bytes:
    # Deltas between entries, ",".joined; ":cost" only when the cost is not 1.
    parts = []
    last = 0
    for t, c in log_entries(log):
        parts.append(str(t - last) if c == 1 else f"{t - last}:{c}")
        last = t
    return ",".join(parts).encode("ascii")


def _decode_log(value: bytes) -> Log:
    pairs = []
    t = 0
    for part in value.split(b","):
        if part:
            delta, _, cost = part.partition(b":")
            t += int(delta)
            pairs.append((t, int(cost) if cost else 1))
    return new_log(pairs)


def decode_state(alg: Algorithm, value: bytes | None) -> Any:
    """The state of ``alg`` (a token bucket's integer, a sliding log) held as ``value``."""
    if value is None:
        return None
    if isinstance(alg, TokenBucket):
        return int(value)
    return _decode_log(value)


def encode_state(state: Any) -> bytes:
    if isinstance(state, int):
        return str(state).encode("ascii")
    return _encode_log(state)
