"""`throttlekit simulate`: scenarios replayed in front of a model of the server, without
throttlekit and through the real WSGI middleware, on simulated time. The scenarios run at
reduced length (and scale) here."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest

from throttlekit import ConfigError
from throttlekit.cli import main
from throttlekit.cli.scenarios import BUILTIN, ClientGroup, ServerSpec, load_scenario
from throttlekit.cli.simulate import run_simulation

SMALL_TOML = """
name = "small"
description = "a short flood"
duration = 60

[[clients]]
name = "visitors"
clients = 20
rate = 1.0
paths = ["/", "/products"]
addresses = "10.9.0.0/24"

[[clients]]
name = "flood"
legitimate = false
clients = 20
total_rate = 400
start = 40
end = 55
paths = ["/"]
addresses = "198.51.100.0/24"
headers = { "User-Agent" = "flood/{client}" }
"""


@pytest.fixture(scope="module")
def default_run():
    """The default scenario with the default shield (150 s: 90 s of flood), run once."""
    return run_simulation(replace(BUILTIN["default"], duration=150.0))


@pytest.fixture(scope="module")
def distributed_run():
    """The distributed flood for 30 s after the first minute, run once."""
    return run_simulation(replace(BUILTIN["distributed"], duration=90.0))


@pytest.mark.slow
def test_default_scenario_meets_the_acceptance_bar(default_run):
    """Default flood: detected within 5 s, >= 99% legit served, >= 95% attack refused,
    no legitimate client banned, no false alarm before the attack."""
    r = default_run
    assert r.legit_total > 25_000 and r.attack_total > 150_000
    assert r.detected_after is not None and 0 < r.detected_after <= 5.0
    assert r.legit_served_share >= 0.99
    assert r.attack_refused_share >= 0.95
    assert r.legit_banned == []
    assert r.banned >= 450  # the flooding addresses were found and banned
    assert r.false_alarms == 0


@pytest.mark.slow
def test_default_scenario_timeline_and_latency(default_run):
    """The timeline has one row per simulated second; latency quantiles are measured."""
    r = default_run
    assert len(r.timeline) == 150
    assert sum(row[2] + row[3] for row in r.timeline) == r.attack_total
    assert sum(r.timeline[30][2:]) == 0  # no attack before t=60
    assert sum(r.timeline[100][2:]) > 1000  # the flood is on at t=100 ...
    assert r.timeline[100][2] < r.timeline[100][3] / 10  # ... and mostly refused
    assert 0 < r.latency(0.5) <= r.latency(0.99) < 0.05


def test_without_the_shield_the_flood_gets_through(tmp_path):
    """Same kind of flood, shield off: detected, but most of the attack is served."""
    f = tmp_path / "small.toml"
    f.write_text(SMALL_TOML)
    small = load_scenario(str(f))
    on = run_simulation(small)
    off = run_simulation(small, shield=False)
    assert off.detected_after is not None and on.detected_after is not None
    assert off.attack_refused_share < 0.2
    assert on.attack_refused_share > 0.6  # bans land a few seconds into a 15 s flood
    assert off.banned == 0 and on.legit_banned == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "refused", "duration"),
    [("single-source", 0.99, 100.0), ("brute-force", 0.95, 150.0), ("scanner", 0.95, 150.0)],
)
def test_builtin_attacks_are_contained(name, refused, duration):
    """Single-source flood, password guessing and scanning are refused by the
    recommended rules while legitimate clients are served."""
    r = run_simulation(replace(BUILTIN[name], duration=duration))
    assert r.attack_refused_share >= refused
    assert r.legit_served_share >= 0.99
    assert r.legit_banned == []


@pytest.mark.slow
def test_distributed_flood_is_detected_without_banning_visitors(distributed_run):
    """5000 addresses each slower than a visitor: the anomaly is seen, and the shield
    (rightly) finds no per-address offender to ban."""
    r = distributed_run
    assert r.detected_after is not None and r.detected_after <= 5.0
    assert r.legit_banned == []
    assert r.legit_served_share >= 0.99


@pytest.mark.slow
def test_unprotected_distributed_flood_is_an_outage(distributed_run):
    """Without throttlekit the server drowns: its queue is full, most legitimate requests
    are dropped, and the app is busy with the attack."""
    r = distributed_run
    bare = r.unprotected
    assert bare is not None and r.attack_window == (60.0, 90.0)
    assert bare.share(True, "answered") < 0.8  # a third of the run under attack
    assert bare.answered_between(60.0, 90.0) < 0.1
    assert bare.answered_between(0.0, 60.0) > 0.999  # before the flood: all in time
    assert bare.share(True, "dropped") > 0.25
    assert bare.utilisation is not None and bare.utilisation > 0.6  # 0.48 without attack
    assert bare.share(False, "answered") < 0.1  # the attack is mostly dropped too


@pytest.mark.slow
def test_protected_run_measures_what_throttlekit_prevents(default_run):
    """The same traffic through throttlekit: the flood is stopped before the app (bans:
    403), so the server keeps answering the visitors; unprotected it does not."""
    r = default_run
    bare, guarded = r.unprotected, r.protected
    assert bare is not None and guarded is not None
    assert bare.requests(True) == guarded.requests(True) == r.legit_total
    assert bare.answered_between(60.0, 150.0) < 0.3
    assert guarded.answered_between(60.0, 150.0) > 0.95
    assert guarded.share(False, "403") > 0.9 and bare.stops(False) == {}
    assert guarded.stopped_share(False) == pytest.approx(r.attack_refused_share)
    assert guarded.latency(0.99) < 1.0
    assert guarded.utilisation < bare.utilisation


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rotating-ua", "flash-crowd", "new-visitors"])
def test_new_builtin_scenarios_overwhelm_the_unprotected_server(name):
    """Each new scenario, at a quarter of its clients and workers, with 40 s after the
    surge starts: beyond capacity without throttlekit, and reported per group."""
    scenario = BUILTIN[name]
    visitors = replace(scenario, groups=scenario.groups[:1])
    assert scenario.server.workers == 24 and visitors.load() < 24 / 1.9  # 2x their load
    r = run_simulation(replace(scenario, duration=100.0).scaled(0.25))
    bare = r.unprotected
    assert bare is not None and r.protected is not None
    assert bare.answered_between(0.0, 60.0) > 0.999
    assert bare.answered_between(70.0, 100.0) < 0.3
    if name == "flash-crowd":  # no attack: everyone is a visitor
        assert r.attack_total == 0 and r.attack_window is None
    else:
        assert r.attack_total > 0 and r.protected.requests(False) == r.attack_total
    if name == "new-visitors":
        assert [scenario.groups[i].name for i in r.legit_groups] == ["visitors", "newcomers"]
        assert bare.group_share(2) < 0.5
    assert sum(bare.per_group[i][0] for i in range(len(bare.groups))) == \
        r.legit_total + r.attack_total


def test_runs_are_deterministic_for_a_seed(tmp_path):
    """The same seed gives the same outcomes to the request; another seed, others."""
    small = replace(load_scenario(_small_file(tmp_path)),
                    server=BUILTIN["default"].server).scaled(0.5)
    first, again, other = (run_simulation(small, seed=s) for s in (3, 3, 4))

    def outcomes(r):
        d = r.as_dict()
        for noisy in ("wall_seconds", "added_latency_us"):
            d.pop(noisy)
        return d

    assert outcomes(first) == outcomes(again)
    assert outcomes(first) != outcomes(other)


def _small_file(tmp_path) -> str:
    f = tmp_path / "small.toml"
    f.write_text(SMALL_TOML)
    return str(f)


def test_scenario_file_is_read(tmp_path):
    """A TOML scenario file gives its groups, rates (total_rate split per client) and times."""
    f = tmp_path / "small.toml"
    f.write_text(SMALL_TOML)
    s = load_scenario(str(f))
    assert s.name == "small" and s.duration == 60
    visitors, flood = s.groups
    assert visitors.legitimate and not flood.legitimate
    assert flood.rate == pytest.approx(20.0)
    assert s.attack_start == 40
    reqs = list(s.requests(seed=1))
    assert [r.t for r in reqs] == sorted(r.t for r in reqs)
    flood_reqs = [r for r in reqs if not r.legitimate]
    assert all(40 <= r.t < 55 for r in flood_reqs)
    assert len(flood_reqs) == pytest.approx(400 * 15, rel=0.05)
    assert {r.address for r in flood_reqs} <= {f"198.51.100.{i}" for i in range(1, 21)}
    assert dict(flood_reqs[0].headers)["User-Agent"].startswith("flood/")
    assert [r.t for r in s.requests(seed=1)][:50] == [r.t for r in reqs][:50]  # deterministic


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("duration = 10\n", "at least one [[clients]]"),
        ("[[clients]]\nclients = 0\nrate = 1\n", "clients must be a positive integer"),
        ("[[clients]]\nrate = -1\n", "rate must be a positive number"),
        ("[[clients]]\nrate = 1\njitter = 2\n", "jitter"),
        ("[[clients]]\nrate = 1\naddresses = \"10.0.0.300/8\"\n", "bad addresses"),
        ("[[clients]]\nrate = 1\nclients = 300\naddresses = \"10.0.0.0/24\"\n", "fewer addresses"),
        ("[[clients]]\nrate = 1\npaths = [\"nope\"]\n", "bad path 'nope'"),
        ("[[clients]]\nrate = 1\nspeed = 3\n", "unknown setting(s) speed"),
        ("[[clients]]\nrate = 1\nstart = 10\nend = 5\n", "end must be"),
    ],
)
def test_bad_scenario_files_are_config_errors(tmp_path, text, message):
    """Every bad scenario setting is a ConfigError naming it."""
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        load_scenario(str(f))


def test_old_scenario_files_load_unchanged(tmp_path):
    """A file of the earlier format: plain clients, no server modelled, and the very
    requests earlier versions generated for a seed (digest taken from them)."""
    s = load_scenario(_small_file(tmp_path))
    assert s.server == ServerSpec() and s.server.unlimited
    for g in s.groups:
        assert (g.cookies, g.follows_challenge, g.user_agent, g.query, g.arrive, g.pulse,
                g.spread) == (False, False, None, None, 0.0, None, False)
    digest = hashlib.sha256()
    for r in s.requests(seed=5):
        assert r.query == ""
        digest.update(repr((r.t, r.group, r.client, r.address, r.method, r.path, r.body,
                            r.headers, r.legitimate)).encode())
    assert digest.hexdigest()[:16] == "d1dc2c1011fbec7d"


def test_client_options_and_server_are_read_from_a_file(tmp_path):
    f = tmp_path / "new.toml"
    f.write_text(SMALL_TOML + """
[[clients]]
name = "newcomers"
clients = 10
rate = 1
cookies = true
follows_challenge = true
arrive = 20
pulse = [5, 5]
query = "random"
user_agent = "rotate"
spread = true
addresses = "10.128.0.0/9"

[server]
workers = 3
queue = 5
timeout = 4
[server.service]
"/" = 0.1
"*" = { median = 0.02, p90 = 0.05 }
""")
    s = load_scenario(str(f))
    g = s.groups[2]
    assert (g.cookies, g.follows_challenge, g.arrive, g.pulse, g.query, g.user_agent,
            g.spread) == (True, True, 20, (5, 5), "random", "rotate", True)
    assert (s.server.workers, s.server.queue, s.server.timeout) == (3, 5, 4)
    assert s.server.service_time("/").median == 0.1
    f.write_text(SMALL_TOML + "[server]\nworkers = 0\n")
    with pytest.raises(ConfigError, match="workers must be a positive integer"):
        load_scenario(str(f))


def test_unknown_scenario_name_is_a_config_error():
    """A name that is neither built in nor a .toml file lists the built-ins."""
    with pytest.raises(ConfigError, match="default, single-source"):
        load_scenario("nope")


def test_client_group_addresses_are_consecutive():
    """Client n of a group gets the network's (n+1)th host address."""
    g = ClientGroup("g", clients=3, rate=1.0, addresses="192.0.2.0/24")
    assert [g.address(i) for i in range(3)] == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert ClientGroup("one", clients=1, rate=1.0, addresses="203.0.113.7/32").address(0) \
        == "203.0.113.7"


def test_json_output_through_main(tmp_path, capsys):
    """`simulate FILE --json` prints the measured shares, detection and latency as JSON,
    and both runs at the server (here unlimited: the file has no [server])."""
    f = tmp_path / "small.toml"
    f.write_text(SMALL_TOML)
    assert main(["simulate", str(f), "--json", "--no-progress"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["scenario"] == "small"
    assert data["legitimate"]["served_share"] >= 0.99
    assert data["anomaly"]["detected_after"] <= 5
    assert data["added_latency_us"]["p99"] >= data["added_latency_us"]["median"] > 0
    assert data["shield_bans"]["legitimate"] == []
    assert len(data["timeline"]) == 60
    assert data["server"] == {"workers": None, "queue": None, "timeout": 30.0, "service": {}}
    for run in ("unprotected", "protected"):
        assert data[run]["legitimate"]["requests"] == data["legitimate"]["requests"]
        assert data[run]["attack"]["requests"] == data["attack"]["requests"]
        assert data[run]["utilisation"] is None
    assert data["unprotected"]["attack"]["stopped_share"] == 0
    assert data["protected"]["attack"]["stopped_share"] == data["attack"]["refused_share"]


@pytest.mark.slow
def test_scaled_builtin_scenario_through_main(capsys):
    """--scale and --duration make a quick run of a built-in scenario; the JSON carries
    both runs with the server's figures."""
    assert main(["simulate", "distributed", "--scale", "0.1", "--duration", "75",
                 "--json", "--no-progress"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["server"]["workers"] == 2 and data["server"]["queue"] == 10
    bare, guarded = data["unprotected"], data["protected"]
    assert bare["legitimate"]["requests"] == pytest.approx(20 * 75, rel=0.05)
    assert 0 < bare["legitimate"]["answered_share_during_attack"] < 0.5
    assert 0 < bare["utilisation"] <= 1
    assert set(bare["legitimate"]["outcomes"]) <= {"answered", "late", "dropped"}
    assert guarded["legitimate"]["latency_s"]["p99"] >= guarded["legitimate"]["latency_s"]["p50"]
    assert len(guarded["timeline"]) == 75


def test_text_report_and_progress_bar(tmp_path, capsys):
    """The text report names each measure; --progress draws a bar on stderr."""
    f = tmp_path / "small.toml"
    f.write_text(SMALL_TOML)
    assert main(["simulate", str(f), "--progress"]) == 0
    out, err = capsys.readouterr()
    for phrase in ("unprotected", "protected", "legitimate answered within 30 s",
                   "attack stopped before the app", "app utilisation",
                   "legitimate clients banned", "anomaly detected", "latency added",
                   "shield bans", "server: unlimited capacity"):
        assert phrase in out
    assert "[#" in err and "%" in err


def test_plot_is_written_or_explains_the_missing_extra(tmp_path, capsys):
    """--plot writes a PNG with matplotlib installed, else exits 2 naming the extra."""
    f = tmp_path / "small.toml"
    f.write_text(SMALL_TOML)
    out = tmp_path / "out.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert main(["simulate", str(f), "--plot", str(out), "--no-progress"]) == 2
        assert "pip install 'throttlekit-web[plot]'" in capsys.readouterr().err
        assert not out.exists()
    else:
        assert main(["simulate", str(f), "--plot", str(out), "--no-progress"]) == 0
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
