"""The rule engine's in-memory fast path answers exactly as the general path does."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from throttlekit import Decision, Limiter, MemoryStorage, Rate, RequestView, Verdict
from throttlekit._responses import encode_headers, rate_limit_headers, rate_limit_headers_raw
from throttlekit.testing import FakeClock

T0 = 1_700_000_040.0
IPS = ["198.51.100.7", "198.51.100.8", "2001:db8:1:2::5", "::ffff:203.0.113.9"]
RATES = ["3/second", "5/2 seconds", "2/second; 4/3 seconds", "6/minute; 2/second"]
STRATEGIES = ["fixed_window", "sliding_window", "sliding_log", "token_bucket"]

throttle_specs = st.lists(
    st.tuples(
        st.sampled_from(RATES),
        st.sampled_from(STRATEGIES),
        st.sampled_from(["all", "posts", "not-health"]),
        st.sampled_from(["client", "ip", "path", "cost-by-path"]),
    ),
    min_size=1,
    max_size=3,
)
requests = st.lists(
    st.tuples(
        st.sampled_from(IPS),
        st.sampled_from(["GET", "POST"]),
        st.sampled_from(["/", "/a", "/healthz", "/bad"]),
        st.sampled_from([0.0, 0.0, 0.1, 0.4, 1.3]),
    ),
    min_size=1,
    max_size=40,
)

MATCHES: dict[str, Any] = {
    "all": None,
    "posts": lambda r: r.method == "POST",
    "not-health": lambda r: r.path != "/healthz",
}
KEYS: dict[str, Any] = {"client": None, "ip": "ip", "path": lambda r: r.path,
                        "cost-by-path": None}


def _limiter(specs: list[tuple[str, str, str, str]], fast: bool, lists: bool,
             store_clock: bool, clock: FakeClock) -> Limiter:
    if store_clock:  # the limiter has no clock: the store's own clock decides
        limiter = Limiter(MemoryStorage(clock=clock))
    else:
        limiter = Limiter("memory://", clock=clock)
    if lists:
        limiter.safelist("health", lambda r: r.path == "/healthz")
        limiter.blocklist("bad-nets", ips=["203.0.113.0/24"])
        limiter.blocklist("bad-path", lambda r: r.path == "/bad")
    for i, (rates, strategy, match, key) in enumerate(specs):
        cost: Any = (lambda r: 2 if r.path == "/a" else 1) if key == "cost-by-path" else None
        limiter.throttle(f"t{i}", rates, strategy=strategy, match=MATCHES[match],
                         key=KEYS[key], cost=cost)
    assert limiter.engine.rules.fast
    if not fast:
        limiter.engine.rules.fast = False  # the general path: plan, one store call, conclude
    return limiter


def _same(a: Verdict, b: Verdict) -> None:
    """Every attribute a user reads of a verdict (the fast path's, built without
    ``__init__``, has them all)."""
    assert (a.allowed, a.kind, a.rule, a.key, a.decision, a.policies, a.degraded, a.pending,
            a.answer) == (b.allowed, b.kind, b.rule, b.key, b.decision, b.policies,
                          b.degraded, b.pending, b.answer)


def _view(limiter: Limiter, ip: str, method: str, path: str) -> RequestView:
    scope = {"type": "http", "method": method, "path": path, "headers": [],
             "client": (ip, 1234)}
    return RequestView.from_scope(scope, limiter.resolver)


@given(throttle_specs, requests, st.booleans(), st.booleans())
def test_fast_path_matches_general_path(
    specs: list[tuple[str, str, str, str]], reqs: list[tuple[str, str, str, float]],
    lists: bool, store_clock: bool,
) -> None:
    """Every verdict, decision and header policy of the fast path equals the general one."""
    clock_fast, clock_slow = FakeClock(T0), FakeClock(T0)
    fast = _limiter(specs, True, lists, store_clock, clock_fast)
    slow = _limiter(specs, False, lists, store_clock, clock_slow)
    for ip, method, path, wait in reqs:
        clock_fast.advance(wait)
        clock_slow.advance(wait)
        _same(fast.evaluate(_view(fast, ip, method, path)),
              slow.evaluate(_view(slow, ip, method, path)))


@given(throttle_specs, requests)
def test_async_fast_path_matches_sync_general_path(
    specs: list[tuple[str, str, str, str]], reqs: list[tuple[str, str, str, float]],
) -> None:
    """aevaluate on the memory store takes the same fast path, with the same answers."""
    clock_fast, clock_slow = FakeClock(T0), FakeClock(T0)
    fast = _limiter(specs, True, True, False, clock_fast)
    slow = _limiter(specs, False, True, False, clock_slow)

    async def run() -> None:
        for ip, method, path, wait in reqs:
            clock_fast.advance(wait)
            clock_slow.advance(wait)
            _same(await fast.aevaluate(_view(fast, ip, method, path)),
                  slow.evaluate(_view(slow, ip, method, path)))

    asyncio.run(run())


def test_refused_request_charges_no_throttle_on_fast_path() -> None:
    """When one throttle refuses, the others the request met are not charged."""
    clock = FakeClock(T0)
    limiter = Limiter("memory://", clock=clock)
    limiter.throttle("tight", "1/minute", match=lambda r: r.path == "/login")
    limiter.throttle("loose", "3/minute", strategy="sliding_log")
    ip = "198.51.100.7"
    assert limiter.evaluate(_view(limiter, ip, "POST", "/login")).allowed
    refused = limiter.evaluate(_view(limiter, ip, "POST", "/login"))
    assert (refused.allowed, refused.rule) == (False, "tight")
    assert dict(refused.policies)["loose"].remaining == 2  # what it really has left
    for left in (1, 0):
        assert limiter.evaluate(_view(limiter, ip, "GET", "/")).decision.remaining == left
    assert not limiter.evaluate(_view(limiter, ip, "GET", "/")).allowed


def test_peer_cache_gives_resolved_ip_and_key() -> None:
    """Views of the same peer share the cached client_ip and client_key, in either order."""
    limiter = Limiter()
    for _ in range(2):
        v = _view(limiter, "2001:db8:1:2:aaaa::1", "GET", "/")
        assert v.client_key == "2001:db8:1:2::/64"
        assert v.client_ip == "2001:db8:1:2:aaaa::1"
        w = _view(limiter, "::ffff:198.51.100.4", "GET", "/")
        assert w.client_ip == w.client_key == "198.51.100.4"


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["per-ip", 'odd"name', "login/60"]),
            st.integers(1, 10**6), st.sampled_from([1.0, 0.5, 60.0, 2.5]),
            st.integers(-3, 10**6),
            st.one_of(st.floats(-1, 1e6, allow_nan=False), st.just(float("inf")),
                      st.just(float("nan"))),
        ),
        min_size=0, max_size=3,
    ),
    st.sampled_from(["draft10", "legacy", "both", "none"]),
)
def test_raw_rate_limit_headers_are_the_encoded_ones(
    items: list[tuple[str, int, float, int, float]], style: str,
) -> None:
    """rate_limit_headers_raw gives exactly the ASGI encoding of rate_limit_headers."""
    import unittest.mock

    from throttlekit import _responses

    policies = [(name, Decision(True, limit, rem, reset, 0.0, Rate(limit, period)))
                for name, limit, period, rem, reset in items]
    # X-RateLimit-Reset is an epoch time: both sides must read the same clock
    with unittest.mock.patch.object(_responses, "_time", lambda: 1_700_000_000.25):
        assert rate_limit_headers_raw(policies, style) == encode_headers(
            rate_limit_headers(policies, style)
        )
        assert rate_limit_headers_raw(policies, style) == encode_headers(  # cached pieces
            rate_limit_headers(policies, style)
        )


def _without_verdict(raw: Any) -> dict[str, Any]:
    """``raw`` as a detached view holds it: without the verdict (in a scope's state too)."""
    copy = {k: v for k, v in raw.items() if k != "throttlekit.verdict"}
    if isinstance(copy.get("state"), dict):
        copy["state"] = {k: v for k, v in copy["state"].items() if k != "throttlekit.verdict"}
    return copy


def _public(view: RequestView) -> tuple[Any, ...]:
    return (_without_verdict(view.raw), view.resolver, view.is_wsgi, view.body,
            view.max_form_bytes, view.method, view.path, view.query, view.scheme,
            dict(view.headers), view.peer, view.client_ip, view.client_key, dict(view.form))


def test_middleware_builds_the_views_from_scope_and_from_environ_build() -> None:
    """The views the middleware builds answer as RequestView.from_scope/_environ (compared
    while the request is served; the view already reads a copy of it without the verdict,
    detached)."""
    from throttlekit import ASGIMiddleware, WSGIMiddleware

    limiter = Limiter()
    limiter.throttle("per-ip", "100/minute")
    scopes = [
        {"type": "http", "method": "POST", "path": "/a", "query_string": b"x=1",
         "headers": [(b"x-y", b"z"), (b"content-type", b"text/plain")],
         "client": ("2001:db8::1", 1)},
        {"type": "http", "method": None, "path": "/", "headers": [], "client": None},
        {"type": "http", "path": "/b", "headers": [], "client": 42},
    ]
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((_public(scope["throttlekit.verdict"].request),
                     _public(RequestView.from_scope(scope, limiter.resolver))))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        pass

    asgi = ASGIMiddleware(app, limiter)
    for scope in scopes:
        asyncio.run(asgi(scope, receive, send))
        built, expected = seen[-1]
        assert built == expected

    def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
        seen.append((_public(environ["throttlekit.verdict"].request),
                     _public(RequestView.from_environ(environ, limiter.resolver))))
        start_response("200 OK", [])
        return [b""]

    wsgi = WSGIMiddleware(wsgi_app, limiter)
    for environ in ({"REQUEST_METHOD": "PUT", "PATH_INFO": "/caf\xc3\xa9", "REMOTE_ADDR": "::1",
                     "HTTP_X_Y": "z", "QUERY_STRING": "q"}, {"REQUEST_METHOD": 7}):
        wsgi(environ, lambda status, headers, exc_info=None: None)
        built, expected = seen[-1]
        assert built == expected
