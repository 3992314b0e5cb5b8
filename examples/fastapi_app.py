"""A small FastAPI app limited by throttlekit.

Run: ``uvicorn fastapi_app:app --port 8000`` (from ``examples/``); set
``THROTTLEKIT_STORAGE_URL=redis://...`` to share the limits between workers.

- the limiter's rules: at most 100 requests a minute per client;
- every route, routers included: 30 a minute per client, each route its own counter;
- ``/search``: 3 a minute (a decorator; no ``Request`` parameter needed);
- ``/items/{item_id}``: 5 a minute through a dependency that hands the Decision to the
  endpoint; the 429 is documented in ``/openapi.json``;
- ``/health``: exempt from every limit (``@limiter.exempt`` for the default limits, the
  ``health`` safelist for the rules, which run before routing); ``/docs`` and
  ``/openapi.json`` are exempt from the default limits by ``Throttle`` itself.
"""

from __future__ import annotations

import os

from fastapi import Depends, FastAPI
from pydantic import BaseModel

from throttlekit import Decision, Limiter
from throttlekit.contrib.fastapi import Throttle

limiter = Limiter(os.environ.get("THROTTLEKIT_STORAGE_URL", "memory://"))
limiter.safelist("health", lambda r: r.path == "/health")  # before routing: no rule applies
limiter.throttle("per-ip", "100/minute")

app = FastAPI(title="throttlekit example")


class Item(BaseModel):
    id: int
    remaining: int


@app.get("/")
async def index() -> dict[str, str]:
    return {"hello": "world"}


@app.get("/search")
@limiter.limit("3/minute")
async def search(q: str = "") -> dict[str, object]:
    return {"q": q, "results": []}


@app.get("/items/{item_id}")
async def read_item(item_id: int,
                    limit: Decision = Depends(limiter.depends("5/minute"))) -> Item:  # noqa: B008
    return Item(id=item_id, remaining=limit.remaining)


@app.get("/health")
@limiter.exempt
async def health() -> str:
    return "ok"


Throttle(app, limiter, default_limits="30/minute")
