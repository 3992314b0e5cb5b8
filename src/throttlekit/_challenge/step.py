"""The challenge step: unknown clients prove a cookie jar (or a little work) before the app.

Opt-in (``Limiter.challenge``). The step registers two throttles, so that the passes and
the challenges are counted in the rules' one store call:

- ``challenge-pass`` (``pass_rate``, per pass id): a request holding a valid pass, so that
  one pass cannot carry a flood;
- ``challenge-issue`` (``issue_rate``, per client network): a request the step would give a
  pass or a challenge to, so that minting them is bounded per network.

Their match functions classify the request once (:meth:`ChallengeStep.classify`, kept in
the environ/scope under :data:`~throttlekit._exchange.CHALLENGE_KEY`): not concerned (a
path or moment the step does not cover, an API client, a websocket, a client with standing:
:class:`~throttlekit.Standing`), known (a valid pass),
to challenge, or an answer to the proof-of-work page. After the rules allow it, the request
meets the step in ``_exchange.begin``/``abegin`` (before admission control): a known client
goes on; a GET or HEAD without a pass gets ``303 See Other`` back to the same URL setting a
pass (or, with ``work=True`` and an HTML ``Accept``, the proof-of-work page); any other
method without a pass is refused (403, kind ``"challenged"``). These answers travel on the
verdict (``Verdict.answer``), which the responder sends as they are, so every entry (WSGI,
ASGI, Django, Starlette/FastAPI) answers them the same way.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict
from urllib.parse import quote

from cachetools import LRUCache

from .._errors import ConfigError
from .._exchange import CHALLENGE_KEY
from .._rates import parse_rates
from .._responses import prefers_json
from .._rules import Verdict, _RuleFailed
from .page import (
    CHALLENGE_FIELD,
    COOKIE_NAME,
    RETURN_FIELD,
    SOLUTION_FIELD,
    pass_cookie,
    pass_redirect,
    safe_path,
    work_page,
)
from .passes import Networks, Pass, PassSigner
from .work import WorkChallenge

if TYPE_CHECKING:
    from .._engine import Engine
    from .._limiter import Limiter
    from .._request import RequestView
    from .._responses import Denial

__all__ = ["CHALLENGE_RULE", "ISSUE_RULE", "PASS_RULE", "ChallengeOptions", "ChallengeStep",
           "Mark", "install_challenge"]

#: the rule name of the step's answers and ``"challenged"`` events
CHALLENGE_RULE = "challenge"
#: the throttle of ``pass_rate`` (per pass id) and that of ``issue_rate`` (per network)
PASS_RULE = "challenge-pass"
ISSUE_RULE = "challenge-issue"
DEFAULT_ACTION = "/.well-known/throttlekit/challenge"
#: passes verified, per (cookie value, client address): the HMAC runs once per pass
PASS_CACHE_SIZE = 4096

# what the step makes of a request (Mark.action)
KNOWN = "known"  # holds a valid pass: goes on
ASK = "ask"  # GET/HEAD without a pass: a pass by redirect, or the work page
REFUSE = "refuse"  # another method without a pass (or no client address): 403
ANSWER = "answer"  # a post of the work page to the action path

_ASKABLE = frozenset({"GET", "HEAD"})
_UNSEEN: Any = object()
# characters of a decoded path kept as they are when it is encoded again ('%' and '?' are
# data there, so they are encoded)
_DECODED_SAFE = "/:@!$&()*+,;=~"


class ChallengeOptions(TypedDict, total=False):
    """The options of :meth:`Limiter.challenge` (docs/under-attack.md, "Challenges").

    - ``paths``: path prefixes to challenge on (default: every path).
    - ``when``: challenge only while this is true: a zero-argument callable, or an object
      with an ``anomaly`` attribute (a ``Monitor``: during an anomaly). Default: always.
      With ``paths`` too, both must hold.
    - ``api``: ``api(view)`` true for API requests, which are never challenged (nor are
      requests whose ``Accept`` prefers JSON, safelisted ones, websockets).
    - ``key``: the secret passes are signed with (bytes or str, 16 bytes or more), or a
      list of them to rotate (signs with the first). None: a random per-process key, with
      a warning (passes then do not survive a restart or span workers).
    - ``ttl``: seconds a pass lasts (3600).
    - ``pass_rate``: the rate of requests one pass may carry (``"120/minute"``).
    - ``issue_rate``: the rate of passes and challenges given per network
      (``"30/minute"``).
    - ``ipv4_prefix``, ``ipv6_prefix``: the network a pass is bound to and
      ``issue_rate`` counts (24, 48).
    - ``work``: browsers (HTML ``Accept``) get a proof-of-work page instead of the
      redirect; ``difficulty``: its leading zero bits (16); ``action``: the path its
      answer is posted to (``"/.well-known/throttlekit/challenge"``), which the step
      answers itself.
    - ``secure``: the pass cookie's ``Secure`` attribute (default: when the request came
      over HTTPS).
    - ``dry_run``: challenge nobody; emit ``"challenged"`` events for what would have been.
    """

    paths: Sequence[str] | None
    when: Any
    api: Callable[[RequestView], Any] | None
    key: bytes | str | Sequence[bytes | str] | None
    ttl: float
    pass_rate: str
    issue_rate: str
    ipv4_prefix: int
    ipv6_prefix: int
    work: bool
    difficulty: int
    action: str
    secure: bool | None
    dry_run: bool


class Mark(NamedTuple):
    """What the step makes of one request, found while the rules run."""

    step: ChallengeStep
    action: str  # KNOWN, ASK, REFUSE or ANSWER
    network: str | None  # the client's network ("203.0.113.0/24"), None without an address
    pass_id: str | None  # the valid pass's id (KNOWN)

    @property
    def reads_form(self) -> bool:
        """The step answers this request from its form (an ASGI entry reads the body
        ahead)."""
        return self.action is ANSWER


def install_challenge(limiter: Limiter, options: ChallengeOptions) -> None:
    """``Limiter.challenge``: the step and its two throttles. Raises ConfigError naming a
    bad option, or when the limiter has a challenge already."""
    names = limiter.engine.rules.names
    if PASS_RULE in names or ISSUE_RULE in names:
        raise ConfigError("this limiter has a challenge already (one per limiter)")
    step = ChallengeStep(limiter, **options)
    limiter.throttle(PASS_RULE, step.pass_rate, match=step.holds_pass, key=step.pass_key,
                     dry_run=step.dry_run)
    limiter.throttle(ISSUE_RULE, step.issue_rate, match=step.asks, key=step.network_key,
                     dry_run=step.dry_run)
    limiter.engine.challenge = step  # its marks now meet the step (_exchange.begin)


class ChallengeStep:
    """One limiter's challenge: which requests, the passes, and the answers."""

    __slots__ = ("action", "api", "dry_run", "engine", "issue_rate", "lock", "network_of",
                 "pass_rate", "passes", "paths", "secure", "signer", "when", "work")

    def __init__(
        self, limiter: Limiter, *, paths: Sequence[str] | None = None, when: Any = None,
        api: Callable[[RequestView], Any] | None = None,
        key: bytes | str | Sequence[bytes | str] | None = None, ttl: float = 3600.0,
        pass_rate: str = "120/minute", issue_rate: str = "30/minute", ipv4_prefix: int = 24,
        ipv6_prefix: int = 48, work: bool = False, difficulty: int = 16,
        action: str = DEFAULT_ACTION, secure: bool | None = None, dry_run: bool = False,
    ) -> None:
        self.paths = _paths(paths)
        self.when = _when(when)
        if api is not None and not callable(api):
            raise ConfigError(f"challenge: api must be a function of the request view, got {api!r}")
        self.api = api
        self.pass_rate = _rate("pass_rate", pass_rate)
        self.issue_rate = _rate("issue_rate", issue_rate)
        for name, flag in (("work", work), ("dry_run", dry_run)):
            if not isinstance(flag, bool):
                raise ConfigError(f"challenge: {name} must be True or False, got {flag!r}")
        if secure is not None and not isinstance(secure, bool):
            raise ConfigError(f"challenge: secure must be None, True or False, got {secure!r}")
        if not isinstance(action, str) or safe_path(action) != action or "?" in action or (
            action == "/"
        ):
            raise ConfigError(
                f"challenge: action must be a path of this site like {DEFAULT_ACTION!r}, "
                f"got {action!r}")
        self.action = action
        self.secure = secure
        self.dry_run = dry_run
        self.engine: Engine = limiter.engine
        self.signer = PassSigner(key, ttl=ttl, ipv4_prefix=ipv4_prefix, ipv6_prefix=ipv6_prefix,
                                 clock=limiter.clock or time.time)
        challenge = WorkChallenge(self.signer, difficulty=difficulty)
        self.work = challenge if work else None
        self.passes: LRUCache[tuple[str, str], Pass] = LRUCache(PASS_CACHE_SIZE)
        self.lock = threading.Lock()
        self.network_of = functools.lru_cache(maxsize=4096)(self._network)

    def __repr__(self) -> str:
        return (f"ChallengeStep(paths={self.paths!r}, work={self.work is not None}, "
                f"dry_run={self.dry_run}, {self.signer!r})")

    # -- while the rules run: classify once, the throttles' match and key ----------------

    def classify(self, view: RequestView) -> Mark | None:
        """What the step makes of ``view`` (None: not its concern), worked out once per
        request and kept in its environ/scope."""
        raw = view.raw
        mark = raw.get(CHALLENGE_KEY, _UNSEEN)
        if mark is _UNSEEN or (mark is not None and mark.step is not self):
            mark = raw[CHALLENGE_KEY] = self._classify(view)
        return mark  # type: ignore[no-any-return]

    def holds_pass(self, view: RequestView) -> bool:
        """The ``challenge-pass`` throttle's match: the request holds a valid pass."""
        mark = self.classify(view)
        return mark is not None and mark.action is KNOWN

    def pass_key(self, view: RequestView) -> str | None:
        mark = self.classify(view)
        return mark.pass_id if mark is not None else None

    def asks(self, view: RequestView) -> bool:
        """The ``challenge-issue`` throttle's match: the step would give this request a
        pass or a challenge (a redirect, a work page, a pass for an answer)."""
        mark = self.classify(view)
        return mark is not None and (mark.action is ASK or mark.action is ANSWER)

    def network_key(self, view: RequestView) -> str | None:
        mark = self.classify(view)
        return mark.network if mark is not None else None

    def _classify(self, view: RequestView) -> Mark | None:
        if not view.is_wsgi and view.raw.get("type") != "http":
            return None  # a websocket handshake: no redirect or page can answer it
        method = view.method
        path = view.path
        if method == "POST" and self.work is not None and not self.dry_run and (
            path == self.action or path == prefix_of(view) + self.action
        ):
            ip = view.client_ip
            return Mark(self, ANSWER, None if ip is None else self.network_of(ip), None)
        paths = self.paths
        if paths is not None and not path.startswith(paths):
            return None
        if self.when is not None and not self._active():
            return None
        if prefers_json(view.headers.get("accept")) or (
            self.api is not None and self._is_api(view)
        ):
            return None
        ip = view.client_ip
        if ip is None:  # no address to bind a pass to: never one (fail closed)
            return Mark(self, REFUSE, None, None)
        found = self._pass_of(view, ip)
        network = self.network_of(ip)
        if found is not None:
            return Mark(self, KNOWN, network, found.id)
        standing = self.engine.standing
        if standing is not None and standing.known(view):
            return None  # a client with standing (Standing) is never challenged
        return Mark(self, ASK if method in _ASKABLE else REFUSE, network, None)

    def _active(self) -> bool:
        when = self.when
        assert when is not None
        try:
            return bool(when())
        except Exception as exc:  # a failing switch: nobody is challenged (logged)
            self._failed(exc, "when switch")
            return False

    def _is_api(self, view: RequestView) -> bool:
        api = self.api
        assert api is not None
        try:
            return bool(api(view))
        except Exception as exc:  # a failing predicate: an API client, never challenged
            self._failed(exc, "api predicate")
            return True

    def _failed(self, exc: Exception, what: str) -> None:
        with contextlib.suppress(_RuleFailed):  # (under "deny" too: never a refusal)
            self.engine.rule_error("challenge", CHALLENGE_RULE, exc, what)

    def _network(self, ip: str) -> str | None:
        packed = self.signer.networks.pack(ip)
        return None if packed is None else Networks.describe(packed)

    def _pass_of(self, view: RequestView, ip: str) -> Pass | None:
        """The valid pass in the request's cookie, verified once per (value, address)."""
        header = view.headers.get("cookie")
        if not header or COOKIE_NAME not in header:
            return None
        value = cookie_value(header)
        if value is None:
            return None
        signer = self.signer
        passes = self.passes
        with self.lock:
            found = passes.get((value, ip))
        if found is not None and signer.clock() < found.expires:
            return found
        found = signer.verify(value, ip)
        with self.lock:
            if found is None:
                passes.pop((value, ip), None)
            else:
                passes[value, ip] = found
        return found

    # -- after the rules: the step in _exchange.begin ------------------------------------

    def take(self, verdict: Verdict, mark: Mark) -> Verdict:
        """The step for an allowed request: ``verdict`` as it is (a known client, or a dry
        run, which only reports), or the challenge's answer (``kind="challenged"``)."""
        action = mark.action
        if action is KNOWN:
            return verdict
        view = verdict.request
        answer = None
        if action is ANSWER:  # (never in a dry run: no page was given)
            answer = self._redeem(view)
            if answer is not None and answer.status == 303:
                return self._answered(verdict, mark, answer)
        engine = self.engine
        if "challenged" in engine.listeners.active:
            engine.emit("challenged", CHALLENGE_RULE, mark.network, view, None, self.dry_run)
        if self.dry_run:
            return verdict
        if action is ASK:
            answer = self._ask(view)
        return self._answered(verdict, mark, answer)

    @staticmethod
    def _answered(verdict: Verdict, mark: Mark, answer: Denial | None) -> Verdict:
        """The refusal carrying ``answer`` (None: the responder's 403)."""
        return Verdict(False, "challenged", CHALLENGE_RULE, mark.network, None,
                       verdict.policies, verdict.degraded, verdict.request, None, answer)

    def _ask(self, view: RequestView) -> Denial | None:
        """A new pass by redirect back to the request's URL, or (``work``, a browser) the
        work page; None without a client address (the responder's 403)."""
        ip = view.client_ip
        if ip is None:
            return None
        target = target_of(view)
        work = self.work
        if work is not None and wants_html(view.headers.get("accept")):
            return self._page(work, view, ip, target)
        return pass_redirect(target, self._cookie(self.signer.issue(ip), view))

    def _redeem(self, view: RequestView) -> Denial | None:
        """The answer to a post of the work page: a pass by redirect to where the client
        was going; a new page when the answer does not solve (expired, another network,
        wrong); None (403) when the post is not the page's."""
        form = view.form
        challenge, solution = form.get(CHALLENGE_FIELD), form.get(SOLUTION_FIELD)
        ip = view.client_ip
        work = self.work
        if challenge is None or solution is None or ip is None or work is None:
            return None
        target = safe_path(form.get(RETURN_FIELD, "/"))
        value = work.redeem(challenge, solution, ip)
        if value is None:
            return self._page(work, view, ip, target, 403)
        return pass_redirect(target, self._cookie(value, view))

    def _page(self, work: WorkChallenge, view: RequestView, ip: str, target: str,
              status: int = 200) -> Denial:
        """A work page with a new challenge, posting to the action path (under the app's
        mount point), then going to ``target``."""
        return work_page(work.issue(ip), work.difficulty, action=prefix_of(view) + self.action,
                         return_to=target, status=status)

    def _cookie(self, value: str, view: RequestView) -> str:
        secure = self.secure
        if secure is None:
            secure = view.scheme == "https"
        return pass_cookie(value, max_age=self.signer.ttl, secure=secure)


# -- reading the request ---------------------------------------------------------------


def cookie_value(header: str) -> str | None:
    """The pass cookie's value in a ``Cookie`` header (the first, if sent twice)."""
    for part in header.split(";"):
        name, sep, value = part.partition("=")
        if sep and name.strip() == COOKIE_NAME:
            return value.strip()
    return None


def wants_html(accept: str | None) -> bool:
    """Whether an ``Accept`` names HTML (a browser asking for a page)."""
    return isinstance(accept, str) and "text/html" in accept.lower()


def prefix_of(view: RequestView) -> str:
    """Where the app is mounted (WSGI ``SCRIPT_NAME``, ASGI ``root_path``), encoded. (An
    ASGI ``path`` starts with it, a WSGI ``PATH_INFO`` does not.)"""
    raw = view.raw
    prefix = raw.get("SCRIPT_NAME" if view.is_wsgi else "root_path")
    if not prefix or not isinstance(prefix, str):
        return ""
    return _encoded(prefix, view.is_wsgi)


def target_of(view: RequestView) -> str:
    """The request's URL path and query as the client sent them (for a redirect back)."""
    raw = view.raw
    prefix = prefix_of(view)
    if view.is_wsgi:
        path = raw.get("PATH_INFO")
        query = raw.get("QUERY_STRING")
        path = prefix + (_encoded(path, True) if isinstance(path, str) else "/")
    else:
        sent = raw.get("raw_path")
        if isinstance(sent, bytes) and sent:
            path = sent.decode("latin-1")  # as sent: already percent-encoded
        else:
            path = _encoded(view.path, False)
        if prefix and not path.startswith(prefix):  # (servers before root_path was in it)
            path = prefix + path
        query = raw.get("query_string")
        if isinstance(query, bytes):
            query = query.decode("latin-1")
    return f"{path}?{query}" if isinstance(query, str) and query else path


def _encoded(decoded: str, wsgi: bool) -> str:
    """A decoded path percent-encoded again (WSGI strings hold the bytes as latin-1)."""
    if wsgi:
        try:
            return quote(decoded.encode("latin-1"), safe=_DECODED_SAFE)
        except UnicodeEncodeError:  # the server decoded it as text already
            pass
    return quote(decoded, safe=_DECODED_SAFE, errors="replace")


# -- settings ----------------------------------------------------------------------------


def _paths(paths: object) -> tuple[str, ...] | None:
    if paths is None:
        return None
    given = (paths,) if isinstance(paths, str) else paths
    if not isinstance(given, (list, tuple, set, frozenset)) or not given or not all(
        isinstance(p, str) and p.startswith("/") for p in given
    ):
        raise ConfigError(
            f"challenge: paths must be path prefixes starting with '/', got {paths!r}")
    return tuple(given)


def _when(when: object) -> Callable[[], Any] | None:
    """A zero-argument switch: ``when`` itself, or an object's ``anomaly`` (a Monitor)."""
    if when is None:
        return None
    if hasattr(when, "anomaly"):
        return functools.partial(getattr, when, "anomaly")
    if callable(when):
        return when
    raise ConfigError(
        "challenge: when must be a zero-argument callable or an object with an 'anomaly' "
        f"attribute (a Monitor), got {when!r}")


def _rate(name: str, rate: object) -> str:
    if not isinstance(rate, str):
        raise ConfigError(f"challenge: {name} must be a rate string like '30/minute', "
                          f"got {rate!r}")
    try:
        parse_rates(rate)
    except ConfigError as exc:
        raise ConfigError(f"challenge: {name}: {exc}") from None
    return rate
