"""Escalating bans against a persistent offender: one that offends again as soon as each
ban ends stays at ``max_ban``; the escalation never starts over while its bans keep
coming within ``forget_after`` of each other."""

from __future__ import annotations

import pytest

from test_escalating_bans import offend, scanners
from throttlekit import Limiter
from throttlekit.testing import FakeClock


@pytest.mark.parametrize("options", [{}, {"factor": 3, "max_ban": 300},
                                     {"max_ban": 50, "forget_after": 100}],
                         ids=["defaults", "factor-3", "short-memory"])
def test_a_persistent_offender_stays_at_max_ban(options):
    """Banned again one second after each ban ends, 40 times: the bans grow to
    ``max_ban`` and stay there (they used to start again from ``bantime`` once the
    first bans slid out of ``forget_after``, since bans at the cap were not counted: the
    store now keeps a chain, level and end, per key)."""
    clock = FakeClock()
    lim = Limiter(clock=clock)
    scanners(lim, **options)
    bans = [offend(lim, clock, "192.0.2.1") for _ in range(40)]
    max_ban = options.get("max_ban", 640)
    top = bans.index(max_ban)
    assert bans[:top] == sorted(bans[:top]) and bans[0] == 10
    assert bans[top:] == [max_ban] * (40 - top), bans


def test_the_escalation_is_forgotten_after_forget_after_without_a_ban():
    """The fix keeps forgetting: after ``forget_after`` without a ban, back to
    ``bantime``."""
    clock = FakeClock()
    lim = Limiter(clock=clock)
    scanners(lim, max_ban=50, forget_after=100)
    for _ in range(10):
        offend(lim, clock, "192.0.2.1")
    clock.advance(101)
    assert offend(lim, clock, "192.0.2.1") == 10
