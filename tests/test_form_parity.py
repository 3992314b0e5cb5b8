"""A form-keyed login throttle reads the form as the view does (hardening, second round of
items 1-3), and no client string can make the store call fail.

A. Parsers disagree on multipart bodies browsers never send: a ``charset=utf-7``
   Content-Type with a field named ``+AHU-sername`` (Starlette reads "username"), a part
   with ``filename*`` (Starlette: a text field; werkzeug: a file), ``filename=""`` (Django:
   a field), two Content-Disposition headers (Django and Starlette take the second), a
   base64 Content-Transfer-Encoding with junk characters (Django decodes them all to the
   same name). Had throttlekit parsed them otherwise than the view, it would have seen no
   ``username`` in a readable form and skipped the rule: unlimited guesses.

   - Integrations that know their framework (Django, Flask, Starlette, FastAPI) read the
     form with the framework's own parser: the limiter sees the fields the view sees.
   - The framework-neutral WSGIMiddleware / ASGIMiddleware read multipart strictly: any of
     these anomalies makes the form unreadable, so ``on_unreadable`` applies (counted per
     client, or refused).

B. A JSON user name holding a lone surrogate (``"\\ud800"``) is not valid UTF-8: its key is
   hashed like an over-long key, so Redis never sees an unencodable key, the breaker stays
   closed and a blocked client stays blocked.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import types
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import httpx
import pytest
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.http import JsonResponse
from django.urls import path
from fastapi import FastAPI, Form
from flask import Flask, request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from werkzeug.test import Client as WerkzeugClient

from backends import redis as redis_backend
from django_config import fresh_urlconf, throttlekit_settings  # configures Django first
from throttlekit import ASGIMiddleware, Limiter, WSGIMiddleware
from throttlekit.contrib.fastapi import Throttle as FastAPIThrottle
from throttlekit.contrib.flask import Throttle as FlaskThrottle
from throttlekit.contrib.starlette import ThrottleMiddleware
from throttlekit.testing import FakeClock

# -- the bodies ----------------------------------------------------------------------------

B = "XyZb"
CT = f"multipart/form-data; boundary={B}"
END = b"--" + B.encode() + b"--\r\n"


def part(disposition: bytes, value: bytes, extra: bytes = b"") -> bytes:
    return (b"--" + B.encode() + b"\r\nContent-Disposition: " + disposition + b"\r\n" + extra
            + b"\r\n" + value + b"\r\n")


def password() -> bytes:
    return part(b'form-data; name="password"', b"guess")


def plain(user: str) -> tuple[str, bytes]:
    return CT, part(b'form-data; name="username"', user.encode()) + password() + END


def utf7_name(user: str) -> tuple[str, bytes]:
    return CT + "; charset=utf-7", (
        part(b'form-data; name="+AHU-sername"', user.encode()) + password() + END
    )


def filename_star(user: str) -> tuple[str, bytes]:
    return CT, (part(b"form-data; name=\"username\"; filename*=utf-8''a.txt", user.encode())
                + password() + END)


def filename_empty(user: str) -> tuple[str, bytes]:
    return CT, part(b'form-data; name="username"; filename=""', user.encode()) + password() + END


def two_dispositions(user: str) -> tuple[str, bytes]:
    return CT, (b"--" + B.encode() + b'\r\nContent-Disposition: form-data; name="decoy"\r\n'
                b'Content-Disposition: form-data; name="username"\r\n\r\n' + user.encode()
                + b"\r\n" + password() + END)


_JUNK = iter(range(10**6))


def base64_junk(user: str) -> tuple[str, bytes]:
    """``victim`` in base64 behind a junk character that changes with every request (Django
    skips it: each request the same name for the view, a new one for a naive reader)."""
    import base64

    junk = "._-~!*"[next(_JUNK) % 6].encode()
    return CT, (part(b'form-data; name="username"', junk + base64.b64encode(user.encode()),
                     b"Content-Transfer-Encoding: base64\r\n") + password() + END)


VARIANTS: dict[str, Callable[[str], tuple[str, bytes]]] = {
    "utf7-name": utf7_name, "filename*": filename_star, "filename-empty": filename_empty,
    "two-content-dispositions": two_dispositions, "base64": base64_junk,
}

# -- the apps: each reports the user name its framework parsed, and the body's sha256 -----


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def login_rule(clock: FakeClock, on_unreadable: str = "client") -> Limiter:
    limiter = Limiter(clock=clock, strategy="fixed_window")
    limiter.throttle("login", "3/minute", key="form:username",
                     match=lambda r: r.method == "POST", on_unreadable=on_unreadable)
    return limiter


def user_of(value: Any) -> str | None:
    return value if isinstance(value, str) else None


async def starlette_login(req: Request) -> JSONResponse:
    body = await req.body()
    form = await req.form()
    return JSONResponse({"user": user_of(form.get("username")), "sha": sha(body)})


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/login", starlette_login, methods=["POST"])])


def django_login(req: Any) -> JsonResponse:
    user = user_of(req.POST.get("username"))
    return JsonResponse({"user": user, "sha": sha(req.body)})


async def django_alogin(req: Any) -> JsonResponse:
    return django_login(req)


def wsgi_echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """A plain WSGI app: the body it received (whoever parses it afterwards)."""
    import json

    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"user": None, "sha": sha(body)}).encode()]


Result = tuple[int, dict[str, Any]]
Poster = Callable[[list[tuple[str, bytes]]], list[Result]]


def asgi_poster(app: Any) -> Poster:
    def post(bodies: list[tuple[str, bytes]]) -> list[Result]:
        async def main() -> list[Result]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                out = []
                for ctype, body in bodies:
                    r = await c.post("/login", content=body, headers={"content-type": ctype})
                    out.append((r.status_code, r.json() if r.status_code == 200 else {}))
                return out
        return asyncio.run(main())
    return post


def wsgi_poster(app: Any) -> Poster:
    def post(bodies: list[tuple[str, bytes]]) -> list[Result]:
        c = WerkzeugClient(app)
        out = []
        for ctype, body in bodies:
            r = c.post("/login", data=body, content_type=ctype)
            out.append((r.status_code, r.get_json() if r.status_code == 200 else {}))
        return out
    return post


@pytest.fixture
def urls() -> Iterator[types.ModuleType]:
    with fresh_urlconf() as module:
        yield module


def django_poster(limiter: Limiter, urls: Any, *, is_async: bool) -> Poster:
    """Django's own WSGI / ASGI handler, the bytes as sent (Django's test client would
    transcode a body to the Content-Type's charset)."""
    urls.urlpatterns = [path("login", django_alogin if is_async else django_login)]

    def post(bodies: list[tuple[str, bytes]]) -> list[Result]:
        with throttlekit_settings(LIMITER=limiter):
            if is_async:
                return asgi_poster(ASGIHandler())(bodies)
            return wsgi_poster(WSGIHandler())(bodies)
    return post


def fastapi_poster(limiter: Limiter) -> Poster:
    """The attacker's FastAPI app: a decorated endpoint keyed on the form, ``Form()``
    parameters (FastAPI parses the form with Starlette's parser)."""
    app = FastAPI()
    FastAPIThrottle(app, limiter)

    @app.post("/login")
    @limiter.limit("3/minute", key="form:username")
    async def login(request: Request, username: Annotated[str, Form()],
                    password: Annotated[str, Form()] = "") -> dict[str, Any]:
        # FastAPI parsed the form from the stream: no body() left, the fields are the proof
        return {"user": username, "sha": None, "password": password}

    return asgi_poster(app)  # (a username FastAPI does not read as text: 422)


def flask_poster(limiter: Limiter) -> Poster:
    app = Flask(__name__)
    FlaskThrottle(app, limiter)

    @app.post("/login")
    @limiter.limit("3/minute", key="form:username")
    def login() -> Any:
        data = request.get_data(cache=True)
        return {"user": user_of(request.form.get("username")), "sha": sha(data)}

    return wsgi_poster(app)


FRAMEWORKS = ["starlette", "fastapi", "django", "django-async", "flask"]


def framework_poster(name: str, clock: FakeClock, urls: Any) -> Poster:
    if name == "fastapi":
        return fastapi_poster(Limiter(clock=clock, strategy="fixed_window"))
    if name == "flask":
        return flask_poster(Limiter(clock=clock, strategy="fixed_window"))
    limiter = login_rule(clock)
    if name == "starlette":
        app = starlette_app()
        app.add_middleware(ThrottleMiddleware, limiter=limiter)
        return asgi_poster(app)
    return django_poster(limiter, urls, is_async=name == "django-async")


# -- A, in the integrations that know their framework ----------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_framework_reads_the_form_as_its_view(framework: str, variant: str, clock: FakeClock,
                                             urls: Any) -> None:
    """Three plain logins for "victim", then the variant: whenever the view would take
    the variant's user name for "victim", the limiter does too, and refuses it. The view
    received every body it answered, whole."""
    make = VARIANTS[variant]
    # what this framework's view makes of the variant (a fresh limiter: it is allowed)
    probe = framework_poster(framework, clock, urls)([make("victim")])[0]
    view_sees_victim = probe[0] == 200 and probe[1]["user"] == "victim"

    post = framework_poster(framework, clock, urls)
    bodies = [plain("victim")] * 3 + [make("victim"), make("victim")]
    results = post(bodies)
    assert [code for code, _ in results[:3]] == [200, 200, 200]
    for (code, echo), (_, body) in zip(results, bodies, strict=True):
        if code == 200 and echo["sha"] is not None:
            assert echo["sha"] == sha(body)  # the view got the body, whole
        elif code == 200:
            assert echo["password"] == "guess"  # FastAPI: the fields after the user name
    for code, echo in results[3:]:
        assert not (code == 200 and echo["user"] == "victim")  # a 4th guess: the bypass
    if view_sees_victim:
        assert [code for code, _ in results[3:]] == [429, 429]


def test_the_variants_do_fool_some_parser(clock: FakeClock, urls: Any) -> None:
    """The matrix above is not vacuous: Starlette takes UTF-7 and ``filename*`` names for
    "username", Django ``filename=""`` and base64 parts; each is refused after three."""
    import django

    seen = {}
    pairs = [("starlette", "utf7-name"), ("starlette", "filename*"), ("fastapi", "utf7-name"),
             ("django", "filename-empty"), ("django", "base64"),
             ("django", "two-content-dispositions"), ("starlette", "two-content-dispositions")]
    if django.VERSION >= (6, 1):  # no longer decodes base64 form fields (seen with 6.1.3)
        pairs.remove(("django", "base64"))
    for framework, variant in pairs:
        post = framework_poster(framework, clock, urls)
        results = post([VARIANTS[variant]("victim")] * 4)
        seen[framework, variant] = [code for code, _ in results]
        assert results[0][1]["user"] == "victim", (framework, variant)
    assert all(codes == [200, 200, 200, 429] for codes in seen.values()), seen


# -- A, in the framework-neutral middleware: strict multipart ---------------------------------


def neutral_posters(limiter: Limiter) -> dict[str, Poster]:
    return {
        "wsgi": wsgi_poster(WSGIMiddleware(wsgi_echo, limiter)),
        "asgi": asgi_poster(ASGIMiddleware(starlette_app(), limiter)),
    }


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("middleware", ["wsgi", "asgi"])
def test_neutral_middleware_counts_anomalous_forms_per_client(
    middleware: str, variant: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever the app behind parses out of it, an anomalous multipart body is unreadable
    for WSGIMiddleware/ASGIMiddleware: counted per client, the 4th attempt refused; the
    app received each allowed body whole."""
    post = neutral_posters(login_rule(clock))[middleware]
    bodies = [VARIANTS[variant]("victim") for _ in range(4)]
    with caplog.at_level(logging.WARNING, "throttlekit"):
        results = post(bodies)
    assert [code for code, _ in results] == [200, 200, 200, 429]
    for (_, echo), (_, body) in zip(results[:3], bodies, strict=False):
        assert echo["sha"] == sha(body)
    assert any("could not read its key" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("middleware", ["wsgi", "asgi"])
def test_neutral_middleware_refuse_mode(middleware: str, variant: str,
                                        clock: FakeClock) -> None:
    """``on_unreadable="refuse"``: after three plain attempts for "victim", the variant is
    refused at once (and so it is before them); plain bodies are counted per user name."""
    post = neutral_posters(login_rule(clock, on_unreadable="refuse"))[middleware]
    make = VARIANTS[variant]
    results = post([make("victim"), plain("victim"), plain("victim"), plain("bob"),
                    plain("victim"), make("victim")])
    assert [code for code, _ in results] == [429, 200, 200, 200, 200, 429]


ANOMALIES = {
    "charset on the Content-Type": (CT + "; charset=utf-8", plain("u")[1]),
    "two boundaries": (CT + "; boundary=other", plain("u")[1]),
    "name*": (CT, part(b"form-data; name*=utf-8''username", b"u") + END),
    "name twice": (CT, part(b'form-data; name="decoy"; name="username"', b"u") + END),
    "no name": (CT, part(b'form-data; filename="a.txt"', b"u") + END),
    "not form-data": (CT, part(b'attachment; name="username"', b"u") + END),
    "backslash in a name": (CT, part(b'form-data; name="user\\name"', b"u") + END),
    "quoted-printable": (CT, part(b'form-data; name="username"', b"u",
                                  b"Content-Transfer-Encoding: quoted-printable\r\n") + END),
    "a part in UTF-7": (CT, part(b'form-data; name="username"', b"+AHU-",
                                 b"Content-Type: text/plain; charset=utf-7\r\n") + END),
    "folded header": (CT, b"--" + B.encode() + b"\r\nContent-Disposition: form-data;\r\n"
                      b' name="username"\r\n\r\nu\r\n' + END),
    "LF framing": (CT, b"--" + B.encode() + b'\nContent-Disposition: form-data; '
                   b'name="username"\n\nu\n--' + B.encode() + b"--\n"),
    "no closing boundary": (CT, part(b'form-data; name="username"', b"u")),
    "a preamble": (CT, b"preamble\r\n" + plain("u")[1]),
    "an epilogue": (CT, plain("u")[1] + b"epilogue"),
    "boundary inside a part": (CT, part(b'form-data; name="username"', b"u\r\n--" + B.encode()
                                        + b"x") + END),
    "urlencoded in UTF-7": ("application/x-www-form-urlencoded; charset=utf-7",
                            b"+AHU-sername=u"),
}


@pytest.mark.parametrize("name", list(ANOMALIES))
def test_strict_multipart_anomalies_are_unreadable(name: str, clock: FakeClock) -> None:
    """Each anomaly makes the form unreadable (refused under ``on_unreadable="refuse"``),
    in both middlewares."""
    ctype, body = ANOMALIES[name]
    for post in neutral_posters(login_rule(clock, on_unreadable="refuse")).values():
        assert post([(ctype, body)])[0][0] == 429, name


def test_browser_multipart_is_read(clock: FakeClock) -> None:
    """What browsers send stays readable in the neutral middleware: text fields, a file
    (with its own Content-Type), a non-ASCII name, a quoted boundary, an empty field."""
    body = (part(b'form-data; name="username"', b"victim")
            + part(b'form-data; name="caf\xc3\xa9"', b"x")
            + part(b'form-data; name="empty"', b"")
            + part(b'form-data; name="avatar"; filename="a.png"', bytes(range(256)),
                   b"Content-Type: image/png\r\n") + END)
    quoted = f'multipart/form-data; boundary="{B}"'
    for ctype in (CT, quoted, CT.replace("; ", ";")):
        for post in neutral_posters(login_rule(clock, on_unreadable="refuse")).values():
            codes = [code for code, _ in post([(ctype, body)] * 4)]
            assert codes == [200, 200, 200, 429]  # counted per user name, not refused
            clock.advance(60)


# -- B: a key that is not valid UTF-8 text ------------------------------------------------------


@pytest.fixture
def redis_ctx() -> Iterator[redis_backend.Context]:
    with redis_backend.session() as ctx:
        yield ctx


SURROGATE_BODY = b'{"username": "\\ud800", "password": "x"}'


def redis_limiter(ctx: redis_backend.Context, clock: FakeClock) -> Limiter:
    """Redis-backed: a login throttle, a fail2ban and a concurrency limit keyed on the user
    name, and a per-client limit of 5/minute."""
    limiter = Limiter(ctx.storage(), clock=clock, strategy="fixed_window",
                      on_storage_error="local")
    limiter.throttle("login", "3/minute", key="form:username",
                     match=lambda r: r.path == "/login")
    limiter.fail2ban("bad-login", key="form:username", maxretry=2, findtime=60,
                     bantime=600, match=lambda r: r.path == "/login"
                     and r.headers.get("x-bad") == "1")
    limiter.concurrency("one-login", 2, key=lambda r: r.form.get("username"),
                        match=lambda r: r.path == "/login")
    limiter.throttle("api", "5/minute", match=lambda r: r.path == "/api")
    return limiter


def surrogate_wsgi(limiter: Limiter) -> Callable[[str, str, dict[str, str]], int]:
    c = WerkzeugClient(WSGIMiddleware(wsgi_echo, limiter))

    def send(path_: str, addr: str, headers: dict[str, str]) -> int:
        env = {"REMOTE_ADDR": addr}
        if path_ == "/login":
            r = c.post(path_, data=SURROGATE_BODY, content_type="application/json",
                       headers=headers, environ_base=env)
        else:
            r = c.get(path_, headers=headers, environ_base=env)
        r.close()  # the response ends: the concurrency lease is released
        return r.status_code
    return send


def surrogate_asgi(limiter: Limiter) -> Callable[[str, str, dict[str, str]], int]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    wrapped = ASGIMiddleware(app, limiter)

    def send(path_: str, addr: str, headers: dict[str, str]) -> int:
        async def main() -> int:
            transport = httpx.ASGITransport(app=wrapped, client=(addr, 5000))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                if path_ == "/login":
                    r = await c.post(path_, content=SURROGATE_BODY,
                                     headers={"content-type": "application/json", **headers})
                else:
                    r = await c.get(path_, headers=headers)
                return r.status_code
        return asyncio.run(main())
    return send


@pytest.mark.redis
@pytest.mark.parametrize("make", [surrogate_wsgi, surrogate_asgi], ids=["wsgi", "asgi"])
def test_surrogate_user_name_never_fails_the_store(
    make: Any, redis_ctx: redis_backend.Context, clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A blocked client posting ``{"username": "\\ud800"}`` stays blocked; the user name is
    throttled and banned like any other; another client's Redis-backed limit stays exact;
    no storage error is logged and no decision is degraded."""
    limiter = redis_limiter(redis_ctx, clock)
    send = make(limiter)
    with caplog.at_level(logging.WARNING, "throttlekit"):
        limiter.block("192.0.2.66", ttl=600, reason="test")
        assert [send("/login", "192.0.2.66", {}) for _ in range(3)] == [403] * 3
        assert send("/api", "192.0.2.66", {}) == 403
        # the surrogate name is counted in Redis like any other: 3/minute
        assert [send("/login", "192.0.2.7", {}) for _ in range(4)] == [200, 200, 200, 429]
        # and banned: two bad attempts (refused), then banned from everything
        assert send("/login", "192.0.2.8", {"x-bad": "1"}) == 403
        assert send("/login", "192.0.2.8", {"x-bad": "1"}) == 403
        assert any(b.key.startswith("fail2ban:bad-login:#sha256:") for b in limiter.blocked())
        # another client's limit, in Redis, exact
        assert [send("/api", "192.0.2.9", {}) for _ in range(6)] == [200] * 5 + [429]
        assert send("/api", "192.0.2.66", {}) == 403  # still blocked
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert not any("storage" in r.getMessage() for r in caplog.records)


@pytest.mark.redis
def test_api_keys_that_are_not_utf8(redis_ctx: redis_backend.Context,
                                    clock: FakeClock) -> None:
    """``hit``/``test``/``reset``, ``block``/``unblock`` of a ban and ``reset_rules`` take a
    key with a lone surrogate, on Redis: hashed, found again, never a store error."""
    limiter = Limiter(redis_ctx.storage(), clock=clock)
    key = "user-\udcff"
    assert [limiter.hit(key, "2/minute").allowed for _ in range(3)] == [True, True, False]
    assert not limiter.test(key, "2/minute").allowed
    limiter.reset(key)
    assert limiter.test(key, "2/minute").allowed
    other = limiter.hit("\ud800", "1/minute")  # a different key
    assert other.allowed and not other.degraded
    limiter.fail2ban("login", match=lambda r: True, key=lambda r: key, maxretry=1,
                     findtime=60, bantime=60)

    def ok(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    client = WerkzeugClient(WSGIMiddleware(ok, limiter))
    client.get("/", environ_base={"REMOTE_ADDR": "198.51.100.7"})  # trips the ban
    stored = [b.key for b in limiter.blocked()]
    assert len(stored) == 1 and stored[0].startswith("fail2ban:login:#sha256:")
    assert client.get("/", environ_base={"REMOTE_ADDR": "198.51.100.8"}).status_code == 403
    assert limiter.unblock(key) is True
    assert limiter.blocked() == []
    limiter.reset_rules(key)
    assert limiter.hit("a-healthy-key", "1/minute").degraded is False
