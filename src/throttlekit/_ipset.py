"""A static set of IP addresses and networks with size-independent lookups.

The networks are merged into disjoint, sorted address intervals. IPv4 intervals are then
split by /16 into a dict: a lookup is one dict lookup plus a ``bisect`` (in C) over the few
intervals inside that /16, so 10,000 CIDRs cost what 10 do, whatever their prefix lengths.
IPv6 keeps one sorted interval list: one ``bisect``, O(log n) with a tiny constant. (A
table per prefix length costs one set lookup per length present, up to 33 for IPv4 and 129
for IPv6, and measured slower on real, mixed-length lists.)

>>> blocked = IPSet(["203.0.113.0/24", "2001:db8::/32", "192.0.2.7"])
>>> "203.0.113.9" in blocked, "2001:db8:1::1" in blocked, "192.0.2.8" in blocked
(True, True, False)
>>> "::ffff:203.0.113.9" in blocked  # IPv4-mapped IPv6 matches its IPv4 address
True
"""

from __future__ import annotations

import ipaddress
import socket
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from typing import TypeAlias

from ._errors import ConfigError

__all__ = ["IPSet", "embedded_ipv4", "ip_to_int"]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_inet_pton = socket.inet_pton
_from_bytes = int.from_bytes

_V4_MASK = 0xFFFFFFFF
_NAT64_HI = 0x0064_FF9B_0000_0000_0000_0000  # 64:ff9b::/96, upper 96 bits
_TRANSLATED_HI = 0xFFFF_0000  # ::ffff:0:0/96 (SIIT), upper 96 bits
_MAPPED_HI = 0xFFFF  # ::ffff:0:0/96, upper 96 bits
_6TO4 = 0x2002  # 2002::/16, upper 16 bits
_TEREDO = 0x2001_0000  # 2001::/32, upper 32 bits


def embedded_ipv4(value: int) -> int | None:
    """The IPv4 address (as an int) embedded in an IPv6 address ``value``, or None.

    Recognised: IPv4-mapped ``::ffff:a.b.c.d``, IPv4-translated ``::ffff:0:a.b.c.d``,
    IPv4-compatible ``::a.b.c.d`` (``a`` not 0, so not ``::1``), NAT64 ``64:ff9b::a.b.c.d``,
    6to4 ``2002:AABB:CCDD::/48`` and Teredo ``2001:0::/32`` (the obfuscated client address).
    Each of these is one IPv4 host, so it must be counted as that host.
    """
    hi = value >> 32
    if hi in (_MAPPED_HI, _TRANSLATED_HI, _NAT64_HI):
        return value & _V4_MASK
    if hi == 0:
        # IPv4-compatible; a zero first octet (``::``, ``::1``, ...) is not an IPv4 host
        return value if value >> 24 else None
    if value >> 112 == _6TO4:
        return (value >> 80) & _V4_MASK
    if value >> 96 == _TEREDO:
        return ~value & _V4_MASK
    return None


def ip_to_int(ip: object) -> tuple[int, int] | None:
    """``(version, integer)`` of an address string or ``ipaddress`` object, or None.

    Strict (no ports, brackets or whitespace; a zone id ``%eth0`` is dropped) and never
    raises. Embedded IPv4 forms are *not* unwrapped here.
    """
    if isinstance(ip, str):
        try:
            if ":" not in ip:
                return 4, _from_bytes(_inet_pton(_AF_INET, ip), "big")
            pct = ip.find("%")
            if pct >= 0:
                ip = ip[:pct]
            return 6, _from_bytes(_inet_pton(_AF_INET6, ip), "big")
        except (OSError, ValueError):
            return None
    if isinstance(ip, ipaddress.IPv4Address):
        return 4, int(ip)
    if isinstance(ip, ipaddress.IPv6Address):
        return 6, int(ip)
    return None


def _intervals(networks: Iterable[tuple[int, int]], bits: int) -> tuple[list[int], list[int]]:
    """Sorted, disjoint, non-adjacent ``[start, end]`` intervals covering the networks."""
    starts: list[int] = []
    ends: list[int] = []
    for value, prefix in sorted(networks):
        last = value | ((1 << (bits - prefix)) - 1)
        if ends and value <= ends[-1] + 1:
            if last > ends[-1]:
                ends[-1] = last
        else:
            starts.append(value)
            ends.append(last)
    return starts, ends


_Bucket = tuple[list[int], list[int]]
_FULL: _Bucket = ([0], [0xFFFF])  # shared by every /16 covered whole


def _v4_buckets(starts: list[int], ends: list[int]) -> dict[int, _Bucket]:
    """IPv4 intervals split by /16, as offsets inside the /16.

    A lookup is one dict lookup and a bisect over the few intervals inside one /16, so its
    cost does not grow with the set. Size is bounded: at most 65,536 buckets, and a /16
    covered whole shares one object.
    """
    buckets: dict[int, _Bucket] = {}
    for start, end in zip(starts, ends, strict=True):
        for b in range(start >> 16, (end >> 16) + 1):
            lo = max(start - (b << 16), 0)
            hi = min(end - (b << 16), 0xFFFF)
            if lo == 0 and hi == 0xFFFF:
                buckets[b] = _FULL
            else:
                part = buckets.setdefault(b, ([], []))
                part[0].append(lo)
                part[1].append(hi)
    return buckets


class IPSet:
    """An immutable set of IPv4/IPv6 addresses and CIDR networks.

    Args:
        entries: address or CIDR strings (``"10.0.0.0/8"``, ``"2001:db8::/32"``,
            ``"192.0.2.1"``) or ``ipaddress`` address/network objects. Host bits must be
            zero (``"10.1.2.3/8"`` is refused as ambiguous). IPv4-mapped networks
            (``::ffff:10.0.0.0/104``) are stored as their IPv4 network.

    Raises:
        ConfigError: an entry is not an address or network; the message names it.

    ``ip in ipset`` takes a string or an ``ipaddress`` address, is thread-safe, never
    raises (anything unparsable is simply not in the set), and matches an IPv6 address
    whose embedded IPv4 address (mapped, NAT64, 6to4, Teredo, ...) is in the set.
    """

    __slots__ = ("_networks", "_v4", "_v6_ends", "_v6_starts")

    def __init__(self, entries: Iterable[str | IPAddress | IPNetwork]) -> None:
        if isinstance(entries, (str, bytes)):
            raise ConfigError(f"IPSet takes a list of addresses or networks, got {entries!r}")
        v4: set[tuple[int, int]] = set()
        v6: set[tuple[int, int]] = set()
        for entry in entries:
            net = _parse_network(entry)
            if isinstance(net, ipaddress.IPv6Network):
                addr = int(net.network_address)
                if addr >> 32 == _MAPPED_HI and net.prefixlen >= 96:
                    v4.add((addr & _V4_MASK, net.prefixlen - 96))
                else:
                    v6.add((addr, net.prefixlen))
            else:
                v4.add((int(net.network_address), net.prefixlen))
        self._v4 = _v4_buckets(*_intervals(v4, 32))
        self._v6_starts, self._v6_ends = _intervals(v6, 128)
        self._networks: tuple[IPNetwork, ...] = tuple(
            [ipaddress.IPv4Network((a, p)) for a, p in sorted(v4)]
            + [ipaddress.IPv6Network((a, p)) for a, p in sorted(v6)]
        )

    def __contains__(self, ip: object) -> bool:
        if type(ip) is str and ":" not in ip:  # the common case: no ip_to_int call
            try:
                value = _from_bytes(_inet_pton(_AF_INET, ip), "big")
            except (OSError, ValueError):
                return False
        else:
            parsed = ip_to_int(ip)
            if parsed is None:
                return False
            version, value = parsed
            if version == 6:
                i = bisect_right(self._v6_starts, value) - 1
                if i >= 0 and value <= self._v6_ends[i]:
                    return True
                # an embedded IPv4 address is looked up as IPv4 (below)
                v4 = embedded_ipv4(value) if self._v4 else None
                if v4 is None:
                    return False
                value = v4
        bucket = self._v4.get(value >> 16)
        if bucket is None:
            return False
        low = value & 0xFFFF
        i = bisect_right(bucket[0], low) - 1
        return i >= 0 and low <= bucket[1][i]

    def __len__(self) -> int:
        return len(self._networks)

    def __iter__(self) -> Iterator[IPNetwork]:
        return iter(self._networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __repr__(self) -> str:
        shown = ", ".join(repr(str(n)) for n in self._networks[:5])
        more = f", ... ({len(self._networks)} networks)" if len(self._networks) > 5 else ""
        return f"IPSet([{shown}{more}])"


def _parse_network(entry: object) -> IPNetwork:
    if isinstance(entry, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return entry
    if isinstance(entry, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return ipaddress.ip_network(int(entry) if entry.version == 4 else entry.packed)
    if not isinstance(entry, str):
        raise ConfigError(f"invalid IP address or network {entry!r}: expected a string")
    text = entry.strip()
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ConfigError(f"invalid IP address or network {entry!r}: {exc}") from None
