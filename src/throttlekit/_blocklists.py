"""Community blocklists: addresses and networks loaded from a file or a URL, refreshed
periodically and swapped atomically, used through the limiter's blocklist (or safelist)
hook::

    from throttlekit.blocklists import Blocklist

    limiter.blocklist("crowdsec", Blocklist(
        "http://127.0.0.1:8080/v1/decisions/stream",
        headers={"X-Api-Key": BOUNCER_KEY}, refresh=60))
    limiter.blocklist("spamhaus-drop", Blocklist("/etc/throttlekit/drop.txt", refresh=3600))

Formats (``format="auto"`` tells them apart by the content):

- ``"text"``: one address or network per line; ``#`` and ``;`` start comments; anything
  after the first word of a line is ignored (Spamhaus DROP, FireHOL, ipset dumps).
- ``"crowdsec"``: CrowdSec decisions as JSON: the LAPI ``/v1/decisions/stream`` answer
  (``{"new": [...], "deleted": [...]}``: from a ``.../decisions/stream`` URL the first
  request asks ``startup=true`` for every decision and later ones apply the changes), the
  LAPI ``/v1/decisions`` list, or ``cscli decisions list -o json`` (alerts holding
  ``decisions``). Only decisions of the ``types`` given (default ``ban``) on the ``Ip``
  and ``Range`` scopes are kept; countries and AS numbers are skipped.

Refreshing: no thread unless asked. A request that finds the list ``refresh`` seconds old
reloads it inline, one request at a time (the others keep the old list meanwhile, without
waiting): a file only when it changed (inode, times, size; then its content); a URL with a short
``timeout`` (default 2 s) and ``If-None-Match``/``If-Modified-Since``, so an unchanged list
costs a round trip. That one request can wait up to ``timeout`` plus the parsing (about
half a second of CPU per 100,000 entries). Pass ``thread=True`` to refresh in a daemon thread
instead, which nothing waits for: recommended under ASGI, where an inline fetch holds the
event loop. A failing load (unreachable, an HTTP error, bad JSON, a body where most lines
are not addresses, more than ``max_bytes``) keeps the last good list, is logged, and is
retried after ``retry`` seconds (default: the smaller of ``refresh`` and 30).

A lookup is an :class:`~throttlekit._ipset.IPSet` membership test: one dict lookup and a
bisect, the same for 100,000 entries as for 10 (``benchmarks/bench_ipset.py``).
"""

from __future__ import annotations

import codecs
import hashlib
import http.client
import logging
import os
import re
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._blocklist_parse import (
    FORMATS,
    LoadError,
    Network,
    checked,
    json_doc,
    json_entries,
    narrow,
    parse_list,
)
from ._errors import ConfigError
from ._ipset import IPSet

if TYPE_CHECKING:
    from ._request import RequestView

__all__ = ["FORMATS", "Blocklist", "LoadError", "parse_list"]

logger = logging.getLogger("throttlekit.blocklists")

#: how recent a file's modification time makes its stamp untrustworthy (coarse timestamps:
#: ext4 in ticks, FAT in 2 s)
_RACY_NS = 2_000_000_000


# -- sources ---------------------------------------------------------------------------------


class _FileSource:
    """A local file, reloaded when it changed: its inode, modification or change time, or
    size. A file whose modification time was within :data:`_RACY_NS` of the read (a
    file system's timestamps are that coarse, so a second write in the same tick keeps
    the stamp) is read again on the next load and compared by content, as git does."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.seen: tuple[int, int, int, int] | None = None
        self.racy = False
        self.digest = b""

    def __str__(self) -> str:
        return str(self.path)

    def read(self) -> str | None:
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
            if stamp == self.seen and not self.racy:
                return None
            if not stat.S_ISREG(st.st_mode):  # a FIFO's open() waits for a writer
                raise LoadError(f"{self.path} is not a regular file")
            # read at most max_bytes + 1, whatever the size says (a FIFO, /dev/zero, a
            # file still growing)
            with self.path.open("rb") as f:
                data = f.read(self.max_bytes + 1)
        except OSError as exc:
            raise LoadError(f"cannot read {self.path}: {exc}") from None
        if len(data) > self.max_bytes:
            raise LoadError(f"{self.path} is larger than max_bytes={self.max_bytes}")
        digest = hashlib.blake2b(data, digest_size=16).digest()
        unchanged = digest == self.digest  # touched, or rewritten with the same lines
        self.seen, self.digest = stamp, digest
        self.racy = time.time_ns() - st.st_mtime_ns < _RACY_NS
        return None if unchanged else data.decode("utf-8", errors="replace")

    def stream(self) -> bool:
        return False


class _HeadersStayHome(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but sends the list's own headers (a CrowdSec bouncer key) only
    to the origin (scheme, host, port) of the request redirected: urllib alone forwards
    every header to wherever a redirect points, over plain http too."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.names = frozenset(name.lower() for name in headers)

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and self.names and _origin(new.full_url) != _origin(req.full_url):
            for name in [n for n in new.headers if n.lower() in self.names]:
                del new.headers[name]
        return new


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or ""), parts.port or (443 if scheme == "https" else 80)


class _URLSource:
    """An http(s) URL, fetched with stdlib urllib, conditional on the last answer."""

    def __init__(self, url: str, headers: Mapping[str, str], timeout: float,
                 max_bytes: int) -> None:
        self.url = url
        self.headers = dict(headers)
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.validators: dict[str, str] = {}
        self.is_stream = urllib.parse.urlsplit(url).path.rstrip("/").endswith(
            "/decisions/stream")
        self.started = False  # a stream's full list (startup=true) was received
        self.opener = urllib.request.build_opener(_HeadersStayHome(self.headers))

    def __str__(self) -> str:
        return self.url

    def stream(self) -> bool:
        return self.is_stream

    def read(self) -> str | None:
        url = self.url
        headers = dict(self.headers)
        if self.is_stream and not self.started:
            url += ("&" if urllib.parse.urlsplit(url).query else "?") + "startup=true"
        elif not self.is_stream:
            headers.update(self.validators)
        request = urllib.request.Request(url, headers=headers)
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                body = self._body(response, time.monotonic() + self.timeout)
                charset: str = response.headers.get_content_charset() or "utf-8"
                self._remember(response.headers)
        except urllib.error.HTTPError as exc:
            if exc.code == 304:
                return None
            raise LoadError(f"{self.url} answered HTTP {exc.code}") from None
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # URLError, timeouts, resets, bad URLs; not HTTP, heads too long, bad chunks
            raise LoadError(f"cannot fetch {self.url}: {type(exc).__name__}: {exc}") from None
        try:
            codecs.lookup(charset)
        except LookupError:
            charset = "utf-8"  # an unknown charset: lists are ASCII
        return body.decode(charset, errors="replace")

    def _body(self, response: Any, deadline: float) -> bytes:
        """The body, read a socket read at a time until ``deadline`` (a server dripping
        bytes, each within the socket timeout, cannot hold the fetch for longer), at most
        ``max_bytes``, and whole (one shorter than its Content-Length is refused)."""
        parts: list[bytes] = []
        size = 0
        limit = self.max_bytes
        while True:
            chunk: bytes = response.read1(65536)
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                raise LoadError(f"{self.url} sent more than max_bytes={limit}")
            if time.monotonic() > deadline:
                raise LoadError(f"{self.url} took more than timeout={self.timeout:g} "
                                f"seconds to send its body")
        if response.length:  # what Content-Length announced and was never sent
            raise LoadError(f"{self.url} cut its body short ({size} bytes received, "
                            f"{response.length} more announced)")
        return b"".join(parts)

    def _remember(self, headers: Any) -> None:
        self.validators = {}
        if headers.get("ETag"):
            self.validators["If-None-Match"] = headers["ETag"]
        if headers.get("Last-Modified"):
            self.validators["If-Modified-Since"] = headers["Last-Modified"]


# -- the blocklist ---------------------------------------------------------------------------


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 < value < float("inf")):
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _min_prefix(value: object) -> tuple[int, int]:
    if (isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(x, int) and not isinstance(x, bool) for x in value)
            and 0 <= value[0] <= 32 and 0 <= value[1] <= 128):
        return value[0], value[1]
    raise ConfigError(f"min_prefix must be (IPv4 prefix 0-32, IPv6 prefix 0-128), such as "
                      f"(8, 32), got {value!r}")


def _types(types: object) -> tuple[str, ...]:
    if isinstance(types, str) or not isinstance(types, Iterable):
        raise ConfigError(f"types must be a list of decision types, got {types!r}")
    found = tuple(types)
    if not found or not all(isinstance(t, str) and t for t in found):
        raise ConfigError(f"types must be a non-empty list of decision types (strings "
                          f"such as 'ban'), got {types!r}")
    return found


def _headers(headers: object) -> dict[str, str]:
    """``headers`` checked: names that are HTTP tokens, Latin-1 values without line
    breaks (urllib refuses others only when fetching, so a bad one would leave the list
    empty for good)."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise ConfigError(f"headers must be a mapping of header names to values, "
                          f"got {headers!r}")
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ConfigError(f"headers: {name!r} is not a header name (letters, digits "
                              f"and -_.!#$%&'*+^`|~)")
        if not isinstance(value, str):
            raise ConfigError(f"headers: {name!r}: the value must be a string, got "
                              f"{type(value).__name__}")
        bad = _unsendable(value)
        if bad is not None:  # the value is not shown: it is often a secret (an API key)
            raise ConfigError(f"headers: {name!r}: the value has {bad}, which a header "
                              f"cannot carry (a Latin-1 value without line breaks)")
    return dict(headers)


#: an HTTP header name (RFC 9110 token)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _unsendable(value: str) -> str | None:
    """What in a header value urllib cannot send (None: nothing), said without the value."""
    for i, c in enumerate(value):
        if c in "\r\n\0":
            return f"a line break or NUL at character {i + 1}"
        if ord(c) > 0xFF:
            return f"a character outside Latin-1 at character {i + 1}"
    return None


class Blocklist:
    """Addresses and networks from a file or an http(s) URL, refreshed periodically.

    Args:
        source: a file path, or an ``http://`` / ``https://`` URL.
        refresh: seconds between reloads (default 300).
        format: ``"auto"`` (default), ``"text"`` or ``"crowdsec"`` (module docstring).
        timeout: seconds a URL fetch may take (default 2).
        headers: HTTP headers of a URL fetch (CrowdSec's LAPI: ``{"X-Api-Key": key}``).
        thread: refresh in a daemon thread instead of inline on requests.
        retry: seconds before a failed load is tried again (default
            ``min(refresh, 30)``).
        types: CrowdSec decision types kept (default ``("ban",)``).
        max_bytes: the largest body or file accepted (default 64 MiB).
        min_prefix: the widest network an entry may cover, as prefix lengths ``(IPv4,
            IPv6)``; wider entries are skipped and logged (default ``(8, 32)``: a feed
            holding ``0.0.0.0/0`` blocks nobody; ``(0, 0)`` keeps every entry).
        clock: monotonic seconds (for tests).

    Raises:
        ConfigError: a bad argument, or a file that cannot be read or parsed at start (a
            URL that fails at start is logged, the list starts empty and is retried).

    Use it as a rule predicate, ``limiter.blocklist(name, bl)`` (or ``safelist``), or ask
    ``ip in bl``. Thread-safe: a reload builds a new set and swaps it in one assignment.
    """

    __slots__ = ("_clock", "_due", "_entries", "_lock", "_set", "_source", "_stop",
                 "_thread", "failures", "format", "last_error", "loaded_at", "min_prefix",
                 "refresh", "retry", "types")

    def __init__(
        self,
        source: str | os.PathLike[str],
        *,
        refresh: float = 300.0,
        format: str = "auto",
        timeout: float = 2.0,
        headers: Mapping[str, str] | None = None,
        thread: bool = False,
        retry: float | None = None,
        types: Iterable[str] = ("ban",),
        max_bytes: int = 64 * 1024 * 1024,
        min_prefix: tuple[int, int] = (8, 32),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_prefix = _min_prefix(min_prefix)
        self.refresh = _positive("refresh", refresh)
        self.retry = min(self.refresh, 30.0) if retry is None else _positive("retry", retry)
        if format not in FORMATS:
            raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        self.format = format
        self.types = _types(types)
        if not callable(clock):
            raise ConfigError(f"clock must be a callable returning seconds, got {clock!r}")
        self._clock = clock
        self._lock = threading.Lock()
        self._set = IPSet(())
        self._entries: dict[Network, None] = {}  # a CrowdSec stream's current decisions
        self.loaded_at: float | None = None
        self.failures = 0
        self.last_error: str | None = None
        self._source = self._make_source(source, _positive("timeout", timeout), headers,
                                         max_bytes)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._due = 0.0
        if not self.reload() and isinstance(self._source, _FileSource):
            raise ConfigError(f"blocklist {source}: {self.last_error}")
        if thread:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"throttlekit-blocklist {self._source}")
            self._thread.start()

    @staticmethod
    def _make_source(source: object, timeout: float, headers: Mapping[str, str] | None,
                     max_bytes: int) -> _FileSource | _URLSource:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ConfigError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        if isinstance(source, str) and source.lower().startswith(("http://", "https://")):
            return _URLSource(source, _headers(headers), timeout, max_bytes)
        if headers:
            raise ConfigError(f"headers are for URLs, not the file {source!r}")
        if not isinstance(source, (str, os.PathLike)) or not str(source):
            raise ConfigError(f"a blocklist source is a file path or an http(s) URL, "
                              f"got {source!r}")
        return _FileSource(Path(source), max_bytes)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Blocklist:
        """A blocklist fetched from ``url`` (http or https); the options of the class."""
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            raise ConfigError(f"from_url takes an http(s) URL, got {url!r}")
        return cls(url, **options)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **options: Any) -> Blocklist:
        """A blocklist read from the file ``path``; the options of the class."""
        if isinstance(path, str) and path.lower().startswith(("http://", "https://")):
            raise ConfigError(f"from_file takes a file path, got the URL {path!r}")
        return cls(path, **options)

    # -- lookups (the request path) ------------------------------------------------------

    def __call__(self, view: RequestView) -> bool:
        """Whether the request's client IP is listed (a rule predicate); reloads first
        when the list is due and no other request is reloading it."""
        if self._clock() >= self._due and self._thread is None:
            self._refresh_inline()
        return view.client_ip in self._set

    def __contains__(self, ip: object) -> bool:
        """``ip`` (a string or an ``ipaddress`` address) is listed; reloads first when due,
        as a request does."""
        if self._clock() >= self._due and self._thread is None:
            self._refresh_inline()
        return ip in self._set

    def __len__(self) -> int:
        return len(self._set)

    def __repr__(self) -> str:
        return f"<Blocklist {self._source} entries={len(self._set)}>"

    @property
    def ipset(self) -> IPSet:
        """The list in force."""
        return self._set

    # -- reloading -------------------------------------------------------------------------

    def _refresh_inline(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another request is reloading: use the list in force
        try:
            if self._clock() >= self._due:
                ok = self._load()
                self._due = self._clock() + (self.refresh if ok else self.retry)
        finally:
            self._lock.release()

    def reload(self) -> bool:
        """Load the source now (waiting for a reload in progress); False when it failed,
        the last good list then stays (``last_error`` says why)."""
        with self._lock:
            ok = self._load()
            self._due = self._clock() + (self.refresh if ok else self.retry)
            return ok

    def _load(self) -> bool:
        source = self._source
        try:
            text = source.read()
            if text is None:  # unchanged (file stamp, HTTP 304)
                self.loaded_at = self._clock()
                return True
            if source.stream():
                self._set = self._apply_stream(text)
            else:
                self._set = IPSet.from_parsed(parse_list(
                    text, self.format, self.types, str(source), self.min_prefix))
        except Exception as exc:  # a load never fails a request
            self.failures += 1
            self.last_error = str(exc) if isinstance(exc, LoadError) else (
                f"{type(exc).__name__}: {exc}")
            if isinstance(source, _URLSource):
                # a stream's delta may be lost (the LAPI counts it as pulled): ask for
                # the whole list again
                source.started = False
            logger.warning("blocklist %s not reloaded, keeping the last good "
                           "list (%d entries): %s", source, len(self._set), self.last_error)
            return False
        self.loaded_at = self._clock()
        self.last_error = None
        return True

    def _apply_stream(self, text: str) -> IPSet:
        """A CrowdSec LAPI stream answer applied: the full list at startup, then changes."""
        source = self._source
        assert isinstance(source, _URLSource)
        doc = json_doc(text, str(source))
        if not isinstance(doc, dict):
            raise LoadError(f"{source}: expected the stream's {{\"new\", \"deleted\"}} object")
        types = frozenset(t.lower() for t in self.types)
        entries = {} if not source.started else dict(self._entries)
        for net in checked(json_entries(doc.get("deleted"), types), str(source)):
            entries.pop(net, None)
        new = checked(json_entries(doc.get("new"), types), str(source))
        for net in narrow(new, self.min_prefix, str(source)):
            entries[net] = None
        self._entries = entries
        source.started = True
        return IPSet.from_parsed(entries)

    def _run(self) -> None:
        while not self._stop.wait(max(0.0, self._due - self._clock())):
            self.reload()

    def close(self) -> None:
        """Stop the refresh thread (``thread=True``); the list in force stays."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
