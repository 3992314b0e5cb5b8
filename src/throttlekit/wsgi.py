"""WSGI middleware: the limiter's rules in front of any WSGI app.

>>> from throttlekit import Limiter, WSGIMiddleware
>>> def app(environ, start_response):
...     start_response("200 OK", [("Content-Type", "text/plain")])
...     return [b"hello"]
>>> limiter = Limiter()
>>> limiter.throttle("per-ip", "100/minute")
>>> app = WSGIMiddleware(app, limiter)

Every request is evaluated by ``limiter.evaluate`` before the app sees it (one storage
call). Refused requests get the responder's answer (429 for throttles, 403 for blocks and
bans); allowed ones go to the app, with the rate-limit headers added to its response. The
:class:`~throttlekit.Verdict` is in ``environ["throttlekit.verdict"]``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from ._errors import ConfigError
from ._exchange import DENIED_KEY, OWNER_KEY, POLICIES_KEY, Exchange, begin, header_policies
from ._request import _UNSET, DEFAULT_MAX_FORM_BYTES, RequestView
from ._responses import HEADER_STYLES, Denial, default_responder, rate_limit_headers
from ._rules import _RuleFailed
from .storage.memory import MemoryStorage

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from ._clientip import ClientIPResolver
    from ._decision import Decision
    from ._limiter import Limiter
    from ._rules import Verdict

__all__ = ["RESPONDER_KINDS", "Responder", "WSGIMiddleware", "resolve_options"]

logger = logging.getLogger("throttlekit")

#: The verdict kinds a responder answers.
RESPONDER_KINDS = ("throttled", "blocked", "banned")
#: ``responder(kind, rule, decision, accept, headers) -> Denial``: the refusal sent for a
#: verdict kind; ``headers`` are the rate-limit headers to include.
Responder = Callable[[str, str, "Decision | None", "str | None", "list[tuple[str, str]]"], Denial]
VERDICT_KEY = "throttlekit.verdict"
_new_view = object.__new__


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def resolve_options(
    limiter: Limiter,
    trusted_proxies: Any,
    ipv6_prefix: int | None,
    header_style: str | None,
    headers_on_allowed: bool | None,
    responders: Mapping[str, Responder] | None,
) -> tuple[ClientIPResolver, str, bool, dict[str, Responder]]:
    """The middleware's settings: its own arguments, else the limiter's."""
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
    if style not in HEADER_STYLES:
        raise ConfigError(f"header_style must be one of {', '.join(HEADER_STYLES)}, "
                          f"got {style!r}")
    on_allowed = limiter.headers_on_allowed if headers_on_allowed is None else headers_on_allowed
    if not isinstance(on_allowed, bool):
        raise ConfigError(f"headers_on_allowed must be True or False, got {on_allowed!r}")
    chosen: dict[str, Responder] = dict.fromkeys(RESPONDER_KINDS, default_responder)
    for kind, fn in (responders or {}).items():
        if kind not in RESPONDER_KINDS:
            raise ConfigError(f"unknown responder kind {kind!r}; expected one of "
                              f"{', '.join(RESPONDER_KINDS)}")
        if not callable(fn):
            raise ConfigError(f"the responder for {kind!r} must be callable, got {fn!r}")
        chosen[kind] = fn
    return resolver, style, on_allowed and style != "none", chosen


def refusal(
    responders: Mapping[str, Responder], style: str, verdict: Verdict, accept: str | None
) -> Denial:
    """The Denial for a refused verdict; a failing custom responder falls back to the
    default one (a refusal must never become a 500)."""
    headers = rate_limit_headers(verdict.policies, style) if verdict.policies else []
    kind = verdict.kind
    rule = verdict.rule or ""
    responder = responders.get(kind, default_responder)
    try:
        status, out, body = responder(kind, rule, verdict.decision, accept, headers)
        return Denial(int(status), list(out), bytes(body))
    except Exception:
        logger.exception("throttlekit: the responder for %r failed; using the default", kind)
        return default_responder(kind, rule, verdict.decision, accept, headers)


class WSGIMiddleware:
    """Apply ``limiter``'s rules to every request of a WSGI ``app``.

    Args:
        app: the WSGI application.
        limiter: the :class:`~throttlekit.Limiter` holding the rules.
        trusted_proxies: overrides the limiter's (how far ``X-Forwarded-For`` is believed:
            0, a hop count, or trusted proxy CIDRs).
        ipv6_prefix: overrides the limiter's IPv6 key prefix.
        header_style: overrides the limiter's: ``"draft10"``, ``"legacy"``, ``"both"``,
            ``"none"``.
        headers_on_allowed: overrides the limiter's: rate-limit headers on allowed
            responses too.
        responders: ``{"throttled" | "blocked" | "banned": responder}`` replacing the
            default answer of that kind; ``responder(kind, rule, decision, accept,
            headers) -> Denial``.
        rules_file: load this TOML rules file into ``limiter`` (see docs/rules-file.md).
        reload_interval: with ``rules_file``, check it for changes at most every that many
            seconds, on requests (None: only ``limiter.reload()``).
    """

    __slots__ = ("app", "limiter", "on_allowed", "resolver", "responders", "style")

    def __init__(
        self,
        app: WSGIApplication,
        limiter: Limiter,
        *,
        trusted_proxies: int | Iterable[str] | None = None,
        ipv6_prefix: int | None = None,
        header_style: str | None = None,
        headers_on_allowed: bool | None = None,
        responders: Mapping[str, Responder] | None = None,
        rules_file: str | os.PathLike[str] | None = None,
        reload_interval: float | None = None,
    ) -> None:
        if not callable(app):
            raise ConfigError(f"app must be a WSGI callable, got {app!r}")
        if rules_file is not None:
            limiter.load_rules(rules_file, reload_interval=reload_interval)
        self.app = app
        self.limiter = limiter
        self.resolver, self.style, self.on_allowed, self.responders = resolve_options(
            limiter, trusted_proxies, ipv6_prefix, header_style, headers_on_allowed,
            responders,
        )

    def __repr__(self) -> str:
        return f"WSGIMiddleware({self.app!r}, {self.limiter!r})"

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        limiter = self.limiter
        rules = limiter._rules
        storage = limiter.storage
        # RequestView.from_environ, inlined (every request pays it)
        view = _new_view(RequestView)
        view.raw = environ
        view.resolver = self.resolver
        view.is_wsgi = True
        view.body = None
        view.max_form_bytes = DEFAULT_MAX_FORM_BYTES
        method = environ.get("REQUEST_METHOD")
        view.method = method if isinstance(method, str) else "GET"
        view._path = view._headers = view._client_ip = view._client_key = view._form = _UNSET
        view._peer = environ.get("REMOTE_ADDR")
        if (
            rules.fast and limiter.enabled and limiter._watcher is None
            and storage.__class__ is MemoryStorage and not storage._blocks
            and not rules.listeners.active
        ):
            # limiter.evaluate's in-memory fast path, called directly
            try:
                verdict = rules._fast(view, storage)
            except _RuleFailed as err:
                verdict = rules._refused_by_error(view, err)
        else:
            verdict = limiter.evaluate(view)
        # the lease step (begin), and the header set: written here when this is the
        # outermost entry, else recorded for the one that is
        outer = environ.get(OWNER_KEY)
        if outer is None:
            environ[OWNER_KEY] = limiter
        ex = None
        if verdict.pending or limiter._concurrency is not None:
            verdict, ex = begin(limiter, verdict, outer is not limiter)
        environ[VERDICT_KEY] = verdict
        if not verdict.allowed:
            accept = environ.get("HTTP_ACCEPT")
            denial = refusal(self.responders, self.style, verdict, accept)
            start_response(_status_line(denial.status), list(denial.headers))
            return [denial.body]
        policies: Sequence[tuple[str, Decision]] | None = verdict.policies
        if outer is not None:
            if verdict.policies:
                environ.setdefault(POLICIES_KEY, []).extend(verdict.policies)
            policies = None
        elif not self.on_allowed:
            policies = None
        if ex is not None:
            return self._settling(environ, start_response, ex, policies)
        if policies is None:
            return self.app(environ, start_response)
        style = self.style

        def add_headers(status: str, headers: list[tuple[str, str]], exc_info: Any = None
                        ) -> Callable[[bytes], object]:
            # header_policies, inlined (every allowed request pays it)
            if not environ.get(DENIED_KEY):
                inner = environ.get(POLICIES_KEY)
                found = [*policies, *inner] if inner else policies
                if found:
                    headers = [*headers, *rate_limit_headers(found, style)]
            return start_response(status, headers, exc_info)

        return self.app(environ, add_headers)

    def _settling(
        self, environ: WSGIEnvironment, start_response: StartResponse, ex: Exchange,
        policies: Sequence[tuple[str, Decision]] | None,
    ) -> Iterable[bytes]:
        """Run the app, then charge the count_when rules by the response's status and
        release the concurrency lease (when the server closes the response)."""
        style = self.style

        def recording(status: str, headers: list[tuple[str, str]], exc_info: Any = None
                      ) -> Callable[[bytes], object]:
            try:
                code = int(status.split(None, 1)[0])
            except (ValueError, IndexError, AttributeError):
                code = 500
            ex.respond(code, headers)
            if policies is not None:
                found = header_policies(environ, policies)
                if found:
                    headers = [*headers, *rate_limit_headers(found, style)]
            write = start_response(status, headers, exc_info)
            # Charge count_when rules as soon as the status is known: some servers and
            # test clients never close the response iterable. (settle is idempotent.)
            ex.settle()
            return write

        try:
            result = self.app(environ, recording)
        except BaseException:
            ex.end(failed=True)
            raise
        return _Settled(result, ex)


class _Settled:
    """The app's response iterable; ends the exchange when the server closes it."""

    __slots__ = ("ex", "result")

    def __init__(self, result: Iterable[bytes], ex: Exchange) -> None:
        self.result = result
        self.ex = ex

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.result
        except BaseException:
            self.ex.status = 500
            raise
        # Fully sent: release the slot now rather than waiting for a close() that some
        # servers and test clients never call (release is idempotent).
        self.ex.release()

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self.ex.end()
