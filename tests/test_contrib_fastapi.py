"""throttlekit.contrib.fastapi / .starlette: middleware, decorated endpoints, Depends, OpenAPI."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from throttlekit import ConfigError, Decision, Limiter
from throttlekit.contrib.fastapi import Throttle
from throttlekit.contrib.starlette import ThrottleMiddleware
from throttlekit.testing import FakeClock


def get(app: Any, *paths: str, **kw: Any) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return [await c.get(p, **kw) for p in paths]
    return asyncio.run(main())


def codes(app: Any, *paths: str) -> list[int]:
    return [r.status_code for r in get(app, *paths)]


@pytest.fixture
def limiter(clock: FakeClock) -> Limiter:
    return Limiter(clock=clock, strategy="fixed_window")


class Item(BaseModel):
    id: int
    name: str


def test_decorated_endpoints_keep_params_models_and_openapi(limiter: Limiter) -> None:
    """Path/query params and response models work; the 429 is in the OpenAPI schema."""
    app = FastAPI()

    @app.get("/items/{item_id}")
    @limiter.limit("2/minute")
    async def read_item(item_id: int, q: str | None = None) -> Item:
        """Read one item."""
        return Item(id=item_id, name=q or "-")

    Throttle(app, limiter)
    r1, r2, r3 = get(app, "/items/1?q=a", "/items/2", "/items/3")
    assert r1.json() == {"id": 1, "name": "a"} and r2.status_code == 200
    assert r3.status_code == 429 and r3.headers["retry-after"] == "60"
    op = get(app, "/openapi.json")[0].json()["paths"]["/items/{item_id}"]["get"]
    assert "429" in op["responses"] and "Retry-After" in op["responses"]["429"]["headers"]
    assert [p["name"] for p in op["parameters"]] == ["item_id", "q"]
    assert op["description"] == "Read one item."


def test_sync_endpoint_and_decision_in_request_state(limiter: Limiter) -> None:
    """Sync endpoints are limited too; request.state.throttle is the Decision."""
    app = FastAPI()

    @app.get("/s")
    @limiter.limit("2/minute")
    def sync(request: Request) -> dict[str, int]:
        return {"left": request.state.throttle.remaining}

    Throttle(app, limiter)
    rs = get(app, "/s", "/s", "/s")
    assert [r.status_code for r in rs] == [200, 200, 429]
    assert [rs[0].json(), rs[1].json()] == [{"left": 1}, {"left": 0}]


def test_without_middleware_decorator_raises_native_429(limiter: Limiter) -> None:
    """A Request parameter is enough: the breach is a 429 with our headers, and, as every
    refusal in a FastAPI app without Throttle (docs/frameworks.md), the refusal's body where
    FastAPI's default handler would have answered {"detail": ...} (it did until another
    endpoint of the app, without a Request parameter, had been refused)."""
    app = FastAPI()

    @app.get("/")
    @limiter.limit("1/minute")
    async def index(request: Request) -> dict[str, str]:
        return {"ok": "yes"}

    r1, r2 = get(app, "/", "/")
    assert r1.status_code == 200
    assert r2.status_code == 429
    assert r2.headers["content-type"] == "text/plain; charset=utf-8"
    assert r2.text.startswith("Too Many Requests")
    assert r2.headers["retry-after"] == "60" and "ratelimit-policy" in r2.headers


def test_depends_on_route_and_router(limiter: Limiter) -> None:
    """Depends(limiter.depends(...)) limits a route; on a router, each route apart."""
    app = FastAPI()
    router = APIRouter(dependencies=[Depends(limiter.depends("1/minute"))])

    @router.get("/a")
    async def a() -> int:
        return 1

    @router.get("/b")
    async def b() -> int:
        return 2

    @app.get("/dep")
    async def dep(d: Decision = Depends(limiter.depends("2/minute"))) -> int:  # noqa: B008
        return d.remaining

    app.include_router(router, prefix="/r")
    rs = get(app, "/r/a", "/r/a", "/r/b", "/dep", "/dep", "/dep")
    assert [r.status_code for r in rs] == [200, 429, 200, 200, 200, 429]
    assert [rs[3].json(), rs[4].json()] == [1, 0]
    assert "ratelimit" in rs[0].headers  # without the middleware, the dependency adds them
    paths = get(app, "/openapi.json")[0].json()["paths"]
    assert "429" in paths["/r/a"]["get"]["responses"]  # documented even without Throttle


def test_default_limits_reach_included_routers(limiter: Limiter) -> None:
    """Default limits apply to every route, routers included, each its own counter."""
    app = FastAPI()
    router = APIRouter()

    @router.get("/in-router/{n}")
    async def routed(n: int) -> int:
        return n

    @app.get("/top")
    async def top() -> int:
        return 0

    app.include_router(router)
    Throttle(app, limiter, default_limits="2/minute")
    assert codes(app, "/in-router/1", "/in-router/2", "/in-router/3") == [200, 200, 429]
    assert codes(app, "/top", "/top", "/top") == [200, 200, 429]
    schema = get(app, "/openapi.json")[0].json()  # /openapi.json was limited too: fresh app
    assert "429" in schema["paths"]["/top"]["get"]["responses"]


def test_application_limit_counts_all_routes(limiter: Limiter) -> None:
    """application_limits is one counter per client across every route."""
    app = FastAPI()
    for name in ("x", "y"):
        app.get(f"/{name}")(lambda n=name: n)
    Throttle(app, limiter, application_limits="3/minute")
    assert codes(app, "/x", "/y", "/x", "/y") == [200, 200, 200, 429]


def test_exempt_endpoint(limiter: Limiter) -> None:
    """An exempt endpoint skips default limits."""
    app = FastAPI()

    @app.get("/health")
    @limiter.exempt
    async def health() -> str:
        return "ok"

    Throttle(app, limiter, default_limits="1/minute")
    assert set(codes(app, *["/health"] * 4)) == {200}


def test_starlette_middleware_with_mounts_and_rules(limiter: Limiter) -> None:
    """Plain Starlette: endpoints inside a Mount are found; the limiter's rules run first."""
    limiter.blocklist("bad", lambda r: r.path == "/api/blocked")

    @limiter.limit("1/minute")
    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hi")

    async def blocked(request: Any) -> PlainTextResponse:
        return PlainTextResponse("never")

    app = Starlette(routes=[Mount("/api", routes=[Route("/hello", hello),
                                                  Route("/blocked", blocked)])])
    app.add_middleware(ThrottleMiddleware, limiter=limiter)
    assert codes(app, "/api/hello", "/api/hello", "/api/blocked") == [200, 429, 403]


def test_async_endpoint_uses_async_storage_calls(limiter: Limiter) -> None:
    """On a remote store, an async endpoint's limit goes through aapply, never apply."""
    from throttlekit.storage import MemoryStorage

    calls: list[str] = []

    class Remote(MemoryStorage):
        remote = True

        def apply(self, *a: Any, **k: Any) -> Any:
            calls.append("sync")
            return super().apply(*a, **k)

        async def aapply(self, *a: Any, **k: Any) -> Any:
            calls.append("async")
            return super().apply(*a, **k)

    lim = Limiter(Remote(), clock=FakeClock())
    app = FastAPI()

    @app.get("/")
    @lim.limit("5/minute")
    async def index() -> int:
        return 1

    Throttle(app, lim, default_limits="5/minute")
    assert codes(app, "/", "/") == [200, 200]
    assert calls and set(calls) == {"async"}


def test_disabled_limiter(clock: FakeClock) -> None:
    """enabled=False lets everything through the middleware and the decorators."""
    lim = Limiter(clock=clock, enabled=False)
    app = FastAPI()

    @app.get("/")
    @lim.limit("1/minute")
    async def index() -> int:
        return 1

    Throttle(app, lim, default_limits="1/minute")
    assert set(codes(app, "/", "/", "/")) == {200}




def test_endpoint_without_request_and_without_middleware_answers_429_per_client(
        limiter: Limiter) -> None:
    """No Request parameter and no middleware: a native 429 with headers, counted per client."""
    app = FastAPI()

    @app.get("/items/{i}")
    @limiter.limit("2/minute")
    async def item(i: int) -> dict[str, int]:
        return {"i": i}

    @app.get("/sync")
    @limiter.limit("1/minute")
    def sync() -> dict[str, int]:
        return {"s": 1}

    rs = get(app, "/items/1", "/items/2", "/items/3", "/sync", "/sync")
    assert [r.status_code for r in rs] == [200, 200, 429, 200, 429]
    assert rs[2].headers["retry-after"] == "60" and rs[0].json() == {"i": 1}

    async def other_client() -> int:
        transport = httpx.ASGITransport(app=app, client=("10.9.8.7", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return (await c.get("/items/4")).status_code
    assert asyncio.run(other_client()) == 200
    op = app.openapi()["paths"]["/items/{i}"]["get"]
    assert [p["name"] for p in op["parameters"]] == ["i"]
    assert asyncio.run(item(5)) == {"i": 5}  # still callable directly


def test_openapi_documents_429_without_throttle(limiter: Limiter) -> None:
    """Routes limited by depends() or the decorator document the 429 without Throttle."""
    app = FastAPI()

    @app.get("/dep", dependencies=[Depends(limiter.depends("2/minute"))])
    async def dep() -> dict[str, int]:
        return {}

    @app.get("/dec")
    @limiter.limit("2/minute")
    async def dec() -> dict[str, int]:
        return {}

    @app.get("/free")
    async def free() -> dict[str, int]:
        return {}

    paths = get(app, "/openapi.json")[0].json()["paths"]
    assert {p: "429" in o["get"]["responses"] for p, o in paths.items()} == {
        "/dep": True, "/dec": True, "/free": False}


def test_rules_file_for_starlette_middleware_and_fastapi_throttle(tmp_path: Any) -> None:
    """ThrottleMiddleware(rules_file=...) and Throttle(rules_file=...) load the rules file."""
    rules = tmp_path / "rules.toml"
    rules.write_text('[[throttle]]\nname = "all"\nrates = "1/minute"\n')

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", home)])
    # (limiters on a clock of their own: a fixed window on the real clock resets when a
    # minute boundary falls between the two requests)
    app.add_middleware(ThrottleMiddleware, limiter=Limiter(clock=FakeClock()),
                       rules_file=str(rules))
    assert codes(app, "/", "/") == [200, 429]

    fa = FastAPI()

    @fa.get("/")
    async def root() -> dict[str, int]:
        return {}

    Throttle(fa, Limiter(clock=FakeClock()), rules_file=rules)
    assert codes(fa, "/", "/") == [200, 429]


def test_throttle_options_are_checked_at_setup(tmp_path: Any) -> None:
    """Throttle takes the middleware's options; a wrong one fails at ``Throttle(...)``,
    not when the app first builds its middleware."""
    with pytest.raises(TypeError, match="default_limit"):
        Throttle(FastAPI(), Limiter(), default_limit="1/minute")  # type: ignore[call-arg]
    with pytest.raises(ConfigError):
        Throttle(FastAPI(), Limiter(), rules_file=tmp_path / "missing.toml")


ENDPOINTS_IMPORTING_FASTAPI_LATE = '''
from throttlekit import Limiter
from throttlekit.testing import FakeClock

limiter = Limiter(clock=FakeClock(), strategy="fixed_window")


@limiter.limit("1/minute")
async def hello() -> dict[str, str]:
    return {"hello": "world"}


def build_app():
    from fastapi import FastAPI  # only here: the module's globals never name FastAPI

    app = FastAPI()
    app.get("/")(hello)
    return app
'''


def test_endpoint_in_module_importing_fastapi_inside_a_function_answers_429(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a decorated endpoint in a module that imports FastAPI only inside a
    function got RateLimitExceeded raised (a 500) instead of FastAPI's 429 (the decorator
    guessed the framework from the module's globals)."""
    import importlib

    (tmp_path / "late_fastapi_endpoints.py").write_text(ENDPOINTS_IMPORTING_FASTAPI_LATE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("late_fastapi_endpoints")
    try:
        r1, r2 = get(module.build_app(), "/", "/")
    finally:
        sys.modules.pop("late_fastapi_endpoints", None)
    assert r1.status_code == 200 and r1.json() == {"hello": "world"}
    assert r2.status_code == 429
    assert r2.headers["retry-after"] == "60" and "ratelimit-policy" in r2.headers


# -- one responder: a refusal raised inside the app looks like the middleware's ----------


def test_refusal_inside_a_starlette_app_is_the_middlewares(limiter: Limiter) -> None:
    """A decorated helper called by an endpoint of a plain Starlette app (no middleware, no
    handler of ours): Starlette's own handler sends the default responder's refusal, text
    or problem+json by Accept, with one set of rate-limit fields."""
    @limiter.limit("1/minute", scope="search")
    def search(request: Request) -> str:
        return "found"

    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse(search(request))

    app = Starlette(routes=[Route("/", endpoint)])
    ok, text = get(app, "/", "/")
    problem = get(app, "/", headers={"Accept": "application/json"})[0]
    assert ok.text == "found"
    assert (text.status_code, text.text) == (429, "Too Many Requests: rate limit exceeded.\n")
    assert text.headers["content-type"] == "text/plain; charset=utf-8"
    assert text.headers["content-length"] == str(len(text.content))
    assert problem.headers["content-type"] == "application/problem+json"
    assert problem.json()["violated-policies"] == ["search"]
    for r in (text, problem):
        assert r.headers["retry-after"] == "60"
        assert r.headers.get_list("ratelimit-policy") == ['"search";q=1;w=60']


def test_an_apps_own_429_handler_still_answers(limiter: Limiter) -> None:
    """Starlette's exception_handlers={429: ...} and FastAPI's handler for RateLimited
    registered before Throttle keep answering throttlekit's refusals."""
    from throttlekit.contrib.starlette import RateLimited

    async def teapot(request: Request, exc: Exception) -> PlainTextResponse:
        assert isinstance(exc, RateLimited) and exc.denial is not None
        return PlainTextResponse("mine", status_code=429, headers=exc.headers)

    @limiter.limit("1/minute", scope="s")
    async def index(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", index)], exception_handlers={429: teapot})
    assert [r.text for r in get(app, "/", "/")] == ["ok", "mine"]

    api = FastAPI()
    api.add_exception_handler(RateLimited, teapot)

    @api.get("/", dependencies=[Depends(limiter.depends("1/minute", scope="f"))])
    async def root() -> str:
        return "ok"

    Throttle(api, limiter)
    second = get(api, "/", "/")[1]
    assert (second.status_code, second.text) == (429, "mine")
    assert second.headers["retry-after"] == "60"


def test_an_apps_own_httpexception_handler_still_answers_without_throttle(
    limiter: Limiter,
) -> None:
    """Without Throttle, a refusal takes the place of FastAPI's default {"detail": ...}
    answer only: an app's own HTTPException handler keeps answering the decorators' and the
    dependencies' refusals."""
    from starlette.exceptions import HTTPException as StarletteHTTPException

    async def mine(request: Request, exc: Exception) -> PlainTextResponse:
        assert isinstance(exc, StarletteHTTPException)
        return PlainTextResponse("mine", status_code=exc.status_code, headers=exc.headers)

    api = FastAPI()
    api.add_exception_handler(StarletteHTTPException, mine)

    @api.get("/d", dependencies=[Depends(limiter.depends("1/minute", scope="d"))])
    async def dep() -> str:
        return "ok"

    @api.get("/e")
    @limiter.limit("1/minute", scope="e")
    async def endpoint() -> str:
        return "ok"

    for path in ("/d", "/e"):
        second = get(api, path, path)[1]
        assert (second.status_code, second.text) == (429, "mine")
        assert second.headers["retry-after"] == "60"


def test_dependency_refusal_under_throttle_is_the_middlewares(limiter: Limiter) -> None:
    """With Throttle, a limiter.depends refusal is the default responder's, not FastAPI's
    {"detail": ...}: text, or problem+json for a JSON Accept."""
    app = FastAPI()

    @app.get("/", dependencies=[Depends(limiter.depends("1/minute", scope="dep"))])
    async def root() -> str:
        return "ok"

    Throttle(app, limiter)
    get(app, "/")
    text = get(app, "/")[0]
    problem = get(app, "/", headers={"Accept": "application/json"})[0]
    assert (text.status_code, text.text) == (429, "Too Many Requests: rate limit exceeded.\n")
    assert problem.json()["violated-policies"] == ["dep"]
    assert problem.headers["content-length"] == str(len(problem.content))
