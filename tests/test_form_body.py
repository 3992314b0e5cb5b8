"""Rules keyed on the request form, in every integration (hardening items 1 and 2).

1. The view sees the whole body (urlencoded, multipart with a file, JSON) after a rule read
   the form: WSGIMiddleware, ASGIMiddleware, the Flask extension, the Django middleware
   (sync and async), the Starlette/FastAPI middleware.
2. A rule whose key cannot be read (body over ``max_form_bytes``, unparsable, a content type
   the reader does not take, a key function that raised) never fails open: the request is
   counted under its client (``on_unreadable="client"``, default) or refused (``"refuse"``);
   ``application/*+json`` bodies are read.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import types
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from django.http import JsonResponse
from django.test import AsyncClient, Client
from django.urls import path
from flask import Flask, request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from werkzeug.test import Client as WerkzeugClient

from django_config import fresh_urlconf, throttlekit_settings  # configures Django first
from throttlekit import ASGIMiddleware, ConfigError, Limiter, RequestView, WSGIMiddleware
from throttlekit.contrib.flask import Throttle as FlaskThrottle
from throttlekit.contrib.starlette import ThrottleMiddleware
from throttlekit.testing import FakeClock

# -- bodies -----------------------------------------------------------------------------------

BOUNDARY = "tkBoundary7MA4YWxk"
FILE = bytes(range(256)) * 3  # binary, every byte value


def urlencoded(user: str) -> tuple[str, bytes]:
    return "application/x-www-form-urlencoded", (
        f"username={user}&password=s3cret+x&note=%E2%9C%93".encode()
    )


def multipart(user: str) -> tuple[str, bytes]:
    b = BOUNDARY.encode()
    body = b"".join([
        b"--" + b + b'\r\nContent-Disposition: form-data; name="username"\r\n\r\n',
        user.encode(), b"\r\n",
        b"--" + b + b'\r\nContent-Disposition: form-data; name="password"\r\n\r\ns3cret x\r\n',
        b"--" + b + b'\r\nContent-Disposition: form-data; name="avatar"; filename="a.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n", FILE, b"\r\n",
        b"--" + b + b"--\r\n",
    ])
    return f"multipart/form-data; boundary={BOUNDARY}", body


def as_json(user: str) -> tuple[str, bytes]:
    return "application/json", json.dumps({"username": user, "password": "pw", "n": 3}).encode()


def as_json_charset(user: str) -> tuple[str, bytes]:
    return "application/json; charset=utf-8", as_json(user)[1]


def plus_json(user: str) -> tuple[str, bytes]:
    return "application/vnd.api+json", as_json(user)[1]


BODIES = {
    "urlencoded": urlencoded, "multipart": multipart, "json": as_json,
    "json-charset": as_json_charset, "plus-json": plus_json,
}


def expected(kind: str, user: str) -> dict[str, Any]:
    """What an echoing view reports for a body: its sha256, and the fields its framework
    parsed (where it parses that type)."""
    _, body = BODIES[kind](user)
    out: dict[str, Any] = {"sha": hashlib.sha256(body).hexdigest()}
    if kind == "urlencoded":
        out["form"] = {"username": user, "password": "s3cret x", "note": "\u2713"}
    elif kind == "multipart":
        out["form"] = {"username": user, "password": "s3cret x"}
        out["files"] = {"avatar": hashlib.sha256(FILE).hexdigest()}
    return out


def form_key_callable(r: RequestView) -> str | None:
    return r.form.get("username")


KEYS = [pytest.param("form:username", id="shortcut"),
        pytest.param(form_key_callable, id="callable")]


def login_limiter(key: Any, clock: FakeClock, **options: Any) -> Limiter:
    limiter = Limiter(clock=clock, strategy="fixed_window")
    limiter.throttle("login", "2/minute", key=key, match=lambda r: r.method == "POST",
                     **options)
    return limiter


# The same four posts in every integration: alice, alice, bob, alice. Counted per user name,
# bob passes and alice's third is refused; were the name not read (the whole request counted
# per client), bob would be the one refused.
USERS = ["alice", "alice", "bob", "alice"]
CODES = [200, 200, 200, 429]


# -- the echoing apps -------------------------------------------------------------------------


def flask_app(limiter: Limiter | None = None, key: Any = None) -> Flask:
    """The echoing Flask app; with ``limiter``, its view decorated with the login limit
    (the Flask extension runs decorated limits; the limiter's rules run in WSGIMiddleware)."""
    app = Flask(__name__)

    def login() -> Any:
        data = request.get_data(cache=True)
        out: dict[str, Any] = {"sha": hashlib.sha256(data).hexdigest()}
        if request.form:
            out["form"] = request.form.to_dict()
        if request.files:
            out["files"] = {k: hashlib.sha256(f.read()).hexdigest()
                            for k, f in request.files.items()}
        return out

    if limiter is not None:
        login = limiter.limit("2/minute", key=key, methods=["POST"])(login)
    app.post("/login")(login)
    return app


async def starlette_login(req: Request) -> JSONResponse:
    body = await req.body()
    return JSONResponse({"sha": hashlib.sha256(body).hexdigest()})


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/login", starlette_login, methods=["POST"])])


def django_login(req: Any) -> JsonResponse:
    out: dict[str, Any] = {}
    if req.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        out["form"] = req.POST.dict()
        if req.FILES:
            out["files"] = {k: hashlib.sha256(f.read()).hexdigest()
                            for k, f in req.FILES.items()}
    # (request.body after request.FILES: Django allows it only when the body was read
    # first, as throttlekit's form reading does)
    out["sha"] = hashlib.sha256(req.body).hexdigest()
    return JsonResponse(out)


async def django_alogin(req: Any) -> JsonResponse:
    return django_login(req)


def post_wsgi(app: Any, kind: str, users: list[str]) -> list[tuple[int, dict[str, Any]]]:
    c = WerkzeugClient(app)
    out = []
    for user in users:
        ctype, body = BODIES[kind](user)
        r = c.post("/login", data=body, content_type=ctype)
        out.append((r.status_code, r.get_json() if r.status_code == 200 else {}))
    return out


def post_asgi(app: Any, kind: str, users: list[str]) -> list[tuple[int, dict[str, Any]]]:
    async def main() -> list[tuple[int, dict[str, Any]]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            out = []
            for user in users:
                ctype, body = BODIES[kind](user)
                r = await c.post("/login", content=body, headers={"content-type": ctype})
                out.append((r.status_code, r.json() if r.status_code == 200 else {}))
            return out
    return asyncio.run(main())


def check(results: list[tuple[int, dict[str, Any]]], kind: str, *, parsed: bool) -> None:
    assert [code for code, _ in results] == CODES
    for (code, echo), user in zip(results, USERS, strict=False):
        if code != 200:
            continue
        want = expected(kind, user)
        if not parsed:
            want = {"sha": want["sha"]}
        assert echo == want


# -- item 1: the view sees the whole body -----------------------------------------------------


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("kind", list(BODIES))
def test_wsgi_middleware_view_sees_the_body(kind: str, key: Any, clock: FakeClock) -> None:
    app = flask_app()
    app.wsgi_app = WSGIMiddleware(app.wsgi_app, login_limiter(key, clock))  # type: ignore[method-assign]
    check(post_wsgi(app, kind, USERS), kind, parsed=True)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("kind", list(BODIES))
def test_flask_extension_view_sees_the_body(kind: str, key: Any, clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, strategy="fixed_window")
    app = flask_app(limiter, key)
    FlaskThrottle(app, limiter)
    check(post_wsgi(app, kind, USERS), kind, parsed=True)


def test_flask_extension_after_another_hook_read_the_form(clock: FakeClock) -> None:
    """A before_request hook that parsed the form first (CSRF protection does): the rule
    still reads the user name and the view still sees the fields."""
    limiter = Limiter(clock=clock, strategy="fixed_window")
    app = flask_app(limiter, "form:username")

    @app.before_request
    def touch() -> None:
        _ = request.form  # werkzeug consumes the stream here

    FlaskThrottle(app, limiter)
    results = post_wsgi(app, "urlencoded", USERS)
    assert [code for code, _ in results] == CODES
    assert results[0][1]["form"] == expected("urlencoded", "alice")["form"]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("kind", list(BODIES))
def test_asgi_middleware_view_sees_the_body(kind: str, key: Any, clock: FakeClock) -> None:
    app = ASGIMiddleware(starlette_app(), login_limiter(key, clock))
    check(post_asgi(app, kind, USERS), kind, parsed=False)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("kind", list(BODIES))
def test_starlette_middleware_view_sees_the_body(kind: str, key: Any, clock: FakeClock) -> None:
    app = starlette_app()
    app.add_middleware(ThrottleMiddleware, limiter=login_limiter(key, clock))
    check(post_asgi(app, kind, USERS), kind, parsed=False)


@pytest.mark.parametrize("kind", ["urlencoded", "json", "plus-json"])
def test_starlette_decorated_endpoint_reads_the_form(kind: str, clock: FakeClock) -> None:
    """A decorated endpoint keyed on the form, the middleware in front: the endpoint's
    limit reads the user name, the endpoint the whole body."""
    limiter = Limiter(clock=clock, strategy="fixed_window")

    @limiter.limit("2/minute", key="form:username")
    async def login(req: Request) -> JSONResponse:
        return await starlette_login(req)

    app = Starlette(routes=[Route("/login", login, methods=["POST"])])
    app.add_middleware(ThrottleMiddleware, limiter=limiter)
    check(post_asgi(app, kind, USERS), kind, parsed=False)


@pytest.fixture
def urls() -> Iterator[types.ModuleType]:
    with fresh_urlconf() as module:
        yield module


def django_settings(limiter: Limiter) -> Any:
    return throttlekit_settings(LIMITER=limiter)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("kind", list(BODIES))
def test_django_sync_view_sees_the_body(kind: str, key: Any, urls: Any,
                                        clock: FakeClock) -> None:
    urls.urlpatterns = [path("login", django_login)]
    with django_settings(login_limiter(key, clock)):
        c = Client()
        results = []
        for user in USERS:
            ctype, body = BODIES[kind](user)
            r = c.post("/login", data=body, content_type=ctype)
            results.append((r.status_code, r.json() if r.status_code == 200 else {}))
    check(results, kind, parsed=True)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("kind", list(BODIES))
def test_django_async_view_sees_the_body(kind: str, key: Any, urls: Any,
                                         clock: FakeClock) -> None:
    urls.urlpatterns = [path("login", django_alogin)]

    async def main() -> list[tuple[int, dict[str, Any]]]:
        c = AsyncClient()
        out = []
        for user in USERS:
            ctype, body = BODIES[kind](user)
            r = await c.post("/login", data=body, content_type=ctype)
            out.append((r.status_code, r.json() if r.status_code == 200 else {}))
        return out

    with django_settings(login_limiter(key, clock)):
        results = asyncio.run(main())
    check(results, kind, parsed=True)


def test_django_decorated_view_reads_the_form(urls: Any, clock: FakeClock) -> None:
    """``@limit(key="form:username")`` on a Django view: counted per user name, and the view
    still parses the form."""
    limiter = Limiter(clock=clock, strategy="fixed_window")
    urls.urlpatterns = [path("login", limiter.limit("2/minute", key="form:username")(
        django_login))]
    with django_settings(limiter):
        c = Client()
        results = []
        for user in USERS:
            ctype, body = urlencoded(user)
            r = c.post("/login", data=body, content_type=ctype)
            results.append((r.status_code, r.json() if r.status_code == 200 else {}))
    check(results, "urlencoded", parsed=True)


# -- item 2: an unreadable key never fails open -----------------------------------------------

BIG = 65 * 1024  # over the default max_form_bytes (64 KiB)


def padded(user: str) -> tuple[str, bytes]:
    """A login form padded past max_form_bytes: the padding is a field the app ignores."""
    return "application/x-www-form-urlencoded", (
        f"username={user}&password=guess&pad=".encode() + b"x" * BIG
    )


UNREADABLE = {
    "too-big": padded,
    "bad-json": lambda u: ("application/json", b'{"username": "' + u.encode() + b'"'),
    "bad-multipart": lambda u: ("multipart/form-data; boundary=zz",
                                b"--zz\r\nContent-Disposition: form-data; name=\"username\"\r\n"),
    "text-plain": lambda u: ("text/plain", json.dumps({"username": u}).encode()),
}


def wsgi_codes(limiter: Limiter, make: Callable[[str], tuple[str, bytes]],
               users: list[str]) -> list[int]:
    seen: list[bytes] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    c = WerkzeugClient(WSGIMiddleware(app, limiter))
    codes = []
    for user in users:
        ctype, body = make(user)
        codes.append(c.post("/login", data=body, content_type=ctype).status_code)
        if codes[-1] == 200:
            assert seen[-1] == body  # and the app still gets the body, whole
    return codes


def asgi_codes(limiter: Limiter, make: Callable[[str], tuple[str, bytes]],
               users: list[str]) -> list[int]:
    seen: list[bytes] = []

    async def login(req: Request) -> JSONResponse:
        seen.append(await req.body())
        return JSONResponse({})

    app = ASGIMiddleware(Starlette(routes=[Route("/login", login, methods=["POST"])]),
                         limiter)

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            codes = []
            for user in users:
                ctype, body = make(user)
                r = await c.post("/login", content=body, headers={"content-type": ctype})
                codes.append(r.status_code)
                if r.status_code == 200:
                    assert seen[-1] == body
            return codes

    return asyncio.run(main())


@pytest.mark.parametrize("post", [wsgi_codes, asgi_codes], ids=["wsgi", "asgi"])
@pytest.mark.parametrize("kind", list(UNREADABLE))
def test_unreadable_body_counts_per_client(kind: str, post: Any, clock: FakeClock,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """Rotating the user name in a body the form reader cannot read gains nothing: the
    requests are counted under their client, and a warning says so once."""
    limiter = login_limiter("form:username", clock)
    with caplog.at_level(logging.WARNING, "throttlekit"):
        codes = post(limiter, UNREADABLE[kind], ["u1", "u2", "u3", "u4"])
    assert codes == [200, 200, 429, 429]
    warnings = [r for r in caplog.records if "could not read its key" in r.getMessage()]
    assert len(warnings) == 1 and "'login'" in warnings[0].getMessage()


@pytest.mark.parametrize("post", [wsgi_codes, asgi_codes], ids=["wsgi", "asgi"])
def test_65k_login_form_is_limited_per_client(post: Any, clock: FakeClock) -> None:
    """The reported bypass: a 65 KiB body with username=alice is limited (2/minute)."""
    limiter = login_limiter(form_key_callable, clock)
    assert post(limiter, padded, ["alice"] * 4) == [200, 200, 429, 429]


def test_fallback_bucket_is_not_a_user_name(clock: FakeClock) -> None:
    """The per-client bucket of unreadable requests is its own: a user name equal to its
    discriminator does not share it (and neither do real user names)."""
    limiter = login_limiter("form:username", clock)
    verdicts = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        verdicts.append(environ["throttlekit.verdict"])
        start_response("200 OK", [])
        return [b""]

    c = WerkzeugClient(WSGIMiddleware(app, limiter))
    assert c.post("/login", data=padded("x")[1],
                  content_type="application/x-www-form-urlencoded").status_code == 200
    fallback = verdicts[-1].policies[0][1]
    assert fallback.remaining == 1
    for name in ("#client:127.0.0.1", "127.0.0.1"):
        ctype, body = urlencoded(name)
        for _ in range(2):
            assert c.post("/login", data=body, content_type=ctype).status_code == 200
    # the unreadable bucket still has its one request left
    assert c.post("/login", data=padded("x")[1],
                  content_type="application/x-www-form-urlencoded").status_code == 200


@pytest.mark.parametrize("post", [wsgi_codes, asgi_codes], ids=["wsgi", "asgi"])
def test_refuse_mode_refuses_unreadable_bodies(post: Any, clock: FakeClock) -> None:
    limiter = login_limiter("form:username", clock, on_unreadable="refuse")
    assert post(limiter, padded, ["alice"]) == [429]
    # readable bodies are counted per user name as usual
    assert post(limiter, urlencoded, USERS) == CODES


def test_refuse_mode_answers_a_plain_429(clock: FakeClock) -> None:
    limiter = login_limiter("form:username", clock, on_unreadable="refuse")
    c = WerkzeugClient(WSGIMiddleware(lambda e, s: [], limiter))
    r = c.post("/login", data=padded("a")[1], content_type="application/x-www-form-urlencoded")
    assert r.status_code == 429 and "Retry-After" in r.headers


def ok_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_a_key_of_none_from_a_readable_request_still_skips_the_rule(clock: FakeClock) -> None:
    """No user name in a readable form (or no body at all): the rule does not apply."""
    limiter = login_limiter("form:username", clock)
    c = WerkzeugClient(WSGIMiddleware(ok_app, limiter))
    for _ in range(5):
        r = c.post("/login", data=b"other=1", content_type="application/x-www-form-urlencoded")
        assert r.status_code == 200
        assert c.post("/login").status_code == 200
        assert c.post("/login", json={"password": "x"}).status_code == 200


def test_raising_key_function_counts_per_client(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)
    limiter.throttle("t", "2/minute", key=lambda r: r.headers["x-missing"])
    c = WerkzeugClient(WSGIMiddleware(ok_app, limiter))
    assert [c.get("/").status_code for _ in range(3)] == [200, 200, 429]
    refusing = Limiter(clock=clock)
    refusing.throttle("t", "2/minute", key=lambda r: r.headers["x-missing"],
                      on_unreadable="refuse")
    c = WerkzeugClient(WSGIMiddleware(ok_app, refusing))
    assert c.get("/").status_code == 429


def test_decorator_on_unreadable(clock: FakeClock) -> None:
    """The decorators take on_unreadable too (Flask view, padded body)."""
    for mode, codes in (("client", [200, 200, 429]), ("refuse", [429, 429, 429])):
        limiter = Limiter(clock=clock, strategy="fixed_window")
        app = Flask(__name__)
        FlaskThrottle(app, limiter)

        @app.post("/login")
        @limiter.limit("2/minute", key="form:username", on_unreadable=mode)
        def login() -> str:
            return "ok"

        c = app.test_client()
        got = [c.post("/login", data=padded(f"u{i}")[1],
                      content_type="application/x-www-form-urlencoded").status_code
               for i in range(3)]
        assert got == codes, mode


def test_on_unreadable_is_validated() -> None:
    limiter = Limiter()
    with pytest.raises(ConfigError, match=r"on_unreadable.*'ignore'"):
        limiter.throttle("t", "1/minute", key="form:u", on_unreadable="ignore")
    with pytest.raises(ConfigError, match="on_unreadable"):
        limiter.limit("1/minute", on_unreadable=None)  # type: ignore[arg-type]


def test_rules_file_on_unreadable(tmp_path: Any, clock: FakeClock) -> None:
    good = tmp_path / "rules.toml"
    good.write_text('[[throttle]]\nname = "login"\nrates = "2/minute"\nmethod = "POST"\n'
                    'key = "form:username"\non_unreadable = "refuse"\n')
    limiter = Limiter(clock=clock)
    limiter.load_rules(good)
    assert wsgi_codes(limiter, padded, ["alice"]) == [429]
    bad = tmp_path / "bad.toml"
    bad.write_text('[[throttle]]\nname = "login"\nrates = "2/minute"\n'
                   'key = "form:username"\non_unreadable = "open"\n')
    with pytest.raises(ConfigError, match=r"bad.toml:5: .*on_unreadable.*'open'"):
        Limiter(clock=clock).load_rules(bad)


def test_plus_json_and_charset_bodies_are_read(clock: FakeClock) -> None:
    """``application/*+json`` (read by Flask as JSON) and ``application/json; charset=...``
    bodies give the form its fields."""
    limiter = login_limiter("form:username", clock)
    for kind in ("plus-json", "json-charset"):
        limiter.reset_rules("alice")
        limiter.reset_rules("bob")
        assert wsgi_codes(limiter, BODIES[kind], USERS) == CODES
        assert asgi_codes(limiter, BODIES[kind], USERS) == [429] * 2 + [200, 429]


@pytest.mark.parametrize("post", [wsgi_codes, asgi_codes], ids=["wsgi", "asgi"])
@pytest.mark.parametrize("kind", ["urlencoded", "multipart"])
def test_repeated_user_name_field_is_not_a_bypass(kind: str, post: Any,
                                                  clock: FakeClock) -> None:
    """``username=x1&username=alice``: Django and Starlette views see the last value, Flask
    the first. A rotating first value must not buy fresh quota for alice: the ambiguous
    field is unreadable and the requests are counted per client."""
    def make(user: str) -> tuple[str, bytes]:
        if kind == "urlencoded":
            return "application/x-www-form-urlencoded", f"username={user}&username=alice".encode()
        b = BOUNDARY.encode()
        part = b"--" + b + b'\r\nContent-Disposition: form-data; name="username"\r\n\r\n'
        return (f"multipart/form-data; boundary={BOUNDARY}",
                part + user.encode() + b"\r\n" + part + b"alice\r\n--" + b + b"--\r\n")

    limiter = login_limiter("form:username", clock)
    assert post(limiter, make, ["x1", "x2", "x3"]) == [200, 200, 429]


@pytest.mark.parametrize("kind", ["allow2ban", "fail2ban"])
def test_ban_rule_with_an_unreadable_form_key_counts_per_client(kind: str) -> None:
    """A ban rule keyed on the form does not let a body it cannot read past it: such
    requests count under their client (``#client:<ip>``), and the client is banned."""
    limiter = Limiter(clock=FakeClock())
    getattr(limiter, kind)("logins", match=lambda r: r.path == "/login", maxretry=2,
                           findtime=60, bantime=600, key="form:username")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    c = WerkzeugClient(WSGIMiddleware(app, limiter))
    padded = b"username=victim&pad=" + b"x" * (70 * 1024)  # over max_form_bytes
    got = [c.post("/login", data=padded, content_type="application/x-www-form-urlencoded",
                  environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code for _ in range(4)]
    assert got[-1] == 403  # banned, not skipped
    assert any(b.key == f"{kind}:logins:#client:198.51.100.7" for b in limiter.blocked())
    other = c.post("/login", data=padded, content_type="application/x-www-form-urlencoded",
                   environ_base={"REMOTE_ADDR": "198.51.100.8"})
    assert other.status_code == (200 if kind == "allow2ban" else 403)  # counted, not banned
    assert not any(b.key.endswith("198.51.100.8") for b in limiter.blocked())
