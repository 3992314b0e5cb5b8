"""One Django configuration for every test module that runs Django (whichever imports first).

Import it before anything from ``django`` that needs settings: ``import django_config``.
"""

from __future__ import annotations

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
