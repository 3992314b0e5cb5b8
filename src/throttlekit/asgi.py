"""Pure ASGI middleware: the limiter's rules in front of any ASGI app.

>>> from throttlekit import ASGIMiddleware, Limiter
>>> async def app(scope, receive, send):
...     ...
>>> limiter = Limiter()
>>> limiter.throttle("per-ip", "100/minute")
>>> app = ASGIMiddleware(app, limiter)

A plain ASGI callable (no ``BaseHTTPMiddleware``): response bodies stream through
untouched, and the request body is read ahead only when a rule reads ``view.form`` and the
request carries a small form (it is then replayed to the app). ``http`` and ``websocket``
scopes are evaluated; ``lifespan`` and anything else pass through. A refused websocket
handshake is answered with the refusal (429 for a throttle, 403 for a block or ban) where the
server supports the ``websocket.http.response`` extension, else closed with code 1008 (policy
violation). Only async storage calls are made.

The :class:`~throttlekit.Verdict` is in ``scope["throttlekit.verdict"]`` and in
``scope["state"]["throttlekit.verdict"]`` (Starlette: ``request.state``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from ._errors import ConfigError
from ._exchange import (
    CHALLENGE_KEY,
    DENIED_KEY,
    OWNER_KEY,
    POLICIES_KEY,
    Exchange,
    Policies,
    aenter,
    decode_headers,
    serve_asgi,
)
from ._headers import header_pairs
from ._request import DEFAULT_MAX_FORM_BYTES, RequestView, build_view
from ._responder import VERDICT_KEY, Entry, EntryOptions
from ._responses import encode_headers as _encode
from ._responses import rate_limit_headers_raw
from ._waiting import adecide_waiting, check_wait

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

    from ._limiter import Limiter
    from ._rules import Verdict

__all__ = ["ASGIApp", "ASGIMiddleware", "Message", "Receive", "Scope", "Send"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_FORM_TYPES = (
    b"application/x-www-form-urlencoded", b"multipart/form-data", b"application/json",
)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ASGIMiddleware(Entry):
    """Apply ``limiter``'s rules to every ``http`` and ``websocket`` request of ``app``.

    Takes the same options as :class:`~throttlekit.WSGIMiddleware`, plus
    ``max_form_bytes``: the largest request body read ahead for rules that use
    ``view.form`` (bigger bodies stream to the app untouched, and ``form`` is empty).
    Concurrency leases (``limiter.concurrency``, ``limiter.shed``) are taken for ``http``
    requests and released when the app returns.
    """

    __slots__ = ("max_form_bytes", "wait")
    _APP = "an ASGI"
    app: ASGIApp

    def __init__(
        self, app: ASGIApp, limiter: Limiter, *, max_form_bytes: int = DEFAULT_MAX_FORM_BYTES,
        wait: float = 0.0, **options: Unpack[EntryOptions],
    ) -> None:
        if isinstance(max_form_bytes, bool) or not isinstance(max_form_bytes, int) or (
            max_form_bytes < 0
        ):
            raise ConfigError(f"max_form_bytes must be an integer >= 0, got {max_form_bytes!r}")
        super().__init__(app, limiter, **options)
        self.max_form_bytes = max_form_bytes
        #: a throttle's refusal due within ``wait`` seconds is awaited, then decided once
        #: more (nginx's ``limit_req`` delay; a "waited" event tells it): see docs
        self.wait = check_wait(wait, "ASGIMiddleware")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        limiter = self.limiter
        outer = scope.get(OWNER_KEY)
        if outer is limiter:  # an outer entry of this limiter ran the pipeline already
            await self.app(scope, receive, send)
            return
        engine = limiter.engine
        body = None
        if engine.rules.needs_form and has_small_form(scope, self.max_form_bytes):
            body, receive = await read_ahead(receive, self.max_form_bytes)
        view = build_view(RequestView, scope, self.resolver,  # type: ignore[arg-type]
                          body, self.max_form_bytes, False)
        # a local store never blocks: its decision needs no await (see Engine.remote)
        if self.wait:  # wait=: a refusal due within it waits once (and is told once)
            verdict = await adecide_waiting(limiter, self.wait, view)
        else:
            verdict = await engine.aevaluate(view) if engine.remote else engine.evaluate(view)
        if outer is None:
            scope[OWNER_KEY] = limiter
        ex = None
        if verdict.pending or engine.steps:
            mark = scope.get(CHALLENGE_KEY)
            if mark is not None and mark.reads_form and body is None and has_small_form(
                scope, self.max_form_bytes
            ):  # the challenge step answers this post itself: it reads its form
                view.body, receive = await read_ahead(receive, self.max_form_bytes)
            verdict, ex = await aenter(limiter, verdict)
        scope[VERDICT_KEY] = verdict  # _keep, inlined (every request pays it)
        state = scope.get("state")
        if state is None:
            scope["state"] = {VERDICT_KEY: verdict}
        elif state.__class__ is dict or isinstance(state, MutableMapping):
            state[VERDICT_KEY] = verdict
        # the view reads a copy of the scope from here on, the scope as the rules read it:
        # no reference cycle through the verdict (RequestView.detach)
        view.detach()
        if not verdict.allowed:
            await self._refuse(send, view, verdict)
            return
        if outer is not None:  # an outer entry writes the header set: record ours
            if verdict.policies:
                scope.setdefault(POLICIES_KEY, []).extend(verdict.policies)
            own = None
        else:
            own = verdict.policies if self.on_allowed else None
        if ex is not None or own is None:
            await serve_asgi(self.app, scope, receive, send, ex, own, self.style)
            return
        # the fields worked out once, here; again only when an inner entry added its own
        extra = rate_limit_headers_raw(own, self.style) if own else None

        # A plain function returning send's awaitable: one coroutine less per message.
        # What it reads is bound as defaults (one tuple), not closed over (a cell each).
        def add_headers(message: Message, scope: Scope = scope, policies: Policies = own,
                        send: Send = send, extra: list[tuple[bytes, bytes]] | None = extra,
                        style: str = self.style) -> Awaitable[None]:
            # header_policies, inlined (every allowed request pays it)
            if message["type"] == "http.response.start" and not scope.get(DENIED_KEY):
                inner = scope.get(POLICIES_KEY)
                if inner:
                    extra = rate_limit_headers_raw([*policies, *inner], style)
                if extra:
                    message = {**message, "headers": [*(message.get("headers") or ()), *extra]}
            return send(message)

        await self.app(scope, receive, add_headers)

    async def _refuse(self, send: Send, view: RequestView, verdict: Verdict) -> None:
        denial = self.responder.refuse(verdict, verdict.policies, view.headers.get("accept"))
        await send({"type": "http.response.start", "status": denial.status,
                    "headers": _encode(denial.headers)})
        await send({"type": "http.response.body", "body": denial.body})

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        limiter = self.limiter
        view = RequestView.from_scope(scope, self.resolver)  # type: ignore[arg-type]
        engine = limiter.engine
        verdict = await engine.aevaluate(view) if engine.remote else engine.evaluate(view)
        _keep(scope, verdict)
        try:
            await self._serve_socket(scope, receive, send, view, verdict)
        finally:
            view.detach()  # the connection is over: no reference cycle

    async def _serve_socket(self, scope: Scope, receive: Receive, send: Send,
                            view: RequestView, verdict: Verdict) -> None:
        limiter = self.limiter
        if not verdict.allowed:
            # The handshake has to be received before it can be answered.
            message = await receive()
            if message.get("type") != "websocket.connect":
                return
            extensions = scope.get("extensions") or {}
            if "websocket.http.response" in extensions:
                denial = self.responder.refuse(verdict, verdict.policies,
                                               view.headers.get("accept"))
                await send({"type": "websocket.http.response.start", "status": denial.status,
                            "headers": _encode(denial.headers)})
                await send({"type": "websocket.http.response.body", "body": denial.body})
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        extra = None
        if self.on_allowed and verdict.policies:
            extra = rate_limit_headers_raw(verdict.policies, self.style)
        # WebSockets take no lease (documented); count_when is settled like http's
        ex = Exchange(limiter, verdict, None) if verdict.pending else None
        if not extra and ex is None:
            await self.app(scope, receive, send)
            return

        async def wrapped(message: Message) -> None:
            kind = message["type"]
            if kind == "websocket.accept":
                if ex is not None:
                    ex.respond(101, decode_headers(message.get("headers") or ()))
                if extra:
                    message = {**message, "headers": [*(message.get("headers") or []), *extra]}
            elif kind == "websocket.http.response.start" and ex is not None:
                ex.respond(message.get("status", 403),
                           decode_headers(message.get("headers") or ()))
            await send(message)

        if ex is None:
            await self.app(scope, receive, wrapped)
            return
        ex.status = 403  # closed before accepting: the handshake was refused
        async with ex:
            await self.app(scope, receive, wrapped)


def _keep(scope: Scope, verdict: Verdict) -> None:
    """The verdict where the app finds it: the scope, and its ``state`` (Starlette)."""
    scope[VERDICT_KEY] = verdict
    state = scope.get("state")
    if state is None:
        scope["state"] = {VERDICT_KEY: verdict}
    elif state.__class__ is dict or isinstance(state, MutableMapping):
        state[VERDICT_KEY] = verdict


def has_small_form(scope: Scope, max_form_bytes: int) -> bool:
    """A body ``RequestView.form`` reads (urlencoded, multipart, JSON), small enough to
    read ahead."""
    if scope.get("method") not in _BODY_METHODS:
        return False
    ctype = b""
    length = None
    for name, value in header_pairs(scope.get("headers")):
        if name == b"content-type":
            ctype = value
        elif name == b"content-length":
            try:
                length = int(value)
            except (TypeError, ValueError):
                return False
    if not isinstance(ctype, bytes):
        return False
    mimetype = ctype.split(b";", 1)[0].strip().lower()
    if mimetype not in _FORM_TYPES and not (
        mimetype.startswith(b"application/") and mimetype.endswith(b"+json")
    ):
        return False
    return length is None or 0 <= length <= max_form_bytes


async def read_ahead(receive: Receive, max_form_bytes: int) -> tuple[bytes | None, Receive]:
    """Read the body (up to ``max_form_bytes``; None when it is bigger or the client went
    away) and a ``receive`` that replays every message read, then reads on."""
    messages: list[Message] = []
    size = 0
    complete = False
    while True:
        message = await receive()
        messages.append(message)
        if message.get("type") != "http.request":
            break  # disconnect: replay it too
        chunk = message.get("body") or b""
        size += len(chunk) if isinstance(chunk, (bytes, bytearray)) else 0
        if not message.get("more_body", False):
            complete = True
            break
        if size > max_form_bytes:
            break
    body = None
    if complete and size <= max_form_bytes:
        try:
            body = b"".join(m.get("body") or b"" for m in messages)
        except TypeError:
            body = None  # a malformed message: no form, the app gets it as it came

    async def replay() -> Message:
        if messages:
            return messages.pop(0)
        return await receive()

    return body, replay

