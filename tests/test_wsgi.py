"""The WSGI middleware, driven through werkzeug's test client against a real WSGI app."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pytest
from werkzeug.test import Client

from throttlekit import ConfigError, Limiter, Verdict, WSGIMiddleware
from throttlekit._responses import Denial
from throttlekit.testing import FakeClock

SEEN: list[dict[str, Any]] = []


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """A tiny app: /fail answers 401, /boom raises, /form echoes the form body."""
    SEEN.append(environ)
    path = environ.get("PATH_INFO", "")
    if path == "/boom":
        raise RuntimeError("boom")
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
    status = "401 Unauthorized" if path == "/fail" else "200 OK"
    start_response(status, [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.fixture
def limiter(clock: FakeClock) -> Limiter:
    clock.set(1_700_000_040.0)  # a minute boundary: fixed windows are whole here
    return Limiter("memory://", clock=clock)


def client(limiter: Limiter, **options: Any) -> Client:
    return Client(WSGIMiddleware(app, limiter, **options))


def get(c: Client, path: str = "/", ip: str = "198.51.100.7", **kw: Any) -> Any:
    return c.get(path, environ_base={"REMOTE_ADDR": ip}, buffered=True, **kw)


def test_throttle_refuses_with_429_and_headers(limiter: Limiter) -> None:
    """Beyond the limit the app is not called and the client gets 429 with standard fields."""
    limiter.throttle("per-ip", "2/minute", strategy="fixed_window")
    c = client(limiter)
    SEEN.clear()
    assert [get(c).status_code for _ in range(3)] == [200, 200, 429]
    assert len(SEEN) == 2
    r = get(c)
    assert r.headers["Retry-After"] == "60"
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["RateLimit-Policy"] == '"per-ip";q=2;w=60'
    assert r.headers["RateLimit"] == '"per-ip";r=0;t=60'
    assert r.get_data() == b"Too Many Requests: rate limit exceeded.\n"


def test_allowed_responses_carry_rate_limit_headers(limiter: Limiter) -> None:
    """An allowed response keeps the app's headers and gains RateLimit fields."""
    limiter.throttle("per-ip", "5/minute", strategy="fixed_window")
    r = get(client(limiter))
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/plain"
    assert r.headers["RateLimit"] == '"per-ip";r=4;t=60'


def test_headers_on_allowed_can_be_turned_off(limiter: Limiter) -> None:
    """headers_on_allowed=False leaves allowed responses untouched."""
    limiter.throttle("per-ip", "5/minute")
    r = get(client(limiter, headers_on_allowed=False))
    assert "RateLimit" not in r.headers


def test_legacy_header_style(limiter: Limiter) -> None:
    """header_style="legacy" writes X-RateLimit-* instead of the draft fields."""
    limiter.throttle("per-ip", "5/minute", strategy="fixed_window")
    r = get(client(limiter, header_style="legacy"))
    assert r.headers["X-RateLimit-Limit"] == "5"
    assert r.headers["X-RateLimit-Remaining"] == "4"
    assert "RateLimit" not in r.headers


def test_clients_are_counted_apart(limiter: Limiter) -> None:
    """The default key is the client IP: one client's use does not limit another."""
    limiter.throttle("per-ip", "1/minute")
    c = client(limiter)
    assert get(c, ip="192.0.2.1").status_code == 200
    assert get(c, ip="192.0.2.1").status_code == 429
    assert get(c, ip="192.0.2.2").status_code == 200


def test_safelist_skips_throttles(limiter: Limiter) -> None:
    """A safelisted request passes even when its client is over the limit."""
    limiter.safelist("health", lambda r: r.path == "/healthz")
    limiter.throttle("per-ip", "1/minute")
    c = client(limiter)
    assert get(c).status_code == 200
    assert get(c).status_code == 429
    assert get(c, "/healthz").status_code == 200


def test_blocklist_cidr_gives_403(limiter: Limiter) -> None:
    """A client in a blocklisted network gets 403 and never reaches the app."""
    limiter.blocklist("bad-nets", ips=["203.0.113.0/24", "2001:db8::/32"])
    c = client(limiter)
    SEEN.clear()
    assert get(c, ip="203.0.113.77").status_code == 403
    assert get(c, ip="2001:db8:5::1").status_code == 403
    assert SEEN == []
    assert get(c, ip="198.51.100.1").status_code == 200


def test_problem_json_when_client_accepts_json(limiter: Limiter) -> None:
    """A client accepting JSON gets an RFC 9457 problem body naming the rule."""
    limiter.throttle("per-ip", "1/minute")
    c = client(limiter)
    get(c)
    r = get(c, headers={"Accept": "application/json"})
    assert r.status_code == 429
    assert r.headers["Content-Type"] == "application/problem+json"
    assert json.loads(r.get_data())["violated-policies"] == ["per-ip"]


def test_trusted_proxies_on_the_middleware(limiter: Limiter) -> None:
    """With one trusted proxy, the X-Forwarded-For client is the one throttled."""
    limiter.throttle("per-ip", "1/minute")
    c = client(limiter, trusted_proxies=1)
    h = {"X-Forwarded-For": "192.0.2.50"}
    assert get(c, ip="10.0.0.1", headers=h).status_code == 200
    assert get(c, ip="10.0.0.1", headers={"X-Forwarded-For": "192.0.2.51"}).status_code == 200
    assert get(c, ip="10.0.0.1", headers=h).status_code == 429


def test_spoofed_forwarded_for_is_ignored_by_default(limiter: Limiter) -> None:
    """Without trusted proxies, rotating X-Forwarded-For does not escape the limit."""
    limiter.throttle("per-ip", "2/minute")
    c = client(limiter)
    codes = [get(c, headers={"X-Forwarded-For": f"192.0.2.{i}"}).status_code for i in range(4)]
    assert codes == [200, 200, 429, 429]


def test_verdict_is_in_the_environ(limiter: Limiter) -> None:
    """The app finds the Verdict under environ["throttlekit.verdict"]."""
    limiter.throttle("per-ip", "5/minute")
    SEEN.clear()
    get(client(limiter))
    verdict = SEEN[0]["throttlekit.verdict"]
    assert isinstance(verdict, Verdict)
    assert verdict.allowed and verdict.decision is not None and verdict.decision.remaining == 4


def test_custom_responder_per_kind(limiter: Limiter) -> None:
    """A user responder replaces the default answer for its kind only."""
    limiter.blocklist("agents", lambda r: "sqlmap" in r.headers.get("user-agent", ""))
    limiter.throttle("per-ip", "1/minute")

    def teapot(kind: str, rule: str, decision: Any, accept: Any, headers: Any) -> Denial:
        return Denial(418, [("X-Rule", rule), *headers], b"no")

    c = client(limiter, responders={"blocked": teapot})
    r = get(c, headers={"User-Agent": "sqlmap/1.0"})
    assert (r.status_code, r.headers["X-Rule"], r.get_data()) == (418, "agents", b"no")
    get(c)
    assert get(c).status_code == 429


def test_failing_responder_falls_back_to_default(limiter: Limiter) -> None:
    """A responder that raises still produces the default refusal, not a 500."""
    limiter.blocklist("all", lambda r: True)

    def broken(*args: Any) -> Denial:
        raise RuntimeError("oops")

    assert get(client(limiter, responders={"blocked": broken})).status_code == 403


def test_count_when_charges_only_failed_responses(limiter: Limiter) -> None:
    """count_when: successes are free, failures count, and the limit refuses before the app."""
    limiter.throttle("login", "2/minute", key="ip",
                     count_when=lambda resp: resp.status_code in (401, 403))
    c = client(limiter)
    assert [get(c, "/ok").status_code for _ in range(5)] == [200] * 5
    assert get(c, "/fail").status_code == 401
    assert get(c, "/fail").status_code == 401
    SEEN.clear()
    assert get(c, "/fail").status_code == 429
    assert get(c, "/ok").status_code == 429
    assert SEEN == []


def test_count_when_counts_app_exceptions_as_500(limiter: Limiter) -> None:
    """An exception from the app counts as a 500 response for count_when."""
    limiter.throttle("errors", "1/minute", count_when=lambda resp: resp.status_code >= 500)
    c = client(limiter)
    with pytest.raises(RuntimeError):
        get(c, "/boom")
    assert get(c).status_code == 429


def test_form_key_and_body_replayed_to_app(limiter: Limiter) -> None:
    """A key function reading the form sees it, and the app still reads the whole body."""
    limiter.throttle("login", "1/minute", key=lambda r: r.form.get("username"))
    c = client(limiter)
    r = c.post("/echo", data={"username": "ann"}, environ_base={"REMOTE_ADDR": "192.0.2.9"})
    assert r.get_data() == b"username=ann"
    assert c.post("/echo", data={"username": "ann"}).status_code == 429
    assert c.post("/echo", data={"username": "bob"}).status_code == 200


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({"REMOTE_ADDR": ""}, id="empty-peer"),
        pytest.param({"REMOTE_ADDR": "not-an-ip"}, id="garbage-peer"),
        pytest.param({"REMOTE_ADDR": None}, id="no-peer"),
        pytest.param({"HTTP_X_FORWARDED_FOR": "\x00\xff, ,;;==" * 500}, id="garbage-xff"),
        pytest.param({"HTTP_FORWARDED": 'for="[::1' + "x" * 10000}, id="bad-forwarded"),
        pytest.param({"PATH_INFO": "/caf\xc3\xa9/\udcff/%zz"}, id="non-ascii-path"),
        pytest.param({"HTTP_ACCEPT": "\x00" * 9000}, id="garbage-accept"),
        pytest.param({"CONTENT_LENGTH": "-5", "CONTENT_TYPE": "application/json"}, id="bad-len"),
    ],
)
def test_bad_input_never_crashes(limiter: Limiter, environ: dict[str, Any]) -> None:
    """Garbage headers, no peer, odd paths: answered by the rules, never a 500."""
    limiter.throttle("per-ip", "1/minute", key=lambda r: r.client_key or "unknown")
    limiter.throttle("form", "5/minute", key=lambda r: r.form.get("u"))
    limiter.blocklist("path", lambda r: r.path == "/nope" or len(r.headers) < 0)
    c = client(limiter, trusted_proxies=2)
    base = {"REMOTE_ADDR": "198.51.100.7", **environ}
    codes = [c.post("/", environ_base=base).status_code for _ in range(2)]
    assert codes == [200, 429]


def test_unknown_responder_kind_is_config_error(limiter: Limiter) -> None:
    """A responder for an unknown kind is refused at setup."""
    with pytest.raises(ConfigError, match="nope"):
        WSGIMiddleware(app, limiter, responders={"nope": lambda *a: None})  # type: ignore[dict-item]


def test_bad_header_style_is_config_error(limiter: Limiter) -> None:
    """An unknown header style is refused at setup."""
    with pytest.raises(ConfigError, match="fancy"):
        WSGIMiddleware(app, limiter, header_style="fancy")


def test_disabled_limiter_lets_everything_through() -> None:
    """Limiter(enabled=False) switches the middleware's rules off (for tests)."""
    from werkzeug.test import Client as _Client

    from throttlekit import Limiter as _Limiter
    from throttlekit import WSGIMiddleware as _WSGIMiddleware

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    limiter = _Limiter(enabled=False)
    limiter.throttle("per-ip", "1/minute")
    limiter.blocklist("all", lambda r: True)
    client = _Client(_WSGIMiddleware(app, limiter))
    assert [client.get("/").status_code for _ in range(3)] == [200, 200, 200]
    limiter.enabled = True
    assert client.get("/").status_code == 403


def test_count_when_is_charged_even_if_the_response_is_never_closed() -> None:
    """count_when charges once the status is known: clients that never close() still count."""
    from werkzeug.test import Client as _Client

    from throttlekit import Limiter as _Limiter
    from throttlekit import WSGIMiddleware as _WSGIMiddleware

    def app(environ, start_response):
        start_response("401 Unauthorized", [("Content-Type", "text/plain")])
        return [b"no"]

    limiter = _Limiter(clock=FakeClock())  # (exact counts: a clock of its own)
    limiter.throttle("login", "3/minute", count_when=lambda r: r.status_code in (401, 403))
    client = _Client(_WSGIMiddleware(app, limiter))  # unbuffered: never calls close()
    codes = [client.post("/login", environ_base={"REMOTE_ADDR": "192.0.2.1"}).status_code
             for _ in range(5)]
    assert codes == [401, 401, 401, 429, 429]


def test_responder_names_stay_importable_from_wsgi(limiter: Limiter) -> None:
    """throttlekit.wsgi keeps RESPONDER_KINDS, Responder and resolve_options (now the one
    responder's), and "shed" and "challenged" are kinds a responder can be given for."""
    from throttlekit.wsgi import RESPONDER_KINDS, Responder, resolve_options

    assert set(RESPONDER_KINDS) == {"throttled", "blocked", "banned", "challenged", "shed"}

    def teapot(kind: str, rule: str, decision: Any, accept: Any, headers: Any) -> Denial:
        return Denial(418, headers, b"")

    chosen: dict[str, Responder] = {"shed": teapot}
    resolver, style, on_allowed, responders = resolve_options(
        limiter, None, None, "legacy", None, chosen)
    assert (resolver, style, on_allowed) == (limiter.resolver, "legacy", True)
    assert responders["shed"] is teapot and set(responders) == set(RESPONDER_KINDS)
    with pytest.raises(ConfigError, match="'nope'"):
        resolve_options(limiter, None, None, "nope", None, None)
