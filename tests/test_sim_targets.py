"""The issue's targets for `throttlekit simulate`, the protected run with the default
protections (rules, shield, admission control, client standing), at a quarter of the
clients and workers and 100 simulated seconds (40 s of surge): the distributed and the
user-agent-rotating floods, new visitors arriving during a flood, and the flash crowd of
real new visitors (shed with 503, never banned or contained)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from throttlekit.cli.scenarios import BUILTIN
from throttlekit.cli.simulate import DEFAULT_PROTECTIONS, SimResult, run_simulation


def _run(name: str) -> SimResult:
    r = run_simulation(replace(BUILTIN[name], duration=100.0).scaled(0.25))
    assert r.protections == list(DEFAULT_PROTECTIONS) and "standing" in r.protections
    return r


@pytest.mark.parametrize(  # the fast suite runs one flood; --full both
    "name", ["distributed", pytest.param("rotating-ua", marks=pytest.mark.slow)])
def test_floods_many_addresses_are_stopped_and_visitors_served(name: str) -> None:
    """>= 99% of legitimate requests answered within the timeout, >= 90% of the attack
    stopped before the app, no legitimate client banned, detected within 5 s; the
    unprotected run in the same report shows the outage."""
    r = _run(name)
    protected, bare = r.protected, r.unprotected
    assert protected is not None and bare is not None
    assert protected.share(True, "answered") >= 0.99
    assert protected.stopped_share(False) >= 0.90
    assert r.legit_banned == []
    assert r.detected_after is not None and r.detected_after <= 5.0
    assert bare.answered_between(70.0, 100.0) < 0.3


def test_new_visitors_during_a_flood_are_served() -> None:
    """Visitors arriving for the first time during the distributed flood (no history, no
    standing): >= 90% of their requests served."""
    r = _run("new-visitors")
    assert r.protected is not None
    newcomers = [i for i in r.legit_groups if BUILTIN["new-visitors"].groups[i].name
                 == "newcomers"]
    assert newcomers and r.protected.group_share(newcomers[0]) >= 0.90
    assert r.legit_banned == []


def test_a_flash_crowd_is_shed_with_503_never_banned_or_contained() -> None:
    """2,000 real new visitors (here 500): beyond capacity the excess is shed with 503
    (nothing else stops a legitimate request), nobody is banned, nothing is contained,
    >= 99% of the admitted requests answer in time; the usual visitors, known from before,
    keep being served."""
    r = _run("flash-crowd")
    protected = r.protected
    assert protected is not None and r.attack_total == 0
    assert set(protected.stops(True)) == {"503"}
    assert protected.stopped_share(True) > 0.3  # there was an excess to shed
    assert r.legit_banned == [] and r.banned == 0
    assert r.contained == {}
    answered = protected.admitted_answered()
    assert answered is not None and answered >= 0.99
    assert r.known_at_anomaly is not None and r.known_at_anomaly >= 45  # of 50 visitors
    assert protected.group_share(0) >= 0.95
