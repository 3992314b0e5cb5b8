"""``limiter.throttle(key="user")`` and ``key="user_or_ip"``: the decorators' shortcuts, with
the same meaning (the framework's user, see docs/migration.md), for rules too (issue 16)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from django_config import fresh_urlconf  # configures Django first
from throttlekit import ConfigError, Limiter, RequestView
from throttlekit.contrib import user_function
from throttlekit.testing import FakeClock


@pytest.fixture(autouse=True)
def no_user_hook() -> Iterator[None]:
    user_function(None)  # a hook another test left set would decide who the user is
    yield
    user_function(None)


class User:
    def __init__(self, pk: int | None) -> None:
        self.pk = pk
        self.is_authenticated = pk is not None


def login_middleware(get_response: Any) -> Any:
    """Django's AuthenticationMiddleware in small: request.user from the x-user header."""
    def middleware(request: Any) -> Any:
        pk = request.headers.get("x-user")
        request.user = User(int(pk) if pk else None)
        return get_response(request)
    return middleware


# (a clock of its own: the tests count requests exactly on limits of a minute, which a fixed
# window on the real clock resets when a minute boundary falls between two requests)
LIMITER = Limiter(strategy="fixed_window", clock=FakeClock())


@pytest.fixture
def django_client() -> Iterator[Any]:
    """Django with the login middleware before throttlekit's, one view at /."""
    from django.http import HttpResponse
    from django.test import Client, override_settings
    from django.urls import path

    with fresh_urlconf() as module:
        module.urlpatterns = [path("", lambda request: HttpResponse("ok"))]
        with override_settings(
            THROTTLEKIT={"LIMITER": "test_throttle_user_keys.LIMITER"},
            ROOT_URLCONF="tk_test_urls", ALLOWED_HOSTS=["*"],
            MIDDLEWARE=["test_throttle_user_keys.login_middleware",
                        "throttlekit.contrib.django.ThrottleMiddleware"],
        ):
            yield Client()


def fresh_limiter(key: str) -> None:
    """LIMITER with the one throttle of a test."""
    global LIMITER
    LIMITER = Limiter(strategy="fixed_window", clock=FakeClock())
    LIMITER.throttle("t", "1/minute", key=key)


def codes(client: Any, users: list[str | None]) -> list[int]:
    return [client.get("/", **({"HTTP_X_USER": u} if u else {})).status_code for u in users]


def test_throttle_key_user_counts_per_django_user(django_client: Any) -> None:
    """key="user": one counter per request.user; anonymous requests are not limited."""
    fresh_limiter("user")
    assert codes(django_client, ["1", "1", "2", None, None]) == [200, 429, 200, 200, 200]


def test_throttle_key_user_or_ip_falls_back_to_the_client_ip(django_client: Any) -> None:
    """key="user_or_ip": users as user:<id>, anonymous requests per client address."""
    fresh_limiter("user_or_ip")
    assert codes(django_client, ["1", None, None, "1", "2"]) == [200, 200, 429, 429, 200]


def test_user_function_hook_applies_to_throttles(django_client: Any) -> None:
    """The user_function hook says who the user is for throttles too."""
    user_function(lambda view: view.headers.get("x-token"))
    fresh_limiter("user")
    got = [django_client.get("/", HTTP_X_TOKEN=t).status_code for t in ("a", "a", "b")]
    assert got == [200, 429, 200]


def test_outside_a_framework_user_is_unknown() -> None:
    """A bare WSGI view has no framework user: "user" never applies, "user_or_ip" counts
    per address."""
    lim = Limiter(clock=FakeClock(), strategy="fixed_window")
    lim.throttle("u", "1/minute", key="user")
    lim.throttle("uip", "1/minute", key="user_or_ip", paths=["/ip"])

    def req(path: str, ip: str) -> bool:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": ip}
        return lim.evaluate(RequestView.from_environ(environ, lim.resolver)).allowed

    assert [req("/", "192.0.2.1") for _ in range(3)] == [True, True, True]
    assert [req("/ip", "192.0.2.1"), req("/ip", "192.0.2.1"), req("/ip", "192.0.2.2")] == [
        True, False, True]


def test_a_bad_key_lists_the_user_shortcuts() -> None:
    with pytest.raises(ConfigError, match=r"'user', 'user_or_ip'.*'usr'"):
        Limiter().throttle("x", "1/minute", key="usr")


def test_rules_file_key_user(tmp_path: Any, django_client: Any) -> None:
    """A rules file's key = "user" means what the throttle's does."""
    global LIMITER
    rules = tmp_path / "rules.toml"
    rules.write_text('[[throttle]]\nname = "u"\nrates = "1/minute"\nkey = "user"\n')
    LIMITER = Limiter(strategy="fixed_window", clock=FakeClock())
    LIMITER.load_rules(rules)
    assert codes(django_client, ["1", "1", "2", None, None]) == [200, 429, 200, 200, 200]
    rules.write_text(rules.read_text().replace('"user"', '"usr"'))
    with pytest.raises(ConfigError, match=r"(?s)rules.toml:4: .*'usr'.*did you mean 'user'"):
        Limiter().load_rules(rules)
