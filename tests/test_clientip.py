"""Client IP resolution: trusted proxies (hop count and CIDRs), normalisation, garbage."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from throttlekit import ConfigError
from throttlekit._clientip import ClientIPResolver, normalize_ip

# (id, trusted_proxies, peer, x_forwarded_for, expected client ip)
XFF_CASES = [
    ("no-proxy-peer-only", 0, "198.51.100.7", None, "198.51.100.7"),
    ("no-proxy-spoofed-xff-ignored", 0, "198.51.100.7", "127.0.0.1", "198.51.100.7"),
    ("no-proxy-spoofed-chain-ignored", 0, "198.51.100.7", "1.1.1.1, 2.2.2.2", "198.51.100.7"),
    ("one-hop", 1, "10.0.0.1", "203.0.113.9", "203.0.113.9"),
    ("one-hop-spoof-prefix-ignored", 1, "10.0.0.1", "127.0.0.1, 203.0.113.9", "203.0.113.9"),
    ("one-hop-no-spaces", 1, "10.0.0.1", "127.0.0.1,203.0.113.9", "203.0.113.9"),
    ("two-hops", 2, "10.0.0.2", "6.6.6.6, 203.0.113.9, 10.0.0.1", "203.0.113.9"),
    ("two-hops-short-chain-uses-peer", 2, "10.0.0.2", "203.0.113.9", "10.0.0.2"),
    ("one-hop-no-header-uses-peer", 1, "10.0.0.1", None, "10.0.0.1"),
    ("one-hop-empty-header-uses-peer", 1, "10.0.0.1", "", "10.0.0.1"),
    ("one-hop-with-port", 1, "10.0.0.1", "203.0.113.9:51234", "203.0.113.9"),
    ("one-hop-bracketed-v6-port", 1, "10.0.0.1", "[2001:db8::5]:443", "2001:db8::5"),
    ("one-hop-bare-v6", 1, "10.0.0.1", "2001:DB8::5", "2001:db8::5"),
    ("one-hop-mapped-v4", 1, "10.0.0.1", "::ffff:203.0.113.9", "203.0.113.9"),
    ("one-hop-garbage-falls-to-peer", 1, "10.0.0.1", "not-an-ip", "10.0.0.1"),
    ("two-hops-garbage-falls-to-next-hop", 2, "10.0.0.2", "garbage, 10.0.0.1", "10.0.0.1"),
    ("one-hop-unknown-falls-to-peer", 1, "10.0.0.1", "unknown", "10.0.0.1"),
    ("one-hop-missing-peer", 1, None, "203.0.113.9", "203.0.113.9"),
    ("cidr-trusted-peer", ["10.0.0.0/8"], "10.0.0.1", "203.0.113.9", "203.0.113.9"),
    (
        "cidr-untrusted-peer-ignores-xff",
        ["10.0.0.0/8"],
        "198.51.100.7",
        "127.0.0.1",
        "198.51.100.7",
    ),
    (
        "cidr-skips-trusted-chain",
        ["10.0.0.0/8"],
        "10.0.0.3",
        "6.6.6.6, 203.0.113.9, 10.0.0.2, 10.0.0.1",
        "203.0.113.9",
    ),
    ("cidr-all-trusted-leftmost", ["10.0.0.0/8"], "10.0.0.3", "10.0.0.9, 10.0.0.2", "10.0.0.9"),
    (
        "cidr-garbage-after-trusted-is-proxy",
        ["10.0.0.0/8"],
        "10.0.0.3",
        "6.6.6.6, junk",
        "10.0.0.3",
    ),
    (
        "cidr-v6-proxies",
        ["2001:db8:ffff::/48"],
        "2001:db8:ffff::1",
        "2001:db8:1::7",
        "2001:db8:1::7",
    ),
    (
        "cidr-mapped-peer-is-trusted-v4",
        ["10.0.0.0/8"],
        "::ffff:10.0.0.1",
        "203.0.113.9",
        "203.0.113.9",
    ),
    ("cidr-no-peer-is-none", ["10.0.0.0/8"], None, "203.0.113.9", None),
    ("cidr-unix-peer-trusted", ["unix"], "", "203.0.113.9", "203.0.113.9"),
    ("cidr-unix-but-ip-peer-untrusted", ["unix"], "198.51.100.7", "203.0.113.9", "198.51.100.7"),
    ("no-proxy-missing-peer", 0, None, None, None),
    ("no-proxy-empty-peer", 0, "", None, None),
    ("no-proxy-unix-path-peer", 0, "/run/app.sock", None, None),
]


@pytest.mark.parametrize(
    ("trusted", "peer", "xff", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in XFF_CASES],
)
def test_x_forwarded_for(trusted, peer, xff, expected):
    """X-Forwarded-For is believed exactly as far as the trusted proxies reach."""
    assert ClientIPResolver(trusted).resolve(peer, xff) == expected


FORWARDED_CASES = [
    ("one-hop", 1, "10.0.0.1", "for=203.0.113.9", "203.0.113.9"),
    (
        "one-hop-spoof-prefix",
        1,
        "10.0.0.1",
        "for=127.0.0.1, for=203.0.113.9;proto=https",
        "203.0.113.9",
    ),
    ("quoted-v6-with-port", 1, "10.0.0.1", 'for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
    ("case-insensitive-param", 1, "10.0.0.1", "For=203.0.113.9", "203.0.113.9"),
    (
        "for-not-first-param",
        1,
        "10.0.0.1",
        "proto=https;for=203.0.113.9;by=10.0.0.1",
        "203.0.113.9",
    ),
    ("hidden-falls-to-peer", 1, "10.0.0.1", "for=_hidden", "10.0.0.1"),
    ("unknown-falls-to-peer", 1, "10.0.0.1", "for=unknown", "10.0.0.1"),
    ("element-without-for", 1, "10.0.0.1", "proto=https", "10.0.0.1"),
    (
        "unbalanced-quote-cannot-swallow-proxy-entry",
        2,
        "10.0.0.2",
        'for=1.1.1.1, for=", for=203.0.113.9, for=10.0.0.1',
        "203.0.113.9",
    ),
    (
        "cidr-walk",
        ["10.0.0.0/8"],
        "10.0.0.2",
        "for=6.6.6.6, for=203.0.113.9, for=10.0.0.1",
        "203.0.113.9",
    ),
    ("no-proxy-ignored", 0, "198.51.100.7", "for=127.0.0.1", "198.51.100.7"),
]


@pytest.mark.parametrize(
    ("trusted", "peer", "fwd", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in FORWARDED_CASES],
)
def test_forwarded_header(trusted, peer, fwd, expected):
    """The RFC 7239 Forwarded header is read when configured, with the same trust rules."""
    resolver = ClientIPResolver(trusted, header="forwarded")
    assert resolver.resolve(peer, None, fwd) == expected


def test_only_the_configured_header_is_read():
    """A Forwarded header the proxies do not write cannot override X-Forwarded-For."""
    xff_resolver = ClientIPResolver(1)
    assert xff_resolver.resolve("10.0.0.1", "203.0.113.9", "for=127.0.0.1") == "203.0.113.9"
    assert xff_resolver.resolve("10.0.0.1", None, "for=127.0.0.1") == "10.0.0.1"
    fwd_resolver = ClientIPResolver(1, header="forwarded")
    assert fwd_resolver.resolve("10.0.0.1", "127.0.0.1", None) == "10.0.0.1"


NORMALISE_CASES = [
    ("v4", "192.0.2.1", "192.0.2.1"),
    ("v4-whitespace", "  192.0.2.1 ", "192.0.2.1"),
    ("v4-port", "192.0.2.1:8080", "192.0.2.1"),
    ("v4-leading-zero-rejected", "192.000.2.1", None),
    ("v4-short-form-rejected", "127.1", None),
    ("v6-compressed", "2001:0db8:0000::0001", "2001:db8::1"),
    ("v6-brackets", "[2001:db8::1]", "2001:db8::1"),
    ("v6-brackets-port", "[2001:db8::1]:80", "2001:db8::1"),
    ("v6-brackets-bad-suffix", "[2001:db8::1]x", None),
    ("v6-unclosed-bracket", "[2001:db8::1", None),
    ("v6-zone-dropped", "fe80::1%eth0", "fe80::1"),
    ("v4-mapped", "::ffff:192.0.2.1", "192.0.2.1"),
    ("v4-mapped-hex", "::ffff:c000:201", "192.0.2.1"),
    ("v4-mapped-bracketed", "[::ffff:192.0.2.1]:443", "192.0.2.1"),
    ("v4-translated", "::ffff:0:192.0.2.1", "192.0.2.1"),
    ("v4-compatible", "::192.0.2.1", "192.0.2.1"),
    ("loopback-v6-stays", "::1", "::1"),
    ("unspecified-v6-stays", "::", "::"),
    ("nat64", "64:ff9b::192.0.2.1", "192.0.2.1"),
    ("6to4", "2002:c000:0201::1", "192.0.2.1"),
    ("6to4-other-subnet", "2002:c000:0201:ffff::abcd", "192.0.2.1"),
    ("teredo-rfc4380-example", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.45"),
    ("quoted", '"192.0.2.1"', "192.0.2.1"),
    ("unknown", "unknown", None),
    ("obfuscated", "_hidden", None),
    ("empty", "", None),
    ("hostname", "example.com", None),
    ("non-ascii-digits", "١٩٢.0.2.1", None),
    ("too-long", "1" * 500, None),
    ("nul", "192.0.2.1\x00", None),
]


@pytest.mark.parametrize(
    ("text", "expected"), [pytest.param(*case[1:], id=case[0]) for case in NORMALISE_CASES]
)
def test_normalize_ip(text, expected):
    """Addresses are canonicalised and embedded IPv4 forms unwrapped to the IPv4 address."""
    assert normalize_ip(text) == expected


def test_embedded_ipv4_peers_are_separate_clients():
    """Distinct IPv4 clients seen as IPv4-mapped peers get distinct keys (the masking CVE)."""
    resolver = ClientIPResolver()
    keys = {resolver.client_key(resolver.resolve(f"::ffff:198.51.100.{i}")) for i in range(1, 21)}
    assert keys == {f"198.51.100.{i}" for i in range(1, 21)}


@pytest.mark.parametrize(
    ("prefix", "ip", "key"),
    [
        pytest.param(64, "2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64", id="v6-64"),
        pytest.param(48, "2001:db8:1:2::1", "2001:db8:1::/48", id="v6-48"),
        pytest.param(128, "2001:db8::1", "2001:db8::1/128", id="v6-128"),
        pytest.param(64, "192.0.2.1", "192.0.2.1", id="v4-is-itself"),
        pytest.param(64, "::ffff:192.0.2.1", "192.0.2.1", id="mapped-unwrapped"),
        pytest.param(64, None, None, id="none"),
        pytest.param(64, "garbage", None, id="garbage"),
    ],
)
def test_client_key(prefix, ip, key):
    """IPv6 clients are keyed by their network of ipv6_prefix bits, IPv4 by the address."""
    assert ClientIPResolver(ipv6_prefix=prefix).client_key(ip) == key


def test_one_v6_host_rotating_addresses_shares_a_key():
    """Addresses inside one /64 share the default key; the next /64 does not."""
    resolver = ClientIPResolver()
    keys = {resolver.client_key(f"2001:db8:0:1::{i:x}") for i in range(1, 200)}
    assert keys == {"2001:db8:0:1::/64"}
    assert resolver.client_key("2001:db8:0:2::1") != "2001:db8:0:1::/64"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        pytest.param({"trusted_proxies": -1}, "-1", id="negative-hops"),
        pytest.param({"trusted_proxies": True}, "True", id="bool"),
        pytest.param({"trusted_proxies": ["10.0.0.0/33"]}, "10.0.0.0/33", id="bad-cidr"),
        pytest.param({"trusted_proxies": ["10.0.0.1/8"]}, "10.0.0.1/8", id="host-bits"),
        pytest.param({"trusted_proxies": "10.0.0.0/8"}, "10.0.0.0/8", id="bare-string"),
        pytest.param({"trusted_proxies": 1.5}, "1.5", id="float"),
        pytest.param({"ipv6_prefix": 0}, "0", id="prefix-0"),
        pytest.param({"ipv6_prefix": 129}, "129", id="prefix-129"),
        pytest.param({"header": "x-real-ip"}, "x-real-ip", id="unknown-header"),
    ],
)
def test_bad_configuration(kwargs, fragment):
    """Bad settings raise ConfigError naming the bad value."""
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        ClientIPResolver(**kwargs)


def test_trusts_headers_flag():
    """Callers can skip reading forwarding headers when nothing is trusted."""
    assert not ClientIPResolver().trusts_headers
    assert ClientIPResolver(1).trusts_headers
    assert ClientIPResolver(["10.0.0.0/8"]).trusts_headers


_text = st.one_of(st.none(), st.text(max_size=80), st.from_regex(r"[0-9a-fA-F:.\[\]%, ;=\"]*"))


@pytest.mark.parametrize(
    "trusted", [0, 1, 3, ["10.0.0.0/8", "::/0", "unix"]], ids=["none", "one", "three", "cidrs"]
)
@given(peer=_text, xff=_text, fwd=_text)
def test_resolve_never_raises(trusted, peer, xff, fwd):
    """Arbitrary text in every input gives an address or None, never an exception."""
    for header in ("x-forwarded-for", "forwarded"):
        resolver = ClientIPResolver(trusted, header=header)
        ip = resolver.resolve(peer, xff, fwd)
        assert ip is None or ipaddress.ip_address(ip)
        key = resolver.client_key(ip)
        assert (key is None) == (ip is None)


@given(v4=st.ip_addresses(v=4))
def test_every_embedding_unwraps_to_the_same_ipv4(v4):
    """Mapped, translated, NAT64 and 6to4 forms of one IPv4 address resolve to it."""
    n = int(v4)
    forms = [
        ipaddress.IPv6Address((0xFFFF << 32) | n),
        ipaddress.IPv6Address((0xFFFF0000 << 32) | n),
        ipaddress.IPv6Address((0x64FF9B << 96) | n),
        ipaddress.IPv6Address((0x2002 << 112) | (n << 80) | 1),
    ]
    resolver = ClientIPResolver()
    assert {resolver.resolve(str(f)) for f in forms} == {str(v4)}


@given(ip=st.ip_addresses(v=6))
def test_v6_key_contains_the_address(ip):
    """The IPv6 client key is a network that contains the address it came from."""
    resolver = ClientIPResolver()
    ip_text = resolver.resolve(str(ip))
    key = resolver.client_key(ip_text)
    assert ip_text is not None and key is not None
    if ":" in key:
        assert ipaddress.ip_address(ip_text) in ipaddress.ip_network(key)
    else:
        assert key == ip_text


@given(peer=st.ip_addresses(), xff=_text, fwd=_text)
def test_no_trusted_proxies_ignores_headers(peer, xff, fwd):
    """Without trusted proxies, nothing in the headers changes the answer."""
    resolver = ClientIPResolver()
    assert resolver.resolve(str(peer), xff, fwd) == resolver.resolve(str(peer))


_TEN = ipaddress.ip_network("10.0.0.0/8")


def _outside_ten(ip):
    norm = ipaddress.ip_address(normalize_ip(str(ip)))
    return norm.version == 6 or norm not in _TEN


_outside = st.ip_addresses().filter(_outside_ten)
_proxies = st.lists(
    st.integers(0, 2**24 - 1).map(lambda n: str(ipaddress.IPv4Address((10 << 24) | n))),
    max_size=3,
)


@given(prefix=st.text(max_size=60), client=_outside, proxies=_proxies)
def test_client_written_prefix_never_matters_xff(prefix, client, proxies):
    """Whatever a client puts before the proxies' entries, the answer is its real address."""
    chain = ", ".join([prefix, str(client), *proxies])
    expected = normalize_ip(str(client))
    assert ClientIPResolver(len(proxies) + 1).resolve("10.0.0.254", chain) == expected
    assert ClientIPResolver(["10.0.0.0/8"]).resolve("10.0.0.254", chain) == expected


@given(prefix=st.text(max_size=60), client=_outside, proxies=_proxies)
def test_client_written_prefix_never_matters_forwarded(prefix, client, proxies):
    """Unbalanced quotes or junk before the proxies' Forwarded elements change nothing."""
    quoted = f'"[{client}]:443"' if client.version == 6 else str(client)
    chain = ", ".join([prefix, f"for={quoted};proto=https", *(f"for={p}" for p in proxies)])
    expected = normalize_ip(str(client))
    for trusted in (len(proxies) + 1, ["10.0.0.0/8"]):
        resolver = ClientIPResolver(trusted, header="forwarded")
        assert resolver.resolve("10.0.0.254", None, chain) == expected
