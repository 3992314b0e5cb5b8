"""Rules files: TOML -> rules, every error with its line and a hint, and `check`/`rules`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

import throttlekit
from throttlekit import ConfigError, Limiter, WSGIMiddleware
from throttlekit._rulesfile import RulesFileError, load_rules, parse_rules
from throttlekit.testing import FakeClock

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "rules.toml"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m throttlekit ARGS` in a fresh interpreter, on this checkout's package."""
    env = dict(os.environ)
    pkg_parent = str(Path(throttlekit.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "throttlekit", *args], capture_output=True,
                          text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)


def _errors(text: str) -> list[Any]:
    with pytest.raises(RulesFileError) as info:
        parse_rules(textwrap.dedent(text), "r.toml")
    return info.value.errors


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """/fail answers 401, anything else 200."""
    status = "401 Unauthorized" if environ["PATH_INFO"] == "/fail" else "200 OK"
    start_response(status, [("Content-Type", "text/plain")])
    return [b"ok"]


# -- errors ------------------------------------------------------------------------------

ERROR_CASES = [
    pytest.param('[[throttle]]\nname = "a"\nrates = "1/second"\nstrategy = "leaky"\n',
                 4, "unknown strategy 'leaky'", "strategies:", id="unknown-strategy"),
    pytest.param('[[throttle]]\nname = "a"\nstrategy = "token_buckt"\nrates = "1/second"\n',
                 3, "unknown strategy", "did you mean 'token_bucket'", id="strategy-typo"),
    pytest.param('[[throttle]]\nname = "a"\n\nrates = "10/fortnight"\n',
                 4, "bad rate '10/fortnight'", "<count>/<period>", id="bad-rate"),
    pytest.param('[[throttle]]\nname = "a"\nrates = 10\n',
                 3, "rates must be a string", "100/minute", id="rate-not-string"),
    pytest.param('[[blocklist]]\nname = "n"\nips = ["10.0.0.1", "10.0.0.0/33"]\n',
                 3, "bad address or CIDR '10.0.0.0/33'", "203.0.113.0/24", id="bad-cidr"),
    pytest.param('[[blocklist]]\nname = "n"\nips = ["192.168.1.1/16"]\n',
                 3, "host bits set", "no host bits", id="cidr-host-bits"),
    pytest.param('[[throttle]]\nname = "a"\nrates = "1/second"\nkey = "clinet"\n',
                 4, "unknown key name 'clinet'", "did you mean 'client'", id="unknown-key"),
    pytest.param('[[throttle]]\nname = "a"\nrates = "1/second"\n'
                 '[[track]]\nname = "a"\n', 5, "duplicate rule name 'a' (first used on line 2)",
                 "unique", id="duplicate-rule"),
    pytest.param('[[throttle]]\nname = "a"\nrate = "1/second"\n',
                 3, "unknown field 'rate'", "did you mean 'rates'", id="unknown-field"),
    pytest.param('[[throttle]]\nname = "a"\n', 1, "missing required field 'rates'",
                 "needs rates", id="missing-field"),
    pytest.param('[[fail2ban]]\nname = "f"\npath = "/x"\nmaxretry = "3"\nfindtime = 60\n'
                 'bantime = 60\n', 4,
                 "maxretry must be a whole number from 1 to 4294967295, got a string",
                 "without quotes", id="int-as-string"),
    pytest.param('[[fail2ban]]\nname = "f"\npath = "/x"\nmaxretry = 3\nfindtime = "ten minutes"\n'
                 'bantime = 60\n', 5,
                 "findtime must be a duration from 1ms to 3650 days, got a string", '"10m"',
                 id="bad-duration"),
    pytest.param('[[throttle]]\nname = "a"\nrates = "1/second"\ndry_run = "yes"\n',
                 4, "dry_run must be true or false", "lowercase", id="bool-as-string"),
    pytest.param('[[throttle]]\nname = "a"\nrates = "1/second"\nmethod = "FETCH"\n',
                 4, "unknown HTTP method 'FETCH'", "did you mean", id="bad-method"),
    pytest.param('[[throttle]]\nname = "a"\nrates = "1/second"\nmatch = "no_such_mod:f"\n',
                 4, "cannot import module 'no_such_mod'", "importable", id="bad-import"),
    pytest.param('[[thottle]]\nname = "a"\n', 1, "unknown section 'thottle'",
                 "did you mean 'throttle'", id="unknown-section"),
    pytest.param('[throttle]\nname = "a"\n', 1, "array of tables", "[[throttle]]",
                 id="table-not-array"),
    pytest.param('[[throttle]]\nname = "a"\nrates = "1/second\n', 3, "invalid TOML",
                 "quotes", id="toml-syntax"),
    pytest.param('[[safelist]]\nname = "s"\n', 1, "no condition", "path, path_prefix",
                 id="no-condition"),
    pytest.param('[[throttle]]\nname = "a"\nrates = "1/second"\n'
                 'header = { name = "X", containz = "y" }\n', 4,
                 "unknown header condition 'containz'", "did you mean 'contains'",
                 id="bad-header-op"),
    pytest.param('[[throttle]]\nname = "a"\nrates = "1/second"\ncount_when = ["4xy"]\n',
                 4, "bad count_when entry", "[401, 403]", id="bad-count-when"),
    pytest.param('[limiter]\nstratgy = "fixed_window"\n', 2, "unknown setting 'stratgy'",
                 "did you mean 'strategy'", id="limiter-setting"),
    pytest.param('[shedding]\ncapacity = 10\nthresholds = [1.0, 0.5]\n', 3,
                 "increasing fractions", "[0.8, 1.0]", id="shed-thresholds"),
]


@pytest.mark.parametrize(("text", "line", "message", "hint"), ERROR_CASES)
def test_each_error_names_its_line_and_a_hint(text: str, line: int, message: str,
                                              hint: str) -> None:
    """A bad value is reported on the line it is written on, with a hint to fix it."""
    errors = _errors(text)
    assert any(e.line == line and message in e.message and hint in e.hint for e in errors), (
        errors
    )


def test_every_error_is_listed_at_once() -> None:
    """All problems of a file come in one report, sorted by line, not only the first."""
    errors = _errors("""\
        [[throttle]]
        name = "a"
        rates = "ten/minute"
        strategy = "leaky"

        [[blocklist]]
        name = "b"
        ips = ["300.1.1.1"]

        [[throttle]]
        name = "a"
        rates = "1/second"
        key = "usr"
        """)
    assert [e.line for e in errors] == [3, 4, 8, 11, 13]
    assert "ConfigError" in [c.__name__ for c in RulesFileError.__mro__]


def test_from_file_with_errors_raises_config_error_and_registers_nothing(tmp_path: Path
                                                                         ) -> None:
    """A bad file fails at setup with a ConfigError listing the errors; no half-loaded rules."""
    f = tmp_path / "r.toml"
    f.write_text('[[throttle]]\nname = "ok"\nrates = "1/second"\n'
                 '[[throttle]]\nname = "bad"\nrates = "x"\n')
    with pytest.raises(ConfigError, match=r"r\.toml:6: \[\[throttle\]\] 'bad': bad rate"):
        Limiter.from_file(f)
    limiter = Limiter()
    with pytest.raises(ConfigError):
        limiter.load_rules(f)
    assert limiter.engine.rules.throttles == ()


def test_storage_capabilities_are_checked_with_line(tmp_path: Path) -> None:
    """A strategy the storage cannot run is reported against the rule's line."""
    f = tmp_path / "r.toml"
    f.write_text('[[throttle]]\nname = "log"\nrates = "5/minute"\nstrategy = "sliding_log"\n')
    assert load_rules(f).rules[0].name == "log"
    with pytest.raises(RulesFileError) as info:
        load_rules(f, strategies=["fixed_window", "sliding_window"])
    err = info.value.errors[0]
    assert err.line == 4 and "not available on this storage" in err.message


# -- loading -----------------------------------------------------------------------------


def test_example_file_loads() -> None:
    """The shipped example is valid and loads into a Limiter with every kind of rule."""
    limiter = Limiter.from_file(EXAMPLE)
    kinds = set(limiter.engine.rules.names.values())
    assert {"safelist", "blocklist", "fail2ban", "throttle", "track"} <= kinds
    conc = limiter.engine.concurrency
    assert conc is not None and conc.shedding is not None


def test_limiter_settings_come_from_the_file_and_kwargs_win(tmp_path: Path) -> None:
    """[limiter] gives Limiter settings; keyword arguments of from_file override them."""
    f = tmp_path / "r.toml"
    f.write_text('[limiter]\nstrategy = "fixed_window"\ntrusted_proxies = 1\n'
                 '[[throttle]]\nname = "a"\nrates = "1/second"\n')
    limiter = Limiter.from_file(f, trusted_proxies=2)
    assert limiter.strategy == "fixed_window"
    assert limiter.resolver_args[0] == 2
    assert limiter.engine.rules.throttles[0].strategy == "fixed_window"


def test_user_functions_by_dotted_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       clock: FakeClock) -> None:
    """match, key and cost can name functions of the app by import path."""
    (tmp_path / "tk_user_rules.py").write_text(textwrap.dedent("""\
        def is_api(view):
            return view.path.startswith("/api")

        def tenant(view):
            return view.headers.get("x-tenant")

        def cost(view):
            return 2
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    f = tmp_path / "r.toml"
    f.write_text('[[throttle]]\nname = "t"\nrates = "4/minute"\nstrategy = "fixed_window"\n'
                 'match = "tk_user_rules:is_api"\nkey = "tk_user_rules.tenant"\n'
                 'cost = "tk_user_rules:cost"\n')
    clock.set(1_700_000_040.0)
    c = Client(WSGIMiddleware(app, Limiter.from_file(f, clock=clock)))
    codes = [c.get("/api/x", headers={"X-Tenant": "acme"}).status_code for _ in range(3)]
    assert codes == [200, 200, 429]  # cost 2 of 4
    assert c.get("/api/x", headers={"X-Tenant": "other"}).status_code == 200
    assert c.get("/web").status_code == 200


# -- round trip: the same rules in TOML and in Python behave the same ------------------

ROUND_TRIP_TOML = """\
[[safelist]]
name = "health"
path = "/healthz"

[[blocklist]]
name = "bad-nets"
ips = ["203.0.113.0/24"]

[[blocklist]]
name = "sqlmap"
header = { name = "User-Agent", contains = "sqlmap" }

[[fail2ban]]
name = "scanners"
path_prefix = ["/wp-admin", "/.env"]
maxretry = 2
findtime = "10m"
bantime = "1h"

[[throttle]]
name = "per-ip"
rates = "6/minute; 3/second"
strategy = "token_bucket"

[[throttle]]
name = "login"
rates = "2/minute"
method = "POST"
path = "/login"
key = "header:X-User"
strategy = "sliding_log"

[[throttle]]
name = "failures"
rates = "2/minute"
path = "/fail"
count_when = [401]

[[throttle]]
name = "api"
rates = "3/minute"
path_prefix = "/api/"
key = "global"
strategy = "fixed_window"
"""


def python_rules(limiter: Limiter) -> None:
    """The rules of ROUND_TRIP_TOML, written in Python."""
    limiter.safelist("health", lambda r: r.path == "/healthz")
    limiter.blocklist("bad-nets", ips=["203.0.113.0/24"])
    limiter.blocklist("sqlmap", lambda r: "sqlmap" in r.headers.get("user-agent", ""))
    limiter.fail2ban("scanners", match=lambda r: r.path.startswith(("/wp-admin", "/.env")),
                     maxretry=2, findtime=600, bantime=3600)
    limiter.throttle("per-ip", "6/minute; 3/second", strategy="token_bucket")
    limiter.throttle("login", "2/minute", strategy="sliding_log", key="header:X-User",
                     match=lambda r: r.method == "POST" and r.path == "/login")
    limiter.throttle("failures", "2/minute", match=lambda r: r.path == "/fail",
                     count_when=lambda resp: resp.status_code == 401)
    limiter.throttle("api", "3/minute", strategy="fixed_window", key=lambda r: "*",
                     match=lambda r: r.path.startswith("/api/"))


TRAFFIC = [
    # (method, path, ip, headers, advance seconds before)
    ("GET", "/", "198.51.100.1", {}, 0),
    ("GET", "/healthz", "198.51.100.1", {}, 0),
    ("GET", "/", "203.0.113.9", {}, 0),
    ("GET", "/", "198.51.100.2", {"User-Agent": "sqlmap/1.7"}, 0),
    *[("GET", "/", "198.51.100.1", {}, 0.1)] * 5,
    ("GET", "/", "198.51.100.1", {}, 2),
    *[("POST", "/login", f"198.51.100.{i}", {"X-User": "bob"}, 0) for i in range(10, 14)],
    *[("GET", "/fail", "198.51.100.20", {}, 0)] * 4,
    *[("GET", "/api/x", f"198.51.100.{i}", {}, 0) for i in range(30, 35)],
    *[("GET", "/wp-admin/x", "198.51.100.40", {}, 0)] * 3,
    ("GET", "/", "198.51.100.40", {}, 0),
    ("GET", "/healthz", "198.51.100.40", {}, 0),
    ("GET", "/", "198.51.100.1", {}, 61),
    *[("POST", "/login", "198.51.100.50", {"X-User": "bob"}, 0)] * 2,
]


def _replay(limiter: Limiter, clock: FakeClock) -> list[tuple[int, list[tuple[str, str]]]]:
    c = Client(WSGIMiddleware(app, limiter))
    out = []
    for method, path, ip, headers, advance in TRAFFIC:
        if advance:
            clock.advance(advance)
        r = c.open(path, method=method, headers=headers, environ_base={"REMOTE_ADDR": ip})
        out.append((r.status_code, sorted(r.headers.items())))
    return out


def test_round_trip_toml_behaves_like_python(tmp_path: Path) -> None:
    """The same rules from TOML and from Python give identical responses to the same traffic."""
    f = tmp_path / "rules.toml"
    f.write_text(ROUND_TRIP_TOML)
    start = 1_700_000_040.0
    c1, c2 = FakeClock(start), FakeClock(start)
    from_py = Limiter(clock=c1)
    python_rules(from_py)
    from_toml = Limiter.from_file(f, clock=c2)
    py, toml = _replay(from_py, c1), _replay(from_toml, c2)
    assert py == toml
    statuses = [s for s, _ in py]
    assert {200, 403, 429} <= set(statuses)  # the traffic exercises refusals of each kind


# -- the command line --------------------------------------------------------------------


def test_check_cli_lists_every_error_and_fails(tmp_path: Path) -> None:
    """`throttlekit check` exits 1 and prints each error with file:line and a hint."""
    f = tmp_path / "bad.toml"
    f.write_text('[[throttle]]\nname = "a"\nrates = "1/fortnight"\n\n'
                 '[[blocklist]]\nname = "b"\nips = ["1.2.3.4/40"]\n'
                 '[[throttle]]\nname = "a"\nrates = "1/second"\n')
    p = _run("check", str(f))
    assert p.returncode == 1
    assert f"{f}:3: [[throttle]] 'a': bad rate" in p.stdout
    assert f"{f}:7: [[blocklist]] 'b': bad address or CIDR" in p.stdout
    assert f"{f}:9: [[throttle]] 'a': duplicate rule name" in p.stdout
    assert p.stdout.count("hint:") == 3
    j = _run("check", str(f), "--json")
    assert j.returncode == 1
    assert [e["line"] for e in json.loads(j.stdout)["errors"]] == [3, 7, 9]


def test_check_cli_accepts_the_example() -> None:
    """`throttlekit check` on a valid file exits 0."""
    p = _run("check", str(EXAMPLE))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "OK (13 rules)" in p.stdout


def test_rules_cli_prints_evaluation_order(tmp_path: Path) -> None:
    """`throttlekit rules` lists rules as the limiter evaluates them, not as written."""
    f = tmp_path / "r.toml"
    f.write_text('[[throttle]]\nname = "t"\nrates = "1/second"\n'
                 '[[track]]\nname = "k"\npath = "/x"\n'
                 '[[blocklist]]\nname = "b"\nips = ["10.0.0.0/8"]\n'
                 '[[safelist]]\nname = "s"\npath = "/h"\n'
                 '[[fail2ban]]\nname = "f"\npath = "/wp"\nmaxretry = 1\nfindtime = 1\n'
                 'bantime = 1\n')
    p = _run("rules", str(f), "--json")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert [r["name"] for r in rows] == ["s", "b", "f", "t", "k"]
    assert rows[3]["limit"] == "1/second" and rows[3]["key"] == "client"
    table = _run("rules", str(f))
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["#", "KIND", "NAME"]
    assert [ln.split()[2] for ln in lines[2:]] == ["s", "b", "f", "t", "k"]


def _error_lines(text: str) -> list[tuple[int, str]]:
    with pytest.raises(RulesFileError) as info:
        parse_rules(textwrap.dedent(text))
    return [(e.line, e.message) for e in info.value.errors]


def test_errors_in_multiline_arrays_point_at_the_element() -> None:
    """A bad CIDR or rate inside a multi-line list is reported at its own line."""
    errors = _error_lines('''\
        # comment

        [[blocklist]]
        name = "nets"
        ips = [
          "10.0.0.0/8",  # a comment, "with quotes"
          "1.2.3.4/33",
          "fe80::/200",
        ]

        [[throttle]]
        name = "x"
        rates = [
          "5/minute",
          "7/eon",
        ]
        ''')
    assert [(line, msg.split(":")[0]) for line, msg in errors] == [
        (7, "[[blocklist]] 'nets'"), (8, "[[blocklist]] 'nets'"), (15, "[[throttle]] 'x'")]
    assert "'7/eon'" in errors[2][1] and "5/minute" not in errors[2][1]


def test_errors_in_inline_tables_point_at_their_table() -> None:
    """`throttle = [{...}, {...}]`: an error in the second table is on its line."""
    errors = _error_lines('''\
        throttle = [
          { name = "a", rates = "5/minute" },
          { name = "b", rates = "5/minute", strategy = "x" },
        ]
        ''')
    assert errors == [(3, "[[throttle]] 'b': unknown strategy 'x'")]


# -- numbers out of range (issue: `findtime = 1e308` crashed the loader) -------------------

F2B = '[[fail2ban]]\nname = "f"\npath = "/x"\nmaxretry = 3\nfindtime = 60\nbantime = 60\n'
THR = '[[throttle]]\nname = "t"\nrates = "5/second"\nstrategy = "token_bucket"\nburst = 5\n' \
      'cost = 1\n'
CON = '[[concurrency]]\nname = "c"\nlimit = 3\ntimeout = 30\nretry_after = 1\n'
SHED = '[shedding]\ncapacity = 10\ntimeout = 30\nretry_after = 1\n'
LIM = ('[limiter]\nburst = 5\nretry_interval = 1\nerror_log_interval = 60\n'
       'denial_cache_size = 100\ntrusted_proxies = 1\nipv6_prefix = 64\n')
#: (file, field): every numeric field of the format, each written on its own line
NUMBER_FIELDS = [
    (F2B, "maxretry"), (F2B, "findtime"), (F2B, "bantime"), (THR, "burst"), (THR, "cost"),
    (CON, "limit"), (CON, "timeout"), (CON, "retry_after"), (SHED, "capacity"),
    (SHED, "timeout"), (SHED, "retry_after"), (LIM, "burst"), (LIM, "retry_interval"),
    (LIM, "error_log_interval"), (LIM, "denial_cache_size"), (LIM, "trusted_proxies"),
    (LIM, "ipv6_prefix"),
]
BAD_NUMBERS = ["1e308", "-1e308", "inf", "-inf", "nan", "-1", "true",
               "9223372036854775807", "-9223372036854775808", '"99999999999999999999d"']


def _with(text: str, field: str, value: str) -> tuple[str, int]:
    lines = text.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith(field + " ="))
    lines[i] = f"{field} = {value}"
    return "\n".join(lines) + "\n", i + 1


@pytest.mark.parametrize(("text", "field"), NUMBER_FIELDS,
                         ids=[f"{t.split(chr(10))[0]}-{f}" for t, f in NUMBER_FIELDS])
def test_numbers_out_of_range_are_config_errors_naming_the_line(
    tmp_path: Path, text: str, field: str
) -> None:
    """Huge, infinite, nan, negative and boolean values in every numeric field are a
    ConfigError naming the field's line, from Limiter.from_file; never OverflowError."""
    f = tmp_path / "rules.toml"
    f.write_text(text)
    Limiter.from_file(f)  # the unmodified file loads
    for value in BAD_NUMBERS:
        bad, line = _with(text, field, value)
        f.write_text(bad)
        with pytest.raises(ConfigError) as info:
            Limiter.from_file(f)
        assert f"{f}:{line}: " in str(info.value) and field in str(info.value), (value, info)


@pytest.mark.parametrize(("text", "field", "value"), [
    (F2B, "maxretry", "0"), (F2B, "findtime", "0"), (F2B, "bantime", "0"),
    (F2B, "findtime", '"0s"'), (F2B, "maxretry", "2.5"), (THR, "burst", "0"),
    (CON, "limit", "0"), (CON, "timeout", "864000"), (SHED, "capacity", "0"),
    (LIM, "ipv6_prefix", "0"), (LIM, "ipv6_prefix", "129"), (LIM, "trusted_proxies", "65"),
    (LIM, "trusted_proxies", '["10.0.0.0/33"]'), (LIM, "trusted_proxies", "[1]"),
])
def test_zero_where_meaningless_and_other_ranges(tmp_path: Path, text: str, field: str,
                                                 value: str) -> None:
    """Zero counts, zero durations, fractional counts and out-of-range settings too."""
    f = tmp_path / "rules.toml"
    bad, line = _with(text, field, value)
    f.write_text(bad)
    with pytest.raises(ConfigError) as info:
        Limiter.from_file(f)
    assert f"{f}:{line}: " in str(info.value) and field in str(info.value)


@pytest.mark.parametrize("rates", ["99999999999999999999999/second", "5/99999999999 seconds",
                                   "5/1000000 days", "4294967296/hour"])
def test_rates_out_of_range_name_their_line(tmp_path: Path, rates: str) -> None:
    """A rate whose limit or period no store can count is refused on its line."""
    f = tmp_path / "rules.toml"
    f.write_text(f'[[throttle]]\nname = "t"\n\nrates = "{rates}"\n')
    with pytest.raises(ConfigError) as info:
        Limiter.from_file(f)
    assert f"{f}:4: " in str(info.value) and "out of range" in str(info.value)


def test_huge_findtime_check_cli(tmp_path: Path) -> None:
    """`throttlekit check` on the file of the issue: exit 1, the line, no traceback."""
    f = tmp_path / "rules.toml"
    f.write_text(F2B.replace("findtime = 60", "findtime = 1e308"))
    p = _run("check", str(f))
    assert p.returncode == 1
    assert f"{f}:5: [[fail2ban]] 'f': findtime must be" in p.stdout
    assert "Traceback" not in p.stdout + p.stderr


def test_large_values_in_range_still_load(tmp_path: Path) -> None:
    """The bounds leave room for real settings: a ten-year ban, a yearly rate, 2**32-1."""
    f = tmp_path / "rules.toml"
    f.write_text('[[fail2ban]]\nname = "f"\npath = "/x"\nmaxretry = 4294967295\n'
                 'findtime = "3650d"\nbantime = 315360000\n'
                 '[[throttle]]\nname = "t"\nrates = "1000/year; 4294967295/day"\n')
    limiter = Limiter.from_file(f)
    assert limiter.test("k", "1000/year")


# -- rules files are code: catastrophic regexes, imported callables ------------------------

CATASTROPHIC = [r"(a+)+$", r"(a|a)*$", r"(.*)*$", r"(.|\s)*$", r"(\w+\s?)+$", r"(a*b*)*$",
                r"(a+|b)+$", r"(a|aa)+$", r"^(\d+\.?)+$", r"(a{1,2})+$", r"\d+\d+x",
                r".*.*=.*;", r"\w+\s?\w+$", r"(\w+)\s?(\w+)$", r"(?i)(?:(?:A+))+$",
                r"a.*b.*c.*d", r"(\w+[a-z])+!", r"\d*\w{2}\w+?a$"]
HARMLESS = [r"sqlmap", r"^curl/\d+\.\d+", r"(\d+\.)+\d+$", r"(\w|\d)+$", r"Mozilla.*Windows.*bot",
            r"(ab|a)*c", r"^Mozilla/5\.0 \(.*\) Gecko", r"(?:https?://)+", r"([a-z]+ )+x",
            r"(a{2})+$", r"(foo|bar|baz)+", r".*sqlmap.*", r"\s*,\s*", r"\bbot\b",
            r"python-requests/[\d.]+", r"\w+(\s\w+)*$"]


def _ua_rule(pattern: str) -> str:
    return ('[[blocklist]]\nname = "ua"\n\n'
            f"header = {{ name = \"User-Agent\", regex = '{pattern}' }}\n")


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_catastrophic_header_regex_is_refused_at_load(tmp_path: Path, pattern: str) -> None:
    """Nested or overlapping quantifiers are a ConfigError naming the line, so no request
    can be held for seconds by a 28-byte User-Agent."""
    f = tmp_path / "rules.toml"
    f.write_text(_ua_rule(pattern))
    with pytest.raises(ConfigError) as info:
        Limiter.from_file(f)
    assert f"{f}:4: [[blocklist]] 'ua': header regex" in str(info.value)
    assert "exponential time" in str(info.value)


@pytest.mark.parametrize("pattern", HARMLESS)
def test_ordinary_header_regexes_still_load(tmp_path: Path, pattern: str) -> None:
    """Common patterns (and the rewrites the hint suggests) are not flagged."""
    f = tmp_path / "rules.toml"
    f.write_text(_ua_rule(pattern))
    Limiter.from_file(f)


def test_check_flags_the_issue_regex(tmp_path: Path) -> None:
    """`throttlekit check` on `(a+)+$` (the issue: 29 s on `aaaaaaaaaaaaaaaaaaaaaaaaaaa!`)
    exits 1 with the line and a hint."""
    f = tmp_path / "rules.toml"
    f.write_text(_ua_rule("(a+)+$"))
    p = _run("check", str(f))
    assert p.returncode == 1
    assert f"{f}:4: [[blocklist]] 'ua': header regex '(a+)+$'" in p.stdout
    assert "hint: rewrite it" in p.stdout and "Traceback" not in p.stderr


def test_header_regex_searches_a_bounded_prefix(tmp_path: Path) -> None:
    """A header regex sees the first 1024 characters of the value (docs/rules-file.md):
    inside them it matches, past them it does not."""
    f = tmp_path / "rules.toml"
    f.write_text(_ua_rule("sqlmap"))
    c = Client(WSGIMiddleware(app, Limiter.from_file(f)))
    assert c.get("/", headers={"User-Agent": "sqlmap/1.0"}).status_code == 403
    assert c.get("/", headers={"User-Agent": "x" * 1018 + "sqlmap"}).status_code == 403
    assert c.get("/", headers={"User-Agent": "x" * 1019 + "sqlmap"}).status_code == 200
    assert c.get("/", headers={"User-Agent": "curl/8"}).status_code == 200


@pytest.mark.slow
def test_check_lists_the_callables_a_file_imports(tmp_path: Path) -> None:
    """A rules file can import any callable (`os:system`): `check` lists each with its
    line, in text and in JSON, so a reviewer sees what code the file runs."""
    f = tmp_path / "rules.toml"
    f.write_text('[[throttle]]\nname = "t"\nrates = "5/second"\nmatch = "os:system"\n'
                 'count_when = "os.path:isfile"\n[[track]]\nname = "k"\nkey = "os:getcwd"\n')
    p = _run("check", str(f))
    assert p.returncode == 0
    assert "imports and runs 3 callables" in p.stdout
    assert f"{f}:4: [[throttle]] 't': match = 'os:system'" in p.stdout
    assert f"{f}:5: [[throttle]] 't': count_when = 'os.path:isfile'" in p.stdout
    assert f"{f}:8: [[track]] 'k': key = 'os:getcwd'" in p.stdout
    j = json.loads(_run("check", "--json", str(f)).stdout)
    assert [(i["line"], i["callable"]) for i in j["imports"]] == [
        (4, "os:system"), (5, "os.path:isfile"), (8, "os:getcwd")]
    plain = tmp_path / "plain.toml"
    plain.write_text('[[throttle]]\nname = "t"\nrates = "5/second"\n')
    q = _run("check", str(plain))
    assert q.returncode == 0 and "imports and runs" not in q.stdout
