"""Challenge passes: stateless, HMAC-signed cookie values bound to a network, expiring.

A pass is 81 bytes, base64url without padding (108 characters, all cookie-safe)::

    version  1 byte    1
    issued   8 bytes   unsigned, seconds since the epoch
    expires  8 bytes   unsigned, seconds since the epoch
    network 17 bytes   prefix length in the 128-bit space, then the masked address
                       (IPv4 as ::ffff:a.b.c.d, so a /24 is 120)
    id      15 bytes   random, or derived from a solved challenge's nonce
    mac     32 bytes   HMAC-SHA256 of all of the above, with the pass key

The pass key is not the operator's key itself but ``HMAC(key, "throttlekit pass v1")``,
and proof-of-work challenges sign with another key derived the same way, so a token of one
kind is never accepted as the other.

>>> from throttlekit.testing import FakeClock
>>> signer = PassSigner("an operator secret, 16+ bytes", clock=FakeClock())
>>> value = signer.issue("203.0.113.9")
>>> signer.verify(value, "203.0.113.200").network
'203.0.113.0/24'
>>> signer.verify(value, "198.51.100.1") is None
True
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import secrets
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from .._clientip import normalize_ip
from .._errors import ConfigError

__all__ = ["MAX_SKEW", "MIN_KEY_BYTES", "KeyRing", "Networks", "Pass", "PassSigner"]

logger = logging.getLogger("throttlekit")

#: seconds a token may claim to be issued ahead of this process's clock (clocks of
#: several hosts behind one load balancer disagree a little)
MAX_SKEW = 30
MIN_KEY_BYTES = 16
#: the longest lifetime of a pass or challenge: 400 days, the most a browser keeps a cookie
MAX_TTL = 400 * 86400.0
VERSION = 1
PURPOSES = (b"pass", b"work")

_MAC_BYTES = 32
_PASS = struct.Struct(">BQQ17s15s")
_V4_MAPPED = 0xFFFF << 32
_ALL_BITS = (1 << 128) - 1
#: the key of ``key=None``: one per process, so every signer in a process agrees
_PROCESS_KEY = secrets.token_bytes(32)


def _master_keys(key: object) -> list[bytes]:
    """The operator's keys as bytes, the signing key first; ConfigError for bad ones."""
    if key is None:
        logger.warning(
            "no challenge key given, so passes are signed with a random "
            "per-process key: they will not survive a restart or span workers "
            "(give a key of %d or more random bytes)",
            MIN_KEY_BYTES,
        )
        return [_PROCESS_KEY]
    given = [key] if isinstance(key, (str, bytes)) else key
    if not isinstance(given, (list, tuple)) or not given:
        raise ConfigError(
            f"key must be bytes, a str or a non-empty list of them, got {type(key).__name__}"
        )
    keys = []
    for n, item in enumerate(given, 1):
        if not isinstance(item, (str, bytes)):
            raise ConfigError(f"key #{n} must be bytes or a str, got {type(item).__name__}")
        raw = item.encode() if isinstance(item, str) else item
        if len(raw) < MIN_KEY_BYTES:
            # the length only: a key never goes into a message
            raise ConfigError(
                f"key #{n} is {len(raw)} bytes; a key needs at least {MIN_KEY_BYTES} "
                "(32 random bytes are best)"
            )
        keys.append(raw)
    return keys


def check_ttl(name: str, ttl: object) -> float:
    """``ttl`` if it is a number of seconds in 1..400 days, else ConfigError."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 1 <= ttl <= MAX_TTL:
        raise ConfigError(f"{name} must be a number of seconds in 1..{MAX_TTL:.0f}, got {ttl!r}")
    return float(ttl)


def _check_prefix(name: str, prefix: object, bits: int) -> int:
    if isinstance(prefix, bool) or not isinstance(prefix, int) or not 1 <= prefix <= bits:
        raise ConfigError(f"{name} must be an integer in 1..{bits}, got {prefix!r}")
    return prefix


class KeyRing:
    """The operator's keys, one derived key per purpose: sign with the first key, verify
    with any (list the new key first to rotate, drop the old one after a pass's ttl).

    ``seal`` and ``open`` are the token codec: ``body + HMAC-SHA256(body)`` in base64url.
    Bodies are sized in multiples of 3 bytes, so the text has no padding and one text only
    decodes to a token (``open`` also refuses any other spelling of the same bytes).
    """

    __slots__ = ("_keys",)

    def __init__(self, key: bytes | str | Sequence[bytes | str] | None) -> None:
        masters = _master_keys(key)
        self._keys = {
            purpose: tuple(
                hmac.digest(master, b"throttlekit " + purpose + b" v1", "sha256")
                for master in masters
            )
            for purpose in PURPOSES
        }

    def seal(self, purpose: bytes, body: bytes) -> str:
        """``body`` and its MAC under the signing key of ``purpose``, as base64url."""
        mac = hmac.digest(self._keys[purpose][0], body, "sha256")
        return base64.urlsafe_b64encode(body + mac).decode("ascii")

    def open(self, purpose: bytes, token: object, size: int) -> bytes | None:
        """The body of a token of ``size`` body bytes sealed for ``purpose`` under any key,
        or None (wrong length or spelling, bad MAC). Never raises."""
        if not isinstance(token, str) or len(token) != (size + _MAC_BYTES) // 3 * 4:
            return None
        try:
            raw = base64.urlsafe_b64decode(token)
        except ValueError:  # binascii.Error, or a str that is not ASCII
            return None
        # b64decode skips or translates characters it should refuse ('+', '/', '=')
        if len(raw) != size + _MAC_BYTES or base64.urlsafe_b64encode(raw) != token.encode():
            return None
        body, mac = raw[:size], raw[size:]
        for key in self._keys[purpose]:
            if hmac.compare_digest(mac, hmac.digest(key, body, "sha256")):
                return body
        return None


class Networks:
    """The network a client address belongs to: its /``ipv4_prefix`` or /``ipv6_prefix``,
    packed in 17 bytes (prefix length in the 128-bit space, masked address)."""

    __slots__ = ("ipv4_prefix", "ipv6_prefix")

    def __init__(self, ipv4_prefix: int = 24, ipv6_prefix: int = 48) -> None:
        self.ipv4_prefix = _check_prefix("ipv4_prefix", ipv4_prefix, 32)
        self.ipv6_prefix = _check_prefix("ipv6_prefix", ipv6_prefix, 128)

    def pack(self, client_ip: object) -> bytes | None:
        """The packed network of ``client_ip`` (any form ``normalize_ip`` reads; embedded
        IPv4 forms count as their IPv4 address), or None when it is not an address."""
        ip = normalize_ip(client_ip)
        if ip is None:
            return None
        if ":" in ip:
            value = int.from_bytes(socket.inet_pton(socket.AF_INET6, ip), "big")
            prefix = self.ipv6_prefix
        else:
            value = _V4_MAPPED | int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
            prefix = 96 + self.ipv4_prefix
        mask = _ALL_BITS ^ (_ALL_BITS >> prefix)
        return bytes((prefix,)) + (value & mask).to_bytes(16, "big")

    @staticmethod
    def describe(packed: bytes) -> str:
        """A packed network as CIDR text: ``"203.0.113.0/24"``, ``"2001:db8:1::/48"``."""
        prefix, value = packed[0], int.from_bytes(packed[1:17], "big")
        if prefix >= 96 and value >> 32 == 0xFFFF:
            return f"{IPv4Address(value & 0xFFFFFFFF)}/{prefix - 96}"
        return f"{IPv6Address(value)}/{prefix}"


def lifetime(issued: int, expires: int, ttl: float, now: float) -> int | None:
    """When a token issued at ``issued`` and signed to expire at ``expires`` stops being
    good under today's ``ttl``, or None if it is not good ``now`` (expired, or issued
    more than :data:`MAX_SKEW` seconds in the future)."""
    if issued > now + MAX_SKEW:
        return None
    # a ttl lowered since the token was signed applies to it too
    end = min(expires, issued + math.ceil(ttl))
    return end if now < end else None


@dataclass(frozen=True, slots=True)
class Pass:
    """A valid pass: its ``id`` (hex; key a rate limit on it so that one pass cannot
    carry a flood), the ``network`` it is bound to and when it ``expires`` (epoch
    seconds)."""

    id: str
    network: str
    expires: int


class PassSigner:
    """Issues and verifies passes.

    Args:
        key: the operator's secret (bytes, or a str used as its UTF-8 bytes; 16 bytes at
            least), or a list of them to rotate (sign with the first, verify with any).
            None: a random per-process key, with a warning on the ``"throttlekit"``
            logger, since passes then do not survive a restart or span workers.
        ttl: seconds a pass lasts (1 to 400 days).
        ipv4_prefix, ipv6_prefix: the network a pass is bound to (/24, /48 by default):
            it is good from any address of that network, and from no other.
        clock: seconds since the epoch.

    Raises:
        ConfigError: a key too short or of the wrong type, ``ttl`` or a prefix out of range.

    Thread-safe; ``verify`` never raises.
    """

    __slots__ = ("clock", "keys", "networks", "ttl")

    def __init__(
        self,
        key: bytes | str | Sequence[bytes | str] | None,
        *,
        ttl: float = 3600.0,
        ipv4_prefix: int = 24,
        ipv6_prefix: int = 48,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl = check_ttl("ttl", ttl)
        self.networks = Networks(ipv4_prefix, ipv6_prefix)
        self.clock = clock
        self.keys = KeyRing(key)

    def __repr__(self) -> str:
        n = self.networks
        return (
            f"PassSigner(ttl={self.ttl}, ipv4_prefix={n.ipv4_prefix}, "
            f"ipv6_prefix={n.ipv6_prefix})"
        )

    def issue(self, client_ip: str, *, seed: bytes | None = None) -> str:
        """A new pass for the network of ``client_ip``, as a cookie value.

        ``seed``: derive the pass id from these bytes rather than at random (a solved
        challenge always yields the same id, so replaying it shares one rate limit).

        Raises:
            ValueError: ``client_ip`` is not an IP address.
        """
        network = self.networks.pack(client_ip)
        if network is None:
            raise ValueError(f"not an IP address: {client_ip!r}")
        if seed is None:
            pass_id = secrets.token_bytes(15)
        else:
            pass_id = hashlib.sha256(b"throttlekit pass id\0" + seed).digest()[:15]
        issued = math.floor(self.clock())
        body = _PASS.pack(VERSION, issued, issued + math.ceil(self.ttl), network, pass_id)
        return self.keys.seal(b"pass", body)

    def verify(self, value: object, client_ip: object) -> Pass | None:
        """The pass in a cookie ``value`` if it is good for ``client_ip`` now, else None:
        malformed, not signed by one of the keys, expired, issued in the future or for
        another network."""
        body = self.keys.open(b"pass", value, _PASS.size)
        if body is None:
            return None
        version, issued, expires, network, pass_id = _PASS.unpack(body)
        if version != VERSION:
            return None
        end = lifetime(issued, expires, self.ttl, self.clock())
        if end is None or network != self.networks.pack(client_ip):
            return None
        return Pass(pass_id.hex(), Networks.describe(network), end)
