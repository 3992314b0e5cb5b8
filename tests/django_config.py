"""One Django configuration for every test module that runs Django (whichever imports first).

Import it before anything from ``django`` that needs settings: ``import django_config``.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator
from typing import Any

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False, SECRET_KEY="test", ALLOWED_HOSTS=["*"], ROOT_URLCONF="tk_test_urls",
        MIDDLEWARE=["throttlekit.contrib.django.ThrottleMiddleware"], USE_TZ=True,
        LOGGING_CONFIG=None,
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
        REST_FRAMEWORK={"UNAUTHENTICATED_USER": None, "DEFAULT_AUTHENTICATION_CLASSES": []},
    )
    django.setup()


@contextlib.contextmanager
def fresh_urlconf() -> Iterator[types.ModuleType]:
    """An empty ``tk_test_urls`` URLconf module (views are added by the test), with Django's
    URL caches and the integration's per-view state cleared before and after."""
    from django.urls import clear_url_caches

    from throttlekit.contrib import django as tk_django

    module = types.ModuleType("tk_test_urls")
    module.urlpatterns = []  # type: ignore[attr-defined]
    sys.modules["tk_test_urls"] = module
    clear_url_caches()
    tk_django._state.clear()
    try:
        yield module
    finally:
        tk_django._state.clear()
        clear_url_caches()


def throttlekit_settings(**throttlekit: Any) -> Any:
    """``override_settings`` with everything the tests rely on, whoever configured Django
    first in this process: ``THROTTLEKIT`` as given, the test URLconf, the middleware."""
    from django.test import override_settings

    return override_settings(
        THROTTLEKIT=throttlekit, ROOT_URLCONF="tk_test_urls", ALLOWED_HOSTS=["*"],
        MIDDLEWARE=["throttlekit.contrib.django.ThrottleMiddleware"],
    )
