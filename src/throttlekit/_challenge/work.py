"""Proof-of-work challenges: a browser spends a little CPU once, then holds a pass.

A challenge is 87 bytes, base64url without padding (116 characters)::

    version     1 byte    1
    issued      8 bytes   unsigned, seconds since the epoch
    expires     8 bytes   unsigned, seconds since the epoch
    difficulty  1 byte    leading zero bits wanted
    network    17 bytes   as in a pass
    nonce      20 bytes   random
    mac        32 bytes   HMAC-SHA256 of all of the above, with the work key

A solution is a counter, written in decimal ASCII without leading zeros (at most 16
digits), such that ``SHA-256(challenge text + counter text)`` starts with ``difficulty``
zero bits. Nothing is stored: a solution stays good until its challenge expires, and every
redemption of it yields a pass with the same id (derived from the nonce), so replaying one
solved challenge only ever adds up to one pass's rate limit.

>>> from throttlekit.testing import FakeClock
>>> work = WorkChallenge(PassSigner("an operator secret, 16+ bytes", clock=FakeClock()),
...                      difficulty=4)
>>> challenge = work.issue("203.0.113.9")
>>> counter = solve(challenge, 4)
>>> work.verify(challenge, str(counter), "203.0.113.77").difficulty
4
"""

from __future__ import annotations

import hashlib
import math
import secrets
import struct
from dataclasses import dataclass

from .._errors import ConfigError
from .passes import VERSION, Networks, PassSigner, check_ttl, lifetime

__all__ = ["MAX_DIFFICULTY", "Work", "WorkChallenge", "meets", "solve"]

#: 2**32 hashes on average: far beyond what a page should ask of a browser
MAX_DIFFICULTY = 32
MAX_COUNTER_DIGITS = 16  # below 2**53, so JavaScript counts it exactly

_WORK = struct.Struct(">BQQB17s20s")


def meets(challenge: str, counter: str, difficulty: int) -> bool:
    """Whether ``SHA-256(challenge + counter)`` starts with ``difficulty`` zero bits."""
    digest = hashlib.sha256((challenge + counter).encode("ascii")).digest()
    return int.from_bytes(digest, "big") >> (256 - difficulty) == 0


def solve(challenge: str, difficulty: int, *, limit: int = 1 << 32) -> int | None:
    """The first counter solving ``challenge`` at ``difficulty``, trying at most ``limit``
    (what the browser page does; for tests and non-browser clients)."""
    for counter in range(limit):
        if meets(challenge, str(counter), difficulty):
            return counter
    return None


def _counter_text(solution: object) -> str | None:
    """A solution as the canonical decimal text that was hashed, or None."""
    if isinstance(solution, int) and not isinstance(solution, bool):
        text = str(solution) if solution >= 0 else ""
    elif isinstance(solution, str):
        text = solution
    else:
        return None
    if (
        not 0 < len(text) <= MAX_COUNTER_DIGITS
        or not (text.isascii() and text.isdigit())
        or (text[0] == "0" and len(text) > 1)
    ):
        return None
    return text


@dataclass(frozen=True, slots=True)
class Work:
    """A solved challenge: its ``nonce`` (hex), ``difficulty``, the ``network`` it is
    bound to and when it ``expires`` (epoch seconds)."""

    nonce: str
    difficulty: int
    network: str
    expires: int


class WorkChallenge:
    """Issues proof-of-work challenges and turns their solutions into passes.

    Args:
        signer: signs the passes; the challenges are signed with a key derived from its
            keys, and bound to the network its prefixes say.
        difficulty: leading zero bits a solution's hash must have (1 to 32; 16 is about
            65,000 hashes, well under a second in a browser).
        ttl: seconds a challenge can be solved and redeemed in.

    Raises:
        ConfigError: ``difficulty`` or ``ttl`` out of range.

    Thread-safe; ``verify`` and ``redeem`` never raise.
    """

    __slots__ = ("difficulty", "signer", "ttl")

    def __init__(self, signer: PassSigner, *, difficulty: int = 16, ttl: float = 300.0) -> None:
        if (
            isinstance(difficulty, bool)
            or not isinstance(difficulty, int)
            or not 1 <= difficulty <= MAX_DIFFICULTY
        ):
            raise ConfigError(
                f"difficulty must be an integer in 1..{MAX_DIFFICULTY}, got {difficulty!r}"
            )
        self.difficulty = difficulty
        self.ttl = check_ttl("ttl", ttl)
        self.signer = signer

    def __repr__(self) -> str:
        return f"WorkChallenge(difficulty={self.difficulty}, ttl={self.ttl})"

    def issue(self, client_ip: str) -> str:
        """A new challenge for the network of ``client_ip``.

        Raises:
            ValueError: ``client_ip`` is not an IP address.
        """
        signer = self.signer
        network = signer.networks.pack(client_ip)
        if network is None:
            raise ValueError(f"not an IP address: {client_ip!r}")
        issued = math.floor(signer.clock())
        body = _WORK.pack(
            VERSION, issued, issued + math.ceil(self.ttl), self.difficulty, network,
            secrets.token_bytes(20),
        )
        return signer.keys.seal(b"work", body)

    def verify(self, challenge: object, solution: object, client_ip: object) -> Work | None:
        """The challenge if ``solution`` (a counter, as text or int) solves it and it is
        good for ``client_ip`` now, else None: malformed, not signed by one of the keys,
        expired, issued in the future, for another network, easier than ``difficulty``
        (which was raised since), or a wrong solution."""
        if not isinstance(challenge, str):
            return None
        signer = self.signer
        body = signer.keys.open(b"work", challenge, _WORK.size)
        counter = _counter_text(solution)
        if body is None or counter is None:
            return None
        version, issued, expires, difficulty, network, nonce = _WORK.unpack(body)
        if version != VERSION or difficulty < self.difficulty:
            return None
        end = lifetime(issued, expires, self.ttl, signer.clock())
        if end is None or network != signer.networks.pack(client_ip):
            return None
        if not meets(challenge, counter, difficulty):
            return None
        return Work(nonce.hex(), difficulty, Networks.describe(network), end)

    def redeem(self, challenge: object, solution: object, client_ip: object) -> str | None:
        """A pass (a cookie value) for a solved challenge, or None as ``verify`` says.
        The pass id comes from the challenge's nonce: the same solution redeemed again
        yields a pass with the same id."""
        work = self.verify(challenge, solution, client_ip)
        if work is None or not isinstance(client_ip, str):
            return None
        return self.signer.issue(client_ip, seed=bytes.fromhex(work.nonce))
