"""throttlekit.contrib.django: the middleware (sync and async), view decorators, settings."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Iterator
from typing import Any

import pytest
from django.http import HttpResponse, JsonResponse
from django.test import AsyncClient, Client, override_settings
from django.urls import path
from django.utils.decorators import method_decorator
from django.views import View

from django_config import fresh_urlconf, throttlekit_settings  # configures Django first
from throttlekit import ConfigError, Limiter
from throttlekit.contrib import django as tk
from throttlekit.testing import FakeClock

# The tests count requests exactly (e.g. [200, 429]) on limits of a minute: the settings'
# limiter runs on the real clock, where a fixed window resets when a minute boundary falls
# between two requests, so it counts on a sliding log; the project's own limiter, on a
# clock of its own.
EXACT = "sliding_log"
LIMITER = Limiter(strategy="fixed_window", clock=FakeClock())


@pytest.fixture
def urls() -> Iterator[types.ModuleType]:
    """A fresh URLconf module for each test (views are defined by the test)."""
    with fresh_urlconf() as module:
        LIMITER.storage.clear()  # type: ignore[attr-defined]
        LIMITER.enabled = True
        yield module


configure = throttlekit_settings


def test_function_view_decorator_and_request_throttle(urls: Any) -> None:
    """A decorated view answers 429 with the headers; request.throttle is the Decision;
    /items/1 and /items/2 share the view's counter."""

    @tk.limit("2/minute")
    def item(request: Any, i: int) -> JsonResponse:
        return JsonResponse({"left": request.throttle.remaining})

    urls.urlpatterns = [path("items/<int:i>", item)]
    with configure(STRATEGY=EXACT):
        c = Client()
        r1, r2, r3 = (c.get(f"/items/{i}") for i in (1, 2, 3))
    assert [r1.json(), r2.json()] == [{"left": 1}, {"left": 0}]
    assert r3.status_code == 429 and int(r3["Retry-After"]) > 0
    assert r3["Cache-Control"] == "no-store" and "RateLimit-Policy" in r3


def test_default_and_application_limits(urls: Any) -> None:
    """DEFAULT_LIMITS count per view, APPLICATION_LIMITS across views; exempt skips both."""

    def a(request: Any) -> HttpResponse:
        return HttpResponse("a")

    def b(request: Any) -> HttpResponse:
        return HttpResponse("b")

    @tk.exempt
    def health(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    urls.urlpatterns = [path("a", a), path("b", b), path("health", health)]
    with configure(STRATEGY=EXACT, DEFAULT_LIMITS="2/minute",
                   APPLICATION_LIMITS="3/minute"):
        c = Client()
        got = [c.get(p).status_code for p in ("/a", "/a", "/a", "/b", "/b")]
        assert {c.get("/health").status_code for _ in range(5)} == {200}
    assert got == [200, 200, 429, 200, 429]


def test_class_based_view_with_method_decorator(urls: Any) -> None:
    """method_decorator(limit(...)) limits one method of a class-based view."""

    class Search(View):
        @method_decorator(tk.limit("1/minute"))
        def get(self, request: Any) -> HttpResponse:
            return HttpResponse("found")

        def post(self, request: Any) -> HttpResponse:
            return HttpResponse("posted")

    urls.urlpatterns = [path("search", Search.as_view())]
    with configure(STRATEGY=EXACT):
        c = Client()
        assert [c.get("/search").status_code for _ in range(2)] == [200, 429]
        assert {c.post("/search").status_code for _ in range(3)} == {200}


def test_settings_rules_and_a_given_limiter(urls: Any) -> None:
    """RULES adds rules to the limiter; LIMITER may name the project's own limiter."""

    def index(request: Any) -> HttpResponse:
        return HttpResponse(request.META["throttlekit.verdict"].kind)

    urls.urlpatterns = [path("", index)]
    rules = [{"kind": "throttle", "name": "per-ip", "rates": "2/minute"}]
    with configure(LIMITER=f"{__name__}.LIMITER", RULES=rules):
        c = Client()
        assert [c.get("/").status_code for _ in range(3)] == [200, 200, 429]
    assert tk.get_limiter() is not LIMITER  # state was reset after the block ...
    with pytest.raises(ConfigError, match="STORAG_URL"), configure(STORAG_URL="memory://"):
        Client().get("/")


def test_async_views_on_the_async_path(urls: Any) -> None:
    """Under ASGI (AsyncClient), async views are limited by the async middleware path."""

    @tk.limit("1/minute")
    async def fetch(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    urls.urlpatterns = [path("fetch", fetch)]

    async def main() -> list[int]:
        c = AsyncClient()
        return [(await c.get("/fetch")).status_code for _ in range(2)]

    with configure(STRATEGY=EXACT, DEFAULT_LIMITS="5/minute"):
        assert asyncio.run(main()) == [200, 429]


def test_enabled_false_lets_everything_through(urls: Any) -> None:
    """ENABLED=False switches the middleware and decorators off."""

    @tk.limit("1/minute")
    def index(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    urls.urlpatterns = [path("", index)]
    with configure(ENABLED=False, DEFAULT_LIMITS="1/minute"):
        c = Client()
        assert {c.get("/").status_code for _ in range(4)} == {200}


def test_user_key_via_view_request(urls: Any) -> None:
    """Key functions reach the Django request through view.request."""

    @tk.limit("1/minute", key=lambda v: v.request.GET.get("user"))
    def index(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    urls.urlpatterns = [path("", index)]
    with configure(STRATEGY=EXACT):
        c = Client()
        got = [c.get("/", {"user": u}).status_code for u in ("ann", "bob", "ann")]
    assert got == [200, 200, 429]


def test_drf_throttle_class_refuses_with_wait(urls: Any) -> None:
    """The DRF throttle class admits `rate` requests, then DRF answers 429 with Retry-After."""
    pytest.importorskip("rest_framework")
    from rest_framework.response import Response
    from rest_framework.views import APIView

    class Burst(tk.ThrottlekitThrottle):  # type: ignore[name-defined,misc]
        rate = "2/minute"

    class Items(APIView):
        throttle_classes = [Burst]
        authentication_classes: list[Any] = []
        permission_classes: list[Any] = []

        def get(self, request: Any) -> Response:
            return Response({"ok": True})

    urls.urlpatterns = [path("api/items", Items.as_view())]
    with configure(STRATEGY=EXACT):
        c = Client()
        codes = [c.get("/api/items").status_code for _ in range(3)]
        refused = c.get("/api/items")
    assert codes == [200, 200, 429]
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0


def test_override_settings_reaches_a_loaded_middleware(urls: Any) -> None:
    """override_settings(THROTTLEKIT=...) applies to a middleware already serving requests."""

    @tk.limit("1/minute")
    def index(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    urls.urlpatterns = [path("", index)]
    with configure(STRATEGY=EXACT):
        c = Client()
        assert [c.get("/").status_code for _ in range(2)] == [200, 429]
        with override_settings(THROTTLEKIT={"ENABLED": False}):
            assert [c.get("/").status_code for _ in range(3)] == [200, 200, 200]

    async def run() -> list[int]:
        ac = AsyncClient()
        codes = [(await ac.get("/")).status_code for _ in range(2)]
        with override_settings(THROTTLEKIT={"ENABLED": False}):
            codes += [(await ac.get("/")).status_code for _ in range(2)]
        return codes

    with configure(STRATEGY=EXACT):
        assert asyncio.run(run()) == [200, 429, 200, 200]


def test_rules_file_setting(urls: Any, tmp_path: Any) -> None:
    """THROTTLEKIT["RULES_FILE"] loads a rules file into the settings' limiter."""
    rules = tmp_path / "rules.toml"
    rules.write_text('[[throttle]]\nname = "all"\nrates = "1/minute"\n')

    def index(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    urls.urlpatterns = [path("", index)]
    with configure(RULES_FILE=str(rules), STRATEGY=EXACT):
        c = Client()
        assert [c.get("/").status_code for _ in range(2)] == [200, 429]
