"""An opt-in JSON status endpoint: what the monitor sees, for operators and scripts.

Off unless mounted. With a ``token``, every request must send ``Authorization: Bearer
<token>``, from whatever address (loopback included), except from the addresses the operator
lists in ``allow``; without a token, only ``allow`` (default: loopback) gets the status.
Others get 401 (token set) or 403. ``allow`` matches the socket peer, never
``X-Forwarded-For``: behind a reverse proxy every request comes from the proxy (on the same
host: from loopback), so set a token there and keep the proxy's address out of ``allow``.

WSGI::

    endpoint = StatusEndpoint(monitor, token=os.environ["THROTTLEKIT_STATUS_TOKEN"])
    app = WSGIMiddleware(StatusMiddleware(app, endpoint), limiter)  # rate limited too

ASGI: ``ASGIStatusMiddleware(app, endpoint)`` the same way. ``GET <path>`` answers::

    {"time": ..., "requests": ..., "anomaly": false, "overall": {"rate": ..., "baseline": ...},
     "rules": {...}, "counters": {"per-ip": {"allowed": 1200, "throttled": 3}},
     "top": [["203.0.113.9", 420], ...], "recent_anomalies": [...],
     "shield": {"active": false, "bans": 0}, "blocked": [{"key": ..., "expires_at": ...}]}

The same path answers an HTML page for operators (``Accept: text/html``, or
``?format=html``; ``?format=json`` forces JSON), under the same access rules: see
:mod:`throttlekit.monitor._html`. With ``incidents`` (an
:class:`~throttlekit.monitor.incident.Incidents`), ``<path>/incidents`` answers the recent
incident reports, newest first (``{"incidents": [...]}``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

from .._errors import ConfigError
from . import _html

if TYPE_CHECKING:
    from ._monitor import Monitor
    from .incident import Incidents
    from .shield import Shield

__all__ = ["ASGIStatusMiddleware", "StatusEndpoint", "StatusMiddleware"]

logger = logging.getLogger("throttlekit.monitor")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
_HTML = [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store"),
         ("Content-Security-Policy", _html.CSP), ("X-Content-Type-Options", "nosniff"),
         ("Referrer-Policy", "no-referrer")]
_INCIDENTS = "/incidents"
_LOOPBACK = ("127.0.0.1", "::1")


def _digest(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


class StatusEndpoint:
    """The status logic, framework-neutral: authorise a request, build the JSON.

    Args:
        monitor: the Monitor to report.
        shield: the Shield, if any (its state is included).
        limiter: include the live dynamic blocklist (``limiter.blocked()``, at most
            ``max_blocked`` entries).
        path: where the middleware wrappers mount it (default ``/throttlekit/status``).
        token: a bearer token (at least 16 characters); when set, it is required from
            every address not listed in ``allow``.
        allow: addresses or networks allowed without a token. Default: loopback when no
            token is set; no address when a token is set (list addresses explicitly to let
            them in without it).
        incidents: the incident recorder, if any: its reports are served at
            ``<path>/incidents``.
    """

    def __init__(
        self,
        monitor: Monitor,
        *,
        shield: Shield | None = None,
        limiter: Any = None,
        path: str = "/throttlekit/status",
        token: str | None = None,
        allow: Iterable[str] | None = None,
        max_blocked: int = 100,
        incidents: Incidents | None = None,
    ) -> None:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigError(f"path must start with '/', got {path!r}")
        if token is not None and (not isinstance(token, str) or len(token) < 16):
            raise ConfigError("token must be a string of at least 16 characters")
        if allow is None:
            allow = () if token is not None else _LOOPBACK
        if isinstance(allow, (str, bytes)) or not isinstance(allow, Iterable):
            raise ConfigError(f"allow must be a list of addresses or networks, got {allow!r}")
        nets = []
        for entry in allow:
            try:
                if not isinstance(entry, str):
                    raise TypeError(entry)
                nets.append(ipaddress.ip_network(entry.strip(), strict=False))
            except (ValueError, TypeError):
                raise ConfigError(f"allow: bad address or network {entry!r}") from None
        self.monitor, self.shield, self.limiter = monitor, shield, limiter
        self.path, self.max_blocked, self.incidents = path, max_blocked, incidents
        self.incidents_path = path.rstrip("/") + _INCIDENTS
        # compared as digests: constant time, and the token's length does not leak either
        self._token = _digest(token.encode()) if token else None
        self._nets = tuple(nets)

    def authorize(self, peer: str | None, authorization: str | None) -> int:
        """200 when the request may see the status, else 401 or 403."""
        if self._token is not None and authorization is not None:
            scheme, _, credentials = authorization.strip().partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                # headers arrive latin-1 decoded (WSGI, ASGI): back to the bytes sent
                _digest(credentials.strip().encode("latin-1", "replace")), self._token
            ):
                return 200
        if peer and self._nets:
            try:
                ip = ipaddress.ip_address(peer.split("%", 1)[0])
            except ValueError:
                ip = None
            if ip is not None:
                mapped = getattr(ip, "ipv4_mapped", None)
                if mapped is not None:
                    ip = mapped
                if any(ip in net for net in self._nets):
                    return 200
        return 401 if self._token is not None else 403

    def payload(self) -> dict[str, Any]:
        """The status document (JSON-ready)."""
        data = self.monitor.snapshot()
        if self.shield is not None:
            data["shield"] = {
                "active": self.shield.active, "bans": self.shield.bans_total,
                "engagements": self.shield.engagements, "dry_run": self.shield.dry_run,
            }
        if self.limiter is not None:
            try:
                blocks = self.limiter.blocked()
            except Exception as exc:  # a status page must not fail with the store
                data["blocked_error"] = f"{type(exc).__name__}: {exc}"
            else:
                data["blocked_total"] = len(blocks)
                data["blocked"] = [
                    {"key": b.key, "expires_at": None if b.expires_at == float("inf")
                     else b.expires_at, "reason": b.reason}
                    for b in blocks[: self.max_blocked]
                ]
        step = getattr(getattr(self.limiter, "engine", None), "admission", None)
        if step is not None:
            data["admission"] = step.snapshot()._asdict()
        return data

    def serves(self, path: str | None) -> bool:
        """True for the paths this endpoint answers (the status, and the incidents)."""
        return path == self.path or (self.incidents is not None and path == self.incidents_path)

    def respond(
        self, method: str, peer: str | None, authorization: str | None, *,
        path: str | None = None, query: str = "", accept: str | None = None,
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """(status, headers, body) for one request to the endpoint: the JSON, or the
        HTML page (``Accept: text/html`` or ``?format=html``), or at ``<path>/incidents``
        the incident reports."""
        code = self.authorize(peer, authorization)
        if code == 401:
            return 401, [*_JSON, ("WWW-Authenticate", 'Bearer realm="throttlekit"')], \
                b'{"error": "unauthorized"}'
        if code == 403:
            return 403, list(_JSON), b'{"error": "forbidden"}'
        if method not in ("GET", "HEAD"):
            return 405, [*_JSON, ("Allow", "GET, HEAD")], b'{"error": "method not allowed"}'
        html = _wants_html(query, accept)
        try:
            if path is not None and path != self.path and self.incidents is not None:
                html = False
                data: dict[str, Any] = {"incidents": [
                    r.as_dict() for r in reversed(self.incidents.reports)]}
            else:
                data = self.payload()
            body = _html.page(data) if html else json.dumps(data, default=str).encode()
        except Exception:
            logger.exception("the status endpoint failed")
            return 500, list(_JSON), b'{"error": "status unavailable"}'
        return 200, list(_HTML if html else _JSON), b"" if method == "HEAD" else body

    # -- mounting ---------------------------------------------------------------------

    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        """Answer a WSGI request for the endpoint."""
        code, headers, body = self.respond(
            environ.get("REQUEST_METHOD", "GET"), environ.get("REMOTE_ADDR"),
            environ.get("HTTP_AUTHORIZATION"), path=environ.get("PATH_INFO"),
            query=environ.get("QUERY_STRING", ""), accept=environ.get("HTTP_ACCEPT"),
        )
        headers.append(("Content-Length", str(len(body))))
        start_response(f"{code} {_REASONS[code]}", headers)
        return [body]

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer an ASGI ``http`` request for the endpoint."""
        client = scope.get("client")
        peer = client[0] if client else None
        auth = accept = None
        for name, value in scope.get("headers") or ():
            name = name.lower()
            if name == b"authorization":
                auth = value.decode("latin-1")
            elif name == b"accept":
                accept = value.decode("latin-1")
        code, headers, body = self.respond(
            scope.get("method", "GET"), peer, auth, path=scope.get("path"),
            query=(scope.get("query_string") or b"").decode("latin-1"), accept=accept)
        headers.append(("Content-Length", str(len(body))))
        await send({
            "type": "http.response.start", "status": code,
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        })
        await send({"type": "http.response.body", "body": body})


def _wants_html(query: str, accept: str | None) -> bool:
    """``?format=html`` or ``?format=json`` when given, else whether ``Accept`` names HTML."""
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == "format" and value in ("html", "json"):
            return value == "html"
    return accept is not None and "text/html" in accept.lower()


_REASONS = {200: "OK", 401: "Unauthorized", 403: "Forbidden", 405: "Method Not Allowed",
            500: "Internal Server Error"}


class StatusMiddleware:
    """WSGI: serve ``endpoint`` at ``endpoint.path``, pass everything else to ``app``."""

    def __init__(self, app: Callable[..., Iterable[bytes]], endpoint: StatusEndpoint) -> None:
        self.app = app
        self.endpoint = endpoint
        self.path = endpoint.path

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if self.endpoint.serves(environ.get("PATH_INFO")):
            return self.endpoint.wsgi(environ, start_response)
        return self.app(environ, start_response)


class ASGIStatusMiddleware:
    """ASGI: serve ``endpoint`` at ``endpoint.path`` (``http`` only), pass the rest on."""

    def __init__(self, app: ASGIApp, endpoint: StatusEndpoint) -> None:
        self.app = app
        self.endpoint = endpoint
        self.path = endpoint.path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.endpoint.serves(scope.get("path")):
            await self.endpoint.asgi(scope, receive, send)
            return
        await self.app(scope, receive, send)
