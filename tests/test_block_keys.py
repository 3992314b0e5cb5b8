"""``Limiter.block`` / ``unblock`` take a client address in any spelling and match it as
requests' addresses are matched; a key that would block nobody is a ConfigError."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from werkzeug.test import Client

from throttlekit import ConfigError, Limiter, WSGIMiddleware


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
