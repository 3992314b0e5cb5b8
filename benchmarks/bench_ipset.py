"""IPSet lookup cost: 10,000- and 100,000-network sets against a 10-network one.

Run for real with ``pytest benchmarks/bench_ipset.py --benchmark-enable --benchmark-only``
(CI runs it as a smoke pass with ``--benchmark-disable``). The networks mix every prefix
length from /16 to /32 (IPv4) and /32 to /128 (IPv6), like real blocklists, and barely
overlap, so they stay about as many disjoint intervals after merging; the looked-up
addresses are random (mostly misses).

``test_reload_cost`` prints what parsing and building a 100,000-address list costs (a
Blocklist reload). ``test_size_ratio`` is the target of community blocklists
(docs/rules.md): a lookup in 100,000 entries does the same work as one in 10 (a bucket, a
bisect over a few bounds) and costs at most 2x its CPU time (what is left is cache misses:
10 entries stay in the L1 cache, 100,000 do not), at most 5 µs. Same mix of probes for
both (5 random addresses, mostly misses, to 1 inside the set), interleaved rounds in one
run, the best of each. Both print their figures and ``test_size_ratio`` asserts the ratio
only when benchmarks are enabled (a smoke pass times nothing). Run them alone with
``python -m pytest benchmarks/bench_ipset.py -k "ratio or reload" -o addopts="" -s``.
"""

from __future__ import annotations

import ipaddress
import random
import time

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


def _cpu_per_lookup(sets: dict[str, tuple[IPSet, list[str]]], rounds: int) -> dict[str, float]:
    """Microseconds of CPU per lookup in each set of its probes, the best of ``rounds``
    interleaved runs (a busy machine's other processes do not count)."""
    best = dict.fromkeys(sets, float("inf"))
    for _ in range(rounds):
        for name, (ipset, probes) in sets.items():
            began = time.process_time()
            for ip in probes:
                ip in ipset  # noqa: B015 (the lookup is what is timed)
            best[name] = min(best[name], (time.process_time() - began) / len(probes) * 1e6)
    return best


def _probes(rng: random.Random, networks: list[str], version: int) -> list[str]:
    """5,000 random addresses (mostly misses) and 1,000 addresses inside ``networks``
    (hits: blocked clients), shuffled; the same mix for every set size."""
    hits = [str(ipaddress.ip_network(rng.choice(networks))[0]) for _ in range(1000)]
    probes = [a for _ in range(5) for a in _addresses(rng, version)] + hits
    rng.shuffle(probes)
    return probes


@pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])
def test_size_ratio(request, version):
    """A lookup in 100,000 networks costs at most 2x one in 10 networks (same run)."""
    enabled = not request.config.getoption("benchmark_disable", False)
    rng = random.Random(6)
    sets = {}
    for name, size in (("10", 10), ("100k", 100_000 if enabled else 2_000)):
        networks = _networks(rng, size, version)
        sets[name] = (IPSet(networks), _probes(rng, networks, version))
    us = _cpu_per_lookup(sets, 9 if enabled else 1)
    ratio = us["100k"] / us["10"]
    print(f"\nIPv{version} lookup: {us['10']:.2f} µs in 10 networks, {us['100k']:.2f} µs in "
          f"{len(sets['100k'][0]):,} networks: ratio {ratio:.2f} (target <= 2, <= 5 µs)")
    if enabled:
        assert ratio <= 2.0


def test_reload_cost(request):
    """CPU to parse and build a 100,000-address list, as a Blocklist reload does, as text
    and as CrowdSec JSON (printed; the docs quote it)."""
    import json
    import statistics

    from throttlekit.blocklists import parse_list

    enabled = not request.config.getoption("benchmark_disable", False)
    n = 100_000 if enabled else 2_000
    rng = random.Random(7)
    hosts = [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(n)]
    docs = {"text": "\n".join(hosts), "crowdsec": json.dumps(
        {"new": [{"value": h, "scope": "Ip", "type": "ban"} for h in hosts]})}
    for name, doc in docs.items():
        runs = []
        for _ in range(5 if enabled else 1):
            began = time.process_time()
            ipset = IPSet.from_parsed(parse_list(doc))
            runs.append(time.process_time() - began)
        assert len(ipset) == len(set(hosts))
        print(f"\n{name}: {n:,} addresses parsed and built in "
              f"{statistics.median(runs):.2f} s CPU (median of {len(runs)})")
