"""Standard HTTP answers: rate-limit header fields, ``Retry-After`` and denial responses.

Header styles (:data:`HEADER_STYLES`):

- ``"draft10"``: ``RateLimit-Policy`` and ``RateLimit`` as draft-ietf-httpapi-ratelimit-headers-10
  writes them, Structured-Field lists with one item per policy (rule)::

      RateLimit-Policy: "per-ip";q=100;w=60, "login";q=5;w=60
      RateLimit: "per-ip";r=42;t=18, "login";r=4;t=60

- ``"legacy"``: ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset``
  (delta seconds, or an epoch timestamp when ``now`` is given) of the most restrictive policy.
- ``"both"``, or ``"none"``.

Denials (:func:`default_responder`): ``429`` for a throttle, ``403`` for a block or ban
(and a request a challenge refuses), ``503`` for load shedding; ``Cache-Control: no-store``
(RFC 6585: a 429 must not be cached), ``Retry-After`` in whole seconds rounded up (RFC 9110)
when finite; a plain-text body, or RFC 9457 ``application/problem+json`` when the client's
``Accept`` prefers JSON.

>>> from throttlekit import Decision, Rate
>>> d = Decision(False, 100, 0, 17.2, 2.1, Rate(100, 60.0))
>>> rate_limit_headers([("per-ip", d)], "draft10")
[('RateLimit-Policy', '"per-ip";q=100;w=60'), ('RateLimit', '"per-ip";r=0;t=18')]
>>> retry_after_header(2.1)
'3'
>>> denial = default_responder("throttled", "per-ip", d, "application/json", [])
>>> denial.status, dict(denial.headers)["Content-Type"]
(429, 'application/problem+json')
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from time import time as _time
from typing import NamedTuple

from ._decision import Decision, most_restrictive
from ._errors import ConfigError
from ._rates import Rate

__all__ = [
    "HEADER_STYLES",
    "PROBLEM_TYPES",
    "Denial",
    "check_header_style",
    "default_responder",
    "encode_headers",
    "prefers_json",
    "rate_limit_headers",
    "rate_limit_headers_raw",
    "retry_after_header",
    "sf_string",
]

HEADER_STYLES = ("draft10", "legacy", "both", "none")

#: RFC 9457 problem types: kind -> (type URI, title). The 429 and 503 types are those
#: proposed by draft-ietf-httpapi-ratelimit-headers.
PROBLEM_TYPES: dict[str, tuple[str, str]] = {
    "throttled": (
        "https://iana.org/assignments/http-problem-types#quota-exceeded",
        "Request cannot be satisfied as assigned quota has been exceeded",
    ),
    "shed": (
        "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity",
        "Temporary reduced capacity",
    ),
    "blocked": ("about:blank", "Forbidden"),
    "banned": ("about:blank", "Forbidden"),
    "challenged": ("about:blank", "Forbidden"),
}

_STATUS = {"throttled": 429, "blocked": 403, "banned": 403, "challenged": 403, "shed": 503}
_TEXT = {
    429: b"Too Many Requests: rate limit exceeded.\n",
    403: b"Forbidden.\n",
    503: b"Service Unavailable: the server is shedding load, retry later.\n",
}
#: a challenge's refusal says how to pass (the request came without a pass, and only a
#: GET or HEAD is given one)
_CHALLENGED_TEXT = b"Forbidden: this request needs a pass; load a page of this site first.\n"
_CHALLENGED_DETAIL = (
    "This request needs a pass: load a page of this site (GET) with cookies on first."
)
_TEXT_LEN = {status: str(len(body)) for status, body in _TEXT.items()}
_NO_STORE = ("Cache-Control", "no-store")
_TEXT_TYPE = ("Content-Type", "text/plain; charset=utf-8")
_PROBLEM_TYPE = ("Content-Type", "application/problem+json")


class Denial(NamedTuple):
    """A refusal to send instead of the app's response (header values are str)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def check_header_style(style: object) -> str:
    """``style`` if it is one of :data:`HEADER_STYLES`, else ConfigError."""
    if style not in HEADER_STYLES:
        raise ConfigError(f"header style must be one of {HEADER_STYLES}, got {style!r}")
    return style


def retry_after_header(seconds: float) -> str | None:
    """The ``Retry-After`` value for a wait: whole seconds rounded up, never negative;
    None for an infinite (or NaN) wait, which no retry can cure."""
    if not seconds > 0:
        return None if seconds != seconds else "0"  # NaN -> None, <= 0 -> "0"
    if seconds == math.inf:
        return None
    return str(math.ceil(seconds))


def sf_string(text: str) -> str:
    """``text`` as a Structured-Field String (RFC 8941): quoted, ``\\`` and ``"`` escaped;
    characters outside printable ASCII (not allowed there) become ``?``."""
    return _sf_string(text) if isinstance(text, str) else _sf_string(str(text))


@functools.lru_cache(maxsize=1024)
def _sf_string(text: str) -> str:
    chars = []
    for ch in text:
        if ch in '\\"':
            chars.append("\\" + ch)
        elif " " <= ch <= "~":
            chars.append(ch)
        else:
            chars.append("?")
    return '"' + "".join(chars) + '"'


@functools.lru_cache(maxsize=1024)
def _policy_item(name: str, limit: int, period: float) -> str:
    return f"{_sf_string(name)};q={limit};w={max(1, math.ceil(period))}"


#: per policy name: (rate, its ``RateLimit-Policy`` item, the start of its ``RateLimit``
#: item, the whole ``RateLimit-Policy`` field of a response with this policy alone, and the
#: last two as ASGI sends them); only the numbers of the ``RateLimit`` item change from one
#: response to the next
_Piece = tuple[Rate, str, str, tuple[str, str], tuple[bytes, bytes], bytes]
_pieces: dict[str, _Piece] = {}
#: what a name not in _pieces finds: its rate (NaN period) equals no Decision's rate
_MISSING: _Piece = (Rate(-1, math.nan), "", "", ("", ""), (b"", b""), b"")
_PIECES_SIZE = 1024
#: per tuple of policy names (several): their rates, the ``RateLimit-Policy`` field and the
#: format of the ``RateLimit`` field (``%s`` for the numbers: formatted straight into the
#: field, cheaper than a ``str`` each; see ``rate_limit_headers``)
_Fields = tuple[tuple[Rate, ...], tuple[str, str], str]
_fields: dict[tuple[str, ...], _Fields] = {}
_NEVER = 2**31  # a reset that never comes; a large finite integer keeps the field parseable
_ceil = math.ceil
_INF = math.inf


def _piece(name: str, rate: Rate) -> _Piece:
    if not isinstance(name, str):
        name = str(name)
    item = _policy_item(name, rate.limit, rate.period)
    start = _sf_string(name) + ";r="
    piece = (rate, item, start, ("RateLimit-Policy", item),
             (b"ratelimit-policy", item.encode("latin-1")), start.encode("latin-1"))
    if len(_pieces) >= _PIECES_SIZE:
        _pieces.clear()
    _pieces[name] = piece
    return piece


def _whole(seconds: float) -> int:
    if not seconds > 0:
        return 0
    if seconds == _INF:
        return _NEVER
    return _ceil(seconds)


def rate_limit_headers(
    policies: Sequence[tuple[str, Decision]], style: str, *, now: float | None = None
) -> list[tuple[str, str]]:
    """The rate-limit header fields for the Decisions of the policies (rules) that applied.

    Args:
        policies: ``(name, decision)`` per policy, in the order to list them.
        style: one of :data:`HEADER_STYLES`.
        now: seconds since the epoch (default: ``time.time()``): ``X-RateLimit-Reset`` is
            the epoch second the quota is whole again, as GitHub and Flask-Limiter send it.

    Raises:
        ConfigError: unknown ``style``.
    """
    if style == "draft10" and len(policies) == 1:  # the common case, first
        name, d = policies[0]
        if (piece := _pieces.get(name, _MISSING))[0] != d.rate:
            piece = _piece(name, d.rate)
        rem, reset = d.remaining, d.reset_after
        return [piece[3], ("RateLimit", f"{piece[2]}{rem if rem > 0 else 0};t="
                           f"{(_ceil(reset) if reset != _INF else _NEVER) if reset > 0 else 0}")]
    if style == "none" or not policies:
        if style not in HEADER_STYLES:
            check_header_style(style)
        return []
    draft = style == "draft10"
    if draft or style == "both":
        # The policy items are constant per (name, rate): cached; only r= and t= (t as
        # _whole, inlined) are formatted per response. Several policies: the fields kept
        # per tuple of names, the numbers formatted into them at once (_draft_fields).
        found: list[tuple[str, str]] | None = None
        if len(policies) > 1:
            # Several: no Python code per policy. The RateLimit-Policy field and a format of
            # the RateLimit field are kept per tuple of names (and their rates); the numbers
            # are formatted into it in C by one % (cheaper than a str() each). Inline: no
            # call of its own on the path of every request with two rates or rules.
            # Both transposed by zip in C (no itemgetter call per field and policy):
            # the names and decisions, then the decisions' columns.
            names, decisions = zip(*policies, strict=True)
            # the columns read (allowed, limit, remaining, reset, retry, rate: not degraded)
            columns = zip(*decisions, strict=True)
            next(columns)
            next(columns)
            rems = next(columns)
            resets_after = next(columns)
            next(columns)
            rates = next(columns)
            fields = _fields.get(names)
            if fields is None or fields[0] != rates:
                fields = _fields_of(names, decisions)
            try:
                values: list[object] = [None] * (2 * len(decisions))
                values[::2] = rems
                values[1::2] = map(_ceil, resets_after)
                field = fields[2] % tuple(values)
                # A negative number (every number follows "=") is written as 0, item by
                # item: one search of the field instead of a pass over each column (a name
                # holding "=-" goes item by item too, whatever the numbers)
                if "=-" not in field:
                    found = [fields[1], ("RateLimit", field)]
            except (OverflowError, ValueError, TypeError):  # inf, NaN
                pass
        # (one policy, or numbers that need care: item by item)
        out = found if found is not None else _draft_items(policies)
        if draft:
            return out
    elif style == "legacy":
        out = []
    else:
        check_header_style(style)
    d = most_restrictive([d for _, d in policies])
    reset = _whole(d.reset_after)
    if reset != _NEVER and d.reset_after == d.reset_after:  # (not NaN)
        # (a reset already due, -inf included, is now: the epoch second, never an error)
        reset = _ceil((_time() if now is None else now) + (reset and d.reset_after))
    out.append(("X-RateLimit-Limit", str(d.limit)))
    out.append(("X-RateLimit-Remaining", str(max(0, d.remaining))))
    out.append(("X-RateLimit-Reset", str(reset)))
    return out


def _draft_items(policies: Sequence[tuple[str, Decision]]) -> list[tuple[str, str]]:
    """The two ``draft10`` fields, item by item (the numbers that need care: negative,
    infinite or NaN ones)."""
    items: list[str] = []
    names: list[str] = []
    for name, d in policies:
        piece = _pieces.get(name, _MISSING)
        if piece[0] != d.rate:
            piece = _piece(name, d.rate)
        rem = d.remaining
        reset = d.reset_after
        item = (f"{piece[2]}{rem if rem > 0 else 0};t="
                f"{(_ceil(reset) if reset != _INF else _NEVER) if reset > 0 else 0}")
        if len(policies) == 1:  # one policy: its cached field
            return [piece[3], ("RateLimit", item)]
        items.append(item)
        names.append(piece[1])
    return [("RateLimit-Policy", ", ".join(names)), ("RateLimit", ", ".join(items))]


def _fields_of(names: tuple[str, ...], decisions: Sequence[Decision]) -> _Fields:
    items: list[str] = []
    starts: list[str] = []
    for name, d in zip(names, decisions, strict=True):
        piece = _pieces.get(name, _MISSING)
        if piece[0] != d.rate:
            piece = _piece(name, d.rate)
        items.append(piece[1])
        starts.append(piece[2].replace("%", "%%") + "%s;t=%s")
    fields = (tuple(d.rate for d in decisions), ("RateLimit-Policy", ", ".join(items)),
              ", ".join(starts))
    if len(_fields) >= _PIECES_SIZE:
        _fields.clear()
    _fields[names] = fields
    return fields


def rate_limit_headers_raw(
    policies: Sequence[tuple[str, Decision]], style: str
) -> list[tuple[bytes, bytes]]:
    """:func:`rate_limit_headers` as ASGI wants them (lower-case latin-1 bytes), built
    without the detour through ``str`` in the common case of one ``draft10`` policy."""
    if style == "draft10" and len(policies) == 1:
        name, d = policies[0]
        piece = _pieces.get(name, _MISSING)
        if piece[0] != d.rate:
            piece = _piece(name, d.rate)
        rem = d.remaining
        reset = d.reset_after
        return [piece[4], (b"ratelimit", b"%s%d;t=%d" % (
            piece[5], rem if rem > 0 else 0,
            (_ceil(reset) if reset != _INF else _NEVER) if reset > 0 else 0,
        ))]
    return encode_headers(rate_limit_headers(policies, style))


@functools.lru_cache(maxsize=256)
def prefers_json(accept: str | None) -> bool:
    """Whether an ``Accept`` value prefers JSON (``application/problem+json`` or
    ``application/json``) to ``text/plain``. A tie goes to JSON when the client named it
    (axios' ``application/json, text/plain, */*``), else to text (``*/*``); no header and
    garbage go to text."""
    if not accept or not isinstance(accept, str):
        return False
    ranges = _parse_accept(accept[:2048])
    q_json = max(
        _quality(ranges, "application", "problem+json"), _quality(ranges, "application", "json")
    )
    q_text = _quality(ranges, "text", "plain")
    if q_json != q_text:
        return q_json > q_text
    # a tie goes to JSON only when the client named it
    return q_json > 0.0 and any(
        kind == "application" and sub in ("json", "problem+json") and q > 0.0
        for kind, sub, q in ranges
    )


def _parse_accept(accept: str) -> list[tuple[str, str, float]]:
    ranges = []
    for part in accept.split(",")[:64]:
        media, *params = part.split(";")
        kind, sep, sub = media.strip().lower().partition("/")
        if not sep or not kind or not sub:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = -1.0
                if not 0.0 <= q <= 1.0:  # also NaN
                    q = -1.0
        if q >= 0.0:
            ranges.append((kind.strip(), sub.strip(), q))
    return ranges


def _quality(ranges: list[tuple[str, str, float]], kind: str, sub: str) -> float:
    """The q of the most specific range matching ``kind/sub`` (RFC 9110 12.5.1), or 0."""
    best_rank, best_q = -1, 0.0
    for rkind, rsub, q in ranges:
        if rkind == kind and rsub == sub:
            rank = 2
        elif rkind == kind and rsub == "*":
            rank = 1
        elif rkind == "*" and rsub == "*":
            rank = 0
        else:
            continue
        if rank > best_rank or (rank == best_rank and q > best_q):
            best_rank, best_q = rank, q
    return best_q


def default_responder(
    kind: str,
    rule: str,
    decision: Decision | None,
    accept: str | None,
    headers: list[tuple[str, str]],
) -> Denial:
    """The response refusing a request.

    Args:
        kind: ``"throttled"`` (429), ``"blocked"``, ``"banned"`` or ``"challenged"``
            (403), ``"shed"`` (503); anything else is answered 403.
        rule: the name of the rule that refused (listed in ``violated-policies`` of a 429
            problem body; never shown for blocks and bans).
        decision: the refusing Decision, if any (gives ``Retry-After`` for 429 and 503).
        accept: the request's ``Accept`` header.
        headers: header fields to send as well (e.g. from :func:`rate_limit_headers`).

    A custom responder has the same signature and returns a :class:`Denial` (or any
    ``(status, headers, body)`` triple).
    """
    status = _STATUS.get(kind, 403)
    out = list(headers)
    if status != 403 and decision is not None:
        retry = retry_after_header(decision.retry_after)
        if retry is not None:
            out.append(("Retry-After", retry))
    out.append(_NO_STORE)
    if prefers_json(accept):
        body = _problem_body(kind if kind in PROBLEM_TYPES else "blocked", status, rule, decision)
        out.append(_PROBLEM_TYPE)
        out.append(("Content-Length", str(len(body))))
        return Denial(status, out, body)
    out.append(_TEXT_TYPE)
    if kind == "challenged":
        out.append(("Content-Length", str(len(_CHALLENGED_TEXT))))
        return Denial(status, out, _CHALLENGED_TEXT)
    out.append(("Content-Length", _TEXT_LEN[status]))
    return Denial(status, out, _TEXT[status])


def _problem_body(kind: str, status: int, rule: str, decision: Decision | None) -> bytes:
    type_uri, title = PROBLEM_TYPES[kind]
    problem: dict[str, object] = {"type": type_uri, "title": title, "status": status}
    retry = retry_after_header(decision.retry_after) if decision is not None else None
    if status == 429:
        if decision is not None and decision.retry_after == math.inf:
            problem["detail"] = "This request costs more than the quota allows; it cannot succeed."
        elif retry is not None:
            problem["detail"] = f"Rate limit exceeded; retry in {retry} seconds."
        else:
            problem["detail"] = "Rate limit exceeded."
        problem["violated-policies"] = [rule]
    elif status == 503:
        problem["detail"] = (
            f"The server is shedding load; retry in {retry} seconds."
            if retry is not None
            else "The server is shedding load; retry later."
        )
    elif kind == "challenged":
        problem["detail"] = _CHALLENGED_DETAIL
    else:
        problem["detail"] = "This client is not allowed to make this request."
    return json.dumps(problem, ensure_ascii=True, separators=(",", ":")).encode("ascii")


#: header names this module writes, as ASGI wants them
_ENCODED_NAMES = {
    name: name.lower().encode("latin-1")
    for name in (
        "RateLimit-Policy", "RateLimit", "X-RateLimit-Limit", "X-RateLimit-Remaining",
        "X-RateLimit-Reset", "Retry-After", "Cache-Control", "Content-Type", "Content-Length",
    )
}


def encode_headers(headers: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Header fields as ASGI wants them: lower-case latin-1 names and latin-1 values."""
    names = _ENCODED_NAMES
    out = []
    for name, value in headers:
        raw = names.get(name)
        if raw is None:
            raw = name.lower().encode("latin-1")
        out.append((raw, value.encode("latin-1", "replace")))
    return out
