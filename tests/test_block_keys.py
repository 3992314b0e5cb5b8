"""``Limiter.block`` / ``unblock`` take a client address in any spelling and match it as
requests' addresses are matched; a key that would block nobody is a ConfigError."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from werkzeug.test import Client

from throttlekit import ConfigError, Limiter, WSGIMiddleware
from throttlekit.testing import FakeClock


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


#: (spelling given to block, the address a blocked request comes from)
SPELLINGS = [
    ("::ffff:203.0.113.9", "203.0.113.9"),
    ("::FFFF:203.0.113.9", "::ffff:203.0.113.9"),
    ("2001:DB8::1", "2001:db8::1"),
    ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
    ("2001:db8:1:2::0/64", "2001:db8:1:2:aaaa:bbbb:cccc:dddd"),
    ("2001:DB8:1:2::/64", "2001:db8:1:2::7"),
    (" 203.0.113.9 ", "203.0.113.9"),
    ("203.0.113.9\n", "203.0.113.9"),
    ("203.0.113.9/32", "203.0.113.9"),
    ("::ffff:203.0.113.9/128", "203.0.113.9"),
    ("[2001:db8::1]", "2001:db8::1"),
]


def _get(client: Client, ip: str) -> int:
    return client.get("/", environ_base={"REMOTE_ADDR": ip}).status_code


@pytest.mark.parametrize(("spelling", "sender"), SPELLINGS)
def test_each_spelling_blocks_the_client_sending_from_it(spelling: str, sender: str) -> None:
    """A block in any spelling of an address refuses that client through the middleware,
    and leaves its neighbours alone; unblock in the same spelling lets it back in."""
    limiter = Limiter("memory://")
    client = Client(WSGIMiddleware(app, limiter))
    assert _get(client, sender) == 200
    limiter.block(spelling, ttl=600)
    assert _get(client, sender) == 403
    assert _get(client, "198.51.100.1") == 200
    assert _get(client, "2001:db8:9::1") == 200
    assert limiter.unblock(spelling)
    assert _get(client, sender) == 200


@pytest.mark.parametrize(("spelling", "sender"), SPELLINGS[:3])
def test_ablock_normalises_too(spelling: str, sender: str) -> None:
    """The async twins normalise the same way."""
    limiter = Limiter("memory://")
    client = Client(WSGIMiddleware(app, limiter))
    asyncio.run(limiter.ablock(spelling))
    assert _get(client, sender) == 403
    assert asyncio.run(limiter.aunblock(spelling))
    assert _get(client, sender) == 200


@pytest.mark.parametrize(("bad", "needle"), [
    ("010.0.0.1", "ambiguous"),
    ("203.0.113.0/24", "blocklist"),
    ("2001:db8::/48", "blocklist"),
    ("2001:db8:1:2::5/64", "host bits"),
    ("alice", "not an IP address"),
    ("unknown", "not an IP address"),
    ("1.2.3", "not an IP address"),
    ("fail2ban:scanners", "bans are made by rules"),
    ("fail2ban:scanners:2001:db8:1:4::5", "bans are made by rules"),
    ("   ", "non-empty"),
])
def test_a_key_that_would_block_nobody_is_refused(bad: str, needle: str) -> None:
    """Networks other than a client key, ambiguous or broken addresses and names are a
    ConfigError naming the key, not a block that matches no request."""
    limiter = Limiter("memory://")
    with pytest.raises(ConfigError, match=needle):
        limiter.block(bad)
    with pytest.raises(ConfigError, match=needle):
        asyncio.run(limiter.ablock(bad))
    assert limiter.blocked() == []


def test_block_returns_the_key_as_stored() -> None:
    """What `blocked()` lists (and `throttlekit bans` prints) is the normalised key."""
    limiter = Limiter("memory://")
    assert limiter.block("::ffff:203.0.113.9") == "203.0.113.9"
    assert [b.key for b in limiter.blocked()] == ["203.0.113.9"]


def test_unblock_takes_a_ban_discriminator_and_old_unnormalised_entries() -> None:
    """unblock also accepts a user name (the key of a form-keyed ban) and lifts an entry
    stored unnormalised (by an older version) as well as the normalised one."""
    limiter = Limiter("memory://")
    limiter.fail2ban("login", match=lambda r: True, key="header:x-user", maxretry=1,
                     findtime=60, bantime=600)
    client = Client(WSGIMiddleware(app, limiter))
    assert client.get("/", headers={"X-User": "alice"}).status_code == 403
    assert client.get("/", headers={"X-User": "alice"}).status_code == 403
    assert limiter.unblock("alice")
    limiter.storage.block("::ffff:203.0.113.5", None)  # as an older version stored it
    assert limiter.unblock("::ffff:203.0.113.5")
    assert limiter.blocked() == []


# -- reset_rules and unblock take what an operator has at hand (F1, F2, F6) --------------


def _served(**kwargs: Any) -> tuple[Limiter, Client]:
    # (exact counts: a clock of its own)
    limiter = Limiter("memory://", clock=FakeClock(), **kwargs)
    limiter.throttle("per-client", "2/minute")
    limiter.fail2ban("scanners", match=lambda r: r.path.startswith("/wp-admin"), maxretry=1,
                     findtime=600, bantime=3600)
    return limiter, Client(WSGIMiddleware(app, limiter))


def _spend(client: Client, ip: str) -> None:
    codes = [client.get("/", environ_base={"REMOTE_ADDR": ip}).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


@pytest.mark.parametrize(("spelling", "sender", "prefix"), [
    (" 198.51.100.8 ", "198.51.100.8", 64),
    ("::ffff:198.51.100.9", "198.51.100.9", 64),
    ("::FFFF:198.51.100.9", "198.51.100.9", 64),
    ("198.51.100.10/32", "198.51.100.10", 64),
    ("2001:DB8:1:4::/64", "2001:db8:1:4::5", 64),
    ("2001:db8:1:3::5", "2001:db8:1:3::5", 64),
    ("2001:db8:1:3::5", "2001:db8:1:3:ffff::1", 64),  # the same client key
    ("2001:db8:1:2ff::5", "2001:db8:1:200::9", 56),
    ("2001:db8:1:200::/56", "2001:db8:1:2ff::5", 56),
])
def test_reset_rules_takes_any_spelling_of_a_client(spelling: str, sender: str,
                                                    prefix: int) -> None:
    """reset_rules of an address in any spelling, or of its client key, gives the client
    its quota back; an IPv6 address reaches the client key the throttle counts by."""
    limiter, client = _served(ipv6_prefix=prefix)
    _spend(client, sender)
    limiter.reset_rules(spelling)
    assert _get(client, sender) == 200
    asyncio.run(limiter.areset_rules(spelling))  # the async twin too
    assert _get(client, sender) == 200


@pytest.mark.parametrize("bad", ["", "   ", "\n", None, 7])
def test_reset_of_an_empty_key_is_refused(bad: Any) -> None:
    """An empty key is a ConfigError for reset_rules and reset (a reset of nothing must not
    look like a success)."""
    limiter = Limiter("memory://")
    for call in (limiter.reset_rules, limiter.reset):
        with pytest.raises(ConfigError):
            call(bad)
    with pytest.raises(ConfigError):
        asyncio.run(limiter.areset_rules(bad))


def test_reset_rules_of_a_network_that_is_no_client_key_is_refused() -> None:
    """A network other than a client key names no rule key: a ConfigError, as for block."""
    limiter = Limiter("memory://")
    for bad in ("203.0.113.0/24", "2001:db8::/48", "2001:db8:1:2::5/64"):
        with pytest.raises(ConfigError, match="network"):
            limiter.reset_rules(bad)


def test_reset_rules_of_a_value_starting_with_hash_finds_it_hashed() -> None:
    """A header value '#x' is stored hashed (no client value reaches throttlekit's own
    '#...' buckets); reset_rules('#x') finds it the same way (docs/rules.md)."""
    limiter = Limiter("memory://", clock=FakeClock())  # (exact counts: a clock of its own)
    limiter.throttle("per-user", "1/minute", key="header:x-user")
    client = Client(WSGIMiddleware(app, limiter))
    for value in ("#x", "#Sha256:x", "#client", "alice"):
        codes = [client.get("/", headers={"X-User": value}).status_code for _ in range(2)]
        assert codes == [200, 429], value
        limiter.reset_rules(value)
        assert client.get("/", headers={"X-User": value}).status_code == 200, value


def test_reset_rules_of_a_client_reaches_its_unreadable_bucket() -> None:
    """Requests whose key cannot be read count under '#client:<client key>'; reset_rules
    of the client's address (or of that bucket as verdicts show it) clears it."""
    limiter = Limiter("memory://", clock=FakeClock())  # (exact counts: a clock of its own)
    limiter.throttle("login", "1/minute", key=lambda r: r.headers["x-user"])
    client = Client(WSGIMiddleware(app, limiter))
    ip = "2001:db8:1:3::5"
    for key in (ip, "#client:2001:DB8:1:3::/64", "#client:2001:db8:1:3::5"):
        codes = [_get(client, ip) for _ in range(2)]
        assert codes == [200, 429], key
        limiter.reset_rules(key)
        assert _get(client, ip) == 200, key
        limiter.reset_rules(ip)


@pytest.mark.parametrize("prefix", [64, 56])
def test_unblock_of_an_ipv6_address_lifts_its_client_keys_ban(prefix: int) -> None:
    """A ban is stored under the client key (the /prefix network); unblock of the address
    the access log shows lifts it, as does Limiter.unblock of an address in a manual
    network block; inspect-style listing shows no block left."""
    limiter, client = _served(ipv6_prefix=prefix)
    ip = "2001:db8:1:6::5"
    assert client.get("/wp-admin/", environ_base={"REMOTE_ADDR": ip}).status_code == 403
    assert _get(client, ip) == 403
    assert limiter.unblock(ip)
    assert _get(client, ip) == 200
    assert limiter.blocked() == []
    limiter.block(limiter.resolver.client_key("2001:db8:1:2::5") or "", ttl=600)
    assert _get(client, "2001:db8:1:2::7") == 403
    assert asyncio.run(limiter.aunblock("2001:db8:1:2::5"))
    assert _get(client, "2001:db8:1:2::7") == 200


def test_unblock_of_an_ipv6_address_lifts_a_ban_made_under_another_prefix() -> None:
    """An admin limiter with the default /64 lifts the /56 ban of an app keyed by /56 when
    given one of the client's addresses (the blocklist entry holding it)."""
    from throttlekit import MemoryStorage

    storage = MemoryStorage()
    serving = Limiter(storage, ipv6_prefix=56)
    serving.fail2ban("scanners", match=lambda r: r.path.startswith("/wp-admin"), maxretry=1,
                     findtime=600, bantime=3600)
    client = Client(WSGIMiddleware(app, serving))
    ip = "2001:db8:1:2ff::5"
    assert client.get("/wp-admin/", environ_base={"REMOTE_ADDR": ip}).status_code == 403
    assert Limiter(storage).unblock(ip)
    assert _get(client, ip) == 200


def test_unblock_of_a_ban_names_an_unknown_rule() -> None:
    """With rules, unblock of a ban of a rule the limiter lacks (a typo) that lifts nothing
    is a ConfigError naming the rules there are; an existing ban of an unknown rule is
    still lifted; without rules, an unknown ban is just not there."""
    limiter, _ = _served()
    with pytest.raises(ConfigError, match=r"'scanner'.*\(scanners\)"):
        limiter.unblock("fail2ban:scanner:198.51.100.7")
    limiter.storage.block("fail2ban:old-rule:198.51.100.7", 600)  # a renamed rule's ban
    assert limiter.unblock("fail2ban:old-rule:198.51.100.7")
    assert not Limiter("memory://").unblock("fail2ban:scanner:198.51.100.7")
