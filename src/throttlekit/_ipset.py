"""A static set of IP addresses and networks with size-independent lookups.

The networks are merged into disjoint, sorted address intervals, then split by their top
bits into a dict, IPv4 by /16 and IPv6 by /32: a lookup is one dict lookup plus a
``bisect`` (in C) over the few intervals inside that bucket, so 100,000 CIDRs cost about
what 10 do, whatever their prefix lengths (``benchmarks/bench_ipset.py``). IPv6 intervals
wider than 256 /32s (rare: a /24 or shorter) stay in one sorted list, bisected after the
bucket. (A table per prefix length costs one set lookup per length present, up to 33 for
IPv4 and 129 for IPv6, and measured slower on real, mixed-length lists.)

>>> blocked = IPSet(["203.0.113.0/24", "2001:db8::/32", "192.0.2.7"])
>>> "203.0.113.9" in blocked, "2001:db8:1::1" in blocked, "192.0.2.8" in blocked
(True, True, False)
>>> "::ffff:203.0.113.9" in blocked  # IPv4-mapped IPv6 matches its IPv4 address
True
"""

from __future__ import annotations

import ipaddress
import socket
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from typing import TypeAlias

from ._errors import ConfigError

__all__ = ["IPSet", "embedded_ipv4", "ip_to_int", "parse_network"]

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


def _intervals(networks: list[tuple[int, int]], bits: int) -> tuple[list[int], list[int]]:
    """Sorted, disjoint, non-adjacent ``[start, end]`` intervals covering the networks
    (given sorted)."""
    starts: list[int] = []
    ends: list[int] = []
    for value, prefix in networks:
        last = value | ((1 << (bits - prefix)) - 1)
        if ends and value <= ends[-1] + 1:
            if last > ends[-1]:
                ends[-1] = last
        else:
            starts.append(value)
            ends.append(last)
    return starts, ends


_Bucket = tuple[list[int], list[int]]
#: from this many IPv4 /16 buckets on, a set lays them out flat (:class:`_FlatIPSet`):
#: 256 KiB of offsets, worth it only for big lists
_FLAT_FROM = 1024
_V6_SHIFT = 96  # IPv6 buckets are /32s
_LOW96 = (1 << _V6_SHIFT) - 1
#: an IPv6 interval over more /32s than this stays in the "wide" list (bisected) rather
#: than being copied into each of its buckets
_V6_MAX_SPAN = 256


def _buckets(starts: list[int], ends: list[int], shift: int, max_span: int
             ) -> tuple[dict[int, _Bucket], list[int], list[int]]:
    """Intervals split by their top bits (``value >> shift``: a /16 for IPv4, a /32 for
    IPv6) into a dict of buckets of offsets inside the bucket; intervals spanning
    ``max_span`` buckets or more are returned apart, as "wide" ``(starts, ends)``.

    A lookup is one dict lookup and a bisect over the few intervals inside one bucket, so
    its cost does not grow with the set. A bucket covered whole shares one object.
    """
    low_mask = (1 << shift) - 1
    full: _Bucket = ([0], [low_mask])
    buckets: dict[int, _Bucket] = {}
    wide_starts: list[int] = []
    wide_ends: list[int] = []
    get = buckets.get
    for start, end in zip(starts, ends, strict=True):
        first = start >> shift
        last = end >> shift
        if first == last and (start & low_mask or end & low_mask != low_mask):
            # the usual interval (a host, a small network): inside one bucket, not all of it
            part = get(first)
            if part is None:
                part = buckets[first] = ([], [])
            part[0].append(start & low_mask)
            part[1].append(end & low_mask)
            continue
        if last - first >= max_span:
            wide_starts.append(start)
            wide_ends.append(end)
            continue
        for b in range(first, last + 1):
            lo = max(start - (b << shift), 0)
            hi = min(end - (b << shift), low_mask)
            if lo == 0 and hi == low_mask:
                buckets[b] = full
            else:
                part = buckets.setdefault(b, ([], []))
                part[0].append(lo)
                part[1].append(hi)
    return buckets, wide_starts, wide_ends


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

    __slots__ = ("_pairs", "_v4", "_v4_bounds", "_v4_count", "_v4_offsets", "_v6",
                 "_v6_wide_ends", "_v6_wide_starts")

    def __init__(self, entries: Iterable[str | IPAddress | IPNetwork]) -> None:
        if isinstance(entries, (str, bytes)):
            raise ConfigError(f"IPSet takes a list of addresses or networks, got {entries!r}")
        self._build(map(parse_network, entries))

    @classmethod
    def from_parsed(cls, networks: Iterable[tuple[int, int, int]]) -> IPSet:
        """A set of ``(version, address, prefix)`` networks as :func:`parse_network`
        returns them (a list parsed, and checked, once)."""
        ipset = cls.__new__(cls)
        cls._build(ipset, networks)
        return ipset

    def _build(self, networks: Iterable[tuple[int, int, int]]) -> None:
        v4: set[tuple[int, int]] = set()
        v6: set[tuple[int, int]] = set()
        for version, addr, prefix in networks:
            if version == 6:
                if addr >> 32 == _MAPPED_HI and prefix >= 96:
                    v4.add((addr & _V4_MASK, prefix - 96))
                else:
                    v6.add((addr, prefix))
            else:
                v4.add((addr, prefix))
        sorted4, sorted6 = sorted(v4), sorted(v6)
        # every IPv4 interval spans fewer than 2**16 + 1 /16s: none is wide
        self._v4 = _buckets(*_intervals(sorted4, 32), 16, (1 << 16) + 1)[0]
        self._v4_count = len(self._v4)
        if self._v4_count >= _FLAT_FROM:
            self._flatten()
        self._v6, self._v6_wide_starts, self._v6_wide_ends = _buckets(
            *_intervals(sorted6, 128), _V6_SHIFT, _V6_MAX_SPAN)
        # the networks as given (deduplicated), made ipaddress objects only when iterated
        # (building 100,000 of them costs more than the whole set); IPv4 in two arrays,
        # a tenth of the memory of a list of tuples
        self._pairs = (array("I", [a for a, _ in sorted4]), array("B", [p for _, p in sorted4]),
                       sorted6)

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
                return self._has_v6(value)
        return self._has_v4(value)  # (the flat layout's own, in a large set)

    def _has_v4(self, value: int) -> bool:
        bucket = self._v4.get(value >> 16)
        if bucket is None:
            return False
        low = value & 0xFFFF
        i = bisect_right(bucket[0], low) - 1
        return i >= 0 and low <= bucket[1][i]

    def _has_v6(self, value: int) -> bool:
        bucket = self._v6.get(value >> _V6_SHIFT)
        if bucket is not None:
            low = value & _LOW96
            i = bisect_right(bucket[0], low) - 1
            if i >= 0 and low <= bucket[1][i]:
                return True
        wide = self._v6_wide_starts
        if wide:
            i = bisect_right(wide, value) - 1
            if i >= 0 and value <= self._v6_wide_ends[i]:
                return True
        # an embedded IPv4 address (mapped, NAT64, 6to4, Teredo) is looked up as IPv4
        v4 = embedded_ipv4(value) if self._v4_count else None
        return v4 is not None and self._has_v4(v4)

    def _flatten(self) -> None:
        """Become a :class:`_FlatIPSet`: the /16 buckets laid out in two arrays."""
        offsets = array("I", bytes(4 * 65537))
        bounds = array("I")
        v4 = self._v4
        for b in range(65536):
            offsets[b] = len(bounds)
            bucket = v4.get(b)
            if bucket is not None:
                for lo, hi in zip(bucket[0], bucket[1], strict=True):
                    bounds.append(lo)
                    bounds.append(hi + 1)
        offsets[65536] = len(bounds)
        self._v4_offsets = offsets
        self._v4_bounds = bounds
        self._v4 = {}
        self.__class__ = _FlatIPSet

    def __len__(self) -> int:
        return len(self._pairs[0]) + len(self._pairs[2])

    def __iter__(self) -> Iterator[IPNetwork]:
        addrs, prefixes, v6 = self._pairs
        for addr, prefix in zip(addrs, prefixes, strict=True):
            yield ipaddress.IPv4Network((addr, prefix))
        for addr, prefix in v6:
            yield ipaddress.IPv6Network((addr, prefix))

    def __bool__(self) -> bool:
        return bool(self._pairs[0] or self._pairs[2])

    def __repr__(self) -> str:
        shown = ", ".join(repr(str(n)) for n, _ in zip(self, range(5), strict=False))
        more = f", ... ({len(self)} networks)" if len(self) > 5 else ""
        return f"IPSet([{shown}{more}])"


class _FlatIPSet(IPSet):
    """An IPSet with many IPv4 /16s (:data:`_FLAT_FROM` or more), laid out flat: for each
    /16, ``offsets[b]:offsets[b + 1]`` is its slice of ``bounds``, the sorted starts and
    ends (exclusive) of its intervals, so an address is inside one when an odd number of
    bounds are at or below it. Two contiguous arrays instead of a dict of lists of
    ints: a lookup touches a few cache lines, which is what keeps a 100,000-entry list as
    fast as a small one (``benchmarks/bench_ipset.py``)."""

    __slots__ = ()

    def _has_v4(self, value: int) -> bool:
        b = value >> 16
        lo = self._v4_offsets[b]
        hi = self._v4_offsets[b + 1]
        return lo != hi and (bisect_right(self._v4_bounds, value & 0xFFFF, lo, hi) - lo) & 1 == 1


def parse_network(entry: object) -> tuple[int, int, int]:
    """``(version, network address as an int, prefix length)`` of an address or CIDR
    string or an ``ipaddress`` address or network object.

    The canonical forms (``"192.0.2.0/24"``, ``"2001:db8::1"``) are read with
    ``inet_pton``, about twenty times faster than ``ipaddress``, which reads the rest
    (netmasks, ``/255.0.0.0``) with the same rules. Host bits must be zero.

    Raises:
        ConfigError: not an address or network; the message names the entry.
    """
    if isinstance(entry, str):
        text = entry.strip()
        addr, slash, prefix_text = text.partition("/")
        try:
            if ":" in addr:
                bits, value = 128, _from_bytes(_inet_pton(_AF_INET6, addr), "big")
            else:
                bits, value = 32, _from_bytes(_inet_pton(_AF_INET, addr), "big")
        except (OSError, ValueError):
            return _parse_slow(entry, text)
        if not slash:
            return (4 if bits == 32 else 6), value, bits
        if prefix_text.isdigit() and prefix_text.isascii() and (
                prefix_text == "0" or prefix_text[0] != "0"):
            prefix = int(prefix_text)
            if prefix <= bits and not value & ((1 << (bits - prefix)) - 1):
                return (4 if bits == 32 else 6), value, prefix
        return _parse_slow(entry, text)
    if isinstance(entry, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return entry.version, int(entry.network_address), entry.prefixlen
    if isinstance(entry, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return entry.version, int(entry), entry.max_prefixlen
    raise ConfigError(f"invalid IP address or network {entry!r}: expected a string")


def _parse_slow(entry: object, text: str) -> tuple[int, int, int]:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ConfigError(f"invalid IP address or network {entry!r}: {exc}") from None
    return net.version, int(net.network_address), net.prefixlen


def _parse_network(entry: object) -> IPNetwork:
    """:func:`parse_network` as an ``ipaddress`` network object (admin commands)."""
    version, value, prefix = parse_network(entry)
    if version == 4:
        return ipaddress.IPv4Network((value, prefix))
    return ipaddress.IPv6Network((value, prefix))
