"""Storage keys of bounded size, whatever a client sends.

A rule keyed on a form field or a header stores what the client wrote there: without a
bound, 2,000 requests carrying 60 KB user names would store 120 MB of keys. Keys longer
than :data:`MAX_KEY_LENGTH` characters are replaced by ``"#sha256:" + <64 hex digits>``
(a SHA-256 of the UTF-8 key) before they reach any backend, so every key costs at most a
few hundred bytes.

>>> bound_key("203.0.113.9")
'203.0.113.9'
>>> k = bound_key("x" * 201); k.startswith(HASH_PREFIX), len(k)
(True, 72)
>>> rule_key("#client:203.0.113.9").startswith(HASH_PREFIX)   # reserved: hashed
True
"""

from __future__ import annotations

import hashlib

__all__ = ["HASH_PREFIX", "MAX_KEY_LENGTH", "admin_rule_key", "bound_key", "hash_key", "rule_key"]

#: Keys longer than this (in characters) are stored as their hash.
MAX_KEY_LENGTH = 200
#: The prefix of a hashed key.
HASH_PREFIX = "#sha256:"


def hash_key(key: str) -> str:
    """``"#sha256:" + sha256(key as UTF-8).hexdigest()``."""
    data = key.encode("utf-8", "surrogatepass")
    return HASH_PREFIX + hashlib.sha256(data).hexdigest()


def bound_key(key: str) -> str:
    """``key``, or its hash when it is longer than :data:`MAX_KEY_LENGTH`: what
    ``Limiter.hit``/``test``/``reset`` and the admin commands store and look up."""
    return key if len(key) <= MAX_KEY_LENGTH else hash_key(key)


def rule_key(disc: str) -> str:
    """A rule's discriminator as a request produced it, made safe to store: hashed when
    longer than :data:`MAX_KEY_LENGTH` or when it starts with ``#`` (the prefix of
    throttlekit's own discriminators: ``#sha256:...``, ``#client:...``), so that no
    client-chosen value can land in one of their buckets."""
    if len(disc) <= MAX_KEY_LENGTH and disc[:1] != "#":
        return disc
    return hash_key(disc)


def admin_rule_key(key: str) -> str:
    """A rule discriminator as an operator names it (``reset_rules``, ``unblock``,
    ``throttlekit inspect``): as the rules stored it (``rule_key``), except throttlekit's
    own ``#...`` discriminators (``#client:<ip>``, ``#sha256:<hex>``, as logs, verdicts
    and ``inspect`` show them), which are taken as they are."""
    return bound_key(key) if key[:1] == "#" else rule_key(key)
