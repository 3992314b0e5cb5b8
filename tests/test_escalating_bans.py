"""Escalating bans (fail2ban's bantime.increment): 1, 2, 4, ... times the ban, capped,
jittered, forgotten after forget_after; the count in the store (memory, Redis, two
processes), options checked, and rules-file support."""

from __future__ import annotations

import multiprocessing
import textwrap
from typing import Any

import pytest

from throttlekit import ConfigError, Limiter, RequestView, storage_from_url
from throttlekit.testing import FakeClock

REDIS = "redis://127.0.0.1:6379/0"


def request(lim: Limiter, ip: str, path: str = "/wp-admin") -> Any:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": ip}
    return lim.evaluate(RequestView.from_environ(environ, lim.resolver))


def ban_left(lim: Limiter, clock: Any, ip: str) -> float:
    """Seconds left on the fail2ban ban of ``ip`` (0: none)."""
    for b in lim.blocked():
        if b.key.endswith(":" + ip):
            return round(b.expires_at - clock(), 3)
    return 0.0


def scanners(lim: Limiter, **escalate: Any) -> None:
    lim.fail2ban("scanners", match=lambda v: v.path.startswith("/wp-"), maxretry=2,
                 findtime=60, bantime=10, escalate=escalate or True)


def offend(lim: Limiter, clock: FakeClock, ip: str) -> float:
    """Trip the rule (two matches), return the ban's length, wait it out."""
    request(lim, ip)
    assert request(lim, ip).kind == "banned"
    left = ban_left(lim, clock, ip)
    clock.advance(left + 1)
    return left


def test_repeat_offenders_double_up_to_max_ban_then_are_forgotten() -> None:
    """10 s, 20 s, 40 s, then capped at 50 s; another client starts at 10 s; after
    forget_after without a ban, back to 10 s."""
    clock = FakeClock()
    lim = Limiter(clock=clock)
    scanners(lim, max_ban=50, forget_after=1000)
    assert [offend(lim, clock, "192.0.2.1") for _ in range(5)] == [10, 20, 40, 50, 50]
    assert offend(lim, clock, "192.0.2.2") == 10
    clock.advance(1001)
    assert offend(lim, clock, "192.0.2.1") == 10


def test_a_ban_refuses_everything_while_it_lasts() -> None:
    """The escalated ban holds for all paths until its end, then lifts."""
    clock = FakeClock()
    lim = Limiter(clock=clock)
    scanners(lim, max_ban=100, forget_after=1000)
    offend(lim, clock, "192.0.2.1")
    request(lim, "192.0.2.1")
    request(lim, "192.0.2.1")  # the second ban: 20 s
    clock.advance(19)
    assert request(lim, "192.0.2.1", "/").kind == "banned"
    clock.advance(1.5)
    assert request(lim, "192.0.2.1", "/").allowed


def test_jitter_shortens_bans_by_a_random_share() -> None:
    """jitter=0.5: every first ban is within [5, 10] seconds, and they differ."""
    clock = FakeClock()
    lim = Limiter(clock=clock)
    scanners(lim, jitter=0.5)
    lengths = []
    for i in range(20):
        ip = f"192.0.2.{i + 1}"
        request(lim, ip)
        request(lim, ip)
        lengths.append(ban_left(lim, clock, ip))
    assert all(5 <= t <= 10 for t in lengths) and len(set(lengths)) > 1


def test_unblock_forgets_the_offences() -> None:
    """Lifting a ban by hand also forgets the key's earlier bans."""
    clock = FakeClock()
    lim = Limiter(clock=clock)
    scanners(lim, max_ban=100, forget_after=1000)
    assert offend(lim, clock, "192.0.2.1") == 10
    request(lim, "192.0.2.1")
    request(lim, "192.0.2.1")
    assert lim.unblock("192.0.2.1")
    assert offend(lim, clock, "192.0.2.1") == 10


@pytest.mark.parametrize(("escalate", "named"), [
    ({"factor": 1}, "factor"), ({"max_ban": 5}, "max_ban"), ({"jitter": 1.0}, "jitter"),
    ({"forget_after": 10}, "forget_after"), ({"max_bam": 60}, "max_bam"),
    ("yes", "'yes'"), ({"factor": float("nan")}, "nan"),
])
def test_bad_escalation_is_a_config_error(escalate: Any, named: str) -> None:
    """Every bad option is refused at registration, naming the value."""
    with pytest.raises(ConfigError, match=named):
        Limiter().allow2ban("logins", match=lambda v: True, maxretry=3, findtime=60,
                            bantime=10, escalate=escalate)


def test_rules_file_escalation(tmp_path: Any) -> None:
    """A rules file's escalate table (durations with units) escalates the same way; a bad
    option is reported at its line."""
    path = tmp_path / "rules.toml"
    path.write_text(textwrap.dedent('''
        [[fail2ban]]
        name = "scanners"
        path_prefix = "/wp-"
        maxretry = 2
        findtime = "1m"
        bantime = "10s"
        escalate = { max_ban = "30s", forget_after = "1h" }
    '''))
    clock = FakeClock()
    lim = Limiter(clock=clock)
    lim.load_rules(path)
    assert [offend(lim, clock, "192.0.2.1") for _ in range(3)] == [10, 20, 30]
    path.write_text(path.read_text().replace("max_ban", "max_bam"))
    with pytest.raises(ConfigError, match=r"rules.toml:8: .*max_bam.*did you mean 'max_ban'"):
        Limiter().load_rules(path)


# -- Redis: the count lives in the store ---------------------------------------------------


def _redis_limiter(prefix: str, start: float) -> tuple[Limiter, FakeClock]:
    clock = FakeClock(start)
    lim = Limiter(storage_from_url(REDIS, prefix=prefix), clock=clock)
    scanners(lim, max_ban=100, forget_after=1000)
    return lim, clock


def _offend_in_process(prefix: str, start: float) -> float:
    lim, clock = _redis_limiter(prefix, start)
    try:
        request(lim, "192.0.2.7")
        request(lim, "192.0.2.7")
        return ban_left(lim, clock, "192.0.2.7")
    finally:
        lim.storage.close()


@pytest.mark.redis
def test_redis_one_worker(redis_prefix: str) -> None:
    """On Redis: 10, 20, 40 s for one client (the count read back from Redis)."""
    lim, clock = _redis_limiter(redis_prefix, 1_800_000_000.0)
    try:
        assert [offend(lim, clock, "192.0.2.9") for _ in range(3)] == [10, 20, 40]
    finally:
        lim.storage.close()


@pytest.mark.redis
def test_redis_two_processes_share_the_offence_count(redis_prefix: str) -> None:
    """A client banned by one process is banned twice as long by another, later: the
    offence count is in Redis, not in either process."""
    ctx = multiprocessing.get_context("spawn")
    t0 = 1_800_000_000.0
    with ctx.Pool(1) as first:
        assert first.apply(_offend_in_process, (redis_prefix, t0)) == 10
    with ctx.Pool(1) as second:
        assert second.apply(_offend_in_process, (redis_prefix, t0 + 11)) == 20
