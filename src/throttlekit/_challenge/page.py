"""The answers of a challenge: the cookie round trip and the proof-of-work page.

* :func:`pass_redirect`: ``303 See Other`` back to the same URL, setting the pass cookie.
  A client that keeps cookies comes back with it; one that keeps none never passes. The
  body is a plain link, for clients that do not follow redirects (no script).
* :func:`work_page`: a small self-contained page (inline script and style, allowed by
  their hashes in its ``Content-Security-Policy``; nothing loaded from elsewhere, no
  cookie or storage needed to run) that solves the challenge with
  ``crypto.subtle.digest`` and posts the counter to ``action``; :func:`read_answer` reads
  that post, and the answer is a :func:`pass_redirect` to where the client was going.

Every value written into HTML is escaped, and every URL sent back to the client goes
through :func:`safe_path` (a path on this site, never another site's URL).
"""

from __future__ import annotations

import base64
import hashlib
import math
from html import escape
from typing import NamedTuple
from urllib.parse import parse_qsl, quote

from .._responses import Denial

__all__ = [
    "CHALLENGE_FIELD",
    "COOKIE_NAME",
    "RETURN_FIELD",
    "SOLUTION_FIELD",
    "WORK_PAGE_CSP",
    "Answer",
    "pass_cookie",
    "pass_redirect",
    "read_answer",
    "safe_path",
    "work_page",
]

COOKIE_NAME = "throttlekit_pass"
CHALLENGE_FIELD = "challenge"
SOLUTION_FIELD = "solution"
RETURN_FIELD = "return_to"
MAX_ANSWER_BYTES = 4096
_MAX_PATH = 2048
# RFC 3986 path and query characters kept as they are ('%' keeps escapes already made);
# anything else (backslash, tab, quotes, '<', '#', non-ASCII) is percent-encoded, so a
# path is also safe in a quoted attribute or string
_PATH_SAFE = "/?&=%:@!$()*+,;~-._"
# RFC 6265 cookie-octet and token characters
_COOKIE_OCTETS = frozenset(
    chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;\\'
)
_TOKEN = frozenset(c for c in _COOKIE_OCTETS if c not in "()/:<=>?@[]{}")

_SCRIPT = """
(async function () {
  var form = document.getElementById("tk-work");
  var status = document.getElementById("tk-status");
  if (!window.crypto || !crypto.subtle || !window.TextEncoder) {
    status.textContent = "This check needs a browser with Web Crypto, over HTTPS.";
    return;
  }
  var challenge = form.elements.challenge.value;
  var bits = parseInt(form.getAttribute("data-difficulty"), 10);
  var encoder = new TextEncoder();
  function solves(hash) {
    var i = 0, left = bits;
    for (; left >= 8; left -= 8, i++) if (hash[i] !== 0) return false;
    return left === 0 || hash[i] >> (8 - left) === 0;
  }
  try {
    for (var start = 0; start < 1e15; start += 256) {
      var jobs = [];
      for (var n = start; n < start + 256; n++) {
        jobs.push(crypto.subtle.digest("SHA-256", encoder.encode(challenge + n)));
      }
      var hashes = await Promise.all(jobs);
      for (var k = 0; k < hashes.length; k++) {
        if (solves(new Uint8Array(hashes[k]))) {
          form.elements.solution.value = String(start + k);
          form.submit();
          return;
        }
      }
    }
  } catch (e) {
    status.textContent = "The check failed: reload the page to try again.";
  }
})();
"""
_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:0;display:flex;min-height:100vh;"
    "align-items:center;justify-content:center;color:#222;background:#fafafa}"
    "main{max-width:32em;padding:1em;text-align:center}"
)


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


#: the work page's policy: its own script and style, and a post to this site, nothing else
WORK_PAGE_CSP = (
    f"default-src 'none'; script-src {_csp_hash(_SCRIPT)}; style-src {_csp_hash(_STYLE)}; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

_WORK_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>Checking your browser</title>
<style>{style}</style>
</head>
<body>
<main>
<h1>Checking your browser</h1>
<p id="tk-status">This takes a moment.</p>
<noscript><p>Please turn on JavaScript and reload: this page proves a real browser is
asking with a short computation.</p></noscript>
<form id="tk-work" method="post" action="{action}" data-difficulty="{difficulty}">
<input type="hidden" name="{challenge_field}" value="{challenge}">
<input type="hidden" name="{solution_field}" value="">
<input type="hidden" name="{return_field}" value="{return_to}">
</form>
</main>
<script>{script}</script>
</body>
</html>
"""

_REDIRECT_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>One moment</title>
</head>
<body>
<p><a href="{location}">Continue</a></p>
</body>
</html>
"""


def safe_path(target: object) -> str:
    """``target`` (the request target as sent: path and query) as a URL path on this
    site, percent-encoded where needed; ``"/"`` for anything that is not a path, or could
    lead to another site (``//host``, ``/\\host``, a scheme), or is over 2048 characters."""
    if not isinstance(target, str) or len(target) > _MAX_PATH:
        return "/"
    path = quote(target, safe=_PATH_SAFE, errors="replace")
    if not path.startswith("/") or path.startswith("//"):
        return "/"
    return path


def pass_cookie(
    value: str, *, max_age: float, secure: bool, name: str = COOKIE_NAME, path: str = "/"
) -> str:
    """The ``Set-Cookie`` value for a pass: ``HttpOnly`` (no script reads it),
    ``SameSite=Lax`` (sent when following a link from another site), ``Secure`` when
    the site is served over HTTPS.

    Raises:
        ValueError: ``name`` is not a cookie name, ``value`` or ``path`` not cookie-safe.
    """
    if not name or not set(name) <= _TOKEN:
        raise ValueError(f"not a cookie name: {name!r}")
    if not set(value) <= _COOKIE_OCTETS or not set(path) <= _COOKIE_OCTETS:
        raise ValueError("a cookie value or path with characters a cookie cannot hold")
    cookie = f"{name}={value}; Path={path}; Max-Age={math.ceil(max_age)}; HttpOnly; SameSite=Lax"
    return cookie + "; Secure" if secure else cookie


def _html(status: int, body: str, headers: list[tuple[str, str]]) -> Denial:
    data = body.encode("utf-8")
    headers += [
        ("Cache-Control", "no-store"),
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", str(len(data))),
    ]
    return Denial(status, headers, data)


def pass_redirect(target: object, set_cookie: str) -> Denial:
    """``303 See Other`` to ``target`` (through :func:`safe_path`) setting the cookie
    ``set_cookie`` (a :func:`pass_cookie` value), with a link to follow by hand."""
    location = safe_path(target)
    page = _REDIRECT_PAGE.format(location=escape(location, quote=True))
    return _html(303, page, [("Location", location), ("Set-Cookie", set_cookie)])


def work_page(
    challenge: str, difficulty: int, *, action: str, return_to: object, status: int = 200
) -> Denial:
    """The page that solves ``challenge`` (a :meth:`WorkChallenge.issue` value) at
    ``difficulty`` and posts the answer to ``action`` (a path on this site), with
    ``return_to`` (where the client was going) for :func:`read_answer`."""
    page = _WORK_PAGE.format(
        style=_STYLE,
        script=_SCRIPT,
        action=escape(safe_path(action), quote=True),
        difficulty=int(difficulty),
        challenge_field=CHALLENGE_FIELD,
        solution_field=SOLUTION_FIELD,
        return_field=RETURN_FIELD,
        challenge=escape(challenge, quote=True),
        return_to=escape(safe_path(return_to), quote=True),
    )
    return _html(status, page, [("Content-Security-Policy", WORK_PAGE_CSP)])


class Answer(NamedTuple):
    """What the work page posted: the challenge, the counter solving it (both as sent:
    :meth:`WorkChallenge.redeem` checks them) and where to go next (a safe path)."""

    challenge: str
    solution: str
    return_to: str


def read_answer(body: bytes) -> Answer | None:
    """The work page's post (``application/x-www-form-urlencoded``), or None when it is
    not one: over 4096 bytes, not ASCII, too many fields, a field missing. Never raises."""
    if not isinstance(body, bytes) or len(body) > MAX_ANSWER_BYTES:
        return None
    try:
        fields = dict(parse_qsl(body.decode("ascii"), keep_blank_values=True, max_num_fields=8))
    except ValueError:  # not ASCII, or too many fields
        return None
    challenge, solution = fields.get(CHALLENGE_FIELD), fields.get(SOLUTION_FIELD)
    if challenge is None or solution is None:
        return None
    return Answer(challenge, solution, safe_path(fields.get(RETURN_FIELD, "/")))
