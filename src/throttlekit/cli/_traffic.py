"""A scenario's requests, generated in time order (deterministic for a seed).

Each client of a group sends at the group's rate from its first request on: a random
phase within one period after the group's ``start``, later by up to ``arrive`` seconds
for visitors that arrive during the run. During a ``pulse`` the group sends only in its
on periods. A request gets one of the group's paths at random, its form and headers
(``{client}``, ``{n}`` filled in), a user agent (``"rotate"``: a fresh one per request)
and a query string (``"random"``: a fresh one per request).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlencode

if TYPE_CHECKING:
    from .scenarios import ClientGroup

__all__ = ["Request", "requests"]


@dataclass(frozen=True)
class Request:
    """One request of a scenario."""

    t: float  # simulated seconds from the start
    group: int  # index of the group
    client: int  # client number within the group
    address: str
    method: str
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    legitimate: bool
    query: str = ""


#: (platform, engine) pairs of real browsers, for user agents made up per request
_PLATFORMS = (
    "Windows NT 10.0; Win64; x64", "Macintosh; Intel Mac OS X 10_15_7", "X11; Linux x86_64",
    "Linux; Android 14; Pixel 8", "iPhone; CPU iPhone OS 17_4 like Mac OS X",
)


def rotated_user_agent(rng: random.Random) -> str:
    """A plausible browser user agent, fresh per call (a flood hiding among browsers)."""
    platform = rng.choice(_PLATFORMS)
    if rng.random() < 0.3:
        return (f"Mozilla/5.0 ({platform}; rv:{rng.randint(100, 130)}.0) Gecko/20100101 "
                f"Firefox/{rng.randint(100, 130)}.{rng.randint(0, 9)}")
    return (f"Mozilla/5.0 ({platform}) AppleWebKit/537.36 (KHTML, like Gecko) "
            f"Chrome/{rng.randint(100, 131)}.0.{rng.randint(1000, 6999)}.{rng.randint(0, 250)} "
            "Safari/537.36")


def split_path(spec: str) -> tuple[str, str] | None:
    """``"/path"`` or ``"METHOD /path"`` as (method, path); None when it is neither."""
    method, _, path = spec.partition(" ") if " " in spec else ("GET", "", spec)
    method = method.upper()
    if not path.startswith("/") or not method.isalpha():
        return None
    return method, path


def _pulsed(t: float, start: float, pulse: tuple[float, float], jump: float) -> float:
    """``t``, or when it falls in an off period, ``jump`` into the next on period."""
    on, off = pulse
    phase = (t - start) % (on + off)
    return t if phase < on else t + (on + off - phase) + min(jump, on)


def requests(groups: Sequence[ClientGroup], duration: float, seed: int) -> Iterator[Request]:
    """Every request of ``groups`` until ``duration``, in time order."""
    rng = random.Random(seed)
    heap: list[tuple[float, int, int, int]] = []
    addresses: list[list[str]] = []
    for gi, g in enumerate(groups):
        addresses.append([g.address(c) for c in range(g.clients)])
        period = 1.0 / g.rate
        for c in range(g.clients):
            first = g.start + rng.random() * period
            if g.arrive:
                first += rng.random() * g.arrive
            if g.pulse is not None:
                first = _pulsed(first, g.start, g.pulse, rng.random() * period)
            heap.append((first, len(heap), gi, c))
    heapq.heapify(heap)
    seq = len(heap)
    parsed = [[split_path(p) or ("GET", p) for p in g.paths] for g in groups]
    ends = [duration if g.end is None else min(g.end, duration) for g in groups]
    n = 0
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        t, _, gi, c = pop(heap)
        g = groups[gi]
        if t >= ends[gi]:
            continue
        method, path = rng.choice(parsed[gi])
        yield _request(g, rng, t, gi, c, n, addresses[gi][c], method, path)
        n += 1
        period = 1.0 / g.rate
        jitter = g.jitter
        if jitter == "poisson":
            gap = rng.expovariate(g.rate)
        elif isinstance(jitter, (int, float)) and jitter:
            gap = period * (1.0 + jitter * (2.0 * rng.random() - 1.0))
        else:
            gap = period
        t += max(gap, 1e-6)
        if g.pulse is not None:
            t = _pulsed(t, g.start, g.pulse, rng.random() * period)
        push(heap, (t, seq, gi, c))
        seq += 1


def _request(g: ClientGroup, rng: random.Random, t: float, gi: int, c: int, n: int,
             address: str, method: str, path: str) -> Request:
    """Request number ``n``, from client ``c`` of group ``g``."""
    body = b""
    if g.form and method in ("POST", "PUT", "PATCH"):
        body = urlencode({k: v.format(client=c, n=n) for k, v in g.form.items()}).encode()
    headers = tuple((k, v.format(client=c, n=n)) for k, v in g.headers.items())
    agent = g.user_agent
    if agent is not None:
        agent = rotated_user_agent(rng) if agent == "rotate" else agent.format(client=c, n=n)
        headers = (*(h for h in headers if h[0].lower() != "user-agent"), ("User-Agent", agent))
    query = g.query
    if query is not None:
        query = f"q={rng.getrandbits(40):010x}" if query == "random" \
            else query.format(client=c, n=n)
    return Request(t, gi, c, address, method, path, body, headers, g.legitimate, query or "")
