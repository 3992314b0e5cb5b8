"""Wait instead of refuse (nginx ``limit_req`` with ``burst``/``delay``), for decorated
functions: ``@limiter.limit("10/second", wait=2.0)``.

A call the function's limits refuse, whose ``retry_after`` is at most the largest ``wait``
among them, sleeps (a coroutine function awaits) that long and is decided once more; it runs
if the second decision allows it, else it is refused as usual. A refusal that would need a
longer wait (or never passes: a cost above the limit, ``retry_after`` infinite) is refused at
once, without waiting. Each wait is a ``"waited"`` event (its decision's ``retry_after`` is
the time waited), which a ``Monitor`` counts as ``events_total{outcome="waited"}``; the
ASGI middleware's ``wait=`` tells a request once (the refusal waited out is no
``"throttled"`` event: :func:`adecide_waiting`).

Waiting holds the worker (a thread, or a task of the event loop's) for up to ``wait``
seconds: keep it short, and prefer it for background jobs and outbound calls, where waiting
is what the caller wants.

The clock: a limiter's clock with a ``sleep(seconds)`` method (``testing.FakeClock``) is
moved by it instead of sleeping, so tests wait no real time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ._errors import ConfigError
from ._events import HELD, Event

if TYPE_CHECKING:
    from ._limiter import Limiter
    from ._request import RequestView
    from ._rules import Verdict

__all__ = ["adecide_waiting", "apause", "awaited", "check_wait", "pause", "wait_for",
           "wait_of", "waited"]

#: the longest wait a limit may ask for (seconds): a worker held longer is an outage
MAX_WAIT = 300.0


def check_wait(wait: Any, what: str) -> float:
    """``wait`` as seconds (0: never wait), or a ConfigError naming it."""
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not (
        0 <= wait <= MAX_WAIT  # also nan and inf
    ):
        raise ConfigError(f"{what}: wait must be a number of seconds from 0 to {MAX_WAIT:g}, "
                          f"got {wait!r}")
    return float(wait)


def wait_of(entries: Any) -> float:
    """The longest ``wait`` of an endpoint's limits (``(name, LimitSpec)`` pairs)."""
    return max((spec.wait for _, spec in entries), default=0.0)


def wait_for(lim: Limiter, wait: float, verdict: Verdict | None) -> float | None:
    """How long to wait before deciding ``verdict``'s call again (None: do not wait): a
    throttle's refusal, not the store's failure policy, due within ``wait``. Tells the
    ``"waited"`` event."""
    if verdict is None or verdict.allowed or verdict.kind != "throttled" or verdict.degraded:
        return None
    d = verdict.decision
    if d is None or not 0 < d.retry_after <= wait or math.isinf(d.retry_after):
        return None
    engine = lim.engine
    if "waited" in engine.listeners.active:
        engine.emit("waited", verdict.rule or "", verdict.key, verdict.request, d, False)
    return d.retry_after


def pause(lim: Limiter, seconds: float) -> None:
    """Sleep ``seconds`` (a fake clock's ``sleep`` moves it instead)."""
    sleep = getattr(lim.clock, "sleep", None)
    if sleep is not None:
        sleep(seconds)
    else:
        time.sleep(seconds)


async def apause(lim: Limiter, seconds: float) -> None:
    """Async twin of :func:`pause`: awaits, never blocks the event loop."""
    sleep = getattr(lim.clock, "sleep", None)
    if sleep is not None:
        sleep(seconds)
        await asyncio.sleep(0)
    else:
        await asyncio.sleep(seconds)


def waited(lim: Limiter, wait: float, verdict: Verdict | None,
           decide: Callable[..., Verdict | None], *args: Any) -> Verdict | None:
    """``verdict``, or when it is a refusal due within ``wait``: ``decide(*args)`` after
    waiting for it (once)."""
    seconds = wait_for(lim, wait, verdict)
    if seconds is None:
        return verdict
    pause(lim, seconds)
    return decide(*args)


async def awaited(lim: Limiter, wait: float, verdict: Verdict | None,
                  decide: Callable[..., Awaitable[Verdict | None]], *args: Any
                  ) -> Verdict | None:
    """Async twin of :func:`waited`."""
    seconds = wait_for(lim, wait, verdict)
    if seconds is None:
        return verdict
    await apause(lim, seconds)
    return await decide(*args)


async def adecide_waiting(lim: Limiter, wait: float, view: RequestView) -> Verdict:
    """The rules' verdict on ``view`` for the ASGI middleware's ``wait=``: a refusal due
    within ``wait`` is awaited and the request decided once more. One request tells what
    finally happened once: the events of a refusal waited out are held back and dropped
    (the ``"waited"`` event tells the wait, the second decision its outcome); those of a
    verdict not waited out are told as they were."""
    engine = lim.engine
    engine.listeners.holding = True
    held: list[Event] = []
    token = HELD.set(held)
    try:
        verdict = await engine.aevaluate(view) if engine.remote else engine.evaluate(view)
    finally:
        HELD.reset(token)
    seconds = None if verdict.allowed else wait_for(lim, wait, verdict)
    if seconds is None:
        emit = engine.listeners.emit
        for event in held:
            emit(event)
        return verdict
    await apause(lim, seconds)
    return await engine.aevaluate(view)
