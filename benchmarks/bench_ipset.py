"""IPSet lookup cost: a 10,000-network set against a 10-network one.

Run for real with ``pytest benchmarks/bench_ipset.py --benchmark-only`` (CI runs it as a smoke
pass with ``--benchmark-disable``). The networks mix every prefix length from /16 to /32 (IPv4)
and /32 to /128 (IPv6), like real blocklists, and barely overlap, so the 10,000 stay about
10,000 disjoint intervals after merging; the looked-up addresses are random (mostly misses).
"""

from __future__ import annotations

import ipaddress
import random

import pytest

from throttlekit._ipset import IPSet

SIZES = [10, 10_000]


def _networks(rng: random.Random, n: int, version: int) -> list[str]:
    bits, low = (32, 16) if version == 4 else (128, 32)
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    out: set[str] = set()
    while len(out) < n:
        prefix = rng.randint(low, bits)
        value = rng.getrandbits(bits) >> (bits - prefix) << (bits - prefix)
        out.add(str(cls((value, prefix))))
    return sorted(out)


def _addresses(rng: random.Random, version: int) -> list[str]:
    bits = 32 if version == 4 else 128
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    return [str(cls(rng.getrandbits(bits))) for _ in range(1000)]


@pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("size", SIZES, ids=[f"{n}-networks" for n in SIZES])
def test_lookup(benchmark, size, version):
    """1,000 lookups of random addresses in a set of `size` mixed-length networks."""
    rng = random.Random(4)
    ipset = IPSet(_networks(rng, size, version))
    assert len(ipset) == size
    addresses = _addresses(rng, version)

    def lookups() -> int:
        return sum(1 for ip in addresses if ip in ipset)

    found = benchmark(lookups)
    assert 0 <= found <= len(addresses)


@pytest.mark.parametrize("size", SIZES, ids=[f"{n}-networks" for n in SIZES])
def test_hit(benchmark, size):
    """1,000 lookups of an address inside the set (a blocked client)."""
    rng = random.Random(5)
    networks = _networks(rng, size, 4)
    ipset = IPSet(networks)
    inside = str(ipaddress.ip_network(networks[len(networks) // 2])[0])
    assert inside in ipset

    def lookups() -> int:
        return sum(1 for _ in range(1000) if inside in ipset)

    assert benchmark(lookups) == 1000
