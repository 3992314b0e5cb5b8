"""`throttlekit simulate`'s protections: the recommended setup of docs/under-attack.md
(rules, shield, admission control, client standing, challenges), each of which the report names and
``--protections`` / ``--no-<name>`` turn off. The scenarios run at reduced length and
scale here."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from throttlekit import Limiter, Standing
from throttlekit.cli import main
from throttlekit.cli.scenarios import BUILTIN
from throttlekit.cli.simulate import (
    DEFAULT_PROTECTIONS,
    PROTECTIONS,
    cookie_priority,
    format_report,
    recommended_setup,
    run_simulation,
)
from throttlekit.monitor import Monitor, Shield

#: the distributed flood at a quarter of its clients and workers, 30 s of it
SMALL = replace(BUILTIN["distributed"], duration=90.0).scaled(0.25)
TINY = ["distributed", "--scale", "0.1", "--duration", "65", "--no-progress"]


def _json(capsys, *argv):
    assert main(["simulate", *TINY, "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_recommended_setup_turns_on_the_protections_asked():
    """By default the rules, a shield, admission control by cookie and client standing;
    challenges during an anomaly when asked; each can be left out."""
    assert PROTECTIONS == ("rules", "shield", "admission", "standing", "challenges")
    assert DEFAULT_PROTECTIONS == ("rules", "shield", "admission", "standing")
    default = Limiter("memory://")
    assert isinstance(recommended_setup(default, Monitor(default)), Shield)
    assert default.engine.admission is not None
    assert isinstance(default.engine.standing, Standing)
    assert "challenge-pass" not in default.engine.rules.names
    limiter = Limiter("memory://")
    monitor = Monitor(limiter)
    shield = recommended_setup(limiter, monitor, PROTECTIONS)
    assert isinstance(shield, Shield)
    assert {"per-ip", "login", "scanners", "challenge-pass"} <= set(limiter.engine.rules.names)
    assert limiter.engine.admission is not None
    bare = Limiter("memory://")
    assert recommended_setup(bare, Monitor(bare), ["rules"]) is None
    assert bare.engine.admission is None and "challenge-pass" not in bare.engine.rules.names
    assert bare.engine.standing is None


def test_unknown_protection_is_a_config_error():
    from throttlekit import ConfigError

    limiter = Limiter("memory://")
    with pytest.raises(ConfigError, match="unknown protection 'waf'"):
        recommended_setup(limiter, Monitor(limiter), ["rules", "waf"])


class _View:
    def __init__(self, cookie: str | None) -> None:
        self.headers = {"cookie": cookie} if cookie is not None else {}


def test_cookie_priority_puts_clients_with_cookies_first():
    assert cookie_priority(_View("sid=1")) == 1
    assert cookie_priority(_View(None)) == 0
    assert cookie_priority(_View("")) == 0


def test_report_names_the_protections_and_json_carries_them(capsys):
    """The text report says which protections were on (and off), under the protected
    column too; the JSON lists them."""
    assert main(["simulate", *TINY]) == 0
    out = capsys.readouterr().out
    assert "protected run: rules, shield, admission, standing (off: challenges)" in out
    header = out.splitlines().index(next(line for line in out.splitlines()
                                         if line.rstrip().endswith("protected")))
    assert out.splitlines()[header + 1].strip() == "rules+shield+admission+standing"
    data = _json(capsys, "--protections", ",".join(PROTECTIONS))
    assert data["protections"] == list(PROTECTIONS) and data["shield"] is True


@pytest.mark.parametrize(("argv", "on"), [
    (["--protections", "rules,shield"], ["rules", "shield"]),
    (["--no-admission"], ["rules", "shield", "standing"]),
    (["--no-shield"], ["rules", "admission", "standing"]),
    (["--no-standing"], ["rules", "shield", "admission"]),
    (["--protections", "rules,shield,admission,challenges", "--no-admission"],
     ["rules", "shield", "challenges"]),
    (["--protections", "admission,rules", "--no-shield"], ["rules", "admission"]),
    (["--protections", "none"], []),
])
def test_protections_option_turns_pieces_on_and_off(capsys, argv, on):
    data = _json(capsys, *argv)
    assert data["protections"] == on
    assert data["shield"] is ("shield" in on)
    if "admission" not in on:
        assert "503" not in data["protected"]["attack"]["outcomes"]


def test_unknown_protection_on_the_command_line_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["simulate", *TINY, "--protections", "rules,waf"])
    assert exc.value.code == 2
    assert "unknown protection 'waf'" in capsys.readouterr().err


def test_own_rules_keep_the_old_setup():
    """run_simulation with rules of one's own runs those and the shield, as before."""
    r = run_simulation(replace(SMALL, duration=5.0), rules=lambda limiter: None, shield=False)
    assert r.protections == ["rules"] and not r.shield


@pytest.fixture(scope="module")
def small_runs():
    """The small distributed flood with the rules only, and with admission control too
    (no shield, no challenges: the flood reaches admission)."""
    return (run_simulation(SMALL, protections=["rules"]),
            run_simulation(SMALL, protections=["rules", "admission"]))


@pytest.mark.slow
def test_admission_keeps_admitted_latency_bounded_in_a_distributed_flood(small_runs):
    """Rules alone let the flood through (every address is under its limit): the server's
    queue fills and drops. With admission control the excess is shed (503) before the
    app, cookie-less clients first: what is admitted is answered in time, and the
    visitors keep being served."""
    rules, admitted = (r.protected for r in small_runs)
    assert rules is not None and admitted is not None
    assert rules.answered_between(60.0, 90.0) < 0.2
    assert rules.share(True, "dropped") > 0.2 and rules.latency(0.99) > 0.9
    assert admitted.admitted_answered() >= 0.99
    assert admitted.latency(0.99) < 0.6
    assert admitted.answered_between(60.0, 90.0) > 0.9
    assert admitted.share(False, "503") > 0.9  # the flood, shed
    assert admitted.share(True, "503") < 0.03  # visitors, hardly
    assert small_runs[1].legit_banned == []


@pytest.mark.slow
def test_report_of_an_admission_run_shows_the_shedding(small_runs):
    text = format_report(small_runs[1], SMALL)
    assert "protected run: rules, admission (off: shield, standing, challenges)" in text
    assert "  503 " in text
