"""Monitor and Shield on a real Limiter behind the real WSGI middleware (simulated time)."""

from __future__ import annotations

import logging
import random
import threading

import pytest
from werkzeug.test import Client

from throttlekit import ConfigError, Limiter, WSGIMiddleware
from throttlekit.monitor import Monitor, Shield
from throttlekit.testing import FakeClock

VISITORS = [f"10.0.0.{i}" for i in range(1, 41)]
FLOODERS = [f"198.51.100.{i}" for i in range(1, 11)]


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


class Site:
    """A limiter with a per-IP throttle, a monitor, a WSGI client and a fake clock."""

    def __init__(self, shield: bool = True, **shield_options):
        self.clock = FakeClock()
        self.limiter = Limiter(clock=self.clock)
        self.limiter.throttle("per-ip", "100/second")
        self.monitor = Monitor(self.limiter)
        self.shield = Shield(self.limiter, self.monitor, **shield_options) if shield else None
        self.client = Client(WSGIMiddleware(app, self.limiter))
        self.anomalies = []
        self.rng = random.Random(5)
        self.monitor.on_anomaly(self.anomalies.append)

    def get(self, ip: str, path: str = "/") -> int:
        return self.client.get(path, environ_overrides={"REMOTE_ADDR": ip}).status_code

    def second(self, flood: int = 0) -> dict[str, list[int]]:
        """One simulated second: each visitor once, each flooder `flood` times, interleaved."""
        statuses: dict[str, list[int]] = {"visitors": [], "flood": []}
        start = self.clock.now
        slots = [("visitors", ip) for ip in VISITORS]
        slots += [("flood", ip) for ip in FLOODERS for _ in range(flood)]
        step = 1.0 / len(slots)
        self.rng.shuffle(slots)
        for i, (who, ip) in enumerate(slots):
            self.clock.set(start + i * step)
            statuses[who].append(self.get(ip))
        self.clock.set(start + 1.0)
        return statuses


def test_monitor_counts_rule_outcomes_and_requests():
    """Each request is counted once; events are counted per (rule, outcome, dry_run)."""
    site = Site(shield=False)
    site.limiter.throttle("search", "2/minute", match=lambda r: r.path == "/search")
    for _ in range(3):
        site.get("10.0.0.1", "/search")
    site.get("10.0.0.2", "/")
    counts = site.monitor.counts()
    assert counts[("per-ip", "allowed", False)] == 3  # the third /search was refused by "search"
    assert counts[("search", "allowed", False)] == 2
    assert counts[("search", "throttled", False)] == 1
    assert site.monitor.requests == 4
    assert site.monitor.top(2) == [("10.0.0.1", 3), ("10.0.0.2", 1)]


def test_flood_raises_anomaly_with_top_offenders_then_ends(caplog):
    """A 10x flood from 10 addresses: anomaly_started within seconds naming the flooders
    (also as a structured log record), anomaly_ended after it stops."""
    caplog.set_level(logging.INFO, logger="throttlekit.monitor")
    site = Site(shield=False)
    for _ in range(40):
        site.second()
    t_attack = site.clock.now
    for _ in range(8):
        site.second(flood=40)
    started = [a for a in site.anomalies if a.kind == "anomaly_started" and a.scope == "*"]
    assert started and started[0].at - t_attack <= 3.0
    assert {k for k, _ in started[0].top[:10]} == set(FLOODERS)
    assert site.monitor.anomaly
    for _ in range(15):
        site.second()
    assert [a.kind for a in site.anomalies if a.scope == "*"] == [
        "anomaly_started", "anomaly_ended"
    ]
    assert not site.monitor.anomaly
    records = [r for r in caplog.records if getattr(r, "scope", None) == "*"]
    assert [r.throttlekit_event for r in records] == ["anomaly_started", "anomaly_ended"]
    assert records[0].levelname == "WARNING"
    assert {k for k, _ in records[0].top_offenders} == set(FLOODERS)
    assert records[0].rate > 3 * records[0].baseline


def test_shield_bans_only_flooders_and_logs_it(caplog):
    """The shield bans the flooding addresses through limiter.block (403 afterwards),
    never a visitor, and logs each ban with structured fields."""
    site = Site()
    caplog.set_level(logging.INFO, logger="throttlekit")
    for _ in range(40):
        site.second()
    for _ in range(6):
        last = site.second(flood=40)
    assert set(site.shield.banned) == set(FLOODERS)
    assert set(last["flood"]) == {403}
    assert set(last["visitors"]) == {200}
    blocked = {b.key: b for b in site.limiter.blocked()}
    assert set(blocked) == set(FLOODERS)
    assert all(b.reason.startswith("shield: ") for b in blocked.values())
    bans = [r for r in caplog.records if getattr(r, "throttlekit_event", None) == "shield_ban"]
    assert {r.key for r in bans} == set(FLOODERS)
    assert all(r.ttl == 600.0 and r.requests >= 10 for r in bans)


def test_unblock_undoes_a_shield_ban():
    """An admin's limiter.unblock(key) lifts a shield ban at once."""
    site = Site(ban_ttl=300)
    for _ in range(40):
        site.second()
    for _ in range(6):
        site.second(flood=40)
    victim = FLOODERS[0]
    assert site.get(victim) == 403
    assert site.limiter.unblock(victim)
    assert site.get(victim) == 200
    assert site.shield.unban() == len(FLOODERS) - 1  # the others, lifted by the shield itself
    assert site.limiter.blocked() == []


def test_shield_bans_expire_after_ban_ttl():
    """A shield ban runs out after ban_ttl seconds."""
    site = Site(ban_ttl=30)
    for _ in range(40):
        site.second()
    for _ in range(6):
        site.second(flood=40)
    assert site.get(FLOODERS[0]) == 403
    site.clock.advance(31)
    assert site.get(FLOODERS[0]) == 200


def test_dry_run_shield_logs_but_bans_nothing(caplog):
    """dry_run: 'would ban' records, no entries in the blocklist, flooders still served."""
    site = Site(dry_run=True)
    caplog.set_level(logging.WARNING, logger="throttlekit.shield")
    for _ in range(40):
        site.second()
    for _ in range(6):
        last = site.second(flood=40)
    assert site.limiter.blocked() == []
    assert set(last["flood"]) == {200}
    assert any("would ban" in r.getMessage() for r in caplog.records)
    assert site.shield.bans_total == 0


def test_quiet_traffic_engages_nothing():
    """Ordinary traffic for minutes: no anomaly, no shield action."""
    site = Site()
    for _ in range(120):
        site.second()
    assert site.anomalies == []
    assert not site.shield.active and site.shield.banned == {}


@pytest.mark.parametrize(
    "kwargs", [{"ban_ttl": 0}, {"factor": 1}, {"min_requests": 0}, {"max_bans": -1},
               {"interval": 0}]
)
def test_bad_shield_settings_are_config_errors(kwargs):
    """Out-of-range shield settings raise ConfigError at setup."""
    limiter = Limiter()
    with pytest.raises(ConfigError):
        Shield(limiter, Monitor(limiter), **kwargs)


def test_shield_tightens_rules_and_restores_them(caplog):
    """tighten={"per-ip": ...}: during the anomaly the rule refuses above the stricter
    rate; when the anomaly ends the original rate is back (and it was logged)."""
    site = Site(ban=False, tighten={"per-ip": "10/second"})
    caplog.set_level(logging.WARNING, logger="throttlekit.shield")
    for _ in range(40):
        site.second()
    for _ in range(5):
        last = site.second(flood=40)
    assert site.shield.active
    assert 429 in last["flood"] and set(last["visitors"]) == {200}
    assert site.limiter.blocked() == []  # ban=False: no bans
    for _ in range(20):
        site.second()
    assert not site.shield.active
    statuses = [site.get("10.0.0.1") for _ in range(30)]  # 30 in a blink: fine at 100/s
    assert set(statuses) == {200}
    events = [getattr(r, "throttlekit_event", None) for r in caplog.records]
    assert "shield_tighten" in events and "shield_restore" in events


def test_release_restores_rules_by_hand():
    """Shield.release() puts the original rates back at once."""
    site = Site(ban=False, tighten={"per-ip": "1/second"})
    site.shield.engage(site.clock.now)
    assert [site.get("10.0.0.1") for _ in range(2)] == [200, 429]
    site.shield.release()
    assert site.get("10.0.0.2") == 200 and site.get("10.0.0.2") == 200


@pytest.mark.parametrize(
    ("tighten", "message"),
    [({"nope": "1/second"}, "'nope', which is not a throttle"),
     ({"per-ip": "fast"}, "invalid rate")],
)
def test_tighten_is_checked_at_setup(tighten, message):
    """tighten naming a missing rule or with a bad rate is a ConfigError at setup."""
    limiter = Limiter()
    limiter.throttle("per-ip", "100/second")
    with pytest.raises(ConfigError, match=message):
        Shield(limiter, Monitor(limiter), tighten=tighten)


def test_tighten_refuses_a_plan_rule_at_setup():
    """A throttle with plans has no rates of its own to tighten: ConfigError at setup
    naming it (it used to fail during the attack, logged); a fixed-rate rule beside it
    is tightened as usual."""
    limiter = Limiter()
    limiter.throttle("api", limiter.plans({"free": "10/second", "pro": "100/second"},
                                          plan="header:X-Plan", default="free"))
    limiter.throttle("per-ip", "100/second")
    with pytest.raises(ConfigError, match="'api', a throttle whose rates follow the caller"):
        Shield(limiter, Monitor(limiter), tighten={"api": "1/second"})
    Shield(limiter, Monitor(limiter), tighten={"per-ip": "1/second"})


def test_set_rule_rates_keeps_state():
    """limiter.set_rule_rates swaps a throttle's rates, keeping what was already counted."""
    clock = FakeClock()
    limiter = Limiter(clock=clock)
    limiter.throttle("per-ip", "5/minute")
    c = Client(WSGIMiddleware(app, limiter))
    for _ in range(3):
        assert c.get("/", environ_overrides={"REMOTE_ADDR": "10.0.0.1"}).status_code == 200
    previous = limiter.set_rule_rates("per-ip", "3/minute")
    assert [str(r) for r in previous] == ["5 per 60 seconds"]
    assert c.get("/", environ_overrides={"REMOTE_ADDR": "10.0.0.1"}).status_code == 429
    limiter.set_rule_rates("per-ip", previous)
    assert c.get("/", environ_overrides={"REMOTE_ADDR": "10.0.0.1"}).status_code == 200
    with pytest.raises(ConfigError, match="no throttle rule named 'x'"):
        limiter.set_rule_rates("x", "1/second")


def test_monitor_survives_concurrent_requests_and_queries():
    """Four request threads and a thread reading snapshots: no errors, every request counted
    (within the few lost increments that unsynchronised counters allow)."""
    clock = FakeClock()
    limiter = Limiter(clock=clock)
    limiter.throttle("per-ip", "1000000/second")
    monitor = Monitor(limiter, capacity=16)
    mw = WSGIMiddleware(app, limiter)
    errors: list[BaseException] = []
    failures: list[object] = []
    reads: list[int] = []
    done = threading.Event()

    def requests(worker: int) -> None:
        try:
            for i in range(3000):
                environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/",
                           "REMOTE_ADDR": f"10.{worker}.{i % 200}.{i % 7}"}
                clock.now += 0.0005
                b"".join(mw(environ, lambda s, h, e=None: None))
        except BaseException as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    def reader() -> None:
        # A reader that never pauses (a status page polled in a loop) would, on an idle
        # 2-core machine, meet the request threads in a lock convoy (each waking to find
        # the GIL and then the monitor's lock taken again): 36-50 s for 12,000 requests.
        # Pausing a moment between reads still interleaves hundreds of reads with them.
        while not done.wait(0.0005):
            try:
                monitor.snapshot()
                monitor.top(10)
            except BaseException as exc:  # pragma: no cover
                errors.append(exc)
                return
            reads.append(1)

    class Catch(logging.Handler):
        def emit(self, record):
            failures.append(record)

    handler = Catch(level=logging.ERROR)
    logging.getLogger("throttlekit").addHandler(handler)
    try:
        threads = [threading.Thread(target=requests, args=(w,)) for w in range(4)]
        r = threading.Thread(target=reader)
        r.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        r.join()
    finally:
        logging.getLogger("throttlekit").removeHandler(handler)
    assert errors == [] and failures == []
    assert 11_900 <= monitor.requests <= 12_000
    assert len(reads) >= 10  # the reads did interleave with the requests


def test_shield_bans_off_the_event_loop_with_a_remote_store():
    """Inside an event loop, a remote store's bans are made in a worker thread, so a sweep
    never blocks the loop for a round trip per ban; the bans still land."""
    import asyncio

    from throttlekit import MemoryStorage

    class RemoteStore(MemoryStorage):
        remote = True  # a stand-in with the real memory semantics; records who bans

        def __init__(self) -> None:
            super().__init__()
            self.ban_threads: set[int] = set()

        def block(self, key, ttl, reason="", now=None):
            self.ban_threads.add(threading.get_ident())
            super().block(key, ttl, reason, now)

    site = Site()
    store = RemoteStore()
    site.limiter = Limiter(store, clock=site.clock, denial_cache_size=0)
    site.limiter.throttle("per-ip", "100/second")
    site.monitor = Monitor(site.limiter)
    site.shield = Shield(site.limiter, site.monitor)
    site.client = Client(WSGIMiddleware(app, site.limiter))

    async def under_loop() -> None:
        for _ in range(40):
            site.second()
        for _ in range(6):
            site.second(flood=40)

    asyncio.run(under_loop())  # waits for the default executor on exit
    assert set(site.shield.banned) == set(FLOODERS)
    assert {b.key for b in site.limiter.blocked()} == set(FLOODERS)
    assert store.ban_threads and threading.get_ident() not in store.ban_threads


def test_a_tightened_file_rule_holds_across_a_reload_and_is_restored_to_the_files_rates(
        tmp_path):
    """During an attack the shield tightens a rule from the rules file; an operator edits
    the file meanwhile (the rule's rate, one more rule) and it reloads: the tightened rate
    holds until the shield releases, which restores the file's new rate (a reload used to
    drop the tightening while the shield still counted it, and a release to write back the
    rate saved before the edit)."""
    site = Site(shield=False)
    rules = tmp_path / "rules.toml"
    rules.write_text('[[throttle]]\nname = "file"\nrates = "100/second"\n')
    site.limiter.load_rules(str(rules))
    site.shield = Shield(site.limiter, site.monitor, ban=False, tighten={"file": "10/second"})

    def rates() -> list[str]:
        return [str(r) for t in site.limiter.engine.rules.throttles if t.name == "file"
                for r in t.rates]

    for _ in range(40):
        site.second()
    for _ in range(5):
        last = site.second(flood=40)
    assert site.shield.active and 429 in last["flood"]
    assert rates() == ["10 per 1 second"]
    rules.write_text('[[throttle]]\nname = "file"\nrates = "200/second"\n'
                     '[[throttle]]\nname = "other"\nrates = "1000/second"\n')
    assert site.limiter.reload() is True
    assert rates() == ["10 per 1 second"]
    assert 429 in site.second(flood=40)["flood"]  # still contained
    for _ in range(20):
        site.second()
    assert not site.shield.active
    assert rates() == ["200 per 1 second"]
