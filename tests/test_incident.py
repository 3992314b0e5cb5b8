"""Incident reports: a synthetic anomaly through a real Limiter, Monitor and Shield (the WSGI
middleware, an injected clock), and the report built when it ends: the timeline in order,
the dimension that explained the surge, each action with the requests it refused, the top
offenders and the traffic served before and during it."""

from __future__ import annotations

import json
import logging
import random

import pytest

from test_attribution import SHAPES, T0, Group, Site, spread, usual, visitors
from throttlekit import ConfigError
from throttlekit.monitor import Monitor
from throttlekit.monitor.incident import IncidentReport, Incidents, render_markdown

BOT = "python-requests/2.31"
KINDS_IN_ORDER = ["rise", "detected", "attribution", "shield"]


def agent_flood(site: Site, start: float, end: float) -> tuple[Group, Group]:
    bots = Group("bots", visitors(site.rng, spread(site.rng, 1500), agent=BOT,
                                  shape=SHAPES["chrome"], cookies=False), 1.0,
                 start=start, end=end)
    return usual(site), bots


def heavy_hitters(rng: random.Random, start: float, end: float) -> Group:
    """40 clients at 25 req/s each: the client dimension explains it, the shield bans."""
    return Group("heavy", visitors(rng, spread(rng, 40)), 25.0, start=start, end=end)


@pytest.fixture(scope="module")
def caught() -> tuple[Site, Incidents, list[IncidentReport], dict[str, int]]:
    """One site, two incidents: a user-agent flood (contained), then heavy hitters
    (banned); the shield refusals counted by the test itself."""
    logging.getLogger("throttlekit").setLevel(logging.ERROR)
    site = Site(shield={})
    site.limiter.admission()
    incidents = Incidents(site.monitor, shield=site.guard, keep=1)
    seen: list[IncidentReport] = []
    incidents.on_incident(seen.append)
    refused = {"shield": 0, "blocked": 0}
    site.limiter.on("blocked", lambda e: refused.__setitem__("blocked", refused["blocked"] + 1))
    base, bots = agent_flood(site, 60.0, 90.0)
    site.run([base, bots], 0.0, 90.0)
    refused["shield"] = sum(1 for rule, _, _ in site.refused_by if rule == "shield")
    site.run([base], 90.0, 130.0)
    assert len(seen) == 1
    refused["blocked"] = 0
    site.run([base, heavy_hitters(site.rng, 130.0, 150.0)], 130.0, 150.0)
    site.run([base], 150.0, 200.0)
    return site, incidents, seen, refused


@pytest.mark.slow
def test_the_report_of_a_contained_user_agent_flood(caught) -> None:
    _, _, seen, refused = caught
    report = seen[0].as_dict()
    assert report["dimension"] == "user_agent"
    assert [c["value"] for c in report["attribution"]["culprits"]] == [BOT]
    assert T0 + 60 <= report["started_at"] < report["detected_at"] <= T0 + 65
    assert T0 + 90 < report["ended_at"] < T0 + 130
    kinds = [e["kind"] for e in report["timeline"]]
    assert kinds[:4] == KINDS_IN_ORDER and kinds[-1] == "end"
    assert kinds.index("contain") < kinds.index("end")
    times = [e["at"] for e in report["timeline"]]
    assert times == sorted(times)
    [contain] = [a for a in report["actions"] if a["action"] == "contain"]
    assert contain["what"] == f"user_agent '{BOT}'"
    # every request the shield's rule refused, from its containment to the end
    assert contain["refused"] == refused["shield"] > 20_000
    assert report["refused"] == {"shield throttled": refused["shield"]}
    assert not any(a["action"] == "ban" for a in report["actions"])
    before, during = report["served"]["before"], report["served"]["during"]
    assert 130 < before["served_rate"] < 170  # the usual 150 visitors at 1 req/s
    assert during["served"] == during["requests"] - during["refused"]
    assert during["refused"] == refused["shield"]
    assert during["served_rate"] > 140  # the usual traffic still served, bots at 1 req/s
    assert json.loads(json.dumps(report)) == report


@pytest.mark.slow
def test_the_report_of_heavy_hitters_names_the_bans_and_their_effect(caught) -> None:
    site, incidents, seen, refused = caught
    assert len(seen) == 2 and list(incidents.reports) == [seen[1]]  # keep=1
    assert incidents.latest is seen[1] and not incidents.open
    report = seen[1].as_dict()
    assert report["dimension"] == "client"
    [ban] = [a for a in report["actions"] if a["action"] == "ban"]
    assert ban["what"] == "40 clients banned"
    assert ban["refused"] == refused["blocked"] > 1000
    heavy = {o["key"] for o in report["offenders"]}
    assert len(heavy) == site.monitor.top_n and all(o["banned"] for o in report["offenders"])
    assert heavy <= {str(k) for k in site.guard.banned}
    kinds = [e["kind"] for e in report["timeline"]]
    assert kinds.index("detected") < kinds.index("ban") < kinds.index("end")
    assert "admission" in kinds  # the admission limit at detection


@pytest.mark.slow
def test_markdown_has_every_part_and_quotes_traffic_values(caught) -> None:
    _, _, seen, _ = caught
    text = seen[0].markdown()
    for heading in ("# Incident", "## Timeline", "## Actions and their effect",
                    "## Top offenders", "## Traffic served"):
        assert heading in text
    assert f"`{BOT}`" in text and "| contain |" in text
    hostile = seen[0].as_dict()
    hostile["attribution"] = {"coverage": 1.0, "culprits": [
        {"value": "a|b`\n# not a heading", "rate": 1.0, "baseline": 0.0}]}
    out = render_markdown(hostile)
    assert "`a\\|b' # not a heading`" in out and "\n# not a heading" not in out


def test_the_status_document_lists_incidents() -> None:
    monitor = Monitor()
    incidents = Incidents(monitor)
    data = monitor.snapshot(T0)
    assert data["incidents"] == [] and data["incident_open"] is False
    with pytest.raises(ConfigError):
        Incidents(monitor, keep=0)
    with pytest.raises(ConfigError):
        incidents.on_incident(42)  # type: ignore[arg-type]


# -- the endpoint and the command line ---------------------------------------------------

TOKEN = "a-status-token-of-enough-length"


async def not_found(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@pytest.mark.slow
def test_the_cli_prints_the_latest_report_from_a_served_endpoint(caught, capsys, monkeypatch
                                                                 ) -> None:
    from test_asgi import serve
    from throttlekit.cli import main
    from throttlekit.monitor.status import ASGIStatusMiddleware, StatusEndpoint

    site, incidents, seen, _ = caught
    endpoint = StatusEndpoint(site.monitor, shield=site.guard, incidents=incidents,
                              token=TOKEN)
    with serve(ASGIStatusMiddleware(not_found, endpoint)) as port:
        url = f"http://127.0.0.1:{port}/throttlekit/status"
        assert main(["incident", url, "--token", TOKEN]) == 0
        assert capsys.readouterr().out == seen[1].markdown()
        monkeypatch.setenv("THROTTLEKIT_TOKEN", TOKEN)
        assert main(["incident", url + "/incidents", "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == seen[1].as_dict()
        assert main(["incident", url, "--token", "x" * 20]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["throttlekit incident: /throttlekit/status/incidents: HTTP 401 (a token "
                       "is needed: --token-file, THROTTLEKIT_TOKEN or --token)"]
    assert main(["incident", "file:///etc/passwd"]) == 2
    assert "must be an http(s) URL" in capsys.readouterr().err


def test_the_cli_says_when_there_is_no_incident_yet(capsys) -> None:
    from test_asgi import serve
    from throttlekit.cli import main
    from throttlekit.monitor.status import ASGIStatusMiddleware, StatusEndpoint

    monitor = Monitor()
    endpoint = StatusEndpoint(monitor, incidents=Incidents(monitor))
    with serve(ASGIStatusMiddleware(not_found, endpoint)) as port:
        assert main(["incident", f"http://127.0.0.1:{port}/throttlekit/status"]) == 1
    assert capsys.readouterr().err == "throttlekit incident: no incident reported yet\n"


@pytest.mark.slow
def test_the_endpoint_serves_incidents_under_the_same_rules(caught) -> None:
    from throttlekit.monitor.status import StatusEndpoint

    site, incidents, seen, _ = caught
    endpoint = StatusEndpoint(site.monitor, incidents=incidents, token=TOKEN)
    path = "/throttlekit/status/incidents"
    assert endpoint.serves(path) and not StatusEndpoint(site.monitor).serves(path)
    code, _, _ = endpoint.respond("GET", "127.0.0.1", None, path=path)
    assert code == 401
    code, headers, body = endpoint.respond("GET", "127.0.0.1", f"Bearer {TOKEN}", path=path,
                                           accept="text/html")
    assert code == 200 and ("Content-Type", "application/json") in headers
    assert json.loads(body) == {"incidents": [seen[1].as_dict()]}
    status = endpoint.payload()
    assert [i["dimension"] for i in status["incidents"]] == ["client"]
