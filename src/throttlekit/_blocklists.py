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
waiting): a file only when its modification time or size changed; a URL with a short
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
import http.client
import json
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

from ._errors import ConfigError
from ._ipset import IPSet, parse_network

if TYPE_CHECKING:
    from ._request import RequestView

__all__ = ["FORMATS", "Blocklist", "LoadError", "parse_list"]

logger = logging.getLogger("throttlekit.blocklists")

FORMATS = ("auto", "text", "crowdsec")
_SCOPES = frozenset({"ip", "range"})
Network = tuple[int, int, int]
#: the byte order mark some editors (Notepad) write at the start of a UTF-8 file
_BOM = "\ufeff"


class LoadError(Exception):
    """A list could not be loaded (the last good one stays)."""


# -- parsing ---------------------------------------------------------------------------------


def _text_entries(text: str) -> tuple[list[Network], int, str | None]:
    """Networks of a plain list, how many lines were not addresses, and the first one."""
    out: list[Network] = []
    bad = 0
    first_bad: str | None = None
    for line in text.splitlines():
        cut = min((i for i in (line.find("#"), line.find(";")) if i >= 0), default=len(line))
        words = line[:cut].split(None, 1)
        if not words:
            continue
        try:
            out.append(parse_network(words[0]))
        except ConfigError:
            bad += 1
            first_bad = first_bad or words[0][:80]
    return out, bad, first_bad


def _decisions(doc: Any) -> Iterable[Any]:
    """The decision objects of a CrowdSec document (a list of decisions, of alerts, or
    ``null``)."""
    if doc is None:
        return
    if not isinstance(doc, list):
        raise LoadError(f"expected a JSON list of decisions or alerts, got {type(doc).__name__}")
    for item in doc:
        if isinstance(item, dict) and "decisions" in item and "value" not in item:
            found = item.get("decisions") or []  # an alert (cscli decisions list -o json)
            if not isinstance(found, list):
                raise LoadError(f"an alert's decisions are not a list: {found!r:.80}")
            yield from found
        else:
            yield item


def _decision_value(decision: Any, types: frozenset[str]) -> str | None:
    """The address or range a ban decision covers, None for other decisions."""
    if not isinstance(decision, dict):
        raise LoadError(f"expected a decision object, got {decision!r:.80}")
    if str(decision.get("type", "ban")).lower() not in types:
        return None
    if str(decision.get("scope", "ip")).lower() not in _SCOPES:
        return None
    value = decision.get("value")
    if not isinstance(value, str):
        raise LoadError(f"a decision without a value: {decision!r:.80}")
    return value


def _json_entries(doc: Any, types: frozenset[str]) -> tuple[list[Network], int, str | None]:
    out: list[Network] = []
    bad = 0
    first_bad: str | None = None
    for decision in _decisions(doc):
        value = _decision_value(decision, types)
        if value is None:
            continue
        try:
            out.append(parse_network(value))
        except ConfigError:
            bad += 1
            first_bad = first_bad or value[:80]
    return out, bad, first_bad


def _checked(found: tuple[list[Network], int, str | None], what: str) -> list[Network]:
    entries, bad, first_bad = found
    if bad and bad >= len(entries):
        raise LoadError(f"{bad} of {bad + len(entries)} entries of {what} are not addresses "
                        f"or networks (first: {first_bad!r}): not a blocklist?")
    if bad:
        logger.warning("skipped %d entries of %s that are not addresses or "
                       "networks (first: %r)", bad, what, first_bad)
    return entries


def _sniff(text: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    head = text.lstrip()[:1]
    return "crowdsec" if head in ("[", "{") or text.strip() == "null" else "text"


def _json(text: str, what: str) -> Any:
    """``text`` parsed as JSON; :class:`LoadError` when it is not JSON, or nested too deep
    for the parser (a hostile ``[[[[...]]]]`` raises RecursionError, not ValueError)."""
    try:
        return json.loads(text.removeprefix(_BOM))
    except (ValueError, RecursionError) as exc:
        raise LoadError(f"{what} is not JSON: {exc}") from None


def _listed(doc: dict[str, Any], name: str) -> list[Any]:
    """``doc[name]``, a list of decisions (absent or null: none)."""
    found = doc.get(name) or []
    if not isinstance(found, list):
        raise LoadError(f"{name!r} is not a list of decisions: {found!r:.80}")
    return found


def parse_list(text: str, fmt: str = "auto", types: Iterable[str] = ("ban",),
               what: str = "the list") -> list[Network]:
    """The networks of a blocklist document (see the module docstring for the formats)
    as ``(version, address, prefix)``; :class:`LoadError` when it is not one."""
    text = text.removeprefix(_BOM)  # an editor's byte order mark is no part of the list
    kind = _sniff(text, fmt)
    if kind == "text":
        return _checked(_text_entries(text), what)
    doc = _json(text, what)
    if isinstance(doc, dict):
        doc = [*_listed(doc, "new"), *_listed(doc, "decisions")]
    return _checked(_json_entries(doc, frozenset(t.lower() for t in types)), what)


# -- sources ---------------------------------------------------------------------------------


class _FileSource:
    """A local file, reloaded when its modification time or size changes."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.seen: tuple[int, int] | None = None

    def __str__(self) -> str:
        return str(self.path)

    def read(self) -> str | None:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self.seen:
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
        self.seen = stamp
        return data.decode("utf-8", errors="replace")

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
        clock: monotonic seconds (for tests).

    Raises:
        ConfigError: a bad argument, or a file that cannot be read or parsed at start (a
            URL that fails at start is logged, the list starts empty and is retried).

    Use it as a rule predicate, ``limiter.blocklist(name, bl)`` (or ``safelist``), or ask
    ``ip in bl``. Thread-safe: a reload builds a new set and swaps it in one assignment.
    """

    __slots__ = ("_clock", "_due", "_entries", "_lock", "_set", "_source", "_stop",
                 "_thread", "failures", "format", "last_error", "loaded_at", "refresh",
                 "retry", "types")

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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
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
                self._set = IPSet.from_parsed(
                    parse_list(text, self.format, self.types, str(source)))
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
        doc = _json(text, str(source))
        if not isinstance(doc, dict):
            raise LoadError(f"{source}: expected the stream's {{\"new\", \"deleted\"}} object")
        types = frozenset(t.lower() for t in self.types)
        entries = {} if not source.started else dict(self._entries)
        for net in _checked(_json_entries(doc.get("deleted"), types), str(source)):
            entries.pop(net, None)
        for net in _checked(_json_entries(doc.get("new"), types), str(source)):
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
