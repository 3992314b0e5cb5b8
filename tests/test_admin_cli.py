"""The admin commands through the `throttlekit` entry point, against a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from werkzeug.test import Client

import throttlekit
from servers import needs_shared_redis
from throttlekit import Limiter, WSGIMiddleware

REDIS = "redis://127.0.0.1:6379/0"




pytestmark = [pytest.mark.redis, needs_shared_redis()]

RULES = """\
[[throttle]]
name = "per-ip"
rates = "3/minute; 10/hour"
strategy = "sliding_window"

[[fail2ban]]
name = "scanners"
path_prefix = "/wp-admin"
maxretry = 3
findtime = "10m"
bantime = "1h"

[[concurrency]]
name = "inflight"
limit = 5
"""


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """Always 200."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def tk(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m throttlekit ARGS` in a fresh interpreter, on this checkout's package."""
    env = dict(os.environ)
    pkg_parent = str(Path(throttlekit.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "throttlekit", *args], capture_output=True,
                          text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)


@pytest.fixture
def store() -> Iterator[str]:
    """The shared Redis under a prefix of this test's own (removed afterwards)."""
    prefix = f"tk-test-admin:{uuid.uuid4().hex[:12]}:"
    yield f"{REDIS}?prefix={prefix}"
    import redis

    r = redis.Redis.from_url(REDIS)
    keys = list(r.scan_iter(match=f"{prefix}*"))
    if keys:
        r.delete(*keys)
    r.close()


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    f = tmp_path / "rules.toml"
    f.write_text(RULES)
    return f


@pytest.fixture
def served(store: str, rules_file: Path) -> Client:
    """The app behind the middleware, on the same store and rules the commands use.

    Without the local denial cache: these tests look at the store's state (the cache's own
    tests are test_cli_reaches_a_running_worker_within_a_second and test_admin_reach.py)."""
    limiter = Limiter(store, denial_cache_size=0)
    limiter.load_rules(rules_file)
    return Client(WSGIMiddleware(app, limiter))


def get(c: Client, ip: str, path: str = "/") -> int:
    return c.get(path, environ_base={"REMOTE_ADDR": ip}, buffered=True).status_code


def test_inspect_shows_every_rule_of_a_key(store: str, rules_file: Path, served: Client
                                           ) -> None:
    """`inspect KEY` reports remaining and reset for each rate, ban counters and slots."""
    ip = "198.51.100.7"
    assert [get(served, ip) for _ in range(2)] == [200, 200]
    assert get(served, ip, "/wp-admin/x") == 403
    p = tk("inspect", ip, "--storage", store, "--rules", str(rules_file), "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    rows = {r["rule"]: r for r in data["rules"]}
    assert rows["per-ip"]["remaining"] == 1
    assert rows["per-ip/3600"]["remaining"] == 8
    assert 0 < rows["per-ip"]["reset"] <= 120  # a sliding window spans two periods
    assert rows["scanners"]["remaining"] == 2  # one match of three counted
    assert rows["inflight"]["remaining"] == 5
    assert data["blocked"] == []
    table = tk("inspect", ip, "--storage", store, "--rules", str(rules_file))
    assert table.returncode == 0
    header, _, first, *_ = table.stdout.splitlines()
    assert header.split()[:3] == ["RULE", "KIND", "LIMIT"]
    assert first.split()[:2] == ["per-ip", "throttle"]


def test_block_bans_unblock_round_trip(store: str, served: Client) -> None:
    """`block` refuses a client on the live app, `bans` lists it, `unblock` lets it back in."""
    ip = "198.51.100.8"
    p = tk("block", ip, "--ttl", "600", "--reason", "abuse report 42", "--storage", store)
    assert p.returncode == 0, p.stderr
    assert get(served, ip) == 403
    bans = json.loads(tk("bans", "--storage", store, "--json").stdout)
    assert [(b["key"], b["reason"]) for b in bans] == [(ip, "abuse report 42")]
    assert 590 < bans[0]["expires_in"] <= 600
    table = tk("bans", "--storage", store).stdout.splitlines()
    assert table[0].split() == ["KEY", "EXPIRES", "IN", "REASON"]
    assert table[2].startswith(ip) and "abuse report 42" in table[2]
    inspect = json.loads(tk("inspect", ip, "--storage", store, "--json").stdout)
    assert inspect["blocked"][0]["reason"] == "abuse report 42"
    assert tk("unblock", ip, "--storage", store).returncode == 0
    assert get(served, ip) == 200
    again = tk("unblock", ip, "--storage", store)
    assert again.returncode == 1 and "was not blocked" in again.stdout
    assert tk("bans", "--storage", store).stdout.strip() == "no blocks or bans"


def test_fail2ban_bans_are_listed_and_lifted(store: str, served: Client) -> None:
    """A ban made by the app shows in `bans` with its rule, and `unblock` lifts it."""
    ip = "198.51.100.9"
    for _ in range(3):
        get(served, ip, "/wp-admin/")
    assert get(served, ip) == 403
    bans = json.loads(tk("bans", "--storage", store, "--json").stdout)
    assert [b["key"] for b in bans] == [f"fail2ban:scanners:{ip}"]
    assert bans[0]["reason"] == "fail2ban scanners"
    assert tk("unblock", f"fail2ban:scanners:{ip}", "--storage", store).returncode == 0
    assert get(served, ip) == 200


def test_reset_gives_a_key_its_full_quota(store: str, rules_file: Path, served: Client
                                         ) -> None:
    """`reset KEY` forgets the key's counts in the store every worker shares."""
    ip = "198.51.100.10"
    assert [get(served, ip) for _ in range(4)] == [200, 200, 200, 429]
    p = tk("reset", ip, "--storage", store)
    assert p.returncode == 0, p.stderr
    assert get(served, ip) == 200
    data = json.loads(tk("inspect", ip, "--storage", store, "--rules", str(rules_file),
                         "--json").stdout)
    assert {r["rule"]: r["remaining"] for r in data["rules"]}["per-ip"] == 2


def test_storage_from_the_rules_file(tmp_path: Path, store: str) -> None:
    """Without --storage, the rules file's [limiter] storage is used."""
    f = tmp_path / "r.toml"
    f.write_text(f'[limiter]\nstorage = "{store}"\n' + RULES)
    assert tk("block", "192.0.2.1", "--rules", str(f)).returncode == 0
    bans = json.loads(tk("bans", "--storage", store, "--json").stdout)
    assert [b["key"] for b in bans] == ["192.0.2.1"]
    assert bans[0]["expires_in"] is None  # no ttl: until unblocked


def test_no_store_is_a_usage_error() -> None:
    """Without any store the command says how to name one, exit status 2."""
    p = tk("bans")
    assert p.returncode == 2
    assert "--storage" in p.stderr


def test_top_merges_monitor_status_endpoints(store: str) -> None:
    """`top` ranks offenders from the status endpoints of several processes, summed."""
    from throttlekit.monitor import Monitor
    from throttlekit.monitor.status import StatusEndpoint, StatusMiddleware

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    servers = []
    urls = []
    try:
        for heavy in (5, 7):
            limiter = Limiter(store)
            limiter.track("all")
            monitor = Monitor(limiter)
            mw = WSGIMiddleware(app, limiter)
            c = Client(mw)
            for _ in range(heavy):
                get(c, "203.0.113.50")
            get(c, "198.51.100.1")
            server = make_server("127.0.0.1", 0, StatusMiddleware(mw, StatusEndpoint(monitor)),
                                 handler_class=Quiet)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers.append(server)
            urls += ["--url", f"http://127.0.0.1:{server.server_port}/throttlekit/status"]
        tk("block", "203.0.113.50", "--ttl", "60", "--storage", store)
        p = tk("top", *urls, "--storage", store, "--json")
        assert p.returncode == 0, p.stderr
        rows = json.loads(p.stdout)
        assert rows[0] == {"key": "203.0.113.50", "requests": 12, "sources": 2,
                           "blocked": True}
        assert rows[1]["key"] == "198.51.100.1" and rows[1]["requests"] == 2
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_block_ttl_takes_a_duration_with_a_unit(store: str) -> None:
    """`block KEY --ttl 10m` blocks for ten minutes; a bad duration is a usage error."""
    p = tk("block", "192.0.2.44", "--ttl", "10m", "--storage", store)
    assert p.returncode == 0, p.stderr
    bans = json.loads(tk("bans", "--storage", store, "--json").stdout)
    assert [b["key"] for b in bans] == ["192.0.2.44"]
    assert 590 < bans[0]["expires_in"] <= 600
    bad = tk("block", "192.0.2.45", "--ttl", "10 fortnights", "--storage", store)
    assert bad.returncode == 2 and "bad duration" in bad.stderr


def test_unblock_a_client_key_lifts_its_bans_without_the_rules(store: str, served: Client
                                                               ) -> None:
    """`unblock IP --storage S` (no --rules) lifts the IP's fail2ban bans too."""
    ip = "198.51.100.11"
    for _ in range(3):
        get(served, ip, "/wp-admin/")
    assert get(served, ip) == 403
    p = tk("unblock", ip, "--storage", store)
    assert p.returncode == 0, p.stdout + p.stderr
    assert tk("bans", "--storage", store).stdout.strip() == "no blocks or bans"
    assert get(served, ip) == 200
    assert get(served, ip, "/wp-admin/") == 403  # the ban counter restarted: 1 of 3
    assert get(served, ip) == 200


def test_top_from_the_store_sums_every_process(store: str) -> None:
    """`top --storage` sums the offenders the monitors of several processes wrote there."""
    from throttlekit.monitor import Monitor

    monitors = []
    for heavy in (5, 7):
        limiter = Limiter(store)
        limiter.track("all")
        monitors.append(Monitor(limiter))
        c = Client(WSGIMiddleware(app, limiter))
        for _ in range(heavy):
            get(c, "203.0.113.50")
        get(c, "198.51.100.1")
    for m in monitors:
        m.tick(m.clock() + 1.5)  # the bucket closes: its top offenders go to the store
    tk("block", "203.0.113.50", "--ttl", "60", "--storage", store)
    p = tk("top", "--storage", store, "--json")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert rows[0] == {"key": "203.0.113.50", "requests": 12, "sources": None,
                       "blocked": True}
    assert rows[1]["key"] == "198.51.100.1" and rows[1]["requests"] == 2
    table = tk("top", "--storage", store, "-n", "1")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[2].split()[:3] == ["1", "203.0.113.50", "12"]


def test_top_from_an_empty_store_is_an_empty_list(store: str) -> None:
    """`top --storage` with no monitor data prints [] (or an empty table), exit 0."""
    p = tk("top", "--storage", store, "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == []
    table = tk("top", "--storage", store)
    assert table.returncode == 0 and table.stdout.split()[:2] == ["#", "KEY"]


HOURLY = """\
[[throttle]]
name = "per-ip"
rates = "2/hour"
strategy = "fixed_window"

[[fail2ban]]
name = "scanners"
path_prefix = "/wp-admin"
maxretry = 1
findtime = "10m"
bantime = "1h"
"""


@pytest.fixture(params=["redis", pytest.param("memcached", marks=pytest.mark.memcached)])
def any_store(request: pytest.FixtureRequest, store: str, _backend_contexts: Any) -> str:
    """The shared Redis, or memcached, under a prefix of this test's own."""
    if request.param == "redis":
        return store
    url = _backend_contexts["get"]("memcached").url
    return f"{url}?prefix=tk-test-admin:{uuid.uuid4().hex[:12]}:"


@pytest.mark.parametrize("command", ["reset", "unblock"])
def test_cli_reaches_a_running_worker_within_a_second(any_store: str, tmp_path: Path,
                                                      command: str) -> None:
    """A worker refusing a client from its local denial cache (an hourly rate) admits it
    within a second of `throttlekit reset` / `unblock` run from a shell."""
    from throttlekit.testing import FakeClock

    now = time.time()
    clock = FakeClock(now - now % 3600 + 1800)  # half past: the hour's window stays open
    rules = tmp_path / "hourly.toml"
    rules.write_text(HOURLY)
    limiter = Limiter(any_store, clock=clock)
    limiter.load_rules(rules)
    c = Client(WSGIMiddleware(app, limiter))
    ip = "198.51.100.30"
    assert [get(c, ip) for _ in range(4)] == [200, 200, 429, 429]
    if command == "unblock":
        assert get(c, ip, "/wp-admin/") == 403  # banned now, and still throttled
    p = tk(command, ip, "--storage", any_store)
    assert p.returncode == 0, p.stdout + p.stderr
    clock.advance(1.1)
    assert get(c, ip) == 200


@pytest.mark.parametrize(("spelling", "sender"), [
    ("::ffff:203.0.113.60", "203.0.113.60"),
    ("2001:DB8:0:0:0:0:0:60", "2001:db8::60"),
    ("2001:db8:60:1::0/64", "2001:db8:60:1::abcd"),
    ("203.0.113.61 ", "203.0.113.61"),
])
def test_cli_block_normalises_like_requests(store: str, served: Client, spelling: str,
                                           sender: str) -> None:
    """`throttlekit block` in any spelling of an address blocks the client sending from it;
    `unblock` in that spelling lifts it."""
    p = tk("block", spelling, "--ttl", "600", "--storage", store)
    assert p.returncode == 0, p.stderr
    assert get(served, sender) == 403
    assert tk("unblock", spelling, "--storage", store).returncode == 0
    assert get(served, sender) == 200


@pytest.mark.parametrize(("bad", "needle"), [("010.0.0.1", "ambiguous"),
                                             ("203.0.113.0/24", "blocklist"),
                                             ("somebody", "not an IP address")])
def test_cli_block_refuses_a_key_that_would_block_nobody(store: str, bad: str,
                                                         needle: str) -> None:
    """A key that matches no request: a message naming it, exit 2, nothing stored."""
    p = tk("block", bad, "--storage", store)
    assert p.returncode == 2
    assert needle in p.stderr and repr(bad) in p.stderr
    assert json.loads(tk("bans", "--storage", store, "--json").stdout) == []
