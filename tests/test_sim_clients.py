"""The simulator's clients (cookies, challenges, user agents, query strings, arrivals,
pulses) and the protected run's WSGI side: responses end at their simulated time."""

from __future__ import annotations

import ipaddress

import pytest

from throttlekit import ConfigError
from throttlekit._challenge import (
    PassSigner,
    WorkChallenge,
    pass_cookie,
    pass_redirect,
    read_answer,
    work_page,
)
from throttlekit.cli._replay import REDIRECT_SECONDS, _next_step
from throttlekit.cli._server import ServiceTime
from throttlekit.cli.scenarios import ClientGroup, Scenario, ServerSpec
from throttlekit.cli.simulate import run_simulation


def requests_of(*groups: ClientGroup, duration: float = 60.0, seed: int = 0):
    return list(Scenario("s", duration, groups).requests(seed))


def test_rotated_user_agent_is_fresh_per_request():
    reqs = requests_of(ClientGroup("bots", clients=3, rate=5.0, user_agent="rotate",
                                   headers={"User-Agent": "fixed", "X-A": "1"}))
    agents = [dict(r.headers)["User-Agent"] for r in reqs]
    assert len(reqs) > 800
    assert len(set(agents)) > 0.95 * len(agents)
    assert all(a.startswith("Mozilla/5.0 (") for a in agents)
    assert all(dict(r.headers)["X-A"] == "1" for r in reqs)
    fixed = requests_of(ClientGroup("g", clients=2, rate=1.0, user_agent="bot/{client}"))
    assert {dict(r.headers)["User-Agent"] for r in fixed} == {"bot/0", "bot/1"}


def test_random_query_string_per_request():
    reqs = requests_of(ClientGroup("g", clients=2, rate=5.0, query="random"))
    queries = [r.query for r in reqs]
    assert all(q.startswith("q=") for q in queries)
    assert len(set(queries)) == len(queries)
    templated = requests_of(ClientGroup("g", clients=1, rate=1.0, query="page={n}"))
    assert [r.query for r in templated[:3]] == ["page=0", "page=1", "page=2"]


def test_arrive_spreads_clients_first_requests_over_the_interval():
    """100 visitors arriving over 50 s from t=10: none before, first requests spread
    over the interval (within one period of it), each then at its rate."""
    reqs = requests_of(ClientGroup("new", clients=100, rate=1.0, jitter=0, start=10.0,
                                   arrive=50.0), duration=100.0)
    first: dict[int, float] = {}
    for r in reqs:
        first.setdefault(r.client, r.t)
    assert len(first) == 100
    assert 10.0 <= min(first.values()) < 13.0 and 57.0 < max(first.values()) < 61.0
    arrived_by_35 = sum(1 for t in first.values() if t < 35.0)
    assert 30 <= arrived_by_35 <= 70
    per_client = [sum(1 for r in reqs if r.client == c) for c in range(100)]
    assert all(abs(n - (100 - first[c])) <= 1.5 for c, n in enumerate(per_client))


def test_pulse_sends_only_in_on_periods():
    """pulse = [2, 3] from t=5: requests only in [5, 7), [10, 12), ..."""
    reqs = requests_of(ClientGroup("p", clients=20, rate=10.0, start=5.0, pulse=(2.0, 3.0)),
                       duration=50.0)
    assert all((r.t - 5.0) % 5.0 < 2.0 for r in reqs)
    assert {int((r.t - 5.0) // 5.0) for r in reqs} == set(range(9))
    # the same volume per on period as a group always on would send in 2 s
    assert len(reqs) == pytest.approx(20 * 10.0 * 2.0 * 9, rel=0.05)
    expected = Scenario("s", 50.0, (ClientGroup("p", clients=20, rate=10.0, start=5.0,
                                                pulse=(2.0, 3.0)),)).expected_requests()
    assert expected == pytest.approx(len(reqs), rel=0.05)


def test_spread_addresses_cover_the_network():
    g = ClientGroup("g", clients=3000, rate=1.0, addresses="172.16.0.0/12", spread=True)
    addresses = [ipaddress.ip_address(g.address(c)) for c in range(g.clients)]
    net = ipaddress.ip_network("172.16.0.0/12")
    assert len(set(addresses)) == 3000 and all(a in net for a in addresses)
    assert len({int(a) >> 8 for a in addresses}) == 3000  # one address per /24
    assert len({int(a) >> 16 for a in addresses}) == 16  # every /16 of the /12


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cookies": "yes"}, "cookies must be true or false"),
        ({"follows_challenge": 1}, "follows_challenge must be true or false"),
        ({"user_agent": 3}, "user_agent must be a string"),
        ({"arrive": -1}, "arrive must be a number >= 0"),
        ({"pulse": (0, 5)}, "pulse must be"),
        ({"pulse": (1, 2, 3)}, "pulse must be"),
    ],
)
def test_bad_client_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        ClientGroup("g", clients=1, rate=1.0, **options)


def _cookies_seen(seen: list[tuple[str, str, str]]):
    """Rules that record (address, path, Cookie header) of every request."""

    def rules(limiter):
        def record(r):
            seen.append((r.headers.get("x-group", ""), r.path, r.headers.get("cookie", "")))
            return False

        limiter.blocklist("record", record)

    return rules


def test_clients_keeping_cookies_send_back_what_answers_set():
    """The app starts a session (Set-Cookie: sid=...) when a request has none; clients
    that keep cookies send it from then on, the others never."""
    seen: list[tuple[str, str, str]] = []
    s = Scenario("c", 10.0, (
        ClientGroup("keep", clients=3, rate=2.0, cookies=True, headers={"X-Group": "keep"}),
        ClientGroup("drop", clients=3, rate=2.0, addresses="10.2.0.0/16",
                    headers={"X-Group": "drop"}),
    ))
    r = run_simulation(s, rules=_cookies_seen(seen), shield=False)
    keep = [c for g, _, c in seen if g == "keep"]
    assert keep[:3] == ["", "", ""]  # each client's first request
    assert all(c.startswith("sid=0.") for c in keep[3:]) and len(keep) > 50
    assert {c for g, _, c in seen if g == "drop"} == {""}
    assert r.protected is not None and r.protected.share(True, "answered") == 1.0


def _challenge_rules(limiter):
    """Everything without a pass cookie is challenged with the cookie round trip."""
    limiter.blocklist("needs-pass",
                      lambda r: "throttlekit_pass=" not in r.headers.get("cookie", ""))


def _challenge(kind, rule, decision, accept, headers):
    return pass_redirect("/", pass_cookie("signed", max_age=600, secure=False))


def test_challenges_are_followed_by_clients_that_can():
    """A browser (cookies kept, follows the redirect) passes the cookie round trip: its
    first request is answered one round trip later, the rest at once. A client that
    follows without keeping cookies never passes (counted as challenged); one that keeps
    cookies but does not follow loses its first request only."""
    s = Scenario("ch", 20.0, (
        ClientGroup("browser", clients=5, rate=1.0, cookies=True, follows_challenge=True,
                    paths=("/page",)),
        ClientGroup("bot", clients=5, rate=1.0, follows_challenge=True, legitimate=False,
                    addresses="10.2.0.0/16"),
        ClientGroup("curl", clients=5, rate=1.0, cookies=True, addresses="10.3.0.0/16"),
    ), server=ServerSpec(workers=10, timeout=5.0))
    r = run_simulation(s, rules=_challenge_rules, shield=False,
                       middleware_options={"responders": {"blocked": _challenge}})
    run = r.protected
    assert run is not None
    browser, bot, curl = run.per_group
    assert browser[1] == browser[0] > 80  # every request answered in time
    assert sorted(run.latencies)[-5:] == [pytest.approx(REDIRECT_SECONDS)] * 5  # 1 per client
    assert run.attack == {"answered": 0, "late": 0, "dropped": 0, "challenge": bot[0]}
    assert curl[0] - curl[1] == 5  # each client's first request
    assert run.legit["challenge"] == 5
    assert r.attack_refused_share == 1.0


def test_a_browser_solves_the_work_page():
    """The work page's challenge is solved and posted back as the page's script does."""
    signer = PassSigner(b"k" * 32)
    work = WorkChallenge(signer, difficulty=6)
    page = work_page(work.issue("192.0.2.1"), 6, action="/.tk/answer", return_to="/cart")
    _, method, target, body = _next_step(list(page.headers), page.body)
    assert (method, target) == ("POST", "/.tk/answer")
    answer = read_answer(body)
    assert answer is not None and answer.return_to == "/cart"
    assert work.redeem(answer.challenge, answer.solution, "192.0.2.1") is not None
    assert _next_step([("Content-Type", "text/plain")], b"Forbidden") is None


def test_responses_end_at_their_simulated_time():
    """A concurrency lease taken by the middleware is given back when the server
    finishes the request: one worker, 1 s per request, a client sending every 0.3 s,
    at most 2 in flight. The model's own queue says which requests find 2 in flight."""
    s = Scenario("lease", 6.0, (ClientGroup("c", clients=1, rate=1 / 0.3, jitter=0),),
                 server=ServerSpec(workers=1, timeout=30.0,
                                   service=(("*", ServiceTime(1.0, 1.0)),)))
    r = run_simulation(s, rules=lambda lim: lim.concurrency("two", 2), shield=False)
    ends: list[float] = []
    admitted = refused = 0
    for req in s.requests(0):
        if sum(1 for e in ends if e > req.t) < 2:
            ends.append(max([req.t, *ends]) + 1.0)
            admitted += 1
        else:
            refused += 1
    run = r.protected
    assert run is not None and refused > 5
    assert run.legit["429"] == refused
    assert run.legit["answered"] == admitted


def test_refusals_are_counted_by_status():
    """429 from a throttle, 403 from a blocklist: each is its own outcome."""
    s = Scenario("st", 10.0, (
        ClientGroup("busy", clients=1, rate=20.0, legitimate=False, addresses="10.2.0.0/16"),
        ClientGroup("blocked", clients=2, rate=1.0, legitimate=False, addresses="10.3.0.0/16"),
        ClientGroup("fine", clients=2, rate=1.0),
    ))

    def rules(limiter):
        limiter.blocklist("nets", ips=["10.3.0.0/16"])
        limiter.throttle("per-ip", "5/second")

    r = run_simulation(s, rules=rules, shield=False)
    run = r.protected
    assert run is not None
    assert run.attack["403"] == run.per_group[1][0]
    assert run.attack["429"] > 100 and run.attack["answered"] > 40
    assert run.stops(False) == {"429": run.attack["429"], "403": run.attack["403"]}
    assert r.unprotected is not None and r.unprotected.stops(False) == {}


def test_the_documented_scenario_file_loads(tmp_path):
    """docs/under-attack.md's example scenario is a valid file with every option."""
    from pathlib import Path

    from throttlekit.cli.scenarios import load_scenario

    doc = (Path(__file__).resolve().parent.parent / "docs" / "under-attack.md").read_text()
    section = doc[doc.index("## Simulating an attack"):]
    example = section[section.index("```toml") + 7:]
    f = tmp_path / "incident.toml"
    f.write_text(example[:example.index("```")])
    s = load_scenario(str(f))
    flood = s.groups[1]
    assert (flood.spread, flood.user_agent, flood.query, flood.pulse) == \
        (True, "rotate", "random", (10, 20))
    assert s.groups[2].arrive == 110 and s.server.workers == 24
    assert s.server.service_time("/search").p90 == 0.4
