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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_block_ttl_takes_a_duration_with_a_unit(store: str) -> None:
    """`block KEY --ttl 10m` blocks for ten minutes; a bad duration is a usage error."""
    p = tk("block", "192.0.2.44", "--ttl", "10m", "--storage", store)
    assert p.returncode == 0, p.stderr
    bans = json.loads(tk("bans", "--storage", store, "--json").stdout)
    assert [b["key"] for b in bans] == ["192.0.2.44"]
    assert 590 < bans[0]["expires_in"] <= 600
    bad = tk("block", "192.0.2.45", "--ttl", "10 fortnights", "--storage", store)
    assert bad.returncode == 2 and "bad duration" in bad.stderr


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize(("spelling", "sender", "extra"), [
    ("::ffff:203.0.113.60", "203.0.113.60", ()),
    ("2001:DB8:0:0:0:0:0:60", "2001:db8::60", ()),
    ("2001:db8:60:1::0/64", "2001:db8:60:1::abcd", ("--ipv6-prefix", "64")),
    ("203.0.113.61 ", "203.0.113.61", ()),
])
def test_cli_block_normalises_like_requests(store: str, served: Client, spelling: str,
                                           sender: str, extra: tuple[str, ...]) -> None:
    """`throttlekit block` in any spelling of an address blocks the client sending from it;
    `unblock` in that spelling lifts it."""
    p = tk("block", spelling, "--ttl", "600", "--storage", store, *extra)
    assert p.returncode == 0, p.stderr
    assert get(served, sender) == 403
    assert tk("unblock", spelling, "--storage", store, *extra).returncode == 0
    assert get(served, sender) == 200


@pytest.mark.slow
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


# -- an operator's spellings of a key, and what the commands refuse (F1, F2, F5, F6) ----


def _refused(c: Client, ip: str) -> None:
    """Spend the client's 3/minute of `per-ip` (RULES)."""
    assert [get(c, ip) for _ in range(4)] == [200, 200, 200, 429]


@pytest.mark.slow
@pytest.mark.parametrize(("spelling", "sender", "extra"), [
    (" 198.51.100.40 ", "198.51.100.40", ()),
    ("::ffff:198.51.100.41", "198.51.100.41", ()),
    ("198.51.100.42/32", "198.51.100.42", ()),
    ("2001:DB8:1:4::/64", "2001:db8:1:4::5", ("--ipv6-prefix", "64")),
    ("2001:db8:1:5::/64", "2001:db8:1:5::5", ("--rules", "RULES")),
    ("2001:db8:1:3::5", "2001:db8:1:3::5", ()),  # as the access log shows the client
    ("2001:db8:1:3::5", "2001:db8:1:3::77", ()),  # its client key: the whole /64
])
def test_cli_reset_takes_the_spellings_block_takes(store: str, served: Client,
                                                  rules_file: Path, spelling: str,
                                                  sender: str, extra: tuple[str, ...]) -> None:
    """`reset` of any spelling of a client's address (or of its client key) gives the client
    its quota back; an IPv6 address reaches its client key, which the throttle counts by."""
    _refused(served, sender)
    args = tuple(str(rules_file) if a == "RULES" else a for a in extra)
    p = tk("reset", spelling, "--storage", store, *args)
    assert p.returncode == 0, p.stdout + p.stderr
    assert get(served, sender) == 200
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_cli_reset_of_an_ipv6_address_says_when_it_assumed_the_prefix(store: str) -> None:
    """Without the app's prefix, `reset` of an IPv6 address says on stderr that its client
    key assumed the default /64; JSON lists every key it reset."""
    p = tk("reset", "2001:db8:1:3::5", "--storage", store, "--json")
    assert p.returncode == 0, p.stderr
    assert "/64" in p.stderr and "--ipv6-prefix" in p.stderr
    assert json.loads(p.stdout)["keys"][:2] == ["2001:db8:1:3::5", "2001:db8:1:3::/64"]
    quiet = tk("reset", "2001:db8:1:3::5", "--storage", store, "--ipv6-prefix", "64")
    assert quiet.returncode == 0 and quiet.stderr == ""


@pytest.mark.slow
@pytest.mark.parametrize("key", ["", "   "])
def test_cli_reset_of_an_empty_key_is_a_usage_error(store: str, key: str) -> None:
    """An empty key resets nothing: a message and exit 2, not a success."""
    p = tk("reset", key, "--storage", store)
    assert p.returncode == 2
    assert "non-empty" in p.stderr


@pytest.mark.slow
def test_cli_inspect_of_an_ipv6_address_shows_its_client_keys_state(
        store: str, served: Client, rules_file: Path) -> None:
    """`inspect` of an IPv6 address as the access log shows it reports the rows of its
    client key (what the throttle counts) and the ban of its network."""
    ip = "2001:db8:1:6::5"
    _refused(served, ip)
    for _ in range(3):
        get(served, ip, "/wp-admin/")
    p = tk("inspect", ip, "--storage", store, "--rules", str(rules_file), "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["keys"] == [ip, "2001:db8:1:6::/64"]
    rows = {(r["key"], r["rule"]): r for r in data["rules"]}
    assert rows["2001:db8:1:6::/64", "per-ip"]["remaining"] == 0
    assert rows[ip, "per-ip"]["remaining"] == 3
    assert [b["key"] for b in data["blocked"]] == ["fail2ban:scanners:2001:db8:1:6::/64"]
    table = tk("inspect", ip, "--storage", store, "--rules", str(rules_file))
    assert table.returncode == 0, table.stderr
    assert "BLOCKED by 'fail2ban:scanners:2001:db8:1:6::/64'" in table.stdout
    assert table.stdout.splitlines()[1].split()[:2] == ["KEY", "RULE"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), ("--ipv6-prefix", "64")])
def test_cli_unblock_of_an_ipv6_address_lifts_its_networks_ban(store: str, served: Client,
                                                              extra: tuple[str, ...]) -> None:
    """A ban is stored under the client key (/64); `unblock` of the address the access log
    shows lifts it, with or without the prefix given."""
    ip = "2001:db8:1:6::5"
    for _ in range(3):
        get(served, ip, "/wp-admin/")
    assert get(served, ip) == 403
    p = tk("unblock", ip, "--storage", store, *extra)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("unblocked")
    assert get(served, ip) == 200
    assert json.loads(tk("bans", "--storage", store, "--json").stdout) == []


@pytest.mark.slow
def test_cli_unblock_of_an_ipv6_address_lifts_a_ban_of_another_prefix(store: str) -> None:
    """An app keying IPv6 clients by /56: `unblock ADDRESS` (no prefix given) finds the /56
    ban holding the address."""
    limiter = Limiter(store, ipv6_prefix=56, denial_cache_size=0)
    limiter.fail2ban("scanners", match=lambda r: r.path.startswith("/wp-admin"), maxretry=1,
                     findtime=600, bantime=3600)
    c = Client(WSGIMiddleware(app, limiter))
    ip = "2001:db8:1:2ff::5"
    assert get(c, ip, "/wp-admin/") == 403
    assert get(c, ip) == 403
    p = tk("unblock", ip, "--storage", store)
    assert p.returncode == 0, p.stdout + p.stderr
    assert get(c, ip) == 200


@pytest.mark.slow
def test_cli_ipv6_network_needs_the_apps_prefix(store: str, tmp_path: Path) -> None:
    """Without the app's IPv6 prefix, a network block is refused (it may be no client key
    of the app: blocking nobody); with --ipv6-prefix or the rules file's it blocks the
    clients of that network; a plain address needs no prefix."""
    limiter = Limiter(store, ipv6_prefix=56, denial_cache_size=0)
    c = Client(WSGIMiddleware(app, limiter))
    for net in ("2001:db8:1:2::/64", "2001:db8:1:200::/56"):
        p = tk("block", net, "--storage", store)
        assert p.returncode == 2, p.stdout
        assert "--ipv6-prefix" in p.stderr and "--rules" in p.stderr
    assert json.loads(tk("bans", "--storage", store, "--json").stdout) == []
    wrong = tk("block", "2001:db8:1:2::/64", "--storage", store, "--ipv6-prefix", "56")
    assert wrong.returncode == 2 and "an IPv6 /56" in wrong.stderr  # not a client key
    p = tk("block", "2001:db8:1:200::/56", "--storage", store, "--ipv6-prefix", "56")
    assert p.returncode == 0, p.stderr
    assert get(c, "2001:db8:1:2ff::5") == 403
    assert get(c, "2001:db8:1:300::5") == 200
    rules = tmp_path / "r56.toml"
    rules.write_text(f'[limiter]\nstorage = "{store}"\nipv6_prefix = 56\n')
    assert tk("unblock", "2001:db8:1:200::/56", "--rules", str(rules)).returncode == 0
    assert get(c, "2001:db8:1:2ff::5") == 200
    clash = tk("block", "2001:db8:1:200::/56", "--rules", str(rules), "--ipv6-prefix", "64")
    assert clash.returncode == 2 and "contradicts" in clash.stderr
    assert tk("block", "2001:db8:1:2ff::5", "--storage", store).returncode == 0
    assert get(c, "2001:db8:1:2ff::5") == 403
    assert get(c, "2001:db8:1:2ff::6") == 200


@pytest.mark.slow
@pytest.mark.parametrize("key", ["fail2ban:scanners:2001:db8:1:4::5",
                                 "fail2ban:scanners:198.51.100.7",
                                 "allow2ban:logins:alice"])
def test_cli_block_of_a_ban_is_refused(store: str, key: str) -> None:
    """Bans are made by rules (under the client key): `block` of a ban-form key is a usage
    error that says to block the address, and stores nothing."""
    p = tk("block", key, "--storage", store)
    assert p.returncode == 2
    assert "bans are made by rules" in p.stderr
    assert json.loads(tk("bans", "--storage", store, "--json").stdout) == []


@pytest.mark.slow
def test_cli_unblock_of_a_ban_of_an_unknown_rule_is_an_error(store: str, served: Client,
                                                           rules_file: Path) -> None:
    """With the rules loaded, `unblock fail2ban:<typo>:KEY` names the rules there are,
    exit 2; the right name lifts the ban."""
    ip = "198.51.100.7"
    for _ in range(3):
        get(served, ip, "/wp-admin/")
    assert get(served, ip) == 403
    p = tk("unblock", f"fail2ban:scanner:{ip}", "--storage", store, "--rules", str(rules_file))
    assert p.returncode == 2
    assert "'scanner'" in p.stderr and "scanners" in p.stderr
    assert get(served, ip) == 403
    ok = tk("unblock", f"fail2ban:scanners:{ip}", "--storage", store, "--rules",
            str(rules_file))
    assert ok.returncode == 0, ok.stderr
    assert get(served, ip) == 200


def test_cli_top_needs_a_positive_count(store: str) -> None:
    """`top -n` below 1 is a usage error, not a slice from the end."""
    for n in ("-1", "0"):
        p = tk("top", "-n", n, "--storage", store)
        assert p.returncode == 2 and "-n" in p.stderr


# -- environmental failures: one line, no traceback (F7) --------------------------------

ADMIN_COMMANDS = [("bans",), ("block", "192.0.2.1"), ("unblock", "192.0.2.1"),
                  ("inspect", "192.0.2.1"), ("reset", "192.0.2.1"), ("top",)]


@pytest.fixture(scope="module")
def stopped_redis() -> Iterator[str]:
    """A Redis of this module's own, stopped: a store that is down."""
    from servers import RedisServer, start_or_skip

    with start_or_skip(RedisServer()) as server:
        server.stop()
        yield server.url


@pytest.mark.slow
@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=lambda c: c[0])
def test_cli_on_a_down_redis_prints_one_line(stopped_redis: str, command: tuple[str, ...]
                                             ) -> None:
    """Every admin command against a Redis that is down: one line naming the store, exit 1,
    no traceback."""
    p = tk(*command, "--storage", stopped_redis)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"throttlekit: the store at {stopped_redis} "
                                                   "failed: ")


@pytest.mark.slow
@pytest.mark.memcached
def test_cli_on_a_down_memcached_prints_one_line() -> None:
    """The same against a memcached that is down (nothing listens on its port)."""
    from servers import free_port

    url = f"memcached://127.0.0.1:{free_port()}"
    for command in ADMIN_COMMANDS[:5]:
        p = tk(*command, "--storage", url)
        assert p.returncode == 1, (command, p.stdout, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"throttlekit: the store at {url} "), \
            (command, p.stderr)


def test_cli_store_password_is_not_printed() -> None:
    """The one line names the store without its password."""
    from servers import free_port

    p = tk("bans", "--storage", f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    assert p.returncode == 1
    assert "hunter2" not in p.stderr and ":***@127.0.0.1" in p.stderr


@pytest.mark.slow
def test_cli_output_that_cannot_be_written_is_one_line(store: str) -> None:
    """`bans > /dev/full` and `bans >&-` (stdout closed): one line on stderr, exit 1."""
    tk("block", "192.0.2.1", "--storage", store)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(throttlekit.__file__).resolve().parent.parent),
                                         env.get("PYTHONPATH", "")])
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "throttlekit", "bans", "--storage", store],
                           stdout=full, stderr=subprocess.PIPE, text=True, timeout=60, env=env,
                           stdin=subprocess.DEVNULL)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == ["throttlekit bans: No space left on device"]
    closed = subprocess.run(["sh", "-c", '"$0" -m throttlekit bans --storage "$1" >&-',
                             sys.executable, store], stderr=subprocess.PIPE, text=True,
                            timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert closed.returncode == 1
    assert closed.stderr.strip().splitlines() == ["throttlekit bans: standard output is closed"]
