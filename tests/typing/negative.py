"""Mistakes that ``mypy --strict`` must report in user code. Each line carries the error
code mypy must give it as ``# type: ignore[code]``; with ``warn_unused_ignores`` an error
that mypy stops reporting fails the check (``tests/test_typing.py``), and so does one with
another code."""

from __future__ import annotations

from flask import Flask

from throttlekit import Event, Limiter, Rate
from throttlekit.contrib import django as tk_django
from throttlekit.contrib.flask import Throttle

limiter = Limiter()

# rates: an int, a float, a dict, a list of ints are not rates
limiter.hit("k", 5)  # type: ignore[arg-type]
limiter.test("k", 1.5)  # type: ignore[arg-type]
limiter.hit("k", {"limit": 5})  # type: ignore[arg-type]
limiter.hit("k", [5, 10])  # type: ignore[list-item]
limiter.hit(42, "5/second")  # type: ignore[arg-type]
limiter.hit("k", "5/second", cost="2")  # type: ignore[arg-type]
limiter.throttle("api", 100)  # type: ignore[arg-type]
limiter.throttle("api", "100/minute", key=5)  # type: ignore[arg-type]
limiter.limit(60)  # type: ignore[arg-type]
tk_django.limit(Rate)  # type: ignore[arg-type]
Throttle(Flask(__name__), limiter, default_limits=100)  # type: ignore[arg-type]


async def ahit() -> None:
    await limiter.ahit("k", 5)  # type: ignore[arg-type]


# decorated functions keep their parameters and return types, sync and async
@limiter.limit("5/minute")
def login(username: str, password: str) -> bool:
    return username == password


@limiter.limit("10/second")
async def fetch(url: str) -> bytes:
    return url.encode()


login(1, "x")  # type: ignore[arg-type]
login("a")  # type: ignore[call-arg]
not_a_str: str = login("a", "b")  # type: ignore[assignment]
fetched: bytes = fetch("u")  # type: ignore[assignment]


async def use_fetch() -> None:
    await fetch(url=3)  # type: ignore[arg-type]


@tk_django.limit("5/minute")
def view(request: object) -> int:
    return 1


view()  # type: ignore[call-arg]


# event callbacks come back as they were given
def on_ban(event: Event) -> None: ...


limiter.on("banned", on_ban)("not an event")  # type: ignore[arg-type]
limiter.on(on_ban)(None)  # type: ignore[arg-type]
limiter.on("banned")(on_ban)(1)  # type: ignore[arg-type]
limiter.on(5)  # type: ignore[call-overload]


# a FastAPI dependency is awaited for the Decision
async def dependency_result() -> None:
    decision = await limiter.depends("5/minute")()
    print(decision.allowed)  # type: ignore[union-attr]


# a Blocklist's source is a path or a URL; its refresh is seconds
def blocklists() -> None:
    from throttlekit.blocklists import Blocklist

    Blocklist(["192.0.2.1"])  # type: ignore[arg-type]
    Blocklist("/etc/drop.txt", refresh="60")  # type: ignore[arg-type]
