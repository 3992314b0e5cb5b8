"""Community blocklists in rules files (issue 16): the ``ips_from`` condition loads a
:class:`~throttlekit.blocklists.Blocklist` (a file or a URL, plain or CrowdSec), with errors
at their lines as every other field."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from test_blocklists import PLAIN, ListServer, _app, _status
from throttlekit import ConfigError, Limiter, WSGIMiddleware


def rules(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(textwrap.dedent(body))
    return path


def test_a_blocklist_rule_refuses_the_listed_addresses(tmp_path: Path) -> None:
    """ips_from = "<file>": the file's addresses and networks are refused (403)."""
    (tmp_path / "drop.txt").write_text(PLAIN)
    path = rules(tmp_path, f'''
        [[blocklist]]
        name = "community"
        ips_from = "{tmp_path / 'drop.txt'}"
    ''')
    lim = Limiter()
    lim.load_rules(path)
    mw = WSGIMiddleware(_app, lim)
    assert [_status(mw, ip) for ip in ("203.0.113.77", "192.0.2.7", "192.0.2.8")] == [
        "403", "403", "200"]


def test_crowdsec_stream_from_a_url_with_an_env_header(tmp_path: Path,
                                                       monkeypatch: Any) -> None:
    """A table: a CrowdSec LAPI stream URL, its key from the environment, combined with a
    path condition (both must hold)."""
    monkeypatch.setenv("TK_TEST_BOUNCER_KEY", "s3cret")
    server = ListServer()
    try:
        server.serve(json.dumps({"new": [{"value": "192.0.2.1", "scope": "Ip",
                                          "type": "ban"}], "deleted": []}))
        path = rules(tmp_path, f'''
            [[blocklist]]
            name = "crowdsec"
            path_prefix = "/admin"

            [blocklist.ips_from]
            source = "{server.url}/v1/decisions/stream"
            refresh = "1m"
            headers = {{ X-Api-Key = "env:TK_TEST_BOUNCER_KEY" }}
        ''')
        lim = Limiter()
        lim.load_rules(path)
        assert server.requests[0][2].get("x-api-key") == "s3cret"  # (lower-cased)
        mw = WSGIMiddleware(_app, lim)
        got = [_status_at(mw, ip, p) for ip, p in (("192.0.2.1", "/admin/x"),
                                                   ("192.0.2.1", "/"),
                                                   ("192.0.2.2", "/admin/x"))]
        assert got == ["403", "200", "200"]
    finally:
        server.close()


def _status_at(mw: Any, ip: str, path: str) -> str:
    status: list[str] = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": ip,
               "wsgi.input": None, "SERVER_NAME": "t", "SERVER_PORT": "80"}
    b"".join(mw(environ, lambda s, h, e=None: status.append(s)))
    return status[0][:3]


@pytest.mark.parametrize(("value", "message"), [
    ('"/nonexistent/drop.txt"', r"rules.toml:4: .*ips_from.*nonexistent"),
    ('{ source = "/x", refesh = "1m" }', r"rules.toml:4: .*unknown option 'refesh'.*refresh"),
    ('{ refresh = "1m" }', r"rules.toml:4: .*ips_from needs source"),
    ('{ source = "http://127.0.0.1:9/x", format = "csv" }', r"rules.toml:4: .*format"),
    ('{ source = "http://127.0.0.1:9/x", headers = { K = "env:TK_NOPE_UNSET" } }',
     r"rules.toml:4: .*'TK_NOPE_UNSET', which is not set"),
    ("42", r"rules.toml:4: .*ips_from must be a string or a table"),
])
def test_bad_ips_from_is_reported_at_its_line(tmp_path: Path, value: str, message: str
                                              ) -> None:
    path = rules(tmp_path, f'''
        [[blocklist]]
        name = "community"
        ips_from = {value}
    ''')
    with pytest.raises(ConfigError, match="(?s)" + message):
        Limiter().load_rules(path)


def test_throttlekit_check_reports_the_line(tmp_path: Path) -> None:
    """`throttlekit check` prints the error with its line, exit status 1."""
    path = rules(tmp_path, '''
        [[blocklist]]
        name = "community"
        ips_from = "/nonexistent/drop.txt"
    ''')
    src = str(Path(__file__).resolve().parent.parent / "src")
    p = subprocess.run([sys.executable, "-m", "throttlekit", "check", str(path)],
                       capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"})
    assert p.returncode != 0
    assert "rules.toml:4" in p.stdout + p.stderr and "ips_from" in p.stdout + p.stderr
