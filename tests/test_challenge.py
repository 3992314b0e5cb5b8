"""Challenges in the request pipeline (``Limiter.challenge``): unknown clients prove a cookie
jar (or a little work) before the app; a pass is bound to the client's network, expires and
is rate-limited; API clients, safelisted requests and known clients are never challenged.

Driven through ``WSGIMiddleware`` with werkzeug's test client (which keeps cookies, or not);
the client address is set through ``trusted_proxies=1`` and ``X-Forwarded-For``. The other
entries are in ``test_challenge_entries.py``, a real browser in ``test_challenge_browser.py``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from html import unescape
from typing import Any

import pytest
from werkzeug.test import Client, TestResponse

from throttlekit import ConfigError, Event, Limiter, WSGIMiddleware
from throttlekit._challenge import COOKIE_NAME, PassSigner, solve
from throttlekit._challenge.step import DEFAULT_ACTION
from throttlekit._responses import Denial
from throttlekit.testing import FakeClock

KEY = b"an operator secret of 32 bytes!!"
IP = "203.0.113.9"


class App:
    """A WSGI app that counts the requests reaching it and shows the cookie it got."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        query = environ.get("QUERY_STRING")
        self.seen.append(environ["PATH_INFO"] + (f"?{query}" if query else ""))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"app"]


class Visitor:
    """A client at one address (``X-Forwarded-For`` through a trusted proxy) that keeps
    cookies or not."""

    def __init__(self, app: Any, ip: str = IP, *, cookies: bool = True,
                 accept: str | None = None) -> None:
        self.client = Client(app, use_cookies=cookies)
        self.ip = ip
        self.accept = accept

    def open(self, path: str = "/", method: str = "GET", **kw: Any) -> TestResponse:
        headers = {"X-Forwarded-For": self.ip, **kw.pop("headers", {})}
        if self.accept is not None:
            headers.setdefault("Accept", self.accept)
        return self.client.open(path, method=method, headers=headers,
                                environ_base={"REMOTE_ADDR": "10.0.0.1"}, **kw)

    def get(self, path: str = "/", **kw: Any) -> TestResponse:
        return self.open(path, **kw)

    def post(self, path: str = "/", **kw: Any) -> TestResponse:
        return self.open(path, "POST", **kw)

    def pass_value(self) -> str | None:
        cookie = self.client.get_cookie(COOKIE_NAME)
        return None if cookie is None else cookie.value


def setup(clock: FakeClock, **options: Any) -> tuple[Limiter, App, WSGIMiddleware]:
    lim = Limiter(clock=clock, trusted_proxies=1)
    options.setdefault("key", KEY)
    lim.challenge(**options)
    app = App()
    return lim, app, WSGIMiddleware(app, lim)


def set_cookie(r: TestResponse) -> dict[str, str]:
    """The attributes of the response's ``Set-Cookie`` (names lower-case; flags as "")."""
    first, *attrs = r.headers["Set-Cookie"].split("; ")
    name, _, value = first.partition("=")
    out = {"name": name, "value": value}
    for attr in attrs:
        k, _, v = attr.partition("=")
        out[k.lower()] = v
    return out


# -- the cookie round trip ----------------------------------------------------------------


def test_a_client_keeping_cookies_passes_after_one_303_and_is_served(clock: FakeClock
                                                                     ) -> None:
    _, app, mw = setup(clock)
    visitor = Visitor(mw)
    first = visitor.get("/search?q=caf%C3%A9&page=2")
    assert first.status_code == 303 and app.seen == []
    assert first.headers["Location"] == "/search?q=caf%C3%A9&page=2"
    assert first.headers["Cache-Control"] == "no-store"
    cookie = set_cookie(first)
    assert cookie["name"] == COOKIE_NAME and len(cookie["value"]) == 108
    assert (cookie["path"], cookie["max-age"]) == ("/", "3600")
    assert "httponly" in cookie and cookie["samesite"] == "Lax" and "secure" not in cookie
    assert b'href="/search?q=caf%C3%A9&amp;page=2"' in first.data  # a link to follow by hand
    follow = visitor.get(first.headers["Location"])
    assert follow.status_code == 200 and follow.data == b"app"
    assert app.seen == ["/search?q=caf%C3%A9&page=2"]
    for path in ("/", "/other", "/search"):  # one pass for the whole site
        assert visitor.get(path).status_code == 200
    assert visitor.post("/form", data={"a": "1"}).status_code == 200  # a known client posts


def test_a_client_keeping_no_cookies_never_reaches_the_app(clock: FakeClock) -> None:
    _, app, mw = setup(clock, issue_rate="1000/minute")
    bot = Visitor(mw, cookies=False)
    assert {bot.get("/").status_code for _ in range(20)} == {303}
    assert app.seen == []


def test_other_methods_without_a_pass_are_refused_403(clock: FakeClock) -> None:
    _, app, mw = setup(clock)
    r = Visitor(mw).post("/login", data={"user": "ann"})
    assert r.status_code == 403 and app.seen == []
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert r.data == b"Forbidden: this request needs a pass; load a page of this site first.\n"
    assert "Set-Cookie" not in r.headers
    assert Visitor(mw).open("/", method="HEAD").status_code == 303  # HEAD is asked
    assert Visitor(mw).open("/", method="DELETE").status_code == 403


def test_a_custom_responder_answers_the_403(clock: FakeClock) -> None:
    def teapot(kind: str, rule: str, decision: Any, accept: Any, headers: Any) -> Denial:
        return Denial(418, [("X-Kind", f"{kind}/{rule}")], b"tea")

    lim, app, _ = setup(clock)
    mw = WSGIMiddleware(app, lim, responders={"challenged": teapot})
    refused = Visitor(mw).post("/")
    assert (refused.status_code, refused.headers["X-Kind"]) == (418, "challenged/challenge")
    assert Visitor(mw).get("/").status_code == 303  # the redirect is the step's, as it is


def test_https_requests_get_a_secure_cookie(clock: FakeClock) -> None:
    https = {"environ_overrides": {"wsgi.url_scheme": "https"}}
    _, _, mw = setup(clock)
    assert "secure" in set_cookie(Visitor(mw).get("/", **https))
    _, _, mw = setup(clock, secure=True)
    assert "secure" in set_cookie(Visitor(mw).get("/"))
    _, _, mw = setup(clock, secure=False)
    assert "secure" not in set_cookie(Visitor(mw).get("/", **https))


def test_the_redirect_keeps_the_mount_point(clock: FakeClock) -> None:
    _, _, mw = setup(clock)
    r = Visitor(mw).open("/x/%2Fy", environ_overrides={"SCRIPT_NAME": "/app"})
    assert r.status_code == 303
    # PATH_INFO is decoded ("/x//y"): encoded again, the mount point in front
    assert r.headers["Location"] == "/app/x//y"


def test_a_request_without_a_client_address_is_refused(clock: FakeClock) -> None:
    """No address to bind a pass to: no pass can ever be given (fail closed, 403)."""
    lim = Limiter(clock=clock)
    lim.challenge(key=KEY)
    app = App()
    r = Client(WSGIMiddleware(app, lim)).get("/")  # werkzeug sets no REMOTE_ADDR
    assert r.status_code == 403 and app.seen == []


# -- who is never challenged --------------------------------------------------------------


def test_api_clients_are_throttled_never_challenged(clock: FakeClock) -> None:
    lim, app, mw = setup(clock, api=lambda v: v.path.startswith("/api/"))
    lim.throttle("per-client", "2/minute")
    json_client = Visitor(mw, accept="application/json", cookies=False)
    assert [json_client.get("/page").status_code for _ in range(3)] == [200, 200, 429]
    api = Visitor(mw, "198.51.100.7", cookies=False)
    assert [api.get("/api/items").status_code for _ in range(3)] == [200, 200, 429]
    assert len(app.seen) == 4


def test_safelisted_requests_are_never_challenged(clock: FakeClock) -> None:
    lim, _, mw = setup(clock)
    lim.safelist("monitoring", ips=["198.51.100.0/24"])
    assert Visitor(mw, "198.51.100.7", cookies=False).get("/").status_code == 200


def test_paths_choose_where_and_when_chooses_when(clock: FakeClock) -> None:
    under_attack = [False]
    _, _, mw = setup(clock, paths=["/search", "/login"], when=lambda: under_attack[0])
    bot = Visitor(mw, cookies=False)
    assert bot.get("/search").status_code == 200  # no anomaly: nobody is challenged
    under_attack[0] = True
    assert [bot.get(p).status_code for p in ("/search?q=1", "/login", "/", "/about")] == [
        303, 303, 200, 200]
    under_attack[0] = False
    assert bot.get("/search").status_code == 200


def test_when_takes_a_monitor(clock: FakeClock) -> None:
    class Monitor:  # what the step reads of throttlekit.monitor.Monitor
        anomaly = False

        def __call__(self, event: Any) -> None:  # a Monitor is an event callback too
            raise AssertionError("not an event")

    monitor = Monitor()
    _, _, mw = setup(clock, when=monitor)
    bot = Visitor(mw, cookies=False)
    assert bot.get("/").status_code == 200
    monitor.anomaly = True
    assert bot.get("/").status_code == 303

    from throttlekit.monitor import Monitor as RealMonitor

    lim = Limiter(clock=clock)
    lim.challenge(key=KEY, when=RealMonitor(lim))  # not in an anomaly: nobody challenged
    assert Client(WSGIMiddleware(App(), lim)).get(
        "/", environ_base={"REMOTE_ADDR": IP}).status_code == 200


def test_a_failing_switch_or_api_predicate_challenges_nobody(clock: FakeClock,
                                                             caplog: Any) -> None:
    def broken(*args: Any) -> bool:
        raise RuntimeError("no")

    for options in ({"when": broken}, {"api": broken}):
        lim, app, _ = setup(clock, **options)
        lim.on_storage_error = "deny"  # even so: a failing option is not a refusal
        mw = WSGIMiddleware(app, lim)
        with caplog.at_level(logging.ERROR, logger="throttlekit"):
            assert Visitor(mw, cookies=False).get("/").status_code == 200
        assert "challenge" in caplog.text


# -- passes: bound to a network, expiring, rate-limited -------------------------------------


def test_a_pass_is_good_in_its_network_and_not_from_another(clock: FakeClock) -> None:
    _, _, mw = setup(clock)
    home = Visitor(mw, "203.0.113.9")
    assert home.get("/").status_code == 303
    value = home.pass_value()
    assert value is not None
    cookie = {"Cookie": f"{COOKIE_NAME}={value}"}
    same_net = Visitor(mw, "203.0.113.200", cookies=False)
    assert same_net.get("/", headers=cookie).status_code == 200
    elsewhere = Visitor(mw, "198.51.100.1", cookies=False)
    moved = elsewhere.get("/", headers=cookie)
    assert moved.status_code == 303  # challenged again: a new pass for its own network
    assert set_cookie(moved)["value"] != value
    assert elsewhere.post("/", headers=cookie).status_code == 403


def test_ipv6_passes_are_bound_to_the_48(clock: FakeClock) -> None:
    _, _, mw = setup(clock)
    home = Visitor(mw, "2001:db8:1:2::5")
    home.get("/")
    cookie = {"Cookie": f"{COOKIE_NAME}={home.pass_value()}"}
    assert Visitor(mw, "2001:db8:1:ffff::9", cookies=False).get(
        "/", headers=cookie).status_code == 200
    assert Visitor(mw, "2001:db8:2::9", cookies=False).get(
        "/", headers=cookie).status_code == 303


def test_an_expired_pass_is_challenged_again(clock: FakeClock) -> None:
    _, _, mw = setup(clock, ttl=600)
    visitor = Visitor(mw)
    assert set_cookie(visitor.get("/"))["max-age"] == "600"
    assert visitor.get("/").status_code == 200
    clock.advance(599)
    assert visitor.get("/").status_code == 200
    clock.advance(1)
    assert visitor.get("/").status_code == 303  # a new pass
    assert visitor.get("/").status_code == 200


def test_forged_and_foreign_passes_are_challenged(clock: FakeClock) -> None:
    _, _, mw = setup(clock)
    other = PassSigner(b"another operator's key, 32 bytes", clock=clock).issue(IP)
    good = PassSigner(KEY, clock=clock).issue(IP)
    tampered = good[:-2] + ("A" if good[-2] != "A" else "B") + good[-1]
    visitor = Visitor(mw, cookies=False)
    for value in (other, tampered, "garbage", ""):
        r = visitor.get("/", headers={"Cookie": f"a=1; {COOKIE_NAME}={value}; b=2"})
        assert r.status_code == 303, value
    r = visitor.get("/", headers={"Cookie": f"a=1; {COOKIE_NAME}={good}; b=2"})
    assert r.status_code == 200  # (and a pass signed with the operator's key is good)


def test_keys_rotate(clock: FakeClock) -> None:
    old, new = b"the old key, 32 bytes long......", b"the new key, 32 bytes long......"
    _, _, mw = setup(clock, key=old)
    visitor = Visitor(mw)
    visitor.get("/")
    _, _, mw = setup(clock, key=[new, old])  # a redeploy listing the new key first
    visitor.client.application = mw
    assert visitor.get("/").status_code == 200
    _, _, mw = setup(clock, key=new)  # the old key dropped: its passes are gone
    visitor.client.application = mw
    assert visitor.get("/").status_code == 303


def test_the_hmac_runs_once_per_pass(clock: FakeClock, monkeypatch: pytest.MonkeyPatch
                                     ) -> None:
    _, _, mw = setup(clock)
    visitor = Visitor(mw)
    visitor.get("/")
    calls: list[object] = []
    verify = PassSigner.verify

    def counting(self: PassSigner, value: object, ip: object) -> Any:
        calls.append(value)
        return verify(self, value, ip)

    monkeypatch.setattr(PassSigner, "verify", counting)
    assert {visitor.get(f"/{n}").status_code for n in range(10)} == {200}
    assert len(calls) == 1


def test_pass_rate_refuses_one_pass_carrying_a_flood(clock: FakeClock) -> None:
    _, _, mw = setup(clock, pass_rate="5/minute")
    visitor = Visitor(mw)
    visitor.get("/")
    cookie = {"Cookie": f"{COOKIE_NAME}={visitor.pass_value()}"}
    # the one pass shared by many addresses of its network: one budget
    codes = [Visitor(mw, f"203.0.113.{n}", cookies=False).get("/", headers=cookie).status_code
             for n in range(1, 9)]
    assert codes == [200] * 5 + [429] * 3
    refused = Visitor(mw, cookies=False).get("/", headers=cookie)
    assert refused.headers["RateLimit-Policy"] == '"challenge-pass";q=5;w=60'
    assert Visitor(mw, cookies=True).get("/").status_code == 303  # a new pass: its own
    clock.advance(60)
    assert visitor.get("/").status_code == 200


def test_issue_rate_caps_pass_minting_per_network(clock: FakeClock) -> None:
    _, _, mw = setup(clock, issue_rate="3/minute")
    codes = [Visitor(mw, f"203.0.113.{n}", cookies=False).get("/").status_code
             for n in range(1, 6)]
    assert codes == [303, 303, 303, 429, 429]
    assert Visitor(mw, "203.0.113.77", cookies=False).post("/").status_code == 403
    assert Visitor(mw, "198.51.100.1").get("/").status_code == 303  # another network
    clock.advance(60)
    assert Visitor(mw, "203.0.113.1").get("/").status_code == 303


def test_challenged_events_name_the_network(clock: FakeClock) -> None:
    lim, _, mw = setup(clock)
    events: list[Event] = []
    lim.on("challenged", events.append)
    Visitor(mw, cookies=False).get("/")
    Visitor(mw, "198.51.100.1", cookies=False).post("/")
    assert [(e.kind, e.rule, e.key, e.dry_run, e.request.path) for e in events] == [
        ("challenged", "challenge", "203.0.113.0/24", False, "/"),
        ("challenged", "challenge", "198.51.100.0/24", False, "/"),
    ]


def test_dry_run_challenges_nobody_and_reports_who_would_be(clock: FakeClock) -> None:
    lim, app, mw = setup(clock, dry_run=True, issue_rate="1/minute")
    events: list[Event] = []
    lim.on(events.append)
    bot = Visitor(mw, cookies=False)
    assert [bot.get("/").status_code for _ in range(3)] == [200] * 3
    assert bot.post("/").status_code == 200
    assert len(app.seen) == 4
    challenged = [e for e in events if e.kind == "challenged"]
    assert [(e.key, e.dry_run) for e in challenged] == [("203.0.113.0/24", True)] * 4
    # the issue rate is a dry-run throttle too: it reports, never refuses
    assert any(e.kind == "throttled" and e.rule == "challenge-issue" and e.dry_run
               for e in events)


def test_admission_control_comes_after_the_challenge(clock: FakeClock) -> None:
    """A challenged request takes no slot: it costs the app nothing."""
    lim, _, mw = setup(clock)
    lim.admission(initial_limit=1, min_limit=1)
    step = lim.engine.admission
    assert step is not None
    for _ in range(3):
        assert Visitor(mw, cookies=False).get("/").status_code == 303
    assert step.snapshot().inflight == 0


# -- proof of work ------------------------------------------------------------------------


def work_form(page: bytes) -> dict[str, str]:
    """The hidden fields and the action of a work page."""
    text = page.decode()
    fields = {unescape(n): unescape(v) for n, v in re.findall(
        r'<input type="hidden" name="([^"]*)" value="([^"]*)">', text)}
    fields["action"] = unescape(re.search(r'action="([^"]*)"', text)[1])  # type: ignore[index]
    fields["difficulty"] = re.search(r'data-difficulty="(\d+)"', text)[1]  # type: ignore[index]
    return fields


def solved(page: bytes) -> tuple[str, dict[str, str]]:
    """Where the page posts, and its form with the solution (what the page's script does)."""
    form = work_form(page)
    action = form.pop("action")
    difficulty = int(form.pop("difficulty"))
    counter = solve(form["challenge"], difficulty)
    assert counter is not None
    form["solution"] = str(counter)
    return action, form


def test_work_mode_end_to_end(clock: FakeClock) -> None:
    _, app, mw = setup(clock, work=True, difficulty=6)
    browser = Visitor(mw, accept="text/html,application/xhtml+xml,*/*;q=0.8")
    page = browser.get("/article/7?ref=home")
    assert page.status_code == 200 and app.seen == []
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert "Set-Cookie" not in page.headers
    action, form = solved(page.data)
    assert action == DEFAULT_ACTION and form["return_to"] == "/article/7?ref=home"
    answer = browser.post(action, data=form)
    assert answer.status_code == 303 and answer.headers["Location"] == "/article/7?ref=home"
    assert set_cookie(answer)["name"] == COOKIE_NAME
    assert browser.get(answer.headers["Location"]).status_code == 200
    assert app.seen == ["/article/7?ref=home"]
    # a client that does not ask for HTML gets the cookie round trip
    assert Visitor(mw, "198.51.100.1", accept="*/*").get("/").status_code == 303


def test_a_wrong_or_moved_answer_gets_a_new_page(clock: FakeClock) -> None:
    _, app, mw = setup(clock, work=True, difficulty=6)
    browser = Visitor(mw, accept="text/html")
    action, form = solved(browser.get("/").data)
    wrong = browser.post(action, data={**form, "solution": "x"})
    assert wrong.status_code == 403 and b"tk-work" in wrong.data  # a fresh page
    assert work_form(wrong.data)["challenge"] != form["challenge"]
    moved = Visitor(mw, "198.51.100.1", accept="text/html").post(action, data=form)
    assert moved.status_code == 403 and b"tk-work" in moved.data
    clock.advance(301)  # a challenge lasts 300 s
    assert browser.post(action, data=form).status_code == 403
    assert Visitor(mw).post(action, data={"nothing": "here"}).status_code == 403
    assert app.seen == []


def test_a_replayed_solution_shares_one_pass_id(clock: FakeClock) -> None:
    """Every redemption of one solved challenge yields a pass of the same id: replaying it
    only ever adds up to one pass's rate."""
    _, _, mw = setup(clock, work=True, difficulty=6, pass_rate="3/minute",
                         issue_rate="100/minute")
    action, form = solved(Visitor(mw, accept="text/html").get("/").data)
    codes = []
    for n in range(1, 6):
        bot = Visitor(mw, f"203.0.113.{n}")
        assert bot.post(action, data=form).status_code == 303
        codes.append(bot.get("/").status_code)
    assert codes == [200, 200, 200, 429, 429]


def test_the_action_path_follows_the_mount_point(clock: FakeClock) -> None:
    _, _, mw = setup(clock, work=True, difficulty=6, action="/_check")
    browser = Visitor(mw, accept="text/html")
    page = browser.open("/x", environ_overrides={"SCRIPT_NAME": "/app"})
    action, form = solved(page.data)
    assert (action, form["return_to"]) == ("/app/_check", "/app/x")
    answer = browser.open("/_check", "POST", data=form,
                          environ_overrides={"SCRIPT_NAME": "/app"})
    assert answer.headers["Location"] == "/app/x"


# -- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "names"), [
    ({"paths": "search"}, "paths"),
    ({"paths": []}, "paths"),
    ({"paths": [1]}, "paths"),
    ({"when": 3}, "when"),
    ({"api": "json"}, "api"),
    ({"pass_rate": "lots"}, "pass_rate"),
    ({"issue_rate": 30}, "issue_rate"),
    ({"work": "yes"}, "work"),
    ({"dry_run": 1}, "dry_run"),
    ({"secure": "auto"}, "secure"),
    ({"action": "check"}, "action"),
    ({"action": "//evil.example/"}, "action"),
    ({"action": "/check?x=1"}, "action"),
    ({"ttl": 0}, "ttl"),
    ({"difficulty": 40}, "difficulty"),
    ({"ipv4_prefix": 33}, "ipv4_prefix"),
    ({"key": b"short"}, "key"),
])
def test_bad_settings_are_config_errors_naming_the_value(options: dict[str, Any],
                                                         names: str) -> None:
    lim = Limiter()
    with pytest.raises(ConfigError, match=names):
        lim.challenge(**{"key": KEY, **options})
    assert not lim.engine.rules.throttles  # nothing half-registered


def test_one_challenge_per_limiter() -> None:
    lim = Limiter()
    lim.challenge(key=KEY)
    with pytest.raises(ConfigError, match="challenge already"):
        lim.challenge(key=KEY)


def test_no_key_warns_that_passes_do_not_survive_a_restart(caplog: Any) -> None:
    with caplog.at_level(logging.WARNING, logger="throttlekit"):
        Limiter().challenge()
    assert "random per-process key" in caplog.text
