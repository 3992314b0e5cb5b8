"""Adversarial review of the rule index (issue 14, session 26): the index must never change
which rules apply.

Rules declaring ``methods=``, ``paths=``, ``path_prefix=`` and ``hosts=`` are compared with
the same conditions written out, from docs/rules.md, as ``match`` callables (asked rule by
rule), on requests built the way real servers build them (WSGI: ``PATH_INFO`` percent-decoded
and latin-1 decoded, PEP 3333; ASGI: ``path`` percent-decoded as UTF-8), through the WSGI and
ASGI middleware; and while rules are added and a rules file reloads under traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import re
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profiles import examples
from threads import run_threads
from throttlekit import ASGIMiddleware, ConfigError, Limiter, RequestView, WSGIMiddleware
from throttlekit.testing import FakeClock

T0 = 1_700_000_040.0  # a minute boundary
CLIENTS = ["198.51.100.7", "198.51.100.8", "2001:db8::7"]

# -- the reference: docs/rules.md's declared conditions, written out ----------------------


def _strip_port(host: str) -> str:
    if host.startswith("["):
        end = host.find("]")
        return host[:end + 1] if end > 0 else host
    return host.split(":", 1)[0]


def request_host(v: RequestView) -> str:
    """The request's host as docs/rules.md describes it: the Host header (the first, when
    a client sent two), lower case, without its port; a fully qualified name's trailing
    dot names the same host."""
    host = (v.headers.get("host") or "").split(",", 1)[0].strip().lower()
    return _strip_port(host).rstrip(".")


def rule_host(host: str) -> str:
    """A host as a rule names it: an IPv6 address may be written bare or bracketed."""
    host = host.lower()
    try:
        return f"[{ipaddress.IPv6Address(host)}]".rstrip(".")
    except ValueError:
        return _strip_port(host).rstrip(".")


def reference(methods: list[str] | None, paths: list[str] | None,
              prefixes: list[str] | None, hosts: list[str] | None) -> Any:
    ms = None if methods is None else {m.upper() for m in methods}
    hs = None if hosts is None else {rule_host(h) for h in hosts}

    def match(v: RequestView) -> bool:
        if ms is not None and v.method not in ms:
            return False
        if paths is not None or prefixes is not None:
            p = v.path
            if not ((paths is not None and p in paths)
                    or (prefixes is not None and any(p.startswith(x) for x in prefixes))):
                return False
        return hs is None or request_host(v) in hs

    return match


# -- random rule sets --------------------------------------------------------------------

RULE_PATHS = ["/", "/api", "/api/", "/api/v1", "/api/v1/", "/apis", "/API/", "/a", "/a/b",
              "/café", "/café/", "/caf%C3%A9", "//x", "/a b", "/x/%2F/"]
RULE_HOSTS = ["example.com", "Example.COM", "api.example.com:8080", "[::1]", "[::1]:8000",
              "::1", "2001:db8::1", "[2001:DB8::1]", "example.com.", "localhost"]
RULE_METHODS = ["GET", "get", "Post", "PUT", "delete", "HEAD", "patch"]


@st.composite
def rule_st(draw: Any) -> dict[str, Any]:
    def maybe(values: list[str]) -> Any:
        return draw(st.none() | st.lists(st.sampled_from(values), min_size=1, max_size=3))
    return {
        "methods": maybe(RULE_METHODS), "paths": maybe(RULE_PATHS),
        "path_prefix": maybe(RULE_PATHS), "hosts": maybe(RULE_HOSTS),
        "limit": draw(st.integers(1, 3)), "cost": draw(st.sampled_from([1, 1, 2])),
        "key": draw(st.sampled_from([None, None, "ip", "path", "header:x-k"])),
        "kind": draw(st.sampled_from(["plain", "plain", "plain", "callable", "dry_run",
                                      "count_when"])),
    }


@st.composite
def extras_st(draw: Any) -> dict[str, bool]:
    return {k: draw(st.booleans()) for k in ("blocklist", "safelist", "fail2ban")}


def build(rules: list[dict[str, Any]], extras: dict[str, bool], declared: bool,
          clock: FakeClock) -> Limiter:
    lim = Limiter(clock=clock)
    if extras["safelist"]:
        lim.safelist("trusted", ips=["198.51.100.8/32"])
    if extras["blocklist"]:
        lim.blocklist("no-dotfiles", lambda v: v.path.startswith("/."))
    if extras["fail2ban"]:
        lim.fail2ban("scan", match=lambda v: "b" in v.path, maxretry=3, findtime=60,
                     bantime=60)
    for i, r in enumerate(rules):
        conds = {k: r[k] for k in ("methods", "paths", "path_prefix", "hosts")}
        extra = (lambda v: v.query != "skip") if r["kind"] == "callable" else None
        kw: dict[str, Any] = {"cost": r["cost"], "key": r["key"],
                              "dry_run": r["kind"] == "dry_run"}
        if r["kind"] == "count_when":
            kw["count_when"] = lambda resp: resp.status_code >= 200
        if declared:
            lim.throttle(f"r{i}", f"{r['limit']}/minute", match=extra, **conds, **kw)
        else:
            ref = reference(conds["methods"], conds["paths"], conds["path_prefix"],
                            conds["hosts"])
            match = ref if extra is None else (lambda v, a=ref, b=extra: a(v) and b(v))
            lim.throttle(f"r{i}", f"{r['limit']}/minute", match=match, **kw)
    if declared:
        assert lim.engine.rules.index is not None or all(
            r[k] is None for r in rules for k in ("methods", "paths", "path_prefix", "hosts"))
    else:
        assert lim.engine.rules.index is None
    return lim


# -- requests as servers build them -------------------------------------------------------

TARGET_SEGMENTS = ["api", "API", "apis", "v1", "a", "b", "caf%C3%A9", "café", "x", "%2F",
                   "a%20b", "", "%FF", ".env"]
REQ_HOSTS: list[Any] = [None, "example.com", "EXAMPLE.com:8080", "example.com.",
                        "example.com.:443", "[::1]:8000", "[::1]", "[2001:db8::1]:80",
                        "api.example.com", "localhost:5000", ["example.com", "evil.test"],
                        ["API.example.com:8080", "api.example.com:8080"]]
REQ_METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "get", "Post", "PROPFIND"]

target_st = st.lists(st.sampled_from(TARGET_SEGMENTS), max_size=4).flatmap(
    lambda segs: st.sampled_from(["/" + "/".join(segs), "/" + "/".join(segs) + "/"]))
request_st = st.tuples(st.sampled_from(REQ_METHODS), target_st, st.sampled_from(REQ_HOSTS),
                       st.sampled_from(CLIENTS), st.sampled_from(["", "skip"]),
                       st.sampled_from([None, "k1", "k2"]))


def environ(req: tuple[Any, ...]) -> dict[str, Any]:
    """As gunicorn and werkzeug build it: the target percent-decoded to bytes, then
    latin-1 (PEP 3333); repeated headers joined with ", "."""
    method, target, host, ip, query, xk = req
    env: dict[str, Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": unquote_to_bytes(target).decode("latin-1"),
        "SCRIPT_NAME": "", "QUERY_STRING": query, "REMOTE_ADDR": ip, "REMOTE_PORT": "40000",
        "SERVER_NAME": "testserver", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http", "RAW_URI": target,
    }
    if host is not None:
        env["HTTP_HOST"] = host if isinstance(host, str) else ", ".join(host)
    if xk is not None:
        env["HTTP_X_K"] = xk
    return env


def scope(req: tuple[Any, ...]) -> dict[str, Any]:
    """As uvicorn builds it: ``path`` percent-decoded as UTF-8, ``raw_path`` the bytes."""
    method, target, host, ip, query, xk = req
    headers = [] if host is None else [
        (b"host", h.encode()) for h in ([host] if isinstance(host, str) else host)]
    if xk is not None:
        headers.append((b"x-k", xk.encode()))
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": unquote(target), "raw_path": target.encode(),
        "query_string": query.encode(), "root_path": "", "client": (ip, 40000),
        "server": ("testserver", 80), "headers": headers,
    }


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def wsgi_call(app: Any, env: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    got: list[Any] = []
    body = app(env, lambda status, headers, exc_info=None: got.extend((status, headers)))
    b"".join(body)
    if hasattr(body, "close"):
        body.close()
    return got[0], sorted(got[1])


async def asgi_call(app: Any, sc: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]]]:
    sent: list[dict[str, Any]] = []
    asked = False

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(sc, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], sorted(start.get("headers", []))


def summary(v: Any) -> tuple[Any, ...]:
    return (v.allowed, v.kind, v.rule, v.key, v.decision, v.policies)


@settings(max_examples=examples(300), deadline=None)
@given(rules=st.lists(rule_st(), min_size=1, max_size=8), extras=extras_st(),
       requests=st.lists(request_st, min_size=1, max_size=14))
def test_indexed_equals_asked_through_both_middlewares(
    rules: list[dict[str, Any]], extras: dict[str, bool], requests: list[tuple[Any, ...]]
) -> None:
    """The same requests through the WSGI middleware, the ASGI middleware and
    ``Limiter.evaluate`` (views of the environ and of the scope) get the same answers
    (status, rate-limit headers; verdicts: kind, rule, key, decision, policies) whether
    the rules declare their conditions or ask them as match callables, with lists and a
    fail2ban rule beside them, throttles keyed several ways, dry-run and count_when ones."""
    clock = FakeClock()
    clock.set(T0)
    indexed, asked = (build(rules, extras, d, clock) for d in (True, False))
    wi, wa = WSGIMiddleware(wsgi_app, indexed), WSGIMiddleware(wsgi_app, asked)
    ai, aa = ASGIMiddleware(asgi_app, indexed), ASGIMiddleware(asgi_app, asked)

    async def run() -> None:
        for req in requests:
            assert wsgi_call(wi, environ(req)) == wsgi_call(wa, environ(req)), req
            assert await asgi_call(ai, scope(req)) == await asgi_call(aa, scope(req)), req
            vi = indexed.evaluate(RequestView.from_environ(environ(req), indexed.resolver))
            va = asked.evaluate(RequestView.from_environ(environ(req), asked.resolver))
            assert summary(vi) == summary(va), req
            vi = indexed.evaluate(RequestView.from_scope(scope(req), indexed.resolver))
            va = asked.evaluate(RequestView.from_scope(scope(req), asked.resolver))
            assert summary(vi) == summary(va), req
            clock.advance(7)

    asyncio.run(run())


# -- hosts: what a client can send that names the same host ---------------------------------


def host_view(lim: Limiter, *hosts: str) -> RequestView:
    return RequestView.from_scope(scope(("GET", "/", list(hosts), CLIENTS[0], "", None)),
                                  lim.resolver)


def applying(lim: Limiter, v: RequestView) -> list[str]:
    return [n for n, _ in lim.evaluate(v).policies]


@pytest.mark.parametrize(("declared", "sent"), [
    ("::1", "[::1]:8000"),  # was: "::1" read as host "" (":" taken for the port)
    ("2001:db8::1", "[2001:db8::1]"),  # was: host "2001"
    ("[2001:db8::1]", "[2001:DB8:0:0::1]:443"),  # another spelling of the address
    ("api.example.com", "api.example.com."),  # a fully qualified name: the same host
    ("api.example.com", "api.example.com.:8443"),
])
def test_a_host_rule_applies_to_every_spelling_of_its_host(declared: str, sent: str) -> None:
    """A client reaching the host under another spelling of its name (which servers and
    proxies route to the same site) is still counted by a hosts= throttle; and a rule
    naming an IPv6 address never applies to requests without a Host header."""
    lim = Limiter(clock=FakeClock())
    lim.throttle("h", "100/minute", hosts=declared)
    assert applying(lim, host_view(lim, sent)) == ["h"]
    assert applying(lim, RequestView.from_scope(
        scope(("GET", "/", None, CLIENTS[0], "", None)), lim.resolver)) == []


def test_a_host_header_sent_twice_is_decided_by_the_first() -> None:
    """Two Host headers (the ASGI scope keeps both, the view joins them "a, b"): the rule
    of the first host applies, as the app (Starlette's request.url) reads the first; the
    joined value used to match no rule at all."""
    lim = Limiter(clock=FakeClock())
    lim.throttle("api", "1/minute", hosts="api.example.com")
    assert applying(lim, host_view(lim, "api.example.com", "api.example.com")) == ["api"]
    assert not lim.evaluate(host_view(lim, "api.example.com", "other.test")).allowed


@pytest.mark.parametrize(("host", "message"), [
    (":8080", "hosts ':8080' is not a host name"),  # was host "": requests without Host
    ("[]", "hosts '[]' is not a host name"),
    ("1:2:3", "hosts '1:2:3' is not a host name"),
    ("bücher.example", "write 'xn--bcher-kva.example'"),  # browsers send the A-label
])
def test_a_host_no_request_can_name_is_a_config_error(host: str, message: str) -> None:
    lim = Limiter()
    with pytest.raises(ConfigError, match=re.escape(message)):
        lim.throttle("h", "1/minute", hosts=host)


def test_empty_paths_and_prefixes_are_config_errors() -> None:
    """"" is no path: refused (a prefix "" would match every request silently)."""
    lim = Limiter()
    for kw in ({"paths": ""}, {"path_prefix": [""]}, {"path_prefix": ["/a", ""]}):
        with pytest.raises(ConfigError):
            lim.throttle("r", "1/minute", **kw)
    assert lim.engine.rules.throttles == ()


# -- rules changing under traffic -----------------------------------------------------------

HIGH = "1000000/second"


def rules_version(k: int) -> str:
    """Version ``k`` of a rules file: rule "a" declares GET under /x/ in even versions and
    /y/ in odd ones; rule "v<k>" (its name says the version) /x/1 or every path under /x/."""
    if k % 2 == 0:
        return (f'[[throttle]]\nname = "a"\nmethod = "get"\npath_prefix = "/x/"\n'
                f'rates = "{HIGH}"\n[[throttle]]\nname = "v{k}"\npath = "/x/1"\n'
                f'rates = "{HIGH}"\n')
    return (f'[[throttle]]\nname = "a"\npath_prefix = "/y/"\nrates = "{HIGH}"\n'
            f'[[throttle]]\nname = "v{k}"\npath_prefix = "/x/"\nrates = "{HIGH}"\n')


def expected(k: int, method: str) -> list[str]:
    """The policies of ``method /x/1`` (Host example.com) under version ``k``: the code
    rule first (registered before the file's), then the file's in its order."""
    return ["code", "a", f"v{k}"] if k % 2 == 0 and method == "GET" else ["code", f"v{k}"]


def write_atomically(path: Any, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # a new inode: the watcher installs it on the next request


def test_a_reload_under_traffic_never_shows_a_half_built_rule_set(tmp_path: Any) -> None:
    """Threads send requests through the WSGI middleware (reload_interval=0: every request
    looks at the file) while the file is rewritten: every verdict's policies are exactly
    those of one version of the file, in registration order, beside the code rule; never
    a mix of versions, a rule missing, or a rule whose conditions do not hold."""
    f = tmp_path / "rules.toml"
    f.write_text(rules_version(0))
    lim = Limiter()
    lim.throttle("code", HIGH, hosts="Example.com", path_prefix="/x/")
    app = WSGIMiddleware(wsgi_app, lim, rules_file=str(f), reload_interval=0)
    done = threading.Event()
    bad: list[Any] = []
    seen: set[str] = set()

    def traffic(method: str) -> None:
        while not done.is_set():
            env = environ((method, "/x/1", "example.com:8000", CLIENTS[0], "", None))
            wsgi_call(app, env)
            names = [n for n, _ in env["throttlekit.verdict"].policies]
            k = next((int(n[1:]) for n in names if n[:1] == "v"), -1)
            if k < 0 or names != expected(k, method):
                bad.append((method, names))
            seen.add(f"v{k}")

    threads = [threading.Thread(target=traffic, args=(m,)) for m in ("GET", "POST")]
    for t in threads:
        t.start()
    try:
        for k in range(1, 41):
            time.sleep(0.02)
            write_atomically(f, rules_version(k))
    finally:
        time.sleep(0.05)
        done.set()
        for t in threads:
            t.join()
    assert bad == []
    assert len(seen) > 10  # the versions were installed while the requests ran
    env = environ(("GET", "/x/1", "example.com", CLIENTS[0], "", None))
    wsgi_call(app, env)
    assert [n for n, _ in env["throttlekit.verdict"].policies] == expected(40, "GET")


@contextlib.contextmanager
def _reloading(lim: Limiter, f: Any) -> Iterator[None]:
    """``lim`` loads the rules file ``f``, rewritten (``rules_version``) and reloaded in a
    loop by a thread of its own while the block runs."""
    f.write_text(rules_version(0))
    lim.load_rules(str(f))
    done = threading.Event()

    def reloads() -> None:
        k = 0
        while not done.is_set():
            k += 1
            f.write_text(rules_version(k))
            lim.reload()

    t = threading.Thread(target=reloads)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()


def test_rules_registered_in_code_during_reloads_are_kept(tmp_path: Any) -> None:
    """``limiter.throttle(...)`` in one thread while another reloads the rules file: rules
    registered in code are kept across reloads, so every one registered must be in force
    at the end, with its conditions. (A reload copies the rules and swaps the copy in; a
    rule registered on the old ones in between was lost: 5 of 300.)"""
    lim = Limiter()
    with _reloading(lim, tmp_path / "rules.toml"):
        for i in range(300):
            lim.throttle(f"code{i}", HIGH, path_prefix=f"/c{i}/")
    names = {r.name for r in lim.engine.rules.throttles}
    lost = sorted(f"code{i}" for i in range(300) if f"code{i}" not in names)
    assert lost == []
    v = lim.evaluate(RequestView.from_environ(
        environ(("GET", "/c7/", None, CLIENTS[0], "", None)), lim.resolver))
    assert [n for n, _ in v.policies] == ["code7"]


def test_threads_registering_at_once_all_land(tmp_path: Any) -> None:
    """Four threads registering throttles, blocklists and concurrency rules at once, while
    a fifth reloads the rules file: every rule registered in code is in force at the end
    (registration is read, copy, publish: two at once lost one)."""
    lim = Limiter()

    def register(t: int) -> None:
        for i in range(60):
            lim.throttle(f"t{t}-{i}", HIGH, path_prefix=f"/t{t}/{i}/")
            lim.blocklist(f"b{t}-{i}", ips=[f"10.{t}.{i}.0/24"])
            lim.concurrency(f"c{t}-{i}", 1000, key="client")

    with _reloading(lim, tmp_path / "rules.toml"):
        run_threads(*(functools.partial(register, t) for t in range(4)))
    rules = lim.engine.rules
    conc = lim.engine.concurrency
    assert conc is not None
    for t in range(4):
        for i in range(60):
            assert rules.names.get(f"t{t}-{i}") == "throttle"
            assert rules.names.get(f"b{t}-{i}") == "blocklist"
            assert f"c{t}-{i}" in conc.names
    assert len([r for r in rules.throttles if r.name.startswith("t")]) == 240
    assert len([r for r in rules.blocklists if r.name.startswith("b")]) == 240
    assert len([r for r in conc.rules if r.name.startswith("c")]) == 240
