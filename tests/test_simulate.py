"""`throttlekit simulate`: scenarios replayed through the real WSGI middleware on simulated time."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from throttlekit import ConfigError
from throttlekit.cli import main
from throttlekit.cli.scenarios import BUILTIN, ClientGroup, load_scenario
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
    """The default scenario with the default shield, run once for the module."""
    return run_simulation(BUILTIN["default"])


def test_default_scenario_meets_the_acceptance_bar(default_run):
    """Default flood: detected within 5 s, >= 99% legit served, >= 95% attack refused,
    no legitimate client banned, no false alarm before the attack."""
    r = default_run
    assert r.legit_total > 40_000 and r.attack_total > 200_000
    assert r.detected_after is not None and 0 < r.detected_after <= 5.0
    assert r.legit_served_share >= 0.99
    assert r.attack_refused_share >= 0.95
    assert r.legit_banned == []
    assert r.banned >= 450  # the flooding addresses were found and banned
    assert r.false_alarms == 0


def test_default_scenario_timeline_and_latency(default_run):
    """The timeline has one row per simulated second; latency quantiles are measured."""
    r = default_run
    assert len(r.timeline) == 240
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


@pytest.mark.parametrize(
    ("name", "refused"), [("single-source", 0.99), ("brute-force", 0.95), ("scanner", 0.95)]
)
def test_builtin_attacks_are_contained(name, refused):
    """Single-source flood, password guessing and scanning are refused by the
    recommended rules while legitimate clients are served."""
    r = run_simulation(replace(BUILTIN[name], duration=150.0))
    assert r.attack_refused_share >= refused
    assert r.legit_served_share >= 0.99
    assert r.legit_banned == []


def test_distributed_flood_is_detected_without_banning_visitors():
    """5000 addresses each slower than a visitor: the anomaly is seen, and the shield
    (rightly) finds no per-address offender to ban."""
    r = run_simulation(replace(BUILTIN["distributed"], duration=90.0))
    assert r.detected_after is not None and r.detected_after <= 5.0
    assert r.legit_banned == []
    assert r.legit_served_share >= 0.99


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
    """`simulate FILE --json` prints the measured shares, detection and latency as JSON."""
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


def test_text_report_and_progress_bar(tmp_path, capsys):
    """The text report names each measure; --progress draws a bar on stderr."""
    f = tmp_path / "small.toml"
    f.write_text(SMALL_TOML)
    assert main(["simulate", str(f), "--progress"]) == 0
    out, err = capsys.readouterr()
    for phrase in ("legitimate requests served", "attack requests refused",
                   "anomaly detected", "latency added", "shield bans"):
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
