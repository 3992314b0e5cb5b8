"""A small Flask app limited by throttlekit.

Run: ``gunicorn -w 1 -b 127.0.0.1:8000 flask_app:app`` (from ``examples/``), or
``THROTTLEKIT_STORAGE_URL=redis://127.0.0.1:6379/0 gunicorn -w 4 ...`` for several workers
(with ``memory://`` each worker would count on its own; throttlekit warns about it).

- the limiter's rules (``Throttle`` runs them in a ``WSGIMiddleware`` around the app): at
  most 100 requests a minute per client for the whole site;
- every route: at most 30 a minute per client (default limits, each route its own counter);
- ``/search``: at most 3 a minute per client (a decorator), its Decision in ``g.throttle``;
- ``/health``: exempt from every limit. ``@limiter.exempt`` takes it out of the default
  (and application) limits, which the Flask integration checks after routing; the rules
  middleware runs before Flask has routed the request, so it needs its own word: the
  ``health`` safelist, which skips every rule for that path.
"""

from __future__ import annotations

import os

from flask import Flask, g

from throttlekit import Limiter
from throttlekit.contrib.flask import Throttle

limiter = Limiter(os.environ.get("THROTTLEKIT_STORAGE_URL", "memory://"))
limiter.safelist("health", lambda r: r.path == "/health")  # before routing: no rule applies
limiter.throttle("per-ip", "100/minute")

app = Flask(__name__)
app.config["THROTTLEKIT_DEFAULT_LIMITS"] = "30/minute"
throttle = Throttle(app, limiter)


@app.get("/")
def index() -> dict[str, str]:
    return {"hello": "world"}


@app.get("/search")
@limiter.limit("3/minute")
def search() -> dict[str, object]:
    return {"results": [], "remaining": g.throttle.remaining}


@app.get("/health")
@limiter.exempt
def health() -> str:
    return "ok"

