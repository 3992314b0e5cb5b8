"""IPSet's fast parser (inet_pton for canonical forms) accepts and refuses exactly what
``ipaddress.ip_network(strict=True)`` does, with the same network."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profiles import examples
from throttlekit import ConfigError
from throttlekit._ipset import IPSet, parse_network

_v4 = st.integers(0, 2**32 - 1).map(lambda v: str(ipaddress.IPv4Address(v)))
_v6 = st.integers(0, 2**128 - 1).map(lambda v: str(ipaddress.IPv6Address(v)))
_v6_long = st.integers(0, 2**128 - 1).map(lambda v: ipaddress.IPv6Address(v).exploded)
_prefix = st.one_of(st.integers(0, 129).map(str), st.sampled_from(["", "08", "-1", "a",
                                                                     "255.0.0.0", " 8"]))
_text = st.one_of(
    st.tuples(st.one_of(_v4, _v6, _v6_long), st.sampled_from(["", "/"]), _prefix).map(
        lambda t: f"{t[0]}{t[1]}{t[2] if t[1] else ''}"),
    st.text("0123456789abcdef.:/ ", max_size=24),
)


def _reference(text: str) -> tuple[int, int, int] | None:
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError:
        return None
    return net.version, int(net.network_address), net.prefixlen


@settings(max_examples=examples(600), deadline=None)
@given(_text)
def test_parse_network_agrees_with_ipaddress(text):
    """Same result, or a ConfigError exactly where ipaddress refuses."""
    expected = _reference(text)
    if expected is None:
        with pytest.raises(ConfigError):
            parse_network(text)
    else:
        assert parse_network(text) == expected


@settings(max_examples=examples(100), deadline=None)
@given(st.lists(st.one_of(_v4, _v6), max_size=20), st.one_of(_v4, _v6))
def test_from_parsed_is_the_set_of_the_strings(entries, probe):
    """IPSet.from_parsed(parsed entries) answers as IPSet(entries)."""
    a = IPSet(entries)
    b = IPSet.from_parsed(parse_network(e) for e in entries)
    assert (probe in a) == (probe in b)
    assert list(a) == list(b) and len(a) == len(b)


def _v6_net(addr: int, prefix: int) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network((addr >> (128 - prefix) << (128 - prefix), prefix))


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**128 - 1), st.integers(1, 128)), max_size=25),
       st.lists(st.integers(0, 2**128 - 1), max_size=10), st.data())
def test_ipv6_buckets_match_a_linear_scan(raw, probes, data):
    """IPv6 membership, with networks inside one /32, spanning a few (split into
    buckets) or hundreds (the wide list), equals a linear scan; probes include every
    network's edges."""
    from throttlekit._ipset import embedded_ipv4

    nets = [_v6_net(a, p) for a, p in raw]
    ipset = IPSet(nets)
    edges = [v for n in nets for v in (int(n.network_address) - 1, int(n.network_address),
                                       int(n.broadcast_address), int(n.broadcast_address) + 1)]
    for value in [*probes, *edges]:
        if not 0 <= value < 2**128:
            continue
        ip = ipaddress.IPv6Address(value)
        if embedded_ipv4(value) is not None:
            continue  # matched through its IPv4 address: tests/test_ipset.py
        assert (ip in ipset) == any(ip in n for n in nets), (ip, nets)


@pytest.fixture
def flat_always(monkeypatch):
    import throttlekit._ipset as mod

    monkeypatch.setattr(mod, "_FLAT_FROM", 1)


@settings(max_examples=examples(120), deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), min_size=1,
                max_size=25),
       st.lists(st.integers(0, 2**32 - 1), max_size=10))
def test_flat_layout_matches_a_linear_scan(flat_always, raw, probes):
    """The flat IPv4 layout (big lists) answers as a linear scan, for addresses, the
    edges of every network and their IPv4-mapped IPv6 forms."""
    from throttlekit._ipset import _FlatIPSet

    nets = [ipaddress.IPv4Network((a >> (32 - p) << (32 - p), p)) for a, p in raw]
    ipset = IPSet([str(n) for n in nets])
    assert type(ipset) is _FlatIPSet
    edges = [v for n in nets for v in (int(n.network_address) - 1, int(n.network_address),
                                       int(n.broadcast_address), int(n.broadcast_address) + 1)]
    for value in [*probes, *edges]:
        if not 0 <= value < 2**32:
            continue
        ip = ipaddress.IPv4Address(value)
        expected = any(ip in n for n in nets)
        assert (str(ip) in ipset) == expected
        assert (f"::ffff:{ip}" in ipset) == expected
        assert (ip in ipset) == expected


def test_big_lists_are_flat_and_small_ones_are_not():
    """A list spread over 1,024 or more /16s takes the flat layout; a short one keeps the
    dict (no 256 KiB of offsets for ten entries)."""
    from throttlekit._ipset import _FlatIPSet

    big = IPSet(f"{a}.{b}.0.1" for a in range(1, 9) for b in range(128))
    assert type(big) is _FlatIPSet and len(big) == 1024
    assert "5.77.0.1" in big and "5.77.0.2" not in big and "9.0.0.1" not in big
    assert type(IPSet(["192.0.2.0/24"])) is IPSet
