"""RequestView: lazy, framework-neutral view of WSGI environs and ASGI scopes."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from throttlekit._clientip import ClientIPResolver
from throttlekit._request import RequestView

PLAIN = ClientIPResolver()
ONE_PROXY = ClientIPResolver(trusted_proxies=1)


def environ(*args, **kwargs):
    return EnvironBuilder(*args, **kwargs).get_environ()


def scope(path="/", *, method="GET", headers=(), client=("198.51.100.7", 5000), **extra):
    s = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": path.encode("utf-8", "replace") if isinstance(path, str) else path,
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": client,
        "server": ("127.0.0.1", 8000),
    }
    s.update(extra)
    return s


# --- WSGI -------------------------------------------------------------------------------


def test_wsgi_basic_attributes():
    """Method, path, query, scheme and raw come from the environ."""
    env = environ(
        "/login", method="POST", query_string="next=%2Fhome&a=1", base_url="https://example.com/"
    )
    view = RequestView.from_environ(env, PLAIN)
    assert (view.method, view.path, view.query, view.scheme) == (
        "POST",
        "/login",
        "next=%2Fhome&a=1",
        "https",
    )
    assert view.raw is env


def test_wsgi_path_is_utf8_decoded():
    """A UTF-8 path that the server decoded as latin-1 (PEP 3333) reads as text."""
    view = RequestView.from_environ(environ("/caf%C3%A9/%E2%98%83"), PLAIN)
    assert view.path == "/café/☃"


def test_wsgi_invalid_utf8_path_never_raises():
    """Bytes that are not UTF-8 become replacement characters, not an exception."""
    env = environ("/")
    env["PATH_INFO"] = b"/\xff\xfe/x".decode("latin-1")
    assert RequestView.from_environ(env, PLAIN).path == "/\ufffd\ufffd/x"


def test_wsgi_already_decoded_path_kept():
    """A server that put real text (non-latin-1) in PATH_INFO is taken at its word."""
    env = environ("/")
    env["PATH_INFO"] = "/☃"
    assert RequestView.from_environ(env, PLAIN).path == "/☃"


def test_wsgi_missing_keys_have_defaults():
    """A bare environ still gives a usable view."""
    view = RequestView.from_environ({}, PLAIN)
    assert (view.method, view.path, view.query, view.scheme) == ("GET", "/", "", "http")
    assert view.client_ip is None and view.client_key is None
    assert dict(view.headers) == {} and dict(view.form) == {}


def test_wsgi_headers_case_insensitive():
    """Headers are looked up in any case, including Content-Type and Content-Length."""
    env = environ(
        "/",
        method="POST",
        data=b"abc",
        content_type="text/plain",
        headers={"User-Agent": "sqlmap/1.0", "X-Api-Key": "k1"},
    )
    headers = RequestView.from_environ(env, PLAIN).headers
    assert headers["user-agent"] == "sqlmap/1.0"
    assert headers.get("USER-AGENT") == "sqlmap/1.0"
    assert headers["x-api-key"] == "k1" and "X-Api-Key" in headers
    assert headers["content-type"] == "text/plain"
    assert headers["Content-Length"] == "3"
    assert headers.get("missing", "d") == "d" and "missing" not in headers
    with pytest.raises(KeyError):
        headers["missing"]
    assert {"user-agent", "x-api-key", "content-type", "content-length"} <= set(headers)


def test_wsgi_client_ip_peer_and_spoofing():
    """The peer is the client; X-Forwarded-For counts only with a trusted proxy."""
    env = environ(
        "/",
        headers={"X-Forwarded-For": "127.0.0.1, 203.0.113.9"},
        environ_base={"REMOTE_ADDR": "10.0.0.1"},
    )
    assert RequestView.from_environ(env, PLAIN).client_ip == "10.0.0.1"
    assert RequestView.from_environ(env, ONE_PROXY).client_ip == "203.0.113.9"


def test_wsgi_ipv6_client_key_is_64():
    """An IPv6 client's key is its /64 network; client_ip keeps the full address."""
    env = environ("/", environ_base={"REMOTE_ADDR": "2001:db8:1:2::abcd"})
    view = RequestView.from_environ(env, PLAIN)
    assert view.client_ip == "2001:db8:1:2::abcd"
    assert view.client_key == "2001:db8:1:2::/64"


def test_wsgi_urlencoded_form_is_replayed_to_the_app():
    """Reading the form leaves the whole body for the app to read."""
    env = environ("/login", method="POST", data={"username": "ann", "password": "x y"})
    view = RequestView.from_environ(env, PLAIN)
    assert view.form == {"username": "ann", "password": "x y"}
    assert Request(env).form["password"] == "x y"


def test_wsgi_form_repeated_fields():
    """A field repeated with one value gives it; repeated with different values it is left
    out and the form is unreadable (frameworks disagree on which value a view sees)."""
    env = environ(
        "/", method="POST", data="a=1&a=1&b=", content_type="application/x-www-form-urlencoded"
    )
    view = RequestView.from_environ(env, PLAIN)
    assert view.form == {"a": "1", "b": ""} and not view.form_unreadable
    env = environ(
        "/", method="POST", data="a=1&a=2&b=", content_type="application/x-www-form-urlencoded"
    )
    view = RequestView.from_environ(env, PLAIN)
    assert view.form == {"b": ""} and view.form_unreadable


def test_wsgi_multipart_form():
    """Multipart fields are parsed (files are ignored) and the body is replayed."""
    env = environ("/", method="POST", data={"username": "bob", "f": (io.BytesIO(b"xx"), "a.txt")})
    view = RequestView.from_environ(env, PLAIN)
    assert view.form == {"username": "bob"}
    with Request(env) as req:
        assert req.form["username"] == "bob" and req.files["f"].read() == b"xx"


def test_wsgi_json_object_form():
    """A JSON object body exposes its string and number fields."""
    body = json.dumps({"username": "cy", "n": 3, "nested": {"x": 1}, "flag": True})
    env = environ("/", method="POST", data=body, content_type="application/json")
    view = RequestView.from_environ(env, PLAIN)
    assert view.form == {"username": "cy", "n": "3"}
    assert json.loads(Request(env).get_data()) == json.loads(body)


def test_wsgi_oversized_form_is_empty_and_untouched():
    """A body over the cap gives an empty form and is not read at all."""
    data = "username=" + "a" * 100
    env = environ("/", method="POST", data=data, content_type="application/x-www-form-urlencoded")
    original = env["wsgi.input"]
    view = RequestView.from_environ(env, PLAIN, max_form_bytes=50)
    assert view.form == {}
    assert env["wsgi.input"] is original
    assert Request(env).form["username"] == "a" * 100


def test_wsgi_chunked_oversized_body_is_replayed_whole():
    """Without Content-Length, an over-cap body read in part is replayed in full."""
    payload = b"username=" + b"a" * 1000
    env = environ("/", method="POST")
    env.update(
        {
            "CONTENT_TYPE": "application/x-www-form-urlencoded",
            "wsgi.input": io.BytesIO(payload),
            "wsgi.input_terminated": True,
        }
    )
    env.pop("CONTENT_LENGTH", None)
    view = RequestView.from_environ(env, PLAIN, max_form_bytes=100)
    assert view.form == {}
    assert env["wsgi.input"].read() == payload


def test_wsgi_chunked_small_body_parsed():
    """Without Content-Length but with a terminated stream, a small body is parsed."""
    env = environ("/", method="POST")
    env.update(
        {
            "CONTENT_TYPE": "application/x-www-form-urlencoded",
            "wsgi.input": io.BytesIO(b"u=1"),
            "wsgi.input_terminated": True,
        }
    )
    env.pop("CONTENT_LENGTH", None)
    view = RequestView.from_environ(env, PLAIN)
    assert view.form == {"u": "1"}
    assert env["wsgi.input"].read() == b"u=1"


def test_wsgi_unterminated_stream_without_length_is_not_read():
    """No Content-Length and no terminated stream: reading could block, so the form is empty."""
    env = environ("/", method="POST")
    stream = io.BytesIO(b"u=1")
    env.update({"CONTENT_TYPE": "application/x-www-form-urlencoded", "wsgi.input": stream})
    env.pop("CONTENT_LENGTH", None)
    assert RequestView.from_environ(env, PLAIN).form == {}
    assert env["wsgi.input"] is stream and stream.tell() == 0


@pytest.mark.parametrize(
    ("ctype", "body", "length"),
    [
        pytest.param("application/json", b"{not json", None, id="bad-json"),
        pytest.param("application/json", b"[1, 2]", None, id="json-list"),
        pytest.param("multipart/form-data", b"garbage", None, id="multipart-no-boundary"),
        pytest.param(
            "multipart/form-data; boundary=x", b"--x\r\ngarbage", None, id="multipart-truncated"
        ),
        pytest.param("application/x-www-form-urlencoded", b"a=1", "abc", id="bad-length"),
        pytest.param("application/x-www-form-urlencoded", b"a=1", "-5", id="negative-length"),
        pytest.param("text/plain", b"a=1", None, id="not-a-form-type"),
    ],
)
def test_wsgi_bad_bodies_give_empty_form(ctype, body, length):
    """Unparsable bodies and bad lengths give an empty form, never an exception."""
    env = environ("/", method="POST", data=body, content_type=ctype)
    if length is not None:
        env["CONTENT_LENGTH"] = length
    assert RequestView.from_environ(env, PLAIN).form == {}


def test_wsgi_failing_stream_gives_empty_form():
    """A client that disconnects mid-body (read raises) gives an empty form."""

    class Broken(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, b):
            raise OSError("connection reset")

    env = environ("/", method="POST", data=b"a=1", content_type="application/x-www-form-urlencoded")
    env["wsgi.input"] = Broken()
    assert RequestView.from_environ(env, PLAIN).form == {}


def test_view_is_lazy():
    """Building a view reads nothing: the form's body is untouched until asked for."""
    env = environ("/", method="POST", data={"a": "1"})
    stream = env["wsgi.input"]
    view = RequestView.from_environ(env, PLAIN)
    _ = (view.method, view.path, view.client_ip)
    assert env["wsgi.input"] is stream and stream.tell() == 0


def test_view_has_slots():
    """Views are slotted (cheap to build, no per-instance dict)."""
    view = RequestView.from_environ(environ("/"), PLAIN)
    assert not hasattr(view, "__dict__")
    with pytest.raises(TypeError):
        RequestView()


# --- ASGI -------------------------------------------------------------------------------


def test_asgi_basic_attributes():
    """Method, path, query, scheme and raw come from the scope."""
    s = scope("/café", method="POST", query_string=b"q=%C3%A9&x=1")
    view = RequestView.from_scope(s, PLAIN)
    assert (view.method, view.path, view.query, view.scheme) == (
        "POST",
        "/café",
        "q=%C3%A9&x=1",
        "https",
    )
    assert view.raw is s


def test_asgi_headers_latin1_and_joined():
    """Header bytes are latin-1 decoded; repeated headers are joined with commas."""
    s = scope(
        headers=[
            ("User-Agent", "curl/8"),
            ("X-Forwarded-For", "1.1.1.1"),
            ("x-forwarded-for", "203.0.113.9"),
            ("X-Name", "caf\xe9"),
        ]
    )
    headers = RequestView.from_scope(s, PLAIN).headers
    assert headers["User-Agent"] == "curl/8"
    assert headers["x-forwarded-for"] == "1.1.1.1, 203.0.113.9"
    assert headers.get("X-NAME") == "café"
    assert "x-name" in headers and "nope" not in headers


def test_asgi_client_ip_from_scope_and_proxy():
    """The scope's client is the peer; the repeated XFF header is one chain."""
    s = scope(
        headers=[("X-Forwarded-For", "127.0.0.1"), ("X-Forwarded-For", "203.0.113.9")],
        client=("10.0.0.1", 1234),
    )
    assert RequestView.from_scope(s, PLAIN).client_ip == "10.0.0.1"
    assert RequestView.from_scope(s, ONE_PROXY).client_ip == "203.0.113.9"


@pytest.mark.parametrize(
    "client",
    [None, (), ["::ffff:10.0.0.1"], 42, ("not-an-ip", 1)],
    ids=["none", "empty", "list", "int", "garbage"],
)
def test_asgi_odd_clients(client):
    """A missing or malformed client gives None or the parsed address, never an exception."""
    view = RequestView.from_scope(scope(client=client), PLAIN)
    assert view.client_ip in (None, "10.0.0.1")


def test_asgi_websocket_scope():
    """A websocket handshake scope reads as a GET with a ws scheme default."""
    s = scope("/ws", type="websocket")
    del s["method"], s["scheme"]
    view = RequestView.from_scope(s, PLAIN)
    assert (view.method, view.path, view.scheme) == ("GET", "/ws", "ws")


def test_asgi_form_from_passed_body():
    """The form comes from the body the middleware pre-read."""
    s = scope(method="POST", headers=[("content-type", "application/x-www-form-urlencoded")])
    assert RequestView.from_scope(s, PLAIN, b"username=dee").form == {"username": "dee"}
    assert RequestView.from_scope(s, PLAIN).form == {}
    assert RequestView.from_scope(s, PLAIN, b"u=" + b"x" * 100, max_form_bytes=10).form == {}


def test_asgi_garbage_headers_never_raise():
    """Malformed header pairs are skipped; a malformed header list gives no headers."""
    s = scope()
    s["headers"] = [(b"ok", b"1"), (b"short",), None, (1, 2), (b"x", "str-not-bytes")]
    assert RequestView.from_scope(s, PLAIN).headers == {"ok": "1"}
    s["headers"] = "nonsense"
    assert dict(RequestView.from_scope(s, PLAIN).headers) == {}


def test_asgi_bytes_path_decoded():
    """A (non-conforming) bytes path is decoded as UTF-8 with replacement."""
    assert RequestView.from_scope(scope(path=b"/\xff"), PLAIN).path == "/\ufffd"


@given(
    path=st.text(),
    headers=st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=60)), max_size=8),
    client=st.one_of(st.none(), st.tuples(st.text(max_size=40), st.integers())),
    body=st.one_of(st.none(), st.binary(max_size=200)),
)
def test_asgi_view_never_raises(path, headers, client, body):
    """Every attribute of a view over arbitrary scope contents is readable."""
    s = scope(path, client=client)
    s["headers"] = headers
    for resolver in (PLAIN, ONE_PROXY):
        view = RequestView.from_scope(s, resolver, body)
        _ = (view.method, view.path, view.query, view.scheme, dict(view.headers))
        _ = (view.client_ip, view.client_key, dict(view.form), repr(view))


@given(
    path=st.binary(max_size=40),
    xff=st.text(max_size=60).filter(lambda t: t.isascii() and "\n" not in t),
    body=st.binary(max_size=200),
    ctype=st.sampled_from(
        [
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=b",
            "application/json",
            "text/plain",
        ]
    ),
)
def test_wsgi_view_never_raises(path, xff, body, ctype):
    """Every attribute of a view over arbitrary environ contents is readable, body replayed."""
    env = environ("/", method="POST", data=body, content_type=ctype)
    env["PATH_INFO"] = path.decode("latin-1")
    env["HTTP_X_FORWARDED_FOR"] = xff
    sent = env["wsgi.input"].getvalue()
    view = RequestView.from_environ(env, ONE_PROXY)
    _ = (view.path, dict(view.headers), view.client_ip, view.client_key, dict(view.form))
    assert env["wsgi.input"].read() == sent
