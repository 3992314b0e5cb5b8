"""A framework-neutral, lazy view of one request, for rule predicates and key functions.

Built for every request, so building it costs almost nothing: each attribute is computed
on first access and cached. Headers, the client address and the form are only parsed when
a rule asks for them.

>>> from werkzeug.test import EnvironBuilder
>>> environ = EnvironBuilder("/caf%C3%A9", method="POST", data={"username": "ann"},
...                          headers={"X-Forwarded-For": "203.0.113.9"}).get_environ()
>>> view = RequestView.from_environ(environ, ClientIPResolver(trusted_proxies=1))
>>> view.method, view.path, view.headers["x-forwarded-for"], view.client_ip
('POST', '/café', '203.0.113.9', '203.0.113.9')
>>> view.form["username"]
'ann'
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Mapping
from typing import IO, Any
from urllib.parse import parse_qsl

from ._clientip import ClientIPResolver
from ._headers import EnvironHeaders, scope_headers

__all__ = ["DEFAULT_MAX_FORM_BYTES", "RequestView"]

#: Bodies larger than this are not parsed for ``form`` (it is empty and unreadable instead).
DEFAULT_MAX_FORM_BYTES = 64 * 1024

_UNSET: Any = object()
_new_object = object.__new__
#: the methods a request view keeps as they come (anything else is upper-cased: a
#: "post" is a POST to Django and werkzeug, so it is one to the rules too)
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT",
                      "TRACE"))
_EMPTY: Mapping[str, str] = {}
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "application/json")
#: environ/scope keys whose values hold a request view (the verdict, a framework's view),
#: or the environ itself (WSGI: werkzeug's cached request, whose environ holds the view):
#: left out of the copy a detached view keeps (see :meth:`RequestView.detach`)
_VERDICT, _VIEW, _WERKZEUG = "throttlekit.verdict", "throttlekit.view", "werkzeug.request"


class RequestView:
    """What rules see of a request: ``method`` (upper case), ``path``, ``query``, ``headers``,
    ``client_ip``, ``client_key``, ``form``, ``scheme`` and ``raw``.

    - ``path`` is decoded text (never raises: undecodable bytes become U+FFFD); for WSGI it
      is ``PATH_INFO`` (the path under the app's mount point), for ASGI ``scope["path"]``.
    - ``query`` is the raw query string, undecoded.
    - ``headers`` maps lower-case names to values, looked up case-insensitively.
    - ``client_ip`` is the resolved client address (what IP lists and bans match);
      ``client_key`` the default throttle key (the IPv4 address or the IPv6 /64).
    - ``form`` holds the first value of each field of an urlencoded, multipart or JSON-object
      body (``application/json``, ``application/*+json``), read on first access; empty
      for other bodies, bodies over ``max_form_bytes`` or anything unparsable, which
      ``form_unreadable`` then reports. Reading it leaves the body for the app to read
      (WSGI: ``wsgi.input`` is replaced by a replay of the bytes read; ASGI: the
      middleware passes the body it pre-read and replays it; Django and Flask: read
      through the framework's own cached body). Multipart bodies are read strictly: what
      browsers never send (a charset on the Content-Type, ``filename*``, two
      Content-Disposition headers, a Content-Transfer-Encoding, loose framing...) makes
      the form unreadable, since the app's parser may read it otherwise. (The framework
      integrations read forms with the framework's own parser instead.)
    - ``raw`` is the WSGI environ or the ASGI scope; once the response is over, a copy of
      it (see :meth:`detach`).

    Not thread-safe (one view per request).
    """

    __slots__ = ("_client_ip", "_client_key", "_form", "_headers", "_path", "_peer", "body",
                 "is_wsgi", "max_form_bytes", "method", "raw", "resolver")

    method: str
    raw: dict[str, Any]
    resolver: ClientIPResolver
    body: bytes | None
    is_wsgi: bool
    max_form_bytes: int
    _path: Any
    _headers: Any
    _client_ip: Any
    _client_key: Any
    _form: Any
    _peer: Any

    def __init__(self) -> None:  # use from_environ / from_scope
        raise TypeError("build a RequestView with RequestView.from_environ or from_scope")

    @classmethod
    def from_environ(cls, environ: dict[str, Any], resolver: ClientIPResolver, *,
                     max_form_bytes: int = DEFAULT_MAX_FORM_BYTES) -> RequestView:
        """The view of a WSGI request (PEP 3333 environ)."""
        return build_view(cls, environ, resolver, None, max_form_bytes, True)

    @classmethod
    def from_scope(cls, scope: dict[str, Any], resolver: ClientIPResolver,
                   body: bytes | None = None, *,
                   max_form_bytes: int = DEFAULT_MAX_FORM_BYTES) -> RequestView:
        """The view of an ASGI ``http`` or ``websocket`` request; ``body`` is the request
        body when the caller pre-read it (needed for ``form``)."""
        return build_view(cls, scope, resolver, body, max_form_bytes, False)

    def detach(self) -> None:
        """The response is over: keep a shallow copy of ``raw`` instead of the environ or
        scope itself, without throttlekit's entries that hold this view (the verdict, in
        the scope's ``state`` too).

        The environ holds the verdict, the verdict this view, the view the environ: a
        reference cycle, which would leave every request's environ or scope, and all that
        hangs from it, to the cyclic garbage collector. Detached, they are freed as soon as
        the request is, and every attribute of the view still reads what it did (the
        copy has the same entries). The ASGI entry calls it once the verdict is in the scope,
        before the app runs; the WSGI entry too, unless a body is left for ``form`` to read
        (reading it puts the app's replay in the environ), then when the response ends; the
        framework integrations when the request ends.
        """
        raw = self.raw
        raw = raw.copy() if raw.__class__ is dict else dict(raw)
        # (the holders one by one: this runs once per request)
        if _VERDICT in raw:
            del raw[_VERDICT]
        if _VIEW in raw:
            del raw[_VIEW]
        if self.is_wsgi:
            if _WERKZEUG in raw:
                del raw[_WERKZEUG]
            if self._headers.__class__ is EnvironHeaders:
                self._headers = EnvironHeaders(raw)  # it reads the environ: the copy now
        else:
            state = raw.get("state")  # ASGI: the verdict is in scope["state"] too
            if state.__class__ is dict and _VERDICT in state:
                if len(state) == 1:  # the verdict alone (the entry made it): an empty copy
                    raw["state"] = {}
                else:
                    state = state.copy()
                    del state[_VERDICT]
                    raw["state"] = state
        self.raw = raw

    def __repr__(self) -> str:
        return f"<RequestView {self.method} {self.path!r} from {self.client_ip}>"

    @property
    def path(self) -> str:
        path = self._path
        if path is _UNSET:
            if self.is_wsgi:
                raw = self.raw.get("PATH_INFO")
                if isinstance(raw, str):
                    # PEP 3333: the bytes were decoded as latin-1; UTF-8 is what browsers
                    # send. A non-latin-1 str means the server already decoded it properly.
                    with contextlib.suppress(UnicodeEncodeError):
                        raw = raw.encode("latin-1").decode("utf-8", "replace")
            else:
                raw = self.raw.get("path")
                if isinstance(raw, bytes):
                    raw = raw.decode("utf-8", "replace")
            path = raw if isinstance(raw, str) and raw else "/"
            self._path = path
        return path  # type: ignore[no-any-return]

    @property
    def query(self) -> str:
        if self.is_wsgi:
            q = self.raw.get("QUERY_STRING")
            return q if isinstance(q, str) else ""
        q = self.raw.get("query_string")
        if isinstance(q, (bytes, bytearray)):
            return q.decode("latin-1")
        return q if isinstance(q, str) else ""

    @property
    def scheme(self) -> str:
        if self.is_wsgi:
            s = self.raw.get("wsgi.url_scheme")
        else:
            s = self.raw.get("scheme")
            if not isinstance(s, str):
                s = "ws" if self.raw.get("type") == "websocket" else "http"
        return s if isinstance(s, str) else "http"

    @property
    def headers(self) -> Mapping[str, str]:
        headers = self._headers
        if headers is _UNSET:
            if self.is_wsgi:
                headers = EnvironHeaders(self.raw)
            else:
                headers = scope_headers(self.raw.get("headers"))
            self._headers = headers
        return headers  # type: ignore[no-any-return]

    @property
    def peer(self) -> str | None:
        """The socket peer address as the server gave it (unresolved)."""
        peer = self._peer
        return peer if isinstance(peer, str) else None

    @property
    def client_ip(self) -> str | None:
        ip = self._client_ip
        if ip is _UNSET:
            resolver = self.resolver
            if resolver.plain and self._peer.__class__ is str:
                self.client_key  # noqa: B018 (it finds both: the peer's cached pair)
                return self._client_ip  # type: ignore[no-any-return]
            if resolver.trusts_headers:
                headers = self.headers
                ip = resolver.resolve(
                    self.peer, headers.get("x-forwarded-for"), headers.get("forwarded")
                )
            else:
                ip = resolver.resolve(self.peer)
            self._client_ip = ip
        return ip  # type: ignore[no-any-return]

    @property
    def client_key(self) -> str | None:
        key = self._client_key
        if key is _UNSET:
            resolver = self.resolver
            peer = self._peer
            if resolver.plain and peer.__class__ is str:
                pair = resolver.peers.get(peer) or resolver.peer_client(peer)
                self._client_ip, key = pair
            else:
                ip = self.client_ip
                # an IPv4 client_ip is already normalised: it is its own key
                key = ip if ip is None or ":" not in ip else resolver.client_key(ip)
            self._client_key = key
        return key  # type: ignore[no-any-return]

    @property
    def form(self) -> Mapping[str, str]:
        form = self._form
        if form is _UNSET:
            try:
                form = self._read_form()
            except Exception:
                form = _UNREADABLE  # a broken body never breaks the request
            self._form = form
        return form  # type: ignore[no-any-return]

    @property
    def form_unreadable(self) -> bool:
        """The request has a body whose form could not be read: over ``max_form_bytes``,
        unparsable, cut short, or of a content type the reader does not handle. (``form``
        is then empty, or holds only what could be read.) False for a request without a
        body. Reads the form when nothing has yet."""
        return self.form.__class__ is _UnreadableForm

    @property
    def form_read(self) -> bool:
        """Whether ``form`` has been read (a WSGI body is then the environ's replay, no
        longer the server's stream)."""
        return self._form is not _UNSET

    @property
    def form_failed(self) -> bool:
        """A form was read and could not be (``form_unreadable`` without reading one)."""
        return self._form.__class__ is _UnreadableForm

    def _read_form(self) -> Mapping[str, str]:
        ctype = self.headers.get("content-type") or ""
        mimetype = ctype.partition(";")[0].strip().lower()
        if not _is_form_type(mimetype):
            # not a body we parse: empty when there is none, unreadable when there is one
            return _UNREADABLE if self._has_body() else _EMPTY
        body = self._read_body()
        if body is None:
            return _UNREADABLE if self._has_body() else _EMPTY
        if len(body) > self.max_form_bytes:
            return _UNREADABLE
        try:
            return _parse_form(body, ctype, mimetype)
        except Exception:
            return _UNREADABLE

    def _has_body(self) -> bool:
        """Whether the request says it carries a body (a positive or unreadable
        Content-Length, a Transfer-Encoding, or a pre-read body)."""
        if self.body:
            return True
        headers = self.headers
        if headers.get("transfer-encoding"):
            return True
        length = headers.get("content-length")
        if length is None or not length.strip():
            return False
        try:
            return int(length) != 0
        except ValueError:
            return True

    def _read_body(self) -> bytes | None:
        """The request body for ``form`` (at most ``max_form_bytes`` + 1 bytes), left for
        the app to read too; None when it cannot be read without taking it from the app
        (too big, not pre-read)."""
        return self._read_wsgi_body() if self.is_wsgi else self.body

    def _read_wsgi_body(self) -> bytes | None:
        """Read at most ``max_form_bytes`` (+1 to detect more) and put a replay in place."""
        environ = self.raw
        stream = environ.get("wsgi.input")
        if stream is None:
            return None
        cap = self.max_form_bytes
        length_text = environ.get("CONTENT_LENGTH")
        length: int | None = None
        if isinstance(length_text, str) and length_text.strip():
            try:
                length = int(length_text)
            except ValueError:
                return None
            if length < 0 or length > cap:
                return None  # too big: leave the stream alone for the app
        elif not environ.get("wsgi.input_terminated"):
            return None  # no length and no terminated stream: reading could block
        want = cap + 1 if length is None else length
        chunks: list[bytes] = []
        got = 0
        try:
            while got < want:
                chunk = stream.read(want - got)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
        finally:
            data = b"".join(chunks)
            if length is None and len(data) > cap:
                environ["wsgi.input"] = _Replay(data, stream)
            else:
                environ["wsgi.input"] = io.BytesIO(data)
        if length is not None and len(data) < length:
            return None  # cut short (a client that went away): not the whole form
        return data


class _UnreadableForm(dict[str, str]):
    """The ``form`` of a request whose body could not be read (see ``form_unreadable``)."""

    __slots__ = ()


_UNREADABLE: Mapping[str, str] = _UnreadableForm()


def _is_form_type(mimetype: str) -> bool:
    """urlencoded, multipart, JSON and the ``application/*+json`` types (what Flask and
    most frameworks read as JSON)."""
    return mimetype in _FORM_TYPES or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


class _Replay(io.RawIOBase):
    """The bytes already read, then the rest of the original stream."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = io.BytesIO(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._head.readinto(buffer)
        if n:
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _parse_form(body: bytes, ctype: str, mimetype: str) -> Mapping[str, str]:
    form: dict[str, str] = {}
    if mimetype == "application/x-www-form-urlencoded":
        if ";" in ctype and _strict_options(ctype)[1].get("charset", "utf-8").lower() not in _UTF8:
            # Django decodes the body in that charset (UTF-7: "+AHU-sername" is "username")
            raise ValueError(f"urlencoded body in another charset: {ctype!r}")
        pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        for name, value in pairs:
            form.setdefault(name, value)
        if len(form) < len(pairs):
            return _unambiguous(form, pairs)
    elif mimetype != "multipart/form-data":  # JSON
        data = json.loads(body)
        if isinstance(data, dict):
            for name, value in data.items():
                if isinstance(value, str):
                    form[name] = value
                elif isinstance(value, (int, float)) and not isinstance(value, bool):
                    form[name] = str(value)
    else:
        from werkzeug.formparser import FormDataParser

        boundary, n_parts = _strict_multipart(body, ctype)
        parser = FormDataParser(max_form_memory_size=len(body) + 1, silent=False)
        _, fields, files = parser.parse(
            io.BytesIO(body), "multipart/form-data", len(body), {"boundary": boundary}
        )
        for upload in files.values():
            upload.close()
        items = [(n, v) for n, v in fields.items(multi=True) if isinstance(v, str)]
        if len(items) + len(list(files.items(multi=True))) != n_parts:
            raise ValueError("werkzeug read other parts than the strict reading")
        for name, value in items:
            form.setdefault(name, value)
        if len(form) < len(items):
            return _unambiguous(form, items)
    return form


def _unambiguous(form: dict[str, str], pairs: list[tuple[str, str]]) -> Mapping[str, str]:
    """A field repeated with different values is ambiguous: Flask's views see the first,
    Django's and Starlette's the last, so a key read from either could differ from what the
    view uses. Such fields are left out and the form is unreadable (``on_unreadable``)."""
    ambiguous = {n for n, v in pairs if form[n] != v}
    if not ambiguous:
        return form
    return _UnreadableForm((n, v) for n, v in form.items() if n not in ambiguous)


# -- strict multipart ---------------------------------------------------------------------
#
# The neutral middleware reads multipart bodies with werkzeug, the app behind it may use
# another parser (Django's, python-multipart in Starlette/FastAPI), and parsers disagree on
# what browsers never send: a charset on the Content-Type (UTF-7 field names), ``filename*``,
# an empty ``filename``, two Content-Disposition headers, Content-Transfer-Encoding, loose
# framing. A form a rule keys on must read the same for throttlekit and for the view, so
# anything beyond what browsers send makes the form unreadable (``on_unreadable`` applies).

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
#: a parameter: ``; name=token`` or ``; name="quoted"`` (no backslash escapes, which
#: parsers undo differently, and no line breaks)
_PARAM = re.compile(rf'[ \t]*;[ \t]*({_TOKEN})=({_TOKEN}|"[^"\\\r\n]*")[ \t]*')
_VALUE = re.compile(rf"[ \t]*({_TOKEN}/{_TOKEN}|{_TOKEN})[ \t]*")
_HEADER = re.compile(rf"({_TOKEN}):[ \t]*(.*?)[ \t]*")
#: RFC 2046 boundary characters, 1 to 70 of them, not ending in a space
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_UTF8 = frozenset({"utf-8", "utf8", "us-ascii"})


def _strict_options(text: str) -> tuple[str, dict[str, str]]:
    """``value; name=param; ...`` read strictly: the lower-case value and the parameters
    (lower-case names, unquoted values); ValueError for anything else or a repeated
    parameter."""
    m = _VALUE.match(text)
    if m is None:
        raise ValueError(f"malformed header value {text!r}")
    options: dict[str, str] = {}
    pos = m.end()
    while pos < len(text):
        p = _PARAM.match(text, pos)
        if p is None:
            raise ValueError(f"malformed parameters in {text!r}")
        name = p.group(1).lower()
        if name in options:
            raise ValueError(f"parameter {name!r} repeated in {text!r}")
        value = p.group(2)
        options[name] = value[1:-1] if value[:1] == '"' else value
        pos = p.end()
    return m.group(1).lower(), options


def _strict_multipart(body: bytes, ctype: str) -> tuple[str, int]:
    """The boundary and the number of parts of a multipart/form-data body framed and
    labelled as browsers do it; ValueError on anything else (see above)."""
    _, options = _strict_options(ctype)
    boundary = options.pop("boundary", None)
    if boundary is None or options or not _BOUNDARY.fullmatch(boundary):
        raise ValueError(f"multipart Content-Type {ctype!r}: exactly one valid boundary")
    delim = b"--" + boundary.encode("ascii")
    if body[:2] == b"\r\n":
        body = body[2:]  # the CRLF that begins the first delimiter (werkzeug sends it)
    if not body.startswith(delim + b"\r\n"):
        raise ValueError("multipart body does not start with its boundary")
    chunks = body[len(delim):].split(b"\r\n" + delim)
    last = chunks.pop()
    if last not in (b"--", b"--\r\n") or not chunks or body.count(delim) != len(chunks) + 1:
        raise ValueError("multipart body framing")
    for chunk in chunks:
        end = chunk.find(b"\r\n\r\n")
        if chunk[:2] != b"\r\n" or end < 0:
            raise ValueError("multipart part framing")
        _strict_part_headers(chunk[2:end].decode("utf-8"))
    return boundary, len(chunks)


def _strict_part_headers(block: str) -> None:
    seen: dict[str, str] = {}
    for line in block.split("\r\n") if block else ():
        m = _HEADER.fullmatch(line)
        if m is None or "\r" in line or "\n" in line:
            raise ValueError(f"malformed part header {line!r}")
        name = m.group(1).lower()
        if name in seen or name == "content-transfer-encoding":
            raise ValueError(f"part header {name!r} repeated or not allowed")
        seen[name] = m.group(2)
    disposition = seen.get("content-disposition")
    if disposition is None:
        raise ValueError("part without a Content-Disposition")
    kind, params = _strict_options(disposition)
    if kind != "form-data" or not params.get("name") or set(params) - {"name", "filename"}:
        raise ValueError(f"part Content-Disposition {disposition!r}")
    if params.get("filename") == "":
        raise ValueError("part with an empty filename")
    part_type = seen.get("content-type")
    if part_type is not None:
        _, type_params = _strict_options(part_type)
        if type_params.get("charset", "utf-8").lower() not in _UTF8:
            raise ValueError(f"part Content-Type {part_type!r}")


# The constructor of a view. A module function called with exactly its positional
# parameters (no keywords, no defaults) is a call CPython runs without a C-level frame:
# every request pays this one, from the WSGI and ASGI entries.

def build_view(cls: type[RequestView], raw: dict[str, Any], resolver: ClientIPResolver,
               body: bytes | None, max_form_bytes: int, is_wsgi: bool) -> RequestView:
    """``cls.from_environ(raw, resolver, max_form_bytes=...)`` (``is_wsgi``), else
    ``cls.from_scope(raw, resolver, body, max_form_bytes=...)``."""
    self = _new_object(cls)
    self.raw = raw
    self.resolver = resolver
    self.is_wsgi = is_wsgi
    self.body = body
    self.max_form_bytes = max_form_bytes
    self._path = self._headers = self._client_ip = self._client_key = self._form = _UNSET
    if is_wsgi:
        method = raw.get("REQUEST_METHOD")
        self._peer = raw.get("REMOTE_ADDR")
    else:
        method = raw.get("method")  # none in a websocket handshake: a GET
        client = raw.get("client")
        try:
            self._peer = client[0] if client else None
        except (TypeError, IndexError, KeyError):
            self._peer = None
    try:
        self.method = method if method in _METHODS else _method(method)
    except TypeError:  # unhashable: not a method
        self.method = "GET"
    return self


def _method(method: object) -> str:
    """A method outside :data:`_METHODS`, upper-cased; GET for none or not a string."""
    return method.upper() if isinstance(method, str) else "GET"
