"""Hypothesis fuzzing of request parsing and client-IP resolution.

- Request parsing: random methods, headers, content types, bodies (forms, JSON, multipart,
  garbage, oversized) and query strings through WSGIMiddleware and ASGIMiddleware with rules
  that read the form: never an exception or a 500, and the app always reads the body it was
  sent, byte for byte.
- Client IP: random peers (IPv4, IPv6, IPv4-mapped, bracketed, with ports, garbage),
  ``X-Forwarded-For`` / ``Forwarded`` chains and ``trusted_proxies`` settings: resolution never
  raises, gives None or a normalised address, and never an address the trusted hops did not
  vouch for.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from throttlekit import ASGIMiddleware, Limiter, RequestView, WSGIMiddleware

# -- request parsing --------------------------------------------------------------------------

CTYPES = st.one_of(
    st.sampled_from([
        "application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=utf-8",
        "multipart/form-data", "multipart/form-data; boundary=b0undary",
        "multipart/form-data; boundary=", "application/json", "application/json; charset=utf-16",
        "application/vnd.api+json", "application/+json", "text/plain", "", ";", "APPLICATION/JSON",
        'multipart/form-data; boundary="b0undary"', "application/octet-stream",
    ]),
    st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40),
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["urlencoded", "json", "multipart", "bytes", "big"]))
    fields = draw(st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=4))
    if kind == "urlencoded":
        from urllib.parse import urlencode
        return urlencode(fields).encode()
    if kind == "json":
        value = draw(st.one_of(st.just(fields), st.lists(st.integers(), max_size=3),
                               st.none(), st.text(max_size=5)))
        return json.dumps(value).encode()
    if kind == "multipart":
        parts = [b'--b0undary\r\nContent-Disposition: form-data; name="'
                 + k.encode("utf-8", "replace") + b'"\r\n\r\n' + v.encode() + b"\r\n"
                 for k, v in fields.items()]
        cut = draw(st.booleans())  # sometimes without the closing boundary
        return b"".join(parts) + (b"" if cut else b"--b0undary--\r\n")
    if kind == "big":
        return b"username=big&pad=" + b"x" * (64 * 1024 + draw(st.integers(0, 10)))
    return draw(st.binary(max_size=300))


HEADER_NAMES = st.sampled_from([
    "X-Forwarded-For", "Forwarded", "Accept", "X-User", "Cookie", "Transfer-Encoding",
    "User-Agent", "X-Api-Key",
])
HEADER_VALUES = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=60)


def form_limiter() -> Limiter:
    limiter = Limiter(trusted_proxies=1)
    limiter.throttle("by-name", "1000000/minute", key="form:username")
    limiter.throttle("by-callable", "1000000/minute",
                     key=lambda r: r.form.get("username") or r.headers.get("x-user"))
    limiter.allow2ban("probe", match=lambda r: "admin" in r.form, key="form:username",
                      maxretry=1_000_000, findtime=60, bantime=1)
    limiter.track("seen", key=lambda r: (r.query, r.path, r.client_key, dict(r.form)))
    return limiter


@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "BREW"]),
    ctype=st.none() | CTYPES,
    body=bodies(),
    length=st.sampled_from(["exact", "missing", "garbage", "negative"]),
    terminated=st.booleans(),
    query=st.text(max_size=30),
    headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=4),
    peer=st.one_of(st.none(), st.ip_addresses().map(str), st.text(max_size=10)),
)
def test_wsgi_parsing_never_fails_and_the_body_arrives_whole(
    method: str, ctype: str | None, body: bytes, length: str, terminated: bool, query: str,
    headers: dict[str, str], peer: str | None,
) -> None:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": "/login", "QUERY_STRING": query,
        "SERVER_NAME": "t", "SERVER_PORT": "80", "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body), "wsgi.input_terminated": terminated,
    }
    if peer is not None:
        environ["REMOTE_ADDR"] = peer
    if ctype is not None:
        environ["CONTENT_TYPE"] = ctype
    if length != "missing":
        environ["CONTENT_LENGTH"] = {"exact": str(len(body)), "garbage": "12ab",
                                     "negative": "-1"}[length]
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    got: list[bytes] = []

    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        got.append(env["wsgi.input"].read())
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    status: list[str] = []
    out = WSGIMiddleware(app, form_limiter())(environ, lambda s, h, e=None: status.append(s))
    b"".join(out)
    assert status == ["200 OK"]
    assert got == [body]


@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
    ctype=st.none() | CTYPES,
    body=bodies(),
    chunks=st.integers(1, 5),
    length=st.sampled_from(["exact", "missing", "garbage"]),
    max_form_bytes=st.sampled_from([0, 16, 64 * 1024]),
    query=st.binary(max_size=30),
    headers=st.lists(st.tuples(st.binary(max_size=12), st.binary(max_size=40)), max_size=4),
    client=st.one_of(st.none(), st.tuples(st.ip_addresses().map(str), st.integers(0, 65535)),
                     st.tuples(st.text(max_size=8), st.integers(0, 9))),
)
def test_asgi_parsing_never_fails_and_the_body_arrives_whole(
    method: str, ctype: str | None, body: bytes, chunks: int, length: str,
    max_form_bytes: int, query: bytes, headers: list[tuple[bytes, bytes]], client: Any,
) -> None:
    raw_headers = [(k.lower(), v) for k, v in headers]
    if ctype is not None:
        raw_headers.append((b"content-type", ctype.encode("latin-1")))
    if length != "missing":
        raw_headers.append((b"content-length",
                            str(len(body)).encode() if length == "exact" else b"x1"))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": "/login", "raw_path": b"/login",
             "query_string": query, "root_path": "", "headers": raw_headers,
             "client": client, "server": ("t", 80)}
    size = max(1, -(-len(body) // chunks))
    pieces = [body[i:i + size] for i in range(0, len(body), size)] or [b""]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1}
                for i, p in enumerate(pieces)]
    sent: list[dict[str, Any]] = []
    got: list[bytes] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        data = b""
        while True:
            m = await receive()
            data += m.get("body", b"")
            if not m.get("more_body"):
                break
        got.append(data)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = ASGIMiddleware(app, form_limiter(), max_form_bytes=max_form_bytes)
    asyncio.run(mw(scope, receive, send))
    assert sent[0]["status"] == 200
    assert got == [body]


@given(ctype=CTYPES, body=bodies())
def test_request_view_form_is_always_a_string_mapping(ctype: str, body: bytes) -> None:
    environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": ctype,
               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
    view = RequestView.from_environ(environ, Limiter().resolver)
    form = view.form
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in form.items())
    assert isinstance(view.form_unreadable, bool)
    assert environ["wsgi.input"].read() == body  # still there for the app


# -- client IP resolution ---------------------------------------------------------------------

ADDRESSES = st.ip_addresses().map(str)


@st.composite
def written_address(draw: st.DrawFn) -> str:
    """An address as a client or proxy may write it: plain, IPv4-mapped, bracketed, with a
    port or zone, quoted, in capitals, or garbage."""
    ip = draw(ADDRESSES)
    form = draw(st.sampled_from(["plain", "mapped", "bracket", "port", "zone", "quoted",
                                 "upper", "garbage", "unknown", "spaces"]))
    if form == "mapped":
        v4 = draw(st.ip_addresses(v=4).map(str))
        return f"::ffff:{v4}"
    if form == "bracket":
        return f"[{ip}]"
    if form == "port":
        port = draw(st.integers(0, 65535))
        return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    if form == "zone":
        return f"{ip}%eth0" if ":" in ip else ip
    if form == "quoted":
        return f'"{ip}"'
    if form == "upper":
        return ip.upper()
    if form == "garbage":
        return draw(st.text(max_size=20))
    if form == "unknown":
        return draw(st.sampled_from(["unknown", "_hidden", "", "1.2.3", "999.1.1.1"]))
    if form == "spaces":
        return f"  {ip} "
    return ip


def _normalised(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if addr.version == 6:
        assert addr.ipv4_mapped is None  # unwrapped to IPv4
    return str(addr) == ip


def _norm(text: str | None) -> str | None:
    from throttlekit._clientip import normalize_ip  # the reference normalisation
    return normalize_ip(text)


TRUSTED = st.one_of(
    st.integers(0, 4),
    st.lists(st.sampled_from(["10.0.0.0/8", "127.0.0.1", "::1", "fd00::/8", "unix",
                              "192.0.2.0/24", "::ffff:10.0.0.0/104"]), max_size=3),
)


@given(
    trusted=TRUSTED,
    header=st.sampled_from(["x-forwarded-for", "forwarded"]),
    prefix=st.integers(1, 128),
    peer=st.one_of(st.none(), written_address()),
    chain=st.lists(written_address(), max_size=6),
    sep=st.sampled_from([",", ", ", " , "]),
    extra=st.one_of(st.none(), st.text(max_size=30)),
)
def test_client_ip_resolution(trusted: Any, header: str, prefix: int, peer: str | None,
                              chain: list[str], sep: str, extra: str | None) -> None:
    limiter = Limiter(trusted_proxies=trusted, ipv6_prefix=prefix, forwarded_header=header)
    if header == "forwarded":
        value = sep.join(f"for={a};proto=http" for a in chain)
    else:
        value = sep.join(chain)
    if extra is not None:  # a client's own junk, prepended
        value = extra + sep + value if value else extra
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/",
                               "HTTP_X_FORWARDED_FOR": value, "HTTP_FORWARDED": value}
    if peer is not None:
        environ["REMOTE_ADDR"] = peer
    view = RequestView.from_environ(environ, limiter.resolver)
    ip, key = view.client_ip, view.client_key
    peer_ip = _norm(peer)
    if ip is None:
        assert key is None
        return
    assert _normalised(ip)
    net = ipaddress.ip_network(key)
    assert ipaddress.ip_address(ip) in net
    if net.version == 4:
        assert key == ip
    else:
        assert net.prefixlen == prefix
    # Only what the trusted hops vouch for
    if header == "forwarded":
        from throttlekit._clientip import _forwarded_for
        entries = [_norm(e) for e in _forwarded_for(value)]
    else:
        entries = [_norm(e) for e in value.split(",")]
    if isinstance(trusted, int):
        if trusted == 0:
            assert ip == peer_ip
        else:
            assert ip == peer_ip or ip in entries[-trusted:]
    else:
        from throttlekit._ipset import IPSet
        nets = IPSet([t for t in trusted if t != "unix"])
        if peer_ip is not None and peer_ip not in nets:
            assert ip == peer_ip  # an untrusted peer is the client, whatever it claims
        else:
            assert ip == peer_ip or ip in entries
            # every entry to the right of the answer was written by a trusted proxy
            idx = max(i for i, e in enumerate(entries) if e == ip) if ip in entries else None
            if idx is not None:
                assert all(e is not None and e in nets for e in entries[idx + 1:])
