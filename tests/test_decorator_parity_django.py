"""Decorator parity in Django: a view behind two routes counts per route (``scope=``
shares), count_when, block=False on ``request.throttle``, and key="user"."""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

import pytest
from django.http import Http404, HttpResponse
from django.test import Client
from django.urls import path

from django_config import fresh_urlconf, throttlekit_settings  # configures Django first
from throttlekit import Limiter
from throttlekit.testing import FakeClock

# (a clock of its own: the tests count requests exactly on limits of a minute, which a fixed
# window on the real clock resets when a minute boundary falls between two requests)
LIMITER = Limiter(strategy="fixed_window", clock=FakeClock())


@pytest.fixture(params=["middleware", "bare"])
def urls(request: pytest.FixtureRequest) -> Iterator[tuple[types.ModuleType, Any]]:
    """A fresh URLconf, and the settings: with the middleware, or the decorators alone."""
    with fresh_urlconf() as module:
        LIMITER.storage.clear()  # type: ignore[attr-defined]
        LIMITER.enabled = True
        settings = throttlekit_settings(LIMITER="test_decorator_parity_django.LIMITER")
        if request.param == "bare":
            from django.test import override_settings
            settings = override_settings(MIDDLEWARE=[], ROOT_URLCONF="tk_test_urls",
                                         ALLOWED_HOSTS=["*"])
        yield module, settings


def test_one_view_two_routes_count_per_route(urls: Any) -> None:
    """The same view under /a/ and /b/: each route its own counter; scope= shares one."""
    module, settings = urls

    @LIMITER.limit("1/minute")
    def view(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    @LIMITER.limit("1/minute", scope="shared-view")
    def shared(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    module.urlpatterns = [path("a/", view), path("b/", view, name="b"),
                          path("s1/", shared), path("s2/", shared)]
    with settings:
        c = Client()
        got = [c.get(p).status_code for p in ("/a/", "/b/", "/a/", "/b/")]
        assert got == [200, 200, 429, 429]
        assert [c.get(p).status_code for p in ("/s1/", "/s2/")] == [200, 429]


def test_count_when_counts_only_failures(urls: Any) -> None:
    """count_when: only 404s use the budget; the raised Http404 counts as 404."""
    module, settings = urls

    @LIMITER.limit("2/minute", count_when=lambda r: r.status_code == 404)
    def item(request: Any, i: int) -> HttpResponse:
        if i > 10:
            raise Http404("no such item")
        return HttpResponse(str(i))

    module.urlpatterns = [path("item/<int:i>/", item)]
    with settings:
        c = Client()
        got = [c.get(f"/item/{i}/").status_code for i in (1, 2, 3, 11, 12, 1)]
    assert got == [200, 200, 200, 404, 404, 429]


def test_block_false_sets_request_throttle(urls: Any) -> None:
    """block=False (django-ratelimit's): the view runs and reads request.throttle."""
    module, settings = urls

    @LIMITER.limit("1/minute", block=False)
    def view(request: Any) -> HttpResponse:
        return HttpResponse("limited" if not request.throttle.allowed else "fine")

    module.urlpatterns = [path("v/", view)]
    with settings:
        c = Client()
        got = [c.get("/v/") for _ in range(3)]
    assert [(r.status_code, r.content) for r in got] == [
        (200, b"fine"), (200, b"limited"), (200, b"limited")]


def test_user_key_is_the_authenticated_user(urls: Any) -> None:
    """key="user": request.user's pk when authenticated; anonymous: the limit skips."""
    module, settings = urls

    class User:
        def __init__(self, pk: int | None) -> None:
            self.pk = pk
            self.is_authenticated = pk is not None

    def login(view: Any) -> Any:
        def inner(request: Any) -> Any:
            pk = request.headers.get("x-user")
            request.user = User(int(pk) if pk else None)
            return view(request)
        return inner

    @login
    @LIMITER.limit("1/minute", key="user")
    def view(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    module.urlpatterns = [path("u/", view)]
    with settings:
        c = Client()
        got = [c.get("/u/", headers=h).status_code
               for h in ({"x-user": "1"}, {"x-user": "1"}, {"x-user": "2"}, {}, {})]
    assert got == [200, 429, 200, 200, 200]
