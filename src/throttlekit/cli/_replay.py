"""One pass over a scenario's traffic, replayed twice: without throttlekit and with it.

Each request goes to two models of the same server (:mod:`._server`), with the same
service time. Unprotected, it goes straight to its server. Protected, it is first a WSGI
environ called in-process through the real middleware at the request's simulated time
(the limiter's clock is the simulation's): the app behind the middleware answers at
once with a :class:`Visit`, which the protected server then queues and serves; the
middleware's response is ended (iterated and closed) at the simulated time the server
finishes it, or drops it. A refusal is counted by its status; a challenge (an answer
below 400 that never reached the app) is followed as a browser would by clients that
can: the redirect, with the cookies the client keeps, or the proof-of-work page, solved.
"""

from __future__ import annotations

import heapq
import io
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from html import unescape
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from ._report import RunStats
from ._server import Job, Server, ServiceTimes

if TYPE_CHECKING:
    from .scenarios import Request, Scenario

__all__ = ["Replay", "Visit"]

#: a client follows at most this many challenge answers for one request
MAX_HOPS = 4
#: seconds a browser takes to follow a redirect, and to solve a proof-of-work page
REDIRECT_SECONDS = 0.05
WORK_SECONDS = 1.0

_BODY = (b"ok",)
_OK_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", "2")]
_SERVER_DROP = "503 Service Unavailable"
_FIELD = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)">')
_FORM = re.compile(r'<form id="tk-work" method="post" action="([^"]*)" data-difficulty="(\d+)"')


class Visit(Job):
    """One request of the protected run, and its WSGI response: the app answers with
    this object at once; the status line is sent when the server finishes (or drops) it."""

    __slots__ = ("added", "body", "hops", "replay", "req", "session", "start_response",
                 "status")

    def __init__(self, replay: Replay, req: Request, service: float) -> None:
        # Job's fields, set here: one call less per request
        self.arrival = self.started = req.t
        self.service = service
        self.group = req.group
        self.legitimate = req.legitimate
        self.replay = replay
        self.req = req
        self.hops = 0
        self.added = 0.0
        self.start_response: Callable[..., Any] | None = None
        self.body: Iterable[bytes] = ()
        self.status = "200 OK"
        self.session = False

    def __iter__(self) -> Iterator[bytes]:
        assert self.start_response is not None
        headers = _OK_HEADERS
        if self.session:  # the app starts a session
            sid = f"{self.req.group}.{self.req.client}"
            headers = [*headers, ("Set-Cookie", f"sid={sid}; Path=/; HttpOnly")]
        self.start_response(self.status, headers)
        return iter(_BODY)

    def complete(self, latency: float) -> None:
        self.replay.respond(self, latency)

    def drop(self) -> None:
        self.status = _SERVER_DROP
        self.replay.respond(self, None)


class Replay:
    """Both runs of one scenario (see the module docstring)."""

    def __init__(self, scenario: Scenario, seed: int, clock: Any, start: float,
                 wrap: Callable[[Callable[..., Iterable[bytes]]], Any]) -> None:
        groups = [g.name for g in scenario.groups]
        spec = scenario.server
        self._cookies = [g.cookies for g in scenario.groups]
        self._follows = [g.follows_challenge for g in scenario.groups]
        self.unprotected = RunStats(groups, spec.timeout, scenario.duration, spec.workers)
        self.protected = RunStats(groups, spec.timeout, scenario.duration, spec.workers)
        self._bare = Server(spec, self.unprotected)
        self._server = Server(spec, self.protected)
        self._service = ServiceTimes(spec, seed)
        self._clock = clock
        self._start = start
        self._middleware = wrap(self._app)
        self._visit: Visit | None = None
        self._answer: tuple[str, list[tuple[str, str]]] = ("", [])
        self._jars: dict[tuple[int, int], dict[str, str]] = {}
        self._follow: list[tuple[float, int, Visit, str, str, bytes]] = []
        self._followed = 0
        #: wall-clock seconds the middleware took per request it saw, arrival and end
        self.added: list[float] = []

    # -- the WSGI side ----------------------------------------------------------------

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Visit:
        visit = self._visit
        assert visit is not None
        visit.start_response = start_response
        visit.session = "sid=" not in environ.get("HTTP_COOKIE", "")
        return visit

    def _start_response(self, status: str, headers: list[tuple[str, str]],
                        exc_info: Any = None) -> Callable[[bytes], None]:
        self._answer = (status, headers)
        return _discard

    # -- the traffic ------------------------------------------------------------------

    def arrive(self, req: Request) -> None:
        """``req``, sent at ``req.t``, in both runs."""
        t = req.t
        follow = self._follow
        while follow and follow[0][0] <= t:
            now, _, visit, method, target, body = heapq.heappop(follow)
            self._server.advance(now)
            self._send(visit, now, method, target, body)
        service = self._service(req.path)
        bare = self._bare
        bare.advance(t)
        bare.offer(Job(t, service, req.group, req.legitimate), t)
        self._server.advance(t)
        target = f"{req.path}?{req.query}" if req.query else req.path
        self._send(Visit(self, req, service), t, req.method, target, req.body)

    def finish(self) -> None:
        """Serve what is left (challenges followed, queues drained)."""
        while self._follow:
            now, _, visit, method, target, body = heapq.heappop(self._follow)
            self._server.advance(now)
            self._send(visit, now, method, target, body)
        self._bare.finish()
        self._server.finish()

    def _send(self, visit: Visit, now: float, method: str, target: str, body: bytes) -> None:
        """One request of ``visit`` through the middleware, at ``now``."""
        self._clock.now = self._start + now
        req = visit.req
        keeps = self._cookies[req.group]
        jar = self._jars.get((req.group, req.client)) if keeps else None
        environ = _environ(req, method, target, body, jar)
        self._visit = visit
        perf = time.perf_counter
        t0 = perf()
        out = self._middleware(environ, self._start_response)
        if visit.start_response is not None:  # the app has it: to the server
            visit.added = perf() - t0
            visit.body = out
            self._server.offer(visit, now)
            return
        page = _drain(out)
        self.added.append(perf() - t0)
        status, headers = self._answer
        code = int(status[:3])
        if keeps:
            self._keep_cookies(req, headers)
        if code < 400 and self._follows[req.group] and visit.hops < MAX_HOPS:
            visit.hops += 1
            step = _next_step(headers, page)
            if step is not None:
                wait, method, target, body = step
                self._followed += 1
                heapq.heappush(self._follow,
                               (now + wait, self._followed, visit, method, target, body))
                return
        self.protected.on_stopped(visit, "challenge" if code < 400 else str(code))

    def respond(self, visit: Visit, latency: float | None) -> None:
        """The server finished ``visit`` (``latency`` after it was sent) or dropped it
        (None): the middleware's response ends now, on the simulated clock."""
        if latency is not None:
            self._clock.now = self._start + visit.arrival + latency
        t0 = time.perf_counter()
        _drain(visit.body)
        self.added.append(visit.added + time.perf_counter() - t0)
        if latency is not None and latency <= self.protected.timeout \
                and self._cookies[visit.group]:
            self._keep_cookies(visit.req, self._answer[1])

    def _keep_cookies(self, req: Request, headers: list[tuple[str, str]]) -> None:
        for name, value in headers:
            if name.lower() == "set-cookie":
                cookie, _, _ = value.partition(";")
                key, _, val = cookie.partition("=")
                self._jars.setdefault((req.group, req.client), {})[key.strip()] = val.strip()


def _discard(data: bytes) -> None:
    """The ``write`` of ``start_response``: the simulation keeps no bodies."""


def _drain(out: Iterable[bytes]) -> bytes:
    """Send a WSGI response: its body, iterated, then closed."""
    try:
        return b"".join(out)
    finally:
        close = getattr(out, "close", None)
        if close is not None:
            close()


def _next_step(headers: list[tuple[str, str]], body: bytes
               ) -> tuple[float, str, str, bytes] | None:
    """What a browser does with a challenge answer: (after how long, method, target,
    body); None when it cannot go on."""
    for name, value in headers:
        if name.lower() == "location":
            return REDIRECT_SECONDS, "GET", value, b""
    page = body.decode("utf-8", "replace")
    form = _FORM.search(page)
    if form is None:
        return None
    from .._challenge import solve

    fields = {name: unescape(value) for name, value in _FIELD.findall(page)}
    solution = solve(fields.get("challenge", ""), int(form.group(2)))
    if solution is None:
        return None
    fields["solution"] = str(solution)
    return WORK_SECONDS, "POST", unescape(form.group(1)), urlencode(fields).encode()


def _environ(req: Request, method: str, target: str, body: bytes,
             jar: dict[str, str] | None) -> dict[str, Any]:
    """The WSGI environ of one simulated request."""
    path, _, query = target.partition("?")
    environ = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "sim.test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": req.address,
        "HTTP_HOST": "sim.test",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if body:
        environ["CONTENT_TYPE"] = "application/x-www-form-urlencoded"
        environ["CONTENT_LENGTH"] = str(len(body))
    for k, v in req.headers:
        environ["HTTP_" + k.upper().replace("-", "_")] = v
    if jar:
        environ["HTTP_COOKIE"] = "; ".join(f"{k}={v}" for k, v in jar.items())
    return environ
