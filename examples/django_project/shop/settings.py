"""Settings of the example project: throttlekit's middleware and its settings."""

from __future__ import annotations

import os

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "shop.urls"
INSTALLED_APPS: list[str] = []
USE_TZ = True
MIDDLEWARE = ["throttlekit.contrib.django.ThrottleMiddleware"]

THROTTLEKIT = {
    "STORAGE_URL": os.environ.get("THROTTLEKIT_STORAGE_URL", "memory://"),
    "DEFAULT_LIMITS": "30/minute",  # every view, each its own counter
    "RULES": [
        # @exempt takes /health out of the default limits; the rules run before Django has
        # routed the request, so a safelist takes it out of them
        {"kind": "safelist", "name": "health", "predicate": lambda r: r.path == "/health"},
        {"kind": "throttle", "name": "per-ip", "rates": "100/minute"},
    ],
}
