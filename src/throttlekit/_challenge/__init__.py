"""Challenges for unknown clients: the pure, framework-free part.

``passes.py`` signs and verifies passes (stateless cookie values: HMAC-SHA256, bound to
the client's network, expiring); ``work.py`` issues proof-of-work challenges and turns a
solved one into a pass.
"""

from __future__ import annotations

from .passes import KeyRing, Networks, Pass, PassSigner
from .work import Work, WorkChallenge, meets, solve

__all__ = [
    "KeyRing",
    "Networks",
    "Pass",
    "PassSigner",
    "Work",
    "WorkChallenge",
    "meets",
    "solve",
]
