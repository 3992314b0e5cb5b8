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

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any

from ._admission import Ticket
from ._exchange import (
    DENIED_KEY,
    OWNER_KEY,
    POLICIES_KEY,
    Exchange,
    Policies,
    enter,
)
from ._request import DEFAULT_MAX_FORM_BYTES, RequestView, build_view
from ._responder import RESPONDER_KINDS, VERDICT_KEY, Entry, resolve_options, status_line
from ._responder import ResponderFn as Responder
from ._responses import rate_limit_headers

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from ._decision import Decision
    from ._rules import Verdict

__all__ = ["RESPONDER_KINDS", "VERDICT_KEY", "Responder", "WSGIMiddleware", "resolve_options"]

class WSGIMiddleware(Entry):
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
        responders: ``{"throttled" | "blocked" | "banned" | "challenged" | "shed":
            responder}`` replacing the default answer of that kind; ``responder(kind, rule,
            decision, accept, headers) -> Denial``.
        rules_file: load this TOML rules file into ``limiter`` (see docs/rules-file.md).
        reload_interval: with ``rules_file``, check it for changes at most every that many
            seconds, on requests (None: only ``limiter.reload()``).
    """

    __slots__ = ()
    app: WSGIApplication

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        limiter = self.limiter
        outer = environ.get(OWNER_KEY)
        if outer is limiter:  # an outer entry of this limiter ran the pipeline already
            return self.app(environ, start_response)
        engine = limiter.engine
        view = build_view(RequestView, environ, self.resolver, None, DEFAULT_MAX_FORM_BYTES, True)
        verdict = engine.evaluate(view)
        # the steps before the app (begin: challenge, admission, lease), and the header
        # set: written here when this is the outermost entry, else recorded for the one
        # that is
        if outer is None:
            environ[OWNER_KEY] = limiter
        ex = None
        if verdict.pending or engine.steps:
            verdict, ex = enter(limiter, verdict)
        environ[VERDICT_KEY] = verdict
        # No reference cycle through the verdict (RequestView.detach): done now (the view
        # reads the environ as the rules read it), or when the response is over if a body is
        # left for the view's form (a Content-Type, a length not 0: HTTP/2 may send neither
        # a length nor a Transfer-Encoding), whose replay must land in the environ.
        late = bool(environ.get("CONTENT_TYPE")) and environ.get(
            "CONTENT_LENGTH") != "0" and not view.form_read
        if not late:
            view.detach()
        try:
            if not verdict.allowed:
                result: Iterable[bytes] = self._refuse(environ, start_response, verdict)
            else:
                policies: Policies | None = verdict.policies
                if outer is not None:
                    if policies:
                        environ.setdefault(POLICIES_KEY, []).extend(policies)
                    policies = None
                elif not self.on_allowed:
                    policies = None
                if ex is not None and not isinstance(ex, Ticket):
                    result = self._settling(environ, start_response, ex, policies)
                else:
                    if policies is None:
                        respond = start_response
                    else:
                        # The fields worked out once, here; again only when an inner entry
                        # added its own. Bound as defaults (one tuple), not closed over.
                        own = rate_limit_headers(policies, self.style) if policies else None
                        def respond(status: str, headers: list[tuple[str, str]],
                                    exc_info: Any = None, environ: WSGIEnvironment = environ,
                                    policies: Policies = policies,
                                    start_response: StartResponse = start_response,
                                    own: list[tuple[str, str]] | None = own,
                                    style: str = self.style) -> Callable[[bytes], object]:
                            # header_policies, inlined (every allowed request pays it)
                            if not environ.get(DENIED_KEY):
                                inner = environ.get(POLICIES_KEY)
                                if inner:
                                    headers = [*headers, *rate_limit_headers(
                                        [*policies, *inner], style)]
                                elif own:
                                    headers = [*headers, *own]
                            return start_response(status, headers, exc_info)

                    if ex is None:
                        result = self.app(environ, respond)
                    else:  # only an admission slot: released when the response ends
                        try:
                            result = self.app(environ, respond)
                        except BaseException:
                            ex.release()
                            raise
                        result = _releasing(result, ex)
        except BaseException:
            if late:
                view.detach()
            raise
        # late: the app's code may run while the server reads the response (a generator)
        return _detaching(result, view, environ) if late else result

    def _refuse(self, environ: WSGIEnvironment, start_response: StartResponse,
                verdict: Verdict) -> list[bytes]:
        """The responder's answer to a refused request."""
        denial = self.responder.refuse(verdict, verdict.policies, environ.get("HTTP_ACCEPT"))
        start_response(status_line(denial.status), list(denial.headers))
        return [denial.body]

    def _settling(
        self, environ: WSGIEnvironment, start_response: StartResponse, ex: Exchange,
        policies: Sequence[tuple[str, Decision]] | None,
    ) -> Iterable[bytes]:
        """Run the app, then charge the count_when rules by the response's status and
        release the concurrency lease (when the server closes the response)."""
        style = self.style
        pending = ex.verdict.pending  # count_when to charge: the response is recorded

        def recording(status: str, headers: list[tuple[str, str]], exc_info: Any = None
                      ) -> Callable[[bytes], object]:
            if pending:
                try:
                    code = int(status.split(None, 1)[0])
                except (ValueError, IndexError, AttributeError):
                    code = 500
                ex.respond(code, headers)
            if policies is not None and not environ.get(DENIED_KEY):
                # header_policies, inlined (every admitted request pays it)
                inner = environ.get(POLICIES_KEY)
                found = [*policies, *inner] if inner else policies
                if found:
                    headers = [*headers, *rate_limit_headers(found, style)]
            write = start_response(status, headers, exc_info)
            # Charge count_when rules as soon as the status is known: some servers and
            # test clients never close the response iterable. (settle is idempotent.)
            if pending:
                ex.settle()
            return write

        try:
            result = self.app(environ, recording if pending or policies is not None
                              else start_response)
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
            _close(self.result)
        finally:
            self.ex.end()


def _releasing(result: Iterable[bytes], ticket: Ticket) -> Iterable[bytes]:
    """``result``, releasing ``ticket`` (an admission slot) when the server closes it or
    has read it to the end."""
    release = ticket.release
    if result.__class__ is list:  # nothing of its own to close (the common answer)
        done = _Released(result, iter(release, None))
        done.close = release  # (release is idempotent: once, whichever comes first)
        return done
    tail: Iterator[None] = iter(release, None)
    closing = _ReleasedClosing(result, tail)
    closing.result = result
    closing.tail = tail
    return closing


def _detaching(result: Iterable[bytes], view: RequestView, environ: WSGIEnvironment
               ) -> Iterable[bytes]:
    """``result``, detaching ``view`` (still on the environ: a body is left for its
    ``form``) when the response is over: now when the app has run (a list, a file), else
    when the server has read the response to its end or closes it (a generator's code runs
    as the server reads it, and may read ``view.form``, then the body)."""
    wrapper = environ.get("wsgi.file_wrapper")
    if result.__class__ is list or (wrapper.__class__ is type and isinstance(result, wrapper)):
        view.detach()  # (a file wrapper is kept as it is, for the server's sendfile)
        return result
    return _Detaching(result, view)


class _Detaching:
    """The response of a request whose view is detached when it is over (see
    :func:`_detaching`)."""

    __slots__ = ("result", "view")

    def __init__(self, result: Iterable[bytes], view: RequestView) -> None:
        self.result = result
        self.view: RequestView | None = view

    def __iter__(self) -> Iterator[bytes]:
        yield from self.result
        self._detach()  # read to its end: some servers and test clients never close it

    def _detach(self) -> None:
        view, self.view = self.view, None
        if view is not None:
            view.detach()

    def close(self) -> None:
        try:
            _close(self.result)
        finally:
            self._detach()


class _Released(chain):  # type: ignore[type-arg]
    """The app's response list when the request holds only an admission slot (no
    ``count_when`` to charge, no lease): the body, then the slot given back, once, when
    the body is sent or the server closes the response, whichever comes first.

    A chain (C) of the app's list and ``iter(ticket.release, None)``, whose first ``next``
    gives the slot back and ends it (release returns None, the sentinel); ``close`` is the
    ticket's ``release`` itself (idempotent): no Python call per request but the release."""

    __slots__ = ("close",)
    close: Callable[[], None]


class _ReleasedClosing(chain):  # type: ignore[type-arg]
    """:class:`_Released` for an app's iterable other than a list: ``close`` closes it
    too, as PEP 3333 asks."""

    __slots__ = ("result", "tail")
    result: Iterable[bytes]
    tail: Iterator[None]

    def close(self) -> None:
        try:
            _close(self.result)
        finally:
            next(self.tail, None)  # released unless the body was sent to its end


def _close(result: Iterable[bytes]) -> None:
    """Close the app's response iterable, as PEP 3333 asks, where it can be closed."""
    close = getattr(result, "close", None)
    if close is not None:
        close()
