"""User code as the docs write it, type-checked with ``mypy --strict`` by
``tests/test_typing.py``: it must pass without a single error (``negative.py`` beside it
holds the mistakes that must be errors)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from django.http import HttpRequest, HttpResponse
from fastapi import Depends, FastAPI
from flask import Flask

import throttlekit
from throttlekit import Decision, Event, Limiter, Rate, RequestView, WSGIMiddleware
from throttlekit.contrib import django as tk_django
from throttlekit.contrib.fastapi import Throttle as FastAPIThrottle
from throttlekit.contrib.flask import Throttle as FlaskThrottle

limiter = Limiter("memory://", strategy="sliding_window", trusted_proxies=["10.0.0.0/8"])

# -- the direct API: every accepted form of rates ------------------------------------------
d1: Decision = limiter.hit("user:42", "2/second")
d2 = limiter.hit("user:42", "10/second; 1000/hour", cost=2)
d3 = limiter.test("user:42", Rate(5, 1.0))
d4 = limiter.hit("user:42", ["1/second", Rate(100, 3600.0)])
d5 = limiter.hit("user:42", ("1/second", "5/minute"), strategy="token_bucket", burst=3)
rates_list = ["1/second", "10/minute"]
d6 = limiter.hit("user:42", rates_list)
allowed: bool = d1.allowed and d2.allowed and d3.allowed and d4.allowed
remaining: int = d5.remaining + d6.remaining
retry: float = d1.retry_after
limiter.reset("user:42")


async def direct_async() -> bool:
    decision = await limiter.ahit("user:42", "2/second")
    tested = await limiter.atest("user:42", [Rate(1, 1.0)])
    await limiter.areset("user:42")
    return decision.allowed and tested.allowed


# -- rules ---------------------------------------------------------------------------------
limiter.safelist("office", ips=["10.0.0.0/8"])
limiter.blocklist("bad-agents", lambda view: "sqlmap" in view.headers.get("user-agent", ""))
limiter.throttle("logins", "5/minute", match=lambda v: v.path == "/login", key="ip")
limiter.throttle("api", ["100/minute", "1000/hour"], key=lambda v: v.headers.get("x-api-key"))
limiter.fail2ban("scanners", match=lambda v: v.path.startswith("/wp-"), maxretry=3,
                 findtime=60, bantime=3600)


@limiter.on("banned")
def alert(event: Event) -> None:
    print(event.key, event.rule)


@limiter.on
def every_event(event: Event) -> None:
    print(event.kind)


def on_throttled(event: Event) -> None:
    print(event.decision)


subscribed: Callable[[Event], None] = limiter.on("throttled", on_throttled)


# -- decorators keep signatures ------------------------------------------------------------
@limiter.limit("5/minute")
def login(username: str, password: str) -> bool:
    return username == password


@limiter.limit("100/hour", key=lambda user_id, **kw: str(user_id))
def send_sms(user_id: int, text: str) -> None: ...


@limiter.limit("10/second")
async def fetch(url: str, *, retries: int = 3) -> bytes:
    return url.encode() * retries


@limiter.shared_limit("100/minute", scope="search")
def search(q: str) -> list[str]:
    return [q]


@limiter.exempt
def health() -> str:
    return "ok"


ok: bool = login("a", "b")
send_sms(42, "hi")
found: list[str] = search("x")
status: str = health()


async def call_fetch() -> bytes:
    return await fetch("https://example.org", retries=1)


try:
    send_sms(42, "hi")
except throttlekit.RateLimitExceeded as exc:
    wait: float = exc.decision.retry_after


# -- Flask ---------------------------------------------------------------------------------
app = Flask(__name__)
throttle = FlaskThrottle(app, limiter, default_limits="100/minute")
app.wsgi_app = WSGIMiddleware(app.wsgi_app, limiter)  # type: ignore[method-assign]


@app.get("/search")
@throttle.limit("10/minute")
def flask_search() -> str:
    return "results"


@throttle.exempt
def flask_health() -> str:
    return "ok"


flask_text: str = flask_search()


# -- Django --------------------------------------------------------------------------------
@tk_django.limit("5/minute", methods=["POST"])
def django_login(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


@tk_django.exempt
def django_health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def use_django(request: HttpRequest) -> HttpResponse:
    django_health(request)
    return django_login(request)


# -- FastAPI -------------------------------------------------------------------------------
api = FastAPI()
FastAPIThrottle(api, limiter, default_limits="100/minute")


@api.get("/items/{item_id}")
@limiter.limit("10/minute")
async def read_item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}


@api.get("/search")
async def api_search(
    q: str, limit: Annotated[Decision | None, Depends(limiter.depends("5/minute"))]
) -> str:
    return q


async def use_fastapi() -> int:
    item = await read_item(3)
    return item["item_id"]


def key_of(view: RequestView) -> str | None:
    return view.client_ip


# -- community blocklists and metrics ------------------------------------------------------
def community_lists(bouncer_key: str) -> None:
    from throttlekit.blocklists import Blocklist
    from throttlekit.monitor import Monitor, NearLimit
    from throttlekit.monitor.otel import instrument
    from throttlekit.monitor.prometheus import register

    crowdsec = Blocklist("http://127.0.0.1:8080/v1/decisions/stream",
                         headers={"X-Api-Key": bouncer_key}, refresh=60, thread=True)
    limiter.blocklist("crowdsec", crowdsec)
    limiter.blocklist("drop", Blocklist.from_file("/etc/throttlekit/drop.txt", refresh=3600))
    listed: bool = "192.0.2.1" in crowdsec
    print(listed, crowdsec.failures, crowdsec.last_error)
    monitor = Monitor(limiter)
    near = NearLimit()
    register(monitor, near_limit=near)
    instrument(monitor, offenders=0, near_limit=near)


def plans_and_waits(limiter: Limiter) -> None:
    """Issue 16 items 1 and 6: rates that follow the caller, waiting instead of refusing."""
    plans = limiter.plans({"free": "100/hour", "pro": "10000/hour"}, plan="header:X-Plan",
                          default="free")
    limiter.throttle("api", rates=plans, key="header:X-Api-Key")
    limiter.throttle("by-fn", rates=lambda view: "100/hour" if view.path else "1/hour")

    @limiter.limit(lambda: "10/second", wait=2.0)
    def job(n: int) -> int:
        return n

    done: int = job(1)
    print(done)
