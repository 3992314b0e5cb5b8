"""The shield contains a surge on the dimension that explains it (traffic models of
test_attribution, the real WSGI middleware, an injected clock).

A throttle on the values found (all their clients together), never a refusal outside
them; nothing banned or throttled in a flash crowd; everything lifted when the anomaly
ends; and what it did shows in the logs and the status document.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from typing import Any

import pytest

from test_attribution import (
    AGENTS,
    SHAPES,
    T0,
    Group,
    Site,
    Visitor,
    environ,
    spread,
    usual,
    visitors,
)
from throttlekit import ConfigError, Limiter, WSGIMiddleware
from throttlekit.monitor import Containment, Monitor, Shield
from throttlekit.monitor._containment import ContainmentRule
from throttlekit.monitor.status import StatusEndpoint
from throttlekit.testing import FakeClock

BOT = "python-requests/2.31"


def shield_refusals(site: Site) -> list[dict[str, Any]]:
    """The environs of the requests the shield's rule refused."""
    return [raw for rule, _key, raw in site.refused_by if rule == "shield"]


def refused_share(codes: list[int]) -> float:
    return sum(c != 200 for c in codes) / max(1, len(codes))


def agent_flood(site: Site) -> tuple[Group, Group]:
    rng = site.rng
    base = usual(site)
    bots = Group("bots", visitors(rng, spread(rng, 1500), agent=BOT, shape=SHAPES["chrome"],
                                  cookies=False), 1.0, start=60.0, end=90.0)
    return base, bots


@pytest.mark.slow
def test_a_user_agent_surge_is_throttled_on_that_agent_then_lifted(caplog):
    """The shield throttles the flood's user agent to its allowance (all its clients
    together), refuses nothing else, logs it, and lifts it when the anomaly ends."""
    caplog.set_level(logging.INFO, logger="throttlekit")
    site = Site(shield={})
    base, bots = agent_flood(site)
    site.run([base, bots], 0.0, 66.0)
    [held] = site.guard.containment()
    assert (held.dimension, held.value, held.allowance) == ("user_agent", BOT, 1.0)
    assert site.guard.banned == {} and site.limiter.blocked() == []
    site.statuses.clear()
    site.run([base, bots], 66.0, 90.0)
    assert refused_share(site.statuses["bots"]) > 0.99
    assert set(site.statuses["usual"]) == {200}
    assert {raw["HTTP_USER_AGENT"] for raw in shield_refusals(site)} == {BOT}
    served = len(site.statuses["bots"]) - sum(c != 200 for c in site.statuses["bots"])
    assert served <= 24 * 1.0 + 10  # about its allowance of 1 req/s, all bots together
    site.run([base], 90.0, 110.0)  # the flood is over: calm, then the cooldown
    assert not site.monitor.anomaly and site.guard.containment() == []
    site.statuses.clear()
    site.run([Group("bots", bots.clients, 1.0)], 110.0, 112.0)  # 3,000 requests in 2 s
    assert set(site.statuses["bots"]) == {200}
    events = [getattr(r, "throttlekit_event", None) for r in caplog.records]
    assert events.count("shield_contain") == 1 and events.count("shield_uncontain") == 1
    contain = next(r for r in caplog.records
                   if getattr(r, "throttlekit_event", None) == "shield_contain")
    assert (contain.dimension, contain.value, contain.allowance) == ("user_agent", BOT, 1.0)
    assert contain.share > 0.8 and contain.baseline == 0.0


@pytest.mark.slow
def test_a_network_surge_never_refuses_a_client_outside_the_network():
    """A flood from one /16 beside usual visitors in the neighbouring /16s and in the same
    /8: every request the shield refused came from inside the contained /16, and no
    usual visitor outside it was refused."""
    site = Site(shield={})
    rng = site.rng
    base = usual(site)
    base.clients += visitors(rng, spread(rng, 20, within="203.1.0.0"))
    base.clients += visitors(rng, spread(rng, 20, within="203.255.0.0"))
    bots = Group("bots", visitors(rng, spread(rng, 1500, within="203.0.0.0")), 1.0,
                 start=60.0, end=80.0)
    site.run([base, bots], 0.0, 80.0)
    assert [(c.dimension, c.value) for c in site.guard.containment()] == [
        ("net16", "203.0.0.0/16")]
    inside = ipaddress.ip_network("203.0.0.0/16")
    refused = shield_refusals(site)
    assert refused and all(ipaddress.ip_address(r["REMOTE_ADDR"]) in inside for r in refused)
    assert set(site.statuses["usual"]) == {200}
    assert refused_share(site.statuses["bots"]) > 0.8  # detected after ~2 s of 20


@pytest.mark.slow
def test_a_path_surge_keeps_the_paths_usual_rate():
    """A flood on /search, which usual visitors use too: /search keeps factor x its own
    baseline (all clients together), the other paths are untouched."""
    site = Site(shield={})
    rng = site.rng
    base = usual(site)
    bots = Group("bots", visitors(rng, spread(rng, 1500)), 1.0, paths=(("/search", 1.0),),
                 start=60.0, end=90.0)
    site.run([base, bots], 0.0, 70.0)
    [held] = site.guard.containment()
    assert (held.dimension, held.value) == ("path", "/search")
    assert held.allowance == pytest.approx(2.5 * held.baseline)
    assert 15 < held.baseline < 30  # 15% of the usual 150 req/s
    site.log.clear()
    site.run([base, bots], 70.0, 90.0)
    assert all(raw["PATH_INFO"] == "/search" for raw in shield_refusals(site))
    assert all(code == 200 for group, path, code in site.log if path != "/search")
    search = [code for group, path, code in site.log if path == "/search"]
    served = sum(code == 200 for code in search)
    assert 0.8 * 20 * held.allowance <= served <= 1.2 * 20 * held.allowance
    assert len(search) > 20 * 1500  # the flood was there


def test_a_flash_crowd_gets_no_ban_and_no_throttle(caplog):
    """1,500 new visitors behaving like the usual ones (Poisson, 1 req/s, spread): the
    anomaly is raised, the shield engages, bans nobody, throttles nothing, says why once;
    every request is served."""
    caplog.set_level(logging.INFO, logger="throttlekit.shield")
    site = Site(shield={})
    rng = site.rng
    base = usual(site)
    crowd = Group("crowd", visitors(rng, spread(rng, 1500)), 1.0, start=60.0, end=90.0)
    site.run([base, crowd], 0.0, 90.0)
    assert site.guard.engagements == 1
    assert site.guard.banned == {} and site.limiter.blocked() == []
    assert site.guard.containment() == [] and shield_refusals(site) == []
    assert set(site.statuses["crowd"]) == {200} and set(site.statuses["usual"]) == {200}
    events = [getattr(r, "throttlekit_event", None) for r in caplog.records]
    assert events.count("shield_unexplained") == 1 and "shield_ban" not in events
    assert site.guard.attribution is not None and not site.guard.attribution.narrow


def test_dry_run_says_what_it_would_throttle_and_throttles_nothing(caplog):
    """dry_run: a 'would throttle' record with the value; every request served."""
    caplog.set_level(logging.WARNING, logger="throttlekit.shield")
    site = Site(shield={"dry_run": True})
    base, bots = agent_flood(site)
    site.run([base, bots], 0.0, 70.0)
    assert site.guard.containment() == [] and shield_refusals(site) == []
    assert set(site.statuses["bots"]) == {200}
    records = [r for r in caplog.records if getattr(r, "throttlekit_event", "") ==
               "shield_contain"]
    assert records and records[0].value == BOT and records[0].dry_run
    assert "would throttle" in records[0].getMessage()


def test_the_status_document_shows_the_attribution_and_the_containment():
    """The status endpoint's JSON (through the monitor's snapshot) carries each
    dimension's heaviest values, the attribution, and what the shield contains and why."""
    site = Site(shield={})
    base, bots = agent_flood(site)
    site.run([base, bots], 0.0, 66.0)
    data = StatusEndpoint(site.monitor, shield=site.guard).payload()
    assert data["attribution"]["dimension"] == "user_agent"
    assert data["attribution"]["culprits"][0]["value"] == BOT
    assert data["recent_anomalies"][0]["attribution"]["dimension"] == "user_agent"
    [value] = data["containment"]["values"]
    assert value["dimension"] == "user_agent" and value["value"] == BOT
    assert "of the surge's excess" in value["reason"] and value["allowance"] == 1.0
    assert data["containment"]["total"] == {"user_agent": 1}
    agents = data["dimensions"]["user_agent"]
    assert agents["top"][0][0] == BOT and agents["top"][0][3] == 0.0  # its baseline
    assert set(data["dimensions"]) == {"client", "path", "user_agent", "fingerprint",
                                       "net24", "net16"}


def test_one_rule_gives_each_value_its_own_allowance():
    """Two contained values with allowances 50 and 2 req/s: the rule's rate is the larger
    over 10 s, the smaller value's requests cost 25 each; a request with neither value
    is never refused."""
    clock = FakeClock(T0)
    limiter = Limiter(clock=clock)
    rule = ContainmentRule(limiter, "shield")
    rule.add([Containment("user_agent", "a", 50.0, 0, 0, 0, T0),
              Containment("user_agent", "b", 2.0, 0, 0, 0, T0)])
    mw = WSGIMiddleware(lambda e, s: (s("200 OK", []), [b""])[1], limiter)
    served = {"a": 0, "b": 0, "c": 0}
    for i in range(3000):  # 100 req/s of each for 10 s
        clock.set(T0 + i / 300)
        agent = "abc"[i % 3]
        v = Visitor(f"10.0.{i % 250}.1", agent, SHAPES["firefox"], "en", False)
        codes: list[str] = []
        for _ in mw(environ(v, "/"), lambda s, h, e=None, codes=codes: codes.append(s)):
            pass
        served[agent] += codes[0].startswith("200")
    assert served["c"] == 1000
    assert 450 <= served["a"] <= 550 and 15 <= served["b"] <= 25
    assert rule.clear() and rule.key(None) is None


def test_containment_settings_are_checked():
    """Out-of-range containment settings, and containment on a limiter-like without
    throttle rules, are ConfigErrors (contain=False builds)."""
    for bad in ({"min_allowance": 0}, {"max_contained": 0}):
        with pytest.raises(ConfigError):
            limiter = Limiter()
            Shield(limiter, Monitor(limiter), **bad)

    class Bans:
        def block(self, key: str, ttl: float, reason: str) -> None: ...

        def unblock(self, key: str) -> bool:
            return True

    with pytest.raises(ConfigError, match="contain=False"):
        Shield(Bans(), Monitor())
    assert Shield(Bans(), Monitor(), contain=False).containment() == []


def test_the_shields_rule_raises_no_anomaly_of_its_own():
    """The containment rule's events are counted but watched by no detector."""
    site = Site(shield={})
    base, bots = agent_flood(site)
    site.run([base, bots], 0.0, 70.0)
    assert ("shield", "throttled", False) in site.monitor.counts()
    assert "shield" not in site.monitor.rule_detectors()
    assert AGENTS  # the model's browsers, for the other tests


def test_containment_through_the_asgi_middleware():
    """The same dimensions and the same throttle through the ASGI middleware: a flood of
    one user agent (header names as bytes, in order) is contained on that agent only."""
    import asyncio

    from throttlekit import ASGIMiddleware

    clock = FakeClock(T0)
    limiter = Limiter(clock=clock)
    limiter.throttle("per-ip", "50/second")
    monitor = Monitor(limiter)
    shield = Shield(limiter, monitor)

    async def ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
        for message in ({"type": "http.response.start", "status": 200, "headers": []},
                        {"type": "http.response.body", "body": b"ok"}):
            await send(message)

    asgi = ASGIMiddleware(ok, limiter)
    body = {"type": "http.request", "body": b"", "more_body": False}

    async def get(ip: str, agent: str) -> int:
        started: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            started.extend([message["status"]] if "status" in message else [])

        headers = [(b"host", b"t"), (b"user-agent", agent.encode()), (b"accept-language", b"en")]
        await asgi({"type": "http", "method": "GET", "path": "/", "headers": headers,
                    "query_string": b"", "client": (ip, 1234)}, lambda: _echo(body), send)
        return started[0]

    async def traffic() -> dict[str, list[int]]:
        codes: dict[str, list[int]] = {"usual": [], "bots": []}
        usual_ips = spread(random.Random(3), 40)
        bot_ips = spread(random.Random(4), 400)
        for second in range(50):
            flood = second >= 40
            slots = [("usual", ip, f"browser {i % 3}") for i, ip in enumerate(usual_ips)]
            slots += [("bots", ip, BOT) for ip in bot_ips] if flood else []
            for i, (who, ip, agent) in enumerate(slots):
                clock.set(T0 + second + i / len(slots))
                code = await get(ip, agent)
                if second >= 45:
                    codes[who].append(code)
        return codes

    codes = asyncio.run(traffic())
    assert [(c.dimension, c.value) for c in shield.containment()] == [("user_agent", BOT)]
    assert set(codes["usual"]) == {200}
    assert refused_share(codes["bots"]) > 0.95


async def _echo(message: dict[str, Any]) -> dict[str, Any]:
    return message
