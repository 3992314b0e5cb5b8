"""IPSet: static CIDR sets with lookups by prefix length, checked against brute force."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from throttlekit import ConfigError
from throttlekit._ipset import IPSet, embedded_ipv4, ip_to_int


@pytest.mark.parametrize(
    ("entries", "ip", "inside"),
    [
        pytest.param(["203.0.113.0/24"], "203.0.113.255", True, id="v4-in-net"),
        pytest.param(["203.0.113.0/24"], "203.0.114.0", False, id="v4-next-net"),
        pytest.param(["192.0.2.7"], "192.0.2.7", True, id="v4-single"),
        pytest.param(["192.0.2.7"], "192.0.2.8", False, id="v4-single-miss"),
        pytest.param(["0.0.0.0/0"], "8.8.8.8", True, id="v4-everything"),
        pytest.param(["0.0.0.0/0"], "2001:db8::1", False, id="v4-all-not-v6"),
        pytest.param(["2001:db8::/32"], "2001:db8:ffff::1", True, id="v6-in-net"),
        pytest.param(["2001:db8::/32"], "2001:db9::1", False, id="v6-miss"),
        pytest.param(["::/0"], "::1", True, id="v6-everything"),
        pytest.param(["2001:db8::/32"], "2001:db8::1%eth0", True, id="v6-zone-ignored"),
        pytest.param(["203.0.113.0/24"], "::ffff:203.0.113.9", True, id="mapped-matches-v4"),
        pytest.param(["203.0.113.0/24"], "64:ff9b::203.0.113.9", True, id="nat64-matches-v4"),
        pytest.param(["203.0.113.0/24"], "2002:cb00:7109::1", True, id="6to4-matches-v4"),
        pytest.param(["2002::/16"], "2002:cb00:7109::1", True, id="6to4-raw-form-too"),
        pytest.param(["::ffff:10.0.0.0/104"], "10.1.2.3", True, id="mapped-entry-is-v4"),
        pytest.param(["10.0.0.0/8"], ipaddress.ip_address("10.9.9.9"), True, id="address-obj"),
        pytest.param(["10.0.0.0/8"], "10.0.0.1 ", False, id="whitespace-is-garbage"),
        pytest.param(["10.0.0.0/8"], "010.0.0.1", False, id="leading-zero-is-garbage"),
        pytest.param(["10.0.0.0/8"], "", False, id="empty"),
        pytest.param(["10.0.0.0/8"], None, False, id="none"),
        pytest.param(["10.0.0.0/8"], 167772161, False, id="int-not-accepted"),
        pytest.param(["10.0.0.0/8"], "10.0.0.1\x00", False, id="nul"),
        pytest.param(["10.0.0.0/8"], "\uff11\uff10.0.0.1", False, id="fullwidth-digits"),
        pytest.param([], "10.0.0.1", False, id="empty-set"),
    ],
)
def test_membership(entries, ip, inside):
    """Addresses are in the set exactly when a listed network contains them."""
    assert (ip in IPSet(entries)) is inside


@pytest.mark.parametrize(
    "entry",
    ["10.0.0.0/33", "10.0.0.1/8", "not-an-ip", "", "2001:db8::/129", 42, b"10.0.0.0/8"],
    ids=["prefix-33", "host-bits", "word", "empty", "prefix-129", "int", "bytes"],
)
def test_bad_entries_are_config_errors(entry):
    """A bad entry raises ConfigError naming it."""
    with pytest.raises(ConfigError, match="invalid IP address or network"):
        IPSet(["192.0.2.0/24", entry])


def test_a_bare_string_is_refused():
    """IPSet("10.0.0.0/8") is a mistake (it would iterate characters): ConfigError."""
    with pytest.raises(ConfigError, match="list"):
        IPSet("10.0.0.0/8")  # type: ignore[arg-type]


def test_len_iter_repr_and_dedup():
    """Duplicates collapse; len, iteration and repr describe the networks."""
    s = IPSet(["10.0.0.0/8", "10.0.0.0/8", " 192.0.2.1 ", ipaddress.ip_network("2001:db8::/32")])
    assert len(s) == 3 and bool(s)
    assert [str(n) for n in s] == ["10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32"]
    assert "10.0.0.0/8" in repr(s)
    assert not IPSet([])


def test_embedded_ipv4():
    """Only the recognised embeddings yield an IPv4 address."""
    v4 = int(ipaddress.IPv4Address("192.0.2.1"))
    assert embedded_ipv4(int(ipaddress.IPv6Address("::ffff:192.0.2.1"))) == v4
    assert embedded_ipv4(int(ipaddress.IPv6Address("::1"))) is None
    assert embedded_ipv4(int(ipaddress.IPv6Address("2001:db8::1"))) is None


def test_ip_to_int():
    """Strings and address objects convert; anything else is None."""
    assert ip_to_int("10.0.0.1") == (4, 0x0A000001)
    assert ip_to_int(ipaddress.ip_address("::1")) == (6, 1)
    assert ip_to_int("[::1]") is None and ip_to_int(object()) is None


def _networks(version):
    bits = 32 if version == 4 else 128
    return st.builds(
        lambda addr, prefix: ipaddress.ip_network((int(addr), prefix), strict=False),
        st.ip_addresses(v=version),
        st.integers(min_value=0 if version == 4 else 1, max_value=bits),
    )


def _near(nets, version):
    """Addresses biased to land inside or at the edges of the generated networks."""
    if not nets:
        return st.ip_addresses(v=version)
    edge = st.sampled_from(nets).flatmap(
        lambda n: st.sampled_from(
            [
                int(n.network_address),
                int(n.broadcast_address),
                int(n.broadcast_address) + 1,
                int(n.network_address) - 1,
            ]
        )
    )
    bits = 32 if version == 4 else 128
    return st.one_of(
        st.ip_addresses(v=version),
        edge.filter(lambda v: 0 <= v < 2**bits).map(
            ipaddress.ip_address if version == 4 else ipaddress.IPv6Address
        ),
    )


@pytest.mark.parametrize("version", [4, 6])
@given(data=st.data())
def test_matches_brute_force(version, data):
    """Membership equals a linear scan over the networks, for random sets and addresses."""
    nets = data.draw(st.lists(_networks(version), max_size=30))
    if version == 6:
        # keep the IPv6 side free of embedded-IPv4 forms, checked separately
        nets = [
            n for n in nets if embedded_ipv4(int(n.network_address)) is None and n.prefixlen >= 32
        ]
    ipset = IPSet([str(n) for n in nets])
    for _ in range(20):
        ip = data.draw(_near(nets, version))
        if version == 6 and embedded_ipv4(int(ip)) is not None:
            continue
        expected = any(ip in n for n in nets)
        assert (str(ip) in ipset) is expected
        assert (ip in ipset) is expected


@given(
    nets=st.lists(_networks(4), max_size=20),
    v4=st.ip_addresses(v=4),
)
def test_embedded_forms_match_like_their_ipv4(nets, v4):
    """The mapped, NAT64 and 6to4 forms of an IPv4 address match exactly when it does."""
    ipset = IPSet(nets)
    expected = v4 in ipset
    n = int(v4)
    for form in ((0xFFFF << 32) | n, (0x64FF9B << 96) | n, (0x2002 << 112) | (n << 80)):
        assert (str(ipaddress.IPv6Address(form)) in ipset) is expected
