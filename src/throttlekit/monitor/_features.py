"""What a request looks like beyond its address: the value of each dimension, once.

==============  ==============================================================================
dimension       value
==============  ==============================================================================
``path``        the request path (no query string), at most :data:`MAX_VALUE` characters
``user_agent``  the User-Agent header, ``""`` when there is none, cut at :data:`MAX_VALUE`
``fingerprint`` 8 hex digits: a BLAKE2 hash of the header names in the order the client sent
                them (so whether it sends cookies) and its Accept-Language
``net24``       the client's IPv4 /24 (``"198.51.100.0/24"``) or IPv6 /56; None without an IP
``net16``       the client's IPv4 /16 or IPv6 /48; None without an IP
==============  ==============================================================================

Per request: a few dict lookups and one tuple of the header names; the hash and the
networks are computed once per distinct header shape and client key and cached (each
cache bounded, cleared when full). No regex.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Hashable
from operator import itemgetter
from typing import Any, TypeVar

from .._headers import header_pairs

__all__ = ["DIMENSIONS", "MAX_VALUE", "Features", "headers_of", "no_headers", "path_of"]

#: the request dimensions the monitor counts beside the client key, narrowest network first
DIMENSIONS = ("path", "user_agent", "fingerprint", "net24", "net16")
#: characters kept of a path or user agent (memory per counted value stays bounded)
MAX_VALUE = 256
#: entries of each cache before it is cleared
CACHE_SIZE = 8192

_NO_NETWORK: tuple[str | None, str | None] = (None, None)
_name_of = itemgetter(0)
_SKIPPED = frozenset({b"content-type", b"content-length"})
_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


def _remember(cache: dict[_K, _V], key: _K, value: _V) -> _V:
    """``cache[key] = value``, the cache cleared first when full; returns ``value``."""
    if len(cache) >= CACHE_SIZE:
        cache.clear()
    cache[key] = value
    return value


def path_of(view: Any) -> str:
    """``view.path`` cut at :data:`MAX_VALUE`; a WSGI path in ASCII read as it is (the
    view's decoding would give it back unchanged); ``"/"`` for a malformed request."""
    try:
        path = view.raw.get("PATH_INFO") if view.is_wsgi else None
        if path.__class__ is not str or not path or not path.isascii():
            path = view.path
        return path if len(path) <= MAX_VALUE else path[:MAX_VALUE]
    except Exception:  # a malformed request is counted, never breaks the monitor
        return "/"


def headers_of(view: Any) -> Any:
    """What :meth:`Features.values` reads of ``view``'s headers, as they are now: the
    monitor counts a request's values later, after the app may have changed its environ
    or scope in place (None: read the view then)."""
    try:
        raw = view.raw
        if view.is_wsgi:
            return raw.copy()  # (copied in C, no allocation per entry)
        view.headers  # noqa: B018 - parsed now and kept by the view
        headers = raw.get("headers")
        return list(headers) if headers.__class__ is list else headers
    except Exception:  # a malformed request is counted, never breaks the monitor
        return None


#: what :func:`no_headers` takes: the request's headers are not read
UNREAD = object()


def no_headers(view: Any) -> object:
    """:func:`headers_of` for dimensions that read no header: nothing copied."""
    return UNREAD


def _fingerprint(names: list[str], language: str | None) -> str:
    text = ",".join(names) + "|" + (language or "")
    return hashlib.blake2b(text.encode("latin-1", "replace"), digest_size=4).hexdigest()


def _networks(key: str) -> tuple[str | None, str | None]:
    """(/24, /16) of an IPv4 client key; (/56, /48) of an IPv6 one."""
    if ":" not in key:
        i = key.rfind(".")
        j = key.rfind(".", 0, i)
        if j < 0:
            return _NO_NETWORK
        return f"{key[:i]}.0/24", f"{key[:j]}.0.0/16"
    try:
        net = ipaddress.ip_network(key, strict=False)
    except ValueError:
        return _NO_NETWORK
    return (str(net.supernet(new_prefix=min(56, net.prefixlen))),
            str(net.supernet(new_prefix=min(48, net.prefixlen))))


class Features:
    """Computes the dimensions' values of a request view (``values``) or one of them
    (``value``), with the caches that keep it cheap."""

    __slots__ = ("_networks", "_shapes")

    def __init__(self) -> None:
        #: (header-name tuple, Accept-Language) -> fingerprint
        self._shapes: dict[tuple[Hashable, ...], str] = {}
        #: client key -> (net24, net16)
        self._networks: dict[str, tuple[str | None, str | None]] = {}

    def values(self, view: Any, headers: Any = None) -> tuple[str | None, ...]:
        """The value of each of :data:`DIMENSIONS` for ``view``, in that order; its
        headers as :func:`headers_of` took them (None: as they are now)."""
        path = path_of(view)
        try:  # a malformed request is counted, never breaks the monitor: each part alone
            ua, fingerprint = self._headers(view, headers) if headers is not UNREAD else ("", "-")
        except Exception:
            ua, fingerprint = "", "-"
        try:
            nets = self.networks(view.client_key)
        except Exception:
            nets = _NO_NETWORK
        return (path, ua, fingerprint, nets[0], nets[1])

    def value(self, dimension: str, view: Any) -> str | None:
        """The value of one dimension for ``view`` (what the shield's rule reads)."""
        if dimension == "path":
            return path_of(view)
        if dimension == "net24":
            return self.networks(view.client_key)[0]
        if dimension == "net16":
            return self.networks(view.client_key)[1]
        ua, fingerprint = self._headers(view)
        return ua if dimension == "user_agent" else fingerprint

    def cached(self) -> int:
        """Entries held by the caches (at most 2 * CACHE_SIZE)."""
        return len(self._shapes) + len(self._networks)

    def networks(self, key: str | None) -> tuple[str | None, str | None]:
        """(net24, net16) of a client key; (None, None) without one."""
        if key is None:
            return _NO_NETWORK
        nets = self._networks.get(key)
        if nets is None:
            nets = _remember(self._networks, key, _networks(key))
        return nets

    def _headers(self, view: Any, taken: Any = None) -> tuple[str, str]:
        """(user agent, fingerprint) of a view, its headers as ``taken`` by
        :func:`headers_of` (None: the view's now)."""
        raw = view.raw
        if view.is_wsgi:
            if taken is not None:
                raw = taken
            ua = raw.get("HTTP_USER_AGENT")
            language = raw.get("HTTP_ACCEPT_LANGUAGE")
            shape: tuple[Hashable, ...] = (*raw, language)
        else:
            headers = view.headers
            ua = headers.get("user-agent")
            language = headers.get("accept-language")
            pairs = raw.get("headers") if taken is None else taken
            try:
                shape = (*map(_name_of, pairs or ()), language)
            except Exception:  # not a list of pairs: the names of those that are
                shape = (*[name for name, _value in header_pairs(pairs)], language)
        fingerprint = self._shapes.get(shape)
        if fingerprint is None:
            fingerprint = self._learn_shape(shape, view.is_wsgi)
        if ua.__class__ is not str:
            ua = ""
        elif len(ua) > MAX_VALUE:
            ua = ua[:MAX_VALUE]
        return ua, fingerprint

    def _learn_shape(self, shape: tuple[Hashable, ...], wsgi: bool) -> str:
        *keys, language = shape
        if wsgi:
            names = [k[5:].replace("_", "-").lower() for k in keys
                     if k.__class__ is str and k.startswith("HTTP_")]
        else:
            names = [bytes(k).decode("latin-1").lower() for k in keys
                     if isinstance(k, (bytes, bytearray)) and bytes(k).lower() not in _SKIPPED]
        fingerprint = _fingerprint(names, language if isinstance(language, str) else None)
        return _remember(self._shapes, shape, fingerprint)
