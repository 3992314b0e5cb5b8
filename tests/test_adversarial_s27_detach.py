"""Session 27: the WSGI entry detaches the request view before the app runs, unless a
body is left for ``verdict.request.form`` to read; then it keeps the view on the environ
until the response ends, so that the form's replay lands where the app reads the body.

Two requests broke that promise: an app whose body is a generator (the code runs after
the entry has returned, when the view had already been detached), and a request whose body
comes with neither Content-Length nor Transfer-Encoding (gunicorn's environ for an HTTP/2
request streamed without a length: ``wsgi.input_terminated``): in both the app read the
form through the view, then found ``wsgi.input`` spent. A refusal of such a request whose
``start_response`` raises left the environ to the cyclic collector.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from throttlekit import Limiter, WSGIMiddleware
from wsgi_client import wsgi_call

PEER = "198.51.100.7"
BODY = b"user=alice"


def _environ(**extra: Any) -> dict[str, Any]:
    environ = {
        "REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": "/login",
        "QUERY_STRING": "", "SERVER_NAME": "t", "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": PEER, "HTTP_HOST": "t",
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(BODY),
        "wsgi.errors": io.StringIO(), "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "CONTENT_LENGTH": str(len(BODY)),
    }
    environ.update(extra)
    return environ


def _call(app: Any, environ: dict[str, Any]) -> tuple[str, bytes]:
    status, _, body = wsgi_call(app, environ)
    return status, body


def _limiter(rules: str) -> Limiter:
    lim = Limiter()
    if rules == "count_when":  # an exchange to settle: the entry wraps the response
        lim.throttle("errors", "10/minute", count_when=lambda r: r.status_code >= 500)
    elif rules == "admission":  # an admission slot: the response wrapped to give it back
        lim.throttle("per-ip", "10/minute")
        lim.admission()
    else:
        lim.throttle("per-ip", "10/minute")
    return lim


def _generator_app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    """A WSGI app written as a generator: none of it runs before the server iterates."""
    form = dict(environ["throttlekit.verdict"].request.form)
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield f"{form.get('user')} {body.decode()}".encode()


@pytest.mark.parametrize("rules", ["plain", "count_when", "admission"])
def test_a_generator_app_reads_the_form_then_the_body(rules: str) -> None:
    """The form read through the view, then the body, by a generator app: both whole."""
    app = WSGIMiddleware(_generator_app, _limiter(rules))
    environ = _environ()
    assert _call(app, environ) == ("200 OK", b"alice user=alice")
    view = environ["throttlekit.verdict"].request
    assert view.raw is not environ and dict(view.form) == {"user": "alice"}  # detached


def test_a_body_without_length_or_transfer_encoding_is_left_to_the_app() -> None:
    """gunicorn's environ for an HTTP/2 POST streamed without a Content-Length: no
    CONTENT_LENGTH, no Transfer-Encoding, a terminated ``wsgi.input``. The view's form reads
    the body and the app still reads all of it."""
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen["form"] = dict(environ["throttlekit.verdict"].request.form)
        seen["body"] = environ["wsgi.input"].read()
        start_response("200 OK", [])
        return [b"ok"]

    environ = _environ(**{"wsgi.input_terminated": True})
    del environ["CONTENT_LENGTH"]
    assert _call(WSGIMiddleware(app, _limiter("plain")), environ) == ("200 OK", b"ok")
    assert seen == {"form": {"user": "alice"}, "body": BODY}
    assert environ["throttlekit.verdict"].request.raw is not environ


@pytest.mark.parametrize("rules", ["plain", "count_when"])
def test_a_generator_app_leaves_no_cycle(garbage: Callable[[], list[str]], rules: str) -> None:
    """Detached when the response ends (the server closes it, or reads it to its end)."""
    app = WSGIMiddleware(_generator_app, _limiter(rules))
    assert _call(app, _environ()) == ("200 OK", b"alice user=alice")
    environ = _environ()
    result = app(environ, lambda status, headers, exc_info=None: None)
    assert b"".join(result) == b"alice user=alice"  # read to its end, never closed
    assert environ["throttlekit.verdict"].request.raw is not environ
    del environ, result
    assert garbage() == []


def test_a_refusal_whose_start_response_raises_leaves_no_cycle(
        garbage: Callable[[], list[str]]) -> None:
    """A POST refused, the server's start_response raising (a client gone): the view is
    detached all the same."""
    lim = Limiter()
    lim.blocklist("all", lambda view: True)

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        raise OSError("client went away")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise AssertionError("refused: the app never runs")

    environ = _environ()
    with pytest.raises(OSError):
        WSGIMiddleware(app, lim)(environ, start_response)
    assert environ["throttlekit.verdict"].request.raw is not environ
    del environ
    assert garbage() == []
