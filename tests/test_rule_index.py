"""Throttles indexed by what they declare they match (``methods=``, ``paths=``,
``path_prefix=``, ``hosts=``): the same verdicts as asking every rule, for less."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profiles import examples
from throttlekit import ConfigError, Limiter, RequestView, Verdict
from throttlekit.testing import FakeClock

T0 = 1_700_000_040.0  # a minute boundary

SEGMENTS = ["a", "ab", "api", "v1"]


def environ(method: str = "GET", path: str = "/", host: str | None = "example.com",
            ip: str = "198.51.100.7") -> dict[str, Any]:
    env = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "",
           "REMOTE_ADDR": ip, "wsgi.url_scheme": "http"}
    if host is not None:
        env["HTTP_HOST"] = host
    return env


def view_of(limiter: Limiter, **kw: Any) -> RequestView:
    return RequestView.from_environ(environ(**kw), limiter.resolver)


def reference(methods: list[str] | None, paths: list[str] | None,
              prefixes: list[str] | None, hosts: list[str] | None) -> Any:
    """The conditions written out as a plain predicate, asked for every request."""
    def match(v: RequestView) -> bool:
        if methods is not None and v.method not in {m.upper() for m in methods}:
            return False
        if paths is not None or prefixes is not None:
            p = v.path
            if not ((paths is not None and p in paths)
                    or (prefixes is not None and any(p.startswith(x) for x in prefixes))):
                return False
        if hosts is not None:
            h = (v.headers.get("host") or "").lower().split(":")[0]
            return h in {x.lower() for x in hosts}
        return True

    return match


paths_st = st.lists(st.sampled_from(SEGMENTS), max_size=3).flatmap(
    lambda segs: st.sampled_from(["/" + "/".join(segs), "/" + "/".join(segs) + "/"])
)
prefix_st = st.one_of(paths_st, st.sampled_from(["/", "/a", "/ap", "/api", "/v"]))
hosts_st = st.sampled_from(["example.com", "api.example.com", "Other.example.com"])


@st.composite
def rule_st(draw: Any) -> dict[str, Any]:
    def maybe(strategy: Any) -> Any:
        return draw(st.none() | st.lists(strategy, min_size=1, max_size=3))
    return {
        "methods": maybe(st.sampled_from(["GET", "post", "PUT"])),
        "paths": maybe(paths_st),
        "path_prefix": maybe(prefix_st),
        "hosts": maybe(hosts_st),
        "limit": draw(st.integers(1, 3)),
        "cost": draw(st.sampled_from([1, 1, 2])),
        "kind": draw(st.sampled_from(["plain", "plain", "plain", "callable", "dry_run"])),
    }


request_st = st.tuples(
    st.sampled_from(["GET", "POST", "PUT", "DELETE"]), paths_st,
    st.sampled_from(["example.com", "API.example.com:8080", "other.example.com", None]),
    st.sampled_from(["198.51.100.7", "198.51.100.8"]),
)


def register(limiter: Limiter, i: int, r: dict[str, Any], declared: bool) -> None:
    conds = {k: r[k] for k in ("methods", "paths", "path_prefix", "hosts")}
    extra = (lambda v: v.method != "DELETE") if r["kind"] == "callable" else None
    kw: dict[str, Any] = {"cost": r["cost"], "dry_run": r["kind"] == "dry_run"}
    if declared:
        limiter.throttle(f"r{i}", f"{r['limit']}/minute", match=extra, **conds, **kw)
    else:
        ref = reference(conds["methods"], conds["paths"], conds["path_prefix"],
                        conds["hosts"])
        match = ref if extra is None else (lambda v, a=ref, b=extra: a(v) and b(v))
        limiter.throttle(f"r{i}", f"{r['limit']}/minute", match=match, **kw)


def summary(v: Verdict) -> tuple[Any, ...]:
    return (v.allowed, v.kind, v.rule, v.key, v.decision, v.policies)


@pytest.mark.parametrize("path", ["engine", "planner"])
@settings(max_examples=examples(60), deadline=None)
@given(rules=st.lists(rule_st(), min_size=1, max_size=8),
       requests=st.lists(request_st, min_size=1, max_size=12))
def test_indexed_verdicts_equal_asking_every_rule(
    path: str, rules: list[dict[str, Any]], requests: list[tuple[Any, ...]]
) -> None:
    """Random rules declaring methods, paths, prefixes and hosts give the same verdicts,
    request after request (which rule refuses, the policies and their order), as the same
    conditions written as match callables and asked rule by rule; through the engine's
    common case and through the planner (a listener turns the common case off)."""
    clock = FakeClock()
    clock.set(T0)
    indexed, asked = Limiter(clock=clock), Limiter(clock=clock)
    for i, r in enumerate(rules):
        register(indexed, i, r, True)
        register(asked, i, r, False)
    assert asked.engine.rules.index is None
    if path == "planner":
        indexed.on(lambda e: None)
        asked.on(lambda e: None)
    for method, p, host, ip in requests:
        kw = {"method": method, "path": p, "host": host, "ip": ip}
        assert summary(indexed.evaluate(view_of(indexed, **kw))) == summary(
            asked.evaluate(view_of(asked, **kw)))


def test_a_rule_is_skipped_for_requests_it_does_not_declare() -> None:
    """methods=, path_prefix=, paths= and hosts= each keep the rule off other requests."""
    lim = Limiter(clock=FakeClock())
    lim.throttle("login", "1/minute", methods="POST", paths=["/login"])
    lim.throttle("api", "1/minute", path_prefix="/api/")
    lim.throttle("admin", "1/minute", hosts="Admin.Example.com")
    assert lim.evaluate(view_of(lim, method="GET", path="/login")).policies == []
    assert [n for n, _ in lim.evaluate(view_of(lim, method="POST", path="/login")).policies
            ] == ["login"]
    assert lim.evaluate(view_of(lim, method="POST", path="/login")).rule == "login"
    assert lim.evaluate(view_of(lim, path="/apix")).policies == []
    assert lim.evaluate(view_of(lim, path="/api/x")).allowed
    assert lim.evaluate(view_of(lim, path="/api/y")).rule == "api"
    assert lim.evaluate(view_of(lim, host="admin.example.com:8443")).allowed
    assert lim.evaluate(view_of(lim, host="ADMIN.example.com")).rule == "admin"
    assert lim.evaluate(view_of(lim, host="www.example.com")).allowed


@pytest.mark.parametrize(("kw", "message"), [
    ({"methods": ["FETCH"]}, "unknown HTTP method 'FETCH'"),
    ({"methods": []}, "methods must be a non-empty string"),
    ({"paths": ["login"]}, "paths 'login' does not start with '/'"),
    ({"path_prefix": 3}, "path_prefix must be a non-empty string"),
    ({"hosts": ["https://a.example/"]}, "hosts 'https://a.example/' is not a host name"),
    ({"hosts": [""]}, "hosts must be a non-empty string"),
])
def test_bad_conditions_are_config_errors_naming_the_value(kw: dict[str, Any],
                                                           message: str) -> None:
    """A bad declared condition is refused at registration, naming the value."""
    lim = Limiter()
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        lim.throttle("r", "1/second", **kw)
    assert lim.engine.rules.throttles == ()


def test_rules_file_conditions_are_declared_not_asked(tmp_path: Any) -> None:
    """A rules file's method, path and path_prefix become the throttle's declared
    conditions (no match callable to ask); path with path_prefix keeps both required."""
    f = tmp_path / "rules.toml"
    f.write_text(
        '[[throttle]]\nname = "login"\nmethod = "post"\npath = "/login"\nrates = "1/minute"\n'
        '[[throttle]]\nname = "both"\npath = ["/a/x", "/b/x"]\npath_prefix = "/a/"\n'
        'rates = "1/minute"\n'
    )
    lim = Limiter(clock=FakeClock())
    lim.load_rules(str(f))
    login, both = lim.engine.rules.throttles
    assert login.match is None and login.where is not None
    assert login.where.methods == frozenset({"POST"})
    assert both.match is not None  # the prefix, still asked
    assert lim.evaluate(view_of(lim, path="/b/x")).policies == []
    assert lim.evaluate(view_of(lim, path="/a/x")).allowed
    assert lim.evaluate(view_of(lim, path="/a/x")).rule == "both"
    assert lim.evaluate(view_of(lim, method="POST", path="/login")).allowed
    assert lim.evaluate(view_of(lim, method="POST", path="/login")).rule == "login"


def test_a_reload_swaps_the_index(tmp_path: Any) -> None:
    """Reloading a rules file swaps the rule set and its index whole: the new conditions
    hold at once, the old ones no longer do."""
    f = tmp_path / "rules.toml"
    f.write_text('[[throttle]]\nname = "t"\npath_prefix = "/old/"\nrates = "1/minute"\n')
    lim = Limiter(clock=FakeClock())
    lim.load_rules(str(f))
    before = lim.engine.rules.index
    assert lim.evaluate(view_of(lim, path="/old/1")).allowed
    assert lim.evaluate(view_of(lim, path="/old/1")).rule == "t"
    f.write_text('[[throttle]]\nname = "t"\npath_prefix = "/new/"\nrates = "1/minute"\n')
    assert lim.reload()
    assert lim.engine.rules.index is not before
    assert lim.evaluate(view_of(lim, path="/old/1")).policies == []
    assert lim.evaluate(view_of(lim, path="/new/1")).rule == "t"  # its state carried over


def test_rules_added_by_another_thread_are_never_misapplied() -> None:
    """While one thread registers rules (with conditions, dry-run ones among them), verdicts
    in another never name a rule whose conditions do not hold, nor let a dry-run rule
    refuse (it would if the common case took it for a plain one)."""
    lim = Limiter()
    lim.throttle("base", "1000000/second", path_prefix="/api/")
    done = threading.Event()
    bad: list[Verdict] = []

    def evaluate() -> None:
        while not done.is_set():
            v = lim.evaluate(view_of(lim, path="/api/x"))
            names = [n for n, _ in v.policies]
            if not v.allowed and v.rule is not None and v.rule.startswith("dry"):
                bad.append(v)
            if any(n.startswith("other") for n in names):
                bad.append(v)

    t = threading.Thread(target=evaluate)
    t.start()
    try:
        for i in range(300):
            lim.throttle(f"dry{i}", "1/minute", path_prefix="/api/", dry_run=True)
            lim.throttle(f"other{i}", "1/minute", path_prefix=f"/o{i}/", methods="GET")
    finally:
        done.set()
        t.join()
    assert bad == []
    v = lim.evaluate(view_of(lim, path="/api/x"))
    assert v.allowed and [n for n, _ in v.policies] == ["base"]


def test_set_rule_rates_keeps_the_conditions() -> None:
    """Tightening a rule (shield mode) keeps what it declares it matches."""
    lim = Limiter(clock=FakeClock())
    lim.throttle("api", "100/minute", path_prefix="/api/")
    lim.set_rule_rates("api", "1/minute")
    assert lim.evaluate(view_of(lim, path="/other")).policies == []
    assert lim.evaluate(view_of(lim, path="/api/1")).allowed
    assert lim.evaluate(view_of(lim, path="/api/1")).rule == "api"
