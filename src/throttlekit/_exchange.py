"""One request's exchange after the verdict: the lease, the header set, the settling.

Every entry that runs the limiter's rules (``WSGIMiddleware``, ``ASGIMiddleware``, the Django
and Starlette/FastAPI middleware) does the same three things around the app, here once:

- **challenge, admit, lease** (:func:`begin` / :func:`abegin`): an allowed verdict meets the
  challenge step (``Limiter.challenge``: its redirect, page or refusal), takes a slot of
  admission control (``Limiter.admission``) and its concurrency leases, or becomes the
  refusal of the step that stops it;
- **settle** (:class:`Exchange`): when the response ends, whatever ends it (a normal return,
  an exception, a cancellation: then status 500), the ``count_when`` throttles are charged
  by the response's status and headers, and the lease is given back; both once;
- **one header set** (:func:`header_policies`): the rate-limit header fields of a request are
  written once, by the outermost entry (the one that finds no :data:`OWNER_KEY` in the
  environ/scope), from its rules' policies followed by those inner entries recorded under
  :data:`POLICIES_KEY` (endpoint limits, dependencies); an inner entry only records.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from ._admission import Ticket
from ._responses import rate_limit_headers_raw

if TYPE_CHECKING:
    from types import TracebackType

    from ._concurrency import ConcurrencyRules, Lease
    from ._decision import Decision
    from ._limiter import Limiter
    from ._rules import Verdict

__all__ = ["CHALLENGE_KEY", "DENIED_KEY", "OWNER_KEY", "POLICIES_KEY", "Exchange", "abegin",
           "aenter", "begin", "enter", "header_policies", "serve_asgi"]

#: environ/scope key: the ``(policy, Decision)`` pairs inner entries recorded (endpoint
#: limits, dependencies), for the header set the outermost entry writes
POLICIES_KEY = "throttlekit.policies"
#: refusals that end a client's standing (``Standing.refused``): the rules', not load's
_MISBEHAVED = frozenset({"throttled", "blocked", "banned"})
#: environ/scope key: set when a throttlekit refusal answered this request (its refusal
#: carries the header fields: nobody adds them again)
DENIED_KEY = "throttlekit.denied"
#: environ/scope key: set by the outermost entry, which writes the request's header set
OWNER_KEY = "throttlekit.owner"
#: environ/scope key: what the challenge step (``Limiter.challenge``) makes of the request,
#: found while the rules ran (a ``_challenge.step.Mark``); None when it has nothing to do
CHALLENGE_KEY = "throttlekit.challenge"

Policies = Sequence[tuple[str, "Decision"]]
Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]


class Exchange:
    """An admitted request until its response ends: the lease it holds and the
    ``count_when`` throttles still to charge.

    ``with ex:`` (``async with ex:``) around serving records nothing itself: the entry calls
    :meth:`respond` when it sees the response start; on leaving, :meth:`end` charges and
    releases (an exception or a cancellation counts as status 500). WSGI, whose response
    ends when the server closes the iterable, calls :meth:`settle` and :meth:`release`
    itself. Both are idempotent.
    """

    __slots__ = ("headers", "lease", "limiter", "status", "ticket", "verdict")

    def __init__(self, limiter: Limiter, verdict: Verdict, lease: Lease | None,
                 ticket: Ticket | None = None) -> None:
        self.limiter = limiter
        self.verdict = verdict
        self.lease = lease
        #: the admission slot (``Limiter.admission``), given back when the response ends
        self.ticket = ticket
        self.status = 500  # the response never started: the app failed
        self.headers: Sequence[tuple[str, str]] = ()

    def respond(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        """The response started with ``status`` and ``headers`` (what ``count_when`` sees)."""
        self.status = status
        self.headers = headers

    def settle(self) -> None:
        """Charge the ``count_when`` throttles by the recorded response (once)."""
        if self.verdict.pending:
            self.limiter.settle(self.verdict, self.status, self.headers)

    async def asettle(self) -> None:
        """Async twin of :meth:`settle`."""
        if self.verdict.pending:
            await self.limiter.asettle(self.verdict, self.status, self.headers)

    def release(self) -> None:
        """Give the admission slot and the lease back (once)."""
        ticket, self.ticket = self.ticket, None
        if ticket is not None:
            ticket.release()
        lease, self.lease = self.lease, None
        if lease is not None:
            lease.release()

    async def arelease(self) -> None:
        """Async twin of :meth:`release`."""
        ticket, self.ticket = self.ticket, None
        if ticket is not None:
            ticket.release()
        lease, self.lease = self.lease, None
        if lease is not None:
            await lease.arelease()

    def _failed(self) -> None:
        self.status = 500
        self.headers = ()

    def end(self, failed: bool = False) -> None:
        """The response ended (``failed``: by an exception or a cancellation, status 500):
        settle, then release whatever settling does."""
        if failed:
            self._failed()
        try:
            self.settle()
        finally:
            self.release()

    async def aend(self, failed: bool = False) -> None:
        """Async twin of :meth:`end`."""
        if failed:
            self._failed()
        try:
            await self.asettle()
        finally:
            await self.arelease()

    def __enter__(self) -> Exchange:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.end(exc_type is not None)

    async def __aenter__(self) -> Exchange:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aend(exc_type is not None)


def begin(limiter: Limiter, verdict: Verdict, lease: bool = True
          ) -> tuple[Verdict, Exchange | None]:
    """The lease step after the rules: an allowed verdict takes its concurrency leases (or
    becomes the refusal of a full rule); ``lease=False`` when an outer entry of the same
    limiter holds them already. Returns the verdict and its :class:`Exchange`, None when
    there is nothing to settle (no lease taken, no ``count_when`` pending). A disabled
    limiter (``enabled=False``) runs no rule: no admission, no lease."""
    verdict, ex = enter(limiter, verdict, lease)
    if isinstance(ex, Ticket):  # a lone slot (see enter)
        return verdict, Exchange(limiter, verdict, None, ex)
    return verdict, ex


def enter(limiter: Limiter, verdict: Verdict, lease: bool = True
          ) -> tuple[Verdict, Exchange | Ticket | None]:
    """:func:`begin` for an entry that gives a lone admission slot back itself (the WSGI
    middleware): a request holding only a slot (no lease, no ``count_when`` to charge: the
    common case with admission control) gets its :class:`Ticket`, not an Exchange, and
    the entry releases it when the response ends."""
    verdict, ticket, conc = _before_lease(limiter, verdict, lease)
    if conc is not None:
        verdict, held = conc.acquire(verdict)
        return _exchange(limiter, verdict, held, ticket)
    if not verdict.pending:  # a lone slot (allowed: a refusal holds none), or nothing
        return verdict, ticket
    return _exchange(limiter, verdict, None, ticket)


async def abegin(limiter: Limiter, verdict: Verdict, lease: bool = True
                 ) -> tuple[Verdict, Exchange | None]:
    """Async twin of :func:`begin` (async storage calls only)."""
    verdict, ex = await aenter(limiter, verdict, lease)
    if isinstance(ex, Ticket):  # a lone slot (see aenter)
        return verdict, Exchange(limiter, verdict, None, ex)
    return verdict, ex


async def aenter(limiter: Limiter, verdict: Verdict, lease: bool = True
                 ) -> tuple[Verdict, Exchange | Ticket | None]:
    """Async twin of :func:`enter` (the ASGI middleware): a request holding only an
    admission slot gets its :class:`Ticket`, which :func:`serve_asgi` gives back when the
    app ends."""
    verdict, ticket, conc = _before_lease(limiter, verdict, lease)
    if conc is not None:
        verdict, held = await conc.aacquire(verdict)
        return _exchange(limiter, verdict, held, ticket)
    if not verdict.pending:  # a lone slot (allowed: a refusal holds none), or nothing
        return verdict, ticket
    return _exchange(limiter, verdict, None, ticket)


def _before_lease(limiter: Limiter, verdict: Verdict, lease: bool
                  ) -> tuple[Verdict, Ticket | None, ConcurrencyRules | None]:
    """The steps before the lease: the challenge (``Limiter.challenge``: the request goes
    on, or gets its answer), then admission (``Limiter.admission``: a slot, or the refusal
    that sheds it); and the concurrency rules to lease from, None when there is nothing to
    lease (refused, disabled, or an outer entry holds the leases). Safelisted requests
    meet neither challenge nor admission."""
    engine = limiter.engine
    view = verdict.request
    steps = engine.steps
    if steps is None:  # no step: only count_when to settle
        return verdict, None, None
    challenge, standing, step, conc = steps
    if not (lease and engine.enabled and verdict.allowed):
        if standing is not None and lease and view is not None and verdict.kind in _MISBEHAVED:
            standing.refused(view)  # a client refused by the rules loses its standing
        return verdict, None, None
    if verdict.kind == "safelisted":
        return verdict, None, conc
    known = False
    if view is not None:
        if challenge is not None:
            mark = view.raw.get(CHALLENGE_KEY)
            if mark is not None and mark.step.engine is engine:
                verdict = mark.step.take(verdict, mark)
                if not verdict.allowed:
                    return verdict, None, None
        # history for the client's standing, and whether it is known (Standing)
        known = standing is not None and standing.seen(view)
    if step is None:
        return verdict, None, conc
    verdict, ticket = step.admit(verdict, known)
    return verdict, ticket, conc if verdict.allowed else None


def _exchange(limiter: Limiter, verdict: Verdict, held: Lease | None, ticket: Ticket | None
              ) -> tuple[Verdict, Exchange | None]:
    if ticket is not None and not verdict.allowed:
        ticket.cancel()  # a concurrency rule refused it after all: the slot goes back unused
        ticket = None
    if held is None and ticket is None and not verdict.pending:
        return verdict, None
    return verdict, Exchange(limiter, verdict, held, ticket)


def header_policies(raw: MutableMapping[str, Any], own: Policies) -> Policies | None:
    """The policies of the request's one header set, for its outermost entry: ``own`` (its
    rules') then those inner entries recorded; None when a throttlekit refusal answered the
    request (it carries its own) or there are none."""
    if raw.get(DENIED_KEY):
        return None
    inner = raw.get(POLICIES_KEY)
    if inner:
        return [*own, *inner] if own else inner
    return own or None


def decode_headers(headers: Iterable[Any]) -> list[tuple[str, str]]:
    """ASGI header pairs as ``str`` (what ``count_when`` sees); malformed pairs skipped."""
    out = []
    for pair in headers:
        try:
            name, value = pair
            out.append((bytes(name).decode("latin-1"), bytes(value).decode("latin-1")))
        except (TypeError, ValueError):
            continue
    return out


async def serve_asgi(
    app: Callable[[Any, Any, Send], Awaitable[None]], scope: MutableMapping[str, Any],
    receive: Any, send: Send, ex: Exchange | Ticket | None, own: Policies | None, style: str,
) -> None:
    """Serve an admitted ``http`` request. ``own``: the policies of the outermost entry
    (None: not the outermost, or no header fields on allowed responses), whose header set
    (:func:`header_policies`, taken when the response starts, so that policies recorded
    inside the app count) is added to the response. With an exchange, the exchange is
    ended however the app ends (an exception or a cancellation: status 500), and the
    response's status and headers are recorded when ``count_when`` charges wait on them.
    A lone admission slot (:func:`aenter`) is given back however the app ends."""
    if isinstance(ex, Ticket):  # no Exchange (and its five coroutines) for a slot alone
        try:
            await serve_asgi(app, scope, receive, send, None, own, style)
        finally:
            ex.release()
        return
    # the response is recorded only for count_when charges (a slot or a lease alone needs
    # only the end of the response)
    record = ex is not None and bool(ex.verdict.pending)
    if own is None and not record:
        if ex is None:
            await app(scope, receive, send)
            return
        async with ex:
            await app(scope, receive, send)
        return

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            raw = message.get("headers") or []
            if record and ex is not None:
                ex.respond(message.get("status", 500), decode_headers(raw))
            found = header_policies(scope, own) if own is not None else None
            if found:
                message = {**message, "headers": [*raw, *rate_limit_headers_raw(found, style)]}
        await send(message)

    if ex is None:
        await app(scope, receive, wrapped)
        return
    async with ex:
        await app(scope, receive, wrapped)
