"""Who is the client? The socket peer, or a forwarded address vouched for by trusted proxies.

``X-Forwarded-For`` and ``Forwarded`` are written by whoever sends the request, so only the
entries appended by proxies you run can be believed. Proxies *append* the address they saw,
so the chain is read from the right:

- ``trusted_proxies=0`` (default): the socket peer; forwarding headers are ignored.
- ``trusted_proxies=N``: N proxies sit in front of the app (werkzeug ``ProxyFix(x_for=N)``):
  the N-th entry from the right is the client. A chain with fewer than N entries is not
  believed at all: the peer is the client.
- ``trusted_proxies=["10.0.0.0/8", ...]``: the peer and the chain are walked from the
  right, skipping trusted addresses; the first untrusted one is the client. ``"unix"``
  in the list trusts a peer that is not an IP address (a Unix socket).

The leftmost entry is never taken on faith. IPv6 forms that embed an IPv4 address
(``::ffff:a.b.c.d``, NAT64, 6to4, Teredo, ...) are turned into that IPv4 address before
anything else, and IPv6 clients are keyed by their /64 network by default (one host
usually owns a whole /64 and can rotate through it at will).

>>> r = ClientIPResolver(trusted_proxies=1)
>>> r.resolve("10.0.0.2", "6.6.6.6, 203.0.113.9")
'203.0.113.9'
>>> ClientIPResolver().resolve("::ffff:198.51.100.4", "6.6.6.6")
'198.51.100.4'
>>> r.client_key("2001:db8:1:2:aaaa::1")
'2001:db8:1:2::/64'
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from ._errors import ConfigError
from ._ipset import IPSet, embedded_ipv4

__all__ = ["ClientIPResolver", "normalize_ip"]

#: Entries of a forwarded chain examined at most in CIDR mode; a longer run of trusted
#: addresses is cut short there (its last address is the answer).
MAX_HOPS = 64
_MAX_LEN = 64  # longest address text worth parsing ("[v6%zone]:port" fits)
_CACHE_SIZE = 4096

_IPv4Address = ipaddress.IPv4Address
_IPv6Address = ipaddress.IPv6Address
_cache: dict[str, str | None] = {}


def normalize_ip(text: object) -> str | None:
    """One address as written in ``REMOTE_ADDR`` or a forwarded chain, normalised.

    Accepts surrounding whitespace and quotes, ``[v6]``, ``[v6]:port``, ``v4:port`` and
    ``v6%zone``; returns the canonical text of the address, with embedded IPv4 forms
    unwrapped to the IPv4 address, or None for anything else (``unknown``, ``_hidden``,
    garbage). Never raises.
    """
    if not isinstance(text, str):
        return None
    cached = _cache.get(text, False)
    if cached is not False:
        return cached  # type: ignore[return-value]
    result = _normalize(text)
    if len(_cache) >= _CACHE_SIZE:
        _cache.clear()
    _cache[text] = result
    return result


def _normalize(text: str) -> str | None:
    s = text.strip()
    if len(s) > _MAX_LEN:
        return None
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        s = s[1:-1].strip()
    if not s:
        return None
    if s[0] == "[":
        end = s.find("]")
        if end < 0:
            return None
        rest = s[end + 1 :]
        if rest and not (rest[0] == ":" and (rest[1:].isdigit() or rest[1:] == "")):
            return None
        s = s[1:end]
    elif s.count(":") == 1:
        s = s.partition(":")[0]  # "v4:port"
    if "%" in s:
        s = s.partition("%")[0]  # IPv6 zone id: meaningless off the host
    if not s.isascii():
        return None
    try:
        if ":" in s:
            value = int(_IPv6Address(s))
            v4 = embedded_ipv4(value)
            return str(_IPv4Address(v4)) if v4 is not None else str(_IPv6Address(value))
        return str(_IPv4Address(s))
    except ValueError:
        return None


def _forwarded_for(value: str) -> list[str | None]:
    """The ``for=`` value of each element of a ``Forwarded`` header (None where absent).

    Split on every comma and semicolon, quotes or not: addresses never contain them, and
    a quote-aware split would let a client's unbalanced ``"`` swallow the elements the
    proxies appended after it.
    """
    out: list[str | None] = []
    for element in value.split(","):
        found = None
        for pair in element.split(";"):
            name, sep, val = pair.partition("=")
            if sep and name.strip().lower() == "for":
                found = val
                break
        out.append(found)
    return out


class ClientIPResolver:
    """Finds the client address of a request, believing forwarding headers only as far as
    ``trusted_proxies`` allows.

    Args:
        trusted_proxies: ``0`` (default) uses the socket peer only; a positive int is the
            number of proxies in front of the app (``ProxyFix`` semantics); a sequence of
            addresses/CIDRs (plus optionally ``"unix"``) lists the trusted proxies.
        ipv6_prefix: IPv6 clients are keyed by this network prefix (default 64).
        header: which chain the proxies write: ``"x-forwarded-for"`` (default) or
            ``"forwarded"`` (RFC 7239). Only that one is read: a header your proxies do not
            write is entirely client-controlled.

    Raises:
        ConfigError: ``trusted_proxies`` negative, a bool, or holding a bad CIDR;
            ``ipv6_prefix`` outside 1..128; an unknown ``header``.

    Thread-safe; ``resolve`` and ``client_key`` never raise.
    """

    __slots__ = (
        "_hops",
        "_keys",
        "_mask",
        "_trust_unix",
        "_trusted",
        "header",
        "ipv6_prefix",
        "peers",
        "plain",
    )

    def __init__(
        self,
        trusted_proxies: int | Sequence[str] = 0,
        ipv6_prefix: int = 64,
        *,
        header: str = "x-forwarded-for",
    ) -> None:
        self._hops = 0
        self._trusted: IPSet | None = None
        self._trust_unix = False
        if isinstance(trusted_proxies, bool):
            raise ConfigError(
                f"trusted_proxies must be a hop count or a list of CIDRs, got {trusted_proxies!r}"
            )
        if isinstance(trusted_proxies, int):
            if trusted_proxies < 0:
                raise ConfigError(f"trusted_proxies must be >= 0, got {trusted_proxies!r}")
            self._hops = trusted_proxies
        elif isinstance(trusted_proxies, (str, bytes)):
            raise ConfigError(
                f"trusted_proxies must be a list of CIDRs, not a single string: {trusted_proxies!r}"
            )
        elif isinstance(trusted_proxies, Sequence) or hasattr(trusted_proxies, "__iter__"):
            entries = list(trusted_proxies)
            self._trust_unix = "unix" in entries
            self._trusted = IPSet([e for e in entries if e != "unix"])
        else:
            raise ConfigError(
                f"trusted_proxies must be a hop count or a list of CIDRs, got {trusted_proxies!r}"
            )
        if (
            isinstance(ipv6_prefix, bool)
            or not isinstance(ipv6_prefix, int)
            or not 1 <= ipv6_prefix <= 128
        ):
            raise ConfigError(f"ipv6_prefix must be an integer in 1..128, got {ipv6_prefix!r}")
        if header not in ("x-forwarded-for", "forwarded"):
            raise ConfigError(f"header must be 'x-forwarded-for' or 'forwarded', got {header!r}")
        self.header = header
        self.ipv6_prefix = ipv6_prefix
        self._mask = ((1 << 128) - 1) ^ ((1 << (128 - ipv6_prefix)) - 1)
        self._keys: dict[str, str | None] = {}
        #: forwarding headers are never read: the client is a function of the peer alone
        self.plain = not self.trusts_headers
        #: peer text -> (client_ip, client_key), for ``plain`` resolvers
        self.peers: dict[str, tuple[str | None, str | None]] = {}

    @property
    def trusts_headers(self) -> bool:
        """Whether forwarding headers are read at all (callers can skip fetching them)."""
        return self._hops > 0 or self._trusted is not None

    def __repr__(self) -> str:
        trusted: object = self._hops if self._trusted is None else [str(n) for n in self._trusted]
        if self._trust_unix and isinstance(trusted, list):
            trusted.append("unix")
        return (
            f"ClientIPResolver(trusted_proxies={trusted!r}, ipv6_prefix={self.ipv6_prefix}, "
            f"header={self.header!r})"
        )

    def resolve(
        self, peer: str | None, x_forwarded_for: str | None = None, forwarded: str | None = None
    ) -> str | None:
        """The normalised client address, or None when nothing parseable is known."""
        try:
            return self._resolve(peer, x_forwarded_for, forwarded)
        except Exception:  # pragma: no cover - defence in depth: a request must not crash
            return None

    def _resolve(self, peer: str | None, xff: str | None, fwd: str | None) -> str | None:
        peer_ip = normalize_ip(peer)
        if self._hops == 0 and self._trusted is None:
            return peer_ip
        chain = fwd if self.header == "forwarded" else xff
        if not chain or not isinstance(chain, str):
            return peer_ip
        trusted = self._trusted
        if trusted is None:
            hops = self._hops
            if self.header == "forwarded":
                entries: list[str | None] = _forwarded_for(chain)
            else:
                entries = chain.rsplit(",", hops)  # type: ignore[assignment]
            if len(entries) < hops:
                return peer_ip  # fewer entries than proxies: the chain is not ours
            # The entry the outermost trusted proxy wrote; if it wrote garbage, the
            # nearest usable hop to its right, so the request still has a key.
            for entry in entries[-hops:]:
                ip = normalize_ip(entry)
                if ip is not None:
                    return ip
            return peer_ip
        if peer_ip is None:
            if not self._trust_unix:
                return None  # no usable peer and none trusted: nothing to believe
        elif peer_ip not in trusted:
            return peer_ip
        items = _forwarded_for(chain) if self.header == "forwarded" else chain.split(",")
        last = peer_ip
        for entry in reversed(items[-MAX_HOPS:]):
            ip = normalize_ip(entry)
            if ip is None:
                return last  # a trusted proxy wrote garbage: it is the client we know
            if ip not in trusted:
                return ip
            last = ip
        return last

    def peer_client(self, peer: str) -> tuple[str | None, str | None]:
        """``(client_ip, client_key)`` of a request from ``peer`` when no forwarding
        header is believed (``trusted_proxies=0``); cached, as servers see few peers."""
        ip = self.resolve(peer)
        pair = (ip, ip if ip is None or ":" not in ip else self.client_key(ip))
        peers = self.peers
        if len(peers) >= _CACHE_SIZE:
            peers.clear()
        peers[peer] = pair
        return pair

    def client_key(self, ip: str | None) -> str | None:
        """The default throttle key of a client address: the IPv4 address itself, or the
        IPv6 network of ``ipv6_prefix`` bits (``"2001:db8:1:2::/64"``); None when ``ip``
        is not an address."""
        if not ip or not isinstance(ip, str):
            return None
        if ":" not in ip:
            return normalize_ip(ip)
        keys = self._keys
        key = keys.get(ip, False)
        if key is not False:
            return key  # type: ignore[return-value]
        norm = normalize_ip(ip)
        if norm is None or ":" not in norm:
            key = norm
        else:
            net = int(_IPv6Address(norm)) & self._mask
            key = f"{_IPv6Address(net)}/{self.ipv6_prefix}"
        if len(keys) >= _CACHE_SIZE:
            keys.clear()
        keys[ip] = key
        return key
