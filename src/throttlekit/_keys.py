"""Storage keys of bounded size, whatever a client sends.

A rule keyed on a form field or a header stores what the client wrote there: without a
bound, 2,000 requests carrying 60 KB user names would store 120 MB of keys. Keys longer
than :data:`MAX_KEY_LENGTH` characters are replaced by ``"#sha256:" + <64 hex digits>``
(a SHA-256 of the UTF-8 key) before they reach any backend, so every key costs at most a
few hundred bytes.

Keys that are not valid Unicode text (a lone surrogate, which a JSON body can carry as
``"\\ud800"``) cannot be encoded as UTF-8 for a store: they are hashed the same way (the
digest of their ``surrogatepass`` encoding), so a client's key can never make the store
call fail. ASCII keys, the common case, are told apart by ``str.isascii()`` alone.

>>> bound_key("203.0.113.9")
'203.0.113.9'
>>> k = bound_key("x" * 201); k.startswith(HASH_PREFIX), len(k)
(True, 72)
>>> rule_key("#client:203.0.113.9").startswith(HASH_PREFIX)   # reserved: hashed
True
>>> rule_key("\\ud800").startswith(HASH_PREFIX), rule_key("café")       # not encodable: hashed
(True, 'café')
"""

from __future__ import annotations

import hashlib

__all__ = [
    "HASH_PREFIX", "MAX_KEY_LENGTH", "UNREADABLE_PREFIX", "admin_rule_key", "bound_key",
    "encodable", "hash_key", "rule_key",
]

#: Keys longer than this (in characters) are stored as their hash.
MAX_KEY_LENGTH = 200
#: The prefix of a hashed key.
HASH_PREFIX = "#sha256:"
#: The bucket of a request whose rule key cannot be read (``on_unreadable="client"``): its
#: client's, in a namespace no client-chosen key reaches (those starting with ``#`` are hashed).
UNREADABLE_PREFIX = "#client:"


def hash_key(key: str) -> str:
    """``"#sha256:" + sha256(key as UTF-8).hexdigest()`` (lone surrogates encoded as
    ``surrogatepass`` does, so every ``str`` has a digest)."""
    data = key.encode("utf-8", "surrogatepass")
    return HASH_PREFIX + hashlib.sha256(data).hexdigest()


def encodable(key: str) -> bool:
    """Whether ``key`` encodes as UTF-8 (no lone surrogates): what every store needs."""
    if key.isascii():
        return True
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def bound_key(key: str) -> str:
    """``key``, or its hash when it is longer than :data:`MAX_KEY_LENGTH` or not valid
    UTF-8 text: what ``Limiter.hit``/``test``/``reset`` and the admin commands store and
    look up."""
    if len(key) <= MAX_KEY_LENGTH and (key.isascii() or encodable(key)):
        return key
    return hash_key(key)


def rule_key(disc: str) -> str:
    """A rule's discriminator as a request produced it, made safe to store: hashed when
    longer than :data:`MAX_KEY_LENGTH`, when it is not valid UTF-8 text (a lone
    surrogate), or when it starts with ``#`` (the prefix of throttlekit's own
    discriminators: ``#sha256:...``, ``#client:...``), so that no client-chosen value can
    land in one of their buckets or fail the store call."""
    if len(disc) <= MAX_KEY_LENGTH and disc[:1] != "#" and (disc.isascii() or encodable(disc)):
        return disc
    return hash_key(disc)


def admin_rule_key(key: str) -> str:
    """A rule discriminator as an operator names it (``reset_rules``, ``unblock``,
    ``throttlekit inspect``): as the rules stored it (``rule_key``: long, ``#``-prefixed or
    non-UTF-8 values hashed), except throttlekit's own ``#sha256:...`` and ``#client:...``
    discriminators (as logs, verdicts and ``inspect`` show them), which are taken as they
    are (docs/rules.md)."""
    if key.startswith((HASH_PREFIX, UNREADABLE_PREFIX)):
        return bound_key(key)
    return rule_key(key)
