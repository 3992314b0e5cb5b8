"""Rule semantics users rely on, end to end through the WSGI middleware."""

from __future__ import annotations

import pytest
from werkzeug.test import Client

from throttlekit import ConfigError, Limiter, WSGIMiddleware
from throttlekit.testing import FakeClock


def ok_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def client_for(limiter: Limiter) -> Client:
    return Client(WSGIMiddleware(ok_app, limiter))


def get(client: Client, path: str = "/", ip: str | None = "192.0.2.7", **headers: str):
    env = {"REMOTE_ADDR": ip} if ip is not None else {}
    return client.get(path, environ_base=env, headers=headers)


def test_fail2ban_counts_matches_within_findtime_exactly():
    """maxretry matches within findtime ban; matches older than findtime don't count."""
    clock = FakeClock()
    limiter = Limiter(clock=clock)
    limiter.fail2ban("scanners", match=lambda r: r.path.startswith("/wp-admin"),
                     maxretry=3, findtime=600, bantime=3600)
    c = client_for(limiter)
    assert [get(c, "/wp-admin").status_code for _ in range(2)] == [403, 403]
    clock.advance(601)
    assert get(c, "/wp-admin").status_code == 403  # refused, but only 1 within findtime
    assert get(c, "/").status_code == 200 and limiter.blocked() == []
    get(c, "/wp-admin")
    get(c, "/wp-admin")  # 3 within findtime: banned from everything
    assert get(c, "/").status_code == 403
    assert [b.key for b in limiter.blocked()] == ["fail2ban:scanners:192.0.2.7"]
    clock.advance(3601)
    assert get(c, "/").status_code == 200


def test_unblock_by_client_key_lifts_its_bans():
    """unblock("192.0.2.7") lifts a manual block and every ban of that client."""
    limiter = Limiter(clock=FakeClock())
    limiter.fail2ban("scanners", match=lambda r: r.path == "/wp-admin", maxretry=1,
                     findtime=60, bantime=3600)
    c = client_for(limiter)
    get(c, "/wp-admin")
    limiter.block("192.0.2.7", ttl=60)
    assert get(c, "/").status_code == 403
    assert limiter.unblock("192.0.2.7")
    assert limiter.blocked() == [] and get(c, "/").status_code == 200


def test_requests_without_a_client_address_share_one_bucket():
    """No peer address: such requests are limited together, not let through unlimited."""
    limiter = Limiter(clock=FakeClock())  # (exact counts: a clock of its own)
    limiter.throttle("per-ip", "2/minute")
    c = client_for(limiter)
    assert [get(c, ip=None).status_code for _ in range(3)] == [200, 200, 429]
    assert get(c).status_code == 200  # a real client has its own bucket


def test_multi_rate_rule_headers_name_the_rule():
    """A rule with several rates reports its first rate under the rule's own name."""
    limiter = Limiter()
    limiter.throttle("per-ip", "100/minute; 20/second", strategy="token_bucket")
    r = get(client_for(limiter))
    policy = r.headers["RateLimit-Policy"]
    assert policy.startswith('"per-ip";q=100;w=60')
    assert '"per-ip/1";q=20;w=1' in policy
    assert '"per-ip' in r.headers["RateLimit"]


def test_forwarded_header_is_believed_when_chosen():
    """forwarded_header="forwarded" reads RFC 7239 Forwarded from the trusted proxy."""
    limiter = Limiter(trusted_proxies=1, forwarded_header="forwarded", clock=FakeClock())
    limiter.throttle("per-ip", "1/minute")
    c = client_for(limiter)
    codes = [get(c, ip="10.0.0.1", Forwarded=f"for=203.0.113.{i}").status_code
             for i in (1, 2, 1)]
    assert codes == [200, 200, 429]
    with pytest.raises(ConfigError, match="x-real-ip"):
        Limiter(forwarded_header="x-real-ip")


@pytest.mark.parametrize("key", [42, ("a", "b"), None, b"bytes"])
def test_keys_must_be_strings(key):
    """A non-string key is a ConfigError, never a store failure or a collision."""
    limiter = Limiter()
    with pytest.raises(ConfigError, match="key must be a string"):
        limiter.hit(key, "1/second")
    with pytest.raises(ConfigError):
        limiter.test(key, "1/second")


def test_default_strategy_gives_a_full_quota_after_one_period():
    """With the default strategy a client refused now has its full quota a period later."""
    clock = FakeClock()
    limiter = Limiter(clock=clock)
    assert [limiter.hit("k", "5/minute").allowed for _ in range(6)] == [True] * 5 + [False]
    refused = limiter.hit("k", "5/minute")
    assert 0 < refused.retry_after <= 60
    clock.advance(60)
    assert [limiter.hit("k", "5/minute").allowed for _ in range(5)] == [True] * 5


def test_key_shortcuts_match_the_rules_file_vocabulary():
    """key="global", "path" and "form:<field>" work in Python as in a rules file."""
    limiter = Limiter(clock=FakeClock())  # (exact counts: a clock of its own)
    limiter.throttle("everyone", "2/minute", key="global")
    c = client_for(limiter)
    assert [get(c, ip=f"192.0.2.{i}").status_code for i in range(3)] == [200, 200, 429]

    per_path = Limiter(clock=FakeClock())
    per_path.throttle("paths", "1/minute", key="path")
    c = client_for(per_path)
    assert [get(c, p).status_code for p in ("/a", "/b", "/a")] == [200, 200, 429]

    logins = Limiter(clock=FakeClock())
    logins.throttle("login", "1/minute", key="form:username",
                    match=lambda r: r.method == "POST")
    c = client_for(logins)
    codes = [c.post("/", data={"username": u}, environ_base={"REMOTE_ADDR": "192.0.2.1"})
             .status_code for u in ("ann", "ann", "bob")]
    assert codes == [200, 429, 200]
    with pytest.raises(ConfigError, match="bogus"):
        Limiter().throttle("x", "1/minute", key="bogus")


def test_unblock_lifts_bans_made_by_rules_this_limiter_does_not_know():
    """An admin limiter without the rules (another process) still lifts a client's bans."""
    from throttlekit import MemoryStorage

    storage = MemoryStorage()
    serving = Limiter(storage)
    serving.fail2ban("scanners", match=lambda r: r.path == "/wp-admin", maxretry=1,
                     findtime=60, bantime=3600)
    c = client_for(serving)
    get(c, "/wp-admin")
    assert get(c).status_code == 403
    admin = Limiter(storage)  # knows no rules
    assert admin.unblock("192.0.2.7")
    assert serving.blocked() == [] and get(c).status_code == 200
