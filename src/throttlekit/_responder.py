"""The one responder: every refusal, whoever refuses, is built here.

The WSGI and ASGI middleware, each ``contrib`` integration (Flask, Django, Starlette,
FastAPI) and the decorators answer a refused :class:`~throttlekit.Verdict` through a
:class:`Responder`, so the same refusal has the same status line, header fields and body
for the same ``Accept`` everywhere:

>>> from throttlekit import Decision, Rate, Verdict
>>> d = Decision(False, 1, 0, 60.0, 60.0, Rate(1, 60.0))
>>> refused = Verdict(False, "throttled", "per-ip", "k", d, [("per-ip", d)], False, None)
>>> denial = Responder("draft10", True).refuse(refused, refused.policies, None)
>>> status_line(denial.status), denial.body
('429 Too Many Requests', b'Too Many Requests: rate limit exceeded.\\n')

A framework that wants the status as a string (werkzeug) or a reason phrase (Django) gets it
from :func:`status_line` / :func:`reason`: the ``http.HTTPStatus`` phrase.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, TypedDict

from ._errors import ConfigError
from ._responses import HEADER_STYLES, Denial, default_responder, rate_limit_headers

if TYPE_CHECKING:
    from ._clientip import ClientIPResolver
    from ._decision import Decision
    from ._limiter import Limiter
    from ._rules import Verdict

__all__ = ["RESPONDER_KINDS", "VERDICT_KEY", "Entry", "EntryOptions", "Responder", "ResponderFn",
           "configure", "reason", "resolve_options", "status_line"]

logger = logging.getLogger("throttlekit")

#: The verdict kinds a custom responder can answer (``"challenged"``: the 403 of a request
#: a challenge refuses; its redirects and pages are the step's, sent as they are).
RESPONDER_KINDS = ("throttled", "blocked", "banned", "challenged", "shed")
#: ``responder(kind, rule, decision, accept, headers) -> Denial``: the refusal sent for a
#: verdict kind; ``headers`` are the rate-limit headers to include.
ResponderFn = Callable[[str, str, "Decision | None", "str | None", "list[tuple[str, str]]"],
                       Denial]
#: environ/scope key of the request's :class:`~throttlekit.Verdict`
VERDICT_KEY = "throttlekit.verdict"

_reasons: dict[int, str] = {}


def reason(status: int) -> str:
    """The reason phrase of ``status`` (``http.HTTPStatus``), ``"Unknown"`` when it has
    none."""
    found = _reasons.get(status)
    if found is None:
        try:
            found = HTTPStatus(status).phrase
        except ValueError:
            found = "Unknown"
        if len(_reasons) < 256:
            _reasons[status] = found
    return found


def status_line(status: int) -> str:
    """``"429 Too Many Requests"``: the status line of a WSGI response (and werkzeug's
    ``Response(status=...)``)."""
    return f"{status} {reason(status)}"


class Responder:
    """How refusals are answered: the header style, whether allowed responses carry the
    rate-limit header fields too, and custom responders per verdict kind.

    Args:
        style: one of ``HEADER_STYLES``.
        on_allowed: rate-limit header fields on allowed responses too (never with
            ``"none"``).
        overrides: ``{kind: responder}`` replacing :func:`default_responder` for a kind of
            :data:`RESPONDER_KINDS`.

    Raises:
        ConfigError: an unknown style or kind, a non-bool ``on_allowed``, a responder that
            is not callable.
    """

    __slots__ = ("on_allowed", "overrides", "style")

    def __init__(self, style: str, on_allowed: bool,
                 overrides: Mapping[str, ResponderFn] | None = None) -> None:
        if style not in HEADER_STYLES:
            raise ConfigError(f"header_style must be one of {', '.join(HEADER_STYLES)}, "
                              f"got {style!r}")
        if not isinstance(on_allowed, bool):
            raise ConfigError(f"headers_on_allowed must be True or False, got {on_allowed!r}")
        chosen: dict[str, ResponderFn] = {}
        for kind, fn in (overrides or {}).items():
            if kind not in RESPONDER_KINDS:
                raise ConfigError(f"unknown responder kind {kind!r}; expected one of "
                                  f"{', '.join(RESPONDER_KINDS)}")
            if not callable(fn):
                raise ConfigError(f"the responder for {kind!r} must be callable, got {fn!r}")
            chosen[kind] = fn
        self.style = style
        self.on_allowed = on_allowed and style != "none"
        self.overrides = chosen

    @classmethod
    def of(cls, limiter: Limiter) -> Responder:
        """The responder of ``limiter``'s settings (no custom responders): what an
        integration without its own answers with."""
        style, on_allowed = limiter.header_style, limiter.headers_on_allowed
        found = _limiter_responders.get((style, on_allowed))
        if found is None:
            found = cls(style, on_allowed)
            if len(_limiter_responders) < 64:
                _limiter_responders[style, on_allowed] = found
        return found

    @property
    def responders(self) -> dict[str, ResponderFn]:
        """The responder of every kind: the custom ones, else :func:`default_responder`."""
        chosen: dict[str, ResponderFn] = dict.fromkeys(RESPONDER_KINDS, default_responder)
        chosen.update(self.overrides)
        return chosen

    def refuse(self, verdict: Verdict, policies: Iterable[tuple[str, Decision]] | None,
               accept: str | None) -> Denial:
        """The answer to a refused ``verdict``: status, header fields (the rate-limit
        fields of ``policies`` first) and body, for the request's ``Accept``; or the
        verdict's ``answer``, as it is (a challenge's redirect or page). Never raises:
        a failing custom responder is logged and the default answer sent (a refusal must
        never become a 500)."""
        # (getattr: the engine builds its common allowed verdicts without __init__)
        answer: Denial | None = getattr(verdict, "answer", None)
        if answer is not None:
            return answer
        kind = verdict.kind
        rule = verdict.rule or ""
        decision = verdict.decision
        try:
            headers = rate_limit_headers(list(policies), self.style) if policies else []
        except Exception:
            logger.exception("the rate-limit header fields of %r failed", rule)
            headers = []
        custom = self.overrides.get(kind)
        if custom is not None:
            try:
                status, out, body = custom(kind, rule, decision, accept, list(headers))
                return Denial(int(status), list(out), bytes(body))
            except Exception:
                logger.exception("the responder for %r failed; using the default",
                                 kind)
        return default_responder(kind, rule, decision, accept, headers)


_limiter_responders: dict[tuple[str, bool], Responder] = {}


def configure(
    limiter: Limiter,
    trusted_proxies: Any = None,
    ipv6_prefix: int | None = None,
    header_style: str | None = None,
    headers_on_allowed: bool | None = None,
    responders: Mapping[str, ResponderFn] | None = None,
) -> tuple[ClientIPResolver, Responder]:
    """A middleware's settings: its own arguments, else the limiter's. Raises
    ConfigError naming a bad value."""
    from ._clientip import ClientIPResolver
    from ._limiter import Limiter

    if not isinstance(limiter, Limiter):
        raise ConfigError(f"limiter must be a throttlekit.Limiter, got {limiter!r}")
    if trusted_proxies is None and ipv6_prefix is None:
        resolver = limiter.resolver
    else:
        resolver = ClientIPResolver(
            limiter.resolver_args[0] if trusted_proxies is None else trusted_proxies,
            limiter.resolver_args[1] if ipv6_prefix is None else ipv6_prefix,
            header=limiter.resolver_args[2],
        )
    style = limiter.header_style if header_style is None else header_style
    on_allowed = limiter.headers_on_allowed if headers_on_allowed is None else headers_on_allowed
    return resolver, Responder(style, on_allowed, responders)


class EntryOptions(TypedDict, total=False):
    """The options every middleware takes (:class:`Entry`'s keywords)."""

    trusted_proxies: int | Iterable[str] | None
    ipv6_prefix: int | None
    header_style: str | None
    headers_on_allowed: bool | None
    responders: Mapping[str, ResponderFn] | None
    rules_file: str | os.PathLike[str] | None
    reload_interval: float | None


class Entry:
    """What every middleware holds: the app, the limiter, and its settings (``configure``):
    the client-IP resolver and the responder. ``rules_file`` is loaded into the limiter.
    Its keywords are the options of every middleware (``WSGIMiddleware`` takes these)."""

    __slots__ = ("app", "limiter", "on_allowed", "resolver", "responder", "style")
    #: what ``app`` must be (for the ConfigError naming it)
    _APP = "a WSGI"

    def __init__(
        self,
        app: Any,
        limiter: Limiter,
        *,
        trusted_proxies: int | Iterable[str] | None = None,
        ipv6_prefix: int | None = None,
        header_style: str | None = None,
        headers_on_allowed: bool | None = None,
        responders: Mapping[str, ResponderFn] | None = None,
        rules_file: str | os.PathLike[str] | None = None,
        reload_interval: float | None = None,
    ) -> None:
        if not callable(app):
            raise ConfigError(f"app must be {self._APP} callable, got {app!r}")
        if rules_file is not None:
            limiter.load_rules(rules_file, reload_interval=reload_interval)
        self.app = app
        self.limiter = limiter
        self.resolver, self.responder = configure(
            limiter, trusted_proxies, ipv6_prefix, header_style, headers_on_allowed,
            responders,
        )
        self.style = self.responder.style
        self.on_allowed = self.responder.on_allowed

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.app!r}, {self.limiter!r})"


def resolve_options(
    limiter: Limiter,
    trusted_proxies: Any,
    ipv6_prefix: int | None,
    header_style: str | None,
    headers_on_allowed: bool | None,
    responders: Mapping[str, ResponderFn] | None,
) -> tuple[ClientIPResolver, str, bool, dict[str, ResponderFn]]:
    """:func:`configure` as ``(resolver, style, on_allowed, responder per kind)`` (kept
    for code written against ``throttlekit.wsgi.resolve_options``)."""
    resolver, responder = configure(limiter, trusted_proxies, ipv6_prefix, header_style,
                                    headers_on_allowed, responders)
    return resolver, responder.style, responder.on_allowed, responder.responders
