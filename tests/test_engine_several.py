"""The verdict of several throttles that all allow (the engine's common case): its decision
is the tightest of the throttles that decided, found when first read."""

from __future__ import annotations

from typing import Any

from throttlekit import Decision, Limiter, Rate, RequestView, Verdict, WSGIMiddleware
from throttlekit.testing import FakeClock

PEER = "198.51.100.7"


def _limiter() -> Limiter:
    lim = Limiter("memory://", clock=FakeClock(1000.0))
    lim.throttle("wide", "10/minute")
    lim.throttle("narrow", "5/minute")
    lim.throttle("narrow-too", "5/minute")
    lim.throttle("hourly", "20/hour")
    return lim


def _evaluate(lim: Limiter) -> Verdict:
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [],
             "client": (PEER, 40000)}
    return lim.evaluate(RequestView.from_scope(scope, lim.resolver))


def test_decision_is_the_first_throttle_with_the_least_remaining() -> None:
    """An allowed request's decision is the first throttle's with the least remaining, as
    listed in the policies, request after request."""
    lim = _limiter()
    for remaining in (4, 3, 2):
        v = _evaluate(lim)
        assert isinstance(v, Verdict) and v.allowed and v.kind == "allowed"
        assert [name for name, _ in v.policies] == ["wide", "narrow", "narrow-too", "hourly"]
        assert v.decision is v.policies[1][1]
        assert v.decision.remaining == remaining and v.decision.limit == 5
        assert f"remaining={remaining}" in repr(v)


def test_decision_is_the_rules_not_what_is_added_to_the_policies_later() -> None:
    """Policies added to the verdict after the rules decided (an endpoint limit does) do not
    change the decision read later; a decision set on the verdict is the one read."""
    lim = _limiter()
    v = _evaluate(lim)
    tighter = Decision(True, 1, 0, 1.0, 0.0, Rate(1, 1.0))
    v.policies.append(("endpoint", tighter))
    assert v.decision is v.policies[1][1]
    v.decision = tighter
    assert v.decision is tighter
    v.decision = None
    assert v.decision is None


def test_wsgi_verdict_decision_and_headers_agree() -> None:
    """Through the WSGI middleware the verdict kept in the environ has the tightest
    decision, and the RateLimit field lists every throttle."""
    lim = _limiter()
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen["verdict"] = environ["throttlekit.verdict"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None
                       ) -> None:
        seen["headers"] = dict(headers)

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": "",
               "REMOTE_ADDR": PEER, "SERVER_NAME": "x", "SERVER_PORT": "80",
               "wsgi.url_scheme": "http"}
    WSGIMiddleware(app, lim)(environ, start_response)
    assert seen["verdict"].decision.remaining == 4
    assert seen["headers"]["RateLimit"] == (
        '"wide";r=9;t=20, "narrow";r=4;t=20, "narrow-too";r=4;t=20, "hourly";r=19;t=2600')
