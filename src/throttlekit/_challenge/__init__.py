"""Challenges for unknown clients: the pure, framework-free part.

``passes.py`` signs and verifies passes (stateless cookie values: HMAC-SHA256, bound to
the client's network, expiring); ``work.py`` issues proof-of-work challenges and turns a
solved one into a pass; ``page.py`` writes the answers: the cookie round trip (a 303
setting the pass) and the page a browser solves the work on.
"""

from __future__ import annotations

from .page import (
    COOKIE_NAME,
    Answer,
    pass_cookie,
    pass_redirect,
    read_answer,
    safe_path,
    work_page,
)
from .passes import KeyRing, Networks, Pass, PassSigner
from .work import Work, WorkChallenge, meets, solve

__all__ = [
    "COOKIE_NAME",
    "Answer",
    "KeyRing",
    "Networks",
    "Pass",
    "PassSigner",
    "Work",
    "WorkChallenge",
    "meets",
    "pass_cookie",
    "pass_redirect",
    "read_answer",
    "safe_path",
    "solve",
    "work_page",
]
