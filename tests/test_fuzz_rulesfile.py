"""Fuzzing the rules file: whatever the file holds, loading it raises ConfigError or
succeeds, and `throttlekit check` answers with a status and a message, never a traceback.

Three sources of files: TOML built from the format's own sections and fields with values
of every type (huge, negative, non-finite numbers, bad regexes, random strings); mutations
of the example file (lines dropped, repeated, replaced, truncated); and random bytes.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import throttlekit
from throttlekit import ConfigError, Limiter
from throttlekit.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = (ROOT / "examples" / "rules.toml").read_text()

KINDS = ["safelist", "blocklist", "fail2ban", "allow2ban", "throttle", "track", "concurrency"]
FIELDS = ["name", "path", "path_prefix", "method", "ips", "header", "match", "key", "maxretry",
          "findtime", "bantime", "rates", "strategy", "cost", "burst", "dry_run", "count_when",
          "limit", "timeout", "retry_after"]
LIMITER = ["storage", "strategy", "burst", "on_storage_error", "retry_interval",
           "error_log_interval", "denial_cache_size", "trusted_proxies", "ipv6_prefix",
           "header_style", "headers_on_allowed"]
SHEDDING = ["capacity", "priority", "thresholds", "timeout", "retry_after"]

# -- TOML values, written as text (so any value the format allows can be produced) -------


def _str(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(x)


NUMBERS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, -1, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, 0.5, 1e-9]),
).map(lambda n: _float(n) if isinstance(n, float) else str(n))
REGEXES = st.sampled_from([
    "(a+)+$", "(a|a)*", "(.*)*", "[", "(", "a{2,1}", "(?P<x>a)(?P<x>b)", "\\", "sqlmap",
    "^curl/\\d+", "(?i)bot", "a**", "(?<=a+)b", "\\p{L}", "\\w+\\s?\\w+$",
]) | st.text(alphabet="ab.*+?|()[]{}^$\\dws0123,", max_size=12)
STRINGS = st.one_of(
    st.text(max_size=20),
    st.sampled_from([
        "", " ", "/", "/login", "client", "ip", "global", "path", "header:", "header:X-Key",
        "form:", "form:username", "os.path:isabs", "nonexistent.module:fn", "os:no_such",
        "json:dumps", "throttlekit:Limiter", "5/minute", "0/minute", "1e308/second",
        "99999999999999999999/second", "5/99999999999 years", "10m", "1e308s", "-5s", "inf",
        "nan", "0ms", "GET", "get", "BREW", "10.0.0.0/33", "::1", "2001:db8::/32", "unix",
        "4xx", "6xx", "fixed_window", "token_bucket", "sliding_log", "leaky", "memory://",
        "nope://x", "allow", "deny", "local", "draft10", "legacy",
    ]),
    REGEXES,
).map(_str)
SCALARS = st.one_of(NUMBERS, STRINGS, st.sampled_from(["true", "false",
                                                       "1979-05-27T07:32:00Z", "07:32:00"]))
HEADER_TABLES = st.builds(
    lambda name, op, arg: "{ " + (f"name = {name}, " if name else "") + f"{op} = {arg} }}",
    st.sampled_from(['"User-Agent"', '""', "5", ""]),
    st.sampled_from(["equals", "contains", "prefix", "regex", "present", "nope"]),
    st.one_of(REGEXES.map(_str), SCALARS),
)
VALUES = st.recursive(
    st.one_of(SCALARS, HEADER_TABLES),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.dictionaries(st.sampled_from(["name", "regex", "x", "equals"]), inner,
                        max_size=2).map(
            lambda d: "{ " + ", ".join(f"{k} = {v}" for k, v in d.items()) + " }"),
    ),
    max_leaves=6,
)


@st.composite
def _table(draw: Any, fields: list[str]) -> str:
    names = draw(st.lists(st.one_of(st.sampled_from(fields), st.sampled_from(["nmae", "x"])),
                          max_size=7, unique=True))
    lines = [f"{k} = {draw(VALUES)}" for k in names]
    return "\n".join(lines)


@st.composite
def generated_files(draw: Any) -> str:
    parts: list[str] = []
    if draw(st.booleans()):
        parts.append("version = " + draw(st.one_of(NUMBERS, st.just("1"))))
    if draw(st.booleans()):
        parts.append("[limiter]\n" + draw(_table(LIMITER)))
    for kind in draw(st.lists(st.sampled_from([*KINDS, "shedding", "nope"]), max_size=5)):
        if kind == "shedding":
            if "[shedding]" not in "\n".join(parts):
                parts.append("[shedding]\n" + draw(_table(SHEDDING)))
            continue
        body = draw(_table(FIELDS))
        parts.append(f"[[{kind}]]\nname = {_str(draw(st.text(max_size=6)))}\n{body}"
                     if draw(st.booleans()) else f"[[{kind}]]\n{body}")
    return "\n\n".join(parts) + "\n"


@st.composite
def mutated_example(draw: Any) -> str:
    lines = EXAMPLE.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "dup", "value", "junk", "cut"]))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "value" and "=" in lines[i]:
            lines[i] = lines[i].split("=", 1)[0] + "= " + draw(VALUES)
        elif op == "junk":
            lines.insert(i, draw(st.text(max_size=30)))
        else:
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
    return "\n".join(lines) + "\n"


ANY_FILE = st.one_of(
    generated_files().map(str.encode),
    mutated_example().map(str.encode),
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
)

# -- the properties ----------------------------------------------------------------------


def _load(path: Path) -> None:
    """Limiter.from_file: succeeds or raises ConfigError (anything else fails the test)."""
    with contextlib.suppress(ConfigError):
        Limiter.from_file(path)


def _check(path: Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli_main(["check", str(path)])
    return status, out.getvalue() + err.getvalue()


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.filter_too_much, HealthCheck.data_too_large])
@given(data=ANY_FILE)
@example(data=b'[[fail2ban]]\nname = "a"\npath = "/x"\nmaxretry = 3\nfindtime = 1e308\n'
              b'bantime = 60\n')
@example(data=b'[[blocklist]]\nname = "ua"\nheader = { name = "User-Agent", '
              b'regex = "(a+)+$" }\n')
@example(data=b"\xff\xfe[[throttle]]")
@example(data=b"[limiter]\ntrusted_proxies = [1, true]\nipv6_prefix = nan\n")
def test_any_file_loads_or_raises_config_error(tmp_path: Path, data: bytes) -> None:
    """Whatever the file holds: Limiter.from_file raises ConfigError or nothing, and
    `throttlekit check` exits 0 saying OK, or 1 (or 2) with the file's name or an error."""
    f = tmp_path / "rules.toml"
    f.write_bytes(data)
    _load(f)
    status, text = _check(f)
    assert status in (0, 1, 2), (status, text)
    if status == 0:
        assert f"{f}: OK" in text
    else:
        assert str(f) in text or "error" in text, text
    assert "Traceback" not in text


def test_check_never_prints_a_traceback_in_a_real_process(tmp_path: Path) -> None:
    """A few hostile files through the real `throttlekit check` process: exit 1, a message
    naming the file, nothing on stderr that looks like a crash."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(throttlekit.__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
    files = {
        "huge.toml": b'[[fail2ban]]\nname = "a"\npath = "/x"\nmaxretry = 1e308\n'
                     b'findtime = inf\nbantime = nan\n',
        "bytes.toml": bytes(range(256)),
        "types.toml": b'[limiter]\nburst = true\ntrusted_proxies = "x"\n[[throttle]]\n'
                      b'name = 5\nrates = [1, 2]\nheader = { name = "A", regex = "[" }\n',
    }
    for name, data in files.items():
        f = tmp_path / name
        f.write_bytes(data)
        p = subprocess.run([sys.executable, "-m", "throttlekit", "check", str(f)],
                           capture_output=True, text=True, timeout=60, env=env,
                           stdin=subprocess.DEVNULL)
        assert p.returncode == 1, (name, p.stdout, p.stderr)
        assert str(f) in p.stdout and "Traceback" not in p.stdout + p.stderr, name


@pytest.mark.parametrize("text", [EXAMPLE])
def test_the_example_is_a_valid_seed(tmp_path: Path, text: str) -> None:
    """The file the mutations start from is valid, so they explore near-valid files."""
    f = tmp_path / "rules.toml"
    f.write_text(text)
    Limiter.from_file(f)
